"""Adversarial review 13 of the bindings fix e3ab9b9 (review attack11 findings A, C, E, F):
an app role that is a member of `idmint_user` only and owns its schema `own` attacks
another role's bound numbers and driver ids, and the commit-time look-up (cast to the
column's own type) is checked against every column type the trigger accepts.

Findings, failing on e3ab9b9 and fixed since:
H. `unbind_entity_number` / `unbind_driver_id` checked only that the table they are given
   is the one the number is bound to, not that the caller may touch that table: any
   `idmint_user` named the victim's table by its oid and unbound the victim's number (then
   stored it in a row of its own, or with `keep_entity_number` left it unbound for good).
   Now the session's role must be allowed to DELETE (UPDATE for keep) rows of that table.
I. The trigger right-trimmed blanks from any column's value (meant for char(n)): a text
   value '4000001 ' was bound as 4000001 and un-issued at commit. Now only char(n).
J. A jsonb number column: the look-up cast '4000001' to jsonb (a json number) and missed
   the row (the trigger writes a json string). json and jsonb columns compare as jsonb.
K. `bound_to` is an oid: a table rebuilt under its name kept its rows' numbers bound to
   the old oid. A binding whose table no longer exists is freed from the table named.
L. A char(12) driver id column: DELETE passed the padded id; the driver trigger and
   `unbind_driver_id` now trim char(n) padding.

Findings left open, their tests only on branch attack13 (see the closing note):
M. `ON CONFLICT (id) DO UPDATE SET num = excluded.num` is ID004 (the documented limit of
   BEFORE triggers and upserts, docs/DESIGN.md).
N. The trigger confirms a reservation made with an explicit reserved_by for any role's
   row: CONTRACT section 3 gives the trigger no way to present a holder.

Withstood: a table of the same name in the attacker's schema, the attacker's own table
named to unbind; the look-up for text, varchar(7), char(7), char(8), integer, bigint,
numeric(7,0), numeric(9,2), a CHECKed varchar domain, an enum and citext (insert, upsert
DO NOTHING / DO UPDATE storing nothing, DELETE, re-insert); malformed values (' 4000001',
'4000001.0', '04000001', 4000001.5, 1e30, NaN, Infinity) are ID003, never XX000;
4.000001e6 in numeric binds 4000001; a driver id with blanks is refused, lower case
stored normalized; odd direct calls of the public helpers give ID0xx only; an unbind by
oid alone is undone at commit (the attacker's look-up of the victim's table fails).
"""

from __future__ import annotations

import psycopg
import pytest

from tests.util import Connect, number_state, raises_sqlstate, scalar, victim_driver

VICTIM = """
CREATE TABLE public.orders (id int PRIMARY KEY, num varchar(7) UNIQUE);
CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON public.orders FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_entity_number('num', 'order');
"""


def own_table(app: psycopg.Connection, name: str, coltype: str) -> None:
    app.execute(
        f"CREATE TABLE own.{name} (id int PRIMARY KEY, note text, num {coltype});"
        f"CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON own.{name} FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('num', 'order')"
    )


# --- Finding H: the victim's table named by its oid --------------------------------------


