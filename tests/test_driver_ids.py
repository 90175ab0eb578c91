"""Fleets and driver ids (CONTRACT sections 2-3), one behaviour per test."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.util import Connect, raises_sqlstate, scalar, table_snapshot, wait_expired

ALPHABET = set("ABCDEFGHJKLMNPQRSTUVWXYZ23456789")


def next_id(db: psycopg.Connection, fleet: object, key: str | None = None) -> str:
    return str(scalar(db, "SELECT idmint.next_driver_id(%s, %s)", [fleet, key]))


def numbers(db: psycopg.Connection, code: str) -> list[int]:
    rows = db.execute(
        "SELECT number FROM idmint.driver_id_ledger WHERE fleet_code = %s ORDER BY number", [code]
    )
    return [r[0] for r in rows]


@pytest.fixture
def fleet(db: psycopg.Connection) -> uuid.UUID:
    return db.execute("SELECT fleet_id FROM idmint.add_fleet('North', 'abc')").fetchone()[0]  # type: ignore[index]


# --- fleets -------------------------------------------------------------------------------


def test_add_fleet_returns_the_row_with_upper_case_code(db: psycopg.Connection) -> None:
    row = db.execute(
        "SELECT fleet_id, code, name, max_drivers, created_at FROM idmint.add_fleet('North', 'k2x', 50)"
    ).fetchone()
    assert row is not None
    assert isinstance(row[0], uuid.UUID)
    assert row[1:4] == ("K2X", "North", 50)
    assert row[4] is not None
    # Exactly the public columns (contract §6): no internal counters.
    cols = db.execute("SELECT * FROM idmint.add_fleet('South', 'K3X')").description
    assert [c.name for c in cols or []] == ["fleet_id", "code", "name", "max_drivers", "created_at"]


def test_add_fleet_generates_a_free_code_and_keeps_a_given_uuid(db: psycopg.Connection) -> None:
    given = uuid.uuid4()
    codes = set()
    for i in range(40):
        fid = given if i == 0 else None
        row = db.execute(
            "SELECT fleet_id, code, max_drivers FROM idmint.add_fleet(%s, fleet_id => %s)",
            [f"f{i}", fid],
        ).fetchone()
        assert row is not None
        if i == 0:
            assert row[0] == given
        assert len(row[1]) == 3 and set(row[1]) <= ALPHABET
        assert row[2] == 999
        codes.add(row[1])
    assert len(codes) == 40


@pytest.mark.parametrize(
    ("args", "sqlstate"),
    [
        (("x", "AB0", 10), "ID003"),  # 0 is not in the alphabet
        (("x", "ABI", 10), "ID003"),  # nor I
        (("x", "AO1", 10), "ID003"),
        (("x", " AB", 10), "ID003"),  # no trimming
        (("x", "ABCD", 10), "ID003"),
        (("x", "", 10), "ID003"),
        (("x", "ABC", 0), "ID003"),
        (("x", "ABC", 1000), "ID003"),
        (("x", "ABC", None), "ID003"),
        ((None, "ABC", 10), "ID003"),
        (("", "ABC", 10), "ID003"),
        (("  \t", "ABC", 10), "ID003"),  # a blank name names nothing
    ],
)
def test_add_fleet_rejects_bad_input(
    db: psycopg.Connection, args: tuple[object, ...], sqlstate: str
) -> None:
    before = table_snapshot(db)
    with raises_sqlstate(sqlstate):
        db.execute("SELECT idmint.add_fleet(%s, %s, %s)", list(args))
    assert table_snapshot(db) == before


def test_add_fleet_duplicate_code_or_id_is_id004(db: psycopg.Connection, fleet: uuid.UUID) -> None:
    with raises_sqlstate("ID004"):
        db.execute("SELECT idmint.add_fleet('Other', 'ABC')")
    with raises_sqlstate("ID004"):
        db.execute("SELECT idmint.add_fleet('Other', 'aBc')")
    with raises_sqlstate("ID004"):
        db.execute("SELECT idmint.add_fleet('Other', 'XYZ', 10, %s)", [fleet])


def test_gen_fleet_code_returns_unused_valid_codes(
    db: psycopg.Connection, fleet: uuid.UUID
) -> None:
    for _ in range(50):
        code = str(scalar(db, "SELECT idmint.gen_fleet_code()"))
        assert len(code) == 3 and set(code) <= ALPHABET and code != "ABC"


# --- allocation ---------------------------------------------------------------------------


def test_numbers_are_1_to_k_for_code_in_any_case_uuid_and_uuid_text(
    db: psycopg.Connection, fleet: uuid.UUID
) -> None:
    got = [next_id(db, "ABC"), next_id(db, "abc"), next_id(db, fleet), next_id(db, str(fleet))]
    got += [r[0] for r in db.execute("SELECT idmint.next_driver_ids('aBc', 3)")]
    assert got == [f"DRV-00{i}ABC" for i in range(1, 8)]
    assert numbers(db, "ABC") == list(range(1, 8))


def test_uuid_argument_uses_the_uuid_overload(db: psycopg.Connection, fleet: uuid.UUID) -> None:
    assert scalar(db, "SELECT idmint.next_driver_id(%s::uuid)", [str(fleet)]) == "DRV-001ABC"


@pytest.mark.parametrize(
    ("fleet", "sqlstate"),
    [
        ("XYZ", "ID002"),
        ("5b1c3a52-6f0e-4d7e-9a43-0c2f1e8d7b69", "ID002"),  # a uuid no fleet has
        ("AB", "ID003"),
        ("ab0", "ID003"),
        (" ABC", "ID003"),
        ("", "ID003"),
        (None, "ID003"),
    ],
)
def test_unknown_or_malformed_fleet(
    db: psycopg.Connection, fleet: str | None, sqlstate: str
) -> None:
    with raises_sqlstate(sqlstate):
        db.execute("SELECT idmint.next_driver_id(%s::text)", [fleet])


def test_rollback_consumes_nothing(connect: Connect, fleet: uuid.UUID) -> None:
    conn = connect(autocommit=False)
    assert next_id(conn, "ABC") == "DRV-001ABC"
    assert list(conn.execute("SELECT idmint.next_driver_ids('ABC', 5)"))
    conn.rollback()
    assert next_id(conn, "ABC") == "DRV-001ABC"
    conn.commit()
    db = connect()
    assert numbers(db, "ABC") == [1]


def test_request_key_returns_the_first_answer(db: psycopg.Connection, fleet: uuid.UUID) -> None:
    first = next_id(db, "ABC", "signup-42")
    next_id(db, "ABC")
    assert next_id(db, "ABC", "signup-42") == first
    assert next_id(db, fleet, "signup-42") == first
    db.execute("SELECT idmint.add_fleet('South', 'XYZ')")
    assert next_id(db, "XYZ", "signup-42") == "DRV-001XYZ"  # keys are per fleet
    assert numbers(db, "ABC") == [1, 2]


def test_capacity_exhausted_is_id001_and_writes_nothing(db: psycopg.Connection) -> None:
    db.execute("SELECT idmint.add_fleet('Tiny', 'TNY', 3)")
    assert [r[0] for r in db.execute("SELECT idmint.next_driver_ids('TNY', 2)")] == [
        "DRV-001TNY",
        "DRV-002TNY",
    ]
    before = table_snapshot(db)
    with raises_sqlstate("ID001"):
        db.execute("SELECT idmint.next_driver_ids('TNY', 2)")  # all or nothing
    assert table_snapshot(db) == before
    assert next_id(db, "TNY") == "DRV-003TNY"
    with raises_sqlstate("ID001"):
        next_id(db, "TNY")


def test_id001_hint_names_what_would_help(db: psycopg.Connection) -> None:
    db.execute("SELECT idmint.add_fleet('Tiny', 'TNY', 3)")
    next_id(db, "TNY")
    # Room for 2, 5 asked: the hint says how many would fit.
    with raises_sqlstate("ID001") as info:
        db.execute("SELECT idmint.next_driver_ids('TNY', 5)")
    hint = info.value.diag.message_hint or ""
    assert "ask for at most 2" in hint and "release" not in hint
    assert "issued every number" not in hint and "close to its max_drivers" in hint
    # Full, nothing reserved: the cap, not reservations.
    next_id(db, "TNY")
    next_id(db, "TNY")
    with raises_sqlstate("ID001") as info:
        next_id(db, "TNY")
    hint = info.value.diag.message_hint or ""
    assert "max_drivers (3)" in hint and "999" in hint and "another fleet" in hint
    assert "release" not in hint and "ask for" not in hint
    # Full because of an active reservation: releasing it is what helps.
    db.execute("SELECT idmint.add_fleet('Two', 'TW2', 2)")
    next_id(db, "TW2")
    db.execute("SELECT idmint.reserve_driver_id('TW2', 'x', '1 hour')")
    with raises_sqlstate("ID001") as info:
        next_id(db, "TW2")
    hint = info.value.diag.message_hint or ""
    assert "1 number(s)" in hint and "release" in hint and "another fleet" not in hint


@pytest.mark.parametrize("n", [0, -1, None, 1000, 10**9])
def test_bulk_n_out_of_bounds_is_id003(
    db: psycopg.Connection, fleet: uuid.UUID, n: int | None
) -> None:
    with raises_sqlstate("ID003"):
        db.execute("SELECT idmint.next_driver_ids('ABC', %s)", [n])
    assert numbers(db, "ABC") == []


def test_bulk_is_ascending_and_reuses_freed_numbers_first(
    db: psycopg.Connection, fleet: uuid.UUID
) -> None:
    ids = [next_id(db, "ABC") for _ in range(3)]
    rid = scalar(db, "SELECT idmint.reserve_driver_id('ABC')")
    assert rid == "DRV-004ABC" and ids[-1] == "DRV-003ABC"
    assert scalar(db, "SELECT idmint.release_driver_id(%s)", [rid]) is True
    got = [r[0] for r in db.execute("SELECT idmint.next_driver_ids('ABC', 3)")]
    assert got == ["DRV-004ABC", "DRV-005ABC", "DRV-006ABC"]


# --- reservations -------------------------------------------------------------------------


def test_reserve_confirm_release_life_cycle(db: psycopg.Connection, fleet: uuid.UUID) -> None:
    db.execute("SET application_name = 'signup-form'")
    rid = str(scalar(db, "SELECT idmint.reserve_driver_id('ABC')"))
    assert rid == "DRV-001ABC"
    row = db.execute(
        "SELECT status, reserved_by, expires_at - reserved_at FROM idmint.driver_id_ledger WHERE driver_id = %s",
        [rid],
    ).fetchone()
    assert row is not None
    assert (
        row[0] == "reserved" and row[1].startswith("signup-form pid ") and str(row[2]) == "0:05:00"
    )
    assert scalar(db, "SELECT idmint.confirm_driver_id(%s)", [rid.lower()]) == rid
    assert scalar(db, "SELECT idmint.confirm_driver_id(%s)", [rid]) == rid  # idempotent
    with raises_sqlstate("ID007"):
        db.execute("SELECT idmint.release_driver_id(%s)", [rid])
    assert (
        scalar(db, "SELECT status FROM idmint.driver_id_ledger WHERE driver_id = %s", [rid])
        == "assigned"
    )

    other = scalar(db, "SELECT idmint.reserve_driver_id('ABC', 'me', '10 minutes')")
    assert (
        scalar(db, "SELECT reserved_by FROM idmint.driver_id_ledger WHERE driver_id = %s", [other])
        == "me"
    )
    assert scalar(db, "SELECT idmint.release_driver_id(%s)", [other]) is False  # not the holder
    assert scalar(db, "SELECT idmint.release_driver_id(%s, %s)", [other, "me"]) is True
    assert scalar(db, "SELECT idmint.release_driver_id(%s)", [other]) is False
    with raises_sqlstate("ID006"):
        db.execute("SELECT idmint.confirm_driver_id(%s)", [other])


@pytest.mark.parametrize("driver_id", ["DRV-999ABC", "DRV-001XYZ"])
def test_confirm_unknown_is_id006_and_release_unknown_is_false(
    db: psycopg.Connection, fleet: uuid.UUID, driver_id: str
) -> None:
    with raises_sqlstate("ID006"):
        db.execute("SELECT idmint.confirm_driver_id(%s)", [driver_id])
    assert scalar(db, "SELECT idmint.release_driver_id(%s)", [driver_id]) is False


@pytest.mark.parametrize(
    "bad", ["DRV-000ABC", "DRV-01ABC", "DRV-001AB0", " DRV-001ABC", "XYZ", "", None]
)
def test_malformed_ids_are_id003(db: psycopg.Connection, fleet: uuid.UUID, bad: str | None) -> None:
    for fn in ("confirm_driver_id", "release_driver_id"):
        with raises_sqlstate("ID003"):
            db.execute(f"SELECT idmint.{fn}(%s)", [bad])
    with raises_sqlstate("ID003"):
        db.execute("SELECT * FROM idmint.parse_driver_id(%s)", [bad])
    assert scalar(db, "SELECT idmint.is_valid_driver_id(%s)", [bad]) is False


@pytest.mark.parametrize("ttl", ["0 seconds", "-1 minute", "1 day 1 second", None])
def test_reserve_rejects_bad_ttl(db: psycopg.Connection, fleet: uuid.UUID, ttl: str | None) -> None:
    with raises_sqlstate("ID003"):
        db.execute("SELECT idmint.reserve_driver_id('ABC', 'x', %s::interval)", [ttl])
    assert numbers(db, "ABC") == []


def test_expired_reservation_is_reissued_lowest_first_before_any_purge(
    connect: Connect, fleet: uuid.UUID
) -> None:
    db = connect(autocommit=False)
    next_id(db, "ABC")
    first = scalar(db, "SELECT idmint.reserve_driver_id('ABC', 'slow', '300 milliseconds')")
    second = scalar(db, "SELECT idmint.reserve_driver_id('ABC', 'slow', '300 milliseconds')")
    db.commit()
    wait_expired(db, first, second)
    db.commit()
    assert (
        scalar(db, "SELECT status FROM idmint.driver_id_ledger WHERE driver_id = %s", [first])
        == "expired"
    )
    with raises_sqlstate("ID006"):
        db.execute("SELECT idmint.confirm_driver_id(%s, 'slow')", [first])
    db.rollback()
    assert scalar(db, "SELECT idmint.release_driver_id(%s, 'slow')", [first]) is False
    assert [next_id(db, "ABC") for _ in range(3)] == [first, second, "DRV-004ABC"]
    assert (first, second) == ("DRV-002ABC", "DRV-003ABC")
    db.commit()


def test_full_fleet_with_an_expired_reservation_still_allocates(connect: Connect) -> None:
    db = connect()
    db.execute("SELECT idmint.add_fleet('Two', 'TW2', 2)")
    next_id(db, "TW2")
    rid = scalar(db, "SELECT idmint.reserve_driver_id('TW2', 'x', '1 millisecond')")
    db.execute("SELECT pg_sleep(0.01)")
    assert next_id(db, "TW2") == rid == "DRV-002TW2"
    with raises_sqlstate("ID001"):
        next_id(db, "TW2")


def test_purge_removes_expired_reservations_and_keeps_numbers_reissuable(connect: Connect) -> None:
    db = connect(autocommit=False)
    db.execute("SELECT idmint.add_fleet('A', 'AAA'), idmint.add_fleet('B', 'BBB')")
    short = [
        scalar(db, "SELECT idmint.reserve_driver_id(%s, 'x', '300 milliseconds')", [code])
        for code in ("AAA", "BBB")
    ]
    active = scalar(db, "SELECT idmint.reserve_driver_id('AAA')")
    db.commit()
    wait_expired(db, *short)
    db.commit()
    assert scalar(db, "SELECT idmint.purge_expired_reservations()") == 2
    assert scalar(db, "SELECT idmint.purge_expired_reservations()") == 0
    ledger = db.execute(
        "SELECT driver_id, status FROM idmint.driver_id_ledger ORDER BY 1"
    ).fetchall()
    assert ledger == [(active, "reserved")]
    assert next_id(db, "AAA") == "DRV-001AAA"
    assert next_id(db, "BBB") == "DRV-001BBB"
    assert next_id(db, "AAA") == "DRV-003AAA"
    db.commit()


# --- reset --------------------------------------------------------------------------------


def test_reset_to_highest_used_reuses_the_top_of_the_range(
    db: psycopg.Connection, fleet: uuid.UUID
) -> None:
    for _ in range(3):
        next_id(db, "ABC")
    top = scalar(db, "SELECT idmint.reserve_driver_id('ABC')")
    assert top == "DRV-004ABC"
    db.execute("SELECT idmint.release_driver_id(%s)", [top])
    assert scalar(db, "SELECT idmint.reset_driver_sequence('ABC')") == 3
    assert next_id(db, "ABC") == "DRV-004ABC"


def test_reset_forward_skips_numbers_for_good(db: psycopg.Connection, fleet: uuid.UUID) -> None:
    next_id(db, "ABC")
    assert scalar(db, "SELECT idmint.reset_driver_sequence(%s, 10)", [fleet]) == 10
    assert next_id(db, "ABC") == "DRV-011ABC"
    assert next_id(db, "ABC") == "DRV-012ABC"


def test_reset_bounds(db: psycopg.Connection) -> None:
    db.execute("SELECT idmint.add_fleet('R', 'RRR', 20)")
    for _ in range(5):
        next_id(db, "RRR")
    before = table_snapshot(db)
    with raises_sqlstate("ID004"):
        db.execute("SELECT idmint.reset_driver_sequence('RRR', 4)")
    with raises_sqlstate("ID003"):
        db.execute("SELECT idmint.reset_driver_sequence('RRR', 21)")
    with raises_sqlstate("ID003"):
        db.execute("SELECT idmint.reset_driver_sequence('RRR', -1)")
    with raises_sqlstate("ID002"):
        db.execute("SELECT idmint.reset_driver_sequence('QQQ', 1)")
    assert table_snapshot(db) == before
    assert scalar(db, "SELECT idmint.reset_driver_sequence('RRR', 20)") == 20
    with raises_sqlstate("ID001"):
        next_id(db, "RRR")


# --- format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("DRV-001ABC", True),
        ("drv-999z9z", True),
        ("DRV-010XYZ", True),
        ("DRV-000ABC", False),
        ("DRV-1000ABC", False),
        ("DRV-001AB1", False),
        ("DRV-001ABO", False),
        ("DRV 001ABC", False),
        ("DRV-001ABC ", False),
        ("DRV-\u0660\u0660\u0661ABC", False),  # Arabic-Indic digits
        ("", False),
        (None, False),
    ],
)
def test_is_valid_driver_id(db: psycopg.Connection, text: str | None, valid: bool) -> None:
    assert scalar(db, "SELECT idmint.is_valid_driver_id(%s)", [text]) is valid


def test_parse_driver_id_needs_no_fleet(db: psycopg.Connection) -> None:
    assert db.execute("SELECT * FROM idmint.parse_driver_id('drv-042qrs')").fetchall() == [
        (42, "QRS")
    ]


# --- durability guard ---------------------------------------------------------------------


def test_allocating_transactions_commit_durably(connect: Connect, fleet: uuid.UUID) -> None:
    conn = connect(autocommit=False)
    conn.execute("SET synchronous_commit = off")
    conn.commit()
    next_id(conn, "ABC")
    assert scalar(conn, "SHOW synchronous_commit") == "on"
    conn.commit()
    assert scalar(conn, "SHOW synchronous_commit") == "off"  # only that transaction
    scalar(conn, "SELECT idmint.reserve_driver_id('ABC')")
    assert scalar(conn, "SHOW synchronous_commit") == "on"
    conn.rollback()


# --- row invariants -----------------------------------------------------------------------
# The ledger tables keep one CHECK (the counter's cap): their other invariants are kept by
# the functions, the only writers (sql/10_driver_tables.sql says why). This checks them
# after every kind of change.

VIOLATIONS = """
SELECT 'fleet ' || f.code FROM idmint.fleets f
WHERE NOT (f.code ~ '^[A-HJ-NP-Z2-9]{3}$' AND f.name <> '' AND length(f.name) <= 200
           AND f.max_drivers BETWEEN 1 AND 999 AND f.last_number BETWEEN 0 AND f.max_drivers
           AND f.assigned = (SELECT count(*) FROM idmint.driver_numbers d
                             WHERE d.fleet_id = f.fleet_id AND d.state = 'assigned')
           AND f.unassigned = (SELECT count(*) FROM idmint.driver_numbers d
                               WHERE d.fleet_id = f.fleet_id AND d.state <> 'assigned'))
