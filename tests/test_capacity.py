"""Capacity: idmint.fleet_capacity agrees with the ledger; capacity_report projects exhaustion."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.util import raises_sqlstate, scalar, wait_expired


def capacity(db: psycopg.Connection, code: str) -> dict[str, Any]:
    cur = db.execute("SELECT * FROM idmint.fleet_capacity WHERE code = %s", [code])
    names = [c.name for c in cur.description or []]
    row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def assert_matches_ledger(db: psycopg.Connection, code: str) -> dict[str, Any]:
    """fleet_capacity must equal what the ledger says, computed independently in one snapshot."""
    with db.transaction():
        cap = capacity(db, code)
        row = db.execute(
            "SELECT count(*) FILTER (WHERE status = 'assigned'),"
            " count(*) FILTER (WHERE status = 'reserved')"
            " FROM idmint.driver_id_ledger WHERE fleet_code = %s",
            [code],
        ).fetchone()
    assert row is not None
    assigned, reserved = row
    assert (cap["assigned"], cap["reserved"]) == (assigned, reserved)
    assert cap["free"] == cap["max_drivers"] - assigned - reserved
    assert cap["utilization"] == pytest.approx(
        (assigned + reserved) / cap["max_drivers"], abs=1e-12
    )
    return cap


def test_fleet_capacity_follows_the_ledger(db: psycopg.Connection) -> None:
    db.execute("SELECT idmint.add_fleet('Capacity', 'CAP', 10)")
    db.execute("SELECT idmint.add_fleet('Untouched', 'UNT', 5)")
    assert capacity(db, "UNT") | {"fleet_id": None} == {
        "fleet_id": None, "code": "UNT", "name": "Untouched", "max_drivers": 5,
        "assigned": 0, "reserved": 0, "free": 5, "utilization": 0.0,
    }  # fmt: skip

    db.execute("SELECT idmint.next_driver_ids('CAP', 3)")
    assert assert_matches_ledger(db, "CAP")["assigned"] == 3

    keep = str(scalar(db, "SELECT idmint.reserve_driver_id('CAP')"))
    drop = str(scalar(db, "SELECT idmint.reserve_driver_id('CAP')"))
    with db.transaction():
        short = str(scalar(db, "SELECT idmint.reserve_driver_id('CAP', 'test', '1 second')"))
        cap = assert_matches_ledger(db, "CAP")
        assert (cap["assigned"], cap["reserved"], cap["free"]) == (3, 3, 4)
        assert cap["utilization"] == 0.6

    # Expired, not yet purged: counts as free at once.
    wait_expired(db, short)
    cap = assert_matches_ledger(db, "CAP")
    assert (cap["reserved"], cap["free"]) == (2, 5)

    assert scalar(db, "SELECT idmint.release_driver_id(%s)", [drop]) is True
    cap = assert_matches_ledger(db, "CAP")
    assert (cap["reserved"], cap["free"]) == (1, 6)

    assert scalar(db, "SELECT idmint.purge_expired_reservations()") == 1
    cap = assert_matches_ledger(db, "CAP")
    assert (cap["assigned"], cap["reserved"], cap["free"]) == (3, 1, 6)

    assert scalar(db, "SELECT idmint.confirm_driver_id(%s)", [keep]) == keep
    cap = assert_matches_ledger(db, "CAP")
    assert (cap["assigned"], cap["reserved"], cap["free"]) == (4, 0, 6)

    # The released and purged numbers are handed out again; then the fleet fills up.
    db.execute("SELECT idmint.next_driver_ids('CAP', 6)")
    cap = assert_matches_ledger(db, "CAP")
    assert (cap["assigned"], cap["reserved"], cap["free"], cap["utilization"]) == (10, 0, 0, 1.0)
    assert capacity(db, "UNT")["free"] == 5


def test_fleet_capacity_skips_the_ledger_for_fleets_with_nothing_reserved(
    db: psycopg.Connection,
) -> None:
    """Cheap by design: only fleets with unassigned numbers look at driver_numbers."""
    db.execute("SELECT idmint.add_fleet('Plain', 'PLN', 10)")
    db.execute("SELECT idmint.add_fleet('Busy', 'BSY', 10)")
    db.execute("SELECT idmint.next_driver_ids('PLN', 4)")
    db.execute("SELECT idmint.reserve_driver_id('BSY')")

    def ledger_scans(code: str) -> int:
        plan = scalar(
            db,
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM idmint.fleet_capacity WHERE code = %s",
            [code],
        )
        loops: list[int] = []

        def walk(node: dict[str, Any]) -> None:
            if node.get("Relation Name") == "driver_numbers":
                loops.append(node["Actual Loops"])
            for child in node.get("Plans", []):
                walk(child)

        walk((plan if isinstance(plan, list) else json.loads(str(plan)))[0]["Plan"])
        assert len(loops) == 1, loops
        return loops[0]

    assert ledger_scans("PLN") == 0
    assert ledger_scans("BSY") == 1


def report(
    db: psycopg.Connection, window: str | None = None
) -> tuple[datetime, dict[tuple[str, str], Any]]:
    """capacity_report rows by (scope, key), and now() of the same transaction."""
    with db.transaction():
        now = scalar(db, "SELECT now()")
        if window is None:
            cur = db.execute("SELECT * FROM idmint.capacity_report()")
        else:
            cur = db.execute("SELECT * FROM idmint.capacity_report(%s::interval)", [window])
        names = [c.name for c in cur.description or []]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert isinstance(now, datetime)
    return now, {(r["scope"], r["key"]): r for r in rows}


def test_capacity_report_projects_exhaustion(db: psycopg.Connection) -> None:
    db.execute("SELECT idmint.add_fleet('Fast', 'FST', 100)")
    db.execute("SELECT idmint.add_fleet('Idle', 'DLE', 50)")
    db.execute("SELECT idmint.add_fleet('Full', 'FUL', 3)")
    db.execute("SELECT idmint.next_driver_ids('FST', 14)")
    db.execute("SELECT idmint.reserve_driver_id('FST')")
    db.execute("SELECT idmint.next_driver_ids('FUL', 3)")
    # The fleets are older than every window below: rates are over the whole window.
    db.execute("UPDATE idmint.fleets SET created_at = now() - interval '60 days'")
    # Idle's ids were issued long ago: outside every window below.
    db.execute("SELECT idmint.next_driver_ids('DLE', 5)")
    db.execute(
        "UPDATE idmint.driver_numbers SET assigned_at = now() - interval '30 days'"
        " WHERE fleet_id = (SELECT fleet_id FROM idmint.fleets WHERE code = 'DLE')"
    )
    # Four of Fast's ids were issued three days ago: inside 7 days, outside 1 day.
    db.execute(
        "UPDATE idmint.driver_numbers SET assigned_at = now() - interval '3 days'"
        " WHERE fleet_id = (SELECT fleet_id FROM idmint.fleets WHERE code = 'FST') AND number <= 4"
    )

    now, rows = report(db)
    fast = rows[("fleet", "FST")]
    assert fast == fast | {
        "name": "Fast", "capacity": 100, "used": 14, "reserved": 1, "free": 85, "utilization": 0.15,
    }  # fmt: skip
    assert fast["per_day"] == pytest.approx(14 / 7)
    assert fast["exhausted_at"] - now == pytest.approx(
        timedelta(days=85 / 2), abs=timedelta(milliseconds=1)
    )

    idle = rows[("fleet", "DLE")]
    assert (idle["used"], idle["free"], idle["per_day"], idle["exhausted_at"]) == (5, 45, 0.0, None)

    full = rows[("fleet", "FUL")]
    assert (full["free"], full["utilization"], full["exhausted_at"]) == (0, 1.0, now)

    now, rows = report(db, "1 day")
    fast = rows[("fleet", "FST")]
    assert fast["per_day"] == pytest.approx(10.0)
    assert fast["exhausted_at"] - now == pytest.approx(
        timedelta(days=8.5), abs=timedelta(milliseconds=1)
    )

    now, rows = report(db, "12 hours")
    assert rows[("fleet", "FST")]["per_day"] == pytest.approx(20.0)


def test_capacity_report_covers_every_fleet_and_entity_type(db: psycopg.Connection) -> None:
    db.execute("SELECT idmint.add_fleet('B fleet', 'BBB', 10)")
    db.execute("SELECT idmint.add_fleet('A fleet', 'AAA', 10)")
    # 'part': 700 numbers now, 300 four days ago; 'material': 50, all thirty days ago.
    db.execute("SELECT idmint.gen_entity_numbers('part', 300)")
    db.execute("SELECT idmint.gen_entity_numbers('material', 50)")
    db.execute(
        "UPDATE idmint.entity_numbers SET issued_at = now() - interval '4 days'"
        " WHERE number / 1000000 = 1"
    )
    db.execute(
        "UPDATE idmint.entity_numbers SET issued_at = now() - interval '30 days'"
        " WHERE number / 1000000 = 2"
    )
    db.execute("SELECT idmint.gen_entity_numbers('part', 699)")
    db.execute("SELECT idmint.claim_entity_number('1000001')")
    # The types are older than every window below: rates are over the whole window.
    db.execute("UPDATE idmint.entity_ranges SET created_at = now() - interval '60 days'")

    now, rows = report(db)
    keys = list(rows)
    assert keys[:2] == [("fleet", "AAA"), ("fleet", "BBB")]
    entities = {k[1]: v for k, v in rows.items() if k[0] == "entity"}
    assert keys[2:] == [("entity", k) for k in sorted(entities)]
    types: dict[str, str] = dict(
        db.execute("SELECT prefix::text, name FROM idmint.entity_types").fetchall()
    )
    assert set(entities) == set(types)
    for key, row in entities.items():
        assert (row["name"], row["capacity"], row["reserved"]) == (types[key], 1_000_000, 0)
        assert row["free"] == 1_000_000 - row["used"]
        assert row["utilization"] == pytest.approx(row["used"] / 1_000_000)

    part = entities["1"]
    assert (part["used"], part["per_day"]) == (1000, pytest.approx(1000 / 7))
    assert part["exhausted_at"] - now == pytest.approx(
        timedelta(days=999_000 / (1000 / 7)), abs=timedelta(milliseconds=5)
    )
    material = entities["2"]
    assert (material["used"], material["per_day"], material["exhausted_at"]) == (50, 0.0, None)
    assert (entities["3"]["used"], entities["3"]["per_day"], entities["3"]["exhausted_at"]) == (
        0,
        0.0,
        None,
    )

    _, rows = report(db, "2 days")
    assert rows[("entity", "1")]["per_day"] == pytest.approx(700 / 2)


def per_day(n: int, now: datetime, since: datetime) -> float:
    """n allocations over the time from `since` to `now` (at least a second), per day."""
    return n / (max((now - since).total_seconds(), 1.0) / 86400)


def test_projection_divides_by_the_part_of_the_window_a_scope_existed(
    db: psycopg.Connection,
) -> None:
    """A fleet created just now with 7 ids does not show 7 ids / 7 days = 1.00/day."""
    db.execute("SELECT idmint.add_fleet('New', 'NEW', 100)")
    db.execute("SELECT idmint.next_driver_ids('NEW', 7)")
    db.execute("SELECT idmint.add_fleet('Two days', 'DYS', 100)")
    db.execute("UPDATE idmint.fleets SET created_at = now() - interval '2 days' WHERE code = 'DYS'")
    db.execute("SELECT idmint.next_driver_ids('DYS', 8)")
    db.execute("SELECT idmint.add_entity_type(7, 'invoice')")
    db.execute("SELECT idmint.gen_entity_numbers('invoice', 30)")
    # Ids backdated before the fleet's creation (an import): the fleet counts from the first.
    db.execute("SELECT idmint.add_fleet('Imported', 'MPT', 100)")
    db.execute("SELECT idmint.next_driver_ids('MPT', 6)")
    db.execute(
        "UPDATE idmint.driver_numbers SET assigned_at = now() - interval '3 days'"
        " WHERE fleet_id = (SELECT fleet_id FROM idmint.fleets WHERE code = 'MPT')"
    )
    created = dict(db.execute("SELECT code, created_at FROM idmint.fleets").fetchall())
    invoice_created = scalar(db, "SELECT created_at FROM idmint.entity_ranges WHERE prefix = 7")
    assert isinstance(invoice_created, datetime)

    now, rows = report(db)
    new = rows[("fleet", "NEW")]
    assert new["per_day"] == pytest.approx(per_day(7, now, created["NEW"]), rel=1e-9)
    assert new["per_day"] > 7  # younger than a day
    assert new["exhausted_at"] - now == pytest.approx(
        timedelta(days=93 / new["per_day"]), abs=timedelta(milliseconds=1)
    )
    assert rows[("fleet", "DYS")]["per_day"] == pytest.approx(8 / 2, rel=1e-4)
    assert rows[("fleet", "MPT")]["per_day"] == pytest.approx(6 / 3, rel=1e-4)
    invoice = rows[("entity", "7")]
    assert invoice["per_day"] == pytest.approx(per_day(30, now, invoice_created), rel=1e-9)

    # Over one day, the two-day-old fleet's rate is that day's: all 8 are in it.
    _, rows = report(db, "1 day")
    assert rows[("fleet", "DYS")]["per_day"] == pytest.approx(8.0)
    assert rows[("fleet", "MPT")]["per_day"] == 0.0

    # Created in the very transaction that asks: a rate over one second, not a division by 0.
    with db.transaction():
        db.execute("SELECT idmint.add_fleet('Same', 'SME', 100)")
        db.execute("SELECT idmint.next_driver_ids('SME', 2)")
        row = db.execute(
            "SELECT per_day FROM idmint.capacity_report() WHERE key = 'SME'"
        ).fetchone()
    assert row == (2 * 86400.0,)


@pytest.mark.parametrize(
    "window", [None, "0 seconds", "-1 day", "1 month -31 days", "1001 years", "200000 years"]
)
def test_capacity_report_rejects_a_bad_window(db: psycopg.Connection, window: str | None) -> None:
    with raises_sqlstate("ID003"):
        db.execute("SELECT * FROM idmint.capacity_report(%s::interval)", [window])
