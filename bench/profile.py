# ruff: noqa: E501  (SQL text)
"""`--profile`: where idmint's driver-id path spends its time, and what cheaper variants of
the same work would reach (side by side with the raw counter).

Needs the cluster started with pg_stat_statements and track_functions (env.PROFILE_SETTINGS).
The variants live in the throwaway database only (schema bench); sql/ is not touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from . import driver, env

VARIANTS = """
-- v1: next_driver_id's fast path with the helpers inlined (no nested SET search_path
-- functions: _durable, _format_driver_id), still plpgsql, still SECURITY DEFINER.
CREATE FUNCTION bench.next_v1(fleet uuid) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    num integer; code text; max_drivers integer; assigned integer;
BEGIN
    UPDATE idmint.fleets f
    SET last_number = f.last_number + 1, assigned = f.assigned + 1
    WHERE f.fleet_id = next_v1.fleet AND f.unassigned = 0 AND f.last_number < f.max_drivers
    RETURNING f.last_number, f.code, f.max_drivers, f.assigned INTO num, code, max_drivers, assigned;
    IF FOUND THEN
        INSERT INTO idmint.driver_numbers (fleet_id, number, state, assigned_at, issued_by,
                                           application_name, how)
        VALUES (fleet, num, 'assigned', now(), session_user, current_setting('application_name'), 'next');
        IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
            PERFORM set_config('synchronous_commit', 'on', true);
        END IF;
        IF assigned * 10 >= max_drivers * 8 THEN
            PERFORM idmint._capacity_alert('fleet', to_jsonb(code), max_drivers, assigned - 1, assigned,
                                           '{0.8,0.9,1.0}');
        END IF;
        RETURN 'DRV-' || lpad(num::text, 3, '0') || code;
    END IF;
    RETURN idmint.next_driver_id(fleet);
END
$$;

-- v2: the fast path as one SQL statement (UPDATE ... RETURNING feeding the ledger INSERT).
CREATE FUNCTION bench.next_v2(fleet uuid) RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH u AS (
        UPDATE idmint.fleets f
        SET last_number = f.last_number + 1, assigned = f.assigned + 1
        WHERE f.fleet_id = next_v2.fleet AND f.unassigned = 0 AND f.last_number < f.max_drivers
        RETURNING f.fleet_id, f.last_number, f.code),
    i AS (
        INSERT INTO idmint.driver_numbers (fleet_id, number, state, assigned_at, issued_by,
                                           application_name, how)
        SELECT u.fleet_id, u.last_number, 'assigned', now(), session_user,
               current_setting('application_name'), 'next' FROM u
        RETURNING number)
    SELECT 'DRV-' || lpad(u.last_number::text, 3, '0') || u.code FROM u
$$;

