"""Load: 32 clients allocate through the facade under each isolation level, directly and
through a real PgBouncer in transaction pooling mode: 0 duplicates, 0 gaps.

`make test` runs 32 x 150 allocations per case; `make soak` (IDMINT_SOAK=1) 32 x 2000.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg import IsolationLevel
from psycopg_pool import ConnectionPool

import idmint
from tests.faults.conftest import size
from tests.util import scalar

CLIENTS = 32
PER_CLIENT = size(150, 2000)


@pytest.fixture
def pool(route: str) -> Iterator[ConnectionPool[Any]]:
    with ConnectionPool(
        route,
        min_size=4,
        max_size=CLIENTS,
        kwargs={"prepare_threshold": None},
        open=True,
    ) as p:
        yield p


@pytest.mark.parametrize(
    "level",
    [IsolationLevel.READ_COMMITTED, IsolationLevel.REPEATABLE_READ, IsolationLevel.SERIALIZABLE],
    ids=["read-committed", "repeatable-read", "serializable"],
)
def test_load_no_duplicates_no_gaps(
    db: psycopg.Connection, pool: ConnectionPool[Any], level: IsolationLevel
) -> None:
    total = CLIENTS * PER_CLIENT
    nfleets = math.ceil(total / 999) + 1
    fleets = [
        str(scalar(db, "SELECT code FROM idmint.add_fleet(%s)", [f"load {i}"]))
        for i in range(nfleets)
    ]
    registry = CollectorRegistry()
    mint = idmint.IdMint(
        pool, isolation_level=level, attempts=200, backoff_cap=0.05, metrics=registry
    )
    got: list[list[str]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []

    def client(c: int) -> None:
        try:
            for i in range(PER_CLIENT):
                got[c].append(mint.next_driver_id(fleets[(c + i) % nfleets]))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    ids = [i for per in got for i in per]
    assert len(ids) == total
    assert len(set(ids)) == total, "duplicates"
    numbers: dict[str, list[int]] = defaultdict(list)
    for i in ids:
        numbers[i[7:10]].append(int(i[4:7]))
    for fleet, nums in numbers.items():
        assert sorted(nums) == list(range(1, len(nums) + 1)), f"gap in fleet {fleet}"
    committed = db.execute(
        "SELECT driver_id FROM idmint.driver_id_ledger WHERE status = 'assigned'"
    ).fetchall()
    assert sorted(r[0] for r in committed) == sorted(ids)
    labels = {"operation": "next_driver_id"}
    retries = registry.get_sample_value("idmint_retries_total", labels) or 0.0
    print(f"load {level.name}: {total} allocations over {nfleets} fleets, {retries:.0f} retries")
    if level != IsolationLevel.READ_COMMITTED:
        assert retries, "no serialization failure was retried: the load had no contention"
