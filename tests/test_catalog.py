"""Catalog rules every idmint object must follow."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def test_every_function_pins_search_path(db: psycopg.Connection) -> None:
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p"
        " WHERE p.pronamespace = 'idmint'::regnamespace"
    ).fetchall()
    assert len(rows) > 20
    allowed = {"search_path=pg_catalog, pg_temp", "search_path=idmint, pg_catalog, pg_temp"}
    unpinned = [name for name, config in rows if not config or not allowed & set(config)]
    assert unpinned == []


def test_every_function_has_a_comment_and_none_is_strict(db: psycopg.Connection) -> None:
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, obj_description(p.oid, 'pg_proc'), p.proisstrict FROM pg_proc p"
        " WHERE p.pronamespace = 'idmint'::regnamespace"
    ).fetchall()
    assert [name for name, comment, _ in rows if not comment] == []
    assert [name for name, _, strict in rows if strict] == []


# Code that touches an app's rows runs with the app's rights (contract §0).
INVOKER_BY_DESIGN = {"assign_driver_id", "assign_entity_number", "backfill_entity_numbers"}


def test_public_functions_are_security_definer_or_pure(db: psycopg.Connection) -> None:
    """Apps hold EXECUTE only, so whatever writes idmint's tables must run as the owner."""
    rows = db.execute(
        "SELECT p.proname, p.prosecdef, p.provolatile FROM pg_proc p"
        " WHERE p.pronamespace = 'idmint'::regnamespace AND p.proname !~ '^_'"
    ).fetchall()
    assert [
        name
        for name, secdef, volatile in rows
        if volatile == "v" and not secdef and name not in INVOKER_BY_DESIGN
    ] == []
    assert {name for name, secdef, _ in rows if name in INVOKER_BY_DESIGN and secdef} == set()


def test_sql_never_raises_without_a_registered_code() -> None:
    for path in (ROOT / "sql").glob("*.sql"):
        for line in path.read_text().splitlines():
            if re.search(r"\bRAISE\b", line) and "ERRCODE" not in line:
                raise AssertionError(f"{path.name}: RAISE without ERRCODE: {line.strip()}")
