"""The one place the facade's SQL lives: each operation is one call of one SQL function (or
one read of a view), with the mapping of its rows to the Python result. The sync and async
clients share these and differ only in how they execute them.

Arguments are passed positionally (so the Python keyword names, which mirror the SQL
parameter names, are checked once, here). A fleet given as ``uuid.UUID`` is sent as
``uuid`` and picks the uuid overload; a ``str`` is sent untyped and resolves to the text
overload (code or uuid text). An entity given as ``int`` is sent as an integer, a ``str``
as text; ``None`` resolves to the text overload, which treats it as the SQL NULL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from psycopg import sql

T = TypeVar("T")
Row = tuple[Any, ...]

# ---------------------------------------------------------------------------------------
# Results (frozen dataclasses)


@dataclass(frozen=True)
class Fleet:
    """A fleet as returned by ``idmint.add_fleet``."""

    fleet_id: uuid.UUID
    code: str
    name: str
    max_drivers: int
    created_at: datetime


@dataclass(frozen=True)
class ParsedDriverId:
    """``idmint.parse_driver_id``: the number within the fleet and the upper-case fleet code."""

    number: int
    fleet_code: str


@dataclass(frozen=True)
class EntityType:
    """A registered entity type: ``prefix`` 1..9 (first digit of its numbers) and ``name``."""

    prefix: int
    name: str


@dataclass(frozen=True)
class FleetCapacity:
    """A row of ``idmint.fleet_capacity``; ``utilization`` is a fraction 0..1."""

    fleet_id: uuid.UUID
    code: str
    name: str
    max_drivers: int
    assigned: int
    reserved: int
    free: int
    utilization: float


@dataclass(frozen=True)
class EntityCapacity:
    """A row of ``idmint.entity_capacity``; ``utilization`` is a fraction 0..1."""

    prefix: int
    name: str
    issued: int
    capacity: int
    free: int
    utilization: float


# ---------------------------------------------------------------------------------------
# Row mappings


def _scalar(rows: list[Row]) -> Any:
    return rows[0][0]


def _text(rows: list[Row]) -> str:
    return str(_scalar(rows))


def _int(rows: list[Row]) -> int:
    return int(_scalar(rows))


def _bool(rows: list[Row]) -> bool:
    return bool(_scalar(rows))


def _texts(rows: list[Row]) -> list[str]:
    return [str(r[0]) for r in rows]


def _entity_type(rows: list[Row]) -> EntityType:
    prefix, name = rows[0]
    return EntityType(prefix, name)


def _fleet(rows: list[Row]) -> Fleet:
    fleet_id, code, name, max_drivers, created_at = rows[0]
    return Fleet(fleet_id, code, name, max_drivers, created_at)


def _parsed(rows: list[Row]) -> ParsedDriverId:
    number, fleet_code = rows[0]
    return ParsedDriverId(number, fleet_code)


def _fleet_capacity(rows: list[Row]) -> list[FleetCapacity]:
    return [
        FleetCapacity(
            r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), float(r[7] or 0)
        )
        for r in rows
    ]


def _entity_capacity(rows: list[Row]) -> list[EntityCapacity]:
    return [
        EntityCapacity(int(r[0]), r[1], int(r[2]), int(r[3]), int(r[4]), float(r[5] or 0))
        for r in rows
    ]


# ---------------------------------------------------------------------------------------
# The table of queries


@dataclass(frozen=True)
class Query(Generic[T]):
    """One statement the facade sends: ``operation`` names it (method name, metrics label),
    ``sql`` has positional ``%s`` placeholders, ``result`` maps all fetched rows."""

    operation: str
    sql: sql.SQL
    result: Callable[[list[Row]], T]


ADD_FLEET = Query(
    "add_fleet",
    sql.SQL(
        "SELECT f.fleet_id, f.code, f.name, f.max_drivers, f.created_at"
        " FROM idmint.add_fleet(%s, %s, %s, %s) AS f"
    ),
    _fleet,
)
GEN_FLEET_CODE = Query("gen_fleet_code", sql.SQL("SELECT idmint.gen_fleet_code()"), _text)
NEXT_DRIVER_ID = Query(
    "next_driver_id", sql.SQL("SELECT idmint.next_driver_id(%s, %s::text)"), _text
)
NEXT_DRIVER_IDS = Query(
    "next_driver_ids",
    sql.SQL(
        "SELECT t.id FROM idmint.next_driver_ids(%s, %s) WITH ORDINALITY AS t(id, i) ORDER BY t.i"
    ),
    _texts,
)
RESERVE_DRIVER_ID = Query(
    "reserve_driver_id",
    sql.SQL("SELECT idmint.reserve_driver_id(%s, %s::text, %s::interval)"),
    _text,
)
CONFIRM_DRIVER_ID = Query(
    "confirm_driver_id", sql.SQL("SELECT idmint.confirm_driver_id(%s, %s::text)"), _text
)
RELEASE_DRIVER_ID = Query(
    "release_driver_id", sql.SQL("SELECT idmint.release_driver_id(%s, %s::text)"), _bool
)
PURGE_EXPIRED_RESERVATIONS = Query(
    "purge_expired_reservations", sql.SQL("SELECT idmint.purge_expired_reservations()"), _int
)
RESET_DRIVER_SEQUENCE = Query(
    "reset_driver_sequence",
    sql.SQL("SELECT idmint.reset_driver_sequence(%s, %s::integer)"),
    _int,
)
IS_VALID_DRIVER_ID = Query(
    "is_valid_driver_id", sql.SQL("SELECT idmint.is_valid_driver_id(%s)"), _bool
)
PARSE_DRIVER_ID = Query(
    "parse_driver_id",
    sql.SQL("SELECT p.number, p.fleet_code FROM idmint.parse_driver_id(%s) AS p"),
    _parsed,
)
GEN_ENTITY_NUMBERS = Query(
    "gen_entity_numbers",
    sql.SQL(
        "SELECT t.num FROM idmint.gen_entity_numbers(%s, %s) WITH ORDINALITY AS t(num, i)"
        " ORDER BY t.i"
    ),
    _texts,
)
GEN_ENTITY_NUMBER = Query(
    "gen_entity_number", sql.SQL("SELECT idmint.gen_entity_number(%s)"), _text
)
CLAIM_ENTITY_NUMBER = Query(
    "claim_entity_number", sql.SQL("SELECT idmint.claim_entity_number(%s, %s)"), _text
)
IS_VALID_ENTITY_NUMBER = Query(
    "is_valid_entity_number", sql.SQL("SELECT idmint.is_valid_entity_number(%s, %s)"), _bool
)
ADD_ENTITY_TYPE = Query(
    "add_entity_type",
    sql.SQL("SELECT t.prefix, t.name FROM idmint.add_entity_type(%s::integer, %s) AS t"),
    _entity_type,
)
FLEET_CAPACITY = Query(
    "fleet_capacity",
    sql.SQL(
        "SELECT c.fleet_id, c.code, c.name, c.max_drivers, c.assigned, c.reserved, c.free,"
        " c.utilization FROM idmint.fleet_capacity AS c ORDER BY c.code"
    ),
    _fleet_capacity,
)
ENTITY_CAPACITY = Query(
    "entity_capacity",
    sql.SQL(
        "SELECT c.prefix, c.name, c.issued, c.capacity, c.free, c.utilization"
        " FROM idmint.entity_capacity AS c ORDER BY c.prefix"
    ),
    _entity_capacity,
)
