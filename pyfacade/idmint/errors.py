"""idmint's exceptions and the one table that maps a SQLSTATE to its class.

Every error idmint's SQL raises on purpose has a SQLSTATE of class ``ID`` (see
``idmint.error_codes``); the facade turns it into the matching subclass of
:class:`IdmintError` and keeps the original ``psycopg.Error`` as ``__cause__``.
Serialization failures, deadlocks and lock timeouts become :class:`ConcurrencyError`.
Any other SQLSTATE (a connection failure, a permission error, ...) propagates unchanged as
the psycopg exception.

:func:`error_from` finds the same classes behind errors that reach an application through
another driver (psycopg2, asyncpg) or an ORM (SQLAlchemy, Django), by duck typing: none of
those packages is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

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


# A server error as error_from reads it: (sqlstate, message, hint, detail). The message is
# None when the exception carries no structured one (SQLAlchemy's asyncpg adapter).
_ServerError = tuple[str, str | None, str | None, str | None]

#: How many exceptions error_from looks at along a chain of wrappers.
_MAX_CHAIN = 32


def _text(obj: object, name: str) -> str | None:
    value = getattr(obj, name, None)
    return value if isinstance(value, str) else None


def _is_idmint_state(state: str | None) -> bool:
    """One of idmint's own SQLSTATEs (class ID), not a retryable one the facade also maps."""
    return state is not None and state.startswith("ID") and state in ERRORS


def _server_error(exc: BaseException) -> _ServerError | None:
    """The SQLSTATE and fields of one exception, by duck typing: psycopg 3 (``sqlstate`` +
    ``diag``), psycopg2 (``pgcode`` + ``diag``), asyncpg (``sqlstate`` + ``message``,
    ``hint``, ``detail``), SQLAlchemy's asyncpg adapter (``sqlstate`` only)."""
    state = _text(exc, "sqlstate") or _text(exc, "pgcode")
    if state is None:
        return None
    diag = getattr(exc, "diag", None)
    if diag is not None:  # psycopg 3 and psycopg2 name these alike
        return (
            state,
            _text(diag, "message_primary"),
            _text(diag, "message_hint"),
            _text(diag, "message_detail"),
        )
    return (state, _text(exc, "message"), _text(exc, "hint"), _text(exc, "detail"))


def error_from(exc: BaseException) -> IdmintError | None:
    """The idmint exception behind an error raised through any PostgreSQL driver or ORM.

    ``exc`` may come from psycopg 3, psycopg2 or asyncpg, or from SQLAlchemy or Django
    wrapping one of them: the driver's error is found by following ``.orig`` (SQLAlchemy)
    and ``__cause__`` (Django, SQLAlchemy's asyncpg adapter); a cycle ends the search. For
    a SQLSTATE of class ``ID`` it returns the matching :class:`IdmintError` subclass (from
    :data:`ERRORS`) with the server's message, HINT and DETAIL, and ``exc`` as its
    ``__cause__``; for any other error (another SQLSTATE, or none) ``None``. An
    :class:`IdmintError` of class ``ID`` is returned as it is. Typical use::

        except sqlalchemy.exc.DBAPIError as exc:
            if (err := idmint.error_from(exc)) is not None:
                raise err from exc
            raise
    """
    if isinstance(exc, IdmintError):
        return exc if _is_idmint_state(exc.sqlstate) else None
    found: _ServerError | None = None
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < _MAX_CHAIN:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        record = _server_error(current)
        if record is not None and _is_idmint_state(record[0]):
            if record[1] is not None:
                found = record
                break
            found = found or record  # a wrapper that knows only the SQLSTATE: look deeper
        for link in (getattr(current, "orig", None), current.__cause__):
            if isinstance(link, BaseException):
                todo.append(link)
    if found is None:
        return None
    state, message, hint, detail = found
    err = ERRORS[state](message or str(exc), sqlstate=state, hint=hint, detail=detail)
    err.__cause__ = exc
    err.__suppress_context__ = True
    return err


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
