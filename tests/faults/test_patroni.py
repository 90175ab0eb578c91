"""No reissue under Patroni + etcd: switchover, kill -9 of the leader's postmaster, loss of
the leader node, and a control with asynchronous replication and a lagging replica.

One etcd and three Patroni nodes on 127.0.0.1 (tests/faults/patroni.py) with
`synchronous_mode: true` and `synchronous_mode_strict: true`. Clients use a multi-host DSN
with `target_session_attrs=read-write` and the history checker of the other fault tests
(tests/faults/history.py, workload.py): a call whose connection died is retried with the
same request_key. After each fault the checker must find no reissued id, no lost
acknowledged id and every fleet gapless.

The tests share one cluster and run in file order (`make test` runs pytest with
`-p no:randomly`); each starts by waiting for the healthy state it needs. Figures (ids
acknowledged, reissued, lost, failover times) go to build/faults/patroni.json and are
printed (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from idmint.migrate import migrate
from tests.faults.conftest import size
from tests.faults.history import CheckResult, History, check, split_id
from tests.faults.patroni import (
    Node,
    PatroniCluster,
    client_dsn,
    etcd_argv,
    patroni_config,
    poll,
    to_yaml,
)
from tests.faults.workload import APPLICATION_NAME, RECONNECT_DEADLINE_S, Workload, committed_ids

CLIENTS = 8
OKS_BEFORE = size(60, 1000)  # acknowledged allocations before each fault
OKS_AFTER = size(60, 1000)  # ... and after it, on whichever node leads then
FLEETS = size(4, 12)  # 999 ids each; the switchover run acknowledges the most
CONTROL_IDS = 5  # ids acknowledged by the old leader that the lagging replica never receives
TIGHT_LIMIT = 1024  # a maximum_lag_on_failover (bytes) below the WAL of CONTROL_IDS allocations
ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "build" / "faults" / "patroni.json"
LOGS = (
    ROOT / "build" / "faults" / "patroni-logs"
)  # the last run's etcd, Patroni and PostgreSQL logs

# The dynamic configuration (bootstrap.dcs) of the cluster, shown verbatim in docs/HA.md.
DCS: dict[str, Any] = {
    "ttl": 10,
    "loop_wait": 1,
    "retry_timeout": 4,
    "maximum_lag_on_failover": 1048576,
    "synchronous_mode": True,
    "synchronous_mode_strict": True,
    "postgresql": {
        "use_pg_rewind": True,
        "parameters": {
            "synchronous_commit": "on",
            "wal_log_hints": "on",
            "wal_retrieve_retry_interval": "1s",
            "max_connections": 100,
            "shared_buffers": "32MB",
        },
    },
}


# -- helpers --------------------------------------------------------------------------------


class TimedHistory(History):
    """The checker's History, plus when each acknowledgement arrived (for the figures)."""

    def __init__(self) -> None:
        super().__init__()
        self.ok_times: list[float] = []

    def ok(self, process: int, fleet: str, key: str, driver_id: str) -> None:
        super().ok(process, fleet, key, driver_id)
        self.ok_times.append(time.monotonic())

    def longest_pause(self) -> tuple[float, float]:
        """(start, end) of the longest time without an acknowledgement."""
        times = sorted(self.ok_times)
        return max(itertools.pairwise(times), key=lambda p: p[1] - p[0], default=(0.0, 0.0))


