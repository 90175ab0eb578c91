"""The retry policy of transactions the facade owns: which errors, how often, how long to
wait (exponential backoff with full jitter)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import psycopg

from .errors import RETRYABLE_SQLSTATES


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
