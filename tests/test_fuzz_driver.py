"""Hypothesis fuzz of every fleet/driver-id function: arbitrary text, ints, NULLs, huge values.

Only ID00x (idmint's own) or 22xxx (data exception, e.g. a text that is no interval)
SQLSTATEs may come back, never XX000 or P0001, and a failing call writes nothing.
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.util import fuzz_texts, table_snapshot

VALID_LOOKING = [
    "ABC",
    "abc",
    "XYZ",
    "DRV-001ABC",
    "drv-002abc",
    "DRV-999ABC",
    "DRV-000ABC",
    "5 minutes",
    "-1 second",
    "2 days",
    "00000000-0000-0000-0000-000000000000",
    "ABC'; DROP TABLE idmint.fleets; --",
]
texts = fuzz_texts(VALID_LOOKING)
ints = (
    st.none()
    | st.integers(-(2**31), 2**31 - 1)
    | st.integers(-(10**30), 10**30)
    | st.sampled_from([0, 1, 5, 999, 1000])
)

CALLS = {
    "add_fleet": ("SELECT idmint.add_fleet(%s::text, %s::text, %s::int)", (texts, texts, ints)),
    "add_fleet_uuid": ("SELECT idmint.add_fleet(%s::text, NULL, 10, %s::uuid)", (texts, texts)),
    "next_driver_id": ("SELECT idmint.next_driver_id(%s::text, %s::text)", (texts, texts)),
    "next_driver_id_uuid": ("SELECT idmint.next_driver_id(%s::uuid)", (texts,)),
    "next_driver_ids": ("SELECT idmint.next_driver_ids(%s::text, %s::int)", (texts, ints)),
    "reserve_driver_id": (
        "SELECT idmint.reserve_driver_id(%s::text, %s::text, %s::interval)",
        (texts, texts, texts),
    ),
    "confirm_driver_id": ("SELECT idmint.confirm_driver_id(%s::text)", (texts,)),
    "release_driver_id": ("SELECT idmint.release_driver_id(%s::text)", (texts,)),
    "reset_driver_sequence": (
        "SELECT idmint.reset_driver_sequence(%s::text, %s::int)",
        (texts, ints),
    ),
    "is_valid_driver_id": ("SELECT idmint.is_valid_driver_id(%s::text)", (texts,)),
    "parse_driver_id": ("SELECT * FROM idmint.parse_driver_id(%s::text)", (texts,)),
    "gen_fleet_code": ("SELECT idmint.gen_fleet_code()", ()),
    "purge_expired_reservations": ("SELECT idmint.purge_expired_reservations()", ()),
}


def allowed(sqlstate: str | None) -> bool:
    return sqlstate is not None and (
        sqlstate in {f"ID00{i}" for i in range(1, 9)} or sqlstate.startswith("22")
    )


@pytest.mark.parametrize("name", sorted(CALLS))
def test_fuzz(db: psycopg.Connection, name: str) -> None:
    db.execute("SELECT idmint.add_fleet('North', 'ABC', 20)")
    db.execute("SELECT idmint.next_driver_ids('ABC', 2)")
    db.execute("SELECT idmint.reserve_driver_id('ABC')")
    query, strategies = CALLS[name]

    @settings(
        max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(st.tuples(*strategies))
    def run(args: tuple[object, ...]) -> None:
        before = table_snapshot(db)
        try:
            db.execute(query, list(args))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            assert allowed(exc.sqlstate), f"{name}{args!r} -> {exc.sqlstate}: {exc}"
            assert table_snapshot(db) == before, f"{name}{args!r} failed but wrote"

    run()
