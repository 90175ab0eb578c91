"""Ratios, targets, the printed table and the chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _get(driver: list[dict[str, Any]], scenario: str, peer: str, clients: int) -> float:
    for d in driver:
        if d["scenario"] == scenario and d["peer"] == peer and d["clients"] == clients:
            return float(d["median_ids_per_s"])
    return math.nan


def _div(a: float | None, b: float | None) -> float:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def driver_ratios(driver: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for scenario, clients in (("hot", (1, 8, 32)), ("fleets100", (8, 32))):
        for c in clients:
            idm = _get(driver, scenario, "idmint", c)
            row = {"scenario": scenario, "clients": c, "idmint_ids_per_s": idm}
            for peer in ("ledger", "raw", "odoo", "odoo_spin", "nextval"):
                v = _get(driver, scenario, peer, c)
                row[f"{peer}_ids_per_s"] = v
                row[f"idmint/{peer}"] = _div(idm, v)
            rows.append(row)
    return rows


def driver_latency(driver: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hot fleet, same Python client: Odoo with its real back-off, Odoo retrying at once,
    idmint. Median over repetitions of each run's p50/p99; failed requests summed."""
    rows = []
    for d in driver:
        if d["scenario"] != "hot" or d["peer"] not in ("odoo", "odoo_spin", "idmint_client"):
            continue
        runs = d["runs"]

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            vals = sorted(float(r[key]) for r in runs if r.get(key) is not None)
            return vals[len(vals) // 2] if vals else math.nan

        rows.append(
            {
                "clients": d["clients"],
                "peer": d["peer"],
                "ids_per_s": d["median_ids_per_s"],
                "p50_ms": med("latency_p50_ms"),
                "p99_ms": med("latency_p99_ms"),
                "failed": sum(int(r.get("failed", 0)) for r in runs),
                "lock_failures": sum(int(r.get("lock_failures", 0)) for r in runs),
                "requests": sum(int(r.get("processed", 0)) for r in runs),
            }
        )
    return sorted(rows, key=lambda r: (r["clients"], r["peer"]))


def entity_rows(entity: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = {e["n"]: e["idmint_ms"] for e in entity if e["fill"] == 0.0}
    rows = []
    for e in entity:
        deliver = e["peer_unbounded_ms"] if e["peer_failures"] else e["peer_ms"]
        rows.append(
            {
                "fill": e["fill"],
                "n": e["n"],
                "idmint_ms": e["idmint_ms"],
                "peer_ms": e["peer_ms"],
                "floor_ms": e["floor_ms"],
                "table_floor_ms": e.get("table_floor_ms"),
                "peer_failures": e["peer_failures"],
                "samples": e["samples"],
                "peer_deliver_ms": deliver,
                "peer_deliver_failed": bool(e["peer_unbounded_failed"]),
                "peer/idmint": _div(e["peer_ms"], e["idmint_ms"]),
                "peer_deliver/idmint": _div(deliver, e["idmint_ms"]),
                "idmint/floor": _div(e["idmint_ms"], e["floor_ms"]),
                "idmint/table floor": _div(e["idmint_ms"], e.get("table_floor_ms")),
                "peer/table floor": _div(e["peer_ms"], e.get("table_floor_ms")),
                "flatness": _div(e["idmint_ms"], base.get(e["n"]))
                if e["fill"] == 99.99 and e["n"] in (1, 30, 100)
                else None,
                "idmint_errors": e["idmint_errors"],
            }
        )
    return rows


def targets(
    driver: list[dict[str, Any]], ratios: list[dict[str, Any]], erows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, op: str, limit: float, note: str = "") -> None:
        ok = (value >= limit) if op == ">=" else (value <= limit)
        if math.isnan(value):
            ok = False
        out.append(
            {"target": name, "value": value, "op": op, "limit": limit, "pass": ok, "note": note}
        )

    def ratio(scenario: str, c: int, key: str) -> float:
        for r in ratios:
            if r["scenario"] == scenario and r["clients"] == c:
                return float(r[key])
        return math.nan

    if driver:
        # Issue 14: the ledgered counter is the fair limit; Odoo no_gap retrying at once.
        for scenario, label in (("hot", "hot"), ("fleets100", "100 fleets")):
            for c in (8, 32):
                add(
                    f"{label} {c} clients: idmint/ledgered counter",
                    ratio(scenario, c, "idmint/ledger"),
                    ">=",
                    0.9,
                )
        add(
            "hot 8 clients: idmint/odoo no_gap (immediate retry)",
            ratio("hot", 8, "idmint/odoo_spin"),
            ">=",
            4,
        )
        add(
            "hot 32 clients: idmint/odoo no_gap (immediate retry)",
            ratio("hot", 32, "idmint/odoo_spin"),
            ">=",
            8,
        )
        failed = sum(
            d["failed_total"] + d["aborted_clients"]
            for d in driver
            if d["peer"].startswith("idmint")
        )
        add("idmint failed transactions (all driver points)", float(failed), "<=", 0)
        single = _get(driver, "bulk", "idmint_single", 1)
        bulk = _get(driver, "bulk", "idmint_bulk100", 1)
        add("bulk next_driver_ids(f,100) / single calls", _div(bulk, single), ">=", 20)
    if erows:

        def er(fill: float, n: int) -> dict[str, Any] | None:
            for r in erows:
                if r["fill"] == fill and r["n"] == n:
                    return r
            return None

        for fill in (0.0, 50.0, 80.0):
            for n in (3000, 100_000):
                r = er(fill, n)
                if r:
                    add(f"entity {fill:g}% n={n}: peer/idmint", r["peer/idmint"], ">=", 1.5)
        r = er(95.0, 3000)
        if r:
            add(
                "entity 95% n=3000: peer/idmint",
                r["peer/idmint"],
                ">=",
                8,
                f"peer failed {r['peer_failures']} of {r['samples']} calls (MAX_RETRIES)",
            )
        r = er(99.9, 30)
        if r:
            add(
                "entity 99.9% n=30: peer(to deliver)/idmint",
                r["peer_deliver/idmint"],
                ">=",
                100,
                f"capped peer: {r['peer_failures']} of {r['samples']} calls failed; ratio with "
                f"the capped (failing) peer {r['peer/idmint']:.1f}",
            )
        for r in erows:
            if r["fill"] <= 50.0:
                add(f"entity {r['fill']:g}% n={r['n']}: idmint/floor", r["idmint/floor"], "<=", 2)
        for n in (1, 30, 100):
            r = er(99.99, n)
            if r and r["flatness"] is not None:
                add(f"entity flatness n={n}: 99.99% / 0%", r["flatness"], "<=", 3)
        errs = sum(len(r["idmint_errors"]) for r in erows)
        add("entity: idmint calls that failed", float(errs), "<=", 0)
    return out


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def app_targets(app: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 11: open app transactions >= 0.8x the ADR design; DEFAULT <= 4x one bulk call."""
    if not app:
        return []
    orm = app["orm"]
    rows = [
        (
            "open app transactions (8 clients, 20 ms): idmint/ADR tx/s",
            app["open_tx_ratio"],
            ">=",
            0.8,
        ),
        (
            "ORM path, 10 000 rows: column DEFAULT / one bulk call",
            orm["default_over_bulk"],
            "<=",
            4,
        ),
        ("ORM path (extra): trigger / one bulk call", orm["trigger_over_bulk"], "<=", 4),
        (
            "ORM path (extra): DEFAULT + trigger / one bulk call",
            orm["default_trigger_over_bulk"],
            "<=",
            4,
        ),
    ]
    if app.get("long_tx"):
        rows.append(
            (
                "one transaction (extra): last chunk / first chunk, µs per row",
                app["long_tx"]["last_over_first"],
                "<=",
                1.5,
            )
        )
    return [
        {
            "target": t,
            "value": v,
            "op": op,
            "limit": lim,
            "note": "",
            "pass": (v >= lim) if op == ">=" else (v <= lim),
        }
        for t, v, op, lim in rows
    ]


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    ratios = result.get("driver_ratios", [])
    if ratios:
        lines += [
            "| scenario | clients | idmint IDs/s | ledgered | bare counter | odoo | odoo_spin |"
            " nextval | idmint/ledgered | idmint/bare | idmint/odoo | idmint/odoo_spin |"
            " idmint/nextval |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in ratios:
            lines.append(
                f"| {r['scenario']} | {r['clients']} | {_f(r['idmint_ids_per_s'])} |"
                f" {_f(r['ledger_ids_per_s'])} | {_f(r['raw_ids_per_s'])} |"
                f" {_f(r['odoo_ids_per_s'])} | {_f(r['odoo_spin_ids_per_s'])} |"
                f" {_f(r['nextval_ids_per_s'])} | {_f(r['idmint/ledger'])} |"
                f" {_f(r['idmint/raw'])} | {_f(r['idmint/odoo'])} |"
                f" {_f(r['idmint/odoo_spin'])} | {_f(r['idmint/nextval'], 3)} |"
            )
        lat = result.get("driver_latency", [])
        if lat:
            lines += [
                "",
                "Hot fleet, same Python client (not scored): p50/p99 latency of a request,"
                " failed requests",
                "",
                "| clients | peer | IDs/s | p50 ms | p99 ms | failed requests | lock failures |",
                "|---:|---|---:|---:|---:|---:|---:|",
            ]
            for r in lat:
                lines.append(
                    f"| {r['clients']} | {r['peer']} | {_f(r['ids_per_s'])} | {_f(r['p50_ms'])} |"
                    f" {_f(r['p99_ms'])} | {r['failed']} of {r['requests'] + r['failed']} |"
                    f" {r['lock_failures']} |"
                )
        b = result.get("bulk")
        if b:
            lines += [
                "",
                f"Bulk (1 client): next_driver_ids(fleet, 100) {_f(b['bulk_ids_per_s'])} IDs/s,"
                f" single next_driver_id calls {_f(b['single_ids_per_s'])} IDs/s:"
                f" **{_f(b['ratio'], 1)}x**.",
            ]
        lines.append("")
    erows = result.get("entity_rows", [])
    if erows:
        lines += [
            "| fill % | n | idmint ms | peer ms | peer failed | floor ms | table floor ms |"
            " peer/idmint | peer to deliver / idmint | idmint/floor | idmint/table floor |"
            " peer/table floor | flatness |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in erows:
            fail = f"{r['peer_failures']}/{r['samples']}"
            deliver = _f(r["peer_deliver/idmint"], 1) if r["peer_failures"] else ""
            if r["peer_failures"] and r["peer_deliver_failed"]:
                deliver = "> " + deliver + " (gave up)"
            lines.append(
                f"| {r['fill']:g} | {r['n']} | {_f(r['idmint_ms'])} | {_f(r['peer_ms'])} |"
                f" {fail} | {_f(r['floor_ms'])} | {_f(r['table_floor_ms'])} |"
                f" {_f(r['peer/idmint'])} | {deliver} | {_f(r['idmint/floor'])} |"
                f" {_f(r['idmint/table floor'])} | {_f(r['peer/table floor'])} |"
                f" {_f(r['flatness'])} |"
            )
        lines.append("")
    ts = result.get("targets", [])
    if ts:
        lines += ["| target | measured | limit | result |", "|---|---:|---:|---|"]
        for t in ts:
            note = f" ({t['note']})" if t["note"] else ""
            lines.append(
                f"| {t['target']}{note} | {_f(t['value'])} | {t['op']} {t['limit']:g} |"
                f" {'pass' if t['pass'] else '**FAIL**'} |"
            )
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> bool:
    """Write the PNG chart; False (and a message) if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'idmint[bench]'): no chart")
        return False
    driver = result.get("driver", [])
    entity = result.get("entity_rows", [])
    panels = (2 if driver else 0) + (1 if entity else 0)
    if not panels:
        return False
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.8))
    if panels == 1:
        axes = [axes]
    i = 0
    peers = ["idmint", "ledger", "raw", "odoo", "odoo_spin", "nextval"]
    colors = {
        "idmint": "#1b9e77",
        "ledger": "#66a61e",
        "raw": "#7570b3",
        "odoo": "#d95f02",
        "odoo_spin": "#e6ab02",
        "nextval": "#999999",
    }
    for scenario, title in (("hot", "one hot fleet"), ("fleets100", "100 fleets")):
        if not driver:
            break
        ax = axes[i]
        i += 1
        clients = sorted({d["clients"] for d in driver if d["scenario"] == scenario})
        width = 0.8 / len(peers)
        for k, peer in enumerate(peers):
            vals = [_get(driver, scenario, peer, c) for c in clients]
            xs = [j + k * width for j in range(len(clients))]
            ax.bar(
                xs, [0 if math.isnan(v) else v for v in vals], width, label=peer, color=colors[peer]
            )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(clients))])
        ax.set_xticklabels([f"{c} clients" for c in clients])
        ax.set_yscale("log")
        ax.set_ylabel("IDs/s (log)")
        ax.set_title(f"Driver ids, {title}")
        ax.legend(fontsize=8)
    if entity:
        ax = axes[i]
        for n, style in ((30, "-"), (3000, "--")):
            rows = [r for r in entity if r["n"] == n]
            if not rows:
                continue
            labels = [str(r["fill"]) for r in rows]
            ax.plot(
                labels,
                [r["idmint_ms"] for r in rows],
                style,
                marker="o",
                color=colors["idmint"],
                label=f"idmint n={n}",
            )
            ax.plot(
                labels,
                [r["peer_deliver_ms"] for r in rows],
                style,
                marker="s",
                color=colors["odoo"],
                label=f"ADR peer n={n} (to deliver)",
            )
            ax.plot(
                labels,
                [r["floor_ms"] for r in rows],
                style,
                marker=".",
                color=colors["nextval"],
                label=f"insert floor n={n}",
            )
        ax.set_yscale("log")
        ax.set_xlabel("fill %")
        ax.set_ylabel("ms per call (log)")
        ax.set_title("Entity numbers")
        ax.legend(fontsize=7)
    fig.suptitle(f"idmint benchmarks ({result['meta']['mode']} run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