class PatroniWorkload(Workload):
    """The fault tests' Workload, with two additions:
    - reconnecting with a capped exponential backoff: during a ten-second election every
      client would otherwise open a connection to each of the three nodes fifty times a
      second;
    - abort(), for a test that already failed: stop without waiting for answers that may
      never come (a commit waiting for a synchronous standby that is gone)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._aborted = threading.Event()
        self._conns: list[psycopg.Connection] = []

    def abort(self) -> None:
        """Never raises; gives the clients a few seconds, then leaves them (daemon threads)."""
        self._aborted.set()
        self._stop.set()
        for conn in list(self._conns):
            with contextlib.suppress(Exception):  # best effort: the connection may be gone
                conn.cancel()
        deadline = time.monotonic() + 10
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _connect(self) -> psycopg.Connection:
        deadline = time.monotonic() + RECONNECT_DEADLINE_S
        delay = 0.02
        while True:
            if self._aborted.is_set():
                raise RuntimeError("workload aborted")
            try:
                conn = psycopg.connect(
                    self.dsn(), autocommit=True, connect_timeout=5,
                    application_name=APPLICATION_NAME,
                )  # fmt: skip
                for stmt in self.session_sql:
                    conn.execute(stmt)
                self._conns.append(conn)
                return conn
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                self.reconnects += 1
                time.sleep(delay)  # no primary yet: back off (not an ordering decision)
                delay = min(delay * 2, 0.2)


PROBE_TABLE = "public.patroni_probe"


def commit_probe(dsn: str, timeout: float = 2.0) -> bool:
    """Does a write transaction commit through `dsn` (a synchronous one, where required)?

    It inserts a row: a transaction that writes no WAL but its commit record (e.g. only
    `txid_current()`) never waits for a synchronous standby. A commit still waiting after
    `timeout` is cancelled; PostgreSQL then warns that it committed locally only: a no."""
    notices: list[str] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
        conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        timer = threading.Timer(timeout, conn.cancel)
        timer.start()
        try:
            conn.execute(f"INSERT INTO {PROBE_TABLE} DEFAULT VALUES")
        finally:
            timer.cancel()
    return not any("synchronous replication" in n for n in notices)


def wait_for_writes(dsn: str, since: float, timeout: float = 60.0) -> float:
    """Poll until a write commits through the multi-host DSN; seconds since `since`."""
    poll("a primary that commits writes", lambda: commit_probe(dsn), timeout, interval=0.05)
    return time.monotonic() - since


def new_fleets(dsn: str, scenario: str, count: int = FLEETS) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        codes = []
        for i in range(count):
            row = conn.execute(
                "SELECT code FROM idmint.add_fleet(%s)", [f"patroni {scenario} {i}"]
            ).fetchone()
            assert row is not None
            codes.append(str(row[0]))
        return codes


def check_fleets(node: Node, history: History, fleets: list[str]) -> CheckResult:
    """The checker, over this scenario's fleets only (earlier tests used others)."""
    wanted = {f.upper() for f in fleets}
    with node.connect("idmint") as conn:
        committed = {k: v for k, v in committed_ids(conn).items() if split_id(k)[0] in wanted}
    return check(history.ops, committed)


