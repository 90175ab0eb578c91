"""Adversarial review of card sharing (tests/test_entity_steal.py). Set-ups write
idmint's tables as the superuser exactly as the engine leaves them (tests.util.only_free);
calls under test are made as an app role that is a member of idmint_user only."""

from __future__ import annotations

import json
import random
import threading

import psycopg
import pytest
from psycopg import sql

from tests.util import Connect, check_exact, entity_rows, gen, issued, only_free, scalar

PREFIX = 9


@pytest.mark.parametrize("how", ["steal", "claim"])
def test_a_commit_that_only_stole_sends_its_crossing(
    db: psycopg.Connection, app_connect: Connect, connect: Connect, how: str
) -> None:
    """§5: "When a call makes an entity type cross a threshold, it sends NOTIFY". 51 500
    numbers free (10 sparse shards of 4 900, two deck shards of 1 250), 0.6 and 0.8
    notified already. h claims one free number of each of the 12 shards (so it holds
    them all) and stays open. s asks for 1 500: nobody else holds a shard, so it steals
    1 500 cards and commits: 948 500 + 1 500 = 950 000 committed, the 0.95 crossing,
    which s's commit sends although s holds no shard (so no commit-time count runs for
    it), and h's later commit does not send again. `claim`: s claims 1 500 free numbers of
    the two deck shards h holds instead (each claim takes the card, counted in
    entity_steals). Failed before entity_steals_alert: the crossing came at h's commit."""
    shards = [3, 17, 29, 41, 55, 67, 81, 99, 120, 140]
    free = only_free(
        db, PREFIX, {**{s: (4900, False) for s in shards}, 160: (1250, True), 190: (1250, True)}
    )
    db.execute("UPDATE idmint.entity_ranges SET alerted = 0.8 WHERE prefix = %s", [PREFIX])
    assert issued(db, PREFIX) == 948_500
    h = app_connect(autocommit=False)
    for numbers in free.values():
        h.execute("SELECT idmint.claim_entity_number(%s)", [str(min(numbers))])
    listener = connect()
    listener.execute("LISTEN idmint_capacity")
    s_conn = app_connect(autocommit=False)
    s_conn.execute("SET lock_timeout = '2s'")
    if how == "steal":
        got = gen(s_conn, PREFIX, 1500)
    else:
        cards = sorted((free[160] | free[190]) - {min(free[160]), min(free[190])})[:1500]
        got = [
            s_conn.execute("SELECT idmint.claim_entity_number(%s)", [str(v)]).fetchone()[0]
            for v in cards
        ]
    assert len(set(got)) == 1500
    assert (
        scalar(
            db, "SELECT coalesce(sum(n), 0) FROM idmint.entity_steals WHERE prefix = %s", [PREFIX]
        )
        == 0
    )
    s_conn.commit()
    assert issued(db, PREFIX) == 950_000 == entity_rows(db, PREFIX)
    at_s_commit = [json.loads(n.payload)["threshold"] for n in listener.notifies(timeout=1.0)]
    h.commit()
    at_h_commit = [json.loads(n.payload)["threshold"] for n in listener.notifies(timeout=1.0)]
    assert issued(db, PREFIX) == 950_012 == entity_rows(db, PREFIX)
    assert (at_s_commit, at_h_commit) == ([0.95], [])


