"""Card sharing (contract §4: "A call may wait only when the free numbers not held by open
transactions are fewer than it asks for"): near exhaustion a transaction that took one
number of a deck shard does not hold the shard's other free numbers. Other transactions
take cards of that deck (entity_steals counts them), the holder's deals pass over them,
and counts stay exact on committed state.

The first three tests come from an adversarial review (attack2); the set-ups write
idmint's tables as the superuser exactly as the engine leaves them (tests.util.only_free);
calls under test are made as an app role that is a member of idmint_user only.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests.util import (
    Connect,
    check_exact,
    gen,
    issued,
    only_free,
    raises_sqlstate,
    scalar,
    shard_of,
    wait_until_blocked,
)

PREFIX = 9


def assert_exact(db: psycopg.Connection) -> None:
    """With no transaction open: every shard's committed count (issued plus its steal
    rows) equals its rows, no shard is held, every deck holds exactly its free numbers,
    and entity_capacity says the number of rows."""
    assert check_exact(db, PREFIX) == []
    rows = scalar(
        db, "SELECT count(*) FROM idmint.entity_numbers WHERE number / 1000000 = %s", [PREFIX]
    )
    assert issued(db, PREFIX) == rows


def steals(db: psycopg.Connection) -> int:
    return int(scalar(db, "SELECT coalesce(sum(n), 0) FROM idmint.entity_steals"))  # type: ignore[arg-type]


# --- from attack2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["gen_entity_number(9)", "gen_entity_numbers(9, 1)"])
def test_a_call_does_not_wait_for_numbers_nobody_took(
    db: psycopg.Connection, app_connect: Connect, call: str
) -> None:
    """120 free numbers, 60 in each of two deck shards; b takes one (`call`) and stays
    open; a asks for 61: 119 free numbers are not held by any open transaction, so a must
    not wait (lock_timeout 1s)."""
    only_free(db, PREFIX, {17: (60, True), 123: (60, True)})
    a, b = app_connect(autocommit=False), app_connect(autocommit=False)
    b.execute(f"SELECT idmint.{call}").fetchall()
    a.execute("SET lock_timeout = '1s'")
    try:
        got = gen(a, PREFIX, 61)
    except psycopg.Error as e:
        pytest.fail(f"{e.sqlstate}: {e}")
    assert len(set(got)) == 61
    a.commit()
    b.commit()
    assert_exact(db)
    assert issued(db, PREFIX) == 1_000_000 - 120 + 62


def test_two_calls_with_enough_free_numbers_get_no_id005(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """ "While enough numbers remain free it never fails" / ID005 only on committed state:
    a and b each took one number (one shard each) and stay open; then a asks for 60 and b
    for 58 at the same time: 118 free numbers that no open transaction took, exactly
    enough. Neither waits (lock_timeout 1s) and neither fails; each deal passes over the
    cards the other took from it. (attack2 asked for 60 and 60, 2 more than are free:
    see the next test.)"""
    only_free(db, PREFIX, {17: (60, True), 123: (60, True)})
    a, b = app_connect(autocommit=False), app_connect(autocommit=False)
    gen(a, PREFIX, 1)
    gen(b, PREFIX, 1)
    out: dict[str, str] = {}
    got: dict[str, list[str]] = {}
    go = threading.Barrier(2)

    def take(name: str, conn: psycopg.Connection, n: int) -> None:
        conn.execute("SET lock_timeout = '1s'")
        go.wait()
        try:
            got[name] = gen(conn, PREFIX, n)
            out[name] = str(len(got[name]))
        except psycopg.Error as e:
            out[name] = f"{e.sqlstate}: {str(e).splitlines()[0]}"
            conn.rollback()

    threads = [threading.Thread(target=take, args=x) for x in (("a", a, 60), ("b", b, 58))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {"a": "60", "b": "58"}, out
    assert not set(got["a"]) & set(got["b"])
    a.commit()
    b.commit()
    assert_exact(db)
    assert issued(db, PREFIX) == 1_000_000


def test_two_calls_asking_more_than_is_free_never_both_fail(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """attack2's original set-up: a and b each took one number and stay open, then each
    asks for 60 while 118 are free: one of them cannot succeed while the other is open.
    One succeeds; the other either waits for it (lock_timeout: 55P03) or, when both were
    already waiting for each other, gives up with ID005 (never 40P01), and nothing of it
    stays registered."""
    only_free(db, PREFIX, {17: (60, True), 123: (60, True)})
    a, b = app_connect(autocommit=False), app_connect(autocommit=False)
    gen(a, PREFIX, 1)
    gen(b, PREFIX, 1)
    out: dict[str, str] = {}
    go = threading.Barrier(2)

    def take(name: str, conn: psycopg.Connection) -> None:
        conn.execute("SET lock_timeout = '5s'")
        go.wait()
        try:
            out[name] = str(len(gen(conn, PREFIX, 60)))
        except psycopg.Error as e:
            out[name] = f"{e.sqlstate}"
            conn.rollback()

    threads = [threading.Thread(target=take, args=x) for x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out.values()) in (["60", "ID005"], ["55P03", "60"]), out
    a.commit()
    b.commit()
    assert_exact(db)
    assert issued(db, PREFIX) == 1_000_000 - 120 + 61


@pytest.mark.parametrize("dealt", [False, True])
def test_a_claim_and_a_short_generator_never_deadlock(
    db: psycopg.Connection, app_connect: Connect, connect: Connect, dealt: bool
) -> None:
    """Two issuers never deadlock (claim_entity_number is one). 120 free numbers, 60 in
    each of two deck shards. g takes one number (holds shard A; `dealt`: then the rest of
    A too); c claims a free number of the other shard B (takes its card). g asks for one
    more than the free numbers no open transaction took: it takes the rest of A, every
    card of B but c's, and waits for c's card. c then claims a number of A (in_a): g has
    dealt it (or, if not yet, c takes its card), so c waits for g, a cycle, and c's claim
    gives up with ID004 (the number is being issued by another open transaction; attack2
    saw 40P01), or g's call with ID005; never 40P01. Once c rolls back, g gets the rest.
    (attack2 had g ask for 61, which card sharing now serves without waiting: tests
    above.)"""
    free = only_free(db, PREFIX, {17: (60, True), 123: (60, True)})
    g, c = app_connect(autocommit=False), app_connect(autocommit=False)
    (first,) = gen(g, PREFIX, 1)
    a_shard = 17 if int(first) in free[17] else 123
    b_shard = 123 if a_shard == 17 else 17
    in_a = sorted(free[a_shard] - {int(first)})[0]
    in_b = sorted(free[b_shard])[0]
    if dealt:
        assert int(in_a) in map(int, gen(g, PREFIX, 59))
    scalar(c, "SELECT idmint.claim_entity_number(%s)", [str(in_b)])
    out: dict[str, str] = {}
    ask = 60 if dealt else 119

    def short() -> None:
        try:
            out["g"] = str(len(gen(g, PREFIX, ask)))
        except psycopg.Error as e:
            out["g"] = f"{e.sqlstate}: {str(e).splitlines()[0]}"
            g.rollback()

    tg = threading.Thread(target=short)
    tg.start()
    wait_until_blocked(connect(), g.info.backend_pid)
    time.sleep(1.5)  # g's deadlock check (deadlock_timeout 1s) ran and found no cycle
    try:
        scalar(c, "SELECT idmint.claim_entity_number(%s)", [str(in_a)])
        out["c"] = "claimed"
    except psycopg.Error as e:
        out["c"] = f"{e.sqlstate}: {str(e).splitlines()[0]}"
    c.rollback()
    tg.join()
    assert not any(v.startswith("40P01") for v in out.values()), out
    assert (
        out["g"] == str(ask) and (out["c"] == "claimed" or out["c"].startswith("ID004"))
    ) or out["g"].startswith("ID005"), out
    g.commit()
    assert_exact(db)


# --- counts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_capacity_is_exact_after_steals(
    db: psycopg.Connection, app_connect: Connect, end: str
) -> None:
    """a holds shard A (took 1); b asks for 61: all of B and one card of A (a steal).
    entity_capacity counts b's numbers once b commits (and never before), not at all if
    it rolls back; a later taker of A folds the steal row into A's count."""
    free = only_free(db, PREFIX, {17: (60, True), 123: (60, True)})
    a, b, other = app_connect(autocommit=False), app_connect(autocommit=False), app_connect()
    (first,) = gen(a, PREFIX, 1)
    a_shard = 17 if int(first) in free[17] else 123
    got = gen(b, PREFIX, 61)
    assert len(set(got)) == 61
    assert sum(1 for x in got if shard_of(db, x) == a_shard) == 1
    assert steals(db) == 0  # b's steal row is not committed
    assert issued(other, PREFIX) == 1_000_000 - 120
    assert issued(b, PREFIX) == 1_000_000 - 120 + 61  # b sees its own numbers
    getattr(b, end)()
    expect = 1_000_000 - 120 + (61 if end == "commit" else 0)
    assert issued(other, PREFIX) == expect
    assert steals(db) == (1 if end == "commit" else 0)
    a.rollback()
    assert_exact(db)
    # The next taker of A folds the steal row into its count.
    rest = gen(other, PREFIX, 120 - (61 if end == "commit" else 0))
    assert steals(db) == 0
    assert len(set(rest)) == len(rest)
    assert issued(other, PREFIX) == 1_000_000
    assert_exact(db)


