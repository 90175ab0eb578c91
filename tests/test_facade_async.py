"""The asyncio facade `idmint.AsyncIdMint` against a real PostgreSQL: every method, the three
kinds of source, `conn=`, retries, and PgBouncer in transaction pooling mode."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import psycopg
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from psycopg import IsolationLevel
from psycopg_pool import AsyncConnectionPool

import idmint
from tests.util import Connect

pytestmark = pytest.mark.asyncio


async def blocked_by(
    observer: psycopg.AsyncConnection, blocker_pid: int, timeout: float = 30.0
) -> int:
    """Poll the server until some backend waits on a lock held by `blocker_pid`; its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cur = await observer.execute(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
            [blocker_pid],
        )
        row = await cur.fetchone()
        if row is not None:
            return int(row[0])
        await asyncio.sleep(0.005)
    raise AssertionError(f"nobody ever waited for backend {blocker_pid}")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest_asyncio.fixture(params=["dsn", "connection", "pool"])
async def mint(request: pytest.FixtureRequest, dsn: str) -> AsyncIterator[idmint.AsyncIdMint]:
    """An AsyncIdMint over each kind of source."""
    if request.param == "dsn":
        yield idmint.AsyncIdMint(dsn)
    elif request.param == "connection":
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            yield idmint.AsyncIdMint(conn)
    else:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False) as pool:
            yield idmint.AsyncIdMint(pool)


@pytest_asyncio.fixture
async def aconnect(dsn: str) -> AsyncIterator[Callable[..., object]]:
    opened: list[psycopg.AsyncConnection] = []

    async def _connect(autocommit: bool = True) -> psycopg.AsyncConnection:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        await conn.close()


# --- construction ---------------------------------------------------------------------


async def test_constructor_does_no_io() -> None:
    mint = idmint.AsyncIdMint("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2")
    with pytest.raises(psycopg.OperationalError):
        await mint.gen_fleet_code()


async def test_constructor_rejects_sync_sources(dsn: str) -> None:
    with psycopg.connect(dsn) as conn, pytest.raises(TypeError):
        idmint.AsyncIdMint(conn)  # type: ignore[arg-type]


# --- every method -----------------------------------------------------------------------


async def test_fleets(mint: idmint.AsyncIdMint) -> None:
    fleet = await mint.add_fleet("North", code="abc")
    assert isinstance(fleet, idmint.Fleet)
    assert (fleet.code, fleet.name, fleet.max_drivers) == ("ABC", "North", 999)
    assert isinstance(fleet.created_at, datetime)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fleet.name = "x"  # type: ignore[misc]
    own_id = uuid.uuid4()
    other = await mint.add_fleet("South", max_drivers=5, fleet_id=own_id)
    assert other.fleet_id == own_id and other.max_drivers == 5
    code = await mint.gen_fleet_code()
    assert len(code) == 3 and code not in {"ABC", other.code}


async def test_driver_ids(mint: idmint.AsyncIdMint) -> None:
    fleet = await mint.add_fleet("North", code="ABC")
    assert await mint.next_driver_id("ABC") == "DRV-001ABC"
    assert await mint.next_driver_id(fleet.fleet_id) == "DRV-002ABC"
    assert await mint.next_driver_id(str(fleet.fleet_id)) == "DRV-003ABC"
    assert await mint.next_driver_id("abc", request_key="k") == "DRV-004ABC"
    assert await mint.next_driver_id("ABC", request_key="k") == "DRV-004ABC"
    assert await mint.next_driver_ids(fleet.fleet_id, 2) == ["DRV-005ABC", "DRV-006ABC"]


async def test_reservations(mint: idmint.AsyncIdMint) -> None:
    await mint.add_fleet("North", code="ABC")
    rid = await mint.reserve_driver_id("ABC", reserved_by="form", ttl=timedelta(minutes=1))
    assert rid == "DRV-001ABC"
    with pytest.raises(idmint.ReservationNotActiveError):
        await mint.confirm_driver_id(rid)  # held by "form"
    assert await mint.release_driver_id(rid, "other") is False
    assert await mint.confirm_driver_id(rid, reserved_by="form") == rid
    held = await mint.reserve_driver_id("ABC")
    assert await mint.release_driver_id(held) is True
    assert await mint.release_driver_id(held) is False
    assert await mint.release_driver_id(rid) is False  # held by "form"
    with pytest.raises(idmint.ImmutableIdError):
        await mint.release_driver_id(rid, "form")
    await mint.reserve_driver_id("ABC", ttl=timedelta(microseconds=1))
    assert await mint.purge_expired_reservations() == 1


