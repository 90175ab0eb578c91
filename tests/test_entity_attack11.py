"""Adversarial review 11 of the entity-number engine (on 928935a), as an application would
attack it with ordinary SQL: an app role that is a member of `idmint_user` only and owns
its schema `own` (casts, domains, operators and functions named like pg_catalog's, its own
triggers of every kind), COPY into tables with the DEFAULT and with the trigger
(partitioned, a domain CHECK failing midway, savepoints), every isolation level and small
timeouts. Each test asserts the exact rule it checks.

Findings, failing on 928935a and fixed since:
A. `unbind_entity_number` (and `unbind_driver_id`) unbound any number, whoever's row
   carried it, also through the trigger by an app's own json cast on DELETE: one number
   in two rows. Now a binding records its table (`bound_to`) and only that table unbinds.
C. A NOT NULL domain on any other column of a triggered table made the commit-time
   look-up fail (it built a whole row): upserts that stored nothing kept their numbers.
   The look-up now casts the value to the column's own type only.
E. The public `bind_entity_numbers`: a 2-D array gave 0A000 (now ID003); an array not
   starting at 1 got its new number at the wrong position.
F. A char(8) or numeric(9,2) column: DELETE did not unbind, an UPDATE un-issued the number
   it replaced (the trigger now reads the number without padding or a zero fraction).

Findings left open, their tests only on branch attack11 (see the closing note):
B. `bind_entity_numbers` naming a table the caller cannot read binds another role's
   issued, unbound number to no row; its owner's INSERT gets ID004 (any role that knows
   such a number can also bind it to a row of its own, as CONTRACT section 4 allows).
D. A partition detached in the transaction that inserted its rows: their numbers are
   un-issued at commit while the rows are stored in the detached table.
G. A superuser's DELETE/UPDATE of a table the app owns runs the app's json cast of another
   column's type through the trigger's `to_jsonb(OLD/NEW)` (as any trigger, default or
   index expression of a table owned by an untrusted role would).

Withstood: app code in every hook runs as the app role; COPY (DEFAULT, trigger, both,
partitioned) with a domain CHECK failing midway, savepoints and rollbacks at every
isolation level; tiny statement/lock timeouts retried; a claim timing out on a holder.
"""

from __future__ import annotations

import random
import threading

import psycopg
import pytest

from tests.util import (
    Connect,
    check_exact,
    entity_rows,
    issued,
    number_state,
    raises_sqlstate,
    scalar,
    victim_driver,
)

ORDER = 4


VICTIM = """
CREATE TABLE public.orders (id int PRIMARY KEY, num varchar(7) UNIQUE);
CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON public.orders FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_entity_number('num', 'order');
"""


# --- Finding A: any idmint_user unbinds any other role's bound number --------------------


