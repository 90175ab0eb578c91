"""Bindings follow stored rows, also against the app's own code.

Between idmint's BEFORE trigger and the moment the row is written, the app's later BEFORE
triggers, CHECK constraints and policies run; at commit the settler's look-up runs the app's
domain checks. Whatever that code does with the row's number (or driver id), it is refused
(ID004) or kept: never stored in two rows, never un-issued or given back while a stored row
carries it. These cases broke a withdrawn change that let a value proposed by an upsert that
stored nothing go into another row of the same transaction (docs/DESIGN.md). The app role
is a member of idmint_user only and owns its schema.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from tests.util import scalar


@pytest.fixture
def app(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection]
) -> Iterator[psycopg.Connection]:
    """A login role that is a member of idmint_user only, owning schema app."""
    db.execute("SELECT idmint.add_fleet('North', 'ABC')")
    role = f"idmint_atk3_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    db.execute(sql.SQL("GRANT idmint_user TO {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(role)))
    conn = connect(user=role)
    yield conn
    conn.close()
    db.execute(sql.SQL("DROP SCHEMA app CASCADE"))
    db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def entity_table(name: str, unique: bool = True) -> str:
    return f"""
    CREATE TABLE app.{name} (k text PRIMARY KEY, pn text {"UNIQUE" if unique else ""});
    CREATE TRIGGER a_pn BEFORE INSERT OR UPDATE OR DELETE ON app.{name} FOR EACH ROW
        EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part');
    """


def driver_table(name: str, extra: str = "") -> str:
    return f"""
    CREATE TABLE app.{name} (email text PRIMARY KEY, fleet text NOT NULL, driver_id text{extra});
    CREATE TRIGGER a_id BEFORE INSERT OR UPDATE OR DELETE ON app.{name} FOR EACH ROW
        EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id');
    """


def refused(e: psycopg.Error) -> None:
    assert e.sqlstate == "ID004", f"{e.sqlstate}: {e}"


def carriers(app: psycopg.Connection, tables: list[str], col: str, value: str) -> int:
    return int(
        scalar(  # type: ignore[arg-type]
            app,
            " UNION ALL ".join(f"SELECT 1 FROM app.{t} WHERE {col} = %(v)s" for t in tables).join(
                ["SELECT count(*) FROM (", ") x"]
            ),
            {"v": value},
        )
    )


def try_insert(app: psycopg.Connection, query: str, params: object = None) -> str | None:
    """Run an INSERT ... RETURNING in its own transaction; None if idmint refused it (ID004)."""
    try:
        with app.transaction():
            return str(scalar(app, query, params))
    except psycopg.Error as e:
        assert e.sqlstate == "ID004", f"{e.sqlstate}: {e}"
        return None


# --- one value, one stored row -----------------------------------------------------------


def test_app_trigger_copying_the_new_number_into_another_table_never_stores_it_twice(
    app: psycopg.Connection,
) -> None:
    """A later BEFORE trigger of the app copies the row's number into another triggered
    table before the row is written: app.a has no row with it yet, and yet the copy must
    be refused."""
    app.execute(entity_table("a") + entity_table("b"))
    app.execute(
        """
        CREATE FUNCTION app.mirror() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN INSERT INTO app.b VALUES (NEW.k, NEW.pn); RETURN NEW; END $f$;
        CREATE TRIGGER z_mirror BEFORE INSERT ON app.a FOR EACH ROW EXECUTE FUNCTION app.mirror();
        """
    )
    pn = try_insert(app, "INSERT INTO app.a (k) VALUES ('r1') RETURNING pn")
    if pn is not None:
        assert carriers(app, ["a", "b"], "pn", pn) == 1, "one number stored in two rows"


def test_app_trigger_updating_another_row_of_the_same_table_never_stores_the_number_twice(
    app: psycopg.Connection,
) -> None:
    """Same, within one table without a unique index: a later BEFORE trigger gives an
    existing row the new row's number."""
    app.execute(entity_table("a", unique=False))
    app.execute(
        """
        CREATE FUNCTION app.share() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            IF TG_OP = 'INSERT' THEN UPDATE app.a SET pn = NEW.pn WHERE k = 'old'; END IF;
            RETURN NEW;
        END $f$;
        CREATE TRIGGER z_share BEFORE INSERT ON app.a FOR EACH ROW EXECUTE FUNCTION app.share();
        """
    )
    app.execute("ALTER TABLE app.a DISABLE TRIGGER z_share")
    app.execute("INSERT INTO app.a (k) VALUES ('old')")
    app.execute("ALTER TABLE app.a ENABLE TRIGGER z_share")
    pn = try_insert(app, "INSERT INTO app.a (k) VALUES ('new') RETURNING pn")
    if pn is not None:
        assert carriers(app, ["a"], "pn", pn) == 1, "one number stored in two rows"


