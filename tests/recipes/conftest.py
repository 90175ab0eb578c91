"""Fixtures for the ORM and driver recipes (docs/ORMS.md): the test database reached as an
ordinary application role (the `app` fixture: a member of idmint_admin that owns schema
`app`), by URL for SQLAlchemy, asyncpg and Django; and an empty database without idmint for
the install recipes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL

from tests.conftest import conninfo


@dataclass(frozen=True)
class Server:
    """Where one database is, and as whom the recipe connects."""

    host: str
    port: int
    user: str
    dbname: str

    def url(self, driver: str) -> URL:
        """A SQLAlchemy URL, e.g. ``postgresql+psycopg`` or ``postgresql+asyncpg``."""
        return URL.create(
            driver, username=self.user, host=self.host, port=self.port, database=self.dbname
        )

    @property
    def dsn(self) -> str:
        """A libpq / asyncpg URL."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    @property
    def conninfo(self) -> str:
        return conninfo(self.host, self.port, self.user, self.dbname)


@pytest.fixture
def app_server(app: psycopg.Connection) -> Server:
    """This test's database (idmint installed, fleet AAA), as the application role."""
    info = app.info
    return Server(info.host, info.port, info.user, info.dbname)


@pytest.fixture
def empty_server(db: psycopg.Connection) -> Iterator[Server]:
    """A database of the same cluster without idmint (the roles exist: they are
    cluster-wide), reached as the superuser; dropped afterwards."""
    name = f"recipes_{uuid.uuid4().hex[:10]}"
    db.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    info = db.info
    yield Server(info.host, info.port, info.user, name)
    db.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def issued(conn: psycopg.Connection, entity: str = "part") -> int:
    """How many numbers of a type idmint has issued (committed, plus this session's own)."""
    row = conn.execute(
        "SELECT issued FROM idmint.entity_capacity WHERE name = %s", [entity]
    ).fetchone()
    assert row is not None
    return int(row[0])
