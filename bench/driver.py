"""Driver ids: idmint.next_driver_id against the ledgered counter (a gapless counter plus
one ledger row, in one statement: the fair limit), the bare counter, Odoo's no_gap
sequence and nextval, with pgbench (and a Python client for Odoo, whose retry pgbench
cannot do; the same client also runs idmint so that their latencies compare).

A fleet holds at most 999 ids, but one point allocates tens of thousands. Every peer
therefore resolves its target through the same lookup in `bench.pool`, keyed by a time
window: all clients hit the same fleet (hot) or the same 100 fleets during a window, and
the next window moves to fresh fleets (and, for the other peers, to fresh counter rows).
The windows are short enough that a fleet never gets near 999 (checked after every
point), and every peer pays the same lookup. Between points everything is reset
(TRUNCATE of the ledger, counters back to 0, VACUUM, CHECKPOINT).
"""

from __future__ import annotations

import math
import random
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors

HOT, SPREAD, BULK = 0, 1, 2


@dataclass(frozen=True)
class Group:
    grp: int
    fleets: int  # fleets in use at once
    window_ms: int  # a window's fleets are used for this long, then fresh ones
    cycles: int  # windows before the pool wraps (must exceed the point's duration)


@dataclass
class Point:
    scenario: str  # hot | fleets100 | bulk
    peer: str
    clients: int
    ids_per_tx: int = 1
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.peer}/{self.clients}"

    def median_ids(self) -> float:
        vals: list[float] = sorted(float(r["ids_per_s"]) for r in self.runs)
        if not vals:
            return math.nan
        mid = len(vals) // 2
        return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["median_ids_per_s"] = self.median_ids()
        d["failed_total"] = sum(r.get("failed", 0) for r in self.runs)
        d["aborted_clients"] = sum(r.get("aborted", 0) for r in self.runs)
        return d


def groups(duration: float) -> dict[int, Group]:
    span = duration + 10  # the pool must not wrap within one point
    return {
        # Hot: one fleet for 40 ms (< 999 ids even at ~20 000 ids/s), then the next one.
        HOT: Group(HOT, 1, 40, math.ceil(span * 1000 / 40)),
        # 100 fleets for 2 s each (< 999 ids per fleet below ~45 000 ids/s in total).
        SPREAD: Group(SPREAD, 100, 2000, math.ceil(span * 1000 / 2000)),
        # Bulk/single comparison: one client walks the pool by its own counter.
        BULK: Group(BULK, 1, 0, math.ceil(span * 150) + 50),
    }


SETUP = """
CREATE SCHEMA bench;
CREATE TABLE bench.counters (scope integer PRIMARY KEY, v bigint NOT NULL DEFAULT 0);
-- The ledgered counter (issue 14): keyed by the fleet's code, like a real app would.
CREATE TABLE bench.lcounters (scope text PRIMARY KEY, v integer NOT NULL DEFAULT 0);
CREATE TABLE bench.ledger (scope text, number int, at timestamptz DEFAULT now(),
                           who text DEFAULT session_user, PRIMARY KEY (scope, number));
CREATE TABLE bench.pool (
    grp integer, w integer, f integer,
    fleet_id uuid NOT NULL, code text NOT NULL, scope integer NOT NULL, seq regclass NOT NULL,
    PRIMARY KEY (grp, w, f));
CREATE SEQUENCE bench.seq_hot;
"""


def setup(conn: psycopg.Connection[Any], gs: dict[int, Group]) -> None:
    """Create the peers' tables and the pool of fleets / counters / sequences."""
    conn.execute(SETUP)
    for i in range(1, 101):
        conn.execute(f"CREATE SEQUENCE bench.seq_{i}")
    for g in gs.values():
        conn.execute(
            """
            INSERT INTO bench.pool (grp, w, f, fleet_id, code, scope, seq)
            SELECT %(g)s, w, f, a.fleet_id, a.code, 0,
                   CASE WHEN %(g)s = 1 THEN format('bench.seq_%%s', f)
                        ELSE 'bench.seq_hot' END::regclass
            FROM generate_series(0, %(cycles)s - 1) w, generate_series(1, %(fleets)s) f,
                 LATERAL idmint.add_fleet(format('bench %%s/%%s/%%s', %(g)s, w, f)) a
            """,
            {"g": g.grp, "cycles": g.cycles, "fleets": g.fleets},
        )
    conn.execute(
        """
        UPDATE bench.pool p SET scope = s.rn
        FROM (SELECT grp, w, f, row_number() OVER (ORDER BY grp, w, f) AS rn FROM bench.pool) s
        WHERE (p.grp, p.w, p.f) = (s.grp, s.w, s.f)
        """
    )
    conn.execute("INSERT INTO bench.counters (scope) SELECT scope FROM bench.pool")
    conn.execute("INSERT INTO bench.lcounters (scope) SELECT code FROM bench.pool")
    conn.execute("VACUUM ANALYZE bench.pool, bench.counters, bench.lcounters, idmint.fleets")