def record(scenario: str, figures: dict[str, Any]) -> None:
    """Print the figures and merge them into build/faults/patroni.json."""
    print(f"\npatroni {scenario}: {json.dumps(figures)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        data = {}
    data[scenario] = figures
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def sync_standby(cluster: PatroniCluster) -> Node:
    names = [n for n, m in cluster.members().items() if m["role"] == "sync_standby"]
    assert len(names) == 1, cluster.members()
    return cluster.by_name[names[0]]


def under_load(
    cluster: PatroniCluster, scenario: str, fault: Callable[[Node], None], *, nodes_after: int
) -> tuple[Node, dict[str, Any]]:
    """Clients allocate through the multi-host DSN; `fault(leader)` hits mid-load; they go
    on until OKS_AFTER more allocations are acknowledged; then the checker runs.
    Returns the leader afterwards and the scenario's figures."""
    leader = cluster.wait_healthy(len(cluster.live_nodes()), sync=True)
    dsn = cluster.multi_host_dsn()
    fleets = new_fleets(dsn, scenario)
    history = TimedHistory()
    load = PatroniWorkload(lambda: dsn, fleets, history, clients=CLIENTS, key_prefix=f"{scenario}-")
    load.start()
    try:
        load.wait_for_oks(OKS_BEFORE)
        started = time.monotonic()
        fault(leader)
        fault_s = time.monotonic() - started
        writes_s = wait_for_writes(dsn, started)
        load.wait_for_oks(history.oks + OKS_AFTER)
    except BaseException:
        load.abort()
        raise
    load.stop()
    after = cluster.wait_healthy(nodes_after, sync=True)
    pause = history.longest_pause()
    result = check_fleets(after, history, fleets)
    figures = {
        "acknowledged": result.oks,
        "reissued": len(result.duplicates),
        "lost": len(result.lost),
        "holes": len(result.holes),
        "key_conflicts": len(result.key_conflicts),
        "unknown_outcomes": result.infos,
        "unresolved": result.unresolved,
        "reconnects": load.reconnects,
        "leader_before": leader.name,
        "leader_after": after.name,
        "fault_command_s": round(fault_s, 2),
        "failover_s": round(writes_s, 2),
        "longest_ack_pause_s": round(pause[1] - pause[0], 2),
        "ack_pause_from_to_s": [round(pause[0] - started, 2), round(pause[1] - started, 2)],
    }
    record(scenario, figures)
    assert result.valid, result.summary()
    assert result.unresolved == 0, "every unknown outcome was resolved by its retry"
    assert result.oks >= OKS_BEFORE + OKS_AFTER
    return after, figures


# -- the cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patroni() -> Iterator[PatroniCluster]:
    """etcd + three Patroni nodes in synchronous mode, with the idmint database migrated."""
    started = time.monotonic()
    cluster = PatroniCluster.start(3, DCS)
    try:
        leader = cluster.wait_healthy(3, sync=True, timeout=90)
        healthy = time.monotonic()
        with leader.connect() as conn:
            conn.execute("CREATE DATABASE idmint")
        migrate(leader.dsn("idmint"))
        with leader.connect("idmint") as conn:
            conn.execute(f"CREATE TABLE {PROBE_TABLE} (at timestamptz DEFAULT clock_timestamp())")
        record(
            "bootstrap",
            {
                "nodes": 3,
                "healthy_s": round(healthy - started, 2),
                "migrated_s": round(time.monotonic() - healthy, 2),
            },
        )
        yield cluster
    finally:
        shutil.rmtree(LOGS, ignore_errors=True)
        cluster.close(keep_logs=LOGS)  # for a failure in `make test`
        record("module", {"seconds_with_teardown": round(time.monotonic() - started, 2)})


# -- scenarios ------------------------------------------------------------------------------


def test_patroni_switchover_reissues_nothing(patroni: PatroniCluster) -> None:
    """`patronictl switchover` to the synchronous standby, under load."""
    target: list[Node] = []

    def switchover(leader: Node) -> None:
        candidate = sync_standby(patroni)
        target.append(candidate)
        out = patroni.patronictl(
            "switchover", "--leader", leader.name, "--candidate", candidate.name, "--force"
        )
        assert "Successfully switched over" in out, out

    after, figures = under_load(patroni, "switchover", switchover, nodes_after=3)
    assert after is target[0], figures


def test_patroni_leader_postmaster_kill9_reissues_nothing(patroni: PatroniCluster) -> None:
    """kill -9 of the leader's postmaster. Patroni keeps the leader lock and restarts
    PostgreSQL in place (crash recovery) within primary_start_timeout (default 300 s)."""
    killed: list[int] = []

    def kill9(leader: Node) -> None:
        killed.append(patroni.kill_postmaster(leader))

    after, figures = under_load(patroni, "postmaster_kill9", kill9, nodes_after=3)
    assert after.name == figures["leader_before"], figures
    assert after.postmaster_pid() not in (None, killed[0]), "PostgreSQL was restarted"
    assert figures["unknown_outcomes"] > 0, "the crash hit calls in flight"


def test_patroni_leader_node_loss_reissues_nothing(patroni: PatroniCluster) -> None:
    """The leader's Patroni and PostgreSQL die together; once the leader key expires (ttl)
    the synchronous standby takes over and the cluster goes on with two nodes."""
    expected: list[Node] = []

    def lose_leader(leader: Node) -> None:
        expected.append(sync_standby(patroni))
        patroni.lose_node(leader)

    after, figures = under_load(patroni, "leader_node_loss", lose_leader, nodes_after=2)
    assert after is expected[0], figures
    assert len(patroni.live_nodes()) == 2
    assert figures["unknown_outcomes"] > 0, "the loss hit calls in flight"


def _allocate(history: History, process: int, dsn: str, fleet: str, keys: list[str]) -> list[str]:
    ids = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for key in keys:
            history.invoke(process, fleet, key)
            row = conn.execute("SELECT idmint.next_driver_id(%s, %s)", (fleet, key)).fetchone()
            assert row is not None
            history.ok(process, fleet, key, row[0])
            ids.append(row[0])
    return ids


def _lsn(conn: psycopg.Connection, expr: str) -> int:
    row = conn.execute(f"SELECT ({expr}) - '0/0'::pg_lsn").fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def test_patroni_async_lagging_replica_control(patroni: PatroniCluster) -> None:
    """Control: `synchronous_mode: false` and a replica that stopped receiving WAL.

    The old leader acknowledges CONTROL_IDS ids the replica never receives, then its node
    is lost. Patroni lets a replica into the leader race only if the last WAL position the
    leader published in etcd minus the replica's own is at most `maximum_lag_on_failover`.
    With the limit below the missing WAL (TIGHT_LIMIT) it refuses: no primary, nothing
    reissued, nothing written. Back at the default (1 MiB, far more than a few ids of WAL)
    it promotes the replica at once, which hands the acknowledged ids out again; the
    checker reports every one of them."""
    c = patroni
    default_limit = DCS["maximum_lag_on_failover"]
    c.patch_config({"synchronous_mode": False, "synchronous_mode_strict": False})

    def async_leader() -> Node | None:
        leader = c.leader()
        if leader is None or any(m["role"] == "sync_standby" for m in c.members().values()):
            return None
        with leader.connect() as conn:
            names = conn.execute("SHOW synchronous_standby_names").fetchone()
        return leader if names == ("",) else None

    leader = poll("Patroni to turn synchronous replication off", async_leader, 30)
    replicas = [n for n in c.live_nodes() if n is not leader]
    lagging = replicas[0]
    for other in replicas[1:]:  # (only when run alone) leave the lagging replica no rival
        c.lose_node(other)
    c.wait_healthy(2, sync=False)

    dsn = c.multi_host_dsn()
    fleet = new_fleets(dsn, "control", 1)[0]
    history = TimedHistory()
    _allocate(history, 0, dsn, fleet, [f"control-before-{i}" for i in range(5)])
    with leader.connect() as conn:
        target = _lsn(conn, "pg_current_wal_lsn()")
        with lagging.connect() as rconn:
            poll("the replica to replay", lambda: _lsn(rconn, "pg_last_wal_replay_lsn()") >= target)
        rows = conn.execute(
            "SELECT pid FROM pg_stat_replication WHERE application_name = %s"
            " AND state = 'streaming'",
            [lagging.name],
        ).fetchall()
        assert len(rows) == 1, f"walsenders for the replica: {rows}"
        # The lag, made deterministic: the walsender feeding the replica stops; WAL written
        # from here on stays on the leader.
        os.kill(int(rows[0][0]), signal.SIGSTOP)
        start_lsn = _lsn(conn, "pg_current_wal_lsn()")
        acked = _allocate(history, 0, leader.dsn("idmint"), fleet,
                          [f"control-acked-{i}" for i in range(CONTROL_IDS)])  # fmt: skip
        end_lsn = _lsn(conn, "pg_current_wal_lsn()")
        ids_wal = end_lsn - start_lsn
    assert TIGHT_LIMIT < ids_wal < default_limit, ids_wal

    # The leader publishes its position once a loop; until the published position covers
    # the acknowledged ids, Patroni would not count them as lag at all.
    optime = poll(
        "the leader to publish its position",
        lambda: (o := c.published_optime()) is not None and o >= end_lsn and o,
        30,
    )
    with lagging.connect("idmint") as rconn:  # still lagging, now that time has passed
        received = _lsn(rconn, "pg_last_wal_receive_lsn()")
        assert received < end_lsn
        row = rconn.execute(
            "SELECT count(*) FROM idmint.driver_id_ledger WHERE fleet_code = %s", [fleet]
        ).fetchone()
        assert row == (5,), "the replica must not have received the acknowledged ids"
    lag = optime - received
    assert lag > TIGHT_LIMIT, lag
    c.patch_config({"maximum_lag_on_failover": TIGHT_LIMIT})
    log_mark = lagging.log_file.stat().st_size

    lost_at = time.monotonic()
    c.lose_node(leader)
    refusal = "My wal position exceeds maximum replication lag"

    def refusals() -> int | None:
        text = lagging.log_file.read_bytes()[log_mark:].decode(errors="replace")
        return text.count(refusal) if text.count(refusal) >= 2 else None

    try:
        poll("two refused leader races", refusals, DCS["ttl"] + 30)
    except AssertionError as e:
        raise AssertionError(f"{e}; {lagging.name}'s log:\n{lagging.log_tail()}") from None
    refused_s = time.monotonic() - lost_at
    assert c.leader() is None
    with lagging.connect() as rconn:
        assert rconn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError):
        commit_probe(dsn)  # no node accepts writes: the clients wait, nothing is reissued

    restored = time.monotonic()
    c.patch_config({"maximum_lag_on_failover": default_limit})
    promote_s = wait_for_writes(dsn, restored)
    assert c.leader() is lagging
    reissued = _allocate(history, 1, dsn, fleet,
                         [f"control-after-{i}" for i in range(CONTROL_IDS)])  # fmt: skip
    result = check_fleets(lagging, history, [fleet])
    record(
        "async_lagging_control",
        {
            "acknowledged": result.oks,
            "reissued": len(result.duplicates),
            "lost": len(result.lost),
            "holes": len(result.holes),
            "wal_bytes_of_acknowledged_ids": ids_wal,
            "published_lag_bytes": lag,
            "tight_limit": TIGHT_LIMIT,
            "refused_leader_race_for_s": round(refused_s, 2),
            "default_limit": default_limit,
            "promotion_after_default_restored_s": round(promote_s, 2),
        },
    )
    assert not result.valid
    assert sorted(reissued) == sorted(acked), "the new leader handed out the same ids again"
    assert len(result.duplicates) == CONTROL_IDS, result.summary()
    assert result.lost == [] and result.holes == [], result.summary()


def _shell(argv: list[str]) -> str:
    """`prog --flag value ...` with one flag per line."""
    pairs = [" ".join(argv[i : i + 2]) for i in range(1, len(argv), 2)]
    return " \\\n  ".join([argv[0], *pairs])


def test_patroni_docs_show_the_settings() -> None:
    """docs/HA.md shows the settings these tests run with, verbatim (random ports and the
    private directory as placeholders)."""
    docs = (ROOT / "docs" / "HA.md").read_text()
    base = "/tmp/idmint-patroni-XXXXXXXX"
    argv = etcd_argv(f"{base}/etcd", "ETCD_PORT", "ETCD_PEER_PORT", "idmint-patroni-XXXXXXXX")
    etcd = _shell(["etcd", *argv[1:]])  # wherever the etcd binary lives
    node = to_yaml(
        patroni_config(
            "idmint", "node0", f"{base}/node0", "PG_PORT_0", "API_PORT_0", "ETCD_PORT", DCS
        )
    )
    dsn = client_dsn(["PG_PORT_0", "PG_PORT_1", "PG_PORT_2"])
    for block in (etcd, node, dsn):
        assert block in docs, f"docs/HA.md lacks, verbatim:\n{block}"
