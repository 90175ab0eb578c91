"""One table maps SQLSTATE -> exception class: every code idmint can raise has a class, and
each one, raised by the real SQL functions, arrives as that class."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest

import idmint
from idmint.errors import ERRORS, RETRYABLE_SQLSTATES
from tests.util import Connect, table_snapshot

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
ID_CLASSES = {
    "ID001": idmint.FleetCapacityError,
    "ID002": idmint.UnknownFleetError,
    "ID003": idmint.InvalidArgumentError,
    "ID004": idmint.AlreadyTakenError,
    "ID005": idmint.EntityRangeExhaustedError,
    "ID006": idmint.ReservationNotActiveError,
    "ID007": idmint.ImmutableIdError,
    "ID008": idmint.UnknownEntityTypeError,
}


def sql_sources() -> str:
    return "\n".join(p.read_text() for p in sorted(SQL_DIR.glob("*.sql")))


# --- the table is complete -------------------------------------------------------------


def test_every_registered_code_has_its_class(db: psycopg.Connection) -> None:
    rows = db.execute("SELECT sqlstate, name FROM idmint.error_codes ORDER BY 1").fetchall()
    assert len(rows) >= 8
    for sqlstate, name in rows:
        cls = ERRORS.get(sqlstate)
        assert cls is not None, f"{sqlstate} ({name}) has no exception class"
        assert issubclass(cls, idmint.IdmintError)
        assert (cls.code, cls.name) == (sqlstate, name)
    # ... and no class stands for a code the database does not know.
    registered = {s for s, _ in rows}
    assert {code for code in ERRORS if code.startswith("ID")} == registered


def test_every_error_raised_in_sql_has_a_class(db: psycopg.Connection) -> None:
    source = sql_sources()
    names = set(re.findall(r"_error\(\s*'([a-z_]+)'", source))
    assert {"unknown_fleet", "invalid_argument", "already_taken"} <= names  # the grep works
    registered = dict(db.execute("SELECT name, sqlstate FROM idmint.error_codes").fetchall())
    for name in sorted(names):
        assert name in registered, f"idmint._error('{name}', ...) names no registered code"
        assert ERRORS[registered[name]].name == name
    # Literal class-ID SQLSTATEs anywhere in sql/ (ERRCODE = 'ID...', SQLSTATE 'ID...').
    for code in set(re.findall(r"'(ID[0-9]{3})'", source)):
        assert code in ERRORS, f"{code} appears in sql/ but has no exception class"


def test_the_table() -> None:
    assert dict(ERRORS) == {
        **ID_CLASSES,
        **dict.fromkeys(RETRYABLE_SQLSTATES, idmint.ConcurrencyError),
    }
    assert {"40001", "40P01", "55P03"} == RETRYABLE_SQLSTATES
    assert len(set(ID_CLASSES.values())) == 8
    assert issubclass(idmint.ConcurrencyError, idmint.IdmintError)


# --- each SQLSTATE, raised for real -----------------------------------------------------


@pytest.fixture
def mint(dsn: str) -> idmint.IdMint:
    m = idmint.IdMint(dsn)
    m.add_fleet("Tiny", code="ABC", max_drivers=1)
    m.next_driver_id("ABC")
    return m


def check(info: pytest.ExceptionInfo[idmint.IdmintError], sqlstate: str) -> None:
    err = info.value
    assert type(err) is ID_CLASSES[sqlstate]
    assert err.sqlstate == sqlstate == type(err).code
    assert isinstance(err.__cause__, psycopg.Error)
    assert err.__cause__.sqlstate == sqlstate
    assert str(err) == err.__cause__.diag.message_primary


def test_id001_fleet_capacity(mint: idmint.IdMint, db: psycopg.Connection) -> None:
    before = table_snapshot(db)
    with pytest.raises(idmint.FleetCapacityError) as info:
        mint.next_driver_id("ABC")
    check(info, "ID001")
    assert "ABC" in str(info.value) and info.value.hint
    assert table_snapshot(db) == before


def test_id002_unknown_fleet(mint: idmint.IdMint) -> None:
    with pytest.raises(idmint.UnknownFleetError) as info:
        mint.next_driver_id("ZZZ")
    check(info, "ID002")
    assert "ZZZ" in str(info.value)
    with pytest.raises(idmint.UnknownFleetError):
        mint.reserve_driver_id(uuid.uuid4())


def test_id003_invalid_argument(mint: idmint.IdMint) -> None:
    with pytest.raises(idmint.InvalidArgumentError) as info:
        mint.parse_driver_id(" DRV-001ABC")
    check(info, "ID003")
    with pytest.raises(idmint.InvalidArgumentError):
        mint.next_driver_ids("ABC", 0)
    with pytest.raises(idmint.InvalidArgumentError):
        mint.add_fleet("Bad", code="AB0")
    with pytest.raises(idmint.InvalidArgumentError):
        mint.gen_entity_numbers("part", 0)
    with pytest.raises(idmint.InvalidArgumentError):
        mint.gen_entity_number(0)


def test_id004_already_taken(mint: idmint.IdMint) -> None:
    with pytest.raises(idmint.AlreadyTakenError) as info:
        mint.add_fleet("Again", code="abc")
    check(info, "ID004")
    number = mint.gen_entity_number("part")
    with pytest.raises(idmint.AlreadyTakenError):
        mint.claim_entity_number(number)
    with pytest.raises(idmint.AlreadyTakenError):
        mint.add_entity_type(1, "parts")


def test_id005_no_fleet_code_left(mint: idmint.IdMint, db: psycopg.Connection) -> None:
    # Take every one of the 32 768 codes.
    db.execute(
        "INSERT INTO idmint.fleets (fleet_id, code, name, max_drivers)"
        " SELECT gen_random_uuid(), a || b || c, 'filler', 1"
        " FROM regexp_split_to_table('ABCDEFGHJKLMNPQRSTUVWXYZ23456789', '') a,"
        "      regexp_split_to_table('ABCDEFGHJKLMNPQRSTUVWXYZ23456789', '') b,"
        "      regexp_split_to_table('ABCDEFGHJKLMNPQRSTUVWXYZ23456789', '') c"
        " ON CONFLICT DO NOTHING"
    )
    with pytest.raises(idmint.EntityRangeExhaustedError) as info:
        mint.gen_fleet_code()
    check(info, "ID005")
    with pytest.raises(idmint.EntityRangeExhaustedError):
        mint.add_fleet("One too many")


def test_id006_reservation_not_active(mint: idmint.IdMint) -> None:
    mint.add_fleet("Roomy", code="DEF")
    with pytest.raises(idmint.ReservationNotActiveError) as info:
        mint.confirm_driver_id("DRV-005DEF")
    check(info, "ID006")
    rid = mint.reserve_driver_id("DEF")
    assert mint.release_driver_id(rid)
    with pytest.raises(idmint.ReservationNotActiveError):
        mint.confirm_driver_id(rid)


def test_id007_immutable_id(mint: idmint.IdMint) -> None:
    with pytest.raises(idmint.ImmutableIdError) as info:
        mint.release_driver_id("DRV-001ABC")
    check(info, "ID007")


def test_id008_unknown_entity_type(mint: idmint.IdMint) -> None:
    with pytest.raises(idmint.UnknownEntityTypeError) as info:
        mint.gen_entity_numbers("widget", 1)
    check(info, "ID008")
    assert "widget" in str(info.value)
    with pytest.raises(idmint.UnknownEntityTypeError):
        mint.gen_entity_number(9)
    with pytest.raises(idmint.UnknownEntityTypeError):
        mint.claim_entity_number("9000001")


def test_other_sqlstates_propagate_as_psycopg_errors(
    mint: idmint.IdMint, dsn: str, db: psycopg.Connection, connect: Connect
) -> None:
    """A role without idmint_user gets 42501 as psycopg's own InsufficientPrivilege."""
    role = f"facade_nobody_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE ROLE {role} LOGIN")
    try:
        outsider = idmint.IdMint(psycopg.conninfo.make_conninfo(dsn, user=role))
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            outsider.next_driver_id("ABC")
        assert not isinstance(info.value, idmint.IdmintError)
        assert info.value.__cause__ is None  # raised as is, not chained to itself
        db.execute(f"GRANT idmint_user TO {role}")
        assert outsider.is_valid_driver_id("DRV-001ABC") is True  # the grant is all it needs
    finally:
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
        )
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")


def test_errors_are_catchable_as_idmint_error(mint: idmint.IdMint) -> None:
    with pytest.raises(idmint.IdmintError):
        mint.next_driver_id("ZZZ")