async def test_reset_and_formats(mint: idmint.AsyncIdMint) -> None:
    await mint.add_fleet("North", code="ABC")
    await mint.next_driver_ids("ABC", 2)
    assert await mint.reset_driver_sequence("ABC", 10) == 10
    assert await mint.next_driver_id("ABC") == "DRV-011ABC"
    assert await mint.reset_driver_sequence("ABC") == 11
    assert await mint.is_valid_driver_id("DRV-001ABC") is True
    assert await mint.is_valid_driver_id("DRV-1ABC") is False
    assert await mint.parse_driver_id("DRV-007ABC") == idmint.ParsedDriverId(7, "ABC")
    with pytest.raises(idmint.InvalidArgumentError):
        await mint.parse_driver_id("nope")


async def test_capacity(mint: idmint.AsyncIdMint) -> None:
    await mint.add_fleet("North", code="ABC", max_drivers=10)
    await mint.next_driver_ids("ABC", 4)
    (row,) = await mint.fleet_capacity()
    assert (row.code, row.assigned, row.reserved, row.free) == ("ABC", 4, 0, 6)
    assert row.utilization == pytest.approx(0.4)
    await mint.gen_entity_numbers("quote", 3)
    caps = {c.prefix: c for c in await mint.entity_capacity()}
    assert caps[5].name == "quote" and caps[5].issued == 3


async def test_entity_numbers(mint: idmint.AsyncIdMint) -> None:
    numbers = await mint.gen_entity_numbers(1, 20)
    assert len(set(numbers)) == 20 and all(n[0] == "1" and len(n) == 7 for n in numbers)
    assert (await mint.gen_entity_number("material"))[0] == "2"
    free = next(f"3{i:06d}" for i in range(10**6))
    assert await mint.claim_entity_number(free, "batch") == free
    with pytest.raises(idmint.AlreadyTakenError):
        await mint.claim_entity_number(free)
    assert await mint.is_valid_entity_number("3000000", 3) is True
    assert await mint.is_valid_entity_number("3000000", "part") is False
    assert await mint.add_entity_type(8, "ticket") == idmint.EntityType(8, "ticket")
    assert (await mint.gen_entity_number(8))[0] == "8"
    with pytest.raises(idmint.UnknownEntityTypeError):
        await mint.gen_entity_number("nosuchtype")


async def test_audit_types_and_cleanup(mint: idmint.AsyncIdMint) -> None:
    await mint.add_fleet("North", code="ABC")
    rid = await mint.reserve_driver_id("ABC", reserved_by="form")
    assert await mint.confirm_driver_id(rid, reserved_by="form") == rid
    events = await mint.driver_id_history(rid)
    assert [(e.event, e.reserved_by) for e in events] == [
        ("reserved", "form"),
        ("confirmed", "form"),
    ]
    assert isinstance(events[0], idmint.DriverIdEvent)
    number = await mint.gen_entity_number("batch")
    [issued] = await mint.entity_number_history(number)
    assert (issued.entity_number, issued.entity, issued.how) == (number, "batch", "gen")
    with pytest.raises(idmint.InvalidArgumentError):
        await mint.entity_number_history("12")
    await mint.add_entity_type(8, "invoice")
    assert (await mint.entity_types())[-1] == idmint.EntityType(8, "invoice")
    with pytest.raises(idmint.InvalidArgumentError):
        await mint.schedule_cleanup("*/5 * * * *")
    assert await mint.unschedule_cleanup() is False


async def test_backfill(mint: idmint.AsyncIdMint, connect: Connect) -> None:
    db = connect()
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, number varchar(7))")
    db.execute("INSERT INTO orders (id) SELECT generate_series(1, 3)")
    assert await mint.backfill_entity_numbers("orders", "number", "order") == 3
    rows = db.execute("SELECT number FROM orders").fetchall()
    assert all(r[0].startswith("4") for r in rows)


async def test_migrate_is_idempotent(mint: idmint.AsyncIdMint) -> None:
    assert await mint.migrate() == []


# --- conn= ------------------------------------------------------------------------------


async def test_conn_joins_callers_transaction(
    mint: idmint.AsyncIdMint, aconnect: Callable[..., object]
) -> None:
    await mint.add_fleet("North", code="ABC")
    caller: psycopg.AsyncConnection = await aconnect(autocommit=False)  # type: ignore[misc]
    assert await mint.next_driver_id("ABC", conn=caller) == "DRV-001ABC"
    assert await mint.next_driver_ids("ABC", 2, conn=caller) == ["DRV-002ABC", "DRV-003ABC"]
    numbers = await mint.gen_entity_numbers("part", 3, conn=caller)
    assert caller.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    await caller.rollback()
    assert await mint.next_driver_id("ABC") == "DRV-001ABC"
    assert [await mint.claim_entity_number(n) for n in numbers] == numbers

    async with caller.transaction():
        assert await mint.next_driver_id("ABC", conn=caller) == "DRV-002ABC"
    assert await mint.next_driver_id("ABC") == "DRV-003ABC"


