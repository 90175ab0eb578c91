"""Migrations: round trips, idempotence, concurrency, and sql/ == migrations/."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from idmint.migrate import migrate, rollback, yoyo_url

ROOT = Path(__file__).resolve().parent.parent
YOYO = str(Path(sys.executable).parent / "yoyo")

CATALOG_QUERIES = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'idmint'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped""",
    "relations": """
        SELECT c.relname, c.relkind, c.relacl::text, obj_description(c.oid, 'pg_class')
        FROM pg_class c WHERE c.relnamespace = 'idmint'::regnamespace""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'idmint'::regnamespace""",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'idmint'",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'idmint'",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proacl::text,
               obj_description(p.oid, 'pg_proc')
        FROM pg_proc p WHERE p.pronamespace = 'idmint'::regnamespace""",
    "data": "SELECT sqlstate, name, meaning FROM idmint.error_codes",
    "schema": "SELECT nspacl::text, obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'idmint'",
}


def catalog(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    """idmint's objects as comparable data."""
    with psycopg.connect(dsn) as conn:
        if not conn.execute("SELECT to_regnamespace('idmint') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            return {}
        return {
            name: sorted(conn.execute(q).fetchall(), key=repr)
            for name, q in CATALOG_QUERIES.items()
        }


@pytest.fixture
def empty_db(dsn: str, db: psycopg.Connection) -> Iterator[str]:
    """A brand-new database on the test cluster (not cloned from the migrated template)."""
    name = f"empty_{uuid.uuid4().hex[:10]}"
    db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = db.info
    yield psycopg.conninfo.make_conninfo(
        host=info.host, port=info.port, user=info.user, dbname=name
    )
    db.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_fresh_install_from_sql_equals_upgrade_through_every_migration(
    dsn: str, empty_db: str
) -> None:
    """Loading sql/ directly must give exactly what replaying migrations/ gives."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        for path in sorted((ROOT / "sql").glob("*.sql")):
            conn.execute(path.read_text())  # type: ignore[arg-type]
    fresh = catalog(empty_db)
    upgraded = catalog(dsn)  # the test template was built by replaying migrations/
    assert fresh and fresh == upgraded


def test_up_down_up_round_trips(dsn: str, empty_db: str) -> None:
    assert migrate(empty_db) == ["0001_idmint"]
    first = catalog(empty_db)
    assert first == catalog(dsn)
    assert rollback(empty_db) == ["0001_idmint"]
    assert catalog(empty_db) == {}
    assert migrate(empty_db) == ["0001_idmint"]
    assert catalog(empty_db) == first
    with psycopg.connect(empty_db) as conn:
        conn.execute("SELECT idmint.add_fleet('x', 'ABC')")
        assert conn.execute("SELECT idmint.next_driver_id('ABC')").fetchone() == ("DRV-001ABC",)


def test_applying_twice_changes_nothing(dsn: str) -> None:
    before = catalog(dsn)
    assert migrate(dsn) == []
    assert catalog(dsn) == before


def test_two_concurrent_migrate_runs_both_succeed(empty_db: str) -> None:
    code = "import sys; from idmint.migrate import migrate; print(migrate(sys.argv[1]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_db],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(out.strip() for out, _ in outputs) == ["['0001_idmint']", "[]"]


def test_plain_yoyo_apply_gives_the_same_database(dsn: str, empty_db: str) -> None:
    subprocess.run(
        [
            YOYO,
            "apply",
            "--batch",
            "--no-config-file",
            "--database",
            yoyo_url(empty_db),
            str(ROOT / "migrations"),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    assert catalog(empty_db) == catalog(dsn)
    subprocess.run(
        [
            YOYO,
            "rollback",
            "--batch",
            "--no-config-file",
            "--database",
            yoyo_url(empty_db),
            str(ROOT / "migrations"),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    assert catalog(empty_db) == {}


def test_migration_file_is_generated_from_sql() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_migration.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_version_is_the_newest_migration(dsn: str) -> None:
    newest = sorted(
        p.stem for p in (ROOT / "migrations").glob("*.sql") if ".rollback" not in p.name
    )
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT idmint.version()").fetchone() == (newest[-1],)


def test_a_database_owner_without_createrole_can_install(
    db: psycopg.Connection, empty_db: str
) -> None:
    """Once idmint_user and idmint_admin exist, owning the database is enough (§0)."""
    owner = f"idmint_owner_{uuid.uuid4().hex[:8]}"
    name = psycopg.conninfo.conninfo_to_dict(empty_db)["dbname"]
    db.execute(sql.SQL("CREATE ROLE {} LOGIN NOCREATEROLE").format(sql.Identifier(owner)))
    try:
        db.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(str(name)), sql.Identifier(owner)
            )
        )
        as_owner = psycopg.conninfo.make_conninfo(empty_db, user=owner)
        assert migrate(as_owner) == ["0001_idmint"]
        with psycopg.connect(as_owner) as conn:
            assert conn.execute("SELECT idmint.next_driver_id((idmint.add_fleet('x')).code)")
            assert conn.execute(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'idmint'"
            ).fetchone() == (owner,)
    finally:
        db.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(str(name)), sql.Identifier(str(db.info.user))
            )
        )
        with psycopg.connect(empty_db) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(owner)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(owner)))