-- v3: v2's single statement inside plpgsql, keeping every duty of next_driver_id's fast
-- path (durable commit, capacity alert, fallback to the general allocator).
CREATE FUNCTION bench.next_v3(fleet uuid, request_key text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    num integer; code text; max_drivers integer; assigned integer;
BEGIN
    IF request_key IS NULL THEN
        WITH u AS (
            UPDATE idmint.fleets f
            SET last_number = f.last_number + 1, assigned = f.assigned + 1
            WHERE f.fleet_id = next_v3.fleet AND f.unassigned = 0 AND f.last_number < f.max_drivers
            RETURNING f.fleet_id, f.last_number, f.code, f.max_drivers, f.assigned),
        i AS (
            INSERT INTO idmint.driver_numbers (fleet_id, number, state, assigned_at, issued_by,
                                               application_name, how)
            SELECT u.fleet_id, u.last_number, 'assigned', now(), session_user,
                   current_setting('application_name'), 'next' FROM u)
        SELECT u.last_number, u.code, u.max_drivers, u.assigned FROM u
        INTO num, code, max_drivers, assigned;
        IF num IS NOT NULL THEN
            IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
                PERFORM set_config('synchronous_commit', 'on', true);
            END IF;
            IF assigned * 10 >= max_drivers * 8 THEN
                PERFORM idmint._capacity_alert('fleet', to_jsonb(code), max_drivers, assigned - 1,
                                               assigned, '{0.8,0.9,1.0}');
            END IF;
            RETURN 'DRV-' || lpad(num::text, 3, '0') || code;
        END IF;
    END IF;
    RETURN idmint.next_driver_id(fleet, request_key);
END
$$;

-- v4: v3 with the counter in a narrow table of its own (no text columns, no regex CHECK
-- re-evaluated on every counter update). Same ledger INSERT into idmint.driver_numbers.
CREATE TABLE bench.fleet_counters (
    fleet_id uuid PRIMARY KEY, max_drivers integer NOT NULL,
    last_number integer NOT NULL DEFAULT 0, assigned integer NOT NULL DEFAULT 0,
    unassigned integer NOT NULL DEFAULT 0);
INSERT INTO bench.fleet_counters (fleet_id, max_drivers) SELECT fleet_id, max_drivers FROM idmint.fleets;
CREATE FUNCTION bench.next_v4(fleet uuid, request_key text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    num integer; max_drivers integer; assigned integer;
BEGIN
    IF request_key IS NULL THEN
        WITH u AS (
            UPDATE bench.fleet_counters f
            SET last_number = f.last_number + 1, assigned = f.assigned + 1
            WHERE f.fleet_id = next_v4.fleet AND f.unassigned = 0 AND f.last_number < f.max_drivers
            RETURNING f.fleet_id, f.last_number, f.max_drivers, f.assigned),
        i AS (
            INSERT INTO idmint.driver_numbers (fleet_id, number, state, assigned_at, issued_by,
                                               application_name, how)
            SELECT u.fleet_id, u.last_number, 'assigned', now(), session_user,
                   current_setting('application_name'), 'next' FROM u)
        SELECT u.last_number, u.max_drivers, u.assigned FROM u INTO num, max_drivers, assigned;
        IF num IS NOT NULL THEN
            IF current_setting('synchronous_commit') IN ('off', 'local', 'remote_write') THEN
                PERFORM set_config('synchronous_commit', 'on', true);
            END IF;
            -- (the capacity alert and the code lookup would follow here, after the lock)
            RETURN 'DRV-' || lpad(num::text, 3, '0');
        END IF;
    END IF;
    RETURN idmint.next_driver_id(fleet, request_key);
END
$$;

-- Peers with the same shape as idmint's work: counter + ledger row.
CREATE TABLE bench.ledger (scope integer, v bigint, at timestamptz, PRIMARY KEY (scope, v));
CREATE FUNCTION bench.raw_plus_ledger(s integer) RETURNS bigint
LANGUAGE sql VOLATILE
AS $$
    WITH u AS (UPDATE bench.counters SET v = v + 1 WHERE scope = s RETURNING scope, v),
         i AS (INSERT INTO bench.ledger SELECT u.scope, u.v, now() FROM u)
    SELECT v FROM u
$$;
"""


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
            "UPDATE bench.counters SET v = v + 1 WHERE scope = 1 RETURNING v",
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
        conn.execute(VARIANTS)
        fleet = conn.execute(
            "SELECT fleet_id::text FROM bench.pool WHERE grp = 2 ORDER BY w DESC LIMIT 1"
        ).fetchone()
        assert fleet is not None
        out["explain"] = _explain(conn, fleet[0])
        for line in out["explain"]:
            log("    " + line)

        def scripts_for(g: driver.Group) -> dict[str, str]:
            pick = driver.pick_fleet(g)
            lookup = driver.lookup(g, "fleet_id")
            scope = driver.lookup(g, "scope")
            return {
                "idmint": pick + f"SELECT idmint.next_driver_id({lookup});\n",
                "v1 (helpers inlined)": pick + f"SELECT bench.next_v1({lookup});\n",
                "v2 (one SQL statement)": pick + f"SELECT bench.next_v2({lookup});\n",
                "v3 (v2 inside plpgsql)": pick + f"SELECT bench.next_v3({lookup});\n",
                "v4 (v3 + narrow counter table)": pick + f"SELECT bench.next_v4({lookup});\n",
                "raw": pick
                + f"UPDATE bench.counters SET v = v + 1 WHERE scope = {scope} RETURNING v;\n",
                "raw + ledger row": pick + f"SELECT bench.raw_plus_ledger({scope});\n",
            }

        plan: list[tuple[str, int, str, str]] = []
        for clients in (1, 8, 32):
            for name, text in scripts_for(hot).items():
                plan.append(("hot", clients, name, text))
        for name, text in scripts_for(gs[driver.SPREAD]).items():
            if not name.startswith("v2"):
                plan.append(("100 fleets", 32, name, text))
        for rep in range(reps):
            for scen, clients, name, text in plan:
                driver.reset(conn)
                conn.execute("TRUNCATE bench.ledger")
                conn.execute(
                    "UPDATE bench.fleet_counters SET last_number = 0, assigned = 0"
                    " WHERE last_number <> 0"
                )
                conn.execute("VACUUM bench.fleet_counters")
                conn.execute("SELECT pg_stat_statements_reset()")
                conn.execute("SELECT pg_stat_reset()")
                r = driver.run_pgbench(pgbench, parts, text, clients, seconds, 1)
                check = driver.verify(conn, "raw" if name.startswith("raw") else "idmint", r)
                entry = out["runs"].setdefault(f"{scen}: {name} @ {clients}", {"ids_per_s": []})
                entry["ids_per_s"].append(r["ids_per_s"])
                if rep == 0:
                    entry["statements"] = _top_statements(conn)
                    entry["functions"] = _functions(conn)
                log(
                    f"  rep {rep + 1} {scen} {clients:>2} clients {name:<30}"
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
            log(f"  median {key:<48} {entry['median_ids_per_s']:>8,.0f} IDs/s")
    return out
