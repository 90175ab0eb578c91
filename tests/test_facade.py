"""The synchronous facade `idmint.IdMint` against a real PostgreSQL: every method, the three
kinds of source, `conn=`, retries, and PgBouncer in transaction pooling mode."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg import IsolationLevel
from psycopg_pool import ConnectionPool

import idmint
from tests.util import Connect, lock_waits, scalar


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture(params=["dsn", "connection", "pool"])
def mint(request: pytest.FixtureRequest, dsn: str) -> Iterator[idmint.IdMint]:
    """An IdMint over each kind of source."""
    if request.param == "dsn":
        yield idmint.IdMint(dsn)
    elif request.param == "connection":
        with psycopg.connect(dsn) as conn:
            yield idmint.IdMint(conn)
    else:
        with ConnectionPool(dsn, min_size=1, max_size=4, open=True) as pool:
            yield idmint.IdMint(pool)


# --- construction ---------------------------------------------------------------------


def test_constructor_does_no_io() -> None:
    # Port 1 on localhost refuses connections: only a call may find that out.
    mint = idmint.IdMint("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2")
    with pytest.raises(psycopg.OperationalError):
        mint.gen_fleet_code()


def test_constructor_rejects_other_sources() -> None:
    with pytest.raises(TypeError):
        idmint.IdMint(42)  # type: ignore[arg-type]


# --- every method -----------------------------------------------------------------------


def test_fleets(mint: idmint.IdMint) -> None:
    fleet = mint.add_fleet("North", code="abc")
    assert isinstance(fleet, idmint.Fleet)
    assert (fleet.code, fleet.name, fleet.max_drivers) == ("ABC", "North", 999)
    assert isinstance(fleet.fleet_id, uuid.UUID)
    assert isinstance(fleet.created_at, datetime)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fleet.code = "XYZ"  # type: ignore[misc]

    own_id = uuid.uuid4()
    other = mint.add_fleet("South", max_drivers=5, fleet_id=own_id)
    assert other.fleet_id == own_id and other.max_drivers == 5
    assert len(other.code) == 3 and other.code != "ABC"

    code = mint.gen_fleet_code()
    assert len(code) == 3 and code not in {"ABC", other.code}


def test_driver_ids(mint: idmint.IdMint) -> None:
    fleet = mint.add_fleet("North", code="ABC")
    assert mint.next_driver_id("ABC") == "DRV-001ABC"
    assert mint.next_driver_id("abc") == "DRV-002ABC"
    assert mint.next_driver_id(fleet.fleet_id) == "DRV-003ABC"  # uuid overload
    assert mint.next_driver_id(str(fleet.fleet_id)) == "DRV-004ABC"  # uuid as text
    assert mint.next_driver_id("ABC", request_key="k1") == "DRV-005ABC"
    assert mint.next_driver_id("ABC", request_key="k1") == "DRV-005ABC"  # idempotent
    assert mint.next_driver_ids(fleet.fleet_id, 3) == ["DRV-006ABC", "DRV-007ABC", "DRV-008ABC"]
    assert mint.next_driver_ids("ABC", 1) == ["DRV-009ABC"]


def test_reservations(mint: idmint.IdMint) -> None:
    mint.add_fleet("North", code="ABC")
    rid = mint.reserve_driver_id("ABC", reserved_by="signup form", ttl=timedelta(minutes=2))
    assert rid == "DRV-001ABC"
    with pytest.raises(idmint.ReservationNotActiveError):
        mint.confirm_driver_id(rid)  # held by "signup form"
    assert mint.release_driver_id(rid, "someone else") is False
    assert mint.confirm_driver_id(rid.lower(), reserved_by="signup form") == rid
    assert mint.confirm_driver_id(rid, "signup form") == rid  # idempotent

    held = mint.reserve_driver_id("ABC")
    assert held == "DRV-002ABC"
    assert mint.release_driver_id(held) is True
    assert mint.release_driver_id(held) is False
    assert mint.reserve_driver_id("ABC") == "DRV-002ABC"  # released numbers come back first

    # A microsecond ttl has expired by the time another transaction looks.
    short = mint.reserve_driver_id("ABC", ttl=timedelta(microseconds=1))
    assert short == "DRV-003ABC"
    assert mint.purge_expired_reservations() == 1
    assert mint.purge_expired_reservations() == 0


def test_reset_and_formats(mint: idmint.IdMint) -> None:
    mint.add_fleet("North", code="ABC")
    mint.next_driver_ids("ABC", 2)
    assert mint.reset_driver_sequence("ABC", 10) == 10
    assert mint.next_driver_id("ABC") == "DRV-011ABC"
    assert mint.reset_driver_sequence("ABC") == 11  # NULL: highest number in use

    assert mint.is_valid_driver_id("drv-001abc") is True
    assert mint.is_valid_driver_id("DRV-000ABC") is False
    assert mint.is_valid_driver_id(None) is False
    parsed = mint.parse_driver_id("drv-042xyz")
    assert parsed == idmint.ParsedDriverId(number=42, fleet_code="XYZ")


def test_fleet_capacity(mint: idmint.IdMint) -> None:
    mint.add_fleet("North", code="ABC", max_drivers=10)
    mint.add_fleet("South", code="DEF", max_drivers=4)
    mint.next_driver_ids("ABC", 3)
    mint.reserve_driver_id("ABC")
    rows = {c.code: c for c in mint.fleet_capacity()}
    assert set(rows) == {"ABC", "DEF"}
    abc = rows["ABC"]
    assert isinstance(abc, idmint.FleetCapacity)
    assert (abc.name, abc.max_drivers, abc.assigned, abc.reserved, abc.free) == (
        "North",
        10,
        3,
        1,
        6,
    )
    assert abc.utilization == pytest.approx(0.4)
    assert rows["DEF"].utilization == 0.0 and rows["DEF"].free == 4


def test_entity_numbers(mint: idmint.IdMint) -> None:
    parts = mint.gen_entity_numbers("part", 30)
    assert len(parts) == 30 == len(set(parts))
    assert all(len(p) == 7 and p.isdigit() and p[0] == "1" for p in parts)
    assert mint.gen_entity_number(2)[0] == "2"
    assert mint.gen_entity_number("2")[0] == "2"
    assert mint.gen_entity_number("batch")[0] == "3"
    assert mint.gen_entity_numbers(4, 2)[0][0] == "4"

    free = next(f"1{i:06d}" for i in range(10**6) if f"1{i:06d}" not in parts)
    assert mint.claim_entity_number(free) == free
    with pytest.raises(idmint.AlreadyTakenError):
        mint.claim_entity_number(free, "part")
    assert mint.claim_entity_number("5000001", 5) == "5000001"

    assert mint.is_valid_entity_number("1234567") is True
    assert mint.is_valid_entity_number("1234567", "part") is True
    assert mint.is_valid_entity_number("1234567", 2) is False
    assert mint.is_valid_entity_number("123456") is False
    assert mint.is_valid_entity_number(None) is False

    assert mint.add_entity_type(7, "invoice") == idmint.EntityType(7, "invoice")
    assert mint.gen_entity_number("invoice")[0] == "7"
    assert mint.is_valid_entity_number("7000000", 7) is True

    caps = {c.prefix: c for c in mint.entity_capacity()}
    assert isinstance(caps[1], idmint.EntityCapacity)
    assert caps[1].name == "part" and caps[1].issued == 31
    assert caps[1].free == caps[1].capacity - 31
    assert caps[1].utilization == pytest.approx(31 / caps[1].capacity)
    assert caps[7].name == "invoice" and caps[7].issued == 1


def test_fleet_is_exactly_the_public_columns(mint: idmint.IdMint) -> None:
    """add_fleet returns no internal counters (contract 0.2 §6)."""
    assert [f.name for f in dataclasses.fields(idmint.Fleet)] == [
        "fleet_id", "code", "name", "max_drivers", "created_at",
    ]  # fmt: skip
    fleet = mint.add_fleet("North", code="ABC", max_drivers=7)
    assert dataclasses.astuple(fleet)[1:4] == ("ABC", "North", 7)


def test_audit_history(mint: idmint.IdMint, db: psycopg.Connection) -> None:
    user = scalar(db, "SELECT session_user")
    mint.add_fleet("North", code="ABC")
    rid = mint.reserve_driver_id("ABC", reserved_by="form")
    assert mint.release_driver_id(rid, reserved_by="form") is True
    assert mint.next_driver_id("ABC") == rid
    events = mint.driver_id_history(rid.lower())
    assert all(isinstance(e, idmint.DriverIdEvent) for e in events)
    assert [(e.event, e.how, e.reserved_by) for e in events] == [
        ("reserved", None, "form"),
        ("released", None, "form"),
        ("assigned", "next", None),
    ]
    assigned = events[-1]
    assert (assigned.driver_id, assigned.number, assigned.fleet_code) == (rid, 1, "ABC")
    assert assigned.actor == user and isinstance(assigned.at, datetime)
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert mint.driver_id_history("DRV-009ZZZ") == []
    with pytest.raises(idmint.InvalidArgumentError):
        mint.driver_id_history("DRV-1")

    [number] = mint.gen_entity_numbers("part", 1)
    [issued] = mint.entity_number_history(number)
    assert isinstance(issued, idmint.EntityNumberEvent)
    assert (issued.entity_number, issued.prefix, issued.entity, issued.event, issued.how) == (
        number, 1, "part", "issued", "gen",
    )  # fmt: skip
    assert issued.actor == user and isinstance(issued.issued_xid, int)
    assert mint.claim_entity_number("5000001") == "5000001"
    assert [(e.how, e.entity) for e in mint.entity_number_history("5000001")] == [
        ("claim", "quote")
    ]
    assert mint.entity_number_history("5000002") == []  # never issued
    for bad in ["500000", "05000001", " 5000001", ""]:
        with pytest.raises(idmint.InvalidArgumentError):
            mint.entity_number_history(bad)


def test_entity_types_and_backfill(mint: idmint.IdMint, db: psycopg.Connection) -> None:
    seeded = [(1, "part"), (2, "material"), (3, "batch"), (4, "order"), (5, "quote")]
    assert mint.entity_types() == [idmint.EntityType(p, n) for p, n in seeded]
    mint.add_entity_type(7, "invoice")
    assert mint.entity_types()[-1] == idmint.EntityType(7, "invoice")

    db.execute("CREATE TABLE parts (id int PRIMARY KEY, number text, code bigint, x varchar(3))")
    db.execute("INSERT INTO parts (id) SELECT generate_series(1, 4)")
    assert mint.backfill_entity_numbers("public.parts", "number", "part") == 4
    assert mint.backfill_entity_numbers("parts", "number", "part") == 0
    assert mint.backfill_entity_numbers("parts", "code", 7) == 4
    rows = db.execute("SELECT number, code FROM parts").fetchall()
    assert all(n.startswith("1") and str(c).startswith("7") for n, c in rows)
    for n, _ in rows:  # issued by the backfill, bound to its row
        events = mint.entity_number_history(n)
        assert [(e.event, e.how) for e in events] == [("issued", "backfill"), ("bound", None)]
    with pytest.raises(idmint.InvalidArgumentError):
        mint.backfill_entity_numbers("parts", "x", "part")  # too narrow to hold a number
    with pytest.raises(idmint.UnknownEntityTypeError):
        mint.backfill_entity_numbers("parts", "number", "widget")


def test_cleanup_scheduling_without_pg_cron(mint: idmint.IdMint) -> None:
    """The test cluster has no pg_cron (tests/test_pg_cron.py has one that does)."""
    with pytest.raises(idmint.InvalidArgumentError, match="pg_cron is not installed"):
        mint.schedule_cleanup()
    assert mint.unschedule_cleanup() is False


# Public functions an application never calls itself: the trigger functions (named in
# CREATE TRIGGER) and the helpers that those invoker-rights triggers and the commit-time
# settler call with the app's rights.
NOT_FACADE = {
    "assign_driver_id", "assign_entity_number", "bind_driver_id", "unbind_driver_id",
    "bind_entity_numbers", "unbind_entity_number", "keep_entity_number", "settle_bindings",
}  # fmt: skip


def test_every_public_sql_function_has_a_facade_method(db: psycopg.Connection) -> None:
    """Catalog-driven: every function idmint_user or idmint_admin may EXECUTE (internal `_`
    helpers aside) has a method of that name in both facades, sending a query that calls it."""
    public = {
        r[0]
        for r in db.execute(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'idmint'::regnamespace"
            " AND p.proname !~ '^_' AND (has_function_privilege('idmint_user', p.oid, 'EXECUTE')"
            " OR has_function_privilege('idmint_admin', p.oid, 'EXECUTE'))"
        )
    }
    triggers = {
        r[0]
        for r in db.execute(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'idmint'::regnamespace"
            " AND p.prorettype = 'trigger'::regtype AND p.proname !~ '^_'"
        )
    }
    assert triggers <= NOT_FACADE <= public  # the exemptions stay true
    queries = {
        q.operation: q.sql.as_string(None) for q in vars(idmint.queries).values()
        if isinstance(q, idmint.queries.Query)
    }  # fmt: skip
    missing = [
        name
        for name in sorted(public - NOT_FACADE)
        if f"idmint.{name}(" not in queries.get(name, "")
        or not callable(getattr(idmint.IdMint, name, None))
        or not inspect.iscoroutinefunction(getattr(idmint.AsyncIdMint, name, None))
    ]
    assert missing == []


def test_migrate_is_idempotent(mint: idmint.IdMint) -> None:
    # The test database is already migrated: nothing is pending, whichever source.
    assert mint.migrate() == []


def test_migrate_applies_pending(postgresql_proc: object, db: psycopg.Connection) -> None:
    proc = postgresql_proc
    db.execute("CREATE DATABASE facade_migrate_target")
    try:
        target = psycopg.conninfo.make_conninfo(
            host=proc.host,  # type: ignore[attr-defined]
            port=proc.port,  # type: ignore[attr-defined]
            user=proc.user,  # type: ignore[attr-defined]
            dbname="facade_migrate_target",
        )
        with psycopg.connect(target) as conn:
            mint = idmint.IdMint(conn)
            applied = mint.migrate()  # DSN derived from conn.info
            assert applied and applied[0].startswith("0001")
            assert mint.next_driver_id(mint.add_fleet("x", code="ABC").code) == "DRV-001ABC"
            assert mint.migrate() == []
    finally:
        db.execute("DROP DATABASE facade_migrate_target WITH (FORCE)")


# --- conn=: the caller's transaction ----------------------------------------------------


def test_conn_joins_callers_transaction(mint: idmint.IdMint, connect: Connect) -> None:
    mint.add_fleet("North", code="ABC")
    caller = connect(autocommit=False)
    assert mint.next_driver_id("ABC", conn=caller) == "DRV-001ABC"
    assert mint.next_driver_ids("ABC", 2, conn=caller) == ["DRV-002ABC", "DRV-003ABC"]
    assert mint.reserve_driver_id("ABC", conn=caller) == "DRV-004ABC"
    # Still inside the caller's transaction: the facade did not commit.
    assert caller.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    caller.rollback()
    assert mint.next_driver_id("ABC") == "DRV-001ABC"  # nothing was consumed

    with caller.transaction():
        assert mint.next_driver_id("ABC", conn=caller) == "DRV-002ABC"
    assert mint.next_driver_id("ABC") == "DRV-003ABC"  # committed by the caller


def test_conn_entity_numbers_roll_back(mint: idmint.IdMint, connect: Connect) -> None:
    before = {c.prefix: c.issued for c in mint.entity_capacity()}
    caller = connect(autocommit=False)
    numbers = mint.gen_entity_numbers("part", 5, conn=caller)
    assert len(numbers) == 5
    caller.rollback()
    assert {c.prefix: c.issued for c in mint.entity_capacity()} == before
    # The rolled-back numbers were never issued: each can be claimed now.
    assert [mint.claim_entity_number(n) for n in numbers] == numbers


def test_conn_errors_leave_the_transaction_to_the_caller(
    mint: idmint.IdMint, connect: Connect
) -> None:
    caller = connect(autocommit=False)
    with pytest.raises(idmint.UnknownFleetError):
        mint.next_driver_id("ZZZ", conn=caller)
    assert caller.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    assert not caller.closed
    # A SQLSTATE outside idmint's table propagates as the psycopg error.
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        mint.gen_fleet_code(conn=caller)
    caller.rollback()


def test_connection_source_joins_an_open_transaction(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        mint = idmint.IdMint(conn)
        mint.add_fleet("North", code="ABC")  # idle connection: own transaction, committed
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.execute("SELECT 1")  # the caller opens a transaction
        assert mint.next_driver_id("ABC") == "DRV-001ABC"
        conn.rollback()
        assert mint.next_driver_id("ABC") == "DRV-001ABC"


def test_callers_row_factory_is_ignored(dsn: str) -> None:
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        mint = idmint.IdMint(conn)
        assert mint.add_fleet("North", code="ABC").code == "ABC"
        assert mint.next_driver_id("ABC", conn=conn) == "DRV-001ABC"


# --- retries ----------------------------------------------------------------------------


def test_serialization_failure_is_retried(dsn: str, connect: Connect) -> None:
    """Under REPEATABLE READ the facade's snapshot predates a concurrent update of the
    fleet row: its UPDATE fails with 40001, and the retry in a new transaction succeeds."""
    registry = CollectorRegistry()
    mint = idmint.IdMint(
        dsn,
        isolation_level=IsolationLevel.REPEATABLE_READ,
        backoff_base=0.001,
        metrics=registry,
    )
    mint.add_fleet("North", code="ABC")
    observer = connect()
    blocker = connect(autocommit=False)
    blocker.execute("UPDATE idmint.fleets SET name = 'North (renamed)' WHERE code = 'ABC'")
    blocker_pid = blocker.info.backend_pid

    result: list[str] = []
    errors: list[BaseException] = []

    def allocate() -> None:
        try:
            result.append(mint.next_driver_id("ABC"))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=allocate)
    worker.start()
    lock_waits(observer, blocker=blocker_pid)  # took its snapshot, now waits for the fleet row
    blocker.commit()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert errors == []
    assert result == ["DRV-001ABC"]
    assert sample(registry, "idmint_retries_total", operation="next_driver_id") == 1
    assert sample(registry, "idmint_calls_total", operation="next_driver_id") == 1
    assert scalar(observer, "SELECT name FROM idmint.fleets WHERE code = 'ABC'") == (
        "North (renamed)"
    )


@pytest.mark.parametrize("attempts", [1, 3])
def test_exhausted_retries_raise_concurrency_error(
    dsn: str, connect: Connect, attempts: int
) -> None:
    registry = CollectorRegistry()
    impatient = psycopg.conninfo.make_conninfo(dsn, options="-c lock_timeout=50")
    mint = idmint.IdMint(impatient, attempts=attempts, backoff_base=0.001, metrics=registry)
    mint.add_fleet("North", code="ABC")
    blocker = connect(autocommit=False)
    blocker.execute("SELECT 1 FROM idmint.fleets WHERE code = 'ABC' FOR UPDATE")

    with pytest.raises(idmint.ConcurrencyError) as info:
        mint.next_driver_id("ABC")
    err = info.value
    assert isinstance(err, idmint.IdmintError)
    assert err.sqlstate == "55P03"
    assert err.attempts == attempts
    assert isinstance(err.__cause__, psycopg.errors.LockNotAvailable)
    assert sample(registry, "idmint_retries_total", operation="next_driver_id") == attempts - 1
    assert (
        sample(registry, "idmint_failures_total", operation="next_driver_id", sqlstate="55P03") == 1
    )

    blocker.rollback()
    assert mint.next_driver_id("ABC") == "DRV-001ABC"  # nothing was consumed by the failures


def test_no_retry_inside_callers_transaction(dsn: str, connect: Connect) -> None:
    registry = CollectorRegistry()
    mint = idmint.IdMint(dsn, metrics=registry)
    mint.add_fleet("North", code="ABC")
    blocker = connect(autocommit=False)
    blocker.execute("SELECT 1 FROM idmint.fleets WHERE code = 'ABC' FOR UPDATE")
    caller = connect(autocommit=False)
    caller.execute("SET LOCAL lock_timeout = 50")
    with pytest.raises(idmint.ConcurrencyError) as info:
        mint.next_driver_id("ABC", conn=caller)
    assert info.value.attempts == 1
    assert isinstance(info.value.__cause__, psycopg.errors.LockNotAvailable)
    assert sample(registry, "idmint_retries_total", operation="next_driver_id") == 0
    assert caller.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    caller.rollback()
    blocker.rollback()


def test_retry_policy_validates() -> None:
    with pytest.raises(ValueError):
        idmint.IdMint("dbname=x", attempts=0)


# --- allocation and concurrency, directly and through PgBouncer ------------------------

Factory = Callable[[], idmint.IdMint]


@pytest.fixture(params=["direct", "direct-connection", "pgbouncer", "pgbouncer-pool"])
def route(request: pytest.FixtureRequest, dsn: str) -> Iterator[Factory]:
    """An IdMint reaching the test database directly (a connection per call, or one shared
    psycopg.Connection serialised by the client's lock), through PgBouncer (transaction
    pooling, default_pool_size 2) with a connection per call, or through PgBouncer from a
    psycopg_pool ConnectionPool (whose connections keep psycopg's default
    prepare_threshold: the facade's statements are never prepared)."""
    if request.param == "direct":
        yield lambda: idmint.IdMint(dsn)
        return
    if request.param == "direct-connection":
        with psycopg.connect(dsn) as conn:
            yield lambda: idmint.IdMint(conn)
        return
    bouncer_dsn: str = request.getfixturevalue("pgbouncer_dsn")
    if request.param == "pgbouncer":
        yield lambda: idmint.IdMint(bouncer_dsn)
        return
    with ConnectionPool(bouncer_dsn, min_size=2, max_size=8, open=True) as pool:
        yield lambda: idmint.IdMint(pool)


def test_allocation(route: Factory) -> None:
    mint = route()
    fleet = mint.add_fleet("North", code="ABC", max_drivers=20)
    assert [mint.next_driver_id("ABC") for _ in range(3)] == [
        "DRV-001ABC",
        "DRV-002ABC",
        "DRV-003ABC",
    ]
    assert mint.next_driver_ids(fleet.fleet_id, 2) == ["DRV-004ABC", "DRV-005ABC"]
    rid = mint.reserve_driver_id("ABC")
    assert mint.confirm_driver_id(rid) == "DRV-006ABC"
    # Same statements over and over: psycopg would prepare them after 5 runs by default.
    for _ in range(8):
        assert mint.is_valid_driver_id("DRV-001ABC")
    numbers = mint.gen_entity_numbers("part", 10)
    assert len(set(numbers)) == 10
    with pytest.raises(idmint.FleetCapacityError):
        mint.next_driver_ids("ABC", 15)
    assert mint.next_driver_id("ABC") == "DRV-007ABC"


def test_concurrent_allocation(route: Factory) -> None:
    """8 threads share one client; every id is issued once, the fleet's ids are 1..N."""
    mint = route()
    mint.add_fleet("North", code="ABC")
    threads, per_thread = 8, 25
    start = threading.Barrier(threads)

    def work(i: int) -> list[str]:
        start.wait()
        got: list[str] = []
        for k in range(per_thread):
            if k % 5 == 4:
                got += mint.next_driver_ids("ABC", 2)
            else:
                got.append(mint.next_driver_id("ABC"))
        return got

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(work, range(threads)))
    issued = [i for r in results for i in r]
    assert len(issued) == len(set(issued)) == threads * (per_thread + per_thread // 5)
    assert sorted(issued) == [f"DRV-{n:03d}ABC" for n in range(1, len(issued) + 1)]


def test_concurrent_entity_numbers(route: Factory) -> None:
    mint = route()
    threads = 8

    def work(i: int) -> list[str]:
        return [*mint.gen_entity_numbers("material", 50), mint.gen_entity_number(2)]

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(work, range(threads)))
    issued = [n for r in results for n in r]
    assert len(issued) == len(set(issued)) == threads * 51
    caps = {c.prefix: c.issued for c in mint.entity_capacity()}
    assert caps[2] == threads * 51


def test_the_sync_facade_is_generated_from_the_async_one() -> None:
    """client.py is aio.py without async/await (tools/async_to_sync.py --check)."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(root / "tools" / "async_to_sync.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    sync_methods = {m for m in dir(idmint.IdMint) if not m.startswith("__")}
    async_methods = {m for m in dir(idmint.AsyncIdMint) if not m.startswith("__")}
    assert sync_methods == async_methods


def test_version_is_the_installed_schema_version(dsn: str) -> None:
    mint = idmint.IdMint(dsn)
    assert mint.version() == "0001_idmint"