def test_an_app_role_cannot_unbind_another_roles_number_by_naming_its_table_oid(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (H) (cross-tenant: one number in two rows). The fix checks `bound_to = tbl`,
    but the caller chooses tbl: the victim's table by oid needs no privilege.

        -- victim: INSERT INTO public.orders (id) VALUES (1) -> num N, bound to public.orders
        -- attacker (idmint_user only), one transaction:
        SELECT idmint.unbind_entity_number(<oid of public.orders>::regclass, 'num', 'N');
        INSERT INTO own.mine (id, num) VALUES (1, 'N');   -- accepted, no ID004
        COMMIT;  -- N bound to own.mine; public.orders' row carries it too"""
    db.execute(VICTIM)
    n = str(scalar(db, "INSERT INTO public.orders (id) VALUES (1) RETURNING num"))
    victim = scalar(db, "SELECT 'public.orders'::regclass::oid")
    app = app_connect()
    own_table(app, "mine", "varchar(7)")
    with pytest.raises(psycopg.Error) as info, app.transaction():
        try:
            app.execute(
                "SELECT idmint.unbind_entity_number(%s::oid::regclass, 'num', %s)",
                [victim, n],
            )
        except psycopg.Error as e:
            assert e.sqlstate is not None and e.sqlstate.startswith("ID"), e
            raise
        app.execute("INSERT INTO own.mine (id, num) VALUES (1, %s)", [n])
    assert info.value.sqlstate is not None and info.value.sqlstate.startswith("ID")
    assert scalar(db, "SELECT count(*) FROM own.mine") == 0
    assert number_state(db, n) == (True, True)


def test_an_app_role_cannot_leave_another_roles_number_unbound_for_good(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (H), no row of the attacker needed: after the unbind by oid,
    `keep_entity_number` deletes the transaction's pending binding, so nothing re-binds the
    number at commit; any row may then carry the victim's number.

        SELECT idmint.unbind_entity_number(<oid of public.orders>::regclass, 'num', 'N');
        SELECT idmint.keep_entity_number(<oid of public.orders>::regclass, 'num', 'N');
        COMMIT;  -- N issued, unbound, while public.orders' row carries it"""
    db.execute(VICTIM)
    n = str(scalar(db, "INSERT INTO public.orders (id) VALUES (1) RETURNING num"))
    victim = scalar(db, "SELECT 'public.orders'::regclass::oid")
    app = app_connect()
    try:
        with app.transaction():
            app.execute(
                "SELECT idmint.unbind_entity_number(%(t)s::oid::regclass, 'num', %(n)s),"
                " idmint.keep_entity_number(%(t)s::oid::regclass, 'num', %(n)s)",
                {"t": victim, "n": n},
            )
    except psycopg.Error as e:
        assert e.sqlstate is not None and e.sqlstate.startswith("ID"), e
    assert number_state(db, n) == (True, True), "another role's stored row lost its binding"


def test_an_app_role_cannot_unbind_another_roles_driver_id_by_naming_its_table_oid(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (H), driver ids: the settled id is bound_to the victim's table; naming it by
    oid unbinds it, and the attacker's own row then takes it in the same transaction.

        SELECT idmint.unbind_driver_id(<oid of public.drivers>::regclass, 'driver_id', 'DRV-001ABC');
        INSERT INTO own.mine VALUES ('ABC', 'DRV-001ABC');   -- accepted: two rows
        COMMIT;"""
    assert victim_driver(db) == "DRV-001ABC"
    victim = scalar(db, "SELECT 'public.drivers'::regclass::oid")
    app = app_connect()
    app.execute(
        "CREATE TABLE own.mine (fleet text, driver_id text);"
        "CREATE TRIGGER d BEFORE INSERT OR UPDATE OR DELETE ON own.mine FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    with pytest.raises(psycopg.Error) as info, app.transaction():
        try:
            app.execute(
                "SELECT idmint.unbind_driver_id(%s::oid::regclass, 'driver_id', 'DRV-001ABC')",
                [victim],
            )
        except psycopg.Error as e:
            assert e.sqlstate is not None and e.sqlstate.startswith("ID"), e
            raise
        app.execute("INSERT INTO own.mine VALUES ('ABC', 'DRV-001ABC')")
    assert info.value.sqlstate is not None and info.value.sqlstate.startswith("ID")
    assert scalar(db, "SELECT count(*) FROM own.mine") == 0
    assert scalar(db, "SELECT bound FROM idmint.driver_numbers WHERE number = 1") is True


def test_an_app_role_cannot_leave_another_roles_driver_id_unbound_for_good(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (H), driver ids, no row of the attacker: after the unbind by oid,
    `bind_driver_id` naming the attacker's own table moves the pending binding there; at
    commit no row of own.mine carries the id, so the settling unbinds it for good.

        SELECT idmint.unbind_driver_id(<oid of public.drivers>::regclass, 'driver_id', 'DRV-001ABC'),
               idmint.bind_driver_id('own.mine', 'driver_id', 'ABC', 'DRV-001ABC');
        COMMIT;  -- DRV-001ABC assigned, unbound, while public.drivers' row carries it"""
    victim_driver(db)
    victim = scalar(db, "SELECT 'public.drivers'::regclass::oid")
    app = app_connect()
    app.execute("CREATE TABLE own.mine (fleet text, driver_id text)")
    try:
        with app.transaction():
            app.execute(
                "SELECT idmint.unbind_driver_id(%s::oid::regclass, 'driver_id', 'DRV-001ABC'),"
                " idmint.bind_driver_id('own.mine', 'driver_id', 'ABC', 'DRV-001ABC')",
                [victim],
            )
    except psycopg.Error as e:
        assert e.sqlstate is not None and e.sqlstate.startswith("ID"), e
    assert scalar(db, "SELECT bound FROM idmint.driver_numbers WHERE number = 1") is True


def test_an_unbind_by_oid_alone_is_undone_at_commit(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """Withstood (part of H): the unbind by oid alone is settled by the attacker's look-up
    of the victim's table, which fails (no SELECT right) and so keeps the binding."""
    db.execute(VICTIM)
    n = str(scalar(db, "INSERT INTO public.orders (id) VALUES (1) RETURNING num"))
    victim = scalar(db, "SELECT 'public.orders'::regclass::oid")
    app = app_connect()
    app.execute("SELECT idmint.unbind_entity_number(%s::oid::regclass, 'num', %s)", [victim, n])
    assert number_state(db, n) == (True, True)
    with raises_sqlstate("ID004"):
        app.execute("SELECT idmint.claim_entity_number(%s)", [n])


def test_a_same_named_table_of_the_attacker_does_not_unbind_the_victims_number(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """Withstood: own.orders (same name as the victim's public.orders, same column) with
    the trigger; naming it (or deleting its own row that claims to carry N: ID004 first)
    leaves the victim's binding alone."""
    db.execute(VICTIM)
    n = str(scalar(db, "INSERT INTO public.orders (id) VALUES (1) RETURNING num"))
    app = app_connect()
    own_table(app, "orders", "varchar(7)")
    app.execute("SELECT idmint.unbind_entity_number('own.orders', 'num', %s)", [n])
    assert number_state(db, n) == (True, True)
    with raises_sqlstate("ID004"):
        app.execute("INSERT INTO own.orders (id, num) VALUES (1, %s)", [n])
    with app.transaction():
        app.execute("SELECT idmint.unbind_entity_number('own.orders', 'num', %s)", [n])
        with raises_sqlstate("ID004"), app.transaction():
            app.execute("INSERT INTO own.orders (id, num) VALUES (1, %s)", [n])
    assert number_state(db, n) == (True, True)


# --- Finding I: trailing blanks in a text column -----------------------------------------


@pytest.mark.parametrize("coltype", ["text", "varchar(8)"])
def test_a_trailing_blank_in_a_text_column_is_malformed_not_un_issued(
    db: psycopg.Connection, app_connect: Connect, coltype: str
) -> None:
    """FOUND (I). The trigger's rtrim (for char(n)) applies to every column type: in a
    text column '4000001 ' is bound as 4000001 without ID003; the row stores '4000001 ',
    the look-up casts '4000001' to text and misses it, and the claim is undone: the number
    is not issued while the row stores it (gen_entity_number may hand it out again).

        CREATE TABLE own.t (id int PRIMARY KEY, note text, num text);  -- + the trigger
        INSERT INTO own.t (id, num) VALUES (1, '4000001 ');  -- accepted
        -- after commit: 4000001 not in idmint.entity_numbers"""
    app = app_connect()
    own_table(app, "t", coltype)
    try:
        app.execute("INSERT INTO own.t (id, num) VALUES (1, '4000001 ')")
    except psycopg.Error as e:
        assert e.sqlstate == "ID003", e
        assert scalar(db, "SELECT count(*) FROM own.t") == 0
        return
    stored = scalar(db, "SELECT num FROM own.t")
    assert number_state(db, 4000001) == (True, True), f"row stores {stored!r}, number not bound"


# --- Finding J: a jsonb number column ----------------------------------------------------


def test_a_jsonb_column_keeps_its_new_number_issued(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (J). A jsonb column: NULL gets a new number written as a json string; at
    commit the look-up compares the row's '"N"' with CAST('N' AS jsonb) = N (a json
    number), finds nothing and un-issues the number the row stores.

        CREATE TABLE own.j (id int PRIMARY KEY, note text, num jsonb);  -- + the trigger
        INSERT INTO own.j (id) VALUES (1) RETURNING num;  -- "4xxxxxx", then un-issued"""
    app = app_connect()
    own_table(app, "j", "jsonb")
    try:
        num = scalar(app, "INSERT INTO own.j (id) VALUES (1) RETURNING num #>> '{}'")
    except psycopg.Error as e:
        assert e.sqlstate == "ID003", e
        return
    assert isinstance(num, str)
    assert number_state(db, num) == (True, True), f"row stores {num}, number not bound"


# --- Withstood: the look-up for every accepted column type -------------------------------


COLUMN_TYPES = {
    "text": "text",
    "varchar7": "varchar(7)",
    "char7": "char(7)",
    "char8": "char(8)",
    "integer": "integer",
    "bigint": "bigint",
    "numeric7": "numeric(7,0)",
    "numeric92": "numeric(9,2)",
    "domain": "own.code",
    "enum": "own.codes",
    "citext": "public.citext",
}


@pytest.mark.parametrize("kind", list(COLUMN_TYPES))
def test_the_commit_look_up_finds_stored_rows_of_every_column_type(
    db: psycopg.Connection, app_connect: Connect, kind: str
) -> None:
    """Withstood: claims, upserts that store nothing (DO NOTHING and DO UPDATE of another
    column), DELETE and a re-insert settle by the stored rows for each column type."""
    if kind == "citext":
        db.execute("CREATE EXTENSION IF NOT EXISTS citext SCHEMA public")
    app = app_connect()
    app.execute(
        "CREATE DOMAIN own.code AS varchar(10) CHECK (VALUE ~ '^[0-9]+$');"
        "CREATE TYPE own.codes AS ENUM ('4000001', '4000002', '4000003', '4000004');"
    )
    own_table(app, "t", COLUMN_TYPES[kind])
    app.execute("INSERT INTO own.t (id, num) VALUES (1, '4000001')")
    assert number_state(db, 4000001) == (True, True)
    app.execute("INSERT INTO own.t (id, num) VALUES (1, '4000002') ON CONFLICT (id) DO NOTHING")
    app.execute(
        "INSERT INTO own.t (id, num) VALUES (1, '4000003')"
        " ON CONFLICT (id) DO UPDATE SET note = 'x'"
    )
    assert number_state(db, 4000002) == (False, False)
    assert number_state(db, 4000003) == (False, False)
    assert number_state(db, 4000001) == (True, True)
    # Stored in this transaction, updated and deleted in the next.
    with app.transaction():
        app.execute("INSERT INTO own.t (id, num) VALUES (2, '4000004')")
        app.execute("UPDATE own.t SET note = 'y' WHERE id = 2")
    assert number_state(db, 4000004) == (True, True)
    app.execute("DELETE FROM own.t WHERE id = 1")
    assert number_state(db, 4000001) == (True, False)
    app.execute("INSERT INTO own.t (id, num) VALUES (3, '4000001')")
    assert number_state(db, 4000001) == (True, True)
    with raises_sqlstate("ID004"):
        app.execute("INSERT INTO own.t (id, num) VALUES (4, '4000004')")
    if kind != "enum":
        num = scalar(app, "INSERT INTO own.t (id) VALUES (5) RETURNING num::text")
        assert isinstance(num, str)
        assert number_state(db, num.rstrip(" ").removesuffix(".00")) == (True, True)


# --- Withstood: malformed values are ID003 -----------------------------------------------


@pytest.mark.parametrize(
    ("coltype", "value"),
    [
        ("text", " 4000001"),
        ("text", "4000001.0"),
        ("text", "04000001"),
        ("text", "4000001\t"),
        ("char(8)", " 4000001"),
        ("numeric(9,2)", "4000001.5"),
        ("numeric", "1e30"),
        ("numeric", "NaN"),
        ("numeric", "Infinity"),
        ("numeric", "-4000001"),
        ("double precision", "4000001.25"),
        ("double precision", "Infinity"),
    ],
)
def test_a_malformed_value_is_id003(
    db: psycopg.Connection, app_connect: Connect, coltype: str, value: str
) -> None:
    """Withstood: never XX000, nothing stored or issued."""
    app = app_connect()
    own_table(app, "t", coltype)
    with raises_sqlstate("ID003"):
        app.execute("INSERT INTO own.t (id, num) VALUES (1, %s)", [value])
    assert scalar(db, "SELECT count(*) FROM idmint.entity_numbers") == 0


def test_an_exponent_in_a_numeric_column_binds_the_number_stored(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """Withstood: 4.000001e6 in numeric is stored as 4000001 and bound as such."""
    app = app_connect()
    own_table(app, "t", "numeric")
    app.execute("INSERT INTO own.t (id, num) VALUES (1, '4.000001e6')")
    assert number_state(db, 4000001) == (True, True)
    app.execute("DELETE FROM own.t")
    assert number_state(db, 4000001) == (True, False)


# --- Finding K: a table recreated under its name (new oid) never unbinds -----------------


def test_delete_unbinds_after_the_table_is_recreated_under_its_name(
    db: psycopg.Connection,
) -> None:
    """FOUND (K) (regression of the fix; fail-safe direction: a number stays bound to no
    row). `bound_to` is the table's oid; a table rebuilt under its name (pg_dump and
    restore, or a copy-and-swap migration: new oid, rows copied before the trigger is
    created) keeps its rows' numbers bound to the old oid. A DELETE then never unbinds them
    (CONTRACT section 4: DELETE unbinds, a later row may carry the number): the number is
    ID004 in every later row.

        INSERT INTO public.orders (id) VALUES (1);   -- num N, bound_to = old oid
        CREATE TABLE public.orders_new (LIKE public.orders INCLUDING ALL);
        INSERT INTO public.orders_new SELECT * FROM public.orders;
        DROP TABLE public.orders; ALTER TABLE public.orders_new RENAME TO orders;
        CREATE TRIGGER num ... ON public.orders ...;
        DELETE FROM public.orders WHERE id = 1;      -- N stays bound
        INSERT INTO public.orders VALUES (2, 'N');   -- ID004"""
    db.execute(VICTIM)
    n = str(scalar(db, "INSERT INTO public.orders (id) VALUES (1) RETURNING num"))
    db.execute(
        "CREATE TABLE public.orders_new (LIKE public.orders INCLUDING ALL);"
        "INSERT INTO public.orders_new SELECT * FROM public.orders;"
        "DROP TABLE public.orders; ALTER TABLE public.orders_new RENAME TO orders;"
        "CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON public.orders FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('num', 'order')"
    )
    db.execute("DELETE FROM public.orders WHERE id = 1")
    assert number_state(db, n) == (True, False)
    db.execute("INSERT INTO public.orders VALUES (2, %s)", [n])
    assert number_state(db, n) == (True, True)


def test_a_char_driver_id_column_unbinds_on_delete(db: psycopg.Connection) -> None:
    """FOUND (L) (fail-safe direction). A char(12) driver id column stores the id padded;
    the DELETE trigger passes 'DRV-001ABC  ' to unbind_driver_id, whose
    is_valid_driver_id check fails, so nothing is unbound (as F fixed for char(n) entity
    numbers): the id stays bound to no row and a later row carrying it gets ID004.

        CREATE TABLE public.drivers (email text PRIMARY KEY, fleet text, driver_id char(12));
        -- + assign_driver_id('fleet', 'driver_id')
        INSERT INTO public.drivers (email, fleet) VALUES ('a@x', 'ABC');  -- DRV-001ABC
        DELETE FROM public.drivers;                                       -- still bound
        INSERT INTO public.drivers VALUES ('b@x', 'ABC', 'DRV-001ABC');   -- ID004"""
    db.execute("SELECT idmint.add_fleet('North', 'ABC')")
    db.execute(
        "CREATE TABLE public.drivers (email text PRIMARY KEY, fleet text, driver_id char(12));"
        "CREATE TRIGGER d BEFORE INSERT OR UPDATE OR DELETE ON public.drivers FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    db.execute("INSERT INTO public.drivers (email, fleet) VALUES ('a@x', 'ABC')")
    assert scalar(db, "SELECT bound FROM idmint.driver_numbers WHERE number = 1") is True
    db.execute("DELETE FROM public.drivers")
    assert scalar(db, "SELECT bound FROM idmint.driver_numbers WHERE number = 1") is False
    db.execute("INSERT INTO public.drivers VALUES ('b@x', 'ABC', 'DRV-001ABC')")
    assert scalar(db, "SELECT bound FROM idmint.driver_numbers WHERE number = 1") is True


@pytest.mark.parametrize("value", ["DRV-001ABC ", " DRV-001ABC", "drv-001abc"])
def test_a_driver_id_with_blanks_or_lower_case_is_refused_or_stored_normalized(
    db: psycopg.Connection, value: str
) -> None:
    """Withstood: an issued, unbound id given with blanks is ID003/ID006 (nothing bound);
    lower case is stored normalized and bound after commit."""
    db.execute("SELECT idmint.add_fleet('North', 'ABC')")
    assert scalar(db, "SELECT idmint.next_driver_id('ABC')") == "DRV-001ABC"
    db.execute(
        "CREATE TABLE public.drivers (email text PRIMARY KEY, fleet text, driver_id text);"
        "CREATE TRIGGER d BEFORE INSERT OR UPDATE OR DELETE ON public.drivers FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    try:
        db.execute("INSERT INTO public.drivers VALUES ('a@x', 'ABC', %s)", [value])
    except psycopg.Error as e:
        assert e.sqlstate in ("ID003", "ID006"), e
        assert scalar(db, "SELECT bound FROM idmint.driver_numbers WHERE number = 1") is False
        return
    assert scalar(db, "SELECT driver_id FROM public.drivers") == "DRV-001ABC"
    assert scalar(db, "SELECT bound FROM idmint.driver_numbers WHERE number = 1") is True


def test_copy_with_a_trailing_blank_into_a_text_column(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (I) through COPY: the same as INSERT, the row stores '4000002 ' and 4000002 is
    un-issued at commit (4000001, written plainly, stays bound)."""
    app = app_connect()
    own_table(app, "t", "text")
    try:
        with app.cursor().copy("COPY own.t (id, num) FROM STDIN") as cp:
            cp.write_row((1, "4000001"))
            cp.write_row((2, "4000002 "))
    except psycopg.Error as e:
        assert e.sqlstate == "ID003", e
        assert scalar(db, "SELECT count(*) FROM own.t") == 0
        return
    assert number_state(db, 4000001) == (True, True)
    assert number_state(db, 4000002) == (True, True), "row stores '4000002 ', number not issued"


@pytest.mark.parametrize(
    "call",
    [
        "SELECT idmint.unbind_entity_number(NULL, 'num', '4000001')",
        "SELECT idmint.unbind_entity_number('own.t', NULL, '4000001')",
        "SELECT idmint.unbind_entity_number(0::oid::regclass, 'num', '4000001')",
        "SELECT idmint.unbind_entity_number('own.t', 'num', '99999999999999999999')",
        "SELECT idmint.keep_entity_number('own.t', 'num', '4000001.0')",
        "SELECT idmint.bind_entity_numbers('own.t', 'num', 'order', '{}')",
        "SELECT idmint.bind_entity_numbers('own.t', 'num', 'order', '{{4000001}}')",
        "SELECT idmint.bind_entity_numbers('own.t', 'num', 'order', '[5:6]={NULL,4000001}')",
        "SELECT idmint.bind_entity_numbers('own.t', 'num', 'order', '{4000001,4000001}')",
        "SELECT idmint.bind_entity_numbers('own.t', 'num', 'order', '{99999999999}')",
        "SELECT idmint.bind_entity_numbers('own.t', 'num', 'order', '{NaN}')",
        "SELECT idmint.bind_entity_numbers('own.t', 'num', 'order', '{NULL}', NULL)",
        "SELECT idmint.bind_entity_numbers('own.t', 'num', NULL, '{NULL}')",
        "SELECT idmint.unbind_driver_id('own.t', 'num', 'DRV-001ZZZ')",
        "SELECT idmint.unbind_driver_id('own.t', 'num', NULL)",
        "SELECT idmint.bind_driver_id('own.t', 'num', 'ABC', 'DRV-999ABC')",
        "SELECT idmint.bind_driver_id('own.t', 'num', 'ZZZ', NULL)",
        "SELECT idmint.bind_driver_id('own.t', 'num', 'ABC', 'DRV-001ABC ')",
        "SELECT idmint.settle_bindings('{1}', '{1}')",
        "SELECT idmint.settle_bindings('{1}', '{NULL}')",
    ],
)
def test_direct_calls_of_the_binding_helpers_raise_only_documented_states(
    db: psycopg.Connection, app_connect: Connect, call: str
) -> None:
    """Withstood: odd arguments to the public helpers give ID0xx or succeed; never XX000,
    P0001 or another class."""
    db.execute("SELECT idmint.add_fleet('North', 'ABC')")
    app = app_connect()
    own_table(app, "t", "text")
    try:
        with app.transaction():
            app.execute(call)
    except psycopg.Error as e:
        assert e.sqlstate is not None and e.sqlstate.startswith("ID"), e
