"""Least privilege: a role granted only idmint_user can use idmint and nothing more."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.util import Connect, raises_sqlstate, scalar


@pytest.fixture
def app_conn(db: psycopg.Connection, connect: Connect) -> Iterator[psycopg.Connection]:
    """A login role whose only privilege is membership in idmint_user."""
    db.execute("SELECT idmint.add_fleet('North', 'ABC')")
    db.execute(
        "DO $$ BEGIN CREATE ROLE idmint_test_app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    db.execute("GRANT idmint_user TO idmint_test_app")
    conn = connect(user="idmint_test_app")
    assert scalar(conn, "SELECT current_user") == "idmint_test_app"
    yield conn
    conn.close()
    db.execute("REVOKE idmint_user FROM idmint_test_app")


def test_app_role_can_do_everything_the_contract_allows(app_conn: psycopg.Connection) -> None:
    c = app_conn
    fleet = c.execute(
        "SELECT fleet_id, code FROM idmint.add_fleet('App fleet', 'APP', 20)"
    ).fetchone()
    assert fleet is not None and fleet[1] == "APP"
    assert scalar(c, "SELECT idmint.next_driver_id('APP')") == "DRV-001APP"
    assert scalar(c, "SELECT idmint.next_driver_id(%s::uuid, 'k1')", [fleet[0]]) == "DRV-002APP"
    assert [r[0] for r in c.execute("SELECT idmint.next_driver_ids('APP', 2)")] == [
        "DRV-003APP",
        "DRV-004APP",
    ]
    rid = scalar(c, "SELECT idmint.reserve_driver_id('APP')")
    assert scalar(c, "SELECT idmint.confirm_driver_id(%s)", [rid]) == rid
    other = scalar(c, "SELECT idmint.reserve_driver_id('APP')")
    assert scalar(c, "SELECT idmint.release_driver_id(%s)", [other]) is True
    assert scalar(c, "SELECT idmint.purge_expired_reservations()") == 0
    with raises_sqlstate("42501"):  # idmint_admin's (contract §0)
        c.execute("SELECT idmint.reset_driver_sequence('APP', 10)")
    for admin_call in ("add_entity_type(9, 'x')", "schedule_cleanup()", "unschedule_cleanup()"):
        with raises_sqlstate("42501"):
            c.execute(f"SELECT idmint.{admin_call}")
    assert scalar(c, "SELECT idmint.version()") == "0001_idmint"
    assert len(str(scalar(c, "SELECT idmint.gen_fleet_code()"))) == 3
    assert scalar(c, "SELECT idmint.is_valid_driver_id('DRV-001APP')") is True
    assert c.execute("SELECT * FROM idmint.parse_driver_id('DRV-001APP')").fetchall() == [
        (1, "APP")
    ]
    ledger = c.execute(
        "SELECT driver_id, status FROM idmint.driver_id_ledger WHERE fleet_code = 'APP'"
    ).fetchall()
    assert len(ledger) == 5 and ("DRV-001APP", "assigned") in ledger
    with raises_sqlstate("ID003"):
        c.execute("SELECT * FROM idmint.parse_driver_id('DRV-1')")


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO idmint.fleets (fleet_id, code, name, max_drivers) VALUES (gen_random_uuid(), 'ZZZ', 'x', 1)",
        "UPDATE idmint.fleets SET last_number = 0",
        "DELETE FROM idmint.driver_numbers",
        "INSERT INTO idmint.driver_numbers (fleet_id, number, state, assigned_at)"
        " SELECT fleet_id, 500, 'assigned', now() FROM idmint.driver_id_ledger LIMIT 1",
        "UPDATE idmint.driver_numbers SET state = 'free'",
        "SELECT * FROM idmint.fleets",
        "SELECT * FROM idmint.driver_id_events",
        "SELECT idmint._issue(gen_random_uuid(), 1, NULL, 'next')",
        "SELECT idmint._error('invalid_argument', 'x')",
        "CREATE TABLE idmint.mine (x int)",
    ],
)
def test_app_role_cannot_touch_tables_or_internals(
    app_conn: psycopg.Connection, statement: str
) -> None:
    with raises_sqlstate("42501"):
        app_conn.execute(statement)


def test_public_gets_nothing(db: psycopg.Connection, connect: Connect) -> None:
    db.execute(
        "DO $$ BEGIN CREATE ROLE idmint_test_nobody LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    nobody = connect(user="idmint_test_nobody")
    with raises_sqlstate("42501"):
        nobody.execute("SELECT idmint.next_driver_id('ABC')")
    with raises_sqlstate("42501"):
        nobody.execute("SELECT * FROM idmint.driver_id_ledger")
    rows = db.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " WHERE p.pronamespace = 'idmint'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE')"
    ).fetchall()
    assert rows == []
