"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest


@contextmanager
def raises_sqlstate(sqlstate: str) -> Iterator[pytest.ExceptionInfo[psycopg.Error]]:
    """Expect a psycopg error with exactly this SQLSTATE."""
    with pytest.raises(psycopg.Error) as info:
        yield info
    assert info.value.sqlstate == sqlstate, f"{info.value.sqlstate}: {info.value}"


def wait_until_blocked(observer: psycopg.Connection, pid: int, timeout: float = 30.0) -> list[int]:
    """Poll the server until backend `pid` waits on a lock; returns the blockers' pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = observer.execute("SELECT pg_blocking_pids(%s)", [pid]).fetchone()
        assert row is not None
        if row[0]:
            return list(row[0])
        time.sleep(0.005)
    raise AssertionError(f"backend {pid} never blocked")


def wait_expired(db: psycopg.Connection, *driver_ids: str, timeout: float = 30.0) -> None:
    """Poll until the server itself reports these (tiny-ttl) reservations as expired."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT count(*) FILTER (WHERE status = 'expired') FROM idmint.driver_id_ledger"
            " WHERE driver_id = ANY(%s)",
            [list(driver_ids)],
        ).fetchone()
        if row == (len(driver_ids),):
            return
        time.sleep(0.002)
    raise AssertionError(f"reservations {driver_ids} never expired")


def table_snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every idmint table, to prove that a failed call wrote nothing."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c"
            " WHERE c.relnamespace = 'idmint'::regnamespace AND c.relkind = 'r' ORDER BY 1"
        )
    ]
    return {t: conn.execute(f"SELECT * FROM {t} x ORDER BY x::text").fetchall() for t in tables}


def scalar(conn: psycopg.Connection, query: str, params: object = None) -> object:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


Connect = Callable[..., psycopg.Connection]
