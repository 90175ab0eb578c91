"""Isolation: deterministic two-session permutations in the style of PostgreSQL's isolation
tester, directly and through PgBouncer (transaction pooling). The 32-client load test
through the facade lives in tests/faults/test_load.py (so `make soak` runs its full size).

A permutation is a list of steps, each run by one session. After each step the runner
waits until every session's step is either finished or blocked, deciding "blocked" with
pg_isolation_test_session_is_blocked() (never by sleeping), and writes a transcript:

    s1 alloc: DRV-001AAA
    s2 alloc: <waiting ...>
    s1 commit: ok
    s2 alloc: <... completed> DRV-002AAA

Sessions are recognised on the server by application_name, so the same runner works when
PgBouncer hands a session a different server connection for each transaction.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
import pytest

from tests.util import scalar

SOAK = os.environ.get("IDMINT_SOAK", "") not in ("", "0")
STEP_TIMEOUT_S = 60.0


# --- the permutation runner ---------------------------------------------------------------


class Session:
    def __init__(self, name: str, dsn: str, tag: str) -> None:
        self.name = name
        self.app = f"iso-{tag}-{name}"
        self.conn = psycopg.connect(
            dsn, autocommit=True, application_name=self.app, prepare_threshold=None
        )
        self._pool = ThreadPoolExecutor(1)
        self.pending: tuple[str, Future[str]] | None = None

    def submit(self, sql: str) -> Future[str]:
        return self._pool.submit(self._run, sql)

    def _run(self, sql: str) -> str:
        try:
            cur = self.conn.execute(sql)
            if cur.description is None:
                return "ok"
            return ",".join(str(r[0]) for r in cur.fetchall())
        except psycopg.Error as e:
            return f"ERROR {e.sqlstate}"

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.conn.close()


class Permutations:
    """Runs steps {name: (session, sql)} in the orders given; one observer asks the server."""

    def __init__(self, observer: psycopg.Connection, dsn: str, sessions: list[str]) -> None:
        self.observer = observer
        self.dsn = dsn
        self.names = sessions
        self.count = 0

    def run(self, steps: dict[str, tuple[str, str]], order: list[str]) -> list[str]:
        self.count += 1
        sessions = {n: Session(n, self.dsn, f"{os.getpid()}-{self.count}") for n in self.names}
        out: list[str] = []
        try:
            for step in order:
                name, sql = steps[step]
                s = sessions[name]
                assert s.pending is None, f"{step}: session {name} is still blocked"
                fut = s.submit(sql)
                if self._settle(s, fut, sessions):
                    out.append(f"{name} {step}: {fut.result()}")
                else:
                    out.append(f"{name} {step}: <waiting ...>")
                    s.pending = (step, fut)
                for other in sorted(sessions.values(), key=lambda x: x.name):
                    if other.pending is not None and other is not s:
                        ostep, ofut = other.pending
                        if self._settle(other, ofut, sessions):
                            out.append(f"{other.name} {ostep}: <... completed> {ofut.result()}")
                            other.pending = None
            left = [s.name for s in sessions.values() if s.pending is not None]
            assert not left, f"sessions still blocked at the end: {left}\n" + "\n".join(out)
        finally:
            for s in sessions.values():
                if s.pending is not None:
                    self.observer.execute(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = %s",
                        [s.app],
                    )
                s.close()
        return out

    def _settle(self, s: Session, fut: Future[str], sessions: dict[str, Session]) -> bool:
        """Wait until `fut` is done (True) or its session is blocked by another one (False)."""
        others = [x.app for x in sessions.values() if x is not s]
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not fut.done():
            row = self.observer.execute(
                "SELECT coalesce(bool_or(pg_isolation_test_session_is_blocked(a.pid, ARRAY("
                "  SELECT o.pid FROM pg_stat_activity o WHERE o.application_name = ANY (%s)))),"
                " false)"
                " FROM pg_stat_activity a WHERE a.application_name = %s AND a.state = 'active'",
                [others, s.app],
            ).fetchone()
            if row is not None and row[0] and not fut.done():
                return False
            assert time.monotonic() < deadline, f"session {s.name} neither finished nor blocked"
            time.sleep(0.001)
        return True


@pytest.fixture
def perms(db: psycopg.Connection, route: str) -> Permutations:
    db.execute("SELECT idmint.add_fleet('A', 'AAA'), idmint.add_fleet('B', 'BBB')")
    return Permutations(db, route, ["s1", "s2"])


# --- allocate vs allocate -----------------------------------------------------------------

ALLOC = {
    "b1": ("s1", "BEGIN"),
    "a1": ("s1", "SELECT idmint.next_driver_id('AAA')"),
    "c1": ("s1", "COMMIT"),
    "r1": ("s1", "ROLLBACK"),
    "b2": ("s2", "BEGIN"),
    "b2rr": ("s2", "BEGIN ISOLATION LEVEL REPEATABLE READ"),
    "snap2": ("s2", "SELECT count(*) FROM idmint.driver_id_ledger"),
    "a2": ("s2", "SELECT idmint.next_driver_id('AAA')"),
    "c2": ("s2", "COMMIT"),
    "r2": ("s2", "ROLLBACK"),
}


def test_allocate_vs_allocate_commit(perms: Permutations) -> None:
    assert perms.run(ALLOC, ["b1", "a1", "a2", "c1"]) == [
        "s1 b1: ok",
        "s1 a1: DRV-001AAA",
        "s2 a2: <waiting ...>",
        "s1 c1: ok",
        "s2 a2: <... completed> DRV-002AAA",
    ]


def test_allocate_vs_allocate_rollback_gives_the_number_back(perms: Permutations) -> None:
    assert perms.run(ALLOC, ["b1", "a1", "a2", "r1"]) == [
        "s1 b1: ok",
        "s1 a1: DRV-001AAA",
        "s2 a2: <waiting ...>",
        "s1 r1: ok",
        "s2 a2: <... completed> DRV-001AAA",
    ]


def test_allocate_vs_allocate_repeatable_read_must_retry(perms: Permutations) -> None:
    # Under REPEATABLE READ the waiter cannot see the winner's counter: 40001, which the
    # facade retries as a whole transaction (see the load test below).
    assert perms.run(ALLOC, ["b1", "a1", "b2rr", "snap2", "a2", "c1", "r2", "a2"]) == [
        "s1 b1: ok",
        "s1 a1: DRV-001AAA",
        "s2 b2rr: ok",
        "s2 snap2: 0",
        "s2 a2: <waiting ...>",
        "s1 c1: ok",
        "s2 a2: <... completed> ERROR 40001",
        "s2 r2: ok",
        "s2 a2: DRV-002AAA",
    ]


# --- allocate vs reserve ------------------------------------------------------------------

RESERVE = {
    "b1": ("s1", "BEGIN"),
    "res1": ("s1", "SELECT idmint.reserve_driver_id('AAA', 'clerk')"),
    "rel1": ("s1", "SELECT idmint.release_driver_id('DRV-001AAA', 'clerk')"),
    "c1": ("s1", "COMMIT"),
    "r1": ("s1", "ROLLBACK"),
    "a2": ("s2", "SELECT idmint.next_driver_id('AAA')"),
}


def test_allocate_waits_for_reserve_and_skips_the_reserved_number(perms: Permutations) -> None:
    assert perms.run(RESERVE, ["b1", "res1", "a2", "c1"]) == [
        "s1 b1: ok",
        "s1 res1: DRV-001AAA",
        "s2 a2: <waiting ...>",
        "s1 c1: ok",
        "s2 a2: <... completed> DRV-002AAA",
    ]


def test_allocate_after_rolled_back_reserve_takes_its_number(perms: Permutations) -> None:
    assert perms.run(RESERVE, ["b1", "res1", "a2", "r1"]) == [
        "s1 b1: ok",
        "s1 res1: DRV-001AAA",
        "s2 a2: <waiting ...>",
        "s1 r1: ok",
        "s2 a2: <... completed> DRV-001AAA",
    ]


def test_allocate_after_release_reissues_the_lowest(perms: Permutations) -> None:
    assert perms.run(RESERVE, ["res1", "b1", "rel1", "a2", "c1"]) == [
        "s1 res1: DRV-001AAA",
        "s1 b1: ok",
        "s1 rel1: True",
        "s2 a2: <waiting ...>",
        "s1 c1: ok",
        "s2 a2: <... completed> DRV-001AAA",
    ]


# --- confirm vs purge ---------------------------------------------------------------------


def wait_until_expired(db: psycopg.Connection, driver_id: str) -> None:
    """Poll the server clock until the reservation's expiry has passed."""
    deadline = time.monotonic() + 30
    while not scalar(
        db,
        "SELECT clock_timestamp() > expires_at FROM idmint.driver_id_ledger WHERE driver_id = %s",
        [driver_id],
    ):
        assert time.monotonic() < deadline
        time.sleep(0.01)


