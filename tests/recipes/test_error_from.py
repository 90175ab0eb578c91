"""idmint.error_from (contract §6): the idmint exception behind an error from any driver.

psycopg 3 and psycopg2 here; asyncpg, SQLAlchemy and Django in their recipe modules. Every
error below is raised by a real server; only the wrappers of the chain tests are built by
hand.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import psycopg2
import psycopg2.extensions
import pytest

import idmint
from tests.recipes.conftest import Server


@pytest.fixture
def pg2(app_server: Server) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(app_server.conninfo)
    conn.autocommit = True
    yield conn
    conn.close()


def psycopg3_error(conn: psycopg.Connection, query: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(query)
    return info.value


def test_psycopg3_error(app: psycopg.Connection) -> None:
    exc = psycopg3_error(app, "SELECT idmint.next_driver_id('ZZZ')")
    err = idmint.error_from(exc)
    assert isinstance(err, idmint.UnknownFleetError)
    assert (err.sqlstate, err.message) == ("ID002", exc.diag.message_primary)
    assert err.message is not None and "ZZZ" in err.message
    assert err.hint is not None and err.hint == exc.diag.message_hint
    assert err.__cause__ is exc


def test_psycopg2_pgcode_and_error_from(pg2: psycopg2.extensions.connection) -> None:
    cur = pg2.cursor()
    with pytest.raises(psycopg2.Error) as info:
        cur.execute("SELECT idmint.gen_entity_numbers('part', 0)")
    exc = info.value
    # psycopg2 knows no class ID: a plain DatabaseError whose pgcode says what happened.
    assert type(exc) is psycopg2.DatabaseError
    assert exc.pgcode == "ID003"
    err = idmint.error_from(exc)
    assert isinstance(err, idmint.InvalidArgumentError)
    assert err.sqlstate == "ID003"
    assert err.message == exc.diag.message_primary
    assert err.hint == exc.diag.message_hint
    assert err.detail == exc.diag.message_detail
    assert err.__cause__ is exc

    # A driver id already carried by a row, through the trigger.
    cur.execute(
        "CREATE TABLE app.drivers (fleet text NOT NULL, driver_id text UNIQUE);"
        " CREATE TRIGGER drivers_id BEFORE INSERT OR UPDATE OR DELETE ON app.drivers"
        " FOR EACH ROW EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    cur.execute("INSERT INTO app.drivers (fleet) VALUES ('AAA') RETURNING driver_id")
    row = cur.fetchone()
    assert row is not None
    with pytest.raises(psycopg2.Error) as info:
        cur.execute("INSERT INTO app.drivers (fleet, driver_id) VALUES ('AAA', %s)", [row[0]])
    assert info.value.pgcode == "ID004"
    assert isinstance(idmint.error_from(info.value), idmint.AlreadyTakenError)


def test_errors_of_other_classes_give_none(
    app: psycopg.Connection, pg2: psycopg2.extensions.connection
) -> None:
    assert idmint.error_from(psycopg3_error(app, "SELECT 1/0")) is None  # 22012
    # A serialization failure is the facade's ConcurrencyError, but not an ID... SQLSTATE.
    retry = psycopg3_error(
        app, "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"
    )
    assert retry.sqlstate == "40001"
    assert idmint.error_from(retry) is None
    with pytest.raises(psycopg2.Error) as info:
        pg2.cursor().execute("SELECT * FROM app.no_such_table")
    assert info.value.pgcode == "42P01"
    assert idmint.error_from(info.value) is None
    # No SQLSTATE at all: a connection that never reached a server, a plain exception.
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect("host=127.0.0.1 port=1 connect_timeout=2")
    assert idmint.error_from(refused.value) is None
    assert idmint.error_from(ValueError("ID001")) is None


def test_chains_are_followed_through_orig_and_cause(app: psycopg.Connection) -> None:
    exc = psycopg3_error(app, "SELECT idmint.gen_entity_number(0)")  # ID003

    class Wrapper(Exception):  # what SQLAlchemy's DBAPIError looks like
        def __init__(self, orig: BaseException) -> None:
            super().__init__("wrapped")
            self.orig = orig

    outer = RuntimeError("app layer")
    outer.__cause__ = Wrapper(exc)
    err = idmint.error_from(outer)
    assert isinstance(err, idmint.InvalidArgumentError)
    assert err.message == exc.diag.message_primary
    assert err.__cause__ is outer  # the exception that was passed in; the chain stays whole

    # Cycles end: a chain that loops without a SQLSTATE gives None, one that loops around
    # the driver's error still finds it.
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert idmint.error_from(a) is None
    loop = Wrapper(exc)
    loop.__cause__ = loop
    assert isinstance(idmint.error_from(loop), idmint.InvalidArgumentError)


def test_an_idmint_error_is_returned_as_it_is(dsn: str) -> None:
    mint = idmint.IdMint(dsn)
    with pytest.raises(idmint.IdmintError) as info:
        mint.next_driver_id("ZZZ")
    assert idmint.error_from(info.value) is info.value
    assert idmint.error_from(idmint.ConcurrencyError("busy", sqlstate="40001")) is None