def reset(conn: psycopg.Connection[Any]) -> None:
    """Back to empty fleets and zero counters; flush everything so points start equal."""
    conn.execute("TRUNCATE idmint.driver_numbers, idmint.driver_id_events")
    conn.execute(
        "UPDATE idmint.fleets SET last_number = 0, assigned = 0, unassigned = 0"
        " WHERE last_number <> 0 OR assigned <> 0 OR unassigned <> 0"
    )
    conn.execute("UPDATE bench.counters SET v = 0 WHERE v <> 0")
    conn.execute("TRUNCATE bench.ledger")
    conn.execute("UPDATE bench.lcounters SET v = 0 WHERE v <> 0")
    conn.execute(
        "VACUUM ANALYZE idmint.fleets, idmint.driver_numbers, bench.counters, bench.lcounters"
    )
    conn.execute("CHECKPOINT")


def fullest_fleet(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(last_number), 0) FROM idmint.fleets").fetchone()
    return int(row[0]) if row else 0


def verify(conn: psycopg.Connection[Any], peer: str, r: dict[str, Any]) -> bool:
    """Did the point really hand out the ids it counted? (Before the next reset.)"""
    if peer == "ledger":
        row = conn.execute(
            "SELECT (SELECT count(*) FROM bench.ledger),"
            " (SELECT coalesce(sum(v), 0) FROM bench.lcounters)"
        ).fetchone()
        r["issued_in_db"] = int(row[0]) if row else -1
        return bool(row) and int(row[0]) == int(row[1]) == int(r["processed"])
    if peer.startswith("idmint"):
        row = conn.execute("SELECT count(*) FROM idmint.driver_numbers").fetchone()
        issued = int(row[0]) if row else -1
        expected = int(r["processed"]) * (100 if peer == "idmint_bulk100" else 1)
        r["issued_in_db"] = issued
        if peer == "idmint_client":  # counts only requests that finished inside the window
            return issued >= int(r["processed"])
        return issued == expected
    if peer in ("raw", "odoo", "odoo_spin"):
        row = conn.execute("SELECT coalesce(sum(v), 0) FROM bench.counters").fetchone()
        issued = int(row[0]) if row else -1
        r["issued_in_db"] = issued
        # the Odoo client counts only requests that finished inside the window
        done = int(r["processed"])
        return issued == done if peer == "raw" else issued >= done
    return True  # nextval: sequences are not reset


def window_expr(g: Group) -> str:
    # A scalar subquery (InitPlan): evaluated once per statement, so it is an index key;
    # a bare clock_timestamp() would be re-evaluated per row.
    return (
        f"(SELECT ((floor(extract(epoch FROM clock_timestamp()) * 1000 / {g.window_ms}))::bigint"
        f" % {g.cycles})::integer)"
    )


def lookup(g: Group, col: str) -> str:
    if g.grp == BULK:
        raise ValueError("the bulk pool is walked by a counter")
    return f"(SELECT {col} FROM bench.pool WHERE grp = {g.grp} AND w = {window_expr(g)} AND f = :f)"


def pick_fleet(g: Group) -> str:
    return "\\set f 1\n" if g.fleets == 1 else f"\\set f random(1, {g.fleets})\n"


