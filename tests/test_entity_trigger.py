"""Entity numbers in app tables: column DEFAULT, the assign_entity_number trigger,
backfill_entity_numbers, and what a role granted only idmint_user may do."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

from tests.util import Connect, raises_sqlstate, scalar, table_snapshot

PARTS = """
CREATE SCHEMA app;
CREATE TABLE app.parts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text,
    part_number varchar(7) UNIQUE DEFAULT idmint.gen_entity_number('part')
);
CREATE TRIGGER parts_number BEFORE INSERT OR UPDATE ON app.parts FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_entity_number('part_number', 'part');
"""


@pytest.fixture
def parts(db: psycopg.Connection) -> psycopg.Connection:
    db.execute(PARTS)
    return db


def bound(conn: psycopg.Connection, number: str) -> bool | None:
    row = conn.execute(
        "SELECT bound_at IS NOT NULL FROM idmint.entity_numbers WHERE number = %s", [int(number)]
    ).fetchone()
    return None if row is None else bool(row[0])


def insert(conn: psycopg.Connection, number: object = "DEFAULT", name: str = "p") -> str:
    if number == "DEFAULT":
        row = conn.execute(
            "INSERT INTO app.parts (name) VALUES (%s) RETURNING part_number", [name]
        ).fetchone()
    else:
        row = conn.execute(
            "INSERT INTO app.parts (name, part_number) VALUES (%s, %s) RETURNING part_number",
            [name, number],
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_default_and_trigger_combine(parts: psycopg.Connection) -> None:
    db = parts
    numbers = [insert(db) for _ in range(20)]
    assert len(set(numbers)) == 20
    assert all(re.fullmatch(r"1[0-9]{6}", x) and bound(db, x) for x in numbers)
    # One issue per number (the DEFAULT), bound by the trigger; nothing issued twice.
    assert scalar(db, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 1") == 20


def test_default_alone_without_trigger(db: psycopg.Connection) -> None:
    db.execute(
        "CREATE TABLE plain (x int,"
        " part_number varchar(7) NOT NULL UNIQUE DEFAULT idmint.gen_entity_number('part'))"
    )
    db.execute("INSERT INTO plain (x) SELECT g FROM generate_series(1, 50) g")
    numbers = [r[0] for r in db.execute("SELECT part_number FROM plain")]
    assert len(set(numbers)) == 50 and all(re.fullmatch(r"1[0-9]{6}", x) for x in numbers)


def test_explicit_null_gets_a_new_bound_number(parts: psycopg.Connection) -> None:
    number = insert(parts, None)
    assert re.fullmatch(r"1[0-9]{6}", number) and bound(parts, number)
    how = scalar(
        parts,
        "SELECT how FROM idmint.entity_numbers WHERE number = %s",
        [int(number)],
    )
    assert how == "bind"


def test_manual_never_issued_number_is_claimed_and_bound(parts: psycopg.Connection) -> None:
    assert insert(parts, "1234567") == "1234567"
    assert bound(parts, "1234567")
    with raises_sqlstate("ID004"):
        insert(parts, "1234567")
    with raises_sqlstate("ID004"):
        parts.execute("SELECT idmint.claim_entity_number('1234567')")


def test_number_fetched_in_an_earlier_transaction_is_bound_later(
    parts: psycopg.Connection, connect: Connect
) -> None:
    form = connect()
    shown = str(scalar(form, "SELECT idmint.gen_entity_number('part')"))
    claimed = str(scalar(form, "SELECT idmint.claim_entity_number('1765432')"))
    assert bound(parts, shown) is False and bound(parts, claimed) is False
    assert insert(parts, shown) == shown and insert(parts, claimed) == claimed
    assert bound(parts, shown) and bound(parts, claimed)
    with raises_sqlstate("ID004"):
        insert(parts, shown)


@pytest.mark.parametrize(
    ("number", "sqlstate"),
    [
        ("2234567", "ID003"),
        ("7234567", "ID003"),
        ("123", "ID003"),
        (" 123456", "ID003"),
        ("abcdefg", "ID003"),
    ],
)
def test_bad_manual_numbers(parts: psycopg.Connection, number: str, sqlstate: str) -> None:
    before = table_snapshot(parts)
    with raises_sqlstate(sqlstate):
        insert(parts, number)
    assert table_snapshot(parts) == before
    assert scalar(parts, "SELECT count(*) FROM app.parts") == 0


def test_update_binds_the_new_number_and_the_old_stays_issued(parts: psycopg.Connection) -> None:
    old = insert(parts)
    parts.execute("UPDATE app.parts SET name = 'renamed'")  # number unchanged: nothing happens
    assert scalar(parts, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 1") == 1
    parts.execute("UPDATE app.parts SET part_number = '1999999'")
    assert scalar(parts, "SELECT part_number FROM app.parts") == "1999999"
    assert bound(parts, "1999999") and bound(parts, old)
    with raises_sqlstate("ID004"):
        insert(parts, old)  # the old number is still issued (and bound) for ever
    parts.execute("UPDATE app.parts SET part_number = NULL")
    fresh = str(scalar(parts, "SELECT part_number FROM app.parts"))
    assert (
        re.fullmatch(r"1[0-9]{6}", fresh) and fresh not in (old, "1999999") and bound(parts, fresh)
    )


def test_trigger_with_bad_arguments_is_id003(db: psycopg.Connection) -> None:
    db.execute("CREATE TABLE t (n text, m text)")
    for args, sqlstate in [
        ("'nope', 'part'", "ID003"),
        ("'n'", "ID003"),
        ("'n', 'nosuch'", "ID008"),
        ("'n', '0'", "ID003"),
    ]:
        db.execute("DROP TRIGGER IF EXISTS t_n ON t")
        db.execute(
            "CREATE TRIGGER t_n BEFORE INSERT ON t FOR EACH ROW"
            f" EXECUTE FUNCTION idmint.assign_entity_number({args})"
        )
        with raises_sqlstate(sqlstate):
            db.execute("INSERT INTO t (m) VALUES ('x')")
    db.execute("DROP TRIGGER t_n ON t")
    db.execute(
        "CREATE TRIGGER t_n AFTER INSERT ON t FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('n', 'part')"
    )
    with raises_sqlstate("ID003"):
        db.execute("INSERT INTO t (m) VALUES ('x')")


def test_trigger_on_an_integer_column(db: psycopg.Connection) -> None:
    db.execute("CREATE TABLE orders (order_no integer UNIQUE, x int)")
    db.execute(
        "CREATE TRIGGER o BEFORE INSERT OR UPDATE ON orders FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('order_no', 4)"
    )
    db.execute("INSERT INTO orders (x) SELECT g FROM generate_series(1, 10) g")
    db.execute("INSERT INTO orders (order_no, x) VALUES (4000001, 11)")
    got = [r[0] for r in db.execute("SELECT order_no FROM orders")]
    assert len(set(got)) == 11 and all(4_000_000 <= x <= 4_999_999 for x in got)


def test_backfill_1000_null_rows(parts: psycopg.Connection) -> None:
    db = parts
    db.execute("ALTER TABLE app.parts DISABLE TRIGGER parts_number")
    db.execute(
        "INSERT INTO app.parts (name, part_number) SELECT 'old', NULL FROM generate_series(1, 1000)"
    )
    db.execute("INSERT INTO app.parts (name, part_number) VALUES ('kept', '1000001')")
    db.execute("ALTER TABLE app.parts ENABLE TRIGGER parts_number")
    assert (
        scalar(db, "SELECT idmint.backfill_entity_numbers('app.parts', 'part_number', 'part')")
        == 1000
    )
    rows = db.execute("SELECT name, part_number FROM app.parts").fetchall()
    numbers = [r[1] for r in rows]
    assert None not in numbers and len(set(numbers)) == 1001 and ("kept", "1000001") in rows
    assert all(re.fullmatch(r"1[0-9]{6}", x) for x in numbers)
    # The trigger bound them; the audit says how they were issued.
    assert (
        scalar(db, "SELECT count(*) FROM idmint.entity_numbers WHERE bound_at IS NOT NULL") == 1000
    )
    assert db.execute(
        "SELECT how, count(*) FROM idmint.entity_numbers WHERE number <> 1000001 GROUP BY how"
    ).fetchall() == [("backfill", 1000)]
    assert scalar(db, "SELECT idmint.backfill_entity_numbers('app.parts', 'part_number', 1)") == 0


def test_backfill_integer_column_and_quoted_names(db: psycopg.Connection) -> None:
    db.execute(
        'CREATE SCHEMA "My App"; CREATE TABLE "My App"."Batch ""List""" ("Batch No" bigint, k int)'
    )
    db.execute('INSERT INTO "My App"."Batch ""List""" (k) SELECT g FROM generate_series(1, 100) g')
    n = scalar(
        db,
        "SELECT idmint.backfill_entity_numbers(%s, 'Batch No', 3)",
        ['"My App"."Batch ""List"""'],
    )
    assert n == 100
    got = [r[0] for r in db.execute('SELECT "Batch No" FROM "My App"."Batch ""List"""')]
    assert len(set(got)) == 100 and all(3_000_000 <= x <= 3_999_999 for x in got)