PURGE = {
    "b1": ("s1", "BEGIN"),
    "purge1": ("s1", "SELECT idmint.purge_expired_reservations()"),
    "c1": ("s1", "COMMIT"),
    "b2": ("s2", "BEGIN"),
    "conf2": ("s2", "SELECT idmint.confirm_driver_id('drv-001aaa', 'clerk')"),
    "c2": ("s2", "COMMIT"),
}


def status(db: psycopg.Connection) -> list[tuple[str, str]]:
    return db.execute(
        "SELECT driver_id, status FROM idmint.driver_id_ledger WHERE fleet_code = 'AAA'"
    ).fetchall()  # type: ignore[return-value]


def test_confirm_of_active_reservation_vs_purge(perms: Permutations) -> None:
    perms.observer.execute("SELECT idmint.reserve_driver_id('AAA', 'clerk', '1 hour')")
    assert perms.run(PURGE, ["b2", "conf2", "b1", "purge1", "c2", "c1"]) == [
        "s2 b2: ok",
        "s2 conf2: DRV-001AAA",
        "s1 b1: ok",
        "s1 purge1: 0",
        "s2 c2: ok",
        "s1 c1: ok",
    ]
    assert status(perms.observer) == [("DRV-001AAA", "assigned")]


def test_confirm_after_expiry_fails_in_a_transaction_that_began_before(
    perms: Permutations,
) -> None:
    """Expiry is judged by the clock at the call, not by the transaction's start: s2 began
    while the reservation was active, yet its confirmation after the expiry instant fails."""
    obs = perms.observer
    steps = {
        **PURGE,
        "res0": ("s1", "SELECT idmint.reserve_driver_id('AAA', 'clerk', '300 milliseconds')"),
        "now2": ("s2", "SELECT now() < clock_timestamp()"),
        "exp0": ("s1", "SELECT pg_sleep(0.4)"),
    }
    out = perms.run(steps, ["b2", "now2", "res0", "exp0", "conf2", "c2"])
    assert out == [
        "s2 b2: ok",
        "s2 now2: True",
        "s1 res0: DRV-001AAA",
        "s1 exp0: ",
        "s2 conf2: ERROR ID006",
        "s2 c2: ok",
    ]
    assert status(obs) == [("DRV-001AAA", "expired")]


