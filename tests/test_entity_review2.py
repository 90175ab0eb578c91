"""Second review of the entity engine change bdf460f..94ea841: each test states a rule of
CONTRACT.md sections 4/5 and failed on the engine as of 94ea841 (the docstring says how). White-box set-ups write idmint's tables as the superuser as the engine leaves
them (as tests/test_entity_review.py does)."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.util import Connect, gen, issue_directly, issued, scalar, shard_of, type_partition


def only_empty_shards(db: psycopg.Connection, prefix: int, shards: list[int]) -> None:
    """Type `prefix` whose every shard is full (issued and counted) except `shards`, which
    are empty."""
    db.execute("SELECT idmint.add_entity_type(%s, %s)", [prefix, f"review2 {prefix}"])
    db.execute(
        "INSERT INTO idmint.entity_numbers (number, issued_at, how, issued_by, issued_xid)"
        " SELECT x.number, now(), 'gen', current_user, pg_current_xact_id()"
        f" FROM {type_partition(prefix)} x WHERE x.shard <> ALL (%(s)s)",
        {"p": prefix, "s": shards},
    )
    db.execute(
        "UPDATE idmint.entity_shards SET issued = 5000 WHERE prefix = %s AND shard <> ALL (%s)",
        [prefix, shards],
    )
    assert issued(db, prefix) == 1_000_000 - 5000 * len(shards)


def counts_match(db: psycopg.Connection, prefix: int) -> None:
    """entity_shards.issued equals the committed rows, shard by shard."""
    bad = db.execute(
        "SELECT x.shard, x.issued, coalesce(c.n, 0) FROM idmint.entity_shards x"
        " LEFT JOIN (SELECT y.shard, count(*) AS n"
        "   FROM idmint._entity_shards_of(ARRAY(SELECT e.number FROM idmint.entity_numbers e"
        "     WHERE e.number BETWEEN %(p)s * 1000000 AND %(p)s * 1000000 + 999999)) y GROUP BY 1) c"
        " ON c.shard = x.shard"
        " WHERE x.prefix = %(p)s AND x.issued <> coalesce(c.n, 0)",
        {"p": prefix},
    ).fetchall()
    assert bad == []


# --- The hint after a shard is taken again (SET CONSTRAINTS ALL IMMEDIATE) ------------------


def test_taking_a_counted_shard_again_keeps_its_free_count_right(connect: Connect) -> None:
    """ "While enough numbers remain free it never fails". After SET CONSTRAINTS ALL
    IMMEDIATE has counted a transaction's 100 numbers of shard 7 (the only shard of type
    9 with free numbers), its next call takes the shard again: the UPDATE takes the 100
    back out of `issued` (_entity_mine), but the hint row stores `issued` as it was
    before (z.issued, with the 100) and `mine` = 0. The call after that reads `issued`
    from the table (without the 100) and `mine` from the hint (without the 100): it
    believes the shard has 4 999 free numbers, not 4 899. Asking for 4 000 (4 899 free)
    then builds the deck with the wrong expected count: ID005 "shard 7 has 4899 free
    numbers, its count says 4999"."""
    db = connect()
    only_empty_shards(db, 9, [7])
    tx = connect(autocommit=False)
    assert len(gen(tx, 9, 100)) == 100
    tx.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the count runs now
    assert len(gen(tx, 9, 1)) == 1  # takes shard 7 again
    assert scalar(tx, "SELECT issued FROM idmint.entity_shards WHERE prefix = 9 AND shard = 7") == 0
    try:
        got = gen(tx, 9, 4000)  # 4 899 are free
    except psycopg.Error as e:
        pytest.fail(f"{e.sqlstate}: {str(e).splitlines()[0]}")
    assert len(set(got)) == 4000
    tx.commit()
    counts_match(db, 9)


# --- Thresholds when trigger bindings are pending ------------------------------------------


def thresholds(listener: psycopg.Connection, timeout: float = 1.0) -> list[float]:
    return [json.loads(n.payload)["threshold"] for n in listener.notifies(timeout=timeout)]


@pytest.mark.parametrize("other", ["stored", "not stored"])
def test_a_crossing_is_sent_at_commit_with_a_binding_of_another_type(
    connect: Connect, other: str
) -> None:
    """ "When a call makes ... an entity type cross a threshold, it sends NOTIFY". Type 9
    at 599 800; one transaction takes 200 numbers of type 9 (600 000: 0.6 crossed) and
    inserts a row into a table whose trigger binds a number of type 1 (part). At commit
    the count of type 9 sees a pending entity binding of the transaction and leaves the
    check to settle_bindings, which checks only the types of the bindings it settled
    (type 1), or, when it un-issued a number ("not stored": an upsert that stores
    nothing), none at all, leaving it to the count of the shard taken again (type 1
    only). Type 9's crossing is not sent by its commit (only later, by the cleanup)."""
    db = connect()
    db.execute("SELECT idmint.add_entity_type(9, 'review2')")
    issue_directly(db, 9, 2999)  # 599 800
    db.execute("CREATE TABLE parts (id integer PRIMARY KEY, number text UNIQUE)")
    db.execute(
        "CREATE TRIGGER parts_number BEFORE INSERT OR UPDATE OR DELETE ON parts"
        " FOR EACH ROW EXECUTE FUNCTION idmint.assign_entity_number('number', 'part')"
    )
    db.execute("INSERT INTO parts (id) VALUES (1)")
    listener = connect()
    listener.execute("LISTEN idmint_capacity")
    tx = connect(autocommit=False)
    assert len(gen(tx, 9, 200)) == 200
    if other == "stored":
        tx.execute("INSERT INTO parts (id) VALUES (2)")
    else:
        tx.execute("INSERT INTO parts (id) VALUES (1) ON CONFLICT (id) DO NOTHING")
    tx.commit()
    assert issued(db, 9) == 600_000
    at_commit = thresholds(listener)
    db.execute("SELECT idmint.purge_expired_reservations()")
    later = thresholds(listener)
    assert (at_commit, later) == ([0.6], [])


