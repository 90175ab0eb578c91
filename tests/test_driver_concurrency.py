"""Driver-id allocation under concurrency, on real connections in threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import IsolationLevel

from tests.util import Connect, scalar, wait_until_blocked

THREADS, PER_THREAD = 16, 50
RETRYABLE = {"40001", "40P01"}


def allocate_many(
    dsn: str, isolation: IsolationLevel, count: int, start: threading.Barrier
) -> tuple[list[str], int]:
    """Allocate `count` ids, one transaction each, retrying serialization failures."""
    got: list[str] = []
    retries = 0
    with psycopg.connect(dsn) as conn:
        conn.isolation_level = isolation
        start.wait()
        while len(got) < count:
            try:
                with conn.transaction():
                    issued = str(scalar(conn, "SELECT idmint.next_driver_id('ABC')"))
            except psycopg.Error as exc:  # also at COMMIT, which SERIALIZABLE may refuse
                if exc.sqlstate not in RETRYABLE:
                    raise
                retries += 1
            else:
                got.append(issued)  # only once the commit succeeded
    return got, retries


@pytest.mark.parametrize(
    "isolation",
    [IsolationLevel.READ_COMMITTED, IsolationLevel.REPEATABLE_READ, IsolationLevel.SERIALIZABLE],
    ids=["read-committed", "repeatable-read", "serializable"],
)
def test_16_threads_get_exactly_1_to_800(
    dsn: str, db: psycopg.Connection, isolation: IsolationLevel
) -> None:
    db.execute("SELECT idmint.add_fleet('Hot', 'ABC')")
    start = threading.Barrier(THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(
            pool.map(lambda _: allocate_many(dsn, isolation, PER_THREAD, start), range(THREADS))
        )
    ids = [i for got, _ in results for i in got]
    assert len(ids) == len(set(ids)) == THREADS * PER_THREAD
    assert sorted(ids) == [f"DRV-{n:03d}ABC" for n in range(1, THREADS * PER_THREAD + 1)]
    ledger = [r[0] for r in db.execute("SELECT number FROM idmint.driver_id_ledger ORDER BY 1")]
    assert ledger == list(range(1, THREADS * PER_THREAD + 1))
    if isolation == IsolationLevel.READ_COMMITTED:
        assert sum(r for _, r in results) == 0  # READ COMMITTED waits and never needs a retry


def test_second_allocator_blocks_on_the_first_then_gets_n_plus_1(connect: Connect) -> None:
    db = connect()
    db.execute("SELECT idmint.add_fleet('Hot', 'ABC')")
    first, second = connect(autocommit=False), connect(autocommit=False)
    assert scalar(first, "SELECT idmint.next_driver_id('ABC')") == "DRV-001ABC"

    second_pid = second.info.backend_pid
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: scalar(second, "SELECT idmint.next_driver_id('ABC')"))
        assert wait_until_blocked(db, second_pid) == [first.info.backend_pid]
        assert not pending.done()
        first.commit()
        assert pending.result(timeout=30) == "DRV-002ABC"
    second.commit()


def test_blocked_allocator_takes_the_number_back_when_the_first_rolls_back(
    connect: Connect,
) -> None:
    db = connect()
    db.execute("SELECT idmint.add_fleet('Hot', 'ABC')")
    first, second = connect(autocommit=False), connect(autocommit=False)
    assert scalar(first, "SELECT idmint.next_driver_id('ABC')") == "DRV-001ABC"
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: scalar(second, "SELECT idmint.next_driver_id('ABC')"))
        wait_until_blocked(db, second.info.backend_pid)
        first.rollback()
        assert pending.result(timeout=30) == "DRV-001ABC"
    second.commit()


def test_repeatable_read_loser_gets_40001_and_succeeds_on_retry(connect: Connect) -> None:
    db = connect()
    db.execute("SELECT idmint.add_fleet('Hot', 'ABC')")
    first = connect(autocommit=False)
    second = connect(autocommit=False)
    second.isolation_level = IsolationLevel.REPEATABLE_READ
    scalar(second, "SELECT 1")  # take the snapshot now
    assert scalar(first, "SELECT idmint.next_driver_id('ABC')") == "DRV-001ABC"
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: scalar(second, "SELECT idmint.next_driver_id('ABC')"))
        wait_until_blocked(db, second.info.backend_pid)
        first.commit()
        with pytest.raises(psycopg.errors.SerializationFailure):
            pending.result(timeout=30)
    second.rollback()
    assert scalar(second, "SELECT idmint.next_driver_id('ABC')") == "DRV-002ABC"
    second.commit()