def script(peer: str, g: Group) -> str:
    if peer == "idmint":
        return pick_fleet(g) + f"SELECT idmint.next_driver_id({lookup(g, 'fleet_id')});\n"
    if peer == "ledger":
        # Issue 14's statement, with the same fleet lookup as every other peer. The lookup
        # is a joined CTE so that the row-lock recheck (EvalPlanQual) after a wait keeps
        # the scope it started with: as a scalar subquery in WHERE it was evaluated again
        # with a later clock, and a statement that had waited past its window updated no
        # row (half the statements at 8 clients, hot).
        return (
            pick_fleet(g)
            + f"WITH s AS MATERIALIZED (SELECT {lookup(g, 'code')} AS scope),"
            + " c AS (UPDATE bench.lcounters l SET v = l.v + 1 FROM s"
            + " WHERE l.scope = s.scope AND l.v < 999 RETURNING l.scope, l.v)"
            + " INSERT INTO bench.ledger (scope, number) SELECT scope, v FROM c RETURNING number;\n"
        )
    if peer == "raw":
        return (
            pick_fleet(g)
            + "UPDATE bench.counters SET v = v + 1"
            + f" WHERE scope = {lookup(g, 'scope')} RETURNING v;\n"
        )
    if peer == "nextval":
        return pick_fleet(g) + f"SELECT nextval({lookup(g, 'seq')});\n"
    if peer == "idmint_bulk100":
        return (
            "\\set k :k + 1\n"
            "SELECT idmint.next_driver_ids((SELECT fleet_id FROM bench.pool"
            f" WHERE grp = {BULK} AND w = :k / 9 AND f = 1), 100);\n"
        )
    if peer == "idmint_single":
        return (
            "\\set k :k + 1\n"
            "SELECT idmint.next_driver_id((SELECT fleet_id FROM bench.pool"
            f" WHERE grp = {BULK} AND w = :k / 900 AND f = 1));\n"
        )
    raise ValueError(peer)


_RE = {
    "processed": re.compile(r"number of transactions actually processed: (\d+)"),
    "failed": re.compile(r"number of failed transactions: (\d+)"),
    "tps": re.compile(r"tps = ([0-9.]+) \(without initial connection time\)"),
    "latency": re.compile(r"latency average = ([0-9.]+) ms"),
}


def run_pgbench(
    pgbench: str, dsn_parts: dict[str, str], text: str, clients: int, duration: float, ids: int
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="idmint-bench-") as f:
        f.write(text)
        f.flush()
        argv = [
            pgbench,
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(max(1, round(duration))),
            "-D",
            "k=0",
            "-f",
            f.name,
            "-h",
            dsn_parts["host"],
            "-p",
            dsn_parts["port"],
            "-U",
            dsn_parts["user"],
            dsn_parts["dbname"],
        ]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    out = res.stdout
    vals = {k: r.search(out) for k, r in _RE.items()}
    aborted = len(re.findall(r"client \d+ (?:script \d+ )?aborted", res.stderr))
    tps = float(vals["tps"].group(1)) if vals["tps"] else 0.0
    errors_seen = sorted({ln.strip() for ln in res.stderr.splitlines() if "ERROR" in ln})[:3]
    return {
        "tps": tps,
        "ids_per_s": tps * ids,
        "processed": int(vals["processed"].group(1)) if vals["processed"] else 0,
        "failed": int(vals["failed"].group(1)) if vals["failed"] else 0,
        "aborted": aborted,
        "latency_avg_ms": float(vals["latency"].group(1)) if vals["latency"] else None,
        "exit": res.returncode,
        "errors": errors_seen,
    }


# --- Odoo no_gap -------------------------------------------------------------------------
# odoo/addons/base/models/ir_sequence.py `_update_nogap`: SELECT ... FOR UPDATE NOWAIT on the
# sequence row, then UPDATE number_next = number_next + 1. A NOWAIT failure (55P03) aborts
# the request's transaction; odoo/service/model.py `retrying` rolls back and retries the
# whole request up to MAX_TRIES_ON_CONCURRENCY_FAILURE = 5 times, sleeping
# random.uniform(0, 2 ** try) seconds between tries. "odoo" reproduces exactly that;
# "odoo_spin" retries at once, without limit: the best the NOWAIT design can do.
# "idmint_client" runs next_driver_id through the same client (one call, commit; it waits
# for the fleet lock instead of failing), so the latencies of the two compare directly.
ODOO_MAX_TRIES = 5


