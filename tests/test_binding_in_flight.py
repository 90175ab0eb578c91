"""A row still on its way into its table is not a row that was never stored.

Between idmint's BEFORE trigger and the moment the row is written, the app's later BEFORE
triggers, CHECK constraints and policies run. If they put the row's number (or driver id)
into another triggered row, that row's trigger must not take the first row for an unstored
upsert proposal (idmint._unstored only considers bindings of earlier statements): the
value is refused (ID004), never stored twice, and a stored row's value is never un-issued
or given back. (Found by the review of the unstored-binding change; the app role is a
member of idmint_user only and owns its schema.)
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