def test_app_check_constraint_copying_the_number_never_stores_it_twice(
    app: psycopg.Connection,
) -> None:
    """No trigger of the app needed: a CHECK constraint runs after the BEFORE triggers and
    before the row is stored; its function copies the number into another table."""
    app.execute(entity_table("b"))
    app.execute(
        """
        CREATE FUNCTION app.copy(k text, pn text) RETURNS boolean LANGUAGE plpgsql AS $f$
        BEGIN INSERT INTO app.b VALUES (k, pn); RETURN true; END $f$;
        CREATE TABLE app.a (k text PRIMARY KEY, pn text UNIQUE, CHECK (app.copy(k, pn)));
        CREATE TRIGGER a_pn BEFORE INSERT OR UPDATE OR DELETE ON app.a FOR EACH ROW
            EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part');
        """
    )
    pn = try_insert(app, "INSERT INTO app.a (k) VALUES ('r1') RETURNING pn")
    if pn is not None:
        assert carriers(app, ["a", "b"], "pn", pn) == 1, "one number stored in two rows"


def test_app_trigger_copying_a_driver_id_into_another_table_never_stores_it_twice(
    app: psycopg.Connection,
) -> None:
    app.execute(
        """
        CREATE TABLE app.drivers (email text PRIMARY KEY, fleet text NOT NULL, driver_id text UNIQUE);
        CREATE TABLE app.drivers2 (email text PRIMARY KEY, fleet text NOT NULL, driver_id text UNIQUE);
        CREATE TRIGGER a_id BEFORE INSERT OR UPDATE OR DELETE ON app.drivers FOR EACH ROW
            EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id');
        CREATE TRIGGER a_id BEFORE INSERT OR UPDATE OR DELETE ON app.drivers2 FOR EACH ROW
            EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id');
        CREATE FUNCTION app.mirror() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN INSERT INTO app.drivers2 VALUES (NEW.email, NEW.fleet, NEW.driver_id); RETURN NEW; END $f$;
        CREATE TRIGGER z_mirror BEFORE INSERT ON app.drivers FOR EACH ROW
            EXECUTE FUNCTION app.mirror();
        """
    )
    rid = str(scalar(app, "SELECT idmint.reserve_driver_id('ABC')"))
    got = try_insert(
        app, "INSERT INTO app.drivers VALUES ('a@x', 'ABC', %s) RETURNING driver_id", [rid]
    )
    if got is not None:
        assert carriers(app, ["drivers", "drivers2"], "driver_id", got) == 1, (
            "one driver id stored in two rows"
        )


# --- a stored row keeps its value issued ---------------------------------------------------


def test_app_trigger_upserting_the_number_elsewhere_never_unissues_the_stored_rows_number(
    db: psycopg.Connection, app: psycopg.Connection
) -> None:
    """The app's later BEFORE trigger logs the row into a triggered table with
    ON CONFLICT DO NOTHING, and the log row conflicts. The log's trigger moves the pending
    binding to app.log (app.a's row is not stored yet); at commit app.log has no such row,
    so the number is un-issued although app.a's row carries it. Anyone may then get it."""
    app.execute(entity_table("a") + entity_table("log"))
    app.execute(
        """
        CREATE FUNCTION app.log() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN INSERT INTO app.log VALUES (NEW.k, NEW.pn) ON CONFLICT (k) DO NOTHING; RETURN NEW; END $f$;
        CREATE TRIGGER z_log BEFORE INSERT ON app.a FOR EACH ROW EXECUTE FUNCTION app.log();
        """
    )
    app.execute("INSERT INTO app.log (k) VALUES ('r1')")
    pn = try_insert(app, "INSERT INTO app.a (k) VALUES ('r1') RETURNING pn")
    if pn is None:
        return  # refused: fine
    assert scalar(app, "SELECT pn FROM app.a WHERE k = 'r1'") == pn
    assert (
        scalar(
            db,
            "SELECT count(*) FROM idmint.entity_numbers WHERE number = %s AND bound_at IS NOT NULL",
            [int(pn)],
        )
        == 1
    ), f"{pn} is carried by a stored row but is not issued and bound"