def test_purge_of_expired_reservation_vs_confirm(perms: Permutations) -> None:
    obs = perms.observer
    obs.execute("SELECT idmint.reserve_driver_id('AAA', 'clerk', '1 millisecond')")
    wait_until_expired(obs, "DRV-001AAA")
    assert perms.run(PURGE, ["b1", "purge1", "b2", "conf2", "c1", "c2"]) == [
        "s1 b1: ok",
        "s1 purge1: 1",
        "s2 b2: ok",
        "s2 conf2: <waiting ...>",
        "s1 c1: ok",
        "s2 conf2: <... completed> ERROR ID006",
        "s2 c2: ok",
    ]
    # Nothing was confirmed, so nothing is lost; the number is free again.
    assert status(obs) == []
    assert scalar(obs, "SELECT idmint.next_driver_id('AAA')") == "DRV-001AAA"


# --- release vs confirm -------------------------------------------------------------------

RELEASE = {
    "b1": ("s1", "BEGIN"),
    "rel1": ("s1", "SELECT idmint.release_driver_id('DRV-001AAA', 'clerk')"),
    "c1": ("s1", "COMMIT"),
    "r1": ("s1", "ROLLBACK"),
    "b2": ("s2", "BEGIN"),
    "conf2": ("s2", "SELECT idmint.confirm_driver_id('DRV-001AAA', 'clerk')"),
    "c2": ("s2", "COMMIT"),
}


