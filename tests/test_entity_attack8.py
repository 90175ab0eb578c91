"""Adversarial review attack8 of 68fb7ea (a claim in a deck shard its transaction holds
deletes the number's card first, then inserts the number). Set-ups write idmint's tables
as the superuser as the engine leaves them (tests.util.only_free); the calls under test
are made as an app role that is a member of idmint_user only. The first two tests failed on
68fb7ea (the first one's READ COMMITTED cases were a regression of that commit); the
others passed there and are kept as what the review could not break."""

from __future__ import annotations

import threading

import psycopg
import psycopg.sql
import pytest

from tests.util import (
    Connect,
    check_exact,
    entity_rows,
    gen,
    issued,
    lock_waits,
    only_free,
    record_call,
    scalar,
)

PREFIX = 9


@pytest.mark.parametrize(
    "isolation,t_how,c_how",
    [
        ("READ COMMITTED", "gen", "claim"),
        ("READ COMMITTED", "claim", "claim"),
        ("READ COMMITTED", "gen", "row"),
        ("REPEATABLE READ", "gen", "claim"),
    ],
)
def test_a_holders_claim_waiting_on_a_card_given_back_at_commit_leaves_no_card(
    db: psycopg.Connection, app_connect: Connect, isolation: str, t_how: str, c_how: str
) -> None:
    """§4: claim_entity_number registers a number idmint never issued; upserts that store
    nothing claim and bind nothing (their numbers are given back, free again); §1: no
    partial write; §4 no number issued twice. One deck shard of 2 free numbers a, b. c
    generates a (holds the shard). t runs an upsert that stores nothing: its trigger
    steals b (b's card deleted, b inserted; t stays open). c claims b: the new code deletes
    b's card first and waits for t. t commits: settle_bindings gives b back -- its card
    is inserted again (a new row) and b's row deleted. c's DELETE (its snapshot older
    than t's commit) skips the old card row and does not see the new one; its INSERT of b
    succeeds. Expected: c's claim succeeds and b has no card (check_exact empty). Before
    68fb7ea the insert came first (it waited on t's b) and the delete, with a fresh
    snapshot, removed the new card. `t_how` claim: t's upsert carries b explicitly (its
    trigger claims b, taking the card as a steal); `c_how` row: c inserts a row carrying b
    into the triggered table instead of calling claim_entity_number.
    On 68fb7ea (READ COMMITTED) c's claim succeeded but b's card stayed in the deck
    (check_exact: shard 17 issued 5000, rows 5000, 1 card), and the next
    gen_entity_numbers dealt it: 23505 duplicate key on entity_numbers_pkey instead of
    ID005, for ever. Now the claim looks again in a new statement (_entity_take_card).
    REPEATABLE READ: c's claim is 40001 (concurrent delete of the card), accepted;
    nothing is left half-written."""
    free = only_free(db, PREFIX, {17: (2, True)})
    ddl = app_connect()
    ddl.execute("CREATE TABLE own.a (k text PRIMARY KEY, pn text UNIQUE)")
    ddl.execute("INSERT INTO own.a (k) VALUES ('x')")
    ddl.execute(
        "CREATE TRIGGER a_pn BEFORE INSERT OR UPDATE OR DELETE ON own.a FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('pn', '9')"
    )
    c = app_connect(autocommit=False)
    c.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
    a = int(gen(c, PREFIX, 1)[0])
    (b,) = free[17] - {a}
    t = app_connect(autocommit=False)
    if t_how == "gen":
        t.execute("INSERT INTO own.a (k) VALUES ('x') ON CONFLICT (k) DO NOTHING")
    else:
        t.execute("INSERT INTO own.a (k, pn) VALUES ('x', %s) ON CONFLICT (k) DO NOTHING", [str(b)])
    # t stole b (its card delete and b's row are not committed)
    assert scalar(db, "SELECT count(*) FROM idmint.entity_steals WHERE prefix = 9") == 0
    outcome: dict[str, str] = {}
    q = {
        "claim": "SELECT idmint.claim_entity_number(%s)",
        "row": "INSERT INTO own.a (k, pn) VALUES ('c', %s) RETURNING pn",
    }[c_how]
    th = threading.Thread(target=record_call, args=(outcome, "c", c, q, [str(b)]))
    th.start()
    lock_waits(db, waiter=c.info.backend_pid, timeout=10)
    t.commit()
    th.join(timeout=30)
    if isolation != "READ COMMITTED" and outcome.get("c", "").startswith("40001"):
        c.rollback()  # (its snapshot saw b's card, deleted by t's commit: a serialization failure)
        assert check_exact(db, PREFIX) == []
        return
    assert outcome.get("c") == "ok", outcome
    c.commit()
    left = db.execute(
        "SELECT number FROM idmint.entity_free WHERE prefix = 9 ORDER BY 1"
    ).fetchall()
    exact = check_exact(db, PREFIX)
    # The type is full: a further call must be ID005 (never a dealt duplicate or 23505).
    g = app_connect()
    try:
        later = f"ok {gen(g, PREFIX, 1)}"
    except psycopg.Error as e:
        later = f"{e.sqlstate}: {str(e).splitlines()[0]}"
    assert issued(db, PREFIX) == entity_rows(db, PREFIX) == 1_000_000
    assert (exact, left, later[:5]) == ([], [], "ID005"), later


