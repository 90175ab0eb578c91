"""`--profile`: where idmint's driver-id path spends its time, against the ledgered counter
and against the choices the hot path no longer makes (bench/profile_variants.sql).

Two measures:
- CPU per call without the commit flush: 900 fleets, one call each per DO block (so no
  row gets a long version chain), the backend's own CPU time read from /proc before and
  after. On a shared 2-core machine this is much steadier than a rate.
- pgbench rates with pg_stat_statements and track_functions (needs the cluster started
  with env.PROFILE_SETTINGS), plus EXPLAIN of the fast path's statements.
The variants live in the throwaway database only (schema bench); sql/ is not touched.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from . import driver, env

VARIANTS = Path(__file__).resolve().parent / "profile_variants.sql"
CPU_FLEETS = 900
TICK = os.sysconf("SC_CLK_TCK")

# One call per row r (r.fleet_id uuid, r.code text) of bench.cpu_fleets.
CPU_CALLS = {
    "ledgered counter": "WITH c AS (UPDATE bench.lcounters SET v = v + 1"
    " WHERE scope = r.code AND v < 999 RETURNING scope, v)"
    " INSERT INTO bench.ledger (scope, number) SELECT scope, v FROM c",
    "idmint next_driver_id(uuid)": "PERFORM idmint.next_driver_id(r.fleet_id)",
    "idmint next_driver_id(code)": "PERFORM idmint.next_driver_id(r.code)",
    "before: old text path (3 pinned calls)": "PERFORM bench.next_text_nested(r.code)",
    "before: 9 CHECKs, fillfactor 100": "PERFORM bench.next_checked(r.fleet_id)",
}


def _backend_cpu_s(pid: int) -> float:
    # /proc/<pid>/stat fields 14 and 15: utime and stime in clock ticks.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_per_call(
    conn: psycopg.Connection[Any], rounds: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Median backend CPU and WAL per call of each entry of CPU_CALLS (rounds interleaved)."""
    conn.execute(
        "CREATE TABLE bench.cpu_fleets AS SELECT row_number() OVER () AS i, fleet_id, code"
        " FROM (SELECT fleet_id, code FROM bench.pool WHERE grp = %s ORDER BY w LIMIT %s) p",
        [driver.BULK, CPU_FLEETS],
    )
    conn.execute(
        "INSERT INTO bench.fleets_checked (fleet_id, code, name, max_drivers)"
        " SELECT fleet_id, code, name, max_drivers FROM idmint.fleets"
        " ON CONFLICT DO NOTHING"
    )
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    pid = int(row[0])
    local = Path(f"/proc/{pid}/stat").exists()
    cpu: dict[str, list[float]] = {k: [] for k in CPU_CALLS}
    wal: dict[str, list[float]] = {k: [] for k in CPU_CALLS}
    for _ in range(rounds):
        for name, call in CPU_CALLS.items():
            block = (
                "DO $$DECLARE r record; BEGIN FOR r IN SELECT fleet_id, code FROM bench.cpu_fleets"
                f" ORDER BY i LOOP {call}; END LOOP; END$$"
            )
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
            assert lsn is not None
            t0 = _backend_cpu_s(pid) if local else time.process_time()
            w0 = time.perf_counter()
            conn.execute(block)
            spent = (_backend_cpu_s(pid) - t0) if local else time.perf_counter() - w0
            cpu[name].append(spent / CPU_FLEETS * 1e6)
            b = conn.execute(
                "SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", [str(lsn[0])]
            ).fetchone()
            assert b is not None
            wal[name].append(float(b[0]) / CPU_FLEETS)
    base = statistics.median(cpu["ledgered counter"]) or float("nan")
    out: dict[str, Any] = {"measure": "backend CPU" if local else "wall clock", "calls": {}}
    for name in CPU_CALLS:
        us = statistics.median(cpu[name])
        out["calls"][name] = {
            "us_per_call": round(us, 1),
            "x_ledgered": round(us / base, 2),
            "wal_bytes_per_call": round(statistics.median(wal[name])),
        }
        log(
            f"  cpu {name:<42} {us:7.1f} us/call ({us / base:4.2f}x ledgered)"
            f"  wal {statistics.median(wal[name]):5.0f} B/call"
        )
    return out


def _top_statements(conn: psycopg.Connection[Any], limit: int = 8) -> list[dict[str, Any]]:
    rows = conn.execute(
        """
        SELECT calls, round(total_exec_time::numeric, 1) AS total_ms,
               round((total_exec_time / greatest(calls, 1) * 1000)::numeric, 1) AS mean_us,
               shared_blks_hit, wal_bytes, left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
        FROM pg_stat_statements
        WHERE query NOT ILIKE '%%pg_stat%%' AND calls > 10
        ORDER BY total_exec_time DESC LIMIT %s
        """,
        [limit],
    ).fetchall()
    keys = ("calls", "total_ms", "mean_us", "blks_hit", "wal_bytes", "query")
    return [
        dict(zip(keys, (str(v) if not isinstance(v, int) else v for v in r), strict=True))
        for r in rows
    ]


