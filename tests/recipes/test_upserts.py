"""Recipe: upserts on a table whose ids come from idmint's trigger (docs/ORMS.md,
contract §3 and §4): bindings follow the rows really stored.

A BEFORE trigger fires before ON CONFLICT decides, so what it takes is provisional and
settled at commit: an upsert that stores no new row consumes and binds nothing. The one
limit: a proposed row that carries an id already bound to a row is ID004 at once, even
when ON CONFLICT would have kept the stored row ("idempotent" upserts that repeat the id).
Leave the id column out of the upsert and read the stored id back with RETURNING.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import DDL, Column, MetaData, String, Table, create_engine, event, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

import idmint
from tests.recipes.conftest import Server

metadata = MetaData(schema="app")
members = Table(
    "members",
    metadata,
    Column("email", String, primary_key=True),
    Column("fleet", String, nullable=False),
    Column("name", String, nullable=False),
    Column("driver_id", String(10), unique=True),
)
event.listen(
    members,
    "after_create",
    DDL(
        "CREATE TRIGGER members_driver_id BEFORE INSERT OR UPDATE OR DELETE ON %(fullname)s"
        " FOR EACH ROW EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    ),
)


@pytest.fixture
def engine(app_server: Server) -> Iterator[Engine]:
    eng = create_engine(app_server.url("postgresql+psycopg"))
    metadata.create_all(eng)
    yield eng
    eng.dispose()


def upsert(conn: Connection, email: str, name: str, **extra: Any) -> str | None:
    """Insert a member, or rename the stored one; the member's driver id."""
    stmt = insert(members).values(email=email, fleet="AAA", name=name, **extra)
    stmt = stmt.on_conflict_do_update(index_elements=["email"], set_={"name": stmt.excluded.name})
    return conn.execute(stmt.returning(members.c.driver_id)).scalar_one()


def insert_or_skip(conn: Connection, email: str, name: str) -> list[str]:
    """Insert a member unless the email is stored; the driver ids of the rows inserted."""
    stmt = insert(members).values(email=email, fleet="AAA", name=name).on_conflict_do_nothing()
    return list(conn.execute(stmt.returning(members.c.driver_id)).scalars())


def test_upserts_that_store_no_new_row_consume_no_id(engine: Engine) -> None:
    with engine.begin() as conn:
        assert upsert(conn, "ann@x", "Ann") == "DRV-001AAA"
    with engine.begin() as conn:
        assert insert_or_skip(conn, "ann@x", "Ann") == []
    with engine.begin() as conn:
        assert upsert(conn, "ann@x", "Ann B.") == "DRV-001AAA"  # the stored row's id
    with engine.begin() as conn:
        # Both upserts gave back what their trigger took: the next id is 002.
        assert upsert(conn, "bo@x", "Bo") == "DRV-002AAA"

    # Within one transaction a skipped row's id stays held until the commit decides.
    with engine.begin() as conn:
        assert insert_or_skip(conn, "bo@x", "Bo") == []
        assert upsert(conn, "cy@x", "Cy") == "DRV-004AAA"
    with engine.begin() as conn:
        assert upsert(conn, "di@x", "Di") == "DRV-003AAA"  # 003 was given back at commit


def test_an_upsert_repeating_a_bound_id_is_id004(engine: Engine, app: psycopg.Connection) -> None:
    with engine.begin() as conn:
        ann = upsert(conn, "ann@x", "Ann")
    # Repeating the stored row with its id: the trigger sees an id already bound to a row
    # before ON CONFLICT can decide that the row is the same one.
    for attempt in (
        lambda c: upsert(c, "ann@x", "Ann", driver_id=ann),
        lambda c: c.execute(
            insert(members)
            .values(email="ann@x", fleet="AAA", name="Ann", driver_id=ann)
            .on_conflict_do_nothing()
        ),
    ):
        with pytest.raises(DBAPIError) as info, engine.begin() as conn:
            attempt(conn)
        assert isinstance(idmint.error_from(info.value), idmint.AlreadyTakenError)

    # The idempotent form leaves the id out and reads it back.
    with engine.begin() as conn:
        assert upsert(conn, "ann@x", "Ann") == ann
        assert conn.execute(select(members.c.name, members.c.driver_id)).all() == [("Ann", ann)]
    assert app.execute(
        "SELECT assigned FROM idmint.fleet_capacity WHERE code = 'AAA'"
    ).fetchone() == (1,)