@pytest.mark.parametrize("end", ["commit", "open"])
def test_a_holder_deals_after_others_took_some_of_its_cards(
    db: psycopg.Connection, app_connect: Connect, connect: Connect, end: str
) -> None:
    """One deck shard, 60 free. a takes one number (holds it); b asks for 10: they are
    cards of a's deck (no wait). a then asks for the other 49 without waiting: its deal
    passes over b's cards. For one more, nothing is free that no open transaction took:
    with b committed a fails with ID005; with b open a waits for b, and gets one of b's
    numbers when b rolls back."""
    only_free(db, PREFIX, {17: (60, True)})
    a, b = app_connect(autocommit=False), app_connect(autocommit=False)
    gen(a, PREFIX, 1)
    a.execute("SET lock_timeout = '1s'")
    b.execute("SET lock_timeout = '1s'")
    theirs = gen(b, PREFIX, 10)
    if end == "commit":
        b.commit()
    mine = gen(a, PREFIX, 49)
    assert not set(mine) & set(theirs)
    if end == "commit":
        with raises_sqlstate("ID005"):
            gen(a, PREFIX, 1)
        a.rollback()
        assert issued(db, PREFIX) == 1_000_000 - 50
    else:
        a.execute("SET lock_timeout = '30s'")
        out: dict[str, list[str]] = {}
        t = threading.Thread(target=lambda: out.update(last=gen(a, PREFIX, 1)))
        t.start()
        wait_until_blocked(connect(), a.info.backend_pid)
        b.rollback()
        t.join()
        assert out["last"][0] in theirs
        a.commit()
        assert issued(db, PREFIX) == 1_000_000 - 60 + 51
    assert_exact(db)