OPS = ["gen1", "gen1", "genk", "claim", "sp_rollback", "immediate", "rollback", "timeout"]


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_stress_counts_stay_exact_near_exhaustion(
    db: psycopg.Connection, app_connect: Connect, connect: Connect, isolation: str
) -> None:
    """Four sessions issue from five deck shards (300 free numbers) at once: single and
    multi-number calls, claims of free numbers, savepoints rolled back after a call,
    SET CONSTRAINTS ALL IMMEDIATE, rollbacks and statement timeouts. Afterwards every
    shard's count (issued + steal rows) equals its rows, decks hold exactly the free
    numbers, no number came out twice, and no call failed with anything but ID005, 40001
    (REPEATABLE READ), ID004 (claims), 57014 (the timeouts) or 55P03 (a 5 s lock_timeout:
    near exhaustion a call may wait for other transactions, §4)."""

    free = only_free(db, PREFIX, {s: (60, True) for s in (11, 47, 90, 133, 177)})
    pool = sorted(n for ns in free.values() for n in ns)
    errors: list[str] = []
    committed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        conn = app_connect(autocommit=False)
        conn.isolation_level = (
            None
            if isolation == "READ COMMITTED" or seed % 2
            else psycopg.IsolationLevel.REPEATABLE_READ
        )
        conn.execute("SET lock_timeout = '5s'")
        conn.commit()
        while not stop.is_set():
            mine: list[str] = []
            try:
                for _ in range(rnd.randint(1, 4)):
                    op = rnd.choice(OPS)
                    if op == "gen1":
                        mine += [
                            r[0]
                            for r in conn.execute("SELECT idmint.gen_entity_number(9)").fetchall()
                        ]
                    elif op == "genk":
                        mine += gen(conn, PREFIX, rnd.randint(2, 15))
                    elif op == "claim":
                        conn.execute("SAVEPOINT c")
                        try:
                            mine.append(
                                str(
                                    conn.execute(
                                        "SELECT idmint.claim_entity_number(%s)",
                                        [str(rnd.choice(pool))],
                                    ).fetchone()[0]
                                )
                            )
                            conn.execute("RELEASE c")
                        except psycopg.Error as e:
                            conn.execute("ROLLBACK TO c")
                            if e.sqlstate not in ("ID004",):
                                raise
                    elif op == "sp_rollback":
                        conn.execute("SAVEPOINT a")
                        gen(conn, PREFIX, rnd.randint(1, 8))
                        conn.execute("ROLLBACK TO a")
                    elif op == "immediate":
                        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                        conn.execute("SET CONSTRAINTS ALL DEFERRED")
                    elif op == "timeout":
                        conn.execute("SAVEPOINT t")
                        conn.execute("SET LOCAL statement_timeout = '3ms'")
                        try:
                            gen(conn, PREFIX, rnd.randint(1, 20))
                            conn.execute("RELEASE t")
                        except psycopg.Error as e:
                            conn.execute("ROLLBACK TO t")
                            if e.sqlstate != "57014":
                                raise
                        conn.execute("SET LOCAL statement_timeout = 0")
                if rnd.random() < 0.2:
                    conn.rollback()
                else:
                    conn.commit()
                    with lock:
                        committed.extend(mine)
            except psycopg.Error as e:
                conn.rollback()
                if e.sqlstate not in ("ID005", "40001"):
                    with lock:
                        errors.append(f"{e.sqlstate}: {e}")
            if issued(conn, PREFIX) >= 1_000_000 - 5:
                conn.rollback()
                break
            conn.rollback()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    stop.set()
    for t in threads:
        t.join()
    print("ERRORS", sorted({e.split(":")[0] for e in errors}), len(errors))
    for e in errors:
        print(e, "\n=====")
    print("EXACT", check_exact(db, PREFIX), issued(db, PREFIX), entity_rows(db, PREFIX))
    assert [e for e in errors if not e.startswith("55P03")] == []
    assert len(committed) == len(set(committed))
    assert check_exact(db, PREFIX) == []
    assert (
        scalar(
            db, "SELECT count(*) FROM idmint.entity_steals WHERE prefix = %s AND n <= 0", [PREFIX]
        )
        == 0
    )
    assert issued(db, PREFIX) == entity_rows(db, PREFIX)


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_repeatable_read_call_does_not_wait_for_numbers_nobody_took(
    db: psycopg.Connection, app_connect: Connect, isolation: str
) -> None:
    """§4: a call waits only when the free numbers not held by open transactions are
    fewer than it asks for. 120 free numbers in two deck shards; h and k each take one
    (each then holds one of the shards) and stay open. x (REPEATABLE READ / SERIALIZABLE)
    takes its snapshot; y steals 100 cards and commits. 18 free numbers are held by no
    open transaction; x asks for 10. Its steal statement meets cards y deleted after x's
    snapshot (40001). x must get 40001 or its numbers, never a lock wait (it used to
    swallow the 40001 and wait for h's and k's shards in phase 6: 55P03)."""
    only_free(db, PREFIX, {17: (60, True), 123: (60, True)})
    h, k = app_connect(autocommit=False), app_connect(autocommit=False)
    gen(h, PREFIX, 1)
    gen(k, PREFIX, 1)
    x = app_connect(autocommit=False)
    x.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
    x.execute("SELECT count(*) FROM idmint.entity_capacity").fetchall()  # snapshot
    y = app_connect(autocommit=False)
    y.execute("SET lock_timeout = '1s'")
    assert len(set(gen(y, PREFIX, 100))) == 100
    y.commit()
    x.execute("SET lock_timeout = '1s'")
    try:
        got = gen(x, PREFIX, 10)
        assert len(set(got)) == 10
    except psycopg.Error as e:
        assert e.sqlstate == "40001", f"{e.sqlstate}: {e}"
    x.rollback()
    h.commit()
    k.commit()
    assert check_exact(db, PREFIX) == []


