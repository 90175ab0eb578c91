"""Recipe: asyncpg (docs/ORMS.md).

asyncpg prepares every statement: an untyped $1 given to an overloaded idmint function
resolves to the text overload, and asyncpg then refuses an int or a UUID; `$1::int` /
`$1::uuid` pick the overload. Behind PgBouncer in transaction pooling, its statement cache
breaks when a transaction lands on another server connection: statement_cache_size=0.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import psycopg
import pytest
import pytest_asyncio

import idmint
from tests.recipes.conftest import Server

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def conn(app_server: Server) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(app_server.dsn)
    yield c
    await c.close()


async def test_typed_parameters_pick_the_overload(conn: asyncpg.Connection) -> None:
    # Untyped: PostgreSQL resolves $1 to the text overload, then asyncpg refuses the int.
    with pytest.raises(asyncpg.DataError, match="expected str, got int"):
        await conn.fetchval("SELECT idmint.gen_entity_number($1)", 2)
    number = await conn.fetchval("SELECT idmint.gen_entity_number($1::int)", 2)
    assert isinstance(number, str) and number[0] == "2"
    numbers = await conn.fetch("SELECT n FROM idmint.gen_entity_numbers($1::int, $2) AS n", 3, 4)
    assert [r["n"][0] for r in numbers] == ["3"] * 4

    fleet_id = await conn.fetchval("SELECT fleet_id FROM idmint.fleet_capacity WHERE code = 'AAA'")
    assert isinstance(fleet_id, uuid.UUID)
    with pytest.raises(asyncpg.DataError, match="expected str, got UUID"):
        await conn.fetchval("SELECT idmint.next_driver_id($1)", fleet_id)
    assert await conn.fetchval("SELECT idmint.next_driver_id($1::uuid)", fleet_id) == "DRV-001AAA"
    # Text works untyped (a code, or a uuid as text).
    assert await conn.fetchval("SELECT idmint.next_driver_id($1)", "aaa") == "DRV-002AAA"


async def test_errors_through_error_from(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetchval("SELECT idmint.next_driver_id($1::text)", "ZZZ")
    exc = info.value
    assert exc.sqlstate == "ID002"
    err = idmint.error_from(exc)
    assert isinstance(err, idmint.UnknownFleetError)
    assert (err.message, err.hint) == (exc.message, exc.hint)
    assert err.__cause__ is exc

    with pytest.raises(asyncpg.PostgresError) as info:
        await conn.fetch("SELECT idmint.gen_entity_numbers($1::text, $2)", "part", 100_001)
    assert isinstance(idmint.error_from(info.value), idmint.InvalidArgumentError)


def bouncer_params(pgbouncer_dsn: str) -> dict[str, Any]:
    p = psycopg.conninfo.conninfo_to_dict(pgbouncer_dsn)
    return {
        "host": p["host"],
        "port": int(str(p["port"])),
        "user": p["user"],
        "database": p["dbname"],
    }


async def test_statement_cache_size_0_behind_pgbouncer(pgbouncer_dsn: str) -> None:
    """PgBouncer (transaction pooling, 2 server connections, reused last-in first-out) hands
    each transaction any idle server connection. A holder that keeps the connection a
    client just used sends that client's next transaction to the other one."""
    params = bouncer_params(pgbouncer_dsn)
    query = "SELECT idmint.gen_entity_number($1::int), pg_backend_pid()"
    cached = await asyncpg.connect(**params)  # the default statement cache
    uncached = await asyncpg.connect(**params, statement_cache_size=0)
    holder = await asyncpg.connect(**params, statement_cache_size=0)
    try:
        # Default cache: the statement is prepared (named) on one server connection ...
        await cached.fetchrow(query, 1)
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1")  # ... which the holder now keeps,
        with pytest.raises(asyncpg.InvalidSQLStatementNameError):
            await cached.fetchrow(query, 1)  # so the next call finds no such statement.
        await hold.rollback()

        # statement_cache_size=0: prepared anew on whichever connection the call gets.
        first = await uncached.fetchrow(query, 1)
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1")
        second = await uncached.fetchrow(query, 1)
        await hold.rollback()
        assert first[1] != second[1]  # it really ran on another server connection
        assert first[0][0] == second[0][0] == "1" and first[0] != second[0]
    finally:
        for c in (cached, uncached, holder):
            await c.close()
