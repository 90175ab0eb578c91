"""Security: pinned search_path, no shadowing, least privilege, injection, runaway sizes.

Complements tests/test_privileges.py (the driver-id surface as an idmint_user role) with
catalog-wide checks, shadowing attempts by the calling role, every text argument under
injection payloads, and n = 10^9.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from tests.util import raises_sqlstate, scalar

# Read-only internal helpers that invoker-rights code (views, triggers, backfill, the
# commit-time settler) needs; none of them writes (checked below: none is VOLATILE).
ADMIN_ONLY = {
    "idmint.reset_driver_sequence(uuid,integer)",
    "idmint.reset_driver_sequence(text,integer)",
    "idmint.add_entity_type(integer,text)",
    "idmint.schedule_cleanup(text)",
    "idmint.unschedule_cleanup()",
}
ALLOWED_HELPERS = {
    "idmint._entity_prefix(integer)",
    "idmint._entity_prefix(text)",
    "idmint._backfill_target(regclass,text)",
    "idmint._format_driver_id(integer,text)",
    "idmint._fleet_id(text)",
    "idmint._trigger_columns(text,text,text,jsonb,text[],integer)",
    "idmint._driver_id_unchanged(text,text,text,text)",
    "idmint._binding_table(oid)",
    "idmint._char_column(oid,text)",
    "idmint._pending_bindings(bigint)",
    "idmint._rows_exist(oid,text,bigint[],text[])",
}

PAYLOADS = [
    "'); DROP TABLE idmint.fleets; --",
    "x'; DELETE FROM idmint.driver_numbers; --",
    "' OR '1'='1",
    "AAA' --",
    "$$; DROP SCHEMA idmint CASCADE; $$",
    "%s %I %L %1$s",
    '"; TRUNCATE idmint.fleets; --',
    "\\'; SELECT pg_sleep(10); --",
    "1); SELECT idmint._issue(NULL, 1, NULL, 'x'); --",
    "DRV-001AAA'; UPDATE idmint.fleets SET last_number = 0; --",
    "1000001 OR 1=1",
    "part'; DROP TABLE idmint.entity_numbers; --",
    "\uff21\uff21\uff21",  # fullwidth AAA
    "aaa\u0301",
    " AAA",
    "x" * 10000,
]


def idmint_tables(db: psycopg.Connection, kinds: str = "r") -> list[str]:
    rows = db.execute(
        "SELECT c.oid::regclass::text FROM pg_class c"
        " WHERE c.relnamespace = 'idmint'::regnamespace AND c.relkind = ANY (%s) ORDER BY 1",
        [list(kinds)],
    ).fetchall()
    return [r[0] for r in rows]


# --- catalog checks -----------------------------------------------------------------------


def test_every_function_pins_a_safe_search_path(db: psycopg.Connection) -> None:
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, p.prosecdef,"
        " (SELECT c FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%%')"
        " FROM pg_proc p WHERE p.pronamespace = 'idmint'::regnamespace"
    ).fetchall()
    definers = [r for r in rows if r[1]]
    assert len(definers) >= 20, "expected the public SECURITY DEFINER functions"
    bad = []
    for name, _definer, setting in rows:
        path = [] if setting is None else [s.strip() for s in setting.split("=", 1)[1].split(",")]
        # pg_temp explicitly last; nothing a caller could create objects in.
        if (
            not path
            or path[-1] != "pg_temp"
            or not set(path) <= {"pg_catalog", "idmint", "pg_temp"}
        ):
            bad.append((name, setting))
    assert bad == []


def test_public_has_no_privilege_anywhere_in_idmint(db: psycopg.Connection) -> None:
    functions = db.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p,"
        " aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a"
        " WHERE p.pronamespace = 'idmint'::regnamespace AND a.grantee = 0"
    ).fetchall()
    relations = db.execute(
        "SELECT c.oid::regclass::text, a.privilege_type FROM pg_class c,"
        " aclexplode(coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's'"
        " ELSE 'r' END::\"char\", c.relowner))) a"
        " WHERE c.relnamespace = 'idmint'::regnamespace AND a.grantee = 0"
    ).fetchall()
    schema = db.execute(
        "SELECT a.privilege_type FROM pg_namespace n, aclexplode(n.nspacl) a"
        " WHERE n.nspname = 'idmint' AND a.grantee = 0"
    ).fetchall()
    assert (functions, relations, schema) == ([], [], [])


def test_idmint_user_holds_exactly_the_public_surface(db: psycopg.Connection) -> None:
    executable = {
        r[0]
        for r in db.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p"
            " WHERE p.pronamespace = 'idmint'::regnamespace"
            " AND has_function_privilege('idmint_user', p.oid, 'EXECUTE')"
        )
    }
    public = {
        r[0]
        for r in db.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p"
            " WHERE p.pronamespace = 'idmint'::regnamespace AND p.proname !~ '^_'"
        )
    }
    assert executable - public <= ALLOWED_HELPERS
    assert public - ADMIN_ONLY <= executable
    assert executable.isdisjoint(ADMIN_ONLY)
    for fn in ADMIN_ONLY:  # idmint_admin, a member of idmint_user, holds the rule changes
        assert scalar(db, "SELECT has_function_privilege('idmint_admin', %s, 'EXECUTE')", [fn])
    assert scalar(db, "SELECT pg_has_role('idmint_admin', 'idmint_user', 'MEMBER')")
    # No writer among them: tests/test_app_rights.py.
    relation_privileges = db.execute(
        "SELECT c.oid::regclass::text, c.relkind, a.privilege_type FROM pg_class c,"
        " aclexplode(c.relacl) a WHERE c.relnamespace = 'idmint'::regnamespace"
        " AND a.grantee = 'idmint_user'::regrole ORDER BY 1"
    ).fetchall()
    assert relation_privileges, "idmint_user reads the views"
    assert {(kind, priv) for _, kind, priv in relation_privileges} == {("v", "SELECT")}


# --- a role with only idmint_user ---------------------------------------------------------


def test_app_role_gets_42501_on_every_direct_write(
    db: psycopg.Connection, app: psycopg.Connection
) -> None:
    tables = idmint_tables(db)
    assert len(tables) >= 6
    for table in tables:
        first = scalar(
            db,
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND attidentity = '' AND attgenerated = '' AND NOT attisdropped"
            " ORDER BY attnum LIMIT 1",
            [table],
        )
        ident = sql.SQL(table)  # regclass text, already quoted
        col = sql.Identifier(str(first))
        for stmt in [
            sql.SQL("INSERT INTO {} DEFAULT VALUES").format(ident),
            sql.SQL("UPDATE {} SET {} = {}").format(ident, col, col),
            sql.SQL("DELETE FROM {}").format(ident),
            sql.SQL("TRUNCATE {}").format(ident),
            sql.SQL("SELECT * FROM {}").format(ident),
        ]:
            with raises_sqlstate("42501"):
                app.execute(stmt)
    for view in idmint_tables(db, "v"):
        # 42501, or 55000 for a view that is not updatable at all (checked first).
        with pytest.raises(psycopg.Error) as refused:
            app.execute(sql.SQL("DELETE FROM {}").format(sql.SQL(view)))
        assert refused.value.sqlstate in ("42501", "55000"), (view, refused.value)
    for seq in idmint_tables(db, "S"):
        with raises_sqlstate("42501"):
            app.execute("SELECT nextval(%s)", [seq])


def test_app_role_reads_every_column_of_every_public_view(
    db: psycopg.Connection, app: psycopg.Connection
) -> None:
    db.execute("SELECT idmint.next_driver_id('AAA'), idmint.reserve_driver_id('AAA', 'me')")
    views = idmint_tables(db, "v")
    assert "idmint.driver_id_ledger" in views
    for view in views:
        rows = app.execute(sql.SQL("SELECT * FROM {}").format(sql.SQL(view))).fetchall()
        assert view.endswith("_types") or view.endswith("_capacity") or len(rows) >= 2, view


def test_app_role_can_use_entity_numbers_capacity_and_triggers(
    app: psycopg.Connection,
) -> None:
    c = app
    assert len([r for r in c.execute("SELECT idmint.gen_entity_numbers('part', 3)")]) == 3
    one = str(scalar(c, "SELECT idmint.gen_entity_number(2)"))
    assert one.startswith("2") and len(one) == 7
    assert scalar(c, "SELECT idmint.claim_entity_number('1148215')") == "1148215"
    assert scalar(c, "SELECT idmint.is_valid_entity_number('1148215', 'part')") is True
    assert scalar(c, "SELECT count(*) FROM idmint.fleet_capacity WHERE code = 'AAA'") == 1
    assert scalar(c, "SELECT count(*) FROM idmint.entity_capacity") >= 5  # type: ignore[operator]
    c.execute(
        "CREATE TABLE app.parts (id int PRIMARY KEY, part_number varchar(7) UNIQUE);"
        "CREATE TRIGGER n BEFORE INSERT OR UPDATE ON app.parts FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('part_number', 'part');"
        "CREATE TABLE app.drivers (id int PRIMARY KEY, fleet text, driver_id text);"
        "CREATE TRIGGER d BEFORE INSERT OR UPDATE ON app.drivers FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    c.execute("INSERT INTO app.parts (id) VALUES (1)")
    c.execute("INSERT INTO app.drivers (id, fleet) VALUES (1, 'AAA')")
    assert scalar(c, "SELECT driver_id FROM app.drivers") == "DRV-001AAA"
    c.execute("ALTER TABLE app.parts DISABLE TRIGGER n")
    c.execute("INSERT INTO app.parts (id) SELECT g FROM generate_series(2, 5) g")
    assert (
        scalar(c, "SELECT idmint.backfill_entity_numbers('app.parts', 'part_number', 'part')") == 4
    )
    assert scalar(c, "SELECT count(DISTINCT part_number) FROM app.parts") == 5


# --- shadowing by the calling role --------------------------------------------------------

SHADOWS = """
CREATE TABLE app.hits (what text);
CREATE TEMP TABLE fleets (fleet_id uuid, code text, name text, max_drivers int,
                          last_number int, assigned int, unassigned int);
