"""NOTIFY idmint_capacity: exactly one payload per fleet threshold (0.8, 0.9, 1.0) crossed.

Notifications are delivered at commit, in commit order. After the calls under test the
writer sends a marker on the same channel; everything before the marker is what those
calls sent, so no test waits for "nothing more to come".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.util import Connect, raises_sqlstate, scalar, wait_expired

Drain = Callable[[], list[tuple[float, float]]]


@pytest.fixture
def drain(db: psycopg.Connection, connect: Connect) -> Drain:
    listener = connect()
    listener.execute("LISTEN idmint_capacity")

    def _drain() -> list[tuple[float, float]]:
        """(threshold, utilization) of every payload sent since the last drain."""
        marker = f"marker-{uuid.uuid4()}"
        db.execute("SELECT pg_notify('idmint_capacity', %s)", [marker])
        got: list[dict[str, Any]] = []
        for note in listener.notifies(timeout=30):
            if note.payload == marker:
                for p in got:
                    assert set(p) == {"scope", "key", "utilization", "threshold"}, p
                    assert p["scope"] == "fleet"
                return [(p["threshold"], p["utilization"]) for p in got]
            got.append(json.loads(note.payload))
            assert note.pid != listener.info.backend_pid
        raise AssertionError("the marker notification never arrived")

    _drain()
    return _drain


def test_single_allocations_notify_at_8_9_10_only(db: psycopg.Connection, connect: Connect) -> None:
    listener = connect()
    listener.execute("LISTEN idmint_capacity")
    db.execute("SELECT idmint.add_fleet('Notify', 'NTF', 10)")
    db.execute("SELECT idmint.add_fleet('Quiet', 'QTE', 999)")
    db.execute("SELECT idmint.next_driver_ids('QTE', 500)")
    for _ in range(10):
        db.execute("SELECT idmint.next_driver_id('NTF')")
    with raises_sqlstate("ID001"):
        db.execute("SELECT idmint.next_driver_id('NTF')")
    db.execute("NOTIFY idmint_capacity, 'end'")
    payloads = []
    for note in listener.notifies(timeout=30):
        if note.payload == "end":
            break
        payloads.append(note.payload)
    else:
        raise AssertionError("the end marker never arrived")
    # The exact JSON: keys, types and values.
    assert [json.loads(p) for p in payloads] == [
        {"scope": "fleet", "key": "NTF", "utilization": 0.8, "threshold": 0.8},
        {"scope": "fleet", "key": "NTF", "utilization": 0.9, "threshold": 0.9},
        {"scope": "fleet", "key": "NTF", "utilization": 1.0, "threshold": 1.0},
    ]


def test_each_call_sends_only_the_thresholds_it_crosses(
    db: psycopg.Connection, drain: Drain
) -> None:
    db.execute("SELECT idmint.add_fleet('Steps', 'STP', 10)")
    sent = []
    for _ in range(10):
        db.execute("SELECT idmint.next_driver_id('STP')")
        sent.append(drain())
    assert sent == [[]] * 7 + [[(0.8, 0.8)], [(0.9, 0.9)], [(1.0, 1.0)]]


def test_dropping_below_and_crossing_again_notifies_again(
    db: psycopg.Connection, drain: Drain
) -> None:
    db.execute("SELECT idmint.add_fleet('Again', 'AGN', 10)")
    db.execute("SELECT idmint.next_driver_ids('AGN', 7)")
    assert drain() == []
    db.execute("SELECT idmint.reserve_driver_id('AGN')")
    assert drain() == [(0.8, 0.8)]
    second = scalar(db, "SELECT idmint.reserve_driver_id('AGN')")
    assert drain() == [(0.9, 0.9)]

    # A release drops below 0.9: the next reservation crosses it anew (0.8 was never left).
    assert scalar(db, "SELECT idmint.release_driver_id(%s)", [second]) is True
    assert drain() == []
    db.execute("SELECT idmint.reserve_driver_id('AGN')")
    assert drain() == [(0.9, 0.9)]

    # Expiry drops below 1.0 without any call; reissuing the number reaches it again.
    short = str(scalar(db, "SELECT idmint.reserve_driver_id('AGN', 'test', '1 millisecond')"))
    assert drain() == [(1.0, 1.0)]
    wait_expired(db, short)
    assert scalar(db, "SELECT idmint.next_driver_id('AGN')") == short
    assert drain() == [(1.0, 1.0)]

    # Full, and staying full: nothing more.
    with raises_sqlstate("ID001"):
        db.execute("SELECT idmint.reserve_driver_id('AGN')")
    assert drain() == []


def test_a_bulk_call_sends_one_payload_per_threshold(db: psycopg.Connection, drain: Drain) -> None:
    db.execute("SELECT idmint.add_fleet('Bulk', 'BLK', 10)")
    db.execute("SELECT idmint.next_driver_ids('BLK', 10)")
    assert drain() == [(0.8, 1.0), (0.9, 1.0), (1.0, 1.0)]

    db.execute("SELECT idmint.add_fleet('Bulk two', 'BL2', 10)")
    db.execute("SELECT idmint.next_driver_ids('BL2', 7)")
    assert drain() == []
    db.execute("SELECT idmint.next_driver_ids('BL2', 2)")
    assert drain() == [(0.8, 0.9), (0.9, 0.9)]


def test_a_rolled_back_call_notifies_nobody(db: psycopg.Connection, drain: Drain) -> None:
    db.execute("SELECT idmint.add_fleet('Undo', 'UND', 10)")
    db.execute("SELECT idmint.next_driver_ids('UND', 7)")
    assert drain() == []
    with db.transaction(force_rollback=True):
        db.execute("SELECT idmint.next_driver_ids('UND', 3)")
    assert drain() == []
    db.execute("SELECT idmint.next_driver_id('UND')")
    assert drain() == [(0.8, 0.8)]
