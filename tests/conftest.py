"""Test harness: one real PostgreSQL cluster per session, migrated once into a template;
every test gets a fresh database cloned from it."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql import factories
from pytest_postgresql.executors import PostgreSQLExecutor

from idmint.cluster import PgBouncer, pg_ctl_executable
from idmint.migrate import migrate

# pytest-postgresql runs this pg_ctl (as root: a wrapper idmint.cluster writes, removed at exit).
_session_resources = contextlib.ExitStack()
PG_CTL = str(_session_resources.enter_context(pg_ctl_executable()))


def conninfo(host: str, port: int, user: str, dbname: str, password: str | None = None) -> str:
    return psycopg.conninfo.make_conninfo(
        host=host, port=port, user=user, dbname=dbname, password=password or None
    )


def _load_idmint(
    host: str, port: int, user: str, dbname: str, password: str | None, **_: object
) -> None:
    migrate(conninfo(host, port, user, dbname, password))


postgresql_proc = factories.postgresql_proc(
    executable=PG_CTL,
    port=(21000, 21999),
    load=[_load_idmint],
    postgres_options="-c max_connections=200 -c fsync=off -c full_page_writes=off",
)
postgresql = factories.postgresql("postgresql_proc")


@pytest.fixture
def dsn(postgresql: psycopg.Connection) -> str:
    """Conninfo of this test's fresh, migrated database."""
    info = postgresql.info
    return conninfo(info.host, info.port, info.user, info.dbname, info.password)


@pytest.fixture
def connect(dsn: str) -> Iterator[Callable[..., psycopg.Connection]]:
    """Open extra connections to the test database; all are closed afterwards."""
    opened: list[psycopg.Connection] = []

    def _connect(**kwargs: object) -> psycopg.Connection:
        kwargs.setdefault("autocommit", True)
        conn = psycopg.connect(dsn, **kwargs)  # type: ignore[arg-type]
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def db(connect: Callable[..., psycopg.Connection]) -> psycopg.Connection:
    """An autocommit connection to the test database."""
    return connect()


def unique_role(db: psycopg.Connection, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    return name


@pytest.fixture
def app(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection]
) -> Iterator[psycopg.Connection]:
    """CREATE ROLE app LOGIN; GRANT idmint_admin TO app (a member of idmint_user, so it may
    call every public function) — and a schema of its own."""
    db.execute("SELECT idmint.add_fleet('Security', 'AAA')")
    role = unique_role(db, "idmint_sec_app")
    db.execute(sql.SQL("GRANT idmint_admin TO {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(role)))
    conn = connect(user=role)
    row = conn.execute("SELECT current_user").fetchone()
    assert row == (role,)
    yield conn
    conn.close()
    db.execute(sql.SQL("DROP SCHEMA app CASCADE"))
    db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def app_role(db: psycopg.Connection) -> Iterator[str]:
    """A login role that is a member of idmint_user only (EXECUTE on the public functions)
    and owns the schema `own`."""
    role = unique_role(db, "idmint_own_app")
    db.execute(sql.SQL("GRANT idmint_user TO {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("CREATE SCHEMA own AUTHORIZATION {}").format(sql.Identifier(role)))
    yield role
    # A failed test may leave the role's sessions in a transaction: end them first.
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
    db.execute("DROP SCHEMA own CASCADE")
    db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))


@pytest.fixture
def app_connect(
    connect: Callable[..., psycopg.Connection], app_role: str
) -> Callable[..., psycopg.Connection]:
    """Connections as app_role (keyword arguments as for `connect`)."""

    def _connect(**kwargs: object) -> psycopg.Connection:
        return connect(user=app_role, **kwargs)

    return _connect


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PGAPPNAME", "idmint-tests")


def pytest_unconfigure(config: pytest.Config) -> None:
    _session_resources.close()


# --- PgBouncer (transaction pooling, default_pool_size 2) in front of the test cluster ---


@pytest.fixture(scope="session")
def pgbouncer(postgresql_proc: PostgreSQLExecutor) -> Iterator[PgBouncer]:
    """A real PgBouncer forwarding every database name to the session's cluster."""
    proc = postgresql_proc
    with PgBouncer(proc.host, proc.port, proc.user) as bouncer:
        yield bouncer


@pytest.fixture
def pgbouncer_dsn(pgbouncer: PgBouncer, postgresql: psycopg.Connection) -> str:
    """Conninfo of this test's database (the one `dsn` names), reached through PgBouncer."""
    return pgbouncer.conninfo(postgresql.info.dbname)


@pytest.fixture(params=["direct", "pgbouncer"])
def route(request: pytest.FixtureRequest, dsn: str) -> str:
    """This test's database reached two ways: PostgreSQL itself, or the real PgBouncer in
    transaction pooling mode (the test runs once for each)."""
    if request.param == "direct":
        return dsn
    return str(request.getfixturevalue("pgbouncer_dsn"))


@pytest.fixture
def spare_rows(db: psycopg.Connection) -> str:
    """A table whose number column has the DEFAULT gen_entity_number('order') (spares)."""
    db.execute(
        "CREATE TABLE spare_rows"
        " (num varchar(7) PRIMARY KEY DEFAULT idmint.gen_entity_number('order'))"
    )
    return "spare_rows"