UNION ALL
SELECT 'number ' || d.number || ' of ' || coalesce(f.code, 'no fleet')
FROM idmint.driver_numbers d LEFT JOIN idmint.fleets f USING (fleet_id)
WHERE f.fleet_id IS NULL
   OR NOT coalesce(d.number BETWEEN 1 AND f.last_number
                   AND d.state IN ('reserved', 'assigned', 'free')
                   AND (d.state = 'reserved') = (d.expires_at IS NOT NULL)
                   AND (d.state = 'assigned') = (d.assigned_at IS NOT NULL)
                   AND (NOT d.bound OR d.state = 'assigned'), false)
"""


def test_row_invariants_hold_after_every_kind_of_change(connect: Connect) -> None:
    db = connect()
    db.execute("SELECT idmint.add_fleet('North', 'ABC', 20), idmint.add_fleet('South', 'XYZ', 5)")
    uid = scalar(db, "SELECT fleet_id FROM idmint.fleets WHERE code = 'ABC'")
    next_id(db, uid)
    next_id(db, "abc")
    next_id(db, str(uid))
    next_id(db, "ABC", "key-1")
    next_id(db, "ABC", "key-1")
    db.execute("SELECT idmint.next_driver_ids('ABC', 3)")
    held = scalar(db, "SELECT idmint.reserve_driver_id('ABC', 'me')")
    gone = scalar(db, "SELECT idmint.reserve_driver_id('ABC')")
    short = scalar(db, "SELECT idmint.reserve_driver_id('ABC', 'slow', '200 milliseconds')")
    db.execute("SELECT idmint.confirm_driver_id(%s, 'me')", [held])
    db.execute("SELECT idmint.release_driver_id(%s)", [gone])
    assert db.execute(VIOLATIONS).fetchall() == []
    wait_expired(db, short)
    next_id(db, "ABC")  # reissues the released number
    next_id(db, "ABC")  # reissues the expired one
    expiring = scalar(db, "SELECT idmint.reserve_driver_id('ABC', 'x', '100 milliseconds')")
    wait_expired(db, expiring)
    db.execute("SELECT idmint.purge_expired_reservations()")
    db.execute("SELECT idmint.reset_driver_sequence('ABC', 15)")
    db.execute("CREATE SCHEMA app")
    db.execute("CREATE TABLE app.drivers (id serial PRIMARY KEY, fleet text, driver_id text)")
    db.execute(
        "CREATE TRIGGER d BEFORE INSERT OR UPDATE OR DELETE ON app.drivers FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    db.execute("INSERT INTO app.drivers (fleet) VALUES ('XYZ'), ('XYZ')")
    db.execute(
        "INSERT INTO app.drivers (fleet, driver_id) VALUES ('XYZ', idmint.next_driver_id('XYZ'))"
    )
    db.execute("DELETE FROM app.drivers WHERE driver_id = 'DRV-001XYZ'")
    with raises_sqlstate("ID001"):
        db.execute("SELECT idmint.next_driver_ids('XYZ', 3)")
    assert db.execute(VIOLATIONS).fetchall() == []
    # The check can fail: a counter out of step is reported.
    db.execute("UPDATE idmint.fleets SET assigned = assigned + 1 WHERE code = 'XYZ'")
    assert db.execute(VIOLATIONS).fetchall() == [("fleet XYZ",)]


def test_the_counter_can_never_pass_max_drivers(db: psycopg.Connection) -> None:
    db.execute("SELECT idmint.add_fleet('Tiny', 'TNY', 3)")
    with raises_sqlstate("23514"):  # the one CHECK kept on the hot tables
        db.execute("UPDATE idmint.fleets SET last_number = 4 WHERE code = 'TNY'")


def test_fast_paths_inline_the_lowest_fleet_threshold(db: psycopg.Connection) -> None:
    # next_driver_id's fast paths test `assigned * 10 >= max_drivers * 8` instead of calling
    # idmint._thresholds (a pinned call per id): the two must stay in step.
    assert str(scalar(db, "SELECT (idmint._thresholds('fleet'))[1]")) == "0.8"
    srcs = db.execute(
        "SELECT prosrc FROM pg_proc WHERE oid IN"
        " ('idmint.next_driver_id(uuid, text)'::regprocedure,"
        "  'idmint.next_driver_id(text, text)'::regprocedure)"
    ).fetchall()
    assert len(srcs) == 2
    assert all("IF assigned * 10 >= max_drivers * 8 THEN" in s[0] for s in srcs)
