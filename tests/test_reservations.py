"""Reservations: the holder rule and wall-clock expiry (contract §3, revision 0.2)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.util import Connect, raises_sqlstate, scalar, wait_expired, wait_until_blocked


@pytest.fixture
def fleet(db: psycopg.Connection) -> str:
    db.execute("SELECT idmint.add_fleet('North', 'ABC')")
    return "ABC"


def test_a_late_confirm_never_takes_over_another_holders_reservation(
    db: psycopg.Connection, fleet: str
) -> None:
    alice = str(scalar(db, "SELECT idmint.reserve_driver_id('ABC', 'alice', '300 milliseconds')"))
    wait_expired(db, alice)
    bob = scalar(db, "SELECT idmint.reserve_driver_id('ABC', 'bob', '5 minutes')")
    assert alice == bob == "DRV-001ABC"
    for holder in (None, "alice"):
        with raises_sqlstate("ID006"):
            db.execute("SELECT idmint.confirm_driver_id(%s, %s)", [alice, holder])
        assert scalar(db, "SELECT idmint.release_driver_id(%s, %s)", [alice, holder]) is False
    assert scalar(db, "SELECT idmint.confirm_driver_id(%s, 'bob')", [bob]) == bob
    # After the confirm too: the id answers only to its holder.
    assert scalar(db, "SELECT idmint.confirm_driver_id(%s, 'bob')", [bob]) == bob
    for holder in (None, "alice"):
        with raises_sqlstate("ID006"):
            db.execute("SELECT idmint.confirm_driver_id(%s, %s)", [bob, holder])


def test_a_reservation_made_without_a_holder_answers_to_any_call(
    db: psycopg.Connection, fleet: str
) -> None:
    """Contract §3: one made without an explicit reserved_by can be confirmed by any call."""
    rid = str(scalar(db, "SELECT idmint.reserve_driver_id('ABC')"))
    assert scalar(db, "SELECT idmint.confirm_driver_id(%s, 'anyone')", [rid]) == rid
    assert scalar(db, "SELECT idmint.confirm_driver_id(%s)", [rid]) == rid
    assert scalar(db, "SELECT idmint.confirm_driver_id(%s, 'someone else')", [rid]) == rid
    other = str(scalar(db, "SELECT idmint.reserve_driver_id('ABC')"))
    assert scalar(db, "SELECT idmint.release_driver_id(%s, 'anyone')", [other]) is True
    third = str(scalar(db, "SELECT idmint.reserve_driver_id('ABC')"))
    assert scalar(db, "SELECT idmint.release_driver_id(%s)", [third]) is True


@pytest.mark.parametrize("taker", ["next_driver_id('ABC')", "reserve_driver_id('ABC')"])
def test_an_expired_holder_never_gets_the_number_someone_took_without_a_holder(
    db: psycopg.Connection, fleet: str, taker: str
) -> None:
    alice = str(scalar(db, "SELECT idmint.reserve_driver_id('ABC', 'alice', '300 milliseconds')"))
    wait_expired(db, alice)
    assert scalar(db, f"SELECT idmint.{taker}") == alice
    with raises_sqlstate("ID006"):
        db.execute("SELECT idmint.confirm_driver_id(%s, 'alice')", [alice])
    assert scalar(db, "SELECT idmint.release_driver_id(%s, 'alice')", [alice]) is False


def test_a_reservation_made_after_waiting_for_the_fleet_lives_its_full_ttl(
    connect: Connect, fleet: str
) -> None:
    holder = connect(autocommit=False)
    holder.execute("SELECT idmint.next_driver_id('ABC')")
    waiter = connect()
    with ThreadPoolExecutor(1) as pool:
        reserved = pool.submit(
            lambda: scalar(waiter, "SELECT idmint.reserve_driver_id('ABC', 'bob', '1 second')")
        )
        wait_until_blocked(connect(), waiter.info.backend_pid)
        time.sleep(1.2)  # longer than the ttl, while the call waits for the fleet
        holder.commit()
        rid = reserved.result(timeout=30)
    assert scalar(waiter, "SELECT idmint.confirm_driver_id(%s, 'bob')", [rid]) == rid


def test_a_reservation_lives_its_full_ttl_from_the_call_that_makes_it(
    connect: Connect, fleet: str
) -> None:
    tx = connect(autocommit=False)
    tx.execute("SELECT pg_sleep(0.6)")  # the transaction started well before the call
    rid = scalar(tx, "SELECT idmint.reserve_driver_id('ABC', 'late', '1 second')")
    row = tx.execute(
        "SELECT status, expires_at - clock_timestamp() > interval '0.5 seconds',"
        " expires_at - reserved_at FROM idmint.driver_id_ledger WHERE driver_id = %s",
        [rid],
    ).fetchone()
    assert row is not None and row[:2] == ("reserved", True) and str(row[2]) == "0:00:01"
    assert scalar(tx, "SELECT idmint.confirm_driver_id(%s, 'late')", [rid]) == rid
    tx.commit()
