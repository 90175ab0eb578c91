"""An UPDATE that replaces an entity number keeps the old one issued and bound, also in
the transaction that inserted the row (contract §4: "UPDATE to a new value binds the new
one; the old stays issued for ever"). From the review of keep_entity_number (attack6):
its attacks that did not work, kept because four of the seven step cases failed before
the change. As an app role that is a member of idmint_user only (schema `own`)."""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg
import pytest

from tests.util import Connect, gen, issue_directly, number_state, raises_sqlstate, scalar

ENTITY = """
CREATE TABLE own.a (k text PRIMARY KEY, pn text UNIQUE);
CREATE TRIGGER a_pn BEFORE INSERT OR UPDATE OR DELETE ON own.a FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part');
"""


@pytest.fixture
def app(app_connect: Connect) -> psycopg.Connection:
    return app_connect()


def issued(db: psycopg.Connection) -> int:
    return int(scalar(db, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 1"))  # type: ignore[arg-type]


STEPS = {
    # Each: statements run in one transaction after INSERT ('r1') got a number.
    "upsert-do-update": [
        "INSERT INTO own.a (k) VALUES ('r1') ON CONFLICT (k) DO UPDATE SET pn = NULL"
    ],
    "twice": [
        "UPDATE own.a SET pn = NULL WHERE k = 'r1'",
        "UPDATE own.a SET pn = NULL WHERE k = 'r1'",
    ],
    "then-delete": [
        "UPDATE own.a SET pn = NULL WHERE k = 'r1'",
        "DELETE FROM own.a WHERE k = 'r1'",
    ],
    "savepoint-rolled-back": [
        "SAVEPOINT s",
        "UPDATE own.a SET pn = NULL WHERE k = 'r1'",
        "ROLLBACK TO s",
    ],
    "immediate": [
        "SET CONSTRAINTS ALL IMMEDIATE",
        "UPDATE own.a SET pn = NULL WHERE k = 'r1'",
        "SET CONSTRAINTS ALL IMMEDIATE",
    ],
    "delete-reinsert-update": [
        "DELETE FROM own.a WHERE k = 'r1'",
        "INSERT INTO own.a SELECT 'r2', pn FROM own.seen ORDER BY n LIMIT 1",
        "UPDATE own.a SET pn = NULL WHERE k = 'r2'",
    ],
    "later-trigger-skips": ["UPDATE own.a SET pn = NULL WHERE k = 'r1' AND false OR k = 'skip'"],
}


@pytest.mark.parametrize("steps", list(STEPS), ids=list(STEPS))
def test_numbers_replaced_in_their_rows_own_transaction_stay_issued_and_bound_and_exact(
    db: psycopg.Connection, app: psycopg.Connection, steps: str
) -> None:
    """§4: every number a stored row
    carries is issued and bound; every number a row carried and an UPDATE replaced stays
    issued (and bound: a later row gets ID004); numbers generated for no stored row are
    un-issued; entity_capacity.issued counts exactly the issued numbers."""
    app.execute(ENTITY)
    app.execute(
        """
        CREATE TABLE own.seen (n serial, pn text);  -- every value a stored row carried
        CREATE FUNCTION own.seen() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN INSERT INTO own.seen (pn) VALUES (NEW.pn); RETURN NULL; END $f$;
        CREATE TRIGGER z_seen AFTER INSERT OR UPDATE ON own.a FOR EACH ROW
            EXECUTE FUNCTION own.seen();
        -- A later BEFORE UPDATE trigger of the app that skips the row's update.
        CREATE FUNCTION own.skip() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN IF NEW.k = 'skip' THEN RETURN NULL; END IF; RETURN NEW; END $f$;
        CREATE TRIGGER z_skip BEFORE UPDATE ON own.a FOR EACH ROW EXECUTE FUNCTION own.skip();
        """
    )
    with app.transaction():
        app.execute("INSERT INTO own.a (k) VALUES ('r1'), ('skip')")
        for q in STEPS[steps]:
            app.execute(q)
    carried = {str(r[0]) for r in app.execute("SELECT pn FROM own.a").fetchall()}
    seen = [str(r[0]) for r in app.execute("SELECT pn FROM own.seen ORDER BY n").fetchall()]
    stored_or_replaced = set(seen)
    for pn in carried:
        assert number_state(db, pn) == (True, True), f"{pn} carried by a stored row"
    numbers = {
        str(r[0]): bool(r[1])
        for r in db.execute(
            "SELECT number, bound_at IS NOT NULL FROM idmint.entity_numbers"
        ).fetchall()
    }
    assert issued(db) == len(numbers)
    assert set(numbers) <= stored_or_replaced, "a number no statement stored is issued"
    for pn in stored_or_replaced - carried:
        if steps == "then-delete" and pn == seen[-1]:
            assert numbers.get(pn) is False  # DELETE unbinds: issued, unbound
            continue
        assert numbers.get(pn) is True, f"{pn} was replaced by an UPDATE: issued and bound"
        with raises_sqlstate("ID004"):
            app.execute("INSERT INTO own.a VALUES ('x', %s)", [pn])


CAPACITY_STEPS = {
    # Each: (before the INSERT, after it); all in the inserting transaction.
    "update": ([], ["UPDATE own.c SET pn = NULL WHERE k = 'r1'"]),
    "immediate-update": (
        ["SET CONSTRAINTS ALL IMMEDIATE"],
        ["UPDATE own.c SET pn = NULL WHERE k = 'r1'"],
    ),
    "immediate-keep-by-hand": (
        ["SET CONSTRAINTS ALL IMMEDIATE"],
        ["SELECT idmint.keep_entity_number('own.c', 'pn', pn) FROM own.c"],
    ),
}


@pytest.mark.parametrize("steps", list(CAPACITY_STEPS), ids=list(CAPACITY_STEPS))
def test_the_crossing_made_by_a_row_whose_number_is_kept_is_notified_once_at_its_commit(
    db: psycopg.Connection,
    app: psycopg.Connection,
    connect: Callable[..., psycopg.Connection],
    steps: str,
) -> None:
    """§5: "When a call makes ... an entity type cross a threshold (0.6, 0.8, 0.95), it
    sends NOTIFY idmint_capacity"; §4: the replaced number stays issued. The type stands at
    599 999 of 1 000 000; the transaction inserts a row (600 000: 0.6 reached) and, before
    committing, replaces its number (or, by hand, settles its binding with
    keep_entity_number). The crossing must be sent once, by this commit."""
    listener = connect()
    listener.execute("LISTEN idmint_capacity")
    db.execute("SELECT idmint.add_entity_type(9, 'cap')")
    issue_directly(db, 9, 2999)  # 599 800
    gen(db, 9, 199)  # 599 999 (below 0.6: nothing sent)
    assert [n for n in listener.notifies(timeout=0.3)] == []
    app.execute(
        """
        CREATE TABLE own.c (k text PRIMARY KEY, pn text UNIQUE);
        CREATE TRIGGER a_pn BEFORE INSERT OR UPDATE OR DELETE ON own.c FOR EACH ROW
            EXECUTE FUNCTION idmint.assign_entity_number('pn', 'cap');
        """
    )
    before, after = CAPACITY_STEPS[steps]
    with app.transaction():
        for q in before:
            app.execute(q)
        app.execute("INSERT INTO own.c (k) VALUES ('r1')")
        for q in after:
            app.execute(q)
    sent = [json.loads(n.payload) for n in listener.notifies(timeout=1.0)]
    assert [(m["key"], m["threshold"]) for m in sent] == [(9, 0.6)], sent
