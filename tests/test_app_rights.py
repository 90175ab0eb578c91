"""Nothing of an application's runs with idmint's rights (contract §0, revision 0.2).

An app role that owns its schema defines a cast to json, a domain with a CHECK and a
trigger of its own, each of which records current_user, and tries to turn idmint's rights
into superuser. The triggers, the backfill and the commit-time settler must run all of it
as the app role.
"""

from __future__ import annotations

import psycopg

from tests.util import raises_sqlstate, scalar

SPIES = """
CREATE TABLE app.spy_log (who text, what text);
CREATE FUNCTION app.spy(what text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO app.spy_log VALUES (current_user, what);
    IF current_user <> session_user THEN
        EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
    END IF;
    RETURN true;
END $f$;
CREATE TYPE app.mood AS ENUM ('ok');
CREATE FUNCTION app.mood_to_json(app.mood) RETURNS json LANGUAGE plpgsql AS $f$
BEGIN PERFORM app.spy('cast'); RETURN '"ok"'; END $f$;
CREATE CAST (app.mood AS json) WITH FUNCTION app.mood_to_json(app.mood);
CREATE DOMAIN app.driver_code AS varchar(10) CHECK (app.spy('domain ' || coalesce(VALUE, 'NULL')));
CREATE DOMAIN app.part_code AS varchar(7) CHECK (app.spy('domain ' || coalesce(VALUE, 'NULL')));
CREATE FUNCTION app.other_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN PERFORM app.spy('trigger ' || TG_OP); RETURN coalesce(NEW, OLD); END $f$;

CREATE TABLE app.drivers (email text PRIMARY KEY, fleet text NOT NULL,
                          driver_id app.driver_code UNIQUE, m app.mood DEFAULT 'ok');
CREATE TRIGGER a_id BEFORE INSERT OR UPDATE OR DELETE ON app.drivers FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id');
CREATE TRIGGER b_spy BEFORE INSERT OR UPDATE OR DELETE ON app.drivers FOR EACH ROW
    EXECUTE FUNCTION app.other_trigger();

CREATE FUNCTION app.spy_eq(app.driver_code, app.driver_code) RETURNS boolean LANGUAGE plpgsql
    AS $f$ BEGIN PERFORM app.spy('operator'); RETURN $1::text = $2::text; END $f$;
CREATE OPERATOR app.= (LEFTARG = app.driver_code, RIGHTARG = app.driver_code, FUNCTION = app.spy_eq);
CREATE FUNCTION app.index_spy(int) RETURNS text LANGUAGE plpgsql IMMUTABLE
    AS $f$ BEGIN PERFORM app.spy('index'); RETURN ''; END $f$;
CREATE INDEX drivers_spy ON app.drivers ((driver_id || app.index_spy(1)));

CREATE TABLE app.parts (id int PRIMARY KEY, pn app.part_code UNIQUE, m app.mood DEFAULT 'ok');
CREATE TRIGGER a_pn BEFORE INSERT OR UPDATE OR DELETE ON app.parts FOR EACH ROW
    EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part');
ALTER TABLE app.parts ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.parts FORCE ROW LEVEL SECURITY;
CREATE POLICY spy ON app.parts USING (app.spy('policy')) WITH CHECK (true);
CREATE TRIGGER b_spy BEFORE INSERT OR UPDATE OR DELETE ON app.parts FOR EACH ROW
    EXECUTE FUNCTION app.other_trigger();
CREATE TABLE app.legacy (id int PRIMARY KEY, pn app.part_code, m app.mood DEFAULT 'ok');
"""


