"""Public result types of the facade: frozen dataclasses, filled by psycopg's ``class_row``
from the columns of idmint's functions and views (names and order as in SQL)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime


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


@dataclass(frozen=True)
class CapacityReport:
    """A row of ``idmint.capacity_report``: a fleet (``key`` = code) or an entity type
    (``key`` = prefix), its allocations per day over the window and the projected date it
    runs out (None: never)."""

    scope: str
    key: str
    name: str
    capacity: int
    used: int
    reserved: int
    free: int
    utilization: float
    per_day: float
    exhausted_at: datetime | None


@dataclass(frozen=True)
class DriverIdEvent:
    """A row of ``idmint.driver_id_history`` (the view ``idmint.driver_id_audit``): one event
    of a driver number - ``assigned`` (``how``: next, bulk), ``reserved``, ``confirmed``,
    ``released``, ``expired`` or ``reset`` - with who (``actor`` = session user,
    ``application_name``, ``reserved_by``) and when."""

    at: datetime
    fleet_id: uuid.UUID
    fleet_code: str
    driver_id: str | None
    number: int | None
    event: str
    how: str | None
    actor: str | None
    application_name: str | None
    reserved_by: str | None
    detail: str | None


@dataclass(frozen=True)
class EntityNumberEvent:
    """A row of ``idmint.entity_number_history``: ``issued`` (``how``: gen, claim, bind,
    backfill; ``actor`` = session user; ``issued_xid`` = the issuing transaction) or
    ``bound`` (when an application row took the number)."""

    at: datetime
    entity_number: str
    prefix: int
    entity: str | None
    event: str
    how: str | None
    actor: str | None
    issued_xid: int | None
