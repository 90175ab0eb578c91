"""Failover: with a synchronous standby, promoting it after a primary crash reissues nothing.

A negative control shows the same harness catching the reissues an asynchronous standby
produces (docs/RELIABILITY.md explains why).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.faults.cluster import FaultCluster
from tests.faults.conftest import size
from tests.faults.history import History, check
from tests.faults.test_crash import make_fleets
from tests.faults.workload import Workload, committed_ids

CLIENTS = 16
OKS_BEFORE = size(150, 1500)
OKS_AFTER = size(100, 1000)


def wait_for_sync_standby(primary: FaultCluster, name: str) -> None:
    """Poll pg_stat_replication until `name` streams as the synchronous standby."""
    deadline = time.monotonic() + 60
    with primary.connect() as conn:
        while True:
            row = conn.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s", [name]
            ).fetchone()
            if row == ("sync",):
                return
            assert time.monotonic() < deadline, f"standby {name} never became synchronous: {row}"
            time.sleep(0.02)


def wait_for_replay(primary: FaultCluster, standby: FaultCluster) -> None:
    with primary.connect() as p:
        target = p.execute("SELECT pg_current_wal_lsn()").fetchone()
    deadline = time.monotonic() + 60
    with standby.connect() as s:
        while not s.execute("SELECT pg_last_wal_replay_lsn() >= %s", target).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "standby never replayed the setup"
            time.sleep(0.02)


def pair(
    clusters: Callable[..., FaultCluster], tmp_path: Path, *, synchronous: bool
) -> tuple[FaultCluster, FaultCluster, str, list[str]]:
    """A primary with the idmint database and fleets, and a streaming standby of it."""
    primary = clusters("primary", synchronous_commit="on", hot_standby="on")
    primary.create_idmint_db()
    fleets = make_fleets(primary.dsn("idmint"), OKS_BEFORE + OKS_AFTER + 4 * CLIENTS)
    standby = FaultCluster.standby_of(primary, tmp_path / "standby", "standby1")
    clusters.made.append(standby)  # type: ignore[attr-defined]
    if synchronous:
        with primary.connect() as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
            conn.execute("SELECT pg_reload_conf()")
        wait_for_sync_standby(primary, "standby1")
    wait_for_replay(primary, standby)
    # libpq tries both hosts and keeps the one that accepts writes: clients follow the
    # promotion without being told.
    dsn = psycopg.conninfo.make_conninfo(
        host="127.0.0.1,127.0.0.1",
        port=f"{primary.port},{standby.port}",
        user="postgres",
        dbname="idmint",
        target_session_attrs="read-write",
    )
    return primary, standby, dsn, fleets


def test_failover_to_synchronous_standby_reissues_nothing(
    clusters: Callable[..., FaultCluster], tmp_path: Path
) -> None:
    primary, standby, dsn, fleets = pair(clusters, tmp_path, synchronous=True)
    history = History()
    load = Workload(lambda: dsn, fleets, history, clients=CLIENTS).start()
    try:
        load.wait_for_oks(OKS_BEFORE)
        primary.crash()  # stop -m immediate
        standby.promote()
        with standby.connect() as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        load.wait_for_oks(history.oks + OKS_AFTER)  # clients continue on the new primary
    finally:
        load.stop()
    with standby.connect("idmint") as conn:
        result = check(history.ops, committed_ids(conn))
    print(f"failover: {result.summary()}")
    assert result.valid, result.summary()
    assert result.unresolved == 0
    assert result.infos > 0, "the crash hit no call in flight"


def test_async_standby_can_reissue_acknowledged_ids(
    clusters: Callable[..., FaultCluster], tmp_path: Path
) -> None:
    """Negative control: an asynchronous standby that lags loses acknowledged ids and
    hands them out again after promotion; the checker reports duplicates and losses."""
    primary, standby, _, fleets = pair(clusters, tmp_path, synchronous=False)
    standby.stop("fast")  # the lag, made deterministic: the standby receives nothing more
    history = History()
    with psycopg.connect(primary.dsn("idmint"), autocommit=True) as conn:
        for i in range(5):
            history.invoke(0, fleets[0], f"old-{i}")
            row = conn.execute("SELECT idmint.next_driver_id(%s, %s)", (fleets[0], f"old-{i}"))
            history.ok(0, fleets[0], f"old-{i}", row.fetchone()[0])  # type: ignore[index]
    primary.crash()
    standby.start()
    standby.promote()
    with psycopg.connect(standby.dsn("idmint"), autocommit=True) as conn:
        for i in range(5):
            history.invoke(1, fleets[0], f"new-{i}")
            row = conn.execute("SELECT idmint.next_driver_id(%s, %s)", (fleets[0], f"new-{i}"))
            history.ok(1, fleets[0], f"new-{i}", row.fetchone()[0])  # type: ignore[index]
        result = check(history.ops, committed_ids(conn))
    print(f"async control: {result.summary()}")
    assert not result.valid
    assert len(result.duplicates) == 5, result.summary()
