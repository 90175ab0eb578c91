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

from idmint import IdMint, IdmintError
from idmint.migrate import (
    DataCounts,
    DataLossRefused,
    MigrationError,
    Outcome,
    migrate,
    migrate_outcome,
    migration_ids,
    migration_sql,
    migrations_status,
    rollback,
    rollback_plan,
    yoyo_url,
)

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


# -- migrating from apps (contract §7): no lock wait, privileges checked first ---------------


@pytest.fixture
def app_role(db: psycopg.Connection) -> Iterator[str]:
    """A login role that is a member of idmint_user and has no other rights."""
    role = f"idmint_app_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    db.execute(sql.SQL("GRANT idmint_user TO {}").format(sql.Identifier(role)))
    yield role
    db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def as_role(dsn: str, role: str) -> str:
    # A lock or statement wait surfaces as an error instead of a hang.
    return psycopg.conninfo.make_conninfo(
        dsn, user=role, options="-c lock_timeout=5s -c statement_timeout=20s"
    )


def test_app_role_with_nothing_pending_migrates_at_once(dsn: str, app_role: str) -> None:
    """0.1 waited 121 s on yoyo's lock table, then failed with 42501."""
    app = as_role(dsn, app_role)
    assert migrate(app) == []
    assert IdMint(app).migrate() == []
    with psycopg.connect(app) as conn:  # and the role really has no other rights
        assert conn.execute(
            "SELECT has_table_privilege('public.yoyo_lock', 'INSERT'),"
            " has_database_privilege(current_database(), 'CREATE')"
        ).fetchone() == (False, False)


def test_app_role_with_something_pending_fails_fast_naming_the_privilege(
    empty_db: str, app_role: str
) -> None:
    """A fresh database: the app role may neither create schema idmint nor yoyo's tables."""
    with pytest.raises(MigrationError) as caught:
        migrate(as_role(empty_db, app_role))
    err = caught.value
    assert isinstance(err, IdmintError) and err.sqlstate == "42501"
    assert err.message.startswith(f"role {app_role} cannot migrate idmint: it lacks ")
    dbname = psycopg.conninfo.conninfo_to_dict(empty_db)["dbname"]
    assert f"CREATE on database {dbname}" in err.message
    assert "CREATE on schema public (for yoyo's tables" in err.message
    assert err.hint and "idmint sql | psql -1 -f -" in err.hint
    with psycopg.connect(empty_db) as conn:  # nothing was created, not even yoyo's lock table
        assert conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname LIKE %s OR relname = 'yoyo_lock'",
            ("%yoyo%",),
        ).fetchone() == (0,)
        assert conn.execute("SELECT to_regnamespace('idmint')").fetchone() == (None,)


def test_migration_errors_are_exported_from_idmint(empty_db: str, app_role: str) -> None:
    """An app that migrates at start-up catches the refusal as `idmint.MigrationError`
    (the same class as idmint.migrate's), without `import idmint` loading yoyo."""
    import idmint
    import idmint.migrate

    assert idmint.MigrationError is MigrationError is idmint.migrate.MigrationError
    assert idmint.DataLossRefused is DataLossRefused
    assert {"MigrationError", "DataLossRefused"} <= set(idmint.__all__)
    with pytest.raises(idmint.MigrationError) as caught:
        idmint.IdMint(as_role(empty_db, app_role)).migrate()
    assert caught.value.sqlstate == "42501"
    code = "import sys, idmint; idmint.MigrationError; print('yoyo' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "False"


def test_app_role_cannot_take_yoyos_lock_fails_fast(dsn: str, app_role: str) -> None:
    """yoyo's tables exist (the owner migrated once) but the app may not write them: this is
    where 0.1 retried the lock row for two minutes."""
    assert rollback(dsn) == ["0001_idmint"]
    with pytest.raises(MigrationError) as caught:
        IdMint(as_role(dsn, app_role)).migrate()
    assert caught.value.sqlstate == "42501"
    assert "INSERT, DELETE on table public.yoyo_lock" in caught.value.message
    assert "SELECT, INSERT, DELETE on table public._yoyo_migration" in caught.value.message