@pytest.mark.parametrize(
    "col",
    [
        "part_number = NULL; DROP TABLE app.parts; --",
        'part_number" = NULL; DROP TABLE app.parts; --',
        "part_number) IS NULL OR (true",
        "PART_NUMBER",
        '"part_number"',
        "name; DELETE FROM app.parts",
        "ctid",
        "",
        None,
    ],
)
def test_backfill_injection_through_col_fails_cleanly(
    parts: psycopg.Connection, col: str | None
) -> None:
    db = parts
    db.execute("ALTER TABLE app.parts DISABLE TRIGGER parts_number")
    db.execute(
        "INSERT INTO app.parts (name, part_number) SELECT 'old', NULL FROM generate_series(1, 10)"
    )
    app_before = db.execute("SELECT * FROM app.parts ORDER BY id").fetchall()
    before = table_snapshot(db)
    with raises_sqlstate("ID003"):
        db.execute("SELECT idmint.backfill_entity_numbers('app.parts', %s, 'part')", [col])
    assert db.execute("SELECT * FROM app.parts ORDER BY id").fetchall() == app_before
    assert table_snapshot(db) == before


def test_backfill_rejects_unusable_targets(db: psycopg.Connection) -> None:
    db.execute("CREATE TABLE short (code varchar(5), d date)")
    db.execute("CREATE VIEW v AS SELECT * FROM short")
    before = table_snapshot(db)
    for tbl, col, entity, sqlstate in [
        ("short", "code", "part", "ID003"),  # too narrow for 7 digits
        ("short", "d", "part", "ID003"),
        ("v", "code", "part", "ID003"),
        (None, "code", "part", "ID003"),
        ("short", "code", "nosuch", "ID008"),
        ("short", "code", None, "ID003"),
    ]:
        with raises_sqlstate(sqlstate):
            db.execute(
                "SELECT idmint.backfill_entity_numbers(%s::regclass, %s, %s::text)",
                [tbl, col, entity],
            )
    assert table_snapshot(db) == before


