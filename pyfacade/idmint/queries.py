"""The one place the facade's SQL lives: each operation is one call of one SQL function (or
one read of a view), with the psycopg row factory that maps its rows to the Python result
(idmint.types). The sync and async clients share these and differ only in how they
execute them.

Arguments are passed positionally (so the Python keyword names, which mirror the SQL
parameter names, are checked once, here). A fleet given as ``uuid.UUID`` is sent as
``uuid`` and picks the uuid overload; a ``str`` is sent untyped and resolves to the text
overload (code or uuid text). An entity given as ``int`` is sent as an integer, a ``str``
as text; ``None`` resolves to the text overload, which treats it as the SQL NULL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from psycopg import sql
from psycopg.rows import RowFactory, class_row, scalar_row

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

T = TypeVar("T")

# ---------------------------------------------------------------------------------------
# The table of queries


@dataclass(frozen=True)
class Query(Generic[T]):
    """One statement the facade sends: ``operation`` names it (method name, metrics label),
    ``sql`` has positional ``%s`` placeholders, ``rows`` makes each row a Python value and
    ``result`` turns the list of them into what the method returns."""

    operation: str
    sql: sql.SQL
    rows: RowFactory[Any]
    result: Callable[[list[Any]], T]


def _one(rows: list[Any]) -> Any:
    return rows[0]


def _all(rows: list[Any]) -> list[Any]:
    return rows


def one(operation: str, query: str, rows: RowFactory[T] = scalar_row) -> Query[T]:
    """A statement whose one row is the result (a scalar unless ``rows`` says otherwise)."""
    return Query(operation, sql.SQL(query), rows, _one)


def every(operation: str, query: str, rows: RowFactory[T] = scalar_row) -> Query[list[T]]:
    """A statement whose rows, in order, are the result."""
    return Query(operation, sql.SQL(query), rows, _all)


ADD_FLEET = one(
    "add_fleet",
    "SELECT f.fleet_id, f.code, f.name, f.max_drivers, f.created_at"
    " FROM idmint.add_fleet(%s, %s, %s, %s) AS f",
    class_row(Fleet),
)
VERSION: Query[str] = one("version", "SELECT idmint.version()")
GEN_FLEET_CODE: Query[str] = one("gen_fleet_code", "SELECT idmint.gen_fleet_code()")
NEXT_DRIVER_ID: Query[str] = one("next_driver_id", "SELECT idmint.next_driver_id(%s, %s::text)")
NEXT_DRIVER_IDS: Query[list[str]] = every(
    "next_driver_ids",
    "SELECT t.id FROM idmint.next_driver_ids(%s, %s) WITH ORDINALITY AS t(id, i) ORDER BY t.i",
)
RESERVE_DRIVER_ID: Query[str] = one(
    "reserve_driver_id", "SELECT idmint.reserve_driver_id(%s, %s::text, %s::interval)"
)
CONFIRM_DRIVER_ID: Query[str] = one(
    "confirm_driver_id", "SELECT idmint.confirm_driver_id(%s, %s::text)"
)
RELEASE_DRIVER_ID: Query[bool] = one(
    "release_driver_id", "SELECT idmint.release_driver_id(%s, %s::text)"
)
PURGE_EXPIRED_RESERVATIONS: Query[int] = one(
    "purge_expired_reservations", "SELECT idmint.purge_expired_reservations()"
)
RESET_DRIVER_SEQUENCE: Query[int] = one(
    "reset_driver_sequence", "SELECT idmint.reset_driver_sequence(%s, %s::integer)"
)
IS_VALID_DRIVER_ID: Query[bool] = one("is_valid_driver_id", "SELECT idmint.is_valid_driver_id(%s)")
PARSE_DRIVER_ID = one(
    "parse_driver_id",
    "SELECT p.number, p.fleet_code FROM idmint.parse_driver_id(%s) AS p",
    class_row(ParsedDriverId),
)
GEN_ENTITY_NUMBERS: Query[list[str]] = every(
    "gen_entity_numbers",
    "SELECT t.num FROM idmint.gen_entity_numbers(%s, %s) WITH ORDINALITY AS t(num, i) ORDER BY t.i",
)
GEN_ENTITY_NUMBER: Query[str] = one("gen_entity_number", "SELECT idmint.gen_entity_number(%s)")
CLAIM_ENTITY_NUMBER: Query[str] = one(
    "claim_entity_number", "SELECT idmint.claim_entity_number(%s, %s)"
)
IS_VALID_ENTITY_NUMBER: Query[bool] = one(
    "is_valid_entity_number", "SELECT idmint.is_valid_entity_number(%s, %s)"
)
ADD_ENTITY_TYPE = one(
    "add_entity_type",
    "SELECT t.prefix, t.name FROM idmint.add_entity_type(%s::integer, %s) AS t",
    class_row(EntityType),
)
FLEET_CAPACITY = every(
    "fleet_capacity",
    "SELECT c.fleet_id, c.code, c.name, c.max_drivers, c.assigned, c.reserved, c.free,"
    " c.utilization FROM idmint.fleet_capacity AS c ORDER BY c.code",
    class_row(FleetCapacity),
)
ENTITY_CAPACITY = every(
    "entity_capacity",
    "SELECT c.prefix, c.name, c.issued, c.capacity, c.free, c.utilization::float8"
    " FROM idmint.entity_capacity AS c ORDER BY c.prefix",
    class_row(EntityCapacity),
)
CAPACITY_REPORT = every(
    "capacity_report",
    "SELECT r.scope, r.key, r.name, r.capacity, r.used, r.reserved, r.free, r.utilization,"
    " r.per_day, r.exhausted_at FROM idmint.capacity_report(%s::interval) AS r",
    class_row(CapacityReport),
)
ENTITY_TYPES = every(
    "entity_types",
    "SELECT t.prefix, t.name FROM idmint.entity_types AS t ORDER BY t.prefix",
    class_row(EntityType),
)
DRIVER_ID_HISTORY = every(
    "driver_id_history",
    "SELECT h.at, h.fleet_id, h.fleet_code, h.driver_id, h.number, h.event, h.how, h.actor,"
    " h.application_name, h.reserved_by, h.detail"
    " FROM idmint.driver_id_history(%s) WITH ORDINALITY AS h ORDER BY h.ordinality",
    class_row(DriverIdEvent),
)
ENTITY_NUMBER_HISTORY = every(
    "entity_number_history",
    "SELECT h.at, h.entity_number, h.prefix, h.entity, h.event, h.how, h.actor, h.issued_xid"
    " FROM idmint.entity_number_history(%s) WITH ORDINALITY AS h ORDER BY h.ordinality",
    class_row(EntityNumberEvent),
)
# The table as regclass text (e.g. 'app.parts', quoted as in SQL); the column by its name.
BACKFILL_ENTITY_NUMBERS: Query[int] = one(
    "backfill_entity_numbers", "SELECT idmint.backfill_entity_numbers(%s::regclass, %s::text, %s)"
)
SCHEDULE_CLEANUP: Query[int] = one("schedule_cleanup", "SELECT idmint.schedule_cleanup(%s::text)")
UNSCHEDULE_CLEANUP: Query[bool] = one("unschedule_cleanup", "SELECT idmint.unschedule_cleanup()")