@pytest.fixture
def reserved(perms: Permutations) -> Permutations:
    perms.observer.execute("SELECT idmint.reserve_driver_id('AAA', 'clerk', '1 hour')")
    return perms


def test_release_then_confirm(reserved: Permutations) -> None:
    assert reserved.run(RELEASE, ["b1", "rel1", "conf2", "c1"]) == [
        "s1 b1: ok",
        "s1 rel1: True",
        "s2 conf2: <waiting ...>",
        "s1 c1: ok",
        "s2 conf2: <... completed> ERROR ID006",
    ]
    assert status(reserved.observer) == []


def test_release_rolled_back_then_confirm(reserved: Permutations) -> None:
    assert reserved.run(RELEASE, ["b1", "rel1", "conf2", "r1"]) == [
        "s1 b1: ok",
        "s1 rel1: True",
        "s2 conf2: <waiting ...>",
        "s1 r1: ok",
        "s2 conf2: <... completed> DRV-001AAA",
    ]
    assert status(reserved.observer) == [("DRV-001AAA", "assigned")]


def test_confirm_then_release(reserved: Permutations) -> None:
    assert reserved.run(RELEASE, ["b2", "conf2", "rel1", "c2"]) == [
        "s2 b2: ok",
        "s2 conf2: DRV-001AAA",
        "s1 rel1: <waiting ...>",
        "s2 c2: ok",
        "s1 rel1: <... completed> ERROR ID007",
    ]
    assert status(reserved.observer) == [("DRV-001AAA", "assigned")]


# --- two bulk calls over overlapping fleets -----------------------------------------------

BULK = {
    "b1": ("s1", "BEGIN"),
    "a1": ("s1", "SELECT idmint.next_driver_ids('AAA', 3)"),
    "bb1": ("s1", "SELECT idmint.next_driver_ids('BBB', 2)"),
    "c1": ("s1", "COMMIT"),
    "b2": ("s2", "BEGIN"),
    "a2": ("s2", "SELECT idmint.next_driver_ids('AAA', 2)"),
    "bb2": ("s2", "SELECT idmint.next_driver_ids('BBB', 3)"),
    "c2": ("s2", "COMMIT"),
}


def test_bulk_calls_over_overlapping_fleets_do_not_deadlock(perms: Permutations) -> None:
    assert perms.run(BULK, ["b1", "b2", "a1", "a2", "bb1", "c1", "bb2", "c2"]) == [
        "s1 b1: ok",
        "s2 b2: ok",
        "s1 a1: DRV-001AAA,DRV-002AAA,DRV-003AAA",
        "s2 a2: <waiting ...>",
        "s1 bb1: DRV-001BBB,DRV-002BBB",
        "s1 c1: ok",
        "s2 a2: <... completed> DRV-004AAA,DRV-005AAA",
        "s2 bb2: DRV-003BBB,DRV-004BBB,DRV-005BBB",
        "s2 c2: ok",
    ]


def test_bulk_calls_in_one_statement_each(perms: Permutations) -> None:
    both = (
        "SELECT idmint.next_driver_ids('AAA', 2) UNION ALL SELECT idmint.next_driver_ids('BBB', 2)"
    )
    steps = {"b1": ("s1", "BEGIN"), "x1": ("s1", both), "c1": ("s1", "COMMIT"), "x2": ("s2", both)}
    assert perms.run(steps, ["b1", "x1", "x2", "c1"]) == [
        "s1 b1: ok",
        "s1 x1: DRV-001AAA,DRV-002AAA,DRV-001BBB,DRV-002BBB",
        "s2 x2: <waiting ...>",
        "s1 c1: ok",
        "s2 x2: <... completed> DRV-003AAA,DRV-004AAA,DRV-003BBB,DRV-004BBB",
    ]


