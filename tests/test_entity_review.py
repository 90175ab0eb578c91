"""Findings of the second adversarial review of the entity engine: each test states a rule
of CONTRACT.md sections 4/5 and failed on the engine as of da78819 (its docstring says how);
the findings that are not fixed are listed in docs/DESIGN.md, "Known limits".

The white-box set-ups write idmint's tables as the superuser exactly as the engine leaves
them (as tests/test_entity_decks.py does); every call under test is made as an app role
that is a member of idmint_user (EXECUTE only) and owns its own schema.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from tests.util import Connect, gen, issued, only_free, scalar

PREFIX = 9


# --- Uniform over the free numbers ---------------------------------------------------------

DRAW_AND_UNDO = """
CREATE TEMP TABLE seen (draw integer, number integer);
DO $$
DECLARE
    got text[];
BEGIN
    FOR d IN 1 .. %(draws)s LOOP
        BEGIN
            got := ARRAY(SELECT idmint.%(call)s);
            RAISE EXCEPTION 'undo';
        EXCEPTION WHEN raise_exception THEN
            INSERT INTO seen SELECT d, x::integer FROM unnest(got) AS x;
        END;
    END LOOP;
END $$;
"""


@pytest.mark.parametrize("call", ["gen_entity_number(9)", "gen_entity_numbers(9, 1)"])
def test_a_number_in_a_shard_with_a_deck_is_as_likely_as_any_other(
    db: psycopg.Connection, app_connect: Connect, call: str
) -> None:
    """ "uniform over the free numbers": 1 300 free numbers in a shard still sparse and
    1 249 in a shard that has its deck (any type at 75-90 % has both kinds). About half of
    single draws should come from the deck shard; the engine's small calls pick only
    shards with sparse room (_entity_take_sparse, phase 2) while any is unheld, so a
    number of a deck shard is never the next number (0 of 300)."""
    free = only_free(db, PREFIX, {17: (1300, False), 123: (1249, True)})
    app = app_connect()
    app.execute(DRAW_AND_UNDO % {"draws": 300, "call": call})
    rows = app.execute("SELECT number FROM seen").fetchall()
    assert len(rows) == 300
    from_deck = sum(1 for (x,) in rows if x in free[123])
    assert sum(1 for (x,) in rows if x in free[17]) + from_deck == 300
    # Binomial(300, 0.49): mean 147, sd 8.7.
    assert from_deck > 100, f"{from_deck} of 300 draws from the deck shard (expected about 147)"
    assert issued(db, PREFIX) == 1_000_000 - 2549


# --- Capacity alerts ----------------------------------------------------------------------


def fill_to(db: psycopg.Connection, count: int) -> None:
    """Type 9 with exactly `count` committed numbers (a multiple of 200 directly, the rest
    by an ordinary committed call)."""
    from tests.util import issue_directly

    db.execute("SELECT idmint.add_entity_type(%s, 'attack2')", [PREFIX])
    direct = issue_directly(db, PREFIX, count // 200)
    if count > direct:
        gen(db, PREFIX, count - direct)
    assert issued(db, PREFIX) == count


def thresholds(listener: psycopg.Connection, timeout: float = 1.0) -> list[float]:
    import json

    return [json.loads(n.payload)["threshold"] for n in listener.notifies(timeout=timeout)]


def test_an_upsert_that_stores_nothing_sends_no_alert(
    db: psycopg.Connection, app_connect: Connect, connect: Connect
) -> None:
    """Alerts come from committed state, once per crossing. 599 999 numbers committed; an
    upsert on a table with the trigger proposes a row (the trigger issues the 600 000th
    number) that ON CONFLICT DO NOTHING does not store, so at commit the number is given
    back and the committed count stays 599 999. The commit-time count runs before the
    binding is settled (its event was queued first), counts the number and sends 0.6;
    the un-issue then lowers `alerted` again, so the real crossing sends 0.6 again."""
    fill_to(db, 599_998)
    app = app_connect()
    app.execute("CREATE TABLE own.parts (id integer PRIMARY KEY, number text UNIQUE)")
    app.execute(
        "CREATE TRIGGER parts_number BEFORE INSERT OR UPDATE OR DELETE ON own.parts"
        " FOR EACH ROW EXECUTE FUNCTION idmint.assign_entity_number('number', '9')"
    )
    app.execute("INSERT INTO own.parts (id) VALUES (1)")  # 599 999 committed
    assert issued(db, PREFIX) == 599_999
    listener = connect()
    listener.execute("LISTEN idmint_capacity")
    app.execute("INSERT INTO own.parts (id) VALUES (1) ON CONFLICT (id) DO NOTHING")
    assert issued(db, PREFIX) == 599_999  # nothing stored, nothing stays issued
    early = thresholds(listener)
    app.execute("INSERT INTO own.parts (id) VALUES (2)")  # 600 000: the real crossing
    assert issued(db, PREFIX) == 600_000
    real = thresholds(listener)
    assert (early, real) == ([], [0.6])


def test_set_constraints_immediate_does_not_block_other_commits(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """Issuers never wait for each other; the commit-time check must not make a commit
    fail. From 50 % on, a transaction that says SET CONSTRAINTS ALL IMMEDIATE after
    taking a number runs the count and threshold check there and then, which locks the
    type row (FOR UPDATE) until that transaction ends. Every other commit of the type then
    waits for it: with lock_timeout 1s the other transaction's COMMIT fails with 55P03
    and its number is lost."""
    fill_to(db, 520_000)
    t, u = app_connect(autocommit=False), app_connect(autocommit=False)
    gen(t, PREFIX, 1)
    t.execute("SET CONSTRAINTS ALL IMMEDIATE")  # t stays open
    u.execute("SET lock_timeout = '1s'")
    gen(u, PREFIX, 1)
    try:
        u.commit()
    except psycopg.Error as e:
        pytest.fail(f"u's COMMIT: {e.sqlstate}: {e}")
    t.commit()
    assert issued(db, PREFIX) == 520_002


@pytest.mark.parametrize("deadlock_timeout", [None, "100ms"])
def test_two_commits_of_two_types_never_deadlock(
    db: psycopg.Connection,
    app_connect: Connect,
    connect: Connect,
    app_role: str,
    deadlock_timeout: str | None,
) -> None:
    """Two issuers never deadlock. Types 8 and 9 past 50 %. t takes a number of type 9
    and says SET CONSTRAINTS ALL IMMEDIATE (the count and threshold check run then: t
    holds type 9's row lock to its end), then takes a number of type 8. u takes numbers
    of types 8 and 9 and commits: its check locks type 8, then waits for type 9 (t). t
    commits: its check of type 8 waits for u. PostgreSQL breaks the cycle: 40P01. (With
    a lock_timeout on the check, a deadlock_timeout below it still gave 40P01: the
    second review; the check now polls with NOWAIT.)"""
    import threading

    from tests.util import issue_directly, wait_for_event

    if deadlock_timeout is not None:  # a superuser-only setting: for the role's sessions
        db.execute(
            sql.SQL("ALTER ROLE {} SET deadlock_timeout = {}").format(
                sql.Identifier(app_role), sql.Literal(deadlock_timeout)
            )
        )
    for p in (8, 9):
        db.execute("SELECT idmint.add_entity_type(%s, %s)", [p, f"attack2 {p}"])
        issue_directly(db, p, 2600)  # 520 000
    t, u = app_connect(autocommit=False), app_connect(autocommit=False)
    gen(t, 9, 1)
    t.execute("SET CONSTRAINTS ALL IMMEDIATE")
    gen(t, 8, 1)
    gen(u, 8, 1)
    gen(u, 9, 1)
    u_pid = u.info.backend_pid
    out: dict[str, str] = {}

    def commit(name: str, conn: psycopg.Connection) -> None:
        try:
            conn.commit()
            out[name] = "committed"
        except psycopg.Error as e:
            out[name] = f"{e.sqlstate}: {str(e).splitlines()[0]}"
            conn.rollback()

    tu = threading.Thread(target=commit, args=("u", u))
    tu.start()
    # u's commit polls for type 9's row, which t holds (never a lock wait)
    wait_for_event(connect(), u_pid, "PgSleep")
    commit("t", t)
    tu.join()
    assert out == {"t": "committed", "u": "committed"}
    assert issued(db, 8) == 520_002 and issued(db, 9) == 520_002


# --- Waiting only when short of free numbers not held by open transactions ------------------


def test_one_number_taken_does_not_hold_the_last_free_one(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """Near exhaustion ("never failing while enough numbers are free"): two free numbers,
    in two shards. t takes one number and stays open; u asks for one with lock_timeout
    1s. One free number is not held by any open transaction, so u must get it without
    waiting. t's single-number call took both shards (phase 4 takes a quarter more shards
    than it needs: ceil(1.25) = 2), so u waits for t and fails with 55P03."""
    only_free(db, PREFIX, {17: (1, True), 123: (1, True)})
    t, u = app_connect(autocommit=False), app_connect(autocommit=False)
    scalar(t, "SELECT idmint.gen_entity_number(9)")
    u.execute("SET lock_timeout = '1s'")
    try:
        scalar(u, "SELECT idmint.gen_entity_number(9)")
    except psycopg.Error as e:
        pytest.fail(f"{e.sqlstate}: {str(e).splitlines()[0]}")


def test_at_99_99_percent_single_calls_do_not_wait_while_numbers_are_untaken(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """99.99 % full: 100 free numbers, one in each of 100 shards. Open transactions take
    one number each (a column DEFAULT) and stay open; while free numbers remain that no
    open transaction took, the next call must not wait (lock_timeout 1s). Each call takes
    two shards (ceil(1.25 / average free)), so about the 50th call waits with about 50
    free numbers nobody took: 55P03."""
    only_free(db, PREFIX, {s: (1, True) for s in range(100)})
    conns = []
    for i in range(99):
        c = app_connect(autocommit=False)
        c.execute("SET lock_timeout = '1s'")
        try:
            scalar(c, "SELECT idmint.gen_entity_number(9)")
        except psycopg.Error as e:
            pytest.fail(
                f"call {i + 1} ({i} numbers taken by open transactions, {100 - i} free"
                f" and untaken): {e.sqlstate}: {str(e).splitlines()[0]}"
            )
        conns.append(c)