def test_app_role_cannot_roll_back(dsn: str, app_role: str) -> None:
    with pytest.raises(MigrationError) as caught:
        rollback(as_role(dsn, app_role))
    assert caught.value.sqlstate == "42501"
    assert "ownership of schema idmint" in caught.value.message
    assert caught.value.message.startswith(f"role {app_role} cannot roll back idmint: ")
    assert caught.value.hint and caught.value.hint.startswith("run `idmint rollback` as the owner")
    assert catalog(dsn)  # still installed


# -- plain-SQL installs: `idmint sql`, adopted by migrate -------------------------------------


def install_with_plain_sql(target: str, *, rollback: bool = False) -> None:
    """What psql -1 -f, alembic's op.execute or Django's RunSQL do: one transaction."""
    with psycopg.connect(target) as conn:
        conn.execute(migration_sql(rollback=rollback).encode())


def test_migration_sql_installs_and_removes_a_working_idmint(dsn: str, empty_db: str) -> None:
    install_with_plain_sql(empty_db)
    assert catalog(empty_db) == catalog(dsn)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT idmint.version()").fetchone() == (migration_ids()[-1],)
        conn.execute("SELECT idmint.add_fleet('x', 'ABC')")
        assert conn.execute("SELECT idmint.next_driver_id('ABC')").fetchone() == ("DRV-001ABC",)
        # yoyo knows nothing of it
        assert conn.execute("SELECT to_regclass('public._yoyo_migration')").fetchone() == (None,)
    install_with_plain_sql(empty_db, rollback=True)
    assert catalog(empty_db) == {}


def test_migrate_adopts_a_plain_sql_install(dsn: str, empty_db: str) -> None:
    install_with_plain_sql(empty_db)
    with psycopg.connect(empty_db) as conn:
        conn.execute("SELECT idmint.add_fleet('x', 'ABC')")
    version, rows = migrations_status(empty_db)
    assert version == "0001_idmint"
    assert [(r.id, r.applied, r.recorded) for r in rows] == [("0001_idmint", True, False)]

    outcome = migrate_outcome(empty_db)  # 0.1: 42P07 relation "error_codes" already exists
    assert (outcome.applied, outcome.adopted) == ([], ["0001_idmint"])
    _, rows = migrations_status(empty_db)
    assert [(r.id, r.applied, r.recorded) for r in rows] == [("0001_idmint", True, True)]
    assert rows[0].recorded_at is not None
    assert migrate_outcome(empty_db) == Outcome([], [])  # recorded once
    with psycopg.connect(empty_db) as conn:  # the data was kept, nothing replayed
        assert conn.execute("SELECT code FROM idmint.fleets").fetchall() == [("ABC",)]

    assert rollback(empty_db) == ["0001_idmint"]
    assert catalog(empty_db) == {}
    assert migrate(empty_db) == ["0001_idmint"]
    assert catalog(empty_db) == catalog(dsn)


def test_two_concurrent_runs_adopt_once(empty_db: str) -> None:
    install_with_plain_sql(empty_db)
    code = (
        "import sys; from idmint.migrate import migrate_outcome as m;"
        " o = m(sys.argv[1]); print(o.applied, o.adopted)"
    )
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
    assert sorted(out.strip() for out, _ in outputs) == sorted(["[] []", "[] ['0001_idmint']"])
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone() == (1,)


def test_migrate_refuses_a_newer_version(empty_db: str) -> None:
    install_with_plain_sql(empty_db)
    with psycopg.connect(empty_db) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION idmint.version() RETURNS text LANGUAGE sql"
            " AS $$ SELECT '9001_future'::text $$"
        )
    with pytest.raises(MigrationError) as caught:
        migrate(empty_db)
    err = caught.value
    assert err.sqlstate == "55000"
    assert "idmint version 9001_future" in err.message and "0001_idmint" in err.message
    assert err.hint and "upgrade the idmint package" in err.hint
    with pytest.raises(MigrationError):
        migrations_status(empty_db)
    with psycopg.connect(empty_db) as conn:  # nothing recorded
        assert conn.execute("SELECT to_regclass('public._yoyo_migration')").fetchone() == (None,)


