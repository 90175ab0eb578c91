"""What the sync and async clients share besides the queries: the retry policy (exponential
backoff with full jitter), the isolation statement, and small helpers."""

from __future__ import annotations

import random
from dataclasses import dataclass

import psycopg
from psycopg import IsolationLevel, sql

from .errors import RETRYABLE_SQLSTATES, IdmintError


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a transaction the facade owns after 40001, 40P01 or 55P03.

    ``attempts`` counts the first try (1 = never retry). Before attempt k+1 the facade
    sleeps a uniformly random time in ``[0, min(cap, base * 2**(k-1))]`` ("full jitter").
    """

    attempts: int = 6
    base: float = 0.025
    cap: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must not be negative")

    def retryable(self, exc: psycopg.Error, attempt: int) -> bool:
        """Whether to try again after ``exc`` ended attempt number ``attempt``."""
        return exc.sqlstate in RETRYABLE_SQLSTATES and attempt < self.attempts

    def delay(self, attempt: int) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based)."""
        return random.uniform(0.0, min(self.cap, self.base * 2 ** (attempt - 1)))


_ISOLATION = {
    IsolationLevel.READ_UNCOMMITTED: sql.SQL("SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED"),
    IsolationLevel.READ_COMMITTED: sql.SQL("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"),
    IsolationLevel.REPEATABLE_READ: sql.SQL("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
    IsolationLevel.SERIALIZABLE: sql.SQL("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
}


def isolation_statement(level: IsolationLevel | None) -> sql.SQL | None:
    """The statement that sets ``level`` for the current transaction (transaction-scoped,
    so it is safe behind PgBouncer), or None to keep the server's default."""
    return None if level is None else _ISOLATION[IsolationLevel(level)]


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE behind an exception the facade let through, if any."""
    if isinstance(exc, IdmintError):
        return exc.sqlstate
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate
    return None


def dsn_of(info: psycopg.ConnectionInfo) -> str:
    """A conninfo string that reconnects to the server and database of ``info`` (with its
    password, which ``info.dsn`` leaves out)."""
    password = info.password
    if password:
        return psycopg.conninfo.make_conninfo(info.dsn, password=password)
    return info.dsn
