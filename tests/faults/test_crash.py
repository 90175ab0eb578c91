"""Crash tests: 16 clients allocate while the server crashes; no id is duplicated or lost.

Each cycle: clients allocate from a mix of fleets, a fault hits (pg_ctl stop -m immediate,
a SIGKILLed backend, or pg_terminate_backend), the server comes back, the clients reconnect
and retry their unanswered calls with the same request_key, then the history checker
compares every answer with what the database holds after recovery.

`pg_ctl stop -m immediate` kills the server processes (no checkpoint, shared WAL buffers
lost); the operating system's page cache survives, so this is a process crash, not a
power failure.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable

import psycopg
import pytest

from tests.faults.cluster import FaultCluster
from tests.faults.conftest import size
from tests.faults.history import History, check
from tests.faults.workload import APPLICATION_NAME, Workload, committed_ids

CLIENTS = 16
CYCLES = 10
OKS_BEFORE_FAULT = size(60, 300)
OKS_AFTER_FAULT = size(40, 200)


def make_fleets(dsn: str, allocations: int) -> list[str]:
    """Enough 999-id fleets for `allocations`, with headroom; returns their codes."""
    count = max(4, math.ceil(allocations * 2 / 999))
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [
            str(conn.execute("SELECT code FROM idmint.add_fleet(%s)", [f"crash {i}"]).fetchone()[0])  # type: ignore[index]
            for i in range(count)
        ]


def verify(dsn: str, history: History) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        result = check(history.ops, committed_ids(conn))
    assert result.valid, result.summary()
    assert result.unresolved == 0, "every client resolved its unknown outcomes by retrying"
    print(f"  checked: {result.summary()}")


def client_pids(conn: psycopg.Connection) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        " ORDER BY state = 'active' DESC, pid",
        [APPLICATION_NAME],
    ).fetchall()
    return [r[0] for r in rows]


def inject(kind: str, cluster: FaultCluster, dbname: str) -> None:
    if kind == "immediate":
        cluster.crash()
        cluster.restart()
        return
    with cluster.connect(dbname) as conn:
        pids = client_pids(conn)
        assert pids, "no client connected"
        if kind == "sigkill":
            # The postmaster answers a killed backend with a crash restart of all of them.
            os.kill(pids[0], signal.SIGKILL)
        else:
            conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", [pids])


def run_cycles(
    cluster: FaultCluster,
    faults: list[str],
    *,
    session_sql: tuple[str, ...] = (),
) -> History:
    dsn = cluster.create_idmint_db()
    fleets = make_fleets(dsn, len(faults) * (OKS_BEFORE_FAULT + OKS_AFTER_FAULT + CLIENTS * 2))
    history = History()
    for cycle, kind in enumerate(faults):
        load = Workload(
            lambda: dsn, fleets, history, clients=CLIENTS, session_sql=session_sql,
            key_prefix=f"{cycle}-", seed=cycle,
        ).start()  # fmt: skip
        try:
            load.wait_for_oks(history.oks + OKS_BEFORE_FAULT)
            inject(kind, cluster, "idmint")
            load.wait_for_oks(history.oks + OKS_AFTER_FAULT)
        finally:
            load.stop()
        print(f"cycle {cycle + 1}/{len(faults)} ({kind}): {load.reconnects} reconnect attempts")
        verify(dsn, history)
    infos = sum(op.kind == "info" for op in history.ops)
    assert infos > 0, "the faults never hit a call in flight: the test proved nothing"
    return history


def test_crash_immediate_stop(clusters: Callable[..., FaultCluster]) -> None:
    run_cycles(clusters(), ["immediate"] * CYCLES)


def test_crash_killed_and_terminated_backends(clusters: Callable[..., FaultCluster]) -> None:
    run_cycles(clusters(), ["sigkill", "terminate"] * 5)


def test_durability_guard_with_synchronous_commit_off(
    clusters: Callable[..., FaultCluster],
) -> None:
    # A long wal_writer_delay keeps asynchronous commits in shared WAL buffers, which an
    # immediate stop throws away: without idmint's durable-commit guard acknowledged ids
    # would be lost here.
    cluster = clusters(wal_writer_delay="10s", wal_writer_flush_after=0, autovacuum="off")
    run_cycles(cluster, ["immediate"] * CYCLES, session_sql=("SET synchronous_commit = off",))

    # Control: the same crash loses an acknowledged row of a plain table written with
    # synchronous_commit = off, so the cycles above could have caught a lost id. (The
    # WAL writer may still write such a commit in time, so try a few times.)
    with cluster.connect("idmint") as conn:
        conn.execute("CREATE TABLE public.control (k int PRIMARY KEY)")
    for attempt in range(1, 6):
        with cluster.connect("idmint") as conn:
            conn.execute("CHECKPOINT")
            conn.execute("SET synchronous_commit = off")
            conn.execute("INSERT INTO public.control VALUES (%s)", [attempt])  # acknowledged
        cluster.crash()
        cluster.restart()
        with cluster.connect("idmint") as conn:
            kept = conn.execute("SELECT count(*) FROM public.control WHERE k = %s", [attempt])
            if kept.fetchone() == (0,):
                print(f"control: the acknowledged async commit was lost at attempt {attempt}")
                break
    else:
        pytest.fail("control: 5 acknowledged async commits all survived an immediate stop")


@pytest.mark.parametrize("setting", ["off", "local"])
def test_guard_raises_synchronous_commit_inside_the_call(dsn: str, setting: str) -> None:
    """The guard acts in the allocating transaction only, for each weak setting."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT idmint.add_fleet('guard', 'GRD')")
        conn.commit()
        conn.execute(f"SET synchronous_commit = {setting}")
        conn.commit()
        conn.execute("SELECT idmint.next_driver_id('GRD')")
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        conn.commit()
        assert conn.execute("SHOW synchronous_commit").fetchone() == (setting,)
