"""App-shaped entity-number benchmarks (project issue 11), each beside its peer:

* open app transactions: 8 clients; each transaction takes one number, then does 20 ms
  of other work (pg_sleep(0.02)) and commits. idmint (`gen_entity_number('batch')`)
  against the ADR-017 design (a random candidate inserted with ON CONFLICT DO NOTHING, no
  lock, retried on a collision) -- transactions per second.
* the ORM path: 10 000 rows into a table whose varchar(7) column has
  `DEFAULT idmint.gen_entity_number('order')`, against the same rows numbered by one
  `gen_entity_numbers('order', 10000)` call; also the trigger path
  (`assign_entity_number`, NULL column), the two together (the DEFAULT's number bound by
  the trigger, as the contract pairs them) and a plain insert of known numbers (the floor).
  Each run is one INSERT ... SELECT in its own transaction, rolled back (the fill stays 0).
* one long transaction: the DEFAULT + trigger path in chunks of 10 000 rows (a row must not
  cost more for the rows before it), its commit, and the commit of an upsert that stores
  none of those rows again (every number given back).
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from typing import Any

import psycopg

CLIENTS = 8
WORK_S = 0.02
ROWS = 10_000


def setup(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE SCHEMA IF NOT EXISTS benchapp")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS benchapp.adr (number integer PRIMARY KEY)"
    )  # the ADR peer's registry
    conn.execute(
        "CREATE TABLE benchapp.by_default (id integer,"
        " num varchar(7) NOT NULL UNIQUE DEFAULT idmint.gen_entity_number('order'))"
    )
    conn.execute("CREATE TABLE benchapp.plain (id integer, num varchar(7) NOT NULL UNIQUE)")
    # The trigger alone, with the DEFAULT ('order', rolled back), and in one long
    # transaction that commits ('quote', so that the order type stays at 0 % fill).
    for table, entity, default in (
        ("by_trigger", "order", False),
        ("by_both", "order", True),
        ("long_tx", "quote", True),
    ):
        column = f" DEFAULT idmint.gen_entity_number('{entity}')" if default else ""
        conn.execute(f"CREATE TABLE benchapp.{table} (id integer, num varchar(7) UNIQUE{column})")
        conn.execute(
            f"CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON benchapp.{table}"
            f" FOR EACH ROW EXECUTE FUNCTION idmint.assign_entity_number('num', '{entity}')"
        )
    conn.execute("ALTER TABLE benchapp.long_tx ADD PRIMARY KEY (id)")


# --- open app transactions -----------------------------------------------------------


def _idmint_tx(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT idmint.gen_entity_number('batch')")
        conn.execute("SELECT pg_sleep(%s)", [WORK_S])


def _adr_tx(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        while True:
            candidate = 3_000_000 + random.randrange(1_000_000)
            cur = conn.execute(
                "INSERT INTO benchapp.adr (number) VALUES (%s) ON CONFLICT DO NOTHING", [candidate]
            )
            if cur.rowcount == 1:
                break
        conn.execute("SELECT pg_sleep(%s)", [WORK_S])


def open_transactions(dsn: str, who: str, seconds: float) -> dict[str, Any]:
    """CLIENTS threads run transactions back to back for `seconds`; tx/s and failures."""
    body = _idmint_tx if who == "idmint" else _adr_tx
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(CLIENTS)]
    done = [0] * CLIENTS
    errors: list[str] = []
    start = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        start.wait()
        while not stop.is_set():
            try:
                body(conns[i])
                done[i] += 1
            except psycopg.Error as e:
                errors.append(f"{e.sqlstate}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    return {"who": who, "tx": sum(done), "tx_per_s": sum(done) / elapsed, "errors": errors[:5]}


# --- the ORM path --------------------------------------------------------------------


def _timed(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> float:
    t0 = time.perf_counter()
    cur = conn.execute(sql, params)
    dt = time.perf_counter() - t0
    assert cur.rowcount == ROWS, cur.rowcount
    conn.rollback()
    return dt * 1000


def orm_path(conn: psycopg.Connection[Any], reps: int) -> dict[str, Any]:
    """`conn` is not autocommit; every run is rolled back."""
    known = [str(x) for x in random.sample(range(4_000_000, 5_000_000), ROWS)]
    cases = {
        "default": (
            "INSERT INTO benchapp.by_default (id) SELECT g FROM generate_series(1, %s) g",
            [ROWS],
        ),
        "bulk": (
            "INSERT INTO benchapp.plain (id, num) SELECT row_number() OVER (), x"
            " FROM idmint.gen_entity_numbers('order', %s) x",
            [ROWS],
        ),
        "trigger": (
            "INSERT INTO benchapp.by_trigger (id) SELECT g FROM generate_series(1, %s) g",
            [ROWS],
        ),
        "default_trigger": (
            "INSERT INTO benchapp.by_both (id) SELECT g FROM generate_series(1, %s) g",
            [ROWS],
        ),
        "plain": (
            "INSERT INTO benchapp.plain (id, num) SELECT g, x"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u(x, g)",
            [known],
        ),
    }
    out: dict[str, list[float]] = {k: [] for k in cases}
    for sql, params in cases.values():  # warm-up
        _timed(conn, sql, params)
    for rep in range(reps):
        order = list(cases)
        order = order[rep % len(order) :] + order[: rep % len(order)]
        for k in order:
            out[k].append(_timed(conn, *cases[k]))
    med = {k: statistics.median(v) for k, v in out.items()}
    return {
        "ms": med,
        "raw_ms": out,
        "default_over_bulk": med["default"] / med["bulk"],
        "trigger_over_bulk": med["trigger"] / med["bulk"],
        "default_trigger_over_bulk": med["default_trigger"] / med["bulk"],
        "bulk_over_plain": med["bulk"] / med["plain"],
    }


def long_transaction(conn: psycopg.Connection[Any], chunks: int) -> dict[str, Any]:
    """DEFAULT + trigger, `chunks` statements of ROWS rows in one transaction: µs per row of
    each chunk (flat if no row costs more for the rows before it), then the commit; then
    the same ids again with NULL numbers through an upsert that stores none of them (the
    trigger's new numbers all given back at commit), and its commit."""
    per_row: list[float] = []
    for i in range(chunks):
        t0 = time.perf_counter()
        conn.execute(
            "INSERT INTO benchapp.long_tx (id) SELECT g FROM generate_series(%s::int, %s::int) g",
            [i * ROWS + 1, (i + 1) * ROWS],
        )
        per_row.append((time.perf_counter() - t0) * 1e6 / ROWS)
    t0 = time.perf_counter()
    conn.commit()
    commit_ms = (time.perf_counter() - t0) * 1000
    # NULL, not the DEFAULT: the trigger issues each row a number, given back at commit.
    conn.execute(
        "INSERT INTO benchapp.long_tx (id, num) SELECT g, NULL FROM generate_series(1, %s) g"
        " ON CONFLICT DO NOTHING",
        [chunks * ROWS],
    )
    t0 = time.perf_counter()
    conn.commit()
    upsert_commit_ms = (time.perf_counter() - t0) * 1000
    return {
        "rows": chunks * ROWS,
        "us_per_row": per_row,
        "last_over_first": per_row[-1] / per_row[0],
        "commit_ms": commit_ms,
        "upsert_nothing_commit_ms": upsert_commit_ms,
    }


def run(dsn: str, quick: bool, log: Any = print) -> dict[str, Any]:
    seconds = 5.0 if quick else 15.0
    reps = 3 if quick else 7
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn)
    result: dict[str, Any] = {"open_transactions": [], "orm": None}
    for who in ("idmint", "adr", "idmint", "adr") if not quick else ("idmint", "adr"):
        r = open_transactions(dsn, who, seconds)
        result["open_transactions"].append(r)
        log(f"  open transactions, {who:>6}: {r['tx_per_s']:7.1f} tx/s  errors {len(r['errors'])}")
    by = {
        who: statistics.median(
            r["tx_per_s"] for r in result["open_transactions"] if r["who"] == who
        )
        for who in ("idmint", "adr")
    }
    result["open_tx_ratio"] = by["idmint"] / by["adr"]
    log(f"  open transactions: idmint / ADR = {result['open_tx_ratio']:.2f}")
    with psycopg.connect(dsn) as conn:
        orm = orm_path(conn, reps)
    result["orm"] = orm
    log(
        "  ORM path, 10 000 rows (ms): "
        + ", ".join(f"{k} {v:.1f}" for k, v in orm["ms"].items())
        + f"; default/bulk {orm['default_over_bulk']:.2f},"
        + f" trigger/bulk {orm['trigger_over_bulk']:.2f},"
        + f" default+trigger/bulk {orm['default_trigger_over_bulk']:.2f}"
    )
    with psycopg.connect(dsn) as conn:
        long_tx = long_transaction(conn, 3 if quick else 6)
    result["long_tx"] = long_tx
    log(
        f"  one transaction, DEFAULT + trigger, {long_tx['rows']} rows: µs per row by chunk "
        + " / ".join(f"{x:.0f}" for x in long_tx["us_per_row"])
        + f" (last/first {long_tx['last_over_first']:.2f}), commit {long_tx['commit_ms']:.0f} ms;"
        + f" an upsert storing none of them: commit {long_tx['upsert_nothing_commit_ms']:.0f} ms"
    )
    return result