def test_app_trigger_upserting_a_driver_row_elsewhere_never_gives_the_stored_rows_id_back(
    app: psycopg.Connection,
) -> None:
    """Driver ids, same in-flight case: the row gets the fleet's next id; the app's later
    BEFORE trigger logs it with ON CONFLICT DO NOTHING into another triggered table, where
    it conflicts. At commit the log row is not found and the id is given back to the free
    pool while app.drivers carries it, so the next row gets the same id again."""
    app.execute(
        """
        CREATE TABLE app.drivers (email text PRIMARY KEY, fleet text NOT NULL, driver_id text);
        CREATE TABLE app.log (email text PRIMARY KEY, fleet text NOT NULL, driver_id text);
        CREATE TRIGGER a_id BEFORE INSERT OR UPDATE OR DELETE ON app.drivers FOR EACH ROW
            EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id');
        CREATE TRIGGER a_id BEFORE INSERT OR UPDATE OR DELETE ON app.log FOR EACH ROW
            EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id');
        CREATE FUNCTION app.log() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            INSERT INTO app.log VALUES (NEW.email, NEW.fleet, NEW.driver_id) ON CONFLICT DO NOTHING;
            RETURN NEW;
        END $f$;
        CREATE TRIGGER z_log BEFORE INSERT ON app.drivers FOR EACH ROW EXECUTE FUNCTION app.log();
        """
    )
    app.execute("INSERT INTO app.log (email, fleet) VALUES ('a@x', 'ABC')")  # DRV-001ABC
    first = try_insert(
        app, "INSERT INTO app.drivers (email, fleet) VALUES ('a@x', 'ABC') RETURNING driver_id"
    )
    if first is None:
        return  # refused: fine
    app.execute("ALTER TABLE app.drivers DISABLE TRIGGER z_log")
    second = str(
        scalar(
            app,
            "INSERT INTO app.drivers (email, fleet) VALUES ('b@x', 'ABC') RETURNING driver_id",
        )
    )
    assert carriers(app, ["drivers", "log"], "driver_id", first) == 1, (
        f"{first} was given back while a stored row carries it (next row got {second})"
    )


def test_backfill_number_copied_by_an_app_trigger_into_another_table_is_never_stored_twice(
    app: psycopg.Connection,
) -> None:
    """Contract §4: the backfill's numbers are bound to their rows, "a copy into another row
    of a triggered table is ID004". The app's later BEFORE UPDATE trigger copies each
    backfilled number into app.b while the backfilled row is not stored yet."""
    app.execute(entity_table("a") + entity_table("b"))
    app.execute("ALTER TABLE app.a DISABLE TRIGGER a_pn")
    app.execute("INSERT INTO app.a (k) VALUES ('r1')")
    app.execute("ALTER TABLE app.a ENABLE TRIGGER a_pn")
    app.execute(
        """
        CREATE FUNCTION app.copy() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN INSERT INTO app.b VALUES (NEW.k, NEW.pn); RETURN NEW; END $f$;
        CREATE TRIGGER z_copy BEFORE UPDATE ON app.a FOR EACH ROW EXECUTE FUNCTION app.copy();
        """
    )
    try:
        with app.transaction():
            app.execute("SELECT idmint.backfill_entity_numbers('app.a', 'pn', 'part')")
    except psycopg.Error as e:
        assert e.sqlstate == "ID004", f"{e.sqlstate}: {e}"
        return
    pn = str(scalar(app, "SELECT pn FROM app.a WHERE k = 'r1'"))
    assert carriers(app, ["a", "b"], "pn", pn) == 1, "a backfilled number stored in two rows"


# --- values proposed by an upsert that stored nothing stay bound until the commit ----------
# A first fix let a later statement of the transaction take such a value once a look-up found
# no row carrying it; the review broke it in these ways, so it was withdrawn.


PARTITIONED = """
    CREATE TABLE app.p (k text, pn text) PARTITION BY LIST (k);
    CREATE TABLE app.p1 PARTITION OF app.p FOR VALUES IN ('r1');
    CREATE TABLE app.p2 PARTITION OF app.p DEFAULT;
    CREATE TRIGGER a_pn BEFORE INSERT OR UPDATE OR DELETE ON app.p FOR EACH ROW
        EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part');
    CREATE TABLE app.q (k text, pn text) PARTITION BY LIST (k);
    CREATE TRIGGER a_pn BEFORE INSERT OR UPDATE OR DELETE ON app.q FOR EACH ROW
        EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part');
"""


