"""idmint: identifiers minted inside PostgreSQL.

``idmint.IdMint`` (sync) and ``idmint.AsyncIdMint`` (asyncio) call idmint's SQL functions;
errors are :class:`IdmintError` subclasses, results frozen dataclasses.
"""

from ._resources import migrations_dir
from .aio import AsyncIdMint
from .client import IdMint
from .errors import (
    ERRORS,
    AlreadyTakenError,
    ConcurrencyError,
    EntityRangeExhaustedError,
    FleetCapacityError,
    IdmintError,
    ImmutableIdError,
    InvalidArgumentError,
    ReservationNotActiveError,
    UnknownEntityTypeError,
    UnknownFleetError,
    error_from,
)
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

__version__ = "0.1.0"

__all__ = [
    "ERRORS",
    "AlreadyTakenError",
    "AsyncIdMint",
    "CapacityReport",
    "ConcurrencyError",
    "DriverIdEvent",
    "EntityCapacity",
    "EntityNumberEvent",
    "EntityRangeExhaustedError",
    "EntityType",
    "Fleet",
    "FleetCapacity",
    "FleetCapacityError",
    "IdMint",
    "IdmintError",
    "ImmutableIdError",
    "InvalidArgumentError",
    "ParsedDriverId",
    "ReservationNotActiveError",
    "UnknownEntityTypeError",
    "UnknownFleetError",
    "__version__",
    "error_from",
    "migrations_dir",
]
