"""Recipe: SQLAlchemy 2 with psycopg (sync) and asyncpg (asyncio), docs/ORMS.md.

A server_default that issues part numbers, a trigger-filled driver id (FetchedValue plus a
DDL event), bulk numbering through gen_entity_numbers, and errors through error_from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import psycopg
import pytest
import pytest_asyncio
from sqlalchemy import Select, create_engine, func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import idmint
from tests.recipes.conftest import Server, issued
from tests.recipes.models_sqlalchemy import Base, Driver, Part


def gen_entity_numbers(entity: str | int, n: int) -> Select[tuple[str]]:
    # SQLAlchemy sends typed parameters (::VARCHAR, ::INTEGER), which pick the overload.
    return select(func.idmint.gen_entity_numbers(entity, n))


@pytest.fixture
def engine(app_server: Server) -> Iterator[Engine]:
    eng = create_engine(app_server.url("postgresql+psycopg"))
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest_asyncio.fixture
async def async_engine(app_server: Server) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(app_server.url("postgresql+asyncpg"))
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield eng
    await eng.dispose()


def test_sync_server_default_trigger_and_bulk_numbers(
    engine: Engine, app: psycopg.Connection
) -> None:
    with Session(engine, expire_on_commit=False) as session:
        bolt, nut = Part(name="bolt"), Part(name="nut")
        ann = Driver(fleet="AAA", name="Ann")
        session.add_all([bolt, nut, ann])
        session.flush()  # INSERT ... RETURNING brings the server-made values back
        assert bolt.part_number[0] == "1" and len(bolt.part_number) == 7
        assert nut.part_number != bolt.part_number
        assert ann.driver_id == "DRV-001AAA"

        # Bulk: one call issues the numbers; the trigger binds them to the rows.
        numbers = list(session.scalars(gen_entity_numbers("part", 3)))
        session.execute(insert(Part), [{"name": f"washer {n}", "part_number": n} for n in numbers])

        # An update writes only what changed: the trigger sees the same driver id.
        ann.name = "Ann B."
        session.commit()

    assert issued(app) == 5
    rows = app.execute("SELECT name, driver_id FROM app.drivers").fetchall()
    assert rows == [("Ann B.", "DRV-001AAA")]
    stored = {r[0] for r in app.execute("SELECT part_number FROM app.parts").fetchall()}
    assert stored == {bolt.part_number, nut.part_number, *numbers}


def test_sync_errors_through_error_from(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Driver(fleet="ZZZ", name="Nobody"))
        with pytest.raises(DBAPIError) as info:
            session.flush()
        err = idmint.error_from(info.value)
        assert isinstance(err, idmint.UnknownFleetError)
        assert err.message is not None and "ZZZ" in err.message
        assert err.__cause__ is info.value
        session.rollback()

        part = Part(name="bolt")
        session.add(part)
        session.commit()
        session.add(Part(name="copy", part_number=part.part_number))
        with pytest.raises(DBAPIError) as info:
            session.commit()
        assert isinstance(idmint.error_from(info.value), idmint.AlreadyTakenError)
        session.rollback()

        with pytest.raises(DBAPIError) as info:
            session.execute(gen_entity_numbers("part", 0))
        assert isinstance(idmint.error_from(info.value), idmint.InvalidArgumentError)


@pytest.mark.asyncio
async def test_asyncio_server_default_trigger_bulk_numbers_and_errors(
    async_engine: AsyncEngine, app: psycopg.Connection
) -> None:
    async with AsyncSession(async_engine, expire_on_commit=False) as session:
        bolt = Part(name="bolt")
        ann = Driver(fleet="AAA", name="Ann")
        session.add_all([bolt, ann])
        await session.flush()
        assert bolt.part_number[0] == "1" and len(bolt.part_number) == 7
        assert ann.driver_id == "DRV-001AAA"
        numbers = list(await session.scalars(gen_entity_numbers("material", 2)))
        assert [n[0] for n in numbers] == ["2", "2"]
        ann.name = "Ann B."
        await session.commit()

        session.add(Driver(fleet="AAA", name="Bo", driver_id="DRV-001AAA"))
        with pytest.raises(DBAPIError) as info:
            await session.commit()
        # SQLAlchemy's asyncpg adapter error -> (__cause__) asyncpg's error, which has the text.
        driver_error = info.value.orig.__cause__
        assert isinstance(driver_error, asyncpg.PostgresError)
        err = idmint.error_from(info.value)
        assert isinstance(err, idmint.AlreadyTakenError)
        assert err.message == driver_error.message
        assert err.hint == driver_error.hint
        await session.rollback()

    assert issued(app, "part") == 1 and issued(app, "material") == 2
    assert app.execute("SELECT name, driver_id FROM app.drivers").fetchall() == [
        ("Ann B.", "DRV-001AAA")
    ]