def test_row_of_a_partition_moved_to_another_tree_keeps_its_number_in_the_transaction(
    app: psycopg.Connection,
) -> None:
    """A row stored by an earlier statement is not found under the binding's partition root
    once its partition is moved to app.q (whose rows idmint's trigger binds too); a new row
    of app.p must still not get its number."""
    app.execute(PARTITIONED)
    try:
        with app.transaction():
            pn = str(scalar(app, "INSERT INTO app.p (k) VALUES ('r1') RETURNING pn"))
            app.execute("ALTER TABLE app.p DETACH PARTITION app.p1")
            app.execute("ALTER TABLE app.q ATTACH PARTITION app.p1 FOR VALUES IN ('r1')")
            app.execute("INSERT INTO app.p VALUES ('r2', %s)", [pn])
    except psycopg.Error as e:
        refused(e)
        return
    assert carriers(app, ["p", "q"], "pn", pn) == 1, f"{pn} stored in two rows"


def test_expired_reservation_cannot_be_inserted_through_an_earlier_unstored_upsert(
    app: psycopg.Connection,
) -> None:
    """An upsert that stores nothing confirms a reservation for its proposed row until the
    commit; a later statement, after the reservation expired, must not insert the id on the
    strength of that confirmation (contract §3: no confirm after the expiry instant)."""
    app.execute(driver_table("d"))
    app.execute("INSERT INTO app.d (email, fleet) VALUES ('a@x', 'ABC')")
    rid = str(scalar(app, "SELECT idmint.reserve_driver_id('ABC', ttl => '300 milliseconds')"))
    try:
        with app.transaction():
            app.execute(
                "INSERT INTO app.d (email, fleet, driver_id) VALUES ('a@x', 'ABC', %s) ON CONFLICT DO NOTHING",
                [rid],
            )
            app.execute("SELECT pg_sleep(0.6)")  # the reservation has expired
            app.execute(
                "INSERT INTO app.d (email, fleet, driver_id) VALUES ('b@x', 'ABC', %s)", [rid]
            )
    except psycopg.Error as e:
        assert e.sqlstate in ("ID006", "ID004"), f"{e.sqlstate}: {e}"
        return
    pytest.fail(f"expired reservation {rid} was inserted (confirmed after its expiry)")


def armed_domain_table(app: psycopg.Connection, target: str, key: str, others: list[str]) -> None:
    """app.a, whose pn column has a domain whose check, once armed (setting app.armed), inserts
    the value into `target` under `key`; app.seen records every pn app.a's trigger chose."""
    app.execute(
        """
        CREATE TABLE app.seen (pn text);
        CREATE FUNCTION app.hook(v text) RETURNS boolean LANGUAGE plpgsql AS $f$
        BEGIN
            IF v IS NOT NULL AND current_setting('app.armed', true) = 'on' THEN
                PERFORM set_config('app.armed', 'off', true);
                EXECUTE format('INSERT INTO %s VALUES (%L, $1)', '"""
        + target
        + """', '"""
        + key
        + """') USING v;
            END IF;
            RETURN true;
        END $f$;
        CREATE DOMAIN app.dom AS text CHECK (app.hook(VALUE));
        CREATE TABLE app.a (k text PRIMARY KEY, pn app.dom UNIQUE);
        CREATE TRIGGER a_pn BEFORE INSERT OR UPDATE OR DELETE ON app.a FOR EACH ROW
            EXECUTE FUNCTION idmint.assign_entity_number('pn', 'part');
        CREATE FUNCTION app.see() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN INSERT INTO app.seen VALUES (NEW.pn); RETURN NEW; END $f$;
        CREATE TRIGGER z_see BEFORE INSERT ON app.a FOR EACH ROW EXECUTE FUNCTION app.see();
        """
        + "".join(entity_table(t) for t in others)
    )