@pytest.fixture
def app_conn(db: psycopg.Connection, connect: Connect) -> Iterator[psycopg.Connection]:
    """A login role whose only privilege is membership in idmint_user (plus what a test grants)."""
    db.execute(PARTS)
    db.execute(
        "DO $$ BEGIN CREATE ROLE idmint_test_entity_app LOGIN;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    db.execute("GRANT idmint_user TO idmint_test_entity_app")
    db.execute("GRANT USAGE ON SCHEMA app TO idmint_test_entity_app")
    db.execute("GRANT SELECT, INSERT ON app.parts TO idmint_test_entity_app")
    conn = connect(user="idmint_test_entity_app")
    assert scalar(conn, "SELECT current_user") == "idmint_test_entity_app"
    yield conn
    conn.close()
    db.execute("DROP OWNED BY idmint_test_entity_app")
    db.execute("REVOKE idmint_user FROM idmint_test_entity_app")


def test_app_role_can_generate_claim_and_read(
    app_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    c = app_conn
    assert len([r for r in c.execute("SELECT idmint.gen_entity_numbers('part', 5)")]) == 5
    assert re.fullmatch(r"2[0-9]{6}", str(scalar(c, "SELECT idmint.gen_entity_number(2)")))
    assert scalar(c, "SELECT idmint.claim_entity_number('3333333', 'batch')") == "3333333"
    assert scalar(c, "SELECT idmint.is_valid_entity_number('3333333', 3)") is True
    assert c.execute("SELECT count(*) FROM idmint.entity_types").fetchone() == (5,)
    assert c.execute("SELECT issued FROM idmint.entity_capacity WHERE prefix = 1").fetchone() == (
        5,
    )
    # DEFAULT and trigger work for the app role.
    row = c.execute("INSERT INTO app.parts (name) VALUES ('x') RETURNING part_number").fetchone()
    assert row is not None and re.fullmatch(r"1[0-9]{6}", row[0])
    actor = scalar(db, "SELECT issued_by FROM idmint.entity_numbers WHERE how = 'claim'")
    assert actor == "idmint_test_entity_app"


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO idmint.entity_numbers (number, how) VALUES (1000001, 'gen')",
        "INSERT INTO idmint.entity_ranges (prefix, name) VALUES (8, 'evil')",
        "INSERT INTO idmint.entity_free (prefix, shard, number) VALUES (1, 1, 1000001)",
        "UPDATE idmint.entity_shards SET issued = 0",
        "UPDATE idmint.entity_ranges SET alerted = 0",
        "SELECT * FROM idmint.entity_shards",
        "SELECT idmint._unissue_entity_numbers('{1000001}')",
        "DELETE FROM idmint.entity_numbers",
        "SELECT * FROM idmint.entity_numbers",
        "SELECT * FROM idmint.entity_ranges",
        "SELECT * FROM idmint.entity_free",
        "INSERT INTO idmint.entity_types (prefix, name) VALUES (8, 'evil')",
        "SELECT idmint._issue_entity_numbers(1, 5, 'gen')",
        "SELECT idmint._claim_entity_number('1234567', NULL, 'claim')",
    ],
)
def test_app_role_cannot_write_entity_tables(app_conn: psycopg.Connection, statement: str) -> None:
    with raises_sqlstate("42501"):
        app_conn.execute(statement)