# --- retries ----------------------------------------------------------------------------


async def test_serialization_failure_is_retried(dsn: str, aconnect: Callable[..., object]) -> None:
    registry = CollectorRegistry()
    mint = idmint.AsyncIdMint(
        dsn, isolation_level=IsolationLevel.REPEATABLE_READ, backoff_base=0.001, metrics=registry
    )
    await mint.add_fleet("North", code="ABC")
    observer: psycopg.AsyncConnection = await aconnect()  # type: ignore[misc]
    blocker: psycopg.AsyncConnection = await aconnect(autocommit=False)  # type: ignore[misc]
    await blocker.execute("UPDATE idmint.fleets SET name = 'renamed' WHERE code = 'ABC'")

    task = asyncio.create_task(mint.next_driver_id("ABC"))
    await blocked_by(observer, blocker.info.backend_pid)
    await blocker.commit()
    assert await asyncio.wait_for(task, 60) == "DRV-001ABC"
    assert sample(registry, "idmint_retries_total", operation="next_driver_id") == 1


async def test_exhausted_retries_raise_concurrency_error(
    dsn: str, aconnect: Callable[..., object]
) -> None:
    impatient = psycopg.conninfo.make_conninfo(dsn, options="-c lock_timeout=50")
    mint = idmint.AsyncIdMint(impatient, attempts=2, backoff_base=0.001)
    await mint.add_fleet("North", code="ABC")
    blocker: psycopg.AsyncConnection = await aconnect(autocommit=False)  # type: ignore[misc]
    await blocker.execute("SELECT 1 FROM idmint.fleets WHERE code = 'ABC' FOR UPDATE")
    with pytest.raises(idmint.ConcurrencyError) as info:
        await mint.next_driver_id("ABC")
    assert info.value.sqlstate == "55P03" and info.value.attempts == 2
    assert isinstance(info.value.__cause__, psycopg.errors.LockNotAvailable)
    await blocker.rollback()
    assert await mint.next_driver_id("ABC") == "DRV-001ABC"


# --- errors -----------------------------------------------------------------------------


async def test_errors_map_to_classes(mint: idmint.AsyncIdMint, connect: Connect) -> None:
    await mint.add_fleet("Tiny", code="ABC", max_drivers=1)
    await mint.next_driver_id("ABC")
    cases = [
        (idmint.FleetCapacityError, mint.next_driver_id("ABC")),
        (idmint.UnknownFleetError, mint.next_driver_id("ZZZ")),
        (idmint.InvalidArgumentError, mint.next_driver_ids("ABC", 0)),
        (idmint.AlreadyTakenError, mint.add_fleet("Again", code="abc")),
        (idmint.ReservationNotActiveError, mint.confirm_driver_id("DRV-009ABC")),
        (idmint.ImmutableIdError, mint.release_driver_id("DRV-001ABC")),
        (idmint.UnknownEntityTypeError, mint.gen_entity_numbers(9, 1)),
    ]
    for cls, call in cases:
        with pytest.raises(cls) as info:
            await call
        assert info.value.sqlstate == cls.code
        assert isinstance(info.value.__cause__, psycopg.Error)
        assert info.value.__cause__.sqlstate == cls.code


# --- PgBouncer ----------------------------------------------------------------------------


@pytest_asyncio.fixture(params=["direct", "pgbouncer", "pgbouncer-pool"])
async def route(
    request: pytest.FixtureRequest, dsn: str
) -> AsyncIterator[Callable[[], idmint.AsyncIdMint]]:
    if request.param == "direct":
        yield lambda: idmint.AsyncIdMint(dsn)
        return
    bouncer_dsn: str = request.getfixturevalue("pgbouncer_dsn")
    if request.param == "pgbouncer":
        yield lambda: idmint.AsyncIdMint(bouncer_dsn)
        return
    async with AsyncConnectionPool(bouncer_dsn, min_size=2, max_size=8, open=False) as pool:
        yield lambda: idmint.AsyncIdMint(pool)


async def test_concurrent_allocation(route: Callable[[], idmint.AsyncIdMint]) -> None:
    """8 concurrent tasks share one client: no duplicates, no errors, ids 1..N."""
    mint = route()
    await mint.add_fleet("North", code="ABC")

    async def work() -> list[str]:
        got: list[str] = []
        for _ in range(10):
            got.append(await mint.next_driver_id("ABC"))
        got += await mint.next_driver_ids("ABC", 3)
        got += await mint.gen_entity_numbers("order", 5)
        return got

    results = await asyncio.gather(*(work() for _ in range(8)))
    issued = [x for r in results for x in r]
    assert len(issued) == len(set(issued)) == 8 * 18
    drivers = sorted(x for x in issued if x.startswith("DRV-"))
    assert drivers == [f"DRV-{n:03d}ABC" for n in range(1, 8 * 13 + 1)]
