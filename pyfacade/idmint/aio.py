"""The asyncio facade, :class:`AsyncIdMint`.

Written by hand; tools/async_to_sync.py generates the sync facade (client.py) from it, so
both share every line but async/await and psycopg's class names.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import IsolationLevel, pq
from psycopg_pool import AsyncConnectionPool

from . import queries as Q
from .errors import translate
from .metrics import recorder
from .retry import RetryPolicy, dsn_of, isolation_statement, sqlstate_of
from .types import (
    CapacityReport,
    DriverIdEvent,
    EntityCapacity,
    EntityNumberEvent,
    EntityType,
    Fleet,
    FleetCapacity,
    ParsedDriverId,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]
DEFAULT_TTL = timedelta(minutes=5)


class AsyncIdMint:
    """idmint's Python facade: one method per SQL function, results as frozen dataclasses.

    ``source`` is where connections come from; the constructor does no I/O:

    - a DSN (URL or ``key=value``): every call opens its own connection and closes it
      afterwards (safe for concurrent use, nothing to close; for throughput pass a pool);
    - a ``psycopg_pool.AsyncConnectionPool``: every call borrows a connection with
      ``pool.connection()``; the pool stays yours to open and close;
    - a ``psycopg.AsyncConnection``: calls are serialised on it by a lock and each runs in
      its own transaction, committed at once; if the connection is already inside a
      transaction when a call starts, the call joins that transaction as with ``conn=``.

    Every method takes ``conn=``: it then runs on that connection inside the caller's
    transaction and never commits, rolls back, closes or retries.

    In a transaction it owns, the facade retries 40001, 40P01 and 55P03 up to ``attempts``
    times in all, sleeping with exponential backoff and full jitter (``backoff_base`` *
    2**k, at most ``backoff_cap`` seconds), then raises :class:`idmint.ConcurrencyError`.
    ``isolation_level`` sets the level of the transactions it owns (default: the server's).

    ``prepare_threshold=None`` (the default) never prepares the facade's statements, so it
    works through PgBouncer in transaction pooling mode; an int lets psycopg prepare them
    as usual (connections the facade opens get that threshold).

    ``metrics=True`` exports Prometheus metrics to the default registry, a
    ``CollectorRegistry`` to that one (needs ``idmint[metrics]``); see ``idmint.metrics``.
    """

    def __init__(
        self,
        source: str | Conn | AsyncConnectionPool[Any],
        *,
        attempts: int = 6,
        backoff_base: float = 0.025,
        backoff_cap: float = 1.0,
        isolation_level: IsolationLevel | None = None,
        prepare_threshold: int | None = None,
        metrics: bool | CollectorRegistry | None = None,
    ) -> None:
        self._dsn: str | None = None
        self._conn: Conn | None = None
        self._pool: AsyncConnectionPool[Any] | None = None
        if isinstance(source, str):
            self._dsn = source
        elif isinstance(source, psycopg.AsyncConnection):
            self._conn = source
        elif isinstance(source, AsyncConnectionPool):
            self._pool = source
        else:
            raise TypeError(
                "AsyncIdMint needs a DSN string, a psycopg.AsyncConnection or a"
                " psycopg_pool.AsyncConnectionPool,"
                f" not {type(source).__name__}"
            )
        self._retry = RetryPolicy(attempts, backoff_base, backoff_cap)
        self._isolation = isolation_statement(isolation_level)
        self._prepare_threshold = prepare_threshold
        self._prepare: bool | None = None if prepare_threshold is not None else False
        self._metrics = recorder(metrics)
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        kind = "dsn" if self._dsn else "connection" if self._conn is not None else "pool"
        return f"<AsyncIdMint over a {kind}>"

    # -- executor --------------------------------------------------------------------

    async def _call(self, query: Q.Query[T], params: tuple[Any, ...], conn: Conn | None) -> T:
        start = time.perf_counter()
        try:
            if conn is not None:
                return await self._joined(conn, query, params)
            return await self._owned(query, params)
        except Exception as exc:  # not KeyboardInterrupt or a cancelled task
            self._metrics.failure(query.operation, sqlstate_of(exc))
            raise
        finally:
            self._metrics.call(query.operation, time.perf_counter() - start)

    async def _execute(self, conn: Conn, query: Q.Query[T], params: tuple[Any, ...]) -> T:
        async with conn.cursor(row_factory=query.rows) as cur:
            await cur.execute(query.sql, params, prepare=self._prepare)
            return query.result(await cur.fetchall())

    async def _joined(self, conn: Conn, query: Q.Query[T], params: tuple[Any, ...]) -> T:
        try:
            return await self._execute(conn, query, params)
        except psycopg.Error as exc:
            err = translate(exc)
            if err is exc:
                raise
            raise err from exc

    async def _owned(self, query: Q.Query[T], params: tuple[Any, ...]) -> T:
        attempt = 1
        while True:
            owned = False
            try:
                async with self._transaction() as (conn, owned):
                    if not owned:
                        return await self._execute(conn, query, params)
                    if self._isolation is not None:
                        await conn.execute(self._isolation, prepare=self._prepare)
                    return await self._execute(conn, query, params)
            except psycopg.Error as exc:
                if owned and self._retry.retryable(exc, attempt):
                    self._metrics.retry(query.operation)
                    await asyncio.sleep(self._retry.delay(attempt))
                    attempt += 1
                    continue
                err = translate(exc, attempts=attempt)
                if err is exc:
                    raise
                raise err from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[tuple[Conn, bool]]:
        """A connection in a transaction the facade owns (committed on a clean exit, rolled
        back on an exception), or (connection mode, caller's transaction open) not owned."""
        if self._pool is not None:
            async with self._pool.connection() as conn, conn.transaction():
                yield conn, True
        elif self._conn is not None:
            async with self._lock:
                conn = self._conn
                if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    yield conn, False
                else:
                    async with conn.transaction():
                        yield conn, True
        else:
            assert self._dsn is not None
            async with (
                await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, prepare_threshold=self._prepare_threshold
                ) as conn,
                conn.transaction(),
            ):
                yield conn, True

    # -- migrations ------------------------------------------------------------------

    async def migrate(self, *, dsn: str | None = None, conn: Conn | None = None) -> list[str]:
        """Apply pending migrations (yoyo, under its lock); idempotent.
        Returns the ids applied. The migration opens its own connection: to ``dsn`` if
        given, else the client's DSN, else one derived from ``conn.info`` (of ``conn``, the
        client's connection or a connection borrowed from its pool). Run it against
        PostgreSQL directly, not through PgBouncer.

        With nothing pending (the database's ``idmint.version()`` is the newest) it
        returns ``[]`` at once, for any role that can use idmint (an app's role). When
        something is pending and the role may not migrate, it raises
        :class:`idmint.migrate.MigrationError` (SQLSTATE 42501, an :class:`IdmintError`)
        naming the missing privileges, before taking any lock. An install made with plain
        SQL (``idmint sql``, alembic, Django) is recorded as applied, not replayed."""
        from .migrate import migrate as _migrate

        return await asyncio.to_thread(_migrate, dsn or await self._migration_dsn(conn))

    async def _migration_dsn(self, conn: Conn | None) -> str:
        if conn is not None:
            return dsn_of(conn.info)
        if self._dsn is not None:
            return self._dsn
        if self._conn is not None:
            return dsn_of(self._conn.info)
        assert self._pool is not None
        async with self._pool.connection() as borrowed:
            return dsn_of(borrowed.info)

    async def version(self, *, conn: Conn | None = None) -> str:
        """The installed idmint schema version (the newest migration applied)."""
        return await self._call(Q.VERSION, (), conn)

    # -- fleets ----------------------------------------------------------------------

    async def add_fleet(
        self,
        name: str,
        code: str | None = None,
        max_drivers: int = 999,
        fleet_id: uuid.UUID | None = None,
        *,
        conn: Conn | None = None,
    ) -> Fleet:
        """Create a fleet (``idmint.add_fleet``); ``code``/``fleet_id`` None: generated."""
        return await self._call(Q.ADD_FLEET, (name, code, max_drivers, fleet_id), conn)

    async def gen_fleet_code(self, *, conn: Conn | None = None) -> str:
        """A random fleet code not yet used (not reserved)."""
        return await self._call(Q.GEN_FLEET_CODE, (), conn)

    # -- driver ids ------------------------------------------------------------------

    async def next_driver_id(
        self, fleet: str | uuid.UUID, request_key: str | None = None, *, conn: Conn | None = None
    ) -> str:
        """Allocate and assign the fleet's next driver id; a repeated ``request_key``
        returns the first answer."""
        return await self._call(Q.NEXT_DRIVER_ID, (fleet, request_key), conn)

    async def next_driver_ids(
        self, fleet: str | uuid.UUID, n: int, *, conn: Conn | None = None
    ) -> list[str]:
        """Allocate and assign ``n`` driver ids, ascending, all or nothing."""
        return await self._call(Q.NEXT_DRIVER_IDS, (fleet, n), conn)

    async def reserve_driver_id(
        self,
        fleet: str | uuid.UUID,
        reserved_by: str | None = None,
        ttl: timedelta = DEFAULT_TTL,
        *,
        conn: Conn | None = None,
    ) -> str:
        """Hold the fleet's next driver id for ``ttl`` until confirmed or released."""
        return await self._call(Q.RESERVE_DRIVER_ID, (fleet, reserved_by, ttl), conn)

    async def confirm_driver_id(
        self, driver_id: str, reserved_by: str | None = None, *, conn: Conn | None = None
    ) -> str:
        """Turn an active reservation into an assignment; returns the normalised id.

        A reservation made with ``reserved_by`` is confirmed only by the same ``reserved_by``.
        """
        return await self._call(Q.CONFIRM_DRIVER_ID, (driver_id, reserved_by), conn)

    async def release_driver_id(
        self, driver_id: str, reserved_by: str | None = None, *, conn: Conn | None = None
    ) -> bool:
        """Give back an active reservation (True); not one, or another holder's: False."""
        return await self._call(Q.RELEASE_DRIVER_ID, (driver_id, reserved_by), conn)

    async def purge_expired_reservations(self, *, conn: Conn | None = None) -> int:
        """Delete expired reservations; returns how many."""
        return await self._call(Q.PURGE_EXPIRED_RESERVATIONS, (), conn)

    async def reset_driver_sequence(
        self, fleet: str | uuid.UUID, last_number: int | None = None, *, conn: Conn | None = None
    ) -> int:
        """Set the counter so the next new number is ``last_number + 1``; returns it."""
        return await self._call(Q.RESET_DRIVER_SEQUENCE, (fleet, last_number), conn)

    async def is_valid_driver_id(self, driver_id: str | None, *, conn: Conn | None = None) -> bool:
        """Format check of ``DRV-XXXYYY`` (case-insensitive); never raises ID00x."""
        return await self._call(Q.IS_VALID_DRIVER_ID, (driver_id,), conn)

    async def parse_driver_id(self, driver_id: str, *, conn: Conn | None = None) -> ParsedDriverId:
        """Split a driver id into number and fleet code; ID003 if malformed."""
        return await self._call(Q.PARSE_DRIVER_ID, (driver_id,), conn)

    # -- entity numbers --------------------------------------------------------------

    async def gen_entity_numbers(
        self, entity: int | str, n: int, *, conn: Conn | None = None
    ) -> list[str]:
        """``n`` fresh random numbers of an entity type (prefix int or name)."""
        return await self._call(Q.GEN_ENTITY_NUMBERS, (entity, n), conn)

    async def gen_entity_number(self, entity: int | str, *, conn: Conn | None = None) -> str:
        """One fresh random number of an entity type."""
        return await self._call(Q.GEN_ENTITY_NUMBER, (entity,), conn)

    async def claim_entity_number(
        self, number: str, entity: int | str | None = None, *, conn: Conn | None = None
    ) -> str:
        """Register a manually entered number; ID004 if already issued."""
        return await self._call(Q.CLAIM_ENTITY_NUMBER, (number, entity), conn)

    async def is_valid_entity_number(
        self, number: str | None, entity: int | str | None = None, *, conn: Conn | None = None
    ) -> bool:
        """Format check: 7 digits, registered prefix (and the given type); never raises ID00x."""
        return await self._call(Q.IS_VALID_ENTITY_NUMBER, (number, entity), conn)

    async def add_entity_type(
        self, prefix: int, name: str, *, conn: Conn | None = None
    ) -> EntityType:
        """Register an entity type (prefix 1..9); ID004 if prefix or name is taken."""
        return await self._call(Q.ADD_ENTITY_TYPE, (prefix, name), conn)

    async def entity_types(self, *, conn: Conn | None = None) -> list[EntityType]:
        """The registered entity types, by prefix (``idmint.entity_types``)."""
        return await self._call(Q.ENTITY_TYPES, (), conn)

    async def backfill_entity_numbers(
        self, tbl: str, col: str, entity: int | str, *, conn: Conn | None = None
    ) -> int:
        """Fill every NULL in ``tbl.col`` with new numbers of the type, bound to their rows;
        returns how many. ``tbl`` is a table name as SQL reads it (``'app.parts'``,
        ``'"Odd Name"'``); the UPDATE runs with the rights of the connection's role."""
        return await self._call(Q.BACKFILL_ENTITY_NUMBERS, (tbl, col, entity), conn)

    # -- capacity --------------------------------------------------------------------

    async def fleet_capacity(self, *, conn: Conn | None = None) -> list[FleetCapacity]:
        """Every fleet's assigned, reserved and free numbers (``idmint.fleet_capacity``)."""
        return await self._call(Q.FLEET_CAPACITY, (), conn)

    async def capacity_report(
        self, window: timedelta = timedelta(days=7), *, conn: Conn | None = None
    ) -> list[CapacityReport]:
        """Every fleet and entity type: capacity, use, allocations per day over ``window``
        and the projected exhaustion (``exhausted_at`` None: never)."""
        return await self._call(Q.CAPACITY_REPORT, (window,), conn)

    async def entity_capacity(self, *, conn: Conn | None = None) -> list[EntityCapacity]:
        """Every entity type's issued and free numbers (``idmint.entity_capacity``)."""
        return await self._call(Q.ENTITY_CAPACITY, (), conn)

    # -- audit -----------------------------------------------------------------------

    async def driver_id_history(
        self, driver_id: str, *, conn: Conn | None = None
    ) -> list[DriverIdEvent]:
        """The audit trail of one driver id (any case), oldest first; ID003 if malformed."""
        return await self._call(Q.DRIVER_ID_HISTORY, (driver_id,), conn)

    async def entity_number_history(
        self, number: str, *, conn: Conn | None = None
    ) -> list[EntityNumberEvent]:
        """The audit trail of one entity number, oldest first (empty: never issued);
        ID003 if not 7 digits."""
        return await self._call(Q.ENTITY_NUMBER_HISTORY, (number,), conn)

    # -- scheduled clean-up (pg_cron) ------------------------------------------------

    async def schedule_cleanup(
        self, schedule: str = "* * * * *", *, conn: Conn | None = None
    ) -> int:
        """(Re)schedule the pg_cron job that purges expired reservations; returns its jobid.
        ID003 without pg_cron in this database or for a bad schedule. Needs idmint_admin."""
        return await self._call(Q.SCHEDULE_CLEANUP, (schedule,), conn)

    async def unschedule_cleanup(self, *, conn: Conn | None = None) -> bool:
        """Remove the pg_cron job; False if there was none (or no pg_cron). Needs idmint_admin."""
        return await self._call(Q.UNSCHEDULE_CLEANUP, (), conn)
