"""`python -m bench`: run idmint and its peers side by side on a throwaway cluster."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from . import app, driver, entity, env, profile, report

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark idmint against its peers (driver ids and entity numbers).",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="2 s per point, 1 repetition, fewer entity samples (about 5 minutes)",
    )
    ap.add_argument("--duration", type=float, help="seconds per driver-id point (default 10)")
    ap.add_argument("--reps", type=int, help="repetitions per driver-id point (default 3)")
    ap.add_argument(
        "--only",
        choices=("driver", "entity", "app"),
        help="run one part only (app: the app-shaped entity benchmarks of issue 11)",
    )
    ap.add_argument("--clients", type=int, nargs="+", help="only these client counts")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also profile idmint's driver-id path (pg_stat_statements,"
        " track_functions, EXPLAIN) and print the findings",
    )
    ap.add_argument(
        "--profile-only",
        action="store_true",
        help="only the profile (no peer matrix, no entity numbers)",
    )
    # Results go to bench/out/ (ignored by git); docs/BENCHMARKS.md quotes the figures.
    ap.add_argument("--out", type=Path, default=OUT / "results.json")
    ap.add_argument("--chart", type=Path, default=OUT / "chart.png")
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(msg, flush=True)


def run_driver(
    cluster: Any,
    dsn: str,
    duration: float,
    reps: int,
    clients: list[int] | None,
    quick: bool,
    profile_only: bool = False,
) -> tuple[list[driver.Point], dict[str, Any]]:
    pgbench = env.pgbench_path(cluster)
    gs = driver.groups(duration)
    parts = driver.dsn_parts_of(dsn)
    pts = [] if profile_only else driver.matrix(quick, clients)
    with psycopg.connect(dsn, autocommit=True) as conn:
        driver.setup(conn, gs)
        for rep in range(reps):
            for p in pts:
                driver.reset(conn)
                r = driver.run_point(p, gs, pgbench, dsn, parts, duration)
                r["rep"] = rep
                r["fullest_fleet"] = driver.fullest_fleet(conn)
                r["verified"] = driver.verify(conn, p.peer, r)
                p.runs.append(r)
                extra = (
                    "" if r["verified"] else f"  NOT VERIFIED (db shows {r.get('issued_in_db')})"
                )
                client = p.peer.startswith("odoo") or p.peer == "idmint_client"
                if client:
                    extra += (
                        f"  [failed requests {r['failed']}, lock failures"
                        f" {r['lock_failures']}, p50 {r['latency_p50_ms']} ms,"
                        f" p99 {r['latency_p99_ms']} ms]"
                    )
                if not client and (r.get("failed") or r.get("aborted")):
                    extra += (
                        f"  failed {r.get('failed')} aborted {r.get('aborted')} {r.get('errors')}"
                    )
                if r["fullest_fleet"] >= 999:
                    extra += "  (a fleet filled up: window too long for this rate)"
                log(f"  rep {rep + 1}/{reps} {p.key:<24} {r['ids_per_s']:>10,.0f} IDs/s{extra}")
    meta = {
        "groups": {k: vars(v) for k, v in gs.items()},
        "scripts": driver.scripts_for_docs(gs),
        "gs": gs,
    }
    return pts, meta


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    quick = args.quick
    if args.profile_only:
        args.profile = True
        args.only = "driver"
        if args.out == OUT / "results.json":
            args.out = OUT / "profile.json"
    duration = args.duration or (2.0 if quick else 10.0)
    reps = args.reps or (1 if quick else 3)
    started = time.monotonic()
    mode = "quick" if quick else "full"
    if args.profile_only:
        mode = "profile"
    elif args.duration or args.reps or args.only or args.clients:
        mode += " (custom)"
    log(f"idmint bench: {mode} run, {duration:g} s per driver-id point, {reps} repetition(s)")
    result: dict[str, Any] = {}
    with env.start_cluster(profile=args.profile) as cluster:
        dsn = cluster.dsn_for(env.DBNAME)
        with psycopg.connect(dsn, autocommit=True) as conn:
            result["meta"] = {
                "mode": mode,
                "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "duration_s": duration,
                "reps": reps,
                "machine": env.machine(cluster, conn),
            }
        m = result["meta"]["machine"]
        log(
            f"machine: {m['nproc']} cpu, {m['memory_gib']} GiB, {m['postgresql'][:40]},"
            f" fsync probe: {m['fsync_probe'] or '-'}"
        )
        if args.only in (None, "driver"):
            log("driver ids (pgbench -M prepared; Odoo peers with a Python client):")
            pts, dmeta = run_driver(
                cluster, dsn, duration, reps, args.clients, quick, args.profile_only
            )
            result["driver"] = [p.as_dict() for p in pts]
            gs = dmeta.pop("gs")
            result["driver_meta"] = dmeta
            result["driver_ratios"] = report.driver_ratios(result["driver"])
            result["driver_latency"] = report.driver_latency(result["driver"])
            single = report._get(result["driver"], "bulk", "idmint_single", 1)
            bulk = report._get(result["driver"], "bulk", "idmint_bulk100", 1)
            result["bulk"] = {
                "single_ids_per_s": single,
                "bulk_ids_per_s": bulk,
                "ratio": bulk / single if single else math.nan,
            }
            if args.profile:
                log("profiling idmint's driver-id path:")
                result["profile"] = profile.run(cluster, dsn, gs, log, min(duration, 5.0), reps)
        if args.only in (None, "app") and not args.profile_only:
            log("entity numbers, app-shaped (open transactions, ORM path):")
            result["app"] = app.run(dsn, quick, log)
        if args.only in (None, "entity") and not args.profile_only:
            log("entity numbers: filling one type per fill level (idmint and the peer)...")
            with psycopg.connect(dsn, autocommit=True) as maint, psycopg.connect(dsn) as conn:
                fills = entity.setup(maint, entity.FILLS)
                for f in fills:
                    log(
                        f"  fill {f['fill']}%: {f['count']} numbers,"
                        f" idmint {f['idmint_fill_s']:.1f} s"
                    )
                res = entity.measure(conn, maint, entity.FILLS, entity.NS, quick, log)
            result["entity_fill"] = fills
            result["entity"] = [p.as_dict() for p in res]
            result["entity_rows"] = report.entity_rows(result["entity"])
    result["targets"] = report.targets(
        result.get("driver", []), result.get("driver_ratios", []), result.get("entity_rows", [])
    ) + report.app_targets(result.get("app"))
    result["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    table = report.markdown(result)
    print()
    print(table)
    chart = False if args.profile_only else report.chart(result, args.chart)
    log(
        f"wrote {args.out}"
        + (f" and {args.chart}" if chart else "")
        + f" in {result['meta']['wall_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