@pytest.mark.parametrize("t_then", ["gen3", "claim_c_number"])
def test_a_holders_claim_of_a_card_a_stealer_took_and_the_stealers_wait_never_deadlock(
    db: psycopg.Connection, app_connect: Connect, app_role: str, t_then: str
) -> None:
    """§4: "two issuers never deadlock"; claim_entity_number's errors are ID003/ID004/ID008
    (and §1: the errors listed). One deck shard of 4 free numbers; c generates one (holds
    the shard); t generates one (steals a card, v) and stays open. c claims v: in its
    own deck shard the claim deletes v's card first and waits for t. t then asks for 3
    (more than the 2 untaken cards): its waiting phase locks the shard row, held by c. A
    cycle: the DELETE in the holder path has no deadlock handler (the steal path of the
    claim turns it into ID004, t's wait into ID005). c waits first, so with the same
    deadlock_timeout (5 s for the app role, as in test_entity_steal_review2) c's detector
    fires first: c must end with ID004 (v is being issued by t) or succeed after t gives
    up, never 40P01. `claim_c_number`: t, instead of asking for 3, claims c's own
    uncommitted number (the claim's steal path waits for that card's lock, held by c).
    On 68fb7ea and e3fc204 alike (there c's INSERT waited on the unique index for t's v)
    c got 40P01 deadlock detected. Now the holder path takes the card like the steal path
    (_entity_take_card: a deadlocking wait is ID004)."""
    db.execute(
        psycopg.sql.SQL("ALTER ROLE {} SET deadlock_timeout = '5s'").format(
            psycopg.sql.Identifier(app_role)
        )
    )
    only_free(db, PREFIX, {17: (4, True)})
    c = app_connect(autocommit=False)
    (a,) = gen(c, PREFIX, 1)
    t = app_connect(autocommit=False)
    (v,) = gen(t, PREFIX, 1)
    c.execute("SET lock_timeout = '30s'")
    t.execute("SET lock_timeout = '30s'")
    outcome: dict[str, str] = {}
    tc = threading.Thread(
        target=record_call, args=(outcome, "c", c, "SELECT idmint.claim_entity_number(%s)", [v])
    )
    tc.start()
    lock_waits(db, waiter=c.info.backend_pid, timeout=10)
    if t_then == "gen3":
        tq, targs = "SELECT idmint.gen_entity_numbers(%s, %s)", [PREFIX, 3]
    else:
        tq, targs = "SELECT idmint.claim_entity_number(%s)", [a]
    tt = threading.Thread(target=record_call, args=(outcome, "t", t, tq, targs))
    tt.start()
    tc.join(timeout=40)
    if outcome.get("c") == "ok":
        c.commit()
    else:
        c.rollback()
    tt.join(timeout=40)
    if outcome.get("t") == "ok":
        t.commit()
    else:
        t.rollback()
    assert not outcome.get("c", "").startswith("40P01"), outcome
    assert not outcome.get("t", "").startswith("40P01"), outcome
    assert outcome["c"] == "ok" or outcome["c"].startswith("ID004"), outcome
    assert issued(db, PREFIX) == entity_rows(db, PREFIX)
    assert check_exact(db, PREFIX) == []