INSERT INTO pg_temp.fleets VALUES (gen_random_uuid(), 'AAA', 'evil', 999, 500, 0, 0);
CREATE TEMP TABLE driver_numbers (fleet_id uuid, number int, state text);
CREATE TEMP TABLE entity_numbers (number int);
CREATE TEMP TABLE error_codes (sqlstate text, name text, meaning text);
INSERT INTO pg_temp.error_codes VALUES ('P0001', 'invalid_argument', 'evil');
CREATE FUNCTION app._fleet_id(fleet text) RETURNS uuid LANGUAGE sql
    AS $$ INSERT INTO app.hits VALUES ('_fleet_id') RETURNING NULL::uuid $$;
CREATE FUNCTION app._error(a text, b text, c text DEFAULT NULL, d text DEFAULT NULL)
    RETURNS void LANGUAGE sql AS $$ INSERT INTO app.hits VALUES ('_error') $$;
CREATE FUNCTION app._durable() RETURNS void LANGUAGE sql
    AS $$ INSERT INTO app.hits VALUES ('_durable') $$;
CREATE FUNCTION app._format_driver_id(n int, c text) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO app.hits VALUES ('_format_driver_id') RETURNING 'DRV-999EVL' $$;
CREATE FUNCTION app.upper(t text) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO app.hits VALUES ('upper') RETURNING 'ZZZ' $$;
CREATE FUNCTION app.lpad(t text, n int, f text) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO app.hits VALUES ('lpad') RETURNING '999' $$;
CREATE FUNCTION app.now() RETURNS timestamptz LANGUAGE sql
    AS $$ INSERT INTO app.hits VALUES ('now') RETURNING 'infinity'::timestamptz $$;