def test_app_code_in_the_triggers_runs_as_the_app_role(
    db: psycopg.Connection, app: psycopg.Connection
) -> None:
    role = scalar(app, "SELECT current_user")
    app.execute(SPIES)
    app.execute("SET search_path = app, pg_catalog")  # the app's own = first
    app.execute("INSERT INTO app.drivers (email, fleet) VALUES ('a@x', 'AAA')")
    app.execute(
        "INSERT INTO app.drivers (email, fleet) VALUES ('a@x', 'AAA')"
        " ON CONFLICT (email) DO UPDATE SET fleet = excluded.fleet"
    )
    app.execute(
        "INSERT INTO app.drivers (email, fleet) VALUES ('a@x', 'AAA') ON CONFLICT DO NOTHING"
    )
    # The upserts stored nothing: the next row gets the next id.
    assert scalar(app, "INSERT INTO app.drivers VALUES ('b@x', 'AAA') RETURNING driver_id") == (
        "DRV-002AAA"
    )
    app.execute("UPDATE app.drivers SET m = 'ok'")
    app.execute("DELETE FROM app.drivers")
    app.execute("INSERT INTO app.parts (id) VALUES (1), (2)")
    app.execute("INSERT INTO app.parts (id, pn) VALUES (3, '1000003')")
    app.execute("DELETE FROM app.parts WHERE id = 3")
    app.execute("INSERT INTO app.legacy (id) SELECT g FROM generate_series(1, 3) g")
    assert scalar(app, "SELECT idmint.backfill_entity_numbers('app.legacy', 'pn', 'part')") == 3

    log = app.execute("SELECT who, what FROM app.spy_log").fetchall()
    whats = {w for _, w in log}
    assert {
        "cast",
        "index",
        "policy",
        "trigger INSERT",
        "trigger UPDATE",
        "trigger DELETE",
    } <= whats
    assert any(w.startswith("domain DRV-") for w in whats)
    assert any(w.startswith("domain 1") for w in whats)
    assert {who for who, _ in log} == {role}
    assert scalar(db, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role]) is False


def test_no_internal_writer_is_executable_by_idmint_user(db: psycopg.Connection) -> None:
    writers = db.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " WHERE p.pronamespace = 'idmint'::regnamespace AND p.proname ~ '^_'"
        " AND p.provolatile = 'v' AND has_function_privilege('idmint_user', p.oid, 'EXECUTE')"
    ).fetchall()
    assert writers == []
    # The 0.1 backfill helper issued up to 1 000 000 numbers a call; it is gone.
    assert scalar(db, "SELECT to_regproc('idmint._backfill_numbers')") is None
    triggers = db.execute(
        "SELECT p.proname, p.prosecdef FROM pg_proc p"
        " WHERE p.pronamespace = 'idmint'::regnamespace"
        " AND p.proname IN ('assign_driver_id', 'assign_entity_number', 'backfill_entity_numbers')"
        " ORDER BY 1, 2"
    ).fetchall()
    assert triggers == [
        ("assign_driver_id", False),
        ("assign_entity_number", False),
        ("backfill_entity_numbers", False),
        ("backfill_entity_numbers", False),
    ]


def test_settling_is_called_by_the_commit_time_trigger_only(app: psycopg.Connection) -> None:
    with raises_sqlstate("ID003"):
        app.execute("SELECT idmint.settle_bindings('{1}', '{}')")


def test_an_app_role_cannot_issue_more_than_the_cap_through_the_trigger_helpers(
    app: psycopg.Connection,
) -> None:
    app.execute("CREATE TABLE app.t (pn text)")
    with raises_sqlstate("ID003"):
        app.execute(
            "SELECT idmint.bind_entity_numbers('app.t', 'pn', 'part',"
            " array_fill(NULL::text, ARRAY[100001]), 'backfill')"
        )
    assert scalar(app, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 1") == 0


def test_calling_the_trigger_helpers_directly_runs_no_app_code_as_the_owner(
    db: psycopg.Connection, app: psycopg.Connection
) -> None:
    """With SET CONSTRAINTS ALL IMMEDIATE the commit-time settler would fire inside the
    helper (SECURITY DEFINER) and look at the app's table as the owner."""
    role = scalar(app, "SELECT current_user")
    app.execute(SPIES)
    app.execute("CREATE TABLE app.bare (driver_id app.driver_code, pn app.part_code)")
    app.execute("CREATE VIEW app.peek AS SELECT app.spy('view') AS c")
    for call in (
        "SELECT idmint.bind_driver_id('app.bare', 'driver_id', 'AAA', NULL)",
        "SELECT idmint.bind_entity_numbers('app.bare', 'pn', 'part', ARRAY[NULL])",
        "SELECT idmint.unbind_driver_id('app.bare', 'driver_id', 'DRV-001AAA')",
    ):
        with app.transaction():
            app.execute("SET CONSTRAINTS ALL IMMEDIATE")
            app.execute(call)
    with raises_sqlstate("ID003"):
        app.execute("SELECT idmint.bind_driver_id('app.peek', 'c', 'AAA', NULL)")
    assert {who for (who,) in app.execute("SELECT who FROM app.spy_log")} <= {role}
    assert scalar(db, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role]) is False
    assert scalar(db, "SELECT count(*) FROM idmint.pending_bindings") == 0