@pytest.mark.parametrize(
    "how,timeout,end",
    [
        ("claim", "lock_timeout", "commit"),
        ("row", "statement_timeout", "rollback"),
        ("upsert", "lock_timeout", "commit"),
        ("upsert", "statement_timeout", "rollback"),
    ],
)
def test_a_holders_claim_timing_out_on_a_stolen_card_leaves_nothing(
    db: psycopg.Connection, app_connect: Connect, how: str, timeout: str, end: str
) -> None:
    """§1: "a call either does all it says or nothing"; §4: counts exact, no number
    issued twice, ID004 only for an issued number. One deck shard of 6 free numbers; c
    generates one (holds the shard), t steals one (v) and stays open. c, in a savepoint,
    claims v (`claim`: claim_entity_number; `row`: an insert through the trigger;
    `upsert`: INSERT ... ON CONFLICT (k) DO UPDATE SET pn = v on an existing row) with a
    short lock_timeout / statement_timeout: it waits for v's card and times out (55P03 /
    57014). c rolls back to the savepoint, takes 2 more, and t ends (`end`). c then claims
    v again (ID004 if t committed, else it gets it), commits; counts and decks exact."""
    free = only_free(db, PREFIX, {17: (6, True)})
    ddl = app_connect()
    ddl.execute("CREATE TABLE own.a (k text PRIMARY KEY, pn text UNIQUE)")
    ddl.execute(
        "CREATE TRIGGER a_pn BEFORE INSERT OR UPDATE OR DELETE ON own.a FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('pn', '9')"
    )
    c = app_connect(autocommit=False)
    c.execute("INSERT INTO own.a (k) VALUES ('u')")  # c takes a number (holds the shard)
    t = app_connect(autocommit=False)
    (v,) = gen(t, PREFIX, 1)
    assert int(v) in free[17]
    c.execute("SAVEPOINT s")
    c.execute(f"SET LOCAL {timeout} = '300ms'")
    q = {
        "claim": "SELECT idmint.claim_entity_number(%s)",
        "row": "INSERT INTO own.a (k, pn) VALUES ('r', %s)",
        "upsert": "INSERT INTO own.a (k) VALUES ('u') ON CONFLICT (k) DO UPDATE SET pn = %s",
    }[how]
    try:
        c.execute(q, [v])
        first = "ok"
    except psycopg.Error as e:
        first = str(e.sqlstate)
    c.execute("ROLLBACK TO s")
    c.execute(f"SET LOCAL {timeout} = 0")
    assert first in ("55P03", "57014"), first
    more = gen(c, PREFIX, 2)
    assert len(set(more)) == 2 and v not in more
    if end == "commit":
        t.commit()
    else:
        t.rollback()
    try:
        # (claim_entity_number: an upsert's insert arm could draw v itself, see
        # test_an_upsert_setting_the_number_its_insert_arm_generated_stores_it)
        c.execute("SELECT idmint.claim_entity_number(%s)", [v])
        second = "ok"
    except psycopg.Error as e:
        second = str(e.sqlstate)
        c.rollback()
    else:
        c.commit()
    assert second == ("ID004" if end == "commit" else "ok"), second
    assert issued(db, PREFIX) == entity_rows(db, PREFIX)
    assert check_exact(db, PREFIX) == []
    assert (
        db.execute(
            "SELECT a.k FROM own.a a LEFT JOIN idmint.entity_numbers e ON e.number = a.pn::int"
            " WHERE e.bound_at IS NULL"
        ).fetchall()
        == []
    )


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
def test_capacity_counts_a_holders_claims_exactly_through_savepoints_and_immediate_counts(
    db: psycopg.Connection, app_connect: Connect, isolation: str
) -> None:
    """§5: entity_capacity is exact on committed state plus the reader's own uncommitted
    numbers; §4: rollback (to a savepoint too) frees everything. One deck shard of 20 free
    numbers. c generates one number (it holds the shard), claims deck numbers in and out of savepoints (rolled back
    and released), runs SET CONSTRAINTS ALL IMMEDIATE (its count runs) and claims again;
    after every step c's entity_capacity must say committed + its own. A second session
    steals a card in between and commits."""
    free = only_free(db, PREFIX, {17: (20, True)})
    base = issued(db, PREFIX)
    c = app_connect(autocommit=False)
    c.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
    mine: set[int] = set()

    def claim(v: int) -> None:
        c.execute("SELECT idmint.claim_entity_number(%s)", [str(v)])
        mine.add(v)

    def check(committed: int) -> None:
        assert issued(c, PREFIX) == committed + len(mine)

    (a,) = gen(c, PREFIX, 1)  # c holds shard 17: its claims take the holder path
    mine.add(int(a))
    deck = sorted(free[17] - {int(a)})
    check(base)
    claim(deck[0])
    check(base)
    claim(deck[1])
    c.execute("SAVEPOINT s1")
    claim(deck[2])
    claim(deck[5])
    check(base)
    c.execute("ROLLBACK TO s1")
    mine -= {deck[2], deck[5]}
    check(base)
    c.execute("SAVEPOINT s2")
    claim(deck[3])
    c.execute("RELEASE s2")
    c.execute("SET CONSTRAINTS ALL IMMEDIATE")
    c.execute("SET CONSTRAINTS ALL DEFERRED")
    check(base)
    claim(deck[4])
    check(base)
    t = app_connect(autocommit=False)
    stolen = gen(t, PREFIX, 1)
    t.commit()
    assert int(stolen[0]) not in mine
    if int(stolen[0]) != deck[2]:
        claim(deck[2])
    check(base + (1 if isolation == "READ COMMITTED" else 0))
    c.commit()
    assert issued(db, PREFIX) == base + 1 + len(mine) == entity_rows(db, PREFIX)
    assert check_exact(db, PREFIX) == []