def run_odoo(dsn: str, g: Group, clients: int, duration: float, mode: str) -> dict[str, Any]:
    lock_sql = (
        "SELECT c.scope, c.v FROM bench.counters c"
        f" WHERE c.scope = {lookup(g, 'scope').replace('%', '%%').replace(':f', '%(f)s')}"
        " FOR UPDATE NOWAIT"
    )
    upd_sql = "UPDATE bench.counters SET v = v + 1 WHERE scope = %(s)s RETURNING v"
    idmint_sql = (
        "SELECT idmint.next_driver_id("
        + lookup(g, "fleet_id").replace("%", "%%").replace(":f", "%(f)s")
        + ")"
    )
    stop = threading.Event()
    start = threading.Barrier(clients + 1)
    stats: list[dict[str, int]] = []
    problems: list[str] = []
    end_at = [0.0]

    latencies: list[float] = []

    def worker() -> None:
        st = {"ok": 0, "failed": 0, "lock_failures": 0}
        stats.append(st)
        mine: list[float] = []
        rnd = random.Random()
        try:
            conn = psycopg.connect(dsn, prepare_threshold=0)
        except psycopg.Error as e:  # pragma: no cover - reported
            problems.append(str(e))
            start.abort()
            return
        try:
            start.wait()
            while not stop.is_set():
                f = rnd.randint(1, g.fleets)
                tries = 0
                began = time.monotonic()
                while not stop.is_set():
                    tries += 1
                    try:
                        if mode == "idmint_client":
                            conn.execute(idmint_sql, {"f": f}).fetchone()
                        else:
                            row = conn.execute(lock_sql, {"f": f}).fetchone()
                            assert row is not None
                            conn.execute(upd_sql, {"s": row[0]}).fetchone()
                        conn.commit()
                        done = time.monotonic()
                        if done <= end_at[0]:
                            st["ok"] += 1
                            mine.append(done - began)
                        break
                    except errors.LockNotAvailable:
                        conn.rollback()
                        st["lock_failures"] += 1
                        if mode == "odoo":
                            if tries >= ODOO_MAX_TRIES:
                                st["failed"] += 1
                                break
                            stop.wait(rnd.uniform(0.0, 2.0**tries))
        except threading.BrokenBarrierError:
            pass
        except Exception as e:
            problems.append(repr(e))
        finally:
            conn.close()
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    end_at[0] = t0 + duration
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    ok = sum(s["ok"] for s in stats)
    latencies.sort()

    def pct(q: float) -> float | None:
        return (
            round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)
            if latencies
            else None
        )

    return {
        "latency_avg_ms": round(sum(latencies) / len(latencies) * 1000, 2) if latencies else None,
        "latency_p50_ms": pct(0.50),
        "latency_p99_ms": pct(0.99),
        "latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "tps": ok / duration,
        "ids_per_s": ok / duration,
        "processed": ok,
        "failed": sum(s["failed"] for s in stats),
        "lock_failures": sum(s["lock_failures"] for s in stats),
        "aborted": len(problems),
        "errors": problems[:3],
    }


def matrix(quick: bool, only_clients: list[int] | None = None) -> list[Point]:
    pts: list[Point] = []
    for c in (1, 8, 32):
        for peer in ("idmint", "ledger", "raw", "odoo", "odoo_spin", "idmint_client", "nextval"):
            if peer in ("odoo_spin", "idmint_client") and c == 1:
                continue  # no contention: same as odoo; latency compared under contention
            pts.append(Point("hot", peer, c))
    for c in (8, 32):
        for peer in ("idmint", "ledger", "raw", "odoo", "nextval"):
            pts.append(Point("fleets100", peer, c))
    pts.append(Point("bulk", "idmint_single", 1, 1))
    pts.append(Point("bulk", "idmint_bulk100", 1, 100))
    if only_clients:
        pts = [p for p in pts if p.clients in only_clients or p.scenario == "bulk"]
    return pts


def run_point(
    p: Point,
    gs: dict[int, Group],
    pgbench: str,
    dsn: str,
    dsn_parts: dict[str, str],
    duration: float,
) -> dict[str, Any]:
    g = gs[{"hot": HOT, "fleets100": SPREAD, "bulk": BULK}[p.scenario]]
    if p.peer in ("odoo", "odoo_spin", "idmint_client"):
        return run_odoo(dsn, g, p.clients, duration, p.peer)
    return run_pgbench(pgbench, dsn_parts, script(p.peer, g), p.clients, duration, p.ids_per_tx)


def dsn_parts_of(dsn: str) -> dict[str, str]:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return {k: str(info[k]) for k in ("host", "port", "user", "dbname")}


def scripts_for_docs(gs: dict[int, Group]) -> dict[str, str]:
    out = {}
    for peer in ("idmint", "ledger", "raw", "nextval"):
        out[f"hot/{peer}"] = script(peer, gs[HOT])
        out[f"fleets100/{peer}"] = script(peer, gs[SPREAD])
    out["bulk/idmint_single"] = script("idmint_single", gs[BULK])
    out["bulk/idmint_bulk100"] = script("idmint_bulk100", gs[BULK])
    return out


def write_scripts(directory: Path, gs: dict[int, Group]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in scripts_for_docs(gs).items():
        (directory / (name.replace("/", "_") + ".sql")).write_text(text, encoding="utf-8")