def test_migrate_refuses_a_foreign_idmint_schema(empty_db: str) -> None:
    with psycopg.connect(empty_db) as conn:
        conn.execute("CREATE SCHEMA idmint; CREATE TABLE idmint.error_codes (x int)")
    with pytest.raises(MigrationError) as caught:
        migrate(empty_db)
    assert caught.value.sqlstate == "55000"
    assert "has no idmint.version()" in caught.value.message


def test_migrate_refuses_records_without_the_schema(empty_db: str) -> None:
    """yoyo says 0001 is applied but schema idmint was dropped by hand: say so, and the
    hinted rollback clears the stale record."""
    assert migrate(empty_db) == ["0001_idmint"]
    with psycopg.connect(empty_db) as conn:
        conn.execute("DROP SCHEMA idmint CASCADE")
    with pytest.raises(MigrationError) as caught:
        migrate(empty_db)
    err = caught.value
    assert err.sqlstate == "55000"
    assert "yoyo records 0001_idmint as applied, but idmint is not installed" in err.message
    assert err.hint and "idmint rollback --steps 1 --yes" in err.hint
    assert rollback(empty_db, allow_data_loss=False) == ["0001_idmint"]
    assert migrate(empty_db) == ["0001_idmint"]


# -- safe rollback ------------------------------------------------------------------------------


def test_rollback_refuses_to_drop_data_unless_allowed(dsn: str, db: psycopg.Connection) -> None:
    assert rollback_plan(dsn) == (["0001_idmint"], DataCounts(0, 0, 0))
    db.execute("SELECT idmint.add_fleet('x', 'ABC')")
    db.execute("SELECT idmint.next_driver_ids('ABC', 3)")
    db.execute("SELECT idmint.reserve_driver_id('ABC')")
    db.execute("SELECT idmint.gen_entity_numbers('part', 5)")
    counts = DataCounts(fleets=1, driver_ids=4, entity_numbers=5)
    assert rollback_plan(dsn) == (["0001_idmint"], counts)
    with pytest.raises(DataLossRefused) as caught:
        rollback(dsn, allow_data_loss=False)
    assert caught.value.counts == counts
    assert "1 fleet, 4 driver ids, 5 entity numbers" in caught.value.message
    assert catalog(dsn)  # nothing dropped
    assert rollback(dsn) == ["0001_idmint"]  # the library call is explicit already
    assert catalog(dsn) == {}


def test_a_role_outside_idmint_user_is_told_it_lacks_usage(
    dsn: str, db: psycopg.Connection
) -> None:
    role = f"idmint_stranger_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with pytest.raises(MigrationError) as caught:
            migrate(as_role(dsn, role))
        assert caught.value.sqlstate == "42501"
        assert caught.value.message == (
            f"role {role} cannot read idmint's version: it lacks USAGE on schema idmint"
        )
        assert caught.value.hint and caught.value.hint.startswith("grant idmint_user to it")
    finally:
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_missing_roles_that_cannot_be_created_stop_the_install_with_their_statements() -> None:
    """Roles missing, no CREATEROLE: ID003 with the CREATE ROLE hint, nothing left behind (§0).

    The shared test cluster has the roles already, so this needs a cluster of its own.
    """
    from idmint.cluster import LocalCluster

    with LocalCluster({"fsync": "off"}, embedded=False) as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as su:
            su.execute("CREATE ROLE owner LOGIN NOCREATEROLE")
            su.execute("CREATE DATABASE app OWNER owner")
        as_owner = psycopg.conninfo.make_conninfo(pg.dsn_for("app"), user="owner")
        with pytest.raises(IdmintError) as caught:
            migrate(as_owner)
        assert caught.value.sqlstate == "ID003"
        assert "CREATE ROLE idmint_user NOLOGIN" in str(caught.value.hint)
        assert "CREATE ROLE idmint_admin NOLOGIN IN ROLE idmint_user" in str(caught.value.hint)
        with psycopg.connect(pg.dsn_for("app")) as conn:
            left = conn.execute(
                "SELECT to_regnamespace('idmint'), to_regclass('public._yoyo_migration'),"
                " (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'idmint%')"
            ).fetchone()
        assert left == (None, None, 0)