def test_an_app_role_cannot_unbind_a_number_another_roles_row_carries(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (A) (cross-tenant: one number in two rows). `idmint.unbind_entity_number` is
    public (EXECUTE for idmint_user) and SECURITY DEFINER; it unbinds whatever number it is
    given, whoever's row carries it, and records the unbinding as "a stored row of tbl was
    deleted" for the table the caller names. At commit the caller's own table has no such
    row, so the number stays unbound for good. The caller (or anyone) can then insert the
    same number into another row of a triggered table: one number in two rows, the victim's
    row carrying an unbound number.

        -- victim (another role): INSERT INTO public.orders (id) VALUES (1) -> num N, bound
        -- attacker, member of idmint_user only:
        SELECT idmint.unbind_entity_number('own.mine', 'num', 'N');   -- commit
        INSERT INTO own.mine VALUES ('N');  -- accepted: N is now in two rows"""
    db.execute(VICTIM)
    n = str(scalar(db, "INSERT INTO public.orders (id) VALUES (1) RETURNING num"))
    assert number_state(db, n) == (True, True)
    app = app_connect()
    app.execute(
        "CREATE TABLE own.mine (num varchar(7));"
        "CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON own.mine FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('num', 'order')"
    )
    try:
        app.execute("SELECT idmint.unbind_entity_number('own.mine', 'num', %s)", [n])
    except psycopg.Error as e:
        assert e.sqlstate is not None and e.sqlstate.startswith("ID"), e
    # The victim's row is stored and carries n: it must still be bound.
    assert number_state(db, n) == (True, True), "another role's stored row lost its binding"
    with raises_sqlstate("ID004"):
        app.execute("INSERT INTO own.mine VALUES (%s)", [n])
    assert scalar(db, "SELECT count(*) FROM own.mine WHERE num = %s", [n]) == 0


def test_an_app_tables_own_json_cast_cannot_unbind_another_roles_number(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (A) through the trigger itself (no direct helper call): the trigger reads OLD
    through `to_jsonb(OLD)`, which calls the app's own cast to json for its column type
    (as the app: no escalation, but the value is the app's word). An enum column whose cast
    names another role's number on DELETE makes the trigger unbind that number; the
    settling looks for it in the app's table, finds no row, and leaves it unbound. The app
    then stores the same number in a row of its own: one number in two rows. (Guarding the
    helpers' direct calls alone would not close it.)

        CREATE TYPE own.e AS ENUM ('4000001', 'N');
        CREATE CAST (own.e AS json) WITH FUNCTION own.e_json(own.e);  -- 'N' when own.lie
        -- own.en (num own.e) + the trigger; INSERT '4000001';
        BEGIN; SET LOCAL own.lie = 'on'; DELETE FROM own.en; COMMIT;
        INSERT INTO own.en VALUES ('N');  -- accepted"""
    db.execute(VICTIM)
    n = str(scalar(db, "INSERT INTO public.orders (id) VALUES (1) RETURNING num"))
    app = app_connect()
    app.execute(
        f"CREATE TYPE own.e AS ENUM ('4000001', '{n}');"
        "CREATE FUNCTION own.e_json(own.e) RETURNS json LANGUAGE sql AS $f$"
        f" SELECT to_json(CASE WHEN current_setting('own.lie', true) = 'on' THEN '{n}'"
        " ELSE $1::text END) $f$;"
        "CREATE CAST (own.e AS json) WITH FUNCTION own.e_json(own.e);"
        "CREATE TABLE own.en (num own.e);"
        "CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON own.en FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('num', 'order')"
    )
    app.execute("INSERT INTO own.en VALUES ('4000001')")
    with app.transaction():
        app.execute("SET LOCAL own.lie = 'on'")
        try:
            app.execute("DELETE FROM own.en")
        except psycopg.Error as e:
            assert e.sqlstate is not None and e.sqlstate.startswith("ID"), e
            raise
    assert number_state(db, n) == (True, True), "another role's stored row lost its binding"
    with raises_sqlstate("ID004"):
        app.execute("INSERT INTO own.en VALUES (%s)", [n])


def test_an_app_role_cannot_unbind_a_driver_id_another_roles_row_carries(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (A), driver-id side (outside this review's scope, seen in passing):
    `idmint.unbind_driver_id` is public and unbinds any bound driver id the same way; the
    app then stores the victim's driver id in a row of its own triggered table.

        SELECT idmint.unbind_driver_id('own.mine', 'driver_id', 'DRV-001ABC');
        INSERT INTO own.mine VALUES ('ABC', 'DRV-001ABC');  -- accepted: two rows"""
    assert victim_driver(db) == "DRV-001ABC"
    app = app_connect()
    app.execute(
        "CREATE TABLE own.mine (fleet text, driver_id text);"
        "CREATE TRIGGER d BEFORE INSERT OR UPDATE OR DELETE ON own.mine FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    try:
        app.execute("SELECT idmint.unbind_driver_id('own.mine', 'driver_id', 'DRV-001ABC')")
    except psycopg.Error as e:
        assert e.sqlstate is not None and e.sqlstate.startswith("ID"), e
    assert scalar(db, "SELECT bound FROM idmint.driver_numbers WHERE number = 1") is True
    with raises_sqlstate("ID004"):
        app.execute("INSERT INTO own.mine VALUES ('ABC', 'DRV-001ABC')")


# --- Finding B: any idmint_user binds another role's unbound number for ever -------------


# --- Finding C: a NOT NULL domain on another column keeps upserts' numbers ----------------


@pytest.mark.parametrize("upsert", ["do-nothing", "do-update"])
def test_an_upsert_storing_nothing_consumes_no_number_with_a_not_null_domain_column(
    db: psycopg.Connection, app_connect: Connect, upsert: str
) -> None:
    """FOUND (C) (ordinary schema, no attack needed). The commit-time look-up builds the
    value with `jsonb_populate_record(NULL::tbl, {col: value})`, which runs every domain
    column of the row type through its domain check with NULL. A table with any other
    column of a NOT NULL domain (`CREATE DOMAIN email AS text NOT NULL`) makes the look-up
    raise 23502, the look-up keeps every binding "as if stored", and an upsert that stores
    nothing keeps its new number issued and bound to no row (contract §4, 0.2: "upserts
    that store nothing claim and bind nothing"). With `email text NOT NULL` instead of the
    domain the same upserts consume nothing.

        CREATE DOMAIN own.email AS text NOT NULL;
        CREATE TABLE own.customers (email own.email PRIMARY KEY, num varchar(7) UNIQUE);
        -- + the trigger on num; INSERT ('a@x'); then
        INSERT INTO own.customers (email) VALUES ('a@x') ON CONFLICT DO NOTHING;
        -- issued goes from 1 to 2, the new number bound, no row carries it"""
    app = app_connect()
    app.execute(
        "CREATE DOMAIN own.email AS text NOT NULL CHECK (VALUE LIKE '%@%');"
        "CREATE TABLE own.customers (email own.email PRIMARY KEY, num varchar(7) UNIQUE);"
        "CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON own.customers FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('num', 'order')"
    )
    app.execute("INSERT INTO own.customers (email) VALUES ('a@x')")
    assert issued(db, ORDER) == 1
    if upsert == "do-nothing":
        app.execute("INSERT INTO own.customers (email) VALUES ('a@x') ON CONFLICT DO NOTHING")
    else:
        app.execute(
            "INSERT INTO own.customers (email) VALUES ('a@x')"
            " ON CONFLICT (email) DO UPDATE SET email = excluded.email"
        )
    assert scalar(db, "SELECT count(*) FROM own.customers") == 1
    assert issued(db, ORDER) == 1, "the upsert stored no row but its number stays issued"
    assert entity_rows(db, ORDER) == 1
    assert check_exact(db, ORDER) == []


def test_a_deleted_rows_number_may_be_carried_again_with_a_not_null_domain_column(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (C), DELETE side: the same failed look-up keeps a DELETE's unbinding "as if
    stored", which binds the number again at commit. Contract §3/§4 (0.2): "DELETE unbinds
    the row's id: it stays assigned and a later row may carry it" -- here the later row
    gets ID004.

        -- own.customers (email own.email NOT NULL domain, num) + the trigger
        INSERT INTO own.customers (email) VALUES ('a@x');       -- num N
        DELETE FROM own.customers;                              -- N stays bound
        INSERT INTO own.customers VALUES ('b@x', 'N');          -- ID004"""
    app = app_connect()
    app.execute(
        "CREATE DOMAIN own.email AS text NOT NULL;"
        "CREATE TABLE own.customers (email own.email PRIMARY KEY, num varchar(7) UNIQUE);"
        "CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON own.customers FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('num', 'order')"
    )
    n = str(scalar(app, "INSERT INTO own.customers (email) VALUES ('a@x') RETURNING num"))
    app.execute("DELETE FROM own.customers")
    assert number_state(db, n) == (True, False), "a deleted row's number must be unbound"
    app.execute("INSERT INTO own.customers VALUES ('b@x', %s)", [n])
    assert number_state(db, n) == (True, True)


# --- Finding E: the public bind_entity_numbers and odd arrays ----------------------------


def test_bind_entity_numbers_with_a_two_dimensional_array_is_id003(app_connect: Connect) -> None:
    """FOUND (E)1 (an undocumented SQLSTATE from a public function): a two-dimensional
    `numbers` array gives 0A000 ("searching for elements in multidimensional arrays is not
    supported") instead of ID003.

        SELECT idmint.bind_entity_numbers('own.x', 'num', 'order', ARRAY[[NULL, NULL], [NULL, NULL]]);"""
    app = app_connect()
    app.execute("CREATE TABLE own.x (num text)")
    with raises_sqlstate("ID003"):
        app.execute(
            "SELECT idmint.bind_entity_numbers('own.x', 'num', 'order',"
            " ARRAY[[NULL, NULL], [NULL, NULL]]::text[])"
        )


def test_bind_entity_numbers_keeps_the_positions_of_an_array_not_starting_at_1(
    db: psycopg.Connection, app_connect: Connect
) -> None:
    """FOUND (E)2: with an array whose lower bound is not 1, the new number is written to
    position 1 (extending the array) and the NULL it replaces stays NULL:
    `bind_entity_numbers('own.x', 'num', 'order', '[5:6]={NULL,4000007}')` returns
    `{4505357,NULL,NULL,NULL,NULL,4000007}`; the caller's NULL slot gets no number although
    one was issued for it."""
    app = app_connect()
    app.execute("CREATE TABLE own.x (num text)")
    got = scalar(
        app,
        "SELECT array_to_string(idmint.bind_entity_numbers('own.x', 'num', 'order',"
        " '[5:6]={NULL,4000007}'::text[]), ',', '-')",
    )
    parts = str(got).split(",")
    assert len(parts) == 2 and "-" not in parts, got
    assert parts[1] == "4000007"


# --- Finding F: a blank-padded column (char(n > 7)) --------------------------------------


@pytest.mark.parametrize("coltype", ["char(8)", "numeric(9,2)"])
def test_delete_and_update_of_a_char8_column_follow_the_binding_rules(
    db: psycopg.Connection, app_connect: Connect, coltype: str
) -> None:
    """FOUND (F) (minor; a char(8) column, e.g. room for a later 8-digit growth). The
    trigger gives NULL a number and stores it blank-padded ('4866169 '); it reads OLD back
    padded, and unbind/keep ignore a value that is not exactly 7 digits. So a DELETE leaves
    the number bound (contract §4: DELETE unbinds), and an UPDATE that replaces a number
    inserted in the same transaction un-issues the old one at commit (§4: "the old stays
    issued for ever"). The same with numeric(9,2) ('4000123.00').

        CREATE TABLE own.c8 (k int, num char(8)); -- + the trigger
        INSERT INTO own.c8 (k) VALUES (2); DELETE FROM own.c8 WHERE k = 2;  -- still bound
        BEGIN; INSERT INTO own.c8 (k) VALUES (3);
               UPDATE own.c8 SET num = NULL WHERE k = 3; COMMIT;          -- first one gone"""
    app = app_connect(autocommit=False)
    app.execute(
        f"CREATE TABLE own.c8 (k int, num {coltype});"
        "CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON own.c8 FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('num', 'order')"
    )
    app.commit()
    deleted = str(
        scalar(app, "INSERT INTO own.c8 (k) VALUES (2) RETURNING num::text::numeric::bigint")
    )
    app.commit()
    app.execute("DELETE FROM own.c8 WHERE k = 2")
    app.commit()
    replaced = str(
        scalar(app, "INSERT INTO own.c8 (k) VALUES (3) RETURNING num::text::numeric::bigint")
    )
    app.execute("UPDATE own.c8 SET num = NULL WHERE k = 3")
    app.commit()
    assert number_state(db, replaced) == (True, True), (
        "the replaced number must stay issued and bound"
    )
    assert number_state(db, deleted) == (True, False), "a deleted row's number must be unbound"


# --- COPY as the app role: DEFAULT, trigger, partitioned, a domain CHECK failing midway ----

COPY_SCHEMA = """
CREATE DOMAIN own.num AS varchar(7) CHECK (VALUE ~ '^4[0-9]{6}$');
CREATE DOMAIN own.pos AS integer CHECK (VALUE > 0);
CREATE TABLE own.d (v own.pos, num own.num NOT NULL UNIQUE DEFAULT idmint.gen_entity_number('order'));
CREATE TABLE own.t (v own.pos, num own.num UNIQUE);
CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON own.t FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_entity_number('num', 'order');
CREATE TABLE own.b (v own.pos, num own.num UNIQUE DEFAULT idmint.gen_entity_number('order'));
CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON own.b FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_entity_number('num', 'order');
CREATE TABLE own.p (v own.pos, num own.num DEFAULT idmint.gen_entity_number('order'))
    PARTITION BY RANGE (v);
CREATE TABLE own.p1 PARTITION OF own.p FOR VALUES FROM (1) TO (300);
CREATE TABLE own.p2 PARTITION OF own.p FOR VALUES FROM (300) TO (MAXVALUE);
CREATE UNIQUE INDEX ON own.p1 (num);
CREATE UNIQUE INDEX ON own.p2 (num);
CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON own.p FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_entity_number('num', 'order');
CREATE TABLE own.pd (v own.pos, num own.num DEFAULT idmint.gen_entity_number('order'))
    PARTITION BY RANGE (v);
CREATE TABLE own.pd1 PARTITION OF own.pd FOR VALUES FROM (1) TO (300);
CREATE TABLE own.pd2 PARTITION OF own.pd FOR VALUES FROM (300) TO (MAXVALUE);
"""
TRIGGERED = {"d": False, "t": True, "b": True, "p": True, "pd": False}


def copy_rows(conn: psycopg.Connection, table: str, values: list[int]) -> None:
    with conn.cursor().copy(f"COPY own.{table} (v) FROM STDIN") as cp:
        for v in values:
            cp.write_row([v])


def app_numbers(db: psycopg.Connection) -> dict[str, list[str]]:
    return {
        t: [r[0] for r in db.execute(f"SELECT num FROM own.{t} WHERE num IS NOT NULL")]
        for t in TRIGGERED
    }


def assert_rows_exact(db: psycopg.Connection) -> None:
    """Every stored number issued (and bound in triggered tables), none in two rows; the
    type's count equals idmint's rows; trigger-only types: every issued number stored."""
    seen: list[str] = []
    for t, nums in app_numbers(db).items():
        seen += nums
        for n in nums:
            assert number_state(db, n)[0], f"{t}: stored {n} not issued"
            if TRIGGERED[t]:
                assert number_state(db, n) == (True, True), f"{t}: stored {n} not bound"
    assert len(seen) == len(set(seen)), "a number stored in two rows"
    assert issued(db, ORDER) == entity_rows(db, ORDER)
    assert check_exact(db, ORDER) == []
    assert scalar(db, "SELECT count(*) FROM idmint.pending_bindings") == 0


ISOLATION = ["read committed", "repeatable read", "serializable"]


@pytest.mark.parametrize("isolation", ISOLATION)
@pytest.mark.parametrize("table", list(TRIGGERED))
def test_copy_failing_midway_in_savepoints_keeps_every_rule(
    db: psycopg.Connection, app_connect: Connect, table: str, isolation: str
) -> None:
    """COPY FROM STDIN as the app role (psycopg's cursor.copy) into a table with the
    DEFAULT, the trigger, both, partitioned with both, partitioned with the DEFAULT; a domain
    CHECK rejects a row midway (23514) inside a savepoint that is rolled back, another
    savepoint is rolled back after a good COPY, and the transaction commits. Exactly the
    stored rows' numbers are issued (and bound where the trigger is), none twice."""
    app = app_connect(autocommit=False)
    app.execute(COPY_SCHEMA)
    app.commit()
    app.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
    copy_rows(app, table, list(range(1, 50)))
    app.execute("SAVEPOINT a")
    bad = list(range(1, 600))
    bad[449] = -1
    with raises_sqlstate("23514"):
        copy_rows(app, table, bad)
    app.execute("ROLLBACK TO SAVEPOINT a")
    copy_rows(app, table, list(range(100, 500)))
    app.execute("SAVEPOINT b")
    copy_rows(app, table, list(range(200, 400)))
    app.execute("ROLLBACK TO SAVEPOINT b")
    copy_rows(app, table, list(range(250, 350)))
    app.execute(f"INSERT INTO own.{table} (v) SELECT g FROM generate_series(1, 70) g")
    app.commit()
    stored = sum(len(v) for v in app_numbers(db).values())
    assert stored == 49 + 400 + 100 + 70
    assert issued(db, ORDER) == stored
    assert_rows_exact(db)


@pytest.mark.parametrize("isolation", ISOLATION)
@pytest.mark.parametrize("table", list(TRIGGERED))
def test_copy_failing_midway_then_rollback_leaves_nothing(
    db: psycopg.Connection, app_connect: Connect, table: str, isolation: str
) -> None:
    """A transaction of good COPYs and a COPY that a domain CHECK stops midway, rolled
    back: nothing of it is issued."""
    app = app_connect(autocommit=False)
    app.execute(COPY_SCHEMA)
    app.commit()
    app.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
    copy_rows(app, table, list(range(1, 500)))
    bad = list(range(1, 600))
    bad[333] = 0
    with raises_sqlstate("23514"):
        copy_rows(app, table, bad)
    app.rollback()
    assert entity_rows(db, ORDER) == 0
    assert issued(db, ORDER) == 0
    assert_rows_exact(db)


# --- small timeouts, retried ---------------------------------------------------------------


@pytest.mark.parametrize("isolation", ISOLATION)
@pytest.mark.parametrize("timeout", ["statement_timeout", "lock_timeout"])
def test_copies_cancelled_by_tiny_timeouts_and_retried_stay_exact(
    db: psycopg.Connection, app_connect: Connect, isolation: str, timeout: str
) -> None:
    """Each transaction COPYs into every table and inserts DEFAULT and trigger rows under a
    timeout that starts at 1 ms and doubles on each cancellation (57014) until the
    transaction commits. Only the committed rows' numbers are issued."""
    app = app_connect(autocommit=False)
    app.execute(COPY_SCHEMA)
    app.commit()
    errors: set[str | None] = set()
    for round_ in range(4):
        ms = 1
        while True:
            try:
                app.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                app.execute(f"SET LOCAL {timeout} = '{ms}ms'")
                for t in TRIGGERED:
                    copy_rows(app, t, [(round_ * 37 + i) % 599 + 1 for i in range(60)])
                app.execute("INSERT INTO own.b (v) SELECT g FROM generate_series(1, 20) g")
                app.commit()
                break
            except psycopg.Error as e:
                errors.add(e.sqlstate)
                app.rollback()
                ms *= 2
    assert errors <= {"57014"}, errors
    assert sum(len(v) for v in app_numbers(db).values()) == 4 * (5 * 60 + 20)
    assert issued(db, ORDER) == 4 * (5 * 60 + 20)
    assert_rows_exact(db)


@pytest.mark.parametrize("isolation", ISOLATION)
def test_a_claim_that_times_out_waiting_for_a_holder_is_retried_after_its_commit(
    db: psycopg.Connection, connect: Connect, app_role: str, app_connect: Connect, isolation: str
) -> None:
    """An open transaction holds a shard (DEFAULT rows, with spares). The app, with
    lock_timeout 50 ms, inserts into the trigger table one of that transaction's spares (a
    number it may claim once that transaction's commit gives it back): the claim waits for
    the holder and gets 55P03 (a lock timeout, which the facade retries); with
    statement_timeout 50 ms, 57014. Retried after the holder's commit it is claimed and
    bound; everything stays exact."""
    app = app_connect(autocommit=False)
    app.execute(COPY_SCHEMA)
    app.execute(f"GRANT USAGE ON SCHEMA own TO {db.info.user}")
    app.commit()
    holder = connect(autocommit=False)
    holder.execute("SET search_path = own, public")
    kept = [
        r[0]
        for r in holder.execute(
            "INSERT INTO own.d (v) SELECT 1 FROM generate_series(1, 300) RETURNING num"
        )
    ]
    listed = str(
        scalar(holder, "SELECT coalesce(current_setting('idmint.entity_spare_4', true), '')")
    )
    assert len(listed) >= 7
    spare = listed[:7]
    got: list[str | None] = []
    for timeout in ("lock_timeout", "statement_timeout"):
        app.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        app.execute(f"SET LOCAL {timeout} = '50ms'")
        try:
            app.execute("INSERT INTO own.t (v, num) VALUES (1, %s)", [spare])
            got.append("ok")
        except psycopg.Error as e:
            got.append(e.sqlstate)
        app.rollback()
    assert got == ["55P03", "57014"], got
    holder.commit()
    assert number_state(db, spare) == (False, False)
    app.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
    app.execute("INSERT INTO own.t (v, num) VALUES (1, %s)", [spare])
    app.commit()
    assert number_state(db, spare) == (True, True)
    assert issued(db, ORDER) == len(kept) + 1
    assert_rows_exact(db)


# --- the app's own code never runs with idmint's rights --------------------------------------

SPIES = """
CREATE TABLE own.spy_log (who text, what text);
CREATE FUNCTION own.spy(what text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO own.spy_log VALUES (current_user, what);
    IF current_user <> session_user THEN
        EXECUTE 'CREATE TABLE idmint.pwned ()';
        EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
    END IF;
    RETURN true;
END $f$;
CREATE DOMAIN own.num AS varchar(7) CHECK (own.spy('domain'));
CREATE TYPE own.mood AS ENUM ('ok');
CREATE FUNCTION own.mood_json(own.mood) RETURNS json LANGUAGE plpgsql AS $f$
BEGIN PERFORM own.spy('cast'); RETURN '"ok"'; END $f$;
CREATE CAST (own.mood AS json) WITH FUNCTION own.mood_json(own.mood);
CREATE TYPE own.kind AS ENUM ('order');
CREATE FUNCTION own.kind_text(own.kind) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM own.spy('implicit'); RETURN 'order'; END $f$;
CREATE CAST (own.kind AS text) WITH FUNCTION own.kind_text(own.kind) AS IMPLICIT;
CREATE FUNCTION own.num_eq(own.num, own.num) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN PERFORM own.spy('operator'); RETURN $1::text = $2::text; END $f$;
CREATE OPERATOR own.= (LEFTARG = own.num, RIGHTARG = own.num, FUNCTION = own.num_eq);
CREATE FUNCTION own.to_jsonb(anyelement) RETURNS jsonb LANGUAGE plpgsql AS $f$
BEGIN PERFORM own.spy('to_jsonb'); RETURN pg_catalog.to_jsonb($1); END $f$;
CREATE FUNCTION own.jsonb_populate_record(anyelement, jsonb) RETURNS anyelement
LANGUAGE plpgsql AS $f$
BEGIN PERFORM own.spy('jsonb_populate_record'); RETURN pg_catalog.jsonb_populate_record($1, $2); END $f$;
CREATE FUNCTION own.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM own.spy('current_setting'); RETURN pg_catalog.current_setting($1, $2); END $f$;
CREATE FUNCTION own.set_config(text, text, boolean) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN PERFORM own.spy('set_config'); RETURN pg_catalog.set_config($1, $2, $3); END $f$;
CREATE FUNCTION own.pg_current_xact_id() RETURNS xid8 LANGUAGE plpgsql AS $f$
BEGIN PERFORM own.spy('xact_id'); RETURN pg_catalog.pg_current_xact_id(); END $f$;
CREATE FUNCTION own.tg() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM own.spy(TG_NAME);
    IF TG_NAME = 'zz_deferred' AND TG_OP = 'INSERT' AND TG_TABLE_NAME = 't' AND NEW.k = 1 THEN
        INSERT INTO own.t (k) VALUES (-1);           -- a trigger row at commit
        INSERT INTO own.d (k) VALUES (-1), (-2);     -- DEFAULT rows at commit
    END IF;
    RETURN coalesce(NEW, OLD);
END $f$;
CREATE TABLE own.d (k int, num own.num UNIQUE DEFAULT idmint.gen_entity_number('order'::own.kind),
                    m own.mood DEFAULT 'ok');
CREATE TABLE own.t (k int UNIQUE, num own.num UNIQUE, m own.mood DEFAULT 'ok');
CREATE TABLE own.p (k int, num own.num DEFAULT idmint.gen_entity_number('order'),
                    m own.mood DEFAULT 'ok') PARTITION BY RANGE (k);
CREATE TABLE own.p1 PARTITION OF own.p FOR VALUES FROM (MINVALUE) TO (100);
CREATE TABLE own.p2 PARTITION OF own.p FOR VALUES FROM (100) TO (MAXVALUE);
CREATE TABLE own.legacy (k int, num own.num, m own.mood DEFAULT 'ok');
"""
SPY_TRIGGERS = """
CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON own.{t} FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_entity_number('num', 'order');
CREATE TRIGGER a_before BEFORE INSERT OR UPDATE OR DELETE ON own.{t} FOR EACH ROW
    EXECUTE FUNCTION own.tg();
CREATE TRIGGER z_before BEFORE INSERT OR UPDATE OR DELETE ON own.{t} FOR EACH ROW
    EXECUTE FUNCTION own.tg();
CREATE TRIGGER after_row AFTER INSERT OR UPDATE OR DELETE ON own.{t} FOR EACH ROW
    EXECUTE FUNCTION own.tg();
CREATE TRIGGER after_stmt AFTER INSERT ON own.{t} REFERENCING NEW TABLE AS fresh
    FOR EACH STATEMENT EXECUTE FUNCTION own.tg();
CREATE CONSTRAINT TRIGGER zz_deferred AFTER INSERT OR UPDATE OR DELETE ON own.{t}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION own.tg();
"""


@pytest.mark.parametrize("isolation", ISOLATION)
def test_no_app_code_runs_as_idmint_and_every_rule_holds(
    db: psycopg.Connection, app_role: str, app_connect: Connect, isolation: str
) -> None:
    """An app role (idmint_user only) with its search_path `own, pg_catalog` and, in
    `own`, functions named like pg_catalog's (to_jsonb, jsonb_populate_record,
    current_setting, set_config, pg_current_xact_id), an `=` operator on its domain, a
    domain CHECK, a cast to json, an implicit cast into idmint's text argument, BEFORE and
    AFTER row triggers, a statement trigger with a transition table and a deferred
    constraint trigger that issues more numbers at commit; DEFAULT, trigger and partitioned
    tables written by INSERT, upserts, UPDATE, DELETE, COPY and a backfill. Each of its
    functions records current_user and, if it is not the session's role, tries to create a
    table in idmint and make itself superuser. All of it must run as the app role, and
    the numbers stay exact."""
    app = app_connect(autocommit=False)
    app.execute(SPIES)
    app.execute(SPY_TRIGGERS.format(t="t") + SPY_TRIGGERS.format(t="p"))
    app.commit()
    app.execute("SET search_path = own, pg_catalog, public")
    app.execute(f"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {isolation}")
    app.execute("INSERT INTO own.d (k) SELECT g FROM generate_series(1, 100) g")
    app.execute("INSERT INTO own.t (k) VALUES (1), (2), (3)")
    app.execute(
        "INSERT INTO own.t (k, num) VALUES (4, idmint.gen_entity_number('order'::own.kind))"
    )
    app.execute("INSERT INTO own.t (k) VALUES (2) ON CONFLICT DO NOTHING")
    app.execute("INSERT INTO own.t (k) VALUES (3) ON CONFLICT (k) DO UPDATE SET m = 'ok'")
    app.execute("UPDATE own.t SET m = 'ok'")
    app.execute("DELETE FROM own.t WHERE k = 2")
    app.execute("INSERT INTO own.p (k) SELECT g * 7 FROM generate_series(1, 30) g")
    app.execute("UPDATE own.p SET k = k + 150 WHERE k < 50")
    app.execute("INSERT INTO own.legacy (k) SELECT g FROM generate_series(1, 5) g")
    for t in ("d", "t", "p"):
        with app.cursor().copy(f"COPY own.{t} (k) FROM STDIN") as cp:
            for i in range(20):
                cp.write_row([1000 + i])
    app.execute("SELECT idmint.backfill_entity_numbers('own.legacy', 'num', 'order'::own.kind)")
    app.commit()
    log = db.execute("SELECT who, what FROM own.spy_log").fetchall()
    whats = {w for _, w in log}
    assert {"domain", "cast", "implicit", "a_before", "z_before", "after_row"} <= whats, whats
    assert {"after_stmt", "zz_deferred"} <= whats, whats
    assert {who for who, _ in log} == {app_role}
    assert scalar(db, "SELECT to_regclass('idmint.pwned')") is None
    assert scalar(db, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", [app_role]) is False
    stored: list[str] = []
    for t in ("d", "t", "p", "legacy"):
        stored += [r[0] for r in db.execute(f"SELECT num FROM own.{t}")]
    assert len(stored) == len(set(stored))
    for t in ("t", "p", "legacy"):
        for (n,) in db.execute(f"SELECT num FROM own.{t}").fetchall():
            assert number_state(db, n) == (True, True), (t, n)
    # Issued: the stored numbers, the one the DELETE left (issued, unbound), the one the
    # partition move kept, nothing else (the upserts stored nothing).
    assert issued(db, ORDER) == entity_rows(db, ORDER)
    assert check_exact(db, ORDER) == []
    assert issued(db, ORDER) == len(stored) + 1


@pytest.mark.parametrize("isolation", ISOLATION)
def test_concurrent_copies_with_savepoints_and_retries_stay_exact(
    db: psycopg.Connection, app_connect: Connect, isolation: str
) -> None:
    """Three app sessions at once, each running transactions of COPYs into three of the
    tables, a COPY rolled back to a savepoint and trigger rows with explicit
    gen_entity_number values, under statement_timeout 1 s; every failure (40001 at the
    snapshot levels, 57014) is rolled back and the transaction retried. Afterwards every
    stored number is issued (bound where the trigger is), none twice, counts exact."""
    setup = app_connect()
    setup.execute(COPY_SCHEMA)
    failures: list[str | None] = []

    def worker(k: int) -> None:
        conn = app_connect(autocommit=False)
        rnd = random.Random(k)
        for _ in range(5):
            for _attempt in range(30):
                try:
                    conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                    conn.execute("SET LOCAL statement_timeout = '1s'")
                    for t in rnd.sample(list(TRIGGERED), 3):
                        copy_rows(conn, t, [rnd.randint(1, 600) for _ in range(rnd.randint(1, 40))])
                    conn.execute("SAVEPOINT s")
                    copy_rows(conn, "b", [1] * 20)
                    conn.execute("ROLLBACK TO SAVEPOINT s")
                    conn.execute(
                        "INSERT INTO own.t (v, num) SELECT 1, idmint.gen_entity_number('order')"
                        " FROM generate_series(1, 5)"
                    )
                    conn.commit()
                    break
                except psycopg.Error as e:
                    failures.append(e.sqlstate)
                    conn.rollback()
            else:
                failures.append("gave up")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    allowed = {"57014"} | ({"40001"} if isolation != "read committed" else set())
    assert set(failures) <= allowed, failures
    assert_rows_exact(db)
    assert issued(db, ORDER) == sum(len(v) for v in app_numbers(db).values())