def test_row_inserted_by_app_code_during_the_commit_lookup_keeps_its_number_issued(
    app: psycopg.Connection,
) -> None:
    """At commit the settler looks up the upsert's unstored proposal in app.a with the
    app's rights, which runs the app's domain check on the value; that check inserts the
    value into app.b. The insert must be refused (or the binding kept): the number must
    not end un-issued while app.b's committed row carries it."""
    armed_domain_table(app, "app.b", "r2", ["b"])
    app.execute("INSERT INTO app.a (k) VALUES ('x')")
    app.execute("TRUNCATE app.seen")
    try:
        with app.transaction():
            app.execute("INSERT INTO app.a (k) VALUES ('x') ON CONFLICT DO NOTHING")
            app.execute("SELECT set_config('app.armed', 'on', true)")
    except psycopg.Error as e:
        refused(e)
        return
    row = app.execute("SELECT pn FROM app.b WHERE k = 'r2'").fetchone()
    if row is None:
        return  # the look-up's INSERT was refused: fine
    pn = row[0]
    assert pn == scalar(app, "SELECT pn FROM app.seen")
    try:
        claimed = scalar(app, "SELECT idmint.claim_entity_number(%s, 'part')", [pn])
    except psycopg.Error as e:
        refused(e)
        return
    pytest.fail(
        f"{pn} is carried by app.b's committed row but was un-issued (claimed again: {claimed})"
    )


def test_driver_row_inserted_by_app_code_during_the_commit_lookup_keeps_its_id(
    app: psycopg.Connection,
) -> None:
    """Same with driver ids: the upsert's proposal got the fleet's next id; the app's
    domain check, run by the commit-time look-up, inserts a row with it into app.log; the
    id must not be given back while that row carries it."""
    app.execute(
        """
        CREATE TABLE app.seen (driver_id text);
        CREATE FUNCTION app.hook(v text) RETURNS boolean LANGUAGE plpgsql AS $f$
        BEGIN
            IF v IS NOT NULL AND current_setting('app.armed', true) = 'on' THEN
                PERFORM set_config('app.armed', 'off', true);
                INSERT INTO app.log VALUES ('r2', 'ABC', v);
            END IF;
            RETURN true;
        END $f$;
        CREATE DOMAIN app.dom AS text CHECK (app.hook(VALUE));
        CREATE TABLE app.d (email text PRIMARY KEY, fleet text NOT NULL, driver_id app.dom);
        CREATE TRIGGER a_id BEFORE INSERT OR UPDATE OR DELETE ON app.d FOR EACH ROW
            EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id');
        """
        + driver_table("log")
    )
    app.execute("INSERT INTO app.d (email, fleet) VALUES ('a@x', 'ABC')")  # DRV-001ABC
    try:
        with app.transaction():
            app.execute(
                "INSERT INTO app.d (email, fleet) VALUES ('a@x', 'ABC') ON CONFLICT DO NOTHING"
            )
            app.execute("SELECT set_config('app.armed', 'on', true)")
    except psycopg.Error as e:
        refused(e)
        return
    row = app.execute("SELECT driver_id FROM app.log WHERE email = 'r2'").fetchone()
    if row is None:
        return  # the look-up's INSERT was refused: fine
    logged = row[0]
    nxt = str(
        scalar(app, "INSERT INTO app.d (email, fleet) VALUES ('b@x', 'ABC') RETURNING driver_id")
    )
    assert carriers(app, ["d", "log"], "driver_id", str(logged)) == 1, (
        f"{logged} (committed in app.log) was given back; the next row got {nxt}"
    )


def test_row_inserted_by_app_code_during_the_triggers_lookup_is_not_given_the_number_twice(
    app: psycopg.Connection,
) -> None:
    """A value proposed in vain, given again in a later statement, while app code that a
    look-up would run (a domain check inserting the value into app.c) is armed: one
    number, at most one stored row."""
    armed_domain_table(app, "app.c", "r3", ["b", "c"])
    app.execute("INSERT INTO app.a (k) VALUES ('x')")
    app.execute("TRUNCATE app.seen")
    try:
        with app.transaction():
            app.execute("INSERT INTO app.a (k) VALUES ('x') ON CONFLICT DO NOTHING")
            pn = str(scalar(app, "SELECT pn FROM app.seen"))
            app.execute("SELECT set_config('app.armed', 'on', true)")
            app.execute("INSERT INTO app.b VALUES ('r2', %s)", [pn])
    except psycopg.Error as e:
        refused(e)
        return
    assert carriers(app, ["a", "b", "c"], "pn", pn) == 1, f"{pn} stored in two rows"