SCRIPTS = {
    "steal_immediate_sp_rollback": [
        ("h", "GEN 1"),
        ("s", "SAVEPOINT a"),
        ("s", "GEN 70"),
        ("s", "SET CONSTRAINTS ALL IMMEDIATE"),
        ("s", "ROLLBACK TO a"),
        ("s", "GEN 3"),
        ("s", "COMMIT"),
        ("h", "COMMIT"),
    ],
    "holder_immediate_then_steal_then_retake": [
        ("h", "GEN 1"),
        ("k", "GEN 1"),
        ("h", "SET CONSTRAINTS ALL IMMEDIATE"),
        ("s", "GEN 70"),
        ("h", "GEN 3"),
        ("s", "COMMIT"),
        ("h", "GEN 2"),
        ("h", "SET CONSTRAINTS ALL IMMEDIATE"),
        ("h", "GEN 1"),
        ("h", "COMMIT"),
        ("k", "COMMIT"),
    ],
    "steal_commit_then_claim_card_then_fold": [
        ("h", "GEN 1"),
        ("k", "GEN 1"),
        ("s", "GEN 50"),
        ("s", "COMMIT"),
        ("c", "CLAIMFREE"),
        ("c", "COMMIT"),
        ("h", "ROLLBACK"),
        ("t", "GEN 30"),
        ("t", "SET CONSTRAINTS ALL IMMEDIATE"),
        ("t", "GEN 5"),
        ("t", "COMMIT"),
        ("k", "COMMIT"),
    ],
    "stealer_takes_shard_after_holder_commits": [
        ("h", "GEN 1"),
        ("k", "GEN 1"),
        ("s", "GEN 40"),
        ("h", "COMMIT"),
        ("s", "SAVEPOINT a"),
        ("s", "GEN 20"),
        ("s", "SET CONSTRAINTS ALL IMMEDIATE"),
        ("s", "RELEASE a"),
        ("s", "SAVEPOINT b"),
        ("s", "GEN 5"),
        ("s", "ROLLBACK TO b"),
        ("s", "GEN 2"),
        ("s", "COMMIT"),
        ("k", "COMMIT"),
    ],
    "two_stealers_one_rolls_back_holder_deals": [
        ("h", "GEN 1"),
        ("k", "GEN 1"),
        ("s", "GEN 30"),
        ("t", "GEN 30"),
        ("h", "GEN 20"),
        ("s", "ROLLBACK"),
        ("k", "GEN 20"),
        ("t", "COMMIT"),
        ("h", "COMMIT"),
        ("k", "COMMIT"),
    ],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripted_counts_exact(db: psycopg.Connection, app_connect: Connect, script: str) -> None:
    """Scripted interleavings near exhaustion (two deck shards of 60): every session is
    an app-role connection with lock_timeout 2 s; afterwards counts are exact."""
    only_free(db, PREFIX, {17: (60, True), 123: (60, True)})
    conns: dict[str, psycopg.Connection] = {}
    log: list[str] = []
    for who, step in SCRIPTS[script]:
        if who not in conns:
            conns[who] = app_connect(autocommit=False)
            conns[who].execute("SET lock_timeout = '2s'")
        c = conns[who]
        try:
            if step.startswith("GEN "):
                got = gen(c, PREFIX, int(step[4:]))
                log.append(f"{who} {step} -> {len(got)}")
            elif step == "CLAIMFREE":
                # A card no open transaction is taking (a claim of one that is being
                # taken waits for that transaction, as it should).
                v = scalar(
                    db,
                    "SELECT f.number FROM idmint.entity_free f WHERE f.prefix = %s"
                    " ORDER BY f.number LIMIT 1 FOR UPDATE SKIP LOCKED",
                    [PREFIX],
                )
                c.execute("SELECT idmint.claim_entity_number(%s)", [str(v)])
                log.append(f"{who} claim {v}")
            elif step == "COMMIT":
                c.commit()
            elif step == "ROLLBACK":
                c.rollback()
            else:
                c.execute(step)
        except psycopg.Error as e:
            pytest.fail(f"{log} then {who} {step}: {e.sqlstate}: {e}")
    assert check_exact(db, PREFIX) == [], log
    assert issued(db, PREFIX) == entity_rows(db, PREFIX)


@pytest.mark.parametrize("ask", [5, 20])
def test_repeatable_read_holder_after_committed_steals(
    db: psycopg.Connection, app_connect: Connect, app_role: str, ask: int
) -> None:
    """A REPEATABLE READ holder whose snapshot predates steals: two deck shards of 60; x
    (REPEATABLE READ) takes one number (holds one shard), k takes one (holds the other);
    y steals 110 cards and commits; k rolls back. 9 numbers are free on committed state.
    x asks for `ask`: for 5 it must succeed (or 40001), for 20 it must get ID005 (or
    40001) -- never an internal error such as 54001 (stack depth) or XX000, and never a
    lock wait. (It used to top up for ever: each top-up saw the same snapshot and came up
    short again, until 54001 after about eight minutes at the default max_stack_depth of
    2MB; the app role gets 256kB here so that a regression fails in seconds.)"""
    db.execute(
        sql.SQL("ALTER ROLE {} SET max_stack_depth = '256kB'").format(sql.Identifier(app_role))
    )
    only_free(db, PREFIX, {17: (60, True), 123: (60, True)})
    x = app_connect(autocommit=False)
    x.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    x.execute("SET lock_timeout = '2s'")
    gen(x, PREFIX, 1)
    k = app_connect(autocommit=False)
    gen(k, PREFIX, 1)
    y = app_connect(autocommit=False)
    y.execute("SET lock_timeout = '2s'")
    assert len(set(gen(y, PREFIX, 110))) == 110
    y.commit()
    k.rollback()
    try:
        got = gen(x, PREFIX, ask)
        outcome = "ok" if len(set(got)) == ask else f"bad {len(set(got))}"
    except psycopg.Error as e:
        outcome = e.sqlstate or "?"
        if outcome not in ("40001", "ID005"):
            outcome = f"{e.sqlstate}: {str(e)[:300]}"
    if outcome == "ok":
        x.commit()
    else:
        x.rollback()
    assert outcome in (("ok", "40001") if ask == 5 else ("ID005", "40001"))
    assert check_exact(db, PREFIX) == []
    assert issued(db, PREFIX) == entity_rows(db, PREFIX)
