"""Recipe: alembic (docs/ORMS.md).

- compare_server_default with an idmint DEFAULT written as PostgreSQL stores it issues no
  numbers (written otherwise, every comparison issues two);
- idmint installed from an upgrade step and removed by the downgrade, with the SQL files of
  idmint.migrations_dir();
- under asyncpg, op.execute of the migration SQL fails ("cannot insert multiple commands
  into a prepared statement"); executing it through asyncpg's own execute() works, inside
  alembic's transaction.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, String, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.recipes.conftest import Server, issued
from tests.recipes.models_sqlalchemy import Base

# --- autogenerate: compare_server_default ------------------------------------------------


def only_schema_app(name: str | None, type_: str, parent_names: object) -> bool:
    return type_ != "schema" or name == "app"


def compare(server: Server, metadata: MetaData) -> list[object]:
    """What `alembic revision --autogenerate` computes, with compare_server_default."""
    engine = create_engine(server.url("postgresql+psycopg"))
    try:
        with engine.begin() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_server_default": True,
                    "include_schemas": True,
                    "include_name": only_schema_app,
                },
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def default_changes(diffs: list[Any]) -> list[tuple[str, str]]:
    """(table, column) of each server-default change alembic found."""
    ops = [op for diff in diffs for op in (diff if isinstance(diff, list) else [diff])]
    return [(op[2], op[3]) for op in ops if op[0] == "modify_default"]


class Unstored(DeclarativeBase):
    """The same parts table, its DEFAULT written without the cast PostgreSQL adds."""

    metadata = MetaData(schema="app")


class UnstoredPart(Unstored):
    __tablename__ = "parts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    part_number: Mapped[str] = mapped_column(
        String(7), unique=True, server_default=text("idmint.gen_entity_number('part')")
    )


def test_compare_server_default_issues_no_numbers(
    app_server: Server, app: psycopg.Connection
) -> None:
    engine = create_engine(app_server.url("postgresql+psycopg"))
    Base.metadata.create_all(engine)
    engine.dispose()
    stored = app.execute(
        "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef"
        " JOIN pg_attribute ON attrelid = adrelid AND attnum = adnum"
        " WHERE adrelid = 'app.parts'::regclass AND attname = 'part_number'"
    ).fetchone()
    assert stored == ("idmint.gen_entity_number('part'::text)",)

    before = issued(app)
    assert compare(app_server, Base.metadata) == []
    assert issued(app) == before == 0

    # Written as 'part', the strings differ: alembic runs both defaults on the server to
    # compare them, issuing two numbers (committed with the autogenerate transaction),
    # and reports a change because two fresh numbers never compare equal.
    diffs = compare(app_server, Unstored.metadata)
    assert issued(app) == before + 2
    assert default_changes(diffs) == [("parts", "part_number")]


# --- install from an upgrade step ----------------------------------------------------------

SYNC_ENV = """
from alembic import context
from sqlalchemy import create_engine

engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

ASYNC_ENV = """
import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine


def run(connection):
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def main():
    engine = create_async_engine(context.config.get_main_option("sqlalchemy.url"))
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


asyncio.run(main())
"""

# The recipe for drivers that take many statements in one call (psycopg, psycopg2).
INSTALL = '''
"""install idmint 0001"""
from alembic import op

import idmint

revision = "0001_idmint"
down_revision = None


def upgrade():
    op.execute((idmint.migrations_dir() / "0001_idmint.sql").read_text())


def downgrade():
    op.execute((idmint.migrations_dir() / "0001_idmint.rollback.sql").read_text())
'''

# The recipe for asyncpg: SQLAlchemy prepares every statement, and a prepared statement
# holds one command; asyncpg's own execute() without arguments takes a whole script.
INSTALL_ASYNCPG = '''
"""install idmint 0001 (asyncpg)"""
from alembic import op

import idmint

revision = "0001_idmint"
down_revision = None


def execute_script(name):
    sql = (idmint.migrations_dir() / name).read_text()
    # run_async hands over the asyncpg connection that alembic's transaction runs on.
    op.get_bind().connection.dbapi_connection.run_async(lambda conn: conn.execute(sql))


def upgrade():
    execute_script("0001_idmint.sql")


def downgrade():
    execute_script("0001_idmint.rollback.sql")
'''

FAILING_NEXT = '''
"""a later step that fails"""
from alembic import op

revision = "0002_fails"
down_revision = "0001_idmint"


def upgrade():
    op.execute("SELECT 1/0")
'''


def alembic_config(tmp_path: Path, url: str, env: str, *revisions: str) -> Config:
    (tmp_path / "versions").mkdir(parents=True)
    (tmp_path / "env.py").write_text(textwrap.dedent(env))
    for i, source in enumerate(revisions):
        (tmp_path / "versions" / f"rev{i}.py").write_text(source)
    cfg = Config()
    cfg.set_main_option("script_location", str(tmp_path))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def installed(server: Server) -> str | None:
    with psycopg.connect(server.conninfo) as conn:
        row = conn.execute("SELECT to_regnamespace('idmint') IS NOT NULL").fetchone()
        if row != (True,):
            return None
        row = conn.execute("SELECT idmint.version()").fetchone()
        assert row is not None
        # It works: a fleet and its first id.
        conn.execute("SELECT idmint.add_fleet('Alembic', 'ALB')")
        assert conn.execute("SELECT idmint.next_driver_id('ALB')").fetchone() == ("DRV-001ALB",)
        conn.rollback()
        return str(row[0])


def test_install_from_an_upgrade_step_and_downgrade(tmp_path: Path, empty_server: Server) -> None:
    url = empty_server.url("postgresql+psycopg").render_as_string(hide_password=False)
    cfg = alembic_config(tmp_path, url, SYNC_ENV, INSTALL)
    assert installed(empty_server) is None
    command.upgrade(cfg, "head")
    assert installed(empty_server) == "0001_idmint"
    command.downgrade(cfg, "base")
    assert installed(empty_server) is None


def test_asyncpg_needs_its_own_execute_for_the_migration_sql(
    tmp_path: Path, empty_server: Server
) -> None:
    url = empty_server.url("postgresql+asyncpg").render_as_string(hide_password=False)

    # op.execute: SQLAlchemy's asyncpg dialect prepares the statement, and fails.
    cfg = alembic_config(tmp_path / "plain", url, ASYNC_ENV, INSTALL)
    with pytest.raises(DBAPIError, match="cannot insert multiple commands into a prepared"):
        command.upgrade(cfg, "head")
    assert installed(empty_server) is None

    # asyncpg's execute() runs the script inside alembic's transaction: when a later step
    # of the same upgrade fails, the install is rolled back with it.
    cfg = alembic_config(tmp_path / "fixed", url, ASYNC_ENV, INSTALL_ASYNCPG, FAILING_NEXT)
    with pytest.raises(DBAPIError, match="division by zero"):
        command.upgrade(cfg, "head")
    assert installed(empty_server) is None
    command.upgrade(cfg, "0001_idmint")
    assert installed(empty_server) == "0001_idmint"
    command.downgrade(cfg, "base")
    assert installed(empty_server) is None
