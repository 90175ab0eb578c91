"""Entity numbers under concurrency (CONTRACT section 4, revision 0.2): issuers never wait
for each other, never deadlock, exact counts and thresholds from committed state, random
order, nothing learnt from a rollback, and un-issuing at commit.

"Never waits" is decided by the server: the issuing session runs with a lock_timeout, so
any lock wait longer than that fails the call (55P03); no test measures time.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable

import psycopg
import pytest

from tests.util import Connect, gen, issued, raises_sqlstate, scalar, wait_until_blocked


def stored(conn: psycopg.Connection, prefix: int) -> int:
    return int(
        scalar(
            conn,
            "SELECT count(*) FROM idmint.entity_numbers WHERE number / 1000000 = %s",
            [prefix],
        )
    )  # type: ignore[arg-type]


def fill(conn: psycopg.Connection, prefix: int, count: int, step: int = 100_000) -> None:
    while count > 0:
        conn.execute(
            "SELECT count(*) FROM idmint.gen_entity_numbers(%s, %s)", [prefix, min(step, count)]
        )
        count -= step


def run_threads(*workers: Callable[[], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_an_open_transaction_blocks_no_other_issuer(connect: Connect) -> None:
    a = connect(autocommit=False)
    held = set(gen(a, "part", 1000))
    held |= set(gen(a, "part", 100_000))  # and a bulk call: many shards held open
    b = connect(autocommit=False)
    b.execute("SET lock_timeout = '1s'")
    one = gen(b, "part", 1)
    hundred = gen(b, "part", 100)
    b.execute("SELECT idmint.gen_entity_number('part')")
    b.commit()
    b.autocommit = True
    more = gen(b, 1, 100)  # a new transaction, autocommit
    assert len(set(one + hundred + more)) == 201
    assert held.isdisjoint(one + hundred + more)
    assert issued(b, 1) == 202  # committed state only: A is still open
    a.commit()
    assert issued(b, 1) == 101_202 == stored(b, 1)


def test_a_call_waits_only_when_the_unheld_numbers_do_not_suffice(connect: Connect) -> None:
    """Near exhaustion a call waits for the holders, then decides on committed state."""
    db, holder, waiter, observer = connect(), connect(autocommit=False), connect(), connect()
    waiter.execute("SET lock_timeout = '1min'")
    db.execute("SELECT idmint.add_entity_type(9, 'tight')")
    fill(db, 9, 999_000)
    gen(holder, 9, 10)
    assert len(gen(waiter, 9, 100)) == 100  # 890 free numbers nobody holds: no wait
    out: list[object] = []

    def take(n: int) -> Callable[[], None]:
        def run() -> None:
            try:
                out.append(len(gen(waiter, 9, n)))
            except psycopg.Error as e:
                out.append(e.sqlstate)

        return run

    t = threading.Thread(target=take(895))  # more than the 890 nobody holds: waits
    t.start()
    assert wait_until_blocked(observer, waiter.info.backend_pid) == [holder.info.backend_pid]
    holder.rollback()  # the held numbers become free again: the waiter succeeds
    t.join()
    assert out == [895]
    assert issued(db, 9) == 999_995 == stored(db, 9)
    gen(holder, 9, 3)
    t = threading.Thread(target=take(4))
    t.start()
    assert wait_until_blocked(observer, waiter.info.backend_pid) == [holder.info.backend_pid]
    holder.commit()  # now only 2 are free: ID005, and nothing registered
    t.join()
    assert out == [895, "ID005"]
    assert issued(db, 9) == 999_998 == stored(db, 9)
    assert len(gen(waiter, 9, 2)) == 2


def test_two_types_in_opposite_orders_never_deadlock(connect: Connect) -> None:
    a, b = connect(autocommit=False), connect(autocommit=False)
    for c in (a, b):
        c.execute("SET lock_timeout = '1s'")
    step = threading.Barrier(2)

    def one(conn: psycopg.Connection, first: str, second: str) -> None:
        for _ in range(5):
            gen(conn, first, 10)
            step.wait()
            gen(conn, second, 10)
            conn.execute("SELECT idmint.gen_entity_number(%s)", [first])
            step.wait()
        conn.commit()

    errors = run_threads(lambda: one(a, "part", "order"), lambda: one(b, "order", "part"))
    assert errors == []
    assert issued(a, 1) == issued(a, 4) == 105  # 5 * (11 + 10) each
    assert stored(a, 1) == stored(a, 4) == 105


def test_numbers_come_out_in_random_order(db: psycopg.Connection) -> None:
    big = [int(x) for x in gen(db, "material", 20_000)]
    ascending = sum(x < y for x, y in itertools.pairwise(big))
    # 19 999 pairs, each ascending with probability 1/2 (sd 71): within 6 sd.
    assert abs(ascending - 9_999.5) < 425, ascending
    # No trend: rank correlation between position and value near 0 (sd about 0.007).
    ranks = {v: r for r, v in enumerate(sorted(big))}
    n = len(big)
    d2 = sum((i - ranks[v]) ** 2 for i, v in enumerate(big))
    rho = 1 - 6 * d2 / (n * (n * n - 1))
    assert abs(rho) < 0.05, rho
    # Small batches are not sorted: a sorted batch of 5 has probability 1/120.
    batches = [[int(x) for x in gen(db, "material", 5)] for _ in range(200)]
    assert sum(b == sorted(b) for b in batches) < 12


def test_nothing_is_learnt_from_a_rollback_at_99_percent(connect: Connect) -> None:
    db, app = connect(), connect(autocommit=False)
    db.execute("SELECT idmint.add_entity_type(9, 'full')")
    fill(db, 9, 990_000)
    overlap = 0
    for _ in range(5):
        seen = gen(app, 9, 30)
        app.rollback()
        after = gen(app, 9, 30)
        app.rollback()
        assert seen != after
        overlap += len(set(seen) & set(after))
    # Fresh draws: a call takes a random part of a few randomly chosen shards, so two
    # calls share a few numbers at most, never most of them (0.1 replayed all 30).
    assert overlap <= 30, overlap
    assert issued(db, 9) == 990_000 == stored(db, 9)

    # Un-issuing (an upsert whose row was not stored) at 99 %: the numbers are free
    # again exactly as if never issued, and the type can still be emptied exactly.
    got = gen(app, 9, 10)
    app.execute("SELECT idmint._unissue_entity_numbers(%s::int[])", [[int(x) for x in got[:4]]])
    app.execute("SELECT idmint._unissue_entity_numbers(%s::int[])", [[1_234_567, int(got[0])]])
    assert issued(app, 9) == 990_006
    app.commit()
    assert issued(db, 9) == 990_006 == stored(db, 9)
    rest = gen(db, 9, 9_994)
    assert set(got[:4]) <= set(rest)
    assert issued(db, 9) == 1_000_000 == stored(db, 9)
    with raises_sqlstate("ID005"):
        gen(db, 9, 1)


def test_fill_to_99_9_percent_within_a_statement_timeout_then_exactly_the_rest(
    connect: Connect,
) -> None:
    """No call pays for a rebuild: every 50 000-number step stays far below 5 s."""
    db = connect()
    db.execute("SELECT idmint.add_entity_type(8, 'step by step')")
    db.execute("SET statement_timeout = '5s'")
    fill(db, 8, 999_000, step=50_000)
    assert issued(db, 8) == 999_000 == stored(db, 8)
    rest = gen(db, 8, 1_000)
    assert len(set(rest)) == 1_000
    assert issued(db, 8) == 1_000_000 == stored(db, 8)
    with raises_sqlstate("ID005"):
        gen(db, 8, 1)
    with raises_sqlstate("ID005"):
        db.execute("SELECT idmint.gen_entity_number(8)")


def test_thresholds_and_exact_counts_under_concurrent_issuers(connect: Connect) -> None:
    db, listener = connect(), connect()
    db.execute("SELECT idmint.add_entity_type(9, 'busy')")
    fill(db, 9, 590_000)
    listener.execute("LISTEN idmint_capacity")
    workers = [connect(autocommit=False) for _ in range(8)]
    committed = [0] * len(workers)
    start = threading.Barrier(len(workers))

    def work(i: int) -> None:
        conn = workers[i]
        conn.execute("SET lock_timeout = '1s'")
        start.wait()
        for k in range(70):
            got = gen(conn, 9, 900)
            conn.execute("SELECT idmint.gen_entity_number(9)")
            if k % 5 == 4:
                conn.rollback()
            else:
                conn.commit()
                committed[i] += len(got) + 1

    errors = run_threads(*[lambda i=i: work(i) for i in range(len(workers))])
    assert errors == []
    total = 590_000 + sum(committed)
    assert total >= 950_000
    assert issued(db, 9) == total == stored(db, 9)
    notes = [json.loads(n.payload) for n in listener.notifies(timeout=3, stop_after=4)]
    assert [n["threshold"] for n in notes] == [0.6, 0.8, 0.95]
    assert all(n["key"] == 9 and n["scope"] == "entity" for n in notes)
    assert all(n["utilization"] >= n["threshold"] for n in notes)


def test_counts_follow_savepoints_and_immediate_constraints(connect: Connect) -> None:
    conn = connect(autocommit=False)
    gen(conn, "quote", 5)
    conn.execute("SAVEPOINT s")
    gen(conn, "quote", 7)
    conn.execute("SELECT idmint.gen_entity_number('quote')")
    conn.execute("ROLLBACK TO SAVEPOINT s")
    gen(conn, "quote", 2)
    assert issued(conn, 5) == 7
    conn.commit()
    assert issued(conn, 5) == 7 == stored(conn, 5)
    conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
    for _ in range(3):
        gen(conn, "quote", 4)
        conn.execute("SELECT idmint.gen_entity_number('quote')")
    conn.commit()
    assert issued(conn, 5) == 22 == stored(conn, 5)


@pytest.mark.parametrize("bind", [False, True])
def test_many_single_calls_in_one_transaction(connect: Connect, bind: bool) -> None:
    """The column-DEFAULT shape: one number per call, many calls, one commit."""
    conn = connect(autocommit=False)
    got = [
        r[0]
        for r in conn.execute(
            "SELECT x FROM generate_series(1, 8000) g,"
            " LATERAL idmint._issue_entity_numbers(4 + 0 * g, 1, 'gen', %s) x",
            [bind],
        )
    ]
    assert len(set(got)) == 8000
    conn.commit()
    assert issued(conn, 4) == 8000 == stored(conn, 4)
    bound = scalar(conn, "SELECT count(bound_at) FROM idmint.entity_numbers")
    assert bound == (8000 if bind else 0)