# --- A large call's tail takes shards it cannot use ----------------------------------------


def test_a_large_call_takes_no_more_shards_than_cover_it(connect: Connect) -> None:
    """ "A call takes no more shards than cover it" (DESIGN, Known limits) and "a call's
    cost grows with its n". Type 7: shard 0 empty, shards 1..100 with 1 249 free numbers
    each (no deck), the rest full. gen_entity_numbers(7, 3800): phase 2 takes shard 0 and
    plans 3 750 from it (its sparse room); for the last 50 it calls _entity_take_sparse
    (`want <= 1000`), which picks any shard with a free number, but the fill rule for
    n > 1000 keeps 1 250 free in a shard without a deck, so the shard gives nothing and
    phase 2 repeats: it takes shard after shard (2 to 24 in a manual run) until a draw
    misses. Phase 3 then takes a few numbers from each, building a deck for every one
    (5 000 probes each), and the transaction holds them all to its end. Shard 0 alone
    covers the call (5 000 free)."""
    db = connect()
    db.execute("SELECT idmint.add_entity_type(7, 'review2 seven')")
    db.execute(f"CREATE TEMP TABLE m7 AS SELECT number, shard FROM {type_partition(7)}")
    db.execute(
        "CREATE TEMP TABLE free7 AS SELECT number, shard FROM (SELECT m.*, row_number()"
        " OVER (PARTITION BY shard ORDER BY random()) rn FROM m7 m) x"
        " WHERE shard = 0 OR (shard BETWEEN 1 AND 100 AND rn <= 1249)"
    )
    db.execute(
        "INSERT INTO idmint.entity_numbers (number, issued_at, how, issued_by, issued_xid)"
        " SELECT number, now(), 'gen', current_user, pg_current_xact_id() FROM m7"
        " WHERE number NOT IN (SELECT number FROM free7)"
    )
    db.execute(
        "UPDATE idmint.entity_shards x SET issued = 5000 -"
        " (SELECT count(*) FROM free7 f WHERE f.shard = x.shard) WHERE prefix = 7"
    )
    tx = connect(autocommit=False)
    held = []
    for _ in range(5):
        assert len(gen(tx, 7, 3800)) == 3800
        held.append(
            scalar(
                tx,
                "SELECT count(*) FROM idmint.entity_shards WHERE prefix = 7 AND holder IS NOT NULL",
            )
        )
        tx.rollback()
    assert held == [1] * 5, f"shards held by a 3 800-number call: {held}"


# --- A forged hint: 23505 instead of "at worst ID005" -------------------------------------


def test_a_forged_hint_misleads_at_worst_into_id005(connect: Connect) -> None:
    """DESIGN ("The hint"): an app that overwrites the hint misleads only its own calls
    ("a poorer plan; at worst ID005 for itself"). A hint that says this transaction took
    0 numbers from a shard whose committed count is 0 makes the next call skip the probes
    ("nothing issued in the shard: no probe") and draw the transaction's own numbers:
    23505 from the engine's INSERT."""
    tx = connect(autocommit=False)
    assert len(gen(tx, 2, 100)) == 100
    tx.execute(
        "SELECT set_config('idmint.entity_2',"
        " regexp_replace(current_setting('idmint.entity_2'), ',100,', ',0,'), true)"
    )
    try:
        gen(tx, 2, 2000)
    except psycopg.Error as e:
        assert e.sqlstate == "ID005", f"{e.sqlstate}: {str(e).splitlines()[0]}"


# --- REPEATABLE READ: passing over shards counted after the snapshot ------------------------


def test_a_repeatable_read_issuer_passes_over_stale_shards_while_others_have_room(
    connect: Connect,
) -> None:
    """DESIGN (Known limits, REPEATABLE READ): an issuer passes over shards counted into
    after its snapshot "so it fails only when the shards it could still take do not
    suffice". About 190 of the 200 shards of type 3 are counted into after the snapshot
    (committed one-number calls of another session); about 10 shards with 50 000 free
    numbers are not. The retries draw the shard again at random (the one that raised
    40001 is not excluded), and at most 4 + 6 + 6 attempts are made before phase 5 locks
    everything: a one-number call fails with 40001 (5 of 10 and 4 of 10 in manual runs)."""
    db = connect()
    tx = connect(autocommit=False)
    tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    tx.execute("SELECT 1")  # the snapshot
    stale: set[int] = set()
    while len(stale) < 190:
        number = gen(db, 3, 1)[0]
        stale.add(shard_of(db, number))
    failures = []
    for _ in range(30):
        tx.execute("SAVEPOINT try")
        try:
            gen(tx, 3, 1)
        except psycopg.Error as e:
            failures.append(e.sqlstate)
        tx.execute("ROLLBACK TO SAVEPOINT try")
    tx.rollback()
    assert failures == [], f"{len(failures)} of 30 one-number calls failed: {failures}"