def _functions(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    rows = conn.execute(
        """
        SELECT schemaname || '.' || funcname, calls, round(total_time::numeric, 1),
               round(self_time::numeric, 1),
               round((self_time / greatest(calls, 1) * 1000)::numeric, 1)
        FROM pg_stat_user_functions ORDER BY self_time DESC LIMIT 10
        """
    ).fetchall()
    keys = ("function", "calls", "total_ms", "self_ms", "self_us_per_call")
    return [dict(zip(keys, (str(v) for v in r), strict=True)) for r in rows]


def _explain(conn: psycopg.Connection[Any], fleet: str) -> list[str]:
    out: list[str] = []
    with conn.transaction(force_rollback=True):
        for sql in (
            "UPDATE idmint.fleets f SET last_number = f.last_number + 1, assigned = f.assigned + 1"
            " WHERE f.fleet_id = %(f)s AND f.unassigned = 0 AND f.last_number < f.max_drivers"
            " RETURNING f.last_number",
            "INSERT INTO idmint.driver_numbers (fleet_id, number, state, assigned_at, issued_by,"
            " application_name, how) VALUES (%(f)s, 998, 'assigned', now(), session_user,"
            " current_setting('application_name'), 'next')",
            "SELECT idmint.next_driver_id(%(f)s::uuid)",
            "UPDATE bench.lcounters SET v = v + 1 WHERE scope = 'XXX' AND v < 999 RETURNING v",
        ):
            plan = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, WAL, TIMING, SUMMARY) " + sql, {"f": fleet}
            ).fetchall()
            out.append("-- " + sql)
            out += ["   " + r[0] for r in plan]
    return out


def run(
    cluster: Any,
    dsn: str,
    gs: dict[int, driver.Group],
    log: Callable[[str], None],
    seconds: float,
    reps: int = 3,
) -> dict[str, Any]:
    pgbench = env.pgbench_path(cluster)
    parts = driver.dsn_parts_of(dsn)
    hot = gs[driver.HOT]
    out: dict[str, Any] = {"runs": {}}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(VARIANTS.read_text(encoding="utf-8"))
        driver.reset(conn)
        out["cpu"] = cpu_per_call(conn, max(3, reps * 2), log)
        driver.reset(conn)
        fleet = conn.execute(
            "SELECT fleet_id::text FROM bench.pool WHERE grp = 2 ORDER BY w DESC LIMIT 1"
        ).fetchone()
        assert fleet is not None
        out["explain"] = _explain(conn, fleet[0])
        for line in out["explain"]:
            log("    " + line)

        def scripts_for(g: driver.Group) -> dict[str, str]:
            pick = driver.pick_fleet(g)
            return {
                "idmint": driver.script("idmint", g),
                "idmint (code)": pick
                + f"SELECT idmint.next_driver_id({driver.lookup(g, 'code')});\n",
                "ledgered counter": driver.script("ledger", g),
                "bare counter": driver.script("raw", g),
            }

        plan: list[tuple[str, int, str, str]] = []
        for clients in (1, 8, 32):
            for name, text in scripts_for(hot).items():
                plan.append(("hot", clients, name, text))
        for name, text in scripts_for(gs[driver.SPREAD]).items():
            plan.append(("100 fleets", 32, name, text))
        for rep in range(reps):
            for scen, clients, name, text in plan:
                driver.reset(conn)
                conn.execute("SELECT pg_stat_statements_reset()")
                conn.execute("SELECT pg_stat_reset()")
                r = driver.run_pgbench(pgbench, parts, text, clients, seconds, 1)
                peer = {"ledgered counter": "ledger", "bare counter": "raw"}.get(name, "idmint")
                check = driver.verify(conn, peer, r)
                entry = out["runs"].setdefault(f"{scen}: {name} @ {clients}", {"ids_per_s": []})
                entry["ids_per_s"].append(r["ids_per_s"])
                if rep == 0:
                    entry["statements"] = _top_statements(conn)
                    entry["functions"] = _functions(conn)
                log(
                    f"  rep {rep + 1} {scen} {clients:>2} clients {name:<18}"
                    f" {r['ids_per_s']:>8,.0f} IDs/s"
                    f"  latency {r['latency_avg_ms']} ms{'' if check else '  (NOT VERIFIED)'}"
                )
                if name == "idmint" and clients == 1 and rep == 0 and scen == "hot":
                    for s in entry["statements"][:6]:
                        log(
                            f"      stmt {s['mean_us']:>7} us x{s['calls']}"
                            f"  wal {s['wal_bytes']}"
                            f"  {s['query'][:90]}"
                        )
                    for f in entry["functions"][:6]:
                        log(f"      func {f['self_us_per_call']:>7} us self  {f['function']}")
        for key, entry in out["runs"].items():
            vals = sorted(entry["ids_per_s"])
            entry["median_ids_per_s"] = vals[len(vals) // 2]
            log(f"  median {key:<40} {entry['median_ids_per_s']:>8,.0f} IDs/s")
    return out
