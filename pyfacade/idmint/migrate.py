"""Apply, adopt, list and roll back idmint's yoyo migrations.

What is installed is what ``idmint.version()`` says (each migration sets it in the same
transaction as its DDL); yoyo's ``_yoyo_migration`` table is only the record of it. So:

- nothing pending (the database's version is the newest): return at once, without yoyo,
  its tables or its lock, for any role that can use the schema;
- something to do: check the role's privileges first (a role that cannot migrate would
  otherwise retry yoyo's lock row for minutes), then apply under yoyo's lock;
- installed with plain SQL (``idmint sql | psql``, alembic, Django ``RunSQL``): yoyo has no
  record of it, so record the installed migrations as applied (adopt) instead of replaying
  them; a version this package does not know, or records that contradict the version, are
  refused with a message saying what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations
from yoyo.migrations import default_migration_table

from ._resources import migrations_dir

# Defined in errors (exported as idmint.MigrationError ...), kept importable from here.
from .errors import DataCounts as DataCounts
from .errors import DataLossRefused as DataLossRefused
from .errors import InvalidArgumentError, raise_translated
from .errors import MigrationError as MigrationError

LOCK_TIMEOUT_S = 120

# yoyo's bookkeeping tables (created in the connection's current schema) and what it does
# with each: SELECT to read, INSERT/DELETE to lock, record, unrecord and log.
_YOYO_TABLES: dict[str, tuple[str, ...]] = {
    "yoyo_lock": ("SELECT", "INSERT", "DELETE"),
    default_migration_table: ("SELECT", "INSERT", "DELETE"),
    "_yoyo_log": ("INSERT",),
    "_yoyo_version": ("SELECT",),
}

_HOW_TO_ROLL_BACK = (
    "run `idmint rollback` as the owner of schema idmint, "
    "or have a DBA run `idmint sql --rollback | psql -1 -f -`"
)
_HOW_TO_INSTALL = (
    "run `idmint migrate` as the database owner (or a role that owns schema idmint), "
    "or have a DBA run `idmint sql | psql -1 -f -`"
)


@dataclass(frozen=True)
class MigrationStatus:
    """One migration: ``applied`` (the database's version includes it) and when yoyo
    recorded it (``recorded`` False: not recorded, e.g. installed with plain SQL; None:
    this role cannot read yoyo's records)."""

    id: str
    applied: bool
    recorded: bool | None
    recorded_at: datetime | None


@dataclass(frozen=True)
class Outcome:
    applied: list[str]
    adopted: list[str]


# -- the migration files -------------------------------------------------------------------------


def migration_ids() -> list[str]:
    """The packaged migrations' ids, oldest first."""
    return [m.id for m in read_migrations(str(migrations_dir()))]


def migration_sql(*, rollback: bool = False) -> str:
    """The migrations' SQL, to run in one transaction (``psql -1 -f``, alembic ``op.execute``,
    Django ``RunSQL``): every migration in order, or with ``rollback`` every rollback
    script newest first. It does not touch yoyo's records: ``idmint migrate`` adopts such
    an install later."""
    folder = migrations_dir()
    ids = migration_ids()
    parts = []
    for mid in reversed(ids) if rollback else ids:
        text = (folder / (f"{mid}.rollback.sql" if rollback else f"{mid}.sql")).read_text()
        what = "rollback" if rollback else "migration"
        parts.append(f"-- ==== idmint {what} {mid} ====\n{text.rstrip()}\n")
    return "\n".join(parts)


# -- what the database holds ------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    user: str
    database: str
    yoyo_schema: str | None  # the connection's current schema, where yoyo keeps its tables
    can_create_in_database: bool
    can_create_in_yoyo_schema: bool
    schema_exists: bool
    schema_owner: str | None
    owns_schema: bool
    schema_usage: bool
    version: str | None  # idmint.version(); None: no idmint schema
    version_readable: bool  # False: the schema exists but this role cannot read its version
    has_version_function: bool  # idmint.version() exists (whether or not it may call it)
    yoyo_missing: list[str]  # yoyo's privileges this role lacks (empty: it can run yoyo)
    recorded: dict[str, datetime | None] | None  # our ids yoyo records; None: unreadable


def _inspect(conn: psycopg.Connection[Any], ids: Sequence[str]) -> _State:
    row = conn.execute(
        """
        SELECT current_user::text, current_database()::text, current_schema()::text,
               has_database_privilege(current_database(), 'CREATE'),
               coalesce(has_schema_privilege(current_schema(), 'CREATE'), false),
               n.oid IS NOT NULL, n.nspowner::regrole::text,
               coalesce(pg_has_role(n.nspowner, 'USAGE'), false),
               coalesce(has_schema_privilege(n.oid, 'USAGE'), false)
        FROM (VALUES (1)) AS v (one)
        LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = 'idmint'
        """
    ).fetchone()
    assert row is not None
    (user, database, yoyo_schema, create_db, create_yoyo, exists, owner, owns, usage) = row
    version: str | None = None
    has_fn = False
    if exists and usage:
        fn = conn.execute(
            "SELECT p IS NOT NULL, coalesce(has_function_privilege(p, 'EXECUTE'), false)"
            " FROM to_regprocedure('idmint.version()') AS p"
        ).fetchone()
        assert fn is not None
        has_fn = bool(fn[0])
        if fn[0] and fn[1]:
            version = conn.execute("SELECT idmint.version()").fetchone()[0]  # type: ignore[index]

    missing: list[str] = []
    recorded: dict[str, datetime | None] | None = None
    if yoyo_schema is None:
        missing.append("a schema to keep yoyo's tables in (search_path has none it may use)")
    else:
        tables = conn.execute(
            """
            SELECT t.name, c.oid IS NOT NULL,
                   coalesce(has_table_privilege(c.oid, 'SELECT'), false),
                   coalesce(has_table_privilege(c.oid, 'INSERT'), false),
                   coalesce(has_table_privilege(c.oid, 'DELETE'), false)
            FROM unnest(%s::text[]) AS t (name)
            LEFT JOIN pg_catalog.pg_class c
              ON c.relname = t.name AND c.relnamespace = to_regnamespace(current_schema())
            """,
            (list(_YOYO_TABLES),),
        ).fetchall()
        absent = []
        for name, present, *privs in tables:
            if not present:
                absent.append(name)
                continue
            held = dict(zip(("SELECT", "INSERT", "DELETE"), privs, strict=True))
            lacking = [p for p in _YOYO_TABLES[name] if not held[p]]
            if lacking:
                missing.append(f"{', '.join(lacking)} on table {yoyo_schema}.{name}")
            if name == default_migration_table and held["SELECT"]:
                recorded = _records(conn, yoyo_schema, ids)
        if absent and not create_yoyo:
            missing.append(
                f"CREATE on schema {yoyo_schema} (for yoyo's tables {', '.join(absent)})"
            )
        if default_migration_table in absent:
            recorded = {}
    return _State(
        user=user,
        database=database,
        yoyo_schema=yoyo_schema,
        can_create_in_database=create_db,
        can_create_in_yoyo_schema=create_yoyo,
        schema_exists=exists,
        schema_owner=owner,
        owns_schema=owns,
        schema_usage=usage,
        version=version,
        version_readable=not exists or version is not None,
        has_version_function=has_fn,
        yoyo_missing=missing,
        recorded=recorded,
    )


def _records(
    conn: psycopg.Connection[Any], schema: str, ids: Sequence[str]
) -> dict[str, datetime | None]:
    from yoyo.migrations import get_migration_hash

    by_hash = {get_migration_hash(i): i for i in ids}
    rows = conn.execute(
        sql.SQL("SELECT migration_hash, applied_at_utc FROM {}").format(
            sql.Identifier(schema, default_migration_table)
        )
    ).fetchall()
    return {by_hash[h]: at for h, at in rows if h in by_hash}


def _mismatch(message: str, hint: str) -> MigrationError:
    return MigrationError(message, sqlstate="55000", hint=hint)


def _installed(st: _State, ids: Sequence[str]) -> list[str]:
    """The migrations the database holds, by its idmint.version(); refuses what does not fit."""
    if not st.schema_exists:
        return []
    if not st.version_readable:
        if not st.schema_usage or st.has_version_function:
            lacks = "EXECUTE on idmint.version()" if st.schema_usage else "USAGE on schema idmint"
            raise MigrationError(
                f"role {st.user} cannot read idmint's version: it lacks {lacks}",
                sqlstate="42501",
                hint="grant idmint_user to it to use idmint; " + _HOW_TO_INSTALL,
            )
        raise _mismatch(
            "schema idmint exists but has no idmint.version(): it was not installed by this"
            " idmint's migrations",
            "rename or drop that schema (DROP SCHEMA idmint CASCADE drops its data), then"
            " run `idmint migrate`",
        )
    assert st.version is not None
    if st.version not in ids:
        newer = st.version > ids[-1]
        raise _mismatch(
            f"this database has idmint version {st.version}, which this idmint package does"
            f" not know (its newest migration is {ids[-1]})",
            "upgrade the idmint package (pip install -U idmint)"
            if newer
            else "install the idmint package that made this database",
        )
    return list(ids[: ids.index(st.version) + 1])


def _plan(st: _State, ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """(to adopt, to apply), or MigrationError when yoyo's records contradict the version."""
    installed = _installed(st, ids)
    pending = list(ids[len(installed) :])
    if st.recorded is None:  # cannot read the records: the version alone decides
        return [], pending
    recorded = [i for i in ids if i in st.recorded]
    if recorded == installed[: len(recorded)]:
        # Yoyo records a prefix of what is installed: the rest was installed with plain SQL
        # (or the record was lost between yoyo's apply and its record): adopt it.
        return installed[len(recorded) :], pending
    extra = [i for i in recorded if i not in installed]
    if extra and not installed:
        raise _mismatch(
            f"yoyo records {', '.join(extra)} as applied, but idmint is not installed in"
            f" database {st.database} (was schema idmint dropped by hand?)",
            f"clear the stale records with `idmint rollback --steps {len(extra)} --yes`"
            " (idmint is gone already), then run `idmint migrate`",
        )
    raise _mismatch(
        f"yoyo's records ({', '.join(recorded)}) do not match the installed idmint version"
        f" {st.version}",
        "compare `idmint migrations` with the database; fix yoyo's records with"
        " `yoyo mark`/`yoyo unmark` before migrating",
    )


def _require(st: _State, *, create: bool, change: bool, action: str = "migrate") -> None:
    """Raise MigrationError (42501) naming every privilege the role lacks to run yoyo and
    to ``create`` schema idmint (when missing) or ``change`` it (when present). Checked
    before yoyo's lock, which a role that cannot write it would retry for minutes."""
    missing = list(st.yoyo_missing)
    if create or change:
        if create and not st.schema_exists and not st.can_create_in_database:
            missing.insert(0, f"CREATE on database {st.database} (to create schema idmint)")
        elif change and st.schema_exists and not st.owns_schema:
            missing.insert(0, f"ownership of schema idmint (owned by {st.schema_owner})")
    if missing:
        raise MigrationError(
            f"role {st.user} cannot {action} idmint: it lacks {'; '.join(missing)}",
            sqlstate="42501",
            hint=_HOW_TO_INSTALL if action == "migrate" else _HOW_TO_ROLL_BACK,
        )


def _require_roles(conn: psycopg.Connection[Any]) -> None:
    """Raise ID003 with the CREATE ROLE statements when idmint's roles are missing and the
    role may not create them: the same refusal as sql/00_schema.sql, before yoyo creates
    its own tables, so nothing at all is left behind."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_catalog.pg_roles"
        "        WHERE rolname IN ('idmint_user', 'idmint_admin')) = 2"
        "    OR rolcreaterole OR rolsuper, current_user"
        " FROM pg_catalog.pg_roles WHERE rolname = current_user"
    ).fetchone()
    if row is None or row[0]:
        return
    raise InvalidArgumentError(
        f"idmint needs the roles idmint_user and idmint_admin, and role {row[1]} may not"
        " create them",
        sqlstate="ID003",
        hint="a DBA creates them once per cluster: CREATE ROLE idmint_user NOLOGIN;"
        " CREATE ROLE idmint_admin NOLOGIN IN ROLE idmint_user;",
    )


# -- commands -------------------------------------------------------------------------------------


def yoyo_url(dsn: str) -> str:
    """Turn a libpq DSN (URL or key=value) into yoyo's postgresql+psycopg:// URL."""
    if "://" not in dsn:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        user = quote(str(info.get("user", "")), safe="")
        password = info.get("password")
        auth = user + (":" + quote(str(password), safe="") if password else "")
        host = str(info.get("host", ""))
        hostpart = host if host and not host.startswith("/") else ""
        port = info.get("port")
        netloc = (auth + "@" if auth else "") + hostpart + (f":{port}" if port else "")
        query = f"host={quote(host)}" if host.startswith("/") else ""
        return urlunsplit(
            ("postgresql+psycopg", netloc, "/" + str(info.get("dbname", "")), query, "")
        )
    parts = urlsplit(dsn)
    return urlunsplit(("postgresql+psycopg", *parts[1:]))


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, prepare_threshold=None)


def migrate_outcome(dsn: str) -> Outcome:
    """Adopt a plain-SQL install and apply what is pending; see :func:`migrate`."""
    migrations = read_migrations(str(migrations_dir()))
    ids = [m.id for m in migrations]
    with _connect(dsn) as conn:
        st = _inspect(conn, ids)
        adopt, pending = _plan(st, ids)
        if not adopt and not pending:
            return Outcome([], [])
        _require(st, create=bool(pending), change=bool(pending))
        if pending:
            _require_roles(conn)
    backend = get_backend(yoyo_url(dsn))
    try:
        with backend.lock(timeout=LOCK_TIMEOUT_S):
            # Again under the lock: another run may have migrated meanwhile.
            st = _inspect(backend.connection, ids)
            adopt, _ = _plan(st, ids)
            if adopt:
                backend.mark_migrations([m for m in migrations if m.id in adopt])
            todo = backend.to_apply(migrations)
            try:
                backend.apply_migrations(todo)
            except psycopg.Error as exc:
                # idmint's own refusals (ID003: roles missing) arrive as IdmintErrors.
                raise_translated(exc)
            return Outcome([m.id for m in todo], adopt)
    finally:
        backend.connection.close()


def migrate(dsn: str) -> list[str]:
    """Apply every pending migration; returns the ids applied (empty when up to date).

    Returns at once when the database's ``idmint.version()`` is the newest (any role that
    can use idmint may call it). Otherwise checks the role's privileges before taking
    yoyo's lock and raises :class:`MigrationError` (42501) naming what it lacks. An install
    made with plain SQL is recorded as applied (adopted), not replayed."""
    return migrate_outcome(dsn).applied


def migrations_status(dsn: str) -> tuple[str | None, list[MigrationStatus]]:
    """The installed version (None: idmint is not installed) and every migration's state."""
    ids = migration_ids()
    with _connect(dsn) as conn:
        st = _inspect(conn, ids)
    installed = _installed(st, ids)
    rows = []
    for mid in ids:
        rec = st.recorded
        rows.append(
            MigrationStatus(
                id=mid,
                applied=mid in installed,
                recorded=None if rec is None else mid in rec,
                recorded_at=None if rec is None else rec.get(mid),
            )
        )
    return st.version, rows


def _data_counts(conn: psycopg.Connection[Any]) -> DataCounts:
    if conn.execute("SELECT to_regnamespace('idmint') IS NULL").fetchone() == (True,):
        return DataCounts(0, 0, 0)
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM idmint.fleet_capacity),
               (SELECT coalesce(sum(assigned + reserved), 0) FROM idmint.fleet_capacity),
               (SELECT coalesce(sum(issued), 0) FROM idmint.entity_capacity)
        """
    ).fetchone()
    assert row is not None
    return DataCounts(*(int(v) for v in row))


def _rollback_targets(st: _State, ids: Sequence[str], steps: int) -> list[str]:
    if st.recorded is None:
        return []
    return [i for i in reversed(ids) if i in st.recorded][:steps]


def rollback_plan(dsn: str, steps: int = 1) -> tuple[list[str], DataCounts]:
    """What ``rollback(dsn, steps)`` would roll back and the data it would drop (all zero
    when it drops nothing). Raises MigrationError when the role may not roll back."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    ids = migration_ids()
    with _connect(dsn) as conn:
        st = _inspect(conn, ids)
        _require(st, create=False, change=True, action="roll back")
        targets = _rollback_targets(st, ids, steps)
        return targets, _data_counts(conn) if targets else DataCounts(0, 0, 0)


def rollback(dsn: str, steps: int = 1, *, allow_data_loss: bool = True) -> list[str]:
    """Roll back the newest ``steps`` applied migrations; returns the ids rolled back.

    Rolling back 0001 drops schema idmint with every fleet, id and number. With
    ``allow_data_loss=False`` it raises :class:`DataLossRefused` instead when idmint holds
    any fleet, driver id or entity number (checked under yoyo's lock)."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    migrations = read_migrations(str(migrations_dir()))
    ids = [m.id for m in migrations]
    with _connect(dsn) as conn:
        _require(_inspect(conn, ids), create=False, change=True, action="roll back")
    backend = get_backend(yoyo_url(dsn))
    try:
        with backend.lock(timeout=LOCK_TIMEOUT_S):
            chosen = backend.to_rollback(migrations)[:steps]
            if chosen and not allow_data_loss:
                counts = _data_counts(backend.connection)
                if counts:
                    raise DataLossRefused(counts, [m.id for m in chosen])
            backend.rollback_migrations(chosen)
            return [m.id for m in chosen]
    finally:
        backend.connection.close()