# --- gen vs claim of the same entity number -----------------------------------------------


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_gen_vs_claim_of_the_same_number_exactly_one_wins(perms: Permutations, end: str) -> None:
    """s1 generates a number in an open transaction; s2 claims that very number. The
    number is random, so this one is driven by hand with the same server-side wait."""
    tag = f"{os.getpid()}-gen-{end}"
    s1, s2 = Session("s1", perms.dsn, tag), Session("s2", perms.dsn, tag)
    try:
        s1.conn.execute("BEGIN")
        generated = str(scalar(s1.conn, "SELECT idmint.gen_entity_number('part')"))
        fut = s2.submit(f"SELECT idmint.claim_entity_number('{generated}', 'part')")
        assert not perms._settle(s2, fut, {"s1": s1, "s2": s2}), "the claim must wait"
        s1.conn.execute("COMMIT" if end == "commit" else "ROLLBACK")
        claimed = fut.result(timeout=STEP_TIMEOUT_S)
    finally:
        s1.close()
        s2.close()
    issued = scalar(
        perms.observer, "SELECT count(*) FROM idmint.entity_numbers WHERE number = %s::int",
        [generated],
    )  # fmt: skip
    assert issued == 1  # exactly one of them holds it
    # commit: the generator won and the claim is refused; rollback: the claim won.
    assert claimed == ("ERROR ID004" if end == "commit" else generated)


# --- revision 0.2: stale snapshots, a purge that never waits --------------------------------


def test_repeatable_read_never_skips_a_number_released_before_its_call(
    perms: Permutations,
) -> None:
    """s2's snapshot sees DRV-004AAA reserved; the release commits before s2 allocates. s2
    must take 004 or fail with 40001, never advance the counter to 005."""
    obs = perms.observer
    obs.execute("SELECT idmint.next_driver_ids('AAA', 3)")
    obs.execute("SELECT idmint.reserve_driver_id('AAA', 'form')")
    steps = {
        **ALLOC,
        "rel1": ("s1", "SELECT idmint.release_driver_id('DRV-004AAA', 'form')"),
    }
    out = perms.run(steps, ["b2rr", "snap2", "rel1", "a2", "r2", "a2"])
    assert out[:3] == ["s2 b2rr: ok", "s2 snap2: 4", "s1 rel1: True"]
    assert out[3] in ("s2 a2: ERROR 40001", "s2 a2: DRV-004AAA"), out
    assert out[4:] == ["s2 r2: ok", "s2 a2: DRV-004AAA"]


def test_purge_skips_a_fleet_held_by_an_open_transaction(perms: Permutations) -> None:
    """The purge neither waits for a fleet another transaction holds nor deadlocks with it:
    it skips the fleet, and a later run purges it."""
    obs = perms.observer
    for code in ("AAA", "BBB"):
        rid = scalar(obs, "SELECT idmint.reserve_driver_id(%s, 'x', '1 millisecond')", [code])
        wait_until_expired(obs, str(rid))
    steps = {
        "b1": ("s1", "BEGIN"),
        "holdB": ("s1", "SELECT idmint.next_driver_id('BBB')"),
        "holdA": ("s1", "SELECT idmint.next_driver_id('AAA')"),
        "c1": ("s1", "COMMIT"),
        "b2": ("s2", "BEGIN"),
        "purge2": ("s2", "SELECT idmint.purge_expired_reservations()"),
        "c2": ("s2", "COMMIT"),
    }
    # s1 holds BBB; the purge takes AAA only and does not wait. s1 then asks for AAA,
    # which the purge holds until it commits: s1 waits for the purge, never the reverse.
    assert perms.run(steps, ["b1", "holdB", "b2", "purge2", "holdA", "c2", "c1"]) == [
        "s1 b1: ok",
        "s1 holdB: DRV-001BBB",
        "s2 b2: ok",
        "s2 purge2: 1",
        "s1 holdA: <waiting ...>",
        "s2 c2: ok",
        "s1 holdA: <... completed> DRV-001AAA",
        "s1 c1: ok",
    ]
    assert scalar(obs, "SELECT idmint.purge_expired_reservations()") == 0  # BBB's was reissued
