"""idmint.assign_driver_id() on an application's own table."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.util import raises_sqlstate, scalar, table_snapshot


@pytest.fixture(params=["uuid", "code"])
def app(
    request: pytest.FixtureRequest, db: psycopg.Connection
) -> tuple[psycopg.Connection, object, object]:
    """app.drivers keyed by fleet uuid or by fleet code; returns (db, fleet ABC, fleet XYZ)."""
    abc = db.execute("SELECT fleet_id FROM idmint.add_fleet('North', 'ABC')").fetchone()[0]  # type: ignore[index]
    xyz = db.execute("SELECT fleet_id FROM idmint.add_fleet('South', 'XYZ')").fetchone()[0]  # type: ignore[index]
    fleet_type = "uuid" if request.param == "uuid" else "text"
    db.execute("CREATE SCHEMA app")
    db.execute(
        f"CREATE TABLE app.drivers (id serial PRIMARY KEY, fleet {fleet_type} NOT NULL,"
        " driver_id varchar(10) UNIQUE, name text)"
    )
    db.execute(
        "CREATE TRIGGER drivers_id BEFORE INSERT OR UPDATE ON app.drivers FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    if request.param == "uuid":
        return db, abc, xyz
    return db, "abc", "XYZ"


def insert(db: psycopg.Connection, fleet: object, driver_id: str | None = None) -> str:
    return str(
        scalar(
            db,
            "INSERT INTO app.drivers (fleet, driver_id) VALUES (%s, %s) RETURNING driver_id",
            [fleet, driver_id],
        )
    )


def test_null_id_gets_the_next_id_of_the_rows_fleet(
    app: tuple[psycopg.Connection, object, object],
) -> None:
    db, abc, xyz = app
    assert [insert(db, abc), insert(db, abc), insert(db, xyz)] == [
        "DRV-001ABC",
        "DRV-002ABC",
        "DRV-001XYZ",
    ]
    rows = db.execute(
        "INSERT INTO app.drivers (fleet) SELECT %s FROM generate_series(1, 3) RETURNING driver_id",
        [abc],
    ).fetchall()
    assert [r[0] for r in rows] == ["DRV-003ABC", "DRV-004ABC", "DRV-005ABC"]


def test_reserved_id_is_confirmed(app: tuple[psycopg.Connection, object, object]) -> None:
    db, abc, _ = app
    rid = str(scalar(db, "SELECT idmint.reserve_driver_id('ABC')"))
    assert insert(db, abc, rid.lower()) == rid  # normalised
    assert (
        scalar(db, "SELECT status FROM idmint.driver_id_ledger WHERE driver_id = %s", [rid])
        == "assigned"
    )


def test_issued_but_unbound_id_is_bound_once(
    app: tuple[psycopg.Connection, object, object],
) -> None:
    db, abc, _ = app
    assert (
        scalar(
            db,
            "INSERT INTO app.drivers (fleet, driver_id) VALUES (%s, idmint.next_driver_id('ABC'))"
            " RETURNING driver_id",
            [abc],
        )
        == "DRV-001ABC"
    )
    issued_earlier = str(scalar(db, "SELECT idmint.next_driver_id('ABC')"))
    assert insert(db, abc, issued_earlier) == "DRV-002ABC"
    before = table_snapshot(db)
    with raises_sqlstate("ID004"):
        insert(db, abc, issued_earlier)
    with raises_sqlstate("ID004"):
        insert(db, abc, "DRV-001ABC")
    assert table_snapshot(db) == before


@pytest.mark.parametrize("kind", ["other fleet", "never issued", "released"])
def test_foreign_or_inactive_id_is_id006(
    app: tuple[psycopg.Connection, object, object], kind: str
) -> None:
    db, abc, _ = app
    if kind == "other fleet":
        driver_id = str(scalar(db, "SELECT idmint.next_driver_id('XYZ')"))
    elif kind == "never issued":
        driver_id = "DRV-077ABC"
    else:
        driver_id = str(scalar(db, "SELECT idmint.reserve_driver_id('ABC')"))
        db.execute("SELECT idmint.release_driver_id(%s)", [driver_id])
    before = table_snapshot(db)
    with raises_sqlstate("ID006"):
        insert(db, abc, driver_id)
    assert table_snapshot(db) == before
    assert scalar(db, "SELECT count(*) FROM app.drivers") == 0


def test_malformed_id_or_missing_fleet(app: tuple[psycopg.Connection, object, object]) -> None:
    db, abc, _ = app
    with raises_sqlstate("ID003"):
        insert(db, abc, "DRV-1ABC")
    db.execute("ALTER TABLE app.drivers ALTER fleet DROP NOT NULL")
    with raises_sqlstate("ID003"):
        insert(db, None)
    with raises_sqlstate("ID002"):
        insert(db, "QQQ" if not isinstance(abc, uuid.UUID) else uuid.uuid4())


def test_update_that_changes_the_id_is_id007(
    app: tuple[psycopg.Connection, object, object],
) -> None:
    db, abc, xyz = app
    insert(db, abc)
    other = str(scalar(db, "SELECT idmint.next_driver_id('ABC')"))
    with raises_sqlstate("ID007"):
        db.execute("UPDATE app.drivers SET driver_id = %s", [other])
    with raises_sqlstate("ID007"):
        db.execute("UPDATE app.drivers SET driver_id = NULL")
    with raises_sqlstate("ID007"):
        db.execute("UPDATE app.drivers SET fleet = %s", [xyz])
    db.execute("UPDATE app.drivers SET name = 'Ann'")  # other columns may change
    assert db.execute("SELECT driver_id, name FROM app.drivers").fetchall() == [
        ("DRV-001ABC", "Ann")
    ]


def test_misconfigured_trigger_is_id003(db: psycopg.Connection) -> None:
    db.execute("SELECT idmint.add_fleet('North', 'ABC')")
    db.execute("CREATE TABLE t (fleet text, driver_id text)")
    db.execute(
        "CREATE TRIGGER t_id BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'nope')"
    )
    with raises_sqlstate("ID003"):
        db.execute("INSERT INTO t (fleet) VALUES ('ABC')")
    db.execute("DROP TRIGGER t_id ON t")
    db.execute(
        "CREATE TRIGGER t_id BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION idmint.assign_driver_id('fleet')"
    )
    with raises_sqlstate("ID003"):
        db.execute("INSERT INTO t (fleet) VALUES ('ABC')")
