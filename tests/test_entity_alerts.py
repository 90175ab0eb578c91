"""Entity numbers under snapshots and unseen commits (CONTRACT sections 4 and 5, revision
0.2). A capacity threshold that a commit cannot see when it crosses it is still sent
exactly once, from committed state, by the next check (the next commit of the type from
50 % on, or the cleanup); a REPEATABLE READ commit never fails over the threshold check;
REPEATABLE READ and SERIALIZABLE issuers pass over shards counted into after their
snapshot instead of failing.

Commits are held at a known point by the test's own deferred trigger, which waits for an
advisory lock the test holds: it fires after idmint's commit-time count (queued later).
"""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

from tests.util import Connect, gen, issue_directly, issued, lock_waits

PREFIX = 9


@pytest.fixture
def listener(connect: Connect) -> psycopg.Connection:
    conn = connect()
    conn.execute("LISTEN idmint_capacity")
    return conn


def thresholds(listener: psycopg.Connection, timeout: float = 1.0) -> list[float]:
    return [json.loads(n.payload)["threshold"] for n in listener.notifies(timeout=timeout)]


def test_commits_crossing_together_unseen_are_caught_up_once(
    connect: Connect, listener: psycopg.Connection
) -> None:
    db = connect()
    db.execute("SELECT idmint.add_entity_type(%s, 'together')", [PREFIX])
    base = issue_directly(db, PREFIX, 2150)  # 430 000
    db.execute("CREATE TABLE pause (x integer)")
    db.execute(
        "CREATE FUNCTION pause() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$"
    )
    db.execute(
        "CREATE CONSTRAINT TRIGGER pause AFTER INSERT ON pause DEFERRABLE INITIALLY DEFERRED"
        " FOR EACH ROW EXECUTE FUNCTION pause()"
    )
    gate = connect(autocommit=False)
    gate.execute("SELECT pg_advisory_xact_lock(4242)")
    each = 59_000
    workers = [connect(autocommit=False) for _ in range(3)]
    for w in workers:
        assert len(gen(w, PREFIX, each)) == each
        w.execute("INSERT INTO pause VALUES (1)")
    # Each commit counts 489 000 (its own and the committed ones) at its commit-time count:
    # below 50 %, no lock. Together they reach 607 000: 0.6 crossed, unseen.
    threads = [threading.Thread(target=w.commit) for w in workers]
    for t in threads:
        t.start()
    pids = {w.info.backend_pid for w in workers}
    while set(lock_waits(db, blocker=gate.info.backend_pid)) != pids:
        pass
    gate.commit()
    for t in threads:
        t.join()
    assert issued(db, PREFIX) == base + 3 * each
    assert thresholds(listener) == []  # the gap: nobody could see it at commit
    db.execute("SELECT idmint.purge_expired_reservations()")
    assert thresholds(listener) == [0.6]
    db.execute("SELECT idmint.purge_expired_reservations()")
    gen(db, PREFIX, 10)  # the next commit of the type sends nothing again
    assert thresholds(listener) == []


def test_a_repeatable_read_crossing_is_caught_up_by_the_next_commit(
    connect: Connect, listener: psycopg.Connection
) -> None:
    db = connect()
    db.execute("SELECT idmint.add_entity_type(%s, 'snapshot')", [PREFIX])
    issue_directly(db, PREFIX, 2750)  # 550 000
    rr = connect(autocommit=False)
    rr.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    gen(rr, PREFIX, 1)  # its snapshot: 550 000
    gen(db, PREFIX, 49_500)  # committed after that snapshot: 599 500
    assert thresholds(listener) == []
    gen(rr, PREFIX, 900)  # from the shard it holds
    rr.commit()  # 600 401 committed; its snapshot says 550 901
    assert issued(db, PREFIX) == 600_401
    gen(db, PREFIX, 1)  # the next commit (from 50 %) sees it
    assert thresholds(listener) == [0.6]


def test_a_second_repeatable_read_commit_does_not_fail_over_the_alert(
    connect: Connect, listener: psycopg.Connection
) -> None:
    db = connect()
    db.execute("SELECT idmint.add_entity_type(%s, 'two snapshots')", [PREFIX])
    issue_directly(db, PREFIX, 2995)  # 599 000
    a, b = connect(autocommit=False), connect(autocommit=False)
    for c in (a, b):
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        gen(c, PREFIX, 1)  # both snapshots: 599 000
    for c in (a, b):
        gen(c, PREFIX, 1_000)  # each sees itself crossing 0.6
    a.commit()
    assert thresholds(listener) == [0.6]
    b.commit()  # 0.2's first v2: 40001 here, locking the type row a changed
    assert thresholds(listener) == []
    assert issued(db, PREFIX) == 599_000 + 2 * 1_001


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_snapshot_issuers_skip_shards_counted_after_their_snapshot(
    connect: Connect, level: str
) -> None:
    """A shard another transaction counted into after this snapshot cannot be locked
    under REPEATABLE READ (40001); an issuer passes over it like a held one while other
    shards have room, instead of failing."""
    db = connect()
    tx = connect(autocommit=False)
    for _ in range(6):
        tx.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
        tx.execute("SELECT 1")  # the snapshot
        for _ in range(150):  # about 150 of the 200 shards counted into after it
            gen(db, "quote", 1)
        assert len(gen(tx, "quote", 1)) == 1
        assert len(tx.execute("SELECT idmint.gen_entity_number('quote')").fetchall()) == 1
        assert len(gen(tx, "quote", 12_000)) == 12_000  # several shards at once
        tx.commit()
    assert issued(db, 5) == 6 * (150 + 12_002)