CREATE FUNCTION app.gen_random_uuid() RETURNS uuid LANGUAGE sql
    AS $$ INSERT INTO app.hits VALUES ('gen_random_uuid') RETURNING NULL::uuid $$;
CREATE FUNCTION app.current_setting(t text) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO app.hits VALUES ('current_setting') RETURNING 'off' $$;
CREATE FUNCTION app.evil_match(a text, b text) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO app.hits VALUES ('~*') RETURNING true $$;
CREATE OPERATOR app.~* (LEFTARG = text, RIGHTARG = text, FUNCTION = app.evil_match);
CREATE FUNCTION pg_temp.upper(t text) RETURNS text LANGUAGE sql AS $$ SELECT 'ZZZ' $$;
"""


@pytest.mark.parametrize("path", ["app, pg_temp, public", "pg_temp, app, pg_catalog"])
def test_objects_named_like_internals_change_nothing(
    db: psycopg.Connection, app: psycopg.Connection, path: str
) -> None:
    app.execute(SHADOWS)
    app.execute(sql.SQL("SET search_path = {}").format(sql.SQL(path)))
    c = app
    assert scalar(c, "SELECT idmint.next_driver_id('aaa')") == "DRV-001AAA"
    assert [r[0] for r in c.execute("SELECT idmint.next_driver_ids('AAA', 2)")] == [
        "DRV-002AAA",
        "DRV-003AAA",
    ]
    rid = scalar(c, "SELECT idmint.reserve_driver_id('AAA', 'me', '1 hour')")
    assert rid == "DRV-004AAA"
    assert scalar(c, "SELECT idmint.confirm_driver_id('drv-004aaa', 'me')") == "DRV-004AAA"
    assert scalar(c, "SELECT idmint.release_driver_id('DRV-004AAA')") is False  # me's
    with raises_sqlstate("ID007"):
        c.execute("SELECT idmint.release_driver_id('DRV-004AAA', 'me')")
    assert scalar(c, "SELECT idmint.purge_expired_reservations()") == 0
    assert scalar(c, "SELECT (idmint.add_fleet('Shadow', 'SHD')).code") == "SHD"
    with raises_sqlstate("ID003"):
        c.execute("SELECT idmint.next_driver_id('not a fleet')")
    with raises_sqlstate("ID002"):
        c.execute("SELECT idmint.next_driver_id('ZZZ')")
    assert len(str(scalar(c, "SELECT idmint.gen_entity_number('part')"))) == 7
    assert scalar(c, "SELECT idmint.is_valid_driver_id('DRV-001AAA')") is True
    assert scalar(c, "SELECT count(*) FROM app.hits") == 0
    assert scalar(c, "SELECT count(*) FROM pg_temp.fleets") == 1
    assert scalar(c, "SELECT count(*) FROM pg_temp.driver_numbers") == 0
    assert db.execute(
        "SELECT driver_id, status FROM idmint.driver_id_ledger WHERE fleet_code = 'AAA'"
    ).fetchall() == [
        ("DRV-001AAA", "assigned"),
        ("DRV-002AAA", "assigned"),
        ("DRV-003AAA", "assigned"),
        ("DRV-004AAA", "assigned"),
    ]


# --- injection through every text argument ------------------------------------------------


def catalog_fingerprint(db: psycopg.Connection) -> list[tuple[object, ...]]:
    return db.execute(
        "SELECT n.nspname, c.relname, c.relkind FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('idmint', 'public', 'app') ORDER BY 1, 2"
    ).fetchall()


def call(conn: psycopg.Connection, query: str, params: list[object]) -> object:
    """Run one call in its own transaction: its result, or the SQLSTATE of its error.
    Only idmint's own error class is acceptable."""
    try:
        with conn.transaction():
            rows = conn.execute(query, params).fetchall()
    except psycopg.Error as e:
        assert e.sqlstate is not None and e.sqlstate.startswith("ID"), (query, params[:2], e)
        return e.sqlstate
    return [r[0] for r in rows]