def test_a_stealer_that_later_holds_the_shard_counts_exactly(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """b steals 5 cards of a's shard; a commits; b takes the shard itself for 5 more: its
    steal row goes (its commit-time count counts all 10 of its rows) and the counts stay
    exact."""
    only_free(db, PREFIX, {17: (60, True)})
    a, b = app_connect(autocommit=False), app_connect(autocommit=False)
    gen(a, PREFIX, 1)
    first = gen(b, PREFIX, 5)
    a.commit()
    second = gen(b, PREFIX, 5)
    assert len(set(first + second)) == 10
    assert issued(b, PREFIX) == 1_000_000 - 60 + 11
    b.commit()
    assert steals(db) == 0
    assert_exact(db)
    assert issued(db, PREFIX) == 1_000_000 - 60 + 11
    # Again after its count ran: SET CONSTRAINTS ALL IMMEDIATE in a stealer.
    c, d = app_connect(autocommit=False), app_connect(autocommit=False)
    gen(c, PREFIX, 1)
    d.execute("SET CONSTRAINTS ALL IMMEDIATE")
    gen(d, PREFIX, 3)  # stolen: d holds nothing
    c.commit()
    gen(d, PREFIX, 2)  # d takes the shard: its steal row goes
    d.execute("SET CONSTRAINTS ALL IMMEDIATE")
    gen(d, PREFIX, 1)  # counted already: taken again
    d.commit()
    assert_exact(db)
    assert issued(db, PREFIX) == 1_000_000 - 60 + 18


# --- un-issue and claims -----------------------------------------------------------------------


def test_an_upsert_that_stores_nothing_gives_a_stolen_number_back(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """An upsert on a table with idmint.assign_entity_number whose proposed row is not
    stored un-issues its number; a stolen one goes back into the deck of the shard that
    another open transaction holds (without waiting for it), and its steal row down."""
    only_free(db, PREFIX, {17: (60, True)})
    db.execute(
        "CREATE TABLE own.parts (sku text PRIMARY KEY, pn varchar(7) UNIQUE);"
        " CREATE TRIGGER parts_pn BEFORE INSERT OR UPDATE OR DELETE ON own.parts FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('pn', '9');"
        " GRANT ALL ON own.parts TO PUBLIC"
    )
    a, b = app_connect(autocommit=False), app_connect(autocommit=False)
    gen(a, PREFIX, 1)  # a holds the only shard with free numbers
    b.execute("SET lock_timeout = '1s'")
    kept = scalar(b, "INSERT INTO own.parts (sku) VALUES ('s1') RETURNING pn")
    b.commit()
    assert steals(db) == 1
    cards = scalar(db, "SELECT count(*) FROM idmint.entity_free WHERE prefix = %s", [PREFIX])
    b.execute("INSERT INTO own.parts (sku) VALUES ('s1') ON CONFLICT (sku) DO NOTHING")
    b.execute("INSERT INTO own.parts (sku) VALUES ('s1'), ('s2') ON CONFLICT (sku) DO NOTHING")
    b.commit()
    assert steals(db) == 2  # s2's number only
    assert (
        scalar(db, "SELECT count(*) FROM idmint.entity_free WHERE prefix = %s", [PREFIX])
        == cards - 1
    )
    assert scalar(db, "SELECT pn FROM own.parts WHERE sku = 's1'") == kept
    a.commit()
    assert_exact(db)
    assert issued(db, PREFIX) == 1_000_000 - 60 + 3


def test_a_claim_in_a_shard_another_transaction_holds_takes_the_card(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """g holds a deck shard (took one number). c claims another free number of it: no
    wait (the card, not the shard). A claim of g's own number waits for g (the number is
    being taken: lock_timeout), and is ID004 once g committed. g's later deals pass over
    c's card."""
    free = only_free(db, PREFIX, {17: (60, True)})
    g, c = app_connect(autocommit=False), app_connect(autocommit=False)
    (first,) = gen(g, PREFIX, 1)
    c.execute("SET lock_timeout = '1s'")
    other = sorted(free[17] - {int(first)})[0]
    assert scalar(c, "SELECT idmint.claim_entity_number(%s)", [str(other)]) == str(other)
    c.commit()
    c.execute("SET lock_timeout = '1s'")
    with raises_sqlstate("55P03"):
        scalar(c, "SELECT idmint.claim_entity_number(%s)", [first])
    c.rollback()
    with raises_sqlstate("ID004"):
        scalar(c, "SELECT idmint.claim_entity_number(%s)", [str(other)])
    c.rollback()
    got = gen(g, PREFIX, 58)
    assert str(other) not in got and first not in got
    g.commit()
    with raises_sqlstate("ID004"):
        scalar(c, "SELECT idmint.claim_entity_number(%s)", [first])
    c.rollback()
    assert_exact(db)
    assert issued(db, PREFIX) == 1_000_000


def test_a_repeatable_read_holder_deals_after_a_committed_steal(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """A REPEATABLE READ holder's snapshot still shows the cards that another transaction
    took and committed after it: locking one raises 40001, so its deal locks the cards one
    by one and passes over those; it gets every other free number."""
    only_free(db, PREFIX, {17: (60, True)})
    h, s = app_connect(autocommit=False), app_connect()
    h.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    (first,) = gen(h, PREFIX, 1)
    theirs = gen(s, PREFIX, 5)  # committed: cards of h's shard
    got = gen(h, PREFIX, 54)
    assert len(set(got)) == 54 and not set(got) & set(theirs) and first not in got
    h.commit()
    assert_exact(db)
    assert issued(db, PREFIX) == 1_000_000
