"""Client threads that allocate driver ids through faults and record a History.

Each client owns one autocommit connection and calls idmint.next_driver_id(fleet, key)
with a fresh request_key per allocation. When the connection breaks mid-call the outcome
is unknown (`info`): the client reconnects (the server may be down for a while, or a
standby may be taking over) and calls again with the SAME key until it gets an answer.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence

import psycopg

from tests.faults.history import History

RECONNECT_DEADLINE_S = 120.0
APPLICATION_NAME = "idmint-fault-client"


def _outcome_unknown(conn: psycopg.Connection, exc: psycopg.Error) -> bool:
    """Did the call die with its connection (so it may or may not have committed)?"""
    return conn.broken or conn.closed or exc.sqlstate is None or exc.sqlstate[:2] in ("57", "08")


class Workload:
    """`clients` threads allocating from `fleets` against `dsn()` until stop()."""

    def __init__(
        self,
        dsn: Callable[[], str],
        fleets: Sequence[str],
        history: History,
        *,
        clients: int = 16,
        session_sql: Sequence[str] = (),
        key_prefix: str = "",
        seed: int = 0,
    ) -> None:
        self.dsn = dsn
        self.fleets = list(fleets)
        self.history = history
        self.session_sql = list(session_sql)
        self.key_prefix = key_prefix
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i, seed), daemon=True)
            for i in range(clients)
        ]
        self.errors: list[BaseException] = []
        self.reconnects = 0

    def start(self) -> Workload:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Ask the clients to finish: each resolves its pending call, then exits."""
        self._stop.set()
        for t in self._threads:
            t.join(RECONNECT_DEADLINE_S + 30)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError(f"clients did not finish: {alive}")
        if self.errors:
            raise AssertionError(f"client errors: {self.errors[:3]}") from self.errors[0]

    def wait_for_oks(self, count: int, timeout: float = 120.0) -> None:
        """Wait until the history holds `count` acknowledged allocations in total."""
        deadline = time.monotonic() + timeout
        while self.history.oks < count:
            if self.errors:
                raise AssertionError(f"client errors: {self.errors[:3]}") from self.errors[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.history.oks} of {count} allocations acknowledged")
            time.sleep(0.005)

    def _connect(self) -> psycopg.Connection:
        deadline = time.monotonic() + RECONNECT_DEADLINE_S
        while True:
            try:
                conn = psycopg.connect(
                    self.dsn(), autocommit=True, connect_timeout=5,
                    application_name=APPLICATION_NAME,
                )  # fmt: skip
                for stmt in self.session_sql:
                    conn.execute(stmt)
                return conn
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                self.reconnects += 1
                time.sleep(0.02)  # the server is restarting or being promoted: back off

    def _client(self, cid: int, seed: int) -> None:
        rng = random.Random(seed * 1000 + cid)
        conn: psycopg.Connection | None = None
        seq = 0
        try:
            while not self._stop.is_set():
                fleet = rng.choice(self.fleets)
                key = f"{self.key_prefix}c{cid}-{seq}"
                seq += 1
                while True:  # until this key has a definite answer
                    if conn is None:
                        conn = self._connect()
                    self.history.invoke(cid, fleet, key)
                    try:
                        row = conn.execute(
                            "SELECT idmint.next_driver_id(%s, %s)", (fleet, key)
                        ).fetchone()
                    except psycopg.Error as e:
                        if _outcome_unknown(conn, e):
                            self.history.info(cid, fleet, key, f"{e.sqlstate}: {e}")
                            conn.close()
                            conn = None
                            continue  # reconnect and ask again with the same key
                        self.history.fail(cid, fleet, key, f"{e.sqlstate}: {e}")
                        break
                    assert row is not None
                    self.history.ok(cid, fleet, key, row[0])
                    break
        except BaseException as e:
            self.errors.append(e)
        finally:
            if conn is not None:
                conn.close()


def committed_ids(conn: psycopg.Connection) -> dict[str, str | None]:
    """Every assigned driver id in the database -> the request_key stored with it."""
    rows = conn.execute(
        "SELECT l.driver_id, d.request_key FROM idmint.driver_id_ledger l"
        " JOIN idmint.driver_numbers d USING (fleet_id, number) WHERE l.status = 'assigned'"
    ).fetchall()
    return {r[0]: r[1] for r in rows}