@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_injection_through_text_arguments_changes_nothing(
    db: psycopg.Connection, app: psycopg.Connection, payload: str
) -> None:
    app.execute("CREATE TABLE app.canary (k int); INSERT INTO app.canary VALUES (1)")
    before = catalog_fingerprint(db)
    fleets_before = db.execute("SELECT fleet_id, code, last_number FROM idmint.fleets").fetchall()
    c = app
    c.autocommit = False
    # Arguments that name or identify something: rejected or not found, never executed.
    for query in [
        "SELECT idmint.next_driver_id(%s)",
        "SELECT idmint.next_driver_ids(%s, 1)",
        "SELECT idmint.reserve_driver_id(%s)",
        "SELECT idmint.reset_driver_sequence(%s)",
        "SELECT (idmint.add_fleet('x', %s)).code",
        "SELECT idmint.confirm_driver_id(%s)",
        "SELECT idmint.release_driver_id(%s)",
        "SELECT number FROM idmint.parse_driver_id(%s)",
        "SELECT idmint.is_valid_driver_id(%s)",
        "SELECT idmint.gen_entity_numbers(%s, 1)",
        "SELECT idmint.gen_entity_number(%s)",
        "SELECT idmint.claim_entity_number(%s)",
        "SELECT idmint.claim_entity_number('1148215', %s)",
        "SELECT idmint.is_valid_entity_number(%s)",
        "SELECT idmint.is_valid_entity_number('1148215', %s)",
        "SELECT (idmint.add_entity_type(9, %s)).name",
        "SELECT idmint.backfill_entity_numbers('app.canary', %s, 'part')",
        "SELECT idmint.backfill_entity_numbers('app.canary', 'k', %s)",
    ]:
        got = call(c, query, [payload])
        if "is_valid" in query:
            assert got == [False], (query, got)
        elif "add_entity_type" in query:
            assert got in ("ID003", "ID004", [payload]), (query, got)
            if got == [payload]:
                db.execute("DELETE FROM idmint.entity_ranges WHERE prefix = 9")
        else:
            assert isinstance(got, str), (query, got)  # an ID-class error
    # Arguments that are stored: kept verbatim, as data.
    name_got = call(c, "SELECT (idmint.add_fleet(%s)).name", [payload])
    assert name_got in ([payload], "ID003"), name_got  # ID003 only for names over 200 chars
    # A request_key over 1000 bytes is refused (ID003) before anything is written.
    keyed = ["DRV-001AAA"] if len(payload.encode()) <= 1000 else "ID003"
    assert call(c, "SELECT idmint.next_driver_id('AAA', %s)", [payload]) == keyed
    assert call(c, "SELECT idmint.next_driver_id('AAA', %s)", [payload]) == keyed
    if keyed == "ID003":
        assert call(c, "SELECT idmint.next_driver_id('AAA')", []) == ["DRV-001AAA"]
    rid = call(c, "SELECT idmint.reserve_driver_id('AAA', %s)", [payload])
    assert rid == ["DRV-002AAA"]
    c.autocommit = True
    stored = db.execute(
        "SELECT reserved_by FROM idmint.driver_id_ledger WHERE driver_id = 'DRV-002AAA'"
    ).fetchone()
    assert stored == (payload,)
    assert catalog_fingerprint(db) == before
    assert scalar(c, "SELECT count(*) FROM app.canary") == 1
    fleets_after = db.execute(
        "SELECT fleet_id, code, last_number FROM idmint.fleets WHERE code = 'AAA'"
    ).fetchall()
    assert next(f for f in fleets_before if f[1] == "AAA")[:2] == fleets_after[0][:2]
    assert fleets_after[0][2] == 2