def test_backfill_runs_with_the_callers_rights(
    app_conn: psycopg.Connection, db: psycopg.Connection
) -> None:
    db.execute("ALTER TABLE app.parts DISABLE TRIGGER parts_number")
    db.execute(
        "INSERT INTO app.parts (name, part_number) SELECT 'old', NULL FROM generate_series(1, 20)"
    )
    db.execute("ALTER TABLE app.parts ENABLE TRIGGER parts_number")
    before = table_snapshot(db)
    with raises_sqlstate("42501"):  # the app role has no UPDATE on app.parts
        app_conn.execute(
            "SELECT idmint.backfill_entity_numbers('app.parts', 'part_number', 'part')"
        )
    assert table_snapshot(db) == before
    assert scalar(db, "SELECT count(*) FROM app.parts WHERE part_number IS NULL") == 20
    db.execute("GRANT UPDATE (part_number) ON app.parts TO idmint_test_entity_app")
    assert (
        scalar(
            app_conn, "SELECT idmint.backfill_entity_numbers('app.parts', 'part_number', 'part')"
        )
        == 20
    )
    assert scalar(db, "SELECT count(*) FROM app.parts WHERE part_number IS NULL") == 0


def test_bindings_look_up_by_key_however_many_rows_the_transaction_wrote(
    parts: psycopg.Connection, connect: Connect
) -> None:
    # A binding's look-ups are by key; a plan made while idmint's tables looked small read
    # a whole table for each row, so each row cost more than the last (quadratic).
    conn = connect(autocommit=False)
    conn.execute("INSERT INTO app.parts (name) SELECT 'p' FROM generate_series(1, 500)")
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
        conn.execute(f"SET auto_explain.{setting}")
    conn.execute("INSERT INTO app.parts (name) SELECT 'p' FROM generate_series(1, 20)")
    conn.execute(
        "UPDATE app.parts SET part_number = idmint.gen_entity_number('part') WHERE id <= 20"
    )
    conn.execute("DELETE FROM app.parts WHERE id > 500")
    assert len(plans) > 100  # the trigger's own statements, each row
    scans = [
        m.group(0)
        for plan in plans
        for m in re.finditer(r"Seq Scan on (entity_numbers|pending_bindings)\b", plan)
    ]
    assert scans == []
    conn.rollback()
