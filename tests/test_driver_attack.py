"""Adversarial review of the driver-id path after issue 14 (the hot-path rewrite).

Each test is a defect found by calling only the public functions as an application role
that is a member of idmint_user alone. Each fails on the code it was written against and
passes once the defect is fixed (whichever of the two documented outcomes a fix picks).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from tests.conftest import unique_role
from tests.util import table_snapshot


@pytest.fixture
def user(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection]
) -> Iterator[psycopg.Connection]:
    """An application role that is a member of idmint_user only, owning schema `app`;
    fleet ATK (max_drivers 5) exists."""
    db.execute("SELECT idmint.add_fleet('Attack', 'ATK', 5)")
    role = unique_role(db, "idmint_attack")
    db.execute(sql.SQL("GRANT idmint_user TO {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(role)))
    conn = connect(user=role)
    yield conn
    conn.close()
    db.execute("DROP SCHEMA app CASCADE")
    db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _reserve_or_id003(
    db: psycopg.Connection, user: psycopg.Connection, ttl: str
) -> tuple[str, object, object] | None:
    """reserve_driver_id with this ttl: None if refused with ID003 (and nothing written),
    else (id, reserved_at, expires_at) as stored."""
    before = table_snapshot(db)
    try:
        row = user.execute(
            "SELECT idmint.reserve_driver_id('ATK', 'me', %s::interval)", [ttl]
        ).fetchone()
    except psycopg.Error as e:
        assert e.sqlstate == "ID003", f"{e.sqlstate}: {e}"
        assert table_snapshot(db) == before
        return None
    assert row is not None
    rid = row[0]
    stored = db.execute(
        "SELECT reserved_at, expires_at FROM idmint.driver_id_ledger WHERE driver_id = %s", [rid]
    ).fetchone()
    assert stored is not None
    return rid, stored[0], stored[1]


# Contract §3: "ttl must be positive and at most 1 day"; "a reservation lives its full ttl
# from the call that makes it". The range check compares intervals (a month counts as 30
# days, a year as 360), but expires_at adds calendar months and years: a ttl the check
# accepts can hold a number for days or years.
@pytest.mark.parametrize("ttl", ["1 year -359 days", "100 years -35999 days"])
def test_a_ttl_the_range_check_accepts_never_holds_a_number_longer_than_a_day(
    db: psycopg.Connection, user: psycopg.Connection, ttl: str
) -> None:
    got = _reserve_or_id003(db, user, ttl)
    if got is not None:
        _, reserved_at, expires_at = got
        held = db.execute(
            "SELECT %s::timestamptz - %s::timestamptz", [expires_at, reserved_at]
        ).fetchone()
        assert held is not None
        ok = db.execute(
            "SELECT %s::interval > interval '0' AND %s::interval <= interval '1 day'",
            [held[0], held[0]],
        ).fetchone()
        assert ok == (True,), f"ttl {ttl!r} accepted, but the reservation is held for {held[0]}"


# The other direction: a ttl that passes as positive is applied as negative, so
# reserve_driver_id returns an id that is born expired and can never be confirmed.
@pytest.mark.parametrize("ttl", ["-1 year +360 days +1 hour", "-1 year +361 days"])
def test_a_ttl_the_range_check_accepts_never_makes_a_reservation_born_expired(
    db: psycopg.Connection, user: psycopg.Connection, ttl: str
) -> None:
    got = _reserve_or_id003(db, user, ttl)
    if got is not None:
        rid, reserved_at, expires_at = got
        assert expires_at > reserved_at, (
            f"ttl {ttl!r}: reserved at {reserved_at}, expires at {expires_at}"
        )
        row = user.execute("SELECT idmint.confirm_driver_id(%s, 'me')", [rid]).fetchone()
        assert row == (rid,)


# Contract §1: every bad input gets a documented ID00x SQLSTATE. A long request_key
# overflows the btree entry of the unique index driver_numbers_request_key: 54000
# "index row size ... exceeds btree version 4 maximum 2704", naming an internal index.
@pytest.mark.parametrize("fleet", ["ATK", "atk"])
def test_a_request_key_too_long_to_index_is_id003_and_writes_nothing(
    db: psycopg.Connection, user: psycopg.Connection, fleet: str
) -> None:
    key = secrets.token_hex(3200)  # 6400 characters that do not compress
    before = table_snapshot(db)
    with pytest.raises(psycopg.Error) as info:
        user.execute("SELECT idmint.next_driver_id(%s, %s)", [fleet, key])
    assert info.value.sqlstate == "ID003", f"{info.value.sqlstate}: {info.value}"
    assert table_snapshot(db) == before
