"""Bindings follow the rows that are really stored (contract §3, §4, revision 0.2).

Upserts whose proposed row is not stored consume and bind nothing; DELETE unbinds; a row
moved between partitions keeps its id; COPY and multi-row INSERT behave as single INSERTs;
the backfill binds its numbers and checks its column type.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.util import raises_sqlstate, scalar, table_snapshot

DRIVERS = """
CREATE SCHEMA app;
CREATE TABLE app.drivers (email text PRIMARY KEY, fleet text NOT NULL, driver_id text UNIQUE);
CREATE TRIGGER drivers_id BEFORE INSERT OR UPDATE OR DELETE ON app.drivers FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id');
"""

PARTS = """
CREATE SCHEMA app;
CREATE TABLE app.parts (sku text PRIMARY KEY, pn varchar(7) UNIQUE);
CREATE TRIGGER parts_pn BEFORE INSERT OR UPDATE OR DELETE ON app.parts FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part');
"""


@pytest.fixture
def drivers(db: psycopg.Connection) -> psycopg.Connection:
    db.execute("SELECT idmint.add_fleet('North', 'ABC')")
    db.execute(DRIVERS)
    return db


@pytest.fixture
def parts(db: psycopg.Connection) -> psycopg.Connection:
    db.execute(PARTS)
    return db


def upsert(db: psycopg.Connection, email: str, action: str, driver_id: str | None = None) -> int:
    cur = db.execute(
        "INSERT INTO app.drivers (email, fleet, driver_id) VALUES (%s, 'ABC', %s)"
        f" ON CONFLICT (email) DO {action}",
        [email, driver_id],
    )
    return cur.rowcount


def insert(db: psycopg.Connection, email: str, driver_id: str | None = None) -> str:
    return str(
        scalar(
            db,
            "INSERT INTO app.drivers (email, fleet, driver_id) VALUES (%s, 'ABC', %s)"
            " RETURNING driver_id",
            [email, driver_id],
        )
    )


def is_bound(db: psycopg.Connection, number: int) -> bool:
    return bool(scalar(db, "SELECT bound FROM idmint.driver_numbers WHERE number = %s", [number]))


# --- upserts ------------------------------------------------------------------------------


def test_upserts_that_store_nothing_consume_no_driver_id(drivers: psycopg.Connection) -> None:
    db = drivers
    assert insert(db, "a@x") == "DRV-001ABC"
    assert upsert(db, "a@x", "NOTHING") == 0
    assert upsert(db, "a@x", "UPDATE SET fleet = excluded.fleet") == 1
    assert insert(db, "b@x") == "DRV-002ABC"
    assert scalar(db, "SELECT idmint.next_driver_id('ABC')") == "DRV-003ABC"
    assert scalar(db, "SELECT assigned FROM idmint.fleet_capacity") == 3
    assert db.execute("SELECT email, driver_id FROM app.drivers ORDER BY 1").fetchall() == [
        ("a@x", "DRV-001ABC"),
        ("b@x", "DRV-002ABC"),
    ]


def test_upsert_in_a_longer_transaction_gives_the_number_back_at_commit(
    drivers: psycopg.Connection,
) -> None:
    db = drivers
    insert(db, "a@x")
    with db.transaction():
        assert upsert(db, "a@x", "NOTHING") == 0
        assert insert(db, "b@x") == "DRV-003ABC"  # 002 is held until the commit decides
    assert insert(db, "c@x") == "DRV-002ABC"
    assert insert(db, "d@x") == "DRV-004ABC"


def test_a_reserved_id_in_an_upsert_that_stores_nothing_can_be_inserted_later(
    drivers: psycopg.Connection,
) -> None:
    db = drivers
    insert(db, "a@x")
    rid = str(scalar(db, "SELECT idmint.reserve_driver_id('ABC')"))
    assert upsert(db, "a@x", "NOTHING", rid) == 0
    assert (
        scalar(db, "SELECT status FROM idmint.driver_id_ledger WHERE driver_id = %s", [rid])
        == "reserved"
    )
    assert insert(db, "b@x", rid) == rid
    assert is_bound(db, 2)


def test_an_issued_id_in_an_upsert_that_stores_nothing_stays_unbound(
    drivers: psycopg.Connection,
) -> None:
    db = drivers
    insert(db, "a@x")
    issued = str(scalar(db, "SELECT idmint.next_driver_id('ABC')"))
    assert upsert(db, "a@x", "UPDATE SET fleet = excluded.fleet", issued) == 1
    assert not is_bound(db, 2)
    assert insert(db, "b@x", issued) == issued


def numbers_state(db: psycopg.Connection) -> object:
    """Everything but the audit of calls (which records attempts too)."""
    snapshot = table_snapshot(db)
    snapshot.pop("idmint.entity_events", None)
    return snapshot


def test_upserts_of_entity_numbers_claim_and_bind_nothing(parts: psycopg.Connection) -> None:
    db = parts
    first = str(scalar(db, "INSERT INTO app.parts (sku) VALUES ('s1') RETURNING pn"))
    before = numbers_state(db)
    db.execute("INSERT INTO app.parts (sku) VALUES ('s1') ON CONFLICT (sku) DO NOTHING")
    db.execute("INSERT INTO app.parts (sku, pn) VALUES ('s1', '1234567') ON CONFLICT DO NOTHING")
    db.execute(
        "INSERT INTO app.parts (sku) VALUES ('s1') ON CONFLICT (sku) DO UPDATE SET sku = 's1'"
    )
    assert numbers_state(db) == before
    assert scalar(db, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 1") == 1
    # The never-stored claim left the number free: it can be inserted now.
    assert scalar(db, "INSERT INTO app.parts VALUES ('s2', '1234567') RETURNING pn") == "1234567"
    unbound = str(scalar(db, "SELECT idmint.gen_entity_number('part')"))
    db.execute("INSERT INTO app.parts VALUES ('s1', %s) ON CONFLICT DO NOTHING", [unbound])
    assert scalar(db, "INSERT INTO app.parts VALUES ('s3', %s) RETURNING pn", [unbound]) == unbound
    assert first != unbound


@pytest.mark.parametrize("given", [None, "1234567"])
def test_an_upsert_that_updates_the_number_to_the_proposed_one_is_id004(
    parts: psycopg.Connection, given: str | None
) -> None:
    """The documented limit (docs/DESIGN.md): ON CONFLICT DO UPDATE SET pn = excluded.pn
    meets the number the proposed row's trigger bound in the same statement; idmint cannot
    tell that row from one still on its way into the table, so it is ID004, and nothing
    changes."""
    db = parts
    old = str(scalar(db, "INSERT INTO app.parts (sku) VALUES ('s1') RETURNING pn"))
    before = numbers_state(db)
    with raises_sqlstate("ID004"):
        db.execute(
            "INSERT INTO app.parts (sku, pn) VALUES ('s1', %s)"
            " ON CONFLICT (sku) DO UPDATE SET pn = excluded.pn",
            [given],
        )
    assert numbers_state(db) == before
    assert db.execute("SELECT sku, pn FROM app.parts").fetchall() == [("s1", old)]


@pytest.mark.parametrize("origin", ["new", "claimed", "issued"])
def test_a_number_replaced_in_its_rows_own_transaction_stays_issued_and_bound(
    parts: psycopg.Connection, origin: str
) -> None:
    """§4: "UPDATE to a new value binds the new one; the old stays issued for ever", also
    when the row was inserted in the same transaction (its number used to be un-issued at
    commit, as no stored row carried it then, and could be claimed again)."""
    db = parts
    with db.transaction():
        given = None if origin == "new" else "1234567"
        if origin == "issued":
            given = scalar(db, "SELECT idmint.gen_entity_number('part')")
        old = str(scalar(db, "INSERT INTO app.parts VALUES ('s1', %s) RETURNING pn", [given]))
        db.execute("UPDATE app.parts SET pn = NULL WHERE sku = 's1'")
    new = scalar(db, "SELECT pn FROM app.parts WHERE sku = 's1'")
    assert new not in (None, old)
    assert scalar(db, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 1") == 2
    assert scalar(
        db, "SELECT bound_at IS NOT NULL FROM idmint.entity_numbers WHERE number = %s", [int(old)]
    )
    with raises_sqlstate("ID004"):
        db.execute("SELECT idmint.claim_entity_number(%s)", [old])
    with raises_sqlstate("ID004"):
        db.execute("INSERT INTO app.parts VALUES ('s2', %s)", [old])
    # Undone with a savepoint, the UPDATE leaves the row and its number as they were.
    with db.transaction():
        db.execute("SAVEPOINT u")
        db.execute("UPDATE app.parts SET pn = NULL WHERE sku = 's1'")
        db.execute("ROLLBACK TO u")
    assert scalar(db, "SELECT pn FROM app.parts WHERE sku = 's1'") == new
    assert scalar(db, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 1") == 2


def test_a_number_stored_in_a_row_of_the_transaction_is_not_bound_twice(
    db: psycopg.Connection,
) -> None:
    """No unique index: only the binding stops a second row, whether the first row was
    written by an earlier statement or earlier in the same one."""
    db.execute(
        "CREATE SCHEMA app; CREATE TABLE app.loose (sku text, pn text);"
        " CREATE TRIGGER loose_pn BEFORE INSERT OR UPDATE OR DELETE ON app.loose FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part')"
    )
    with raises_sqlstate("ID004"), db.transaction():
        db.execute("INSERT INTO app.loose VALUES ('a', '1234567')")
        db.execute("INSERT INTO app.loose VALUES ('b', '1234567')")
    with raises_sqlstate("ID004"), db.transaction():
        db.execute("INSERT INTO app.loose VALUES ('a', '1234567'), ('b', '1234567')")
    with raises_sqlstate("ID004"), db.transaction():
        db.execute("INSERT INTO app.loose VALUES ('a', '1234567'), ('b', NULL)")
        db.execute("UPDATE app.loose SET pn = '1234567' WHERE sku = 'b'")
    assert scalar(db, "SELECT count(*) FROM app.loose") == 0


def test_immediate_constraints_do_not_settle_before_the_row_is_stored(
    drivers: psycopg.Connection,
) -> None:
    """SET CONSTRAINTS ALL IMMEDIATE cannot make the settler run inside the statement
    (before the row is stored): idmint keeps its own settling deferred to commit."""
    db = drivers
    insert(db, "a@x")
    with db.transaction():
        db.execute("SET CONSTRAINTS ALL IMMEDIATE")
        assert upsert(db, "a@x", "NOTHING") == 0
        assert insert(db, "b@x") == "DRV-003ABC"
    assert insert(db, "c@x") == "DRV-002ABC"
    assert is_bound(db, 2) and is_bound(db, 3)
    assert scalar(db, "SELECT count(*) FROM idmint.pending_bindings") == 0
    with db.transaction():
        assert upsert(db, "a@x", "NOTHING") == 0
        db.execute("SET CONSTRAINTS ALL IMMEDIATE")  # settles here, at top level
        assert insert(db, "d@x") == "DRV-004ABC"
    assert insert(db, "e@x") == "DRV-005ABC"


def test_a_commit_never_fails_because_the_rows_cannot_be_looked_up(
    drivers: psycopg.Connection,
) -> None:
    db = drivers
    with db.transaction():
        insert(db, "a@x")
        db.execute("ALTER TABLE app.drivers ALTER COLUMN driver_id TYPE int USING 0")
    assert scalar(db, "SELECT count(*) FROM idmint.pending_bindings") == 0
    assert is_bound(db, 1)  # kept as if stored


# --- delete, partitions, COPY, multi-row ---------------------------------------------------


def test_delete_unbinds_and_the_id_is_never_allocated_again(drivers: psycopg.Connection) -> None:
    db = drivers
    assert insert(db, "a@x") == "DRV-001ABC"
    db.execute("DELETE FROM app.drivers WHERE email = 'a@x'")
    assert not is_bound(db, 1)
    assert scalar(db, "SELECT status FROM idmint.driver_id_ledger WHERE number = 1") == "assigned"
    assert insert(db, "b@x") == "DRV-002ABC"
    assert insert(db, "c@x", "DRV-001ABC") == "DRV-001ABC"  # a later row may carry it
    with raises_sqlstate("ID004"):
        insert(db, "d@x", "DRV-001ABC")


def test_insert_then_delete_in_one_transaction_keeps_the_id_assigned(
    drivers: psycopg.Connection,
) -> None:
    db = drivers
    with db.transaction():
        insert(db, "a@x")
        db.execute("DELETE FROM app.drivers")
    assert scalar(db, "SELECT status FROM idmint.driver_id_ledger WHERE number = 1") == "assigned"
    assert not is_bound(db, 1)
    assert insert(db, "b@x") == "DRV-002ABC"


def test_a_row_moved_between_partitions_keeps_its_ids(db: psycopg.Connection) -> None:
    db.execute("SELECT idmint.add_fleet('North', 'ABC')")
    db.execute("CREATE SCHEMA app")
    db.execute(
        "CREATE TABLE app.staff (region int NOT NULL, fleet text NOT NULL, driver_id text,"
        " pn text) PARTITION BY LIST (region)"
    )
    db.execute("CREATE TABLE app.staff_1 PARTITION OF app.staff FOR VALUES IN (1)")
    db.execute("CREATE TABLE app.staff_2 PARTITION OF app.staff FOR VALUES IN (2)")
    db.execute(
        "CREATE TRIGGER staff_id BEFORE INSERT OR UPDATE OR DELETE ON app.staff FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    db.execute(
        "CREATE TRIGGER staff_pn BEFORE INSERT OR UPDATE OR DELETE ON app.staff FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part')"
    )
    row = db.execute(
        "INSERT INTO app.staff (region, fleet) VALUES (1, 'ABC') RETURNING driver_id, pn"
    ).fetchone()
    assert row is not None
    moved = db.execute(
        "UPDATE app.staff SET region = 2 RETURNING tableoid::regclass::text, driver_id, pn"
    ).fetchone()
    assert moved == ("app.staff_2", *row)
    assert is_bound(db, 1)
    assert scalar(db, "SELECT bound_at IS NOT NULL FROM idmint.entity_numbers") is True
    with raises_sqlstate("ID004"):
        db.execute("INSERT INTO app.staff VALUES (1, 'ABC', %s, NULL)", [row[0]])


def test_copy_and_multi_row_insert_behave_as_single_inserts(drivers: psycopg.Connection) -> None:
    db = drivers
    with db.cursor().copy("COPY app.drivers (email, fleet) FROM STDIN") as copy:
        for email in ("a@x", "b@x", "c@x"):
            copy.write_row((email, "ABC"))
    rows = db.execute(
        "INSERT INTO app.drivers (email, fleet) VALUES ('d@x', 'ABC'), ('e@x', 'ABC')"
        " RETURNING driver_id"
    ).fetchall()
    assert [r[0] for r in rows] == ["DRV-004ABC", "DRV-005ABC"]
    assert scalar(db, "SELECT count(*) FROM idmint.driver_numbers WHERE bound") == 5
    issued = scalar(db, "SELECT idmint.next_driver_id('ABC')")
    with raises_sqlstate("ID004"):
        db.execute(
            "INSERT INTO app.drivers (email, fleet, driver_id) VALUES ('f@x', 'ABC', %s),"
            " ('g@x', 'ABC', %s)",
            [issued, issued],
        )
    with (
        raises_sqlstate("ID004"),
        db.cursor().copy("COPY app.drivers (email, fleet, driver_id) FROM STDIN") as copy,
    ):
        copy.write_row(("h@x", "ABC", "DRV-001ABC"))


def test_a_rolled_back_transaction_leaves_no_pending_binding(drivers: psycopg.Connection) -> None:
    db = drivers
    before = table_snapshot(db)
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("INSERT INTO app.drivers (email, fleet) VALUES ('a@x', 'ABC'), ('a@x', 'ABC')")
    assert table_snapshot(db) == before
    assert insert(db, "a@x") == "DRV-001ABC"
    assert scalar(db, "SELECT count(*) FROM idmint.pending_bindings") == 0


# --- backfill -----------------------------------------------------------------------------


def test_backfilled_numbers_are_bound(db: psycopg.Connection) -> None:
    db.execute("CREATE SCHEMA app")
    db.execute("CREATE TABLE app.legacy (id int PRIMARY KEY, pn text)")
    db.execute("INSERT INTO app.legacy SELECT g, NULL FROM generate_series(1, 50) g")
    assert scalar(db, "SELECT idmint.backfill_entity_numbers('app.legacy', 'pn', 'part')") == 50
    assert scalar(db, "SELECT count(*) FROM idmint.entity_numbers WHERE bound_at IS NULL") == 0
    db.execute(
        "CREATE TRIGGER legacy_pn BEFORE INSERT OR UPDATE OR DELETE ON app.legacy FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part')"
    )
    with raises_sqlstate("ID004"):  # a copy of a backfilled number into another row
        db.execute("INSERT INTO app.legacy SELECT 51, pn FROM app.legacy WHERE id = 1")


@pytest.mark.parametrize(
    "column_type",
    ["text", "varchar(7)", "varchar(20)", "char(7)", "integer", "bigint", "numeric(7,0)",
     "numeric(12,0)", "numeric"],
)  # fmt: skip
def test_backfill_accepts_the_documented_column_types(
    db: psycopg.Connection, column_type: str
) -> None:
    db.execute("CREATE SCHEMA app")
    db.execute(f"CREATE TABLE app.t (id int, pn {column_type})")
    db.execute("INSERT INTO app.t SELECT g, NULL FROM generate_series(1, 5) g")
    assert scalar(db, "SELECT idmint.backfill_entity_numbers('app.t', 'pn', 2)") == 5
    values = [str(r[0]) for r in db.execute("SELECT pn FROM app.t")]
    assert all(len(v) == 7 and v.startswith("2") for v in values), values
    assert scalar(db, "SELECT count(*) FROM idmint.entity_numbers WHERE bound_at IS NOT NULL") == 5


@pytest.mark.parametrize(
    "column_type",
    ["varchar(6)", "char(6)", "char(8)", "smallint", "numeric(5,0)", "numeric(9,2)", "real",
     "uuid", "date", "int[]"],
)  # fmt: skip
def test_backfill_refuses_other_column_types_and_changes_nothing(
    db: psycopg.Connection, column_type: str
) -> None:
    db.execute("CREATE SCHEMA app")
    db.execute(f"CREATE TABLE app.t (id int, pn {column_type})")
    db.execute("INSERT INTO app.t SELECT g, NULL FROM generate_series(1, 5) g")
    before = table_snapshot(db)
    with raises_sqlstate("ID003"):
        db.execute("SELECT idmint.backfill_entity_numbers('app.t', 'pn', 'part')")
    assert table_snapshot(db) == before
    assert scalar(db, "SELECT count(*) FROM app.t WHERE pn IS NOT NULL") == 0