def test_backfill_quotes_a_hostile_column_name(app: psycopg.Connection) -> None:
    col = 'n"; DROP TABLE app.victim; --'
    app.execute("CREATE TABLE app.victim (k int)")
    app.execute(sql.SQL("CREATE TABLE app.t (id int, {} text)").format(sql.Identifier(col)))
    app.execute("INSERT INTO app.t (id) VALUES (1), (2)")
    assert scalar(app, "SELECT idmint.backfill_entity_numbers('app.t', %s, 'part')", [col]) == 2
    assert scalar(app, sql.SQL("SELECT count({}) FROM app.t").format(sql.Identifier(col))) == 2
    assert scalar(app, "SELECT count(*) FROM app.victim") == 0  # still there


def test_backfill_runs_with_the_callers_rights(
    db: psycopg.Connection, app: psycopg.Connection
) -> None:
    db.execute("CREATE TABLE public.not_yours (n text); INSERT INTO public.not_yours VALUES (NULL)")
    with raises_sqlstate("42501"):
        app.execute("SELECT idmint.backfill_entity_numbers('public.not_yours', 'n', 'part')")
    assert scalar(db, "SELECT count(n) FROM public.not_yours") == 0


# --- runaway sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "SELECT idmint.next_driver_ids('AAA', 1000000000)",
        "SELECT idmint.gen_entity_numbers('part', 1000000000)",
        "SELECT idmint.gen_entity_numbers(1, 1000000000)",
        "SELECT idmint.next_driver_ids('AAA', -1)",
        "SELECT idmint.gen_entity_numbers('part', 0)",
        "SELECT idmint.next_driver_ids('AAA', NULL)",
    ],
)
def test_huge_n_fails_fast_with_ID003(app: psycopg.Connection, query: str) -> None:
    # A server-side bound, not a client clock: a slow path would end in 57014 instead.
    app.execute("SET statement_timeout = '10s'")
    with raises_sqlstate("ID003"):
        app.execute(query)
