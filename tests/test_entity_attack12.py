"""Adversarial review 12 (PostgreSQL concurrency and security) of two commits on top of
2eb68d5: the shard and card picks re-raise SERIALIZABLE's read/write-dependency 40001
(DETAIL "Reason code: ...") instead of passing over every candidate, and
assign_entity_number() does its table and column checks inline.

One finding, not caused by these commits (the same on 2eb68d5), fixed since (the waiting
phase first locks the shards nobody holds with SKIP LOCKED, so that one counted into after
the snapshot raises 40001 before any wait):
`test_snapshot_issuer_never_waits_for_an_open_issuer_while_free_numbers_are_unheld`.
Everything else below passed on the reviewed branch: each test states what it would catch."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import psycopg
import pytest

from tests.util import check_exact, entity_rows, issued, only_free, scalar

WAITING_PHASE = "ORDER BY x.shard FOR NO KEY UPDATE"


def _describe(e: psycopg.Error) -> str:
    context = str(e.diag.context or "")
    waiting = WAITING_PHASE in context and "_issue_entity_numbers" in context
    return f"{e.sqlstate}: {e.diag.message_primary} | {e.diag.message_detail} | waiting phase: {waiting}"


# --- change 1: the re-raise of SERIALIZABLE's own 40001 ----------------------------------


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_snapshot_issuer_never_waits_for_an_open_issuer_while_free_numbers_are_unheld(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection], level: str
) -> None:
    """FOUND, fixed (CONTRACT section 4, 0.2: "issuers never wait for each other ... A call may
    wait only when the free numbers not held by open transactions are fewer than it asks
    for"). Not caused by the two reviewed commits: the same with the migration of 2eb68d5
    (run by hand on a scratch server, both levels).

    Type 7 has free numbers in two shards only, 10 and 20 (3 000 each, no decks; all else
    issued and counted, white-box set-up as the engine leaves it). A opens a REPEATABLE
    READ / SERIALIZABLE transaction (snapshot taken). B, still open, takes shard 10
    (one number). T takes shard 20 (one number) and commits: 2 999 free numbers are now
    held by no open transaction. A asks for ONE number. Its picks pass over shard 20
    (counted into after its snapshot: 40001 "concurrent update") and skip shard 10 (held),
    so it reaches the waiting phase, which locks every unheld shard in shard order without
    SKIP LOCKED and WAITS FOR B on shard 10's row (pg_stat_activity: Lock/transactionid,
    blocked by B); when B ends, A gets 40001 from the waiting phase anyway. With
    lock_timeout = 1 s here: 55P03 from the waiting phase. Allowed: success, or 40001 /
    40P01 without waiting for B (DESIGN's "Known limits (v2)" says such a call raises
    40001 there, not that it waits for open issuers first)."""
    only_free(db, 7, {10: (3000, False), 20: (3000, False)})
    a, b, t = connect(), connect(), connect()
    for _ in range(40):
        a.execute(f"BEGIN ISOLATION LEVEL {level}")
        a.execute("SELECT 1")  # the snapshot
        b.execute("BEGIN")
        b.execute("SELECT idmint.gen_entity_numbers(7, 1)")
        if str(scalar(b, "SELECT current_setting('idmint.entity_7')")).startswith("{{10,"):
            break
        b.execute("ROLLBACK")
        a.execute("ROLLBACK")
    else:
        raise AssertionError("B never took shard 10")
    t.execute("SELECT idmint.gen_entity_numbers(7, 1)")  # autocommit: takes shard 20, commits
    a.execute("SET LOCAL lock_timeout = '1s'")
    try:
        a.execute("SELECT idmint.gen_entity_numbers(7, 1)").fetchall()
        outcome = "ok"
    except psycopg.Error as e:
        outcome = _describe(e)
    b.execute("COMMIT")
    a.execute("ROLLBACK")
    assert outcome == "ok" or (
        outcome.startswith(("40001", "40P01")) and "waiting phase: False" in outcome
    ), outcome


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_dependency_failure_comes_from_the_pick_not_from_a_wait(
    connect: Callable[..., psycopg.Connection], level: str
) -> None:
    """Change 1, a transaction that met a read/write dependency at ~0 % fill. R (open)
    issued an order; W read entity_capacity (SELECT granted to idmint_user: it reads every
    shard row); T2 issued a quote and committed. W then asks for one order.
    SERIALIZABLE: 40001 with DETAIL "Reason code: ..." (documented), raised by the pick, not
    by the waiting phase and without waiting for R (on 2eb68d5, run by hand, W waited for
    R in the waiting phase: 57014 after a cancel; here lock_timeout makes that 55P03).
    REPEATABLE READ (no SSI): the same steps succeed and commit, exactly counted."""
    r, w, t2, x = connect(), connect(), connect(), connect()
    begin = f"BEGIN ISOLATION LEVEL {level}"
    r.execute(begin)
    r.execute("SELECT idmint.gen_entity_numbers('order', 1)")
    w.execute(begin)
    w.execute("SELECT count(*) FROM idmint.entity_capacity").fetchall()
    t2.execute(begin)
    t2.execute("SELECT idmint.gen_entity_numbers('quote', 1)")
    t2.execute("COMMIT")
    w.execute("SET LOCAL lock_timeout = '2s'")
    try:
        got = [row[0] for row in w.execute("SELECT idmint.gen_entity_numbers('order', 1)")]
        w.execute("COMMIT")
        outcome = "ok"
    except psycopg.Error as e:
        outcome = _describe(e)
        got = []
        w.execute("ROLLBACK")
    with contextlib.suppress(psycopg.Error):  # SERIALIZABLE: R may fail at commit (documented)
        r.execute("COMMIT")
    if level == "REPEATABLE READ":
        assert outcome == "ok" and len(got) == 1
    else:
        assert outcome.startswith("40001") and "| Reason code:" in outcome, outcome
        assert "waiting phase: False" in outcome, outcome
    assert entity_rows(x, 4) == issued(x, 4)
    assert check_exact(x, 4) == [] and check_exact(x, 5) == []


def test_repeatable_read_passes_over_concurrent_updates_without_reason_code(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection]
) -> None:
    """Change 1 must not touch REPEATABLE READ (no SSI, so no "Reason code" DETAIL): a
    REPEATABLE READ issuer whose snapshot predates commits into 150 of the type's free
    shards still takes one of the others and commits (it would fail with 40001 if the new
    check re-raised the "concurrent update" failure of the picks)."""
    a, t, x = connect(), connect(), connect()
    a.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    a.execute("SELECT 1")
    # 150 shards counted into after A's snapshot (white-box: as commits of other issuers).
    db.execute("UPDATE idmint.entity_shards SET issued = issued WHERE prefix = 4 AND shard < 150")
    t.execute("SELECT idmint.gen_entity_numbers('order', 1)")
    got = [row[0] for row in a.execute("SELECT idmint.gen_entity_numbers('order', 3)")]
    a.execute("COMMIT")
    assert len(got) == 3
    assert entity_rows(x, 4) == issued(x, 4) == 4
    assert check_exact(x, 4) == []


def test_high_fill_concurrent_issuers_at_every_level_stay_exact(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection]
) -> None:
    """High fill with decks and sparse shards (type 8: 20 deck shards and 20 sparse ones,
    400 free each, 16 000 free), four sessions (READ COMMITTED, REPEATABLE READ,
    SERIALIZABLE, SERIALIZABLE) running short transactions of 1..40 numbers, some rolled
    back. Errors allowed: 40001 / 40P01 (never ID005 with this many free). Afterwards: the
    committed rows are exactly the numbers the committed calls returned, none twice, and
    the counts exact; then the rest is drained exactly and one more is ID005."""
    free = {s: (400, s < 20) for s in range(40)}
    only_free(db, 8, free)
    start = issued(db, 8)
    levels = ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE", "SERIALIZABLE"]
    conns = [connect() for _ in levels]
    committed: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run(conn: psycopg.Connection, level: str, seed: int) -> None:
        for i in range(30):
            n = 1 + (seed * 7 + i * 13) % 40
            conn.execute(f"BEGIN ISOLATION LEVEL {level}")
            try:
                got = [
                    row[0] for row in conn.execute("SELECT idmint.gen_entity_numbers(8, %s)", [n])
                ]
                if i % 5 == 4:
                    conn.execute("ROLLBACK")
                    continue
                conn.execute("COMMIT")
                with lock:
                    committed.extend(got)
            except psycopg.Error as e:
                with lock:
                    errors.append(_describe(e))
                conn.execute("ROLLBACK")

    threads = [
        threading.Thread(target=run, args=(c, lv, k))
        for k, (c, lv) in enumerate(zip(conns, levels, strict=True))
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert not any(th.is_alive() for th in threads)
    assert [e for e in errors if not e.startswith(("40001", "40P01"))] == []
    assert len(set(committed)) == len(committed)
    stored = {
        r[0]
        for r in db.execute(
            "SELECT number::text FROM idmint.entity_numbers WHERE number::text = ANY (%s)",
            [committed],
        )
    }
    assert stored == set(committed)
    assert issued(db, 8) == start + len(committed) == entity_rows(db, 8)
    assert check_exact(db, 8) == []
    rest = 1_000_000 - issued(db, 8)
    if rest > 0:
        assert len(db.execute("SELECT idmint.gen_entity_numbers(8, %s)", [rest]).fetchall()) == rest
    with pytest.raises(psycopg.Error) as info:
        db.execute("SELECT idmint.gen_entity_numbers(8, 1)")
    assert info.value.sqlstate == "ID005"
    assert entity_rows(db, 8) == issued(db, 8) == 1_000_000
    assert check_exact(db, 8) == []


def test_serializable_read_only_and_deferrable(connect: Callable[..., psycopg.Connection]) -> None:
    """SERIALIZABLE READ ONLY DEFERRABLE cannot issue (25006, PostgreSQL's own: a read-only
    transaction writes nothing), the same before; SERIALIZABLE DEFERRABLE (not read only:
    DEFERRABLE does nothing then) issues and commits like SERIALIZABLE."""
    c, x = connect(), connect()
    c.execute("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE")
    with pytest.raises(psycopg.Error) as info:
        c.execute("SELECT idmint.gen_entity_numbers('order', 2)")
    assert info.value.sqlstate == "25006"
    c.execute("ROLLBACK")
    c.execute("BEGIN ISOLATION LEVEL SERIALIZABLE DEFERRABLE")
    assert len(c.execute("SELECT idmint.gen_entity_numbers('order', 2)").fetchall()) == 2
    c.execute("COMMIT")
    assert entity_rows(x, 4) == issued(x, 4) == 2


# --- change 2: assign_entity_number's inline checks ----------------------------------------

TRIGGER = (
    "CREATE TRIGGER g {when} ON {tbl} FOR EACH {level}"
    " EXECUTE FUNCTION idmint.assign_entity_number({args})"
)
BAD_DECL = "ID003: assign_entity_number() must be a BEFORE INSERT OR UPDATE OR DELETE row trigger"

# (name, setup, statements, expected outcome per statement). The outcomes were the same
# on 2eb68d5 (run by hand on a scratch server with its migration, as an idmint_user role).
TRIGGER_CASES = [
    (
        "statement_before",
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE",
            tbl="t",
            level="STATEMENT",
            args="'num', 'order'",
        ),
        ["INSERT INTO t (id) VALUES (1)", "UPDATE t SET id = 2", "DELETE FROM t"],
        [BAD_DECL, BAD_DECL, BAD_DECL],
    ),
    (
        "statement_after",
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(
            when="AFTER INSERT OR UPDATE OR DELETE",
            tbl="t",
            level="STATEMENT",
            args="'num', 'order'",
        ),
        ["INSERT INTO t (id) VALUES (1)", "DELETE FROM t"],
        [BAD_DECL, BAD_DECL],
    ),
    (
        "row_after",
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(
            when="AFTER INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'num', 'order'"
        ),
        ["INSERT INTO t (id) VALUES (1)"],
        [BAD_DECL],
    ),
    (
        "truncate",
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(when="BEFORE TRUNCATE", tbl="t", level="STATEMENT", args="'num', 'order'"),
        ["TRUNCATE t"],
        [BAD_DECL],
    ),
    (
        "no_arguments",
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args=""),
        ["INSERT INTO t (id) VALUES (1)"],
        ["ID003: assign_entity_number() takes 2 trigger arguments, got 0"],
    ),
    (
        "one_argument",
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'num'"
        ),
        ["INSERT INTO t (id) VALUES (1)"],
        ["ID003: assign_entity_number() takes 2 trigger arguments, got 1"],
    ),
    (
        "three_arguments",
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE",
            tbl="t",
            level="ROW",
            args="'num', 'order', 'x'",
        ),
        ["INSERT INTO t (id) VALUES (1)"],
        ["ID003: assign_entity_number() takes 2 trigger arguments, got 3"],
    ),
    (
        "no_such_column",
        "CREATE TABLE t (id int, num text); INSERT INTO t VALUES (1, NULL);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'nope', 'order'"
        ),
        ["INSERT INTO t (id) VALUES (2)", "UPDATE t SET id = 3", "DELETE FROM t"],
        ["ID003: assign_entity_number(): the table has no column 'nope'"] * 3,
    ),
    (
        "empty_column_name",
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'', 'order'"
        ),
        ["INSERT INTO t (id) VALUES (1)"],
        ["ID003: assign_entity_number(): the table has no column ''"],
    ),
    (
        "case_differs",
        'CREATE TABLE t (id int, "Num" text);'
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'num', 'order'"
        ),
        ["INSERT INTO t (id) VALUES (1)"],
        ["ID003: assign_entity_number(): the table has no column 'num'"],
    ),
    (
        "unknown_type",
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'num', 'nosuch'"
        ),
        ["INSERT INTO t (id) VALUES (1)"],
        ["ID008: unknown entity type 'nosuch'"],
    ),
    (
        "empty_type",
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'num', ''"
        ),
        ["INSERT INTO t (id) VALUES (1)"],
        ["ID003: entity must not be NULL or empty"],
    ),
    (
        "domain_column",
        "CREATE DOMAIN d7 AS text CHECK (VALUE ~ '^4'); CREATE TABLE t (id int, num d7);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'num', 'order'"
        ),
        ["INSERT INTO t (id) VALUES (1)", "INSERT INTO t VALUES (2, '4000000x')"],
        ["ok", "ID003: malformed entity number '4000000x'"],
    ),
    (
        "domain_rejects",
        "CREATE DOMAIN d7 AS text CHECK (VALUE ~ '^5'); CREATE TABLE t (id int, num d7);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'num', 'order'"
        ),
        ["INSERT INTO t (id) VALUES (1)"],
        ['23514: value for domain own.d7 violates check constraint "d7_check"'],
    ),
    (
        "view_instead_of",
        "CREATE TABLE b (id int, num text); CREATE VIEW t AS SELECT * FROM b;"
        + TRIGGER.format(
            when="INSTEAD OF INSERT OR UPDATE OR DELETE",
            tbl="t",
            level="ROW",
            args="'num', 'order'",
        ),
        ["INSERT INTO t (id) VALUES (1)"],
        [BAD_DECL],
    ),
    (
        "wrong_column_type",
        "CREATE TABLE t (id int, num int);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'id', 'order'"
        ),
        ["INSERT INTO t (id) VALUES (1)"],
        ["ID003: malformed entity number '1'"],
    ),
    (
        # The app's own pg_partition_root, ? and <> first on its search_path: the trigger
        # function pins pg_catalog, so they play no part (the check still raises).
        "shadowing_functions_and_operators",
        "CREATE FUNCTION own.pg_partition_root(regclass) RETURNS regclass LANGUAGE sql AS 'SELECT ''pg_class''::regclass';"
        "CREATE FUNCTION own.pg_partition_root(oid) RETURNS regclass LANGUAGE sql AS 'SELECT ''pg_class''::regclass';"
        "CREATE FUNCTION own.coalesce(regclass, regclass) RETURNS regclass LANGUAGE sql AS 'SELECT ''pg_class''::regclass';"
        "CREATE FUNCTION own.has(jsonb, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';"
        "CREATE OPERATOR own.? (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = own.has);"
        "CREATE FUNCTION own.ne(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT false';"
        "CREATE OPERATOR own.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = own.ne);"
        "CREATE FUNCTION own.dist(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT false';"
        "CREATE OPERATOR own.= (LEFTARG = text, RIGHTARG = text, FUNCTION = own.dist);"
        "CREATE TABLE t (id int, num text);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="t", level="ROW", args="'nope', 'order'"
        ),
        ["SET search_path = own, pg_catalog", "INSERT INTO t (id) VALUES (1)"],
        ["ok", "ID003: assign_entity_number(): the table has no column 'nope'"],
    ),
]


@pytest.mark.parametrize(
    "setup, statements, expected", [c[1:] for c in TRIGGER_CASES], ids=[c[0] for c in TRIGGER_CASES]
)
def test_trigger_declarations_and_arguments_as_an_app_role(
    app_connect: Callable[..., psycopg.Connection],
    setup: str,
    statements: list[str],
    expected: list[str],
) -> None:
    """Change 2, as a role with only idmint_user that owns its schema `own`: badly
    declared triggers (statement level, AFTER, TRUNCATE, INSTEAD OF on a view), wrong
    argument counts, missing / empty / differently cased columns, domains, and the app's
    own pg_partition_root, coalesce, ?, <> and = first on its search_path: each statement
    has the outcome it had on 2eb68d5 (never XX000 or an undocumented SQLSTATE)."""
    conn = app_connect()
    conn.execute("SET search_path = own")
    conn.execute(setup)
    outcomes = []
    for statement in statements:
        try:
            conn.execute(statement)
            outcomes.append("ok")
        except psycopg.Error as e:
            outcomes.append(f"{e.sqlstate}: {e.diag.message_primary}")
    assert outcomes == expected


def _bound(db: psycopg.Connection, numbers: list[str]) -> list[tuple[str, bool]]:
    return [
        (str(n), bool(b))
        for n, b in db.execute(
            "SELECT number::text, bound_at IS NOT NULL FROM idmint.entity_numbers"
            " WHERE number::text = ANY (%s) ORDER BY 1",
            [numbers],
        )
    ]


def test_partitions_inheritance_and_detach_bind_to_the_right_table(
    db: psycopg.Connection, app_connect: Callable[..., psycopg.Connection]
) -> None:
    """Change 2 computes the binding table inline (partition root, else the table). As an
    idmint_user role: a row moved between partitions keeps its number bound; a trigger on
    one partition only binds against the root, also after a move into a partition without
    the trigger; an inheritance child binds against itself (its parent's UPDATE and DELETE
    reach it); a detached partition binds against itself. After each commit: the numbers
    the stored rows carry are issued and bound, the deleted ones unbound, counts exact."""
    conn = app_connect()
    conn.execute("SET search_path = own")
    conn.execute(
        "CREATE TABLE p (id int, num text) PARTITION BY RANGE (id);"
        "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);"
        "CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="p", level="ROW", args="'num', 'order'"
        )
        + ";CREATE TABLE q (id int, num text) PARTITION BY RANGE (id);"
        "CREATE TABLE q1 PARTITION OF q FOR VALUES FROM (0) TO (10);"
        "CREATE TABLE q2 PARTITION OF q FOR VALUES FROM (10) TO (20);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="q1", level="ROW", args="'num', 'order'"
        )
        + ";CREATE TABLE i0 (id int, num text); CREATE TABLE i1 (extra int) INHERITS (i0);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="i1", level="ROW", args="'num', 'order'"
        )
        + ";CREATE TABLE d (id int, num text) PARTITION BY RANGE (id);"
        "CREATE TABLE d1 PARTITION OF d FOR VALUES FROM (0) TO (10);"
        + TRIGGER.format(
            when="BEFORE INSERT OR UPDATE OR DELETE", tbl="d1", level="ROW", args="'num', 'order'"
        )
    )
    conn.execute("INSERT INTO p (id) VALUES (1), (2); INSERT INTO q (id) VALUES (1), (2)")
    conn.execute("INSERT INTO i1 (id) VALUES (1), (2); INSERT INTO d (id) VALUES (1)")
    conn.execute("ALTER TABLE d DETACH PARTITION d1")
    conn.execute("INSERT INTO d1 (id) VALUES (2)")
    with conn.transaction():
        conn.execute("UPDATE p SET id = 15 WHERE id = 1")
        conn.execute("UPDATE q SET id = 15 WHERE id = 1")
        conn.execute("UPDATE i0 SET id = 5 WHERE id = 1")
        conn.execute("UPDATE d1 SET num = NULL WHERE id = 1")
    gone = [str(r[0]) for r in conn.execute("DELETE FROM p WHERE id = 2 RETURNING num").fetchall()]
    gone += [
        str(r[0]) for r in conn.execute("DELETE FROM i0 WHERE id = 2 RETURNING num").fetchall()
    ]
    kept = [
        str(r[0])
        for r in conn.execute(
            "SELECT num FROM p UNION ALL SELECT num FROM q UNION ALL SELECT num FROM i0"
            " UNION ALL SELECT num FROM d1"
        )
    ]
    assert len(kept) == 6 and all(k is not None and k != "None" for k in kept)
    assert _bound(db, kept) == [(k, True) for k in sorted(kept)]
    assert _bound(db, gone) == [(g, False) for g in sorted(gone)]
    assert entity_rows(db, 4) == issued(db, 4)
    assert check_exact(db, 4) == []
