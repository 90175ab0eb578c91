"""idmint's exceptions and the one table that maps a SQLSTATE to its class.

Every error idmint's SQL raises on purpose has a SQLSTATE of class ``ID`` (see
``idmint.error_codes``); the facade turns it into the matching subclass of
:class:`IdmintError` and keeps the original ``psycopg.Error`` as ``__cause__``.
Serialization failures, deadlocks and lock timeouts become :class:`ConcurrencyError`.
Any other SQLSTATE (a connection failure, a permission error, ...) propagates unchanged as
the psycopg exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NoReturn

import psycopg


class IdmintError(Exception):
    """Base class of every error the facade raises on purpose.

    ``sqlstate`` is the SQLSTATE of the server error behind it (``None`` only for an error
    built by hand); ``hint`` and ``detail`` are the server's HINT and DETAIL, if any.
    """

    #: SQLSTATE this class stands for (``None`` on the base class and ConcurrencyError).
    code: str | None = None
    #: The name of that SQLSTATE in ``idmint.error_codes``.
    name: str | None = None

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        hint: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate if sqlstate is not None else self.code
        self.hint = hint
        self.detail = detail


class FleetCapacityError(IdmintError):
    """ID001: the fleet has no free number left, or fewer than asked for."""

    code = "ID001"
    name = "fleet_capacity_exhausted"


class UnknownFleetError(IdmintError):
    """ID002: no fleet with that code or id."""

    code = "ID002"
    name = "unknown_fleet"


class InvalidArgumentError(IdmintError):
    """ID003: malformed id, number or code; n out of bounds; bad ttl; NULL where needed."""

    code = "ID003"
    name = "invalid_argument"


class AlreadyTakenError(IdmintError):
    """ID004: fleet code, entity number, entity type or driver id already exists."""

    code = "ID004"
    name = "already_taken"


class EntityRangeExhaustedError(IdmintError):
    """ID005: fewer free numbers left in an entity range than requested; no fleet code left."""

    code = "ID005"
    name = "entity_range_exhausted"


class ReservationNotActiveError(IdmintError):
    """ID006: confirming a reservation that expired, was released or never existed."""

    code = "ID006"
    name = "reservation_not_active"


class ImmutableIdError(IdmintError):
    """ID007: changing or releasing an assigned driver id."""

    code = "ID007"
    name = "immutable_id"


class UnknownEntityTypeError(IdmintError):
    """ID008: entity prefix or name not registered."""

    code = "ID008"
    name = "unknown_entity_type"


class ConcurrencyError(IdmintError):
    """A serialization failure (40001), deadlock (40P01) or lock timeout (55P03).

    Raised when the facade's retries ran out, or at once inside a caller's transaction
    (``conn=``), which the facade never retries: the caller's transaction is aborted and
    must be retried as a whole. ``sqlstate`` is that of the last error; ``attempts`` says
    how many times the facade tried.
    """

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        hint: str | None = None,
        detail: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate, hint=hint, detail=detail)
        self.attempts = attempts


#: SQLSTATEs that mean "try the whole transaction again".
RETRYABLE_SQLSTATES: frozenset[str] = frozenset({"40001", "40P01", "55P03"})

#: The one table: SQLSTATE -> exception class.
ERRORS: Mapping[str, type[IdmintError]] = MappingProxyType(
    {
        cls.code: cls
        for cls in (
            FleetCapacityError,
            UnknownFleetError,
            InvalidArgumentError,
            AlreadyTakenError,
            EntityRangeExhaustedError,
            ReservationNotActiveError,
            ImmutableIdError,
            UnknownEntityTypeError,
        )
        if cls.code is not None
    }
    | {state: ConcurrencyError for state in RETRYABLE_SQLSTATES}
)


def translate(exc: psycopg.Error, *, attempts: int = 1) -> BaseException:
    """The exception to raise for a psycopg error: an IdmintError subclass for a SQLSTATE in
    :data:`ERRORS` (raise it ``from exc``), else ``exc`` itself."""
    state = exc.sqlstate
    cls = ERRORS.get(state) if state is not None else None
    if cls is None:
        return exc
    diag = exc.diag
    message = diag.message_primary or str(exc)
    if cls is ConcurrencyError:
        tried = f" (after {attempts} attempt{'s' if attempts != 1 else ''})"
        return ConcurrencyError(
            message + tried,
            sqlstate=state,
            hint=diag.message_hint,
            detail=diag.message_detail,
            attempts=attempts,
        )
    return cls(message, sqlstate=state, hint=diag.message_hint, detail=diag.message_detail)


def raise_translated(exc: psycopg.Error, *, attempts: int = 1) -> NoReturn:
    """Raise what the facade raises for ``exc``: the IdmintError :func:`translate` makes of it
    (``from exc``), or ``exc`` itself when its SQLSTATE is not in :data:`ERRORS`."""
    err = translate(exc, attempts=attempts)
    if err is exc:
        raise exc
    raise err from exc


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE behind an exception the facade let through, if any."""
    if isinstance(exc, (IdmintError, psycopg.Error)):
        return exc.sqlstate
    return None
