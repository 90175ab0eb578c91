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
