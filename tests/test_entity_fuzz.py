"""Hypothesis fuzz of every entity-number function: arbitrary text, ints, NULLs, huge values.

Only ID00x (idmint's own) or 22xxx (data exception, e.g. an int out of range in the cast)
SQLSTATEs may come back, never XX000, P0001 or 42xxx, and a failing call writes nothing.
is_valid_entity_number never raises at all.
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.util import fuzz_texts, table_snapshot

VALID_LOOKING = [
    "part", "material", "batch", "order", "quote", "1", "2", "5", "7", "9", "0", "10", "", " part",
    "Part", "1234567", "2345678", "7234567", "0234567", " 1234567", "1234567 ", "123456",
    "12345678",
    "part_number", "name", "part_number; DROP TABLE fz; --", 'part_number" = NULL; --', "ctid",
    "x'; DROP TABLE idmint.entity_numbers; --",
]  # fmt: skip
texts = fuzz_texts(VALID_LOOKING)
ints = (
    st.none()
    | st.integers(-10, 12)
    | st.integers(-(2**31), 2**31 - 1)
    | st.integers(-(10**30), 10**30)
    | st.sampled_from([100_000, 100_001, 10**9, 2**31 - 1, -(2**31), 2**31])
)
# n: everything except large valid counts (those only cost time, and are tested elsewhere).
counts = ints.filter(lambda n: n is None or not 6 <= n <= 100_000)

CALLS = {
    "gen_entity_numbers_int": (
        "SELECT idmint.gen_entity_numbers(%s::int, %s::int)",
        (ints, counts),
    ),
    "gen_entity_numbers_text": (
        "SELECT idmint.gen_entity_numbers(%s::text, %s::int)",
        (texts, counts),
    ),
    "gen_entity_number_int": ("SELECT idmint.gen_entity_number(%s::int)", (ints,)),
    "gen_entity_number_text": ("SELECT idmint.gen_entity_number(%s::text)", (texts,)),
    "claim_entity_number": ("SELECT idmint.claim_entity_number(%s::text)", (texts,)),
    "claim_entity_number_text": (
        "SELECT idmint.claim_entity_number(%s::text, %s::text)",
        (texts, texts),
    ),
    "claim_entity_number_int": (
        "SELECT idmint.claim_entity_number(%s::text, %s::int)",
        (texts, ints),
    ),
    "add_entity_type": ("SELECT idmint.add_entity_type(%s::int, %s::text)", (ints, texts)),
    "backfill_text": (
        "SELECT idmint.backfill_entity_numbers('fz', %s::text, %s::text)",
        (texts, texts),
    ),
    "backfill_int": (
        "SELECT idmint.backfill_entity_numbers('fz', %s::text, %s::int)",
        (texts, ints),
    ),
    "backfill_null_table": (
        "SELECT idmint.backfill_entity_numbers(NULL, %s::text, %s::text)",
        (texts, texts),
    ),
    "trigger_insert": (
        "INSERT INTO fz (part_number, name) VALUES (%s::text, %s::text)",
        (texts, texts),
    ),
}
NEVER_RAISES = {
    "is_valid_entity_number": ("SELECT idmint.is_valid_entity_number(%s::text)", (texts,)),
    "is_valid_entity_number_text": (
        "SELECT idmint.is_valid_entity_number(%s::text, %s::text)",
        (texts, texts),
    ),
    "is_valid_entity_number_int": (
        "SELECT idmint.is_valid_entity_number(%s::text, %s::int)",
        (texts, ints),
    ),
}


def allowed(sqlstate: str | None) -> bool:
    return sqlstate is not None and (
        sqlstate in {f"ID00{i}" for i in range(1, 9)} or sqlstate.startswith("22")
    )


def prepare(db: psycopg.Connection) -> None:
    db.execute("CREATE TABLE fz (part_number text UNIQUE, name text)")
    db.execute("INSERT INTO fz (part_number, name) VALUES (NULL, 'b'), (NULL, 'c')")
    db.execute(
        "CREATE TRIGGER fz_number BEFORE INSERT OR UPDATE ON fz FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('part_number', 'part')"
    )
    db.execute("SELECT idmint.gen_entity_numbers('part', 3)")
    db.execute("SELECT idmint.claim_entity_number('2000002')")


@pytest.mark.parametrize("name", sorted(CALLS))
def test_fuzz(db: psycopg.Connection, name: str) -> None:
    prepare(db)
    query, strategies = CALLS[name]

    @settings(
        max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(st.tuples(*strategies))
    def run(args: tuple[object, ...]) -> None:
        before = table_snapshot(db)
        app_before = db.execute("SELECT * FROM fz ORDER BY 1, 2").fetchall()
        try:
            db.execute(query, list(args))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            assert allowed(exc.sqlstate), f"{name}{args!r} -> {exc.sqlstate}: {exc}"
            assert table_snapshot(db) == before, f"{name}{args!r} failed but wrote"
            assert db.execute("SELECT * FROM fz ORDER BY 1, 2").fetchall() == app_before

    run()


@pytest.mark.parametrize("name", sorted(NEVER_RAISES))
def test_is_valid_never_raises(db: psycopg.Connection, name: str) -> None:
    query, strategies = NEVER_RAISES[name]

    @settings(
        max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(st.tuples(*strategies))
    def run(args: tuple[object, ...]) -> None:
        if any(isinstance(a, int) and not -(2**31) <= a < 2**31 for a in args):
            return  # the ::int cast itself rejects it before the function is called
        row = db.execute(query, list(args)).fetchone()  # type: ignore[arg-type]
        assert row is not None and isinstance(row[0], bool)

    run()
