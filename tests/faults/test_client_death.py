"""Client death and timeouts: a dead or stalled lock holder frees its fleet, and nothing
it had allocated is consumed. "Blocked" is always decided by asking the server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

import idmint
from tests.util import Connect, lock_waits, raises_sqlstate, scalar, wait_until_blocked


def in_thread(fn: Callable[[], Any]) -> Future[Any]:
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(fn)
    pool.shutdown(wait=False)
    return fut


def holder(connect: Connect, fleet: str) -> tuple[psycopg.Connection, int]:
    """A session that allocated from `fleet` in an open transaction (it holds the fleet)."""
    conn = connect()
    conn.execute("BEGIN")
    assert scalar(conn, "SELECT idmint.next_driver_id(%s)", [fleet]) == f"DRV-001{fleet}"
    return conn, conn.info.backend_pid


def waiting_allocation(
    db: psycopg.Connection, connect: Connect, fleet: str, holder_pid: int
) -> Future[Any]:
    """A next_driver_id on a new session, in a thread; returns once it waits for `holder_pid`."""
    waiter = connect()
    result = in_thread(lambda: scalar(waiter, "SELECT idmint.next_driver_id(%s)", [fleet]))
    assert wait_until_blocked(db, waiter.info.backend_pid) == [holder_pid]
    return result


def assigned(db: psycopg.Connection, fleet: str) -> list[str]:
    rows = db.execute(
        "SELECT driver_id FROM idmint.driver_id_ledger WHERE fleet_code = %s ORDER BY 1", [fleet]
    )
    return [r[0] for r in rows]


@pytest.fixture
def fleet(db: psycopg.Connection) -> str:
    db.execute("SELECT idmint.add_fleet('Client death', 'CDX')")
    return "CDX"


def test_terminated_holder_releases_the_fleet(
    db: psycopg.Connection, connect: Connect, fleet: str
) -> None:
    _, holder_pid = holder(connect, fleet)
    result = waiting_allocation(db, connect, fleet, holder_pid)
    assert scalar(db, "SELECT pg_terminate_backend(%s)", [holder_pid]) is True
    assert result.result(timeout=60) == f"DRV-001{fleet}"  # the dead holder's number came back
    assert assigned(db, fleet) == [f"DRV-001{fleet}"]


CLIENT = """
import sys, psycopg
conn = psycopg.connect(sys.argv[1])
print(conn.execute("SELECT idmint.next_driver_id(%s)", [sys.argv[2]]).fetchone()[0],
      conn.info.backend_pid, flush=True)
sys.stdin.read()  # stall inside the open transaction until killed
"""


def test_killed_client_process_releases_the_fleet(
    db: psycopg.Connection, connect: Connect, dsn: str, fleet: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, dsn, fleet],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        got, pid = proc.stdout.readline().split()
        assert got == f"DRV-001{fleet}"
        result = waiting_allocation(db, connect, fleet, int(pid))
        proc.kill()  # SIGKILL: no rollback from the client, the server sees the socket close
        proc.wait(30)
        assert result.result(timeout=60) == f"DRV-001{fleet}"
        assert assigned(db, fleet) == [f"DRV-001{fleet}"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_idle_in_transaction_timeout_frees_the_fleet(
    db: psycopg.Connection, connect: Connect, fleet: str
) -> None:
    stalled, stalled_pid = holder(connect, fleet)
    result = waiting_allocation(db, connect, fleet, stalled_pid)
    # Only now arm the timeout: the holder goes idle in its transaction and is ended by it.
    stalled.execute("SET idle_in_transaction_session_timeout = '100ms'")
    assert result.result(timeout=60) == f"DRV-001{fleet}"
    # FATAL 25P03: terminating connection due to idle-in-transaction timeout
    with raises_sqlstate("25P03"):
        stalled.execute("SELECT 1")
    assert assigned(db, fleet) == [f"DRV-001{fleet}"]


def test_lock_timeout_is_55P03(db: psycopg.Connection, connect: Connect, fleet: str) -> None:
    holder(connect, fleet)
    impatient = connect()
    impatient.execute("SET lock_timeout = '20ms'")
    with raises_sqlstate("55P03"):
        impatient.execute("SELECT idmint.next_driver_id(%s)", [fleet])
    assert assigned(db, fleet) == []


def test_facade_retries_55P03_until_the_holder_commits(
    db: psycopg.Connection, connect: Connect, dsn: str, fleet: str
) -> None:
    holding, holder_pid = holder(connect, fleet)
    app = "idmint-retry-55P03"
    mint = idmint.IdMint(
        psycopg.conninfo.make_conninfo(dsn, options="-c lock_timeout=50ms", application_name=app),
        attempts=1000,
        backoff_cap=0.05,
    )
    result = in_thread(lambda: mint.next_driver_id(fleet))
    # In DSN mode each attempt is a new session: two different blocked backends of the
    # facade prove that the first attempt got 55P03 and was retried.
    first = lock_waits(db, blocker=holder_pid, application_name=app, timeout=60)
    lock_waits(db, blocker=holder_pid, application_name=app, exclude=first, timeout=60)
    assert not result.done()
    holding.execute("COMMIT")
    assert result.result(timeout=60) == f"DRV-002{fleet}"
    assert assigned(db, fleet) == [f"DRV-001{fleet}", f"DRV-002{fleet}"]


def test_facade_gives_up_with_concurrency_error(
    db: psycopg.Connection, connect: Connect, dsn: str, fleet: str
) -> None:
    holder(connect, fleet)
    mint = idmint.IdMint(
        psycopg.conninfo.make_conninfo(dsn, options="-c lock_timeout=10ms"),
        attempts=3,
        backoff_base=0.001,
    )
    with pytest.raises(idmint.ConcurrencyError) as info:
        mint.next_driver_id(fleet)
    assert info.value.sqlstate == "55P03" and info.value.attempts == 3
    assert isinstance(info.value.__cause__, psycopg.errors.LockNotAvailable)
    assert assigned(db, fleet) == []
