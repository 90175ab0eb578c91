"""Second adversarial review of the DEFAULT spares, on 18d36fe (the mark kept in
idmint.entity_mark against the session-local currval of idmint.entity_handouts, and the
binding of a spare given as a trigger value). Each test states a rule of CONTRACT
sections 1, 4 or 5 that a run of column DEFAULTs must keep as if each call had issued one
number.

Its one finding was not about the spares (the same before them): at SERIALIZABLE a
one-number DEFAULT at about 0 % fill reached the waiting phase and got 40001 there
(`test_concurrent_default_runs_never_reach_the_waiting_phase`). Fixed: the shard and card
picks re-raise SERIALIZABLE's read/write-dependency failure instead of passing over every
shard. The other attacks below (random sequences of DEFAULTs, nested
savepoints, ROLLBACK TO / RELEASE, exception blocks, DISCARD SEQUENCES, SET CONSTRAINTS ALL
IMMEDIATE, claims and trigger bindings of spares, upserts storing nothing, DELETE, UPDATE
to a spare, bulk calls, a second type, a deferred app trigger issuing at commit with its
own exception block; many transactions on one connection, as owner and as an app role
with only idmint_user; READ COMMITTED / REPEATABLE READ / SERIALIZABLE) were withstood.
The mark argument that they exercise: every mark written is above the mark in force
(setval to mark + 1, or to max(currval, mark) + 1 after DISCARD SEQUENCES), so a mark
that a rollback restores is below every value a later setval in the same subtransaction
tree gave currval, and a restored list never agrees with currval again.

The random-sequence check looks only at the lists a rollback restored: a number seen by the
rolled-back block that is in the list right after the rollback must never be handed out
(a first version flagged any seen number a later list held, and failed once in the full
suite: a batch drawn inside the block is freed by the rollback, so a later batch may draw
its numbers again by chance, which is allowed).

Left out as documented limits: numbers given as values by the app itself (read from the
settings) that a rolled-back claim or binding restores to the list come out next (the app
chose them); an upsert that stored nothing keeps its value from other rows of the same
transaction (ID004, docs/DESIGN.md, also without spares).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import psycopg
import pytest

from tests.util import check_exact, entity_rows, scalar, spares

ORDER = 4
QUOTE = 5

LATE_TRIGGER = """
CREATE FUNCTION late_rows() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO spare_rows SELECT FROM generate_series(1, 3);
    BEGIN
        INSERT INTO spare_rows SELECT FROM generate_series(1, 4);
        RAISE EXCEPTION 'late';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    INSERT INTO spare_rows SELECT FROM generate_series(1, 2);
    RETURN NULL;
END $f$;
CREATE CONSTRAINT TRIGGER late AFTER INSERT ON late_rows DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION late_rows();
"""

EXCEPTION_BLOCK = """
DO $$ DECLARE a text[] := '{}'; BEGIN
    BEGIN
        FOR i IN 1 .. %s LOOP a := a || idmint.gen_entity_number('order'); END LOOP;
        RAISE NOTICE '%%', array_to_string(a, ',');
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
END $$
"""


@pytest.fixture
def tables(db: psycopg.Connection) -> None:
    db.execute(
        "CREATE TABLE spare_rows (num varchar(7) PRIMARY KEY DEFAULT idmint.gen_entity_number('order'))"
    )
    db.execute(
        "CREATE TABLE quote_rows (num varchar(7) PRIMARY KEY DEFAULT idmint.gen_entity_number('quote'))"
    )
    db.execute("CREATE TABLE bound_rows (id serial PRIMARY KEY, num varchar(7))")
    db.execute(
        "CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON bound_rows FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('num', 'order')"
    )
    db.execute("CREATE TABLE late_rows (x int)")
    db.execute(LATE_TRIGGER)
    db.execute(
        "GRANT ALL ON spare_rows, quote_rows, bound_rows, bound_rows_id_seq, late_rows TO PUBLIC"
    )


def orphans(db: psycopg.Connection) -> set[int]:
    """Bound order numbers that no row of bound_rows carries (white-box)."""
    return {
        r[0]
        for r in db.execute(
            "SELECT e.number FROM idmint.entity_numbers e WHERE e.number / 1000000 = 4"
            " AND e.bound_at IS NOT NULL"
            " AND NOT EXISTS (SELECT FROM bound_rows b WHERE b.num = e.number::text)"
        )
    }


OPS = [
    "default", "default", "default", "savepoint", "savepoint", "rollback", "rollback",
    "release", "claim", "bind", "bind_null", "bulk", "quote", "discard", "immediate",
    "exception", "late", "upsert", "delete", "update",
]  # fmt: skip


def run_sequences(
    db: psycopg.Connection, conn: psycopg.Connection, seed: int, rounds: int, alone: bool = True
) -> list[object]:
    """Random transactions on one connection (session reuse). Returns what broke a rule:
    a number that a rolled-back savepoint or exception block handed out, and that the
    rollback put back into the list, handed out again; counts not exact after a commit; a
    stored number not issued or not bound, or one number in two rows; a bound number that no
    row carries (but those an UPDATE replaced: bound for ever); any error but 40001 / 40P01. Not `alone` (other
    sequences run at the same time): only the first and the last rule and the errors."""
    rng = random.Random(seed)
    notes: list[str] = []
    conn.add_notice_handler(lambda d: notes.extend(x for x in d.message_primary.split(",") if x))
    broken: list[object] = []
    replaced: set[int] = set()

    def q(query: str, params: object = None) -> list[tuple[object, ...]]:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []

    for r in range(rounds):
        before_orphans = orphans(db) if alone else set()
        level = rng.choice(["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
        q(f"BEGIN ISOLATION LEVEL {level}")
        log: list[object] = [level]
        stack: list[tuple[str, set[str]]] = []
        seen: set[str] = set()
        n_sp = 0

        restored: set[str] = set()  # seen numbers a rollback put back into the list

        def hand(
            nums: list[str],
            what: str,
            restored: set[str] = restored,
            stack: list[tuple[str, set[str]]] = stack,
            r: int = r,
            log: list[object] = log,
        ) -> None:
            for n in nums:
                if n in restored:
                    broken.append(("seen number handed out again", seed, r, n, what, list(log)))
                for s in stack:
                    s[1].add(n)

        failed = False
        try:
            q("INSERT INTO spare_rows SELECT FROM generate_series(1, %s)", [rng.randint(1, 30)])
            for _ in range(rng.randint(5, 40)):
                op = rng.choice(OPS)
                listed = set(spares(conn))
                restored &= listed  # claimed, bound or un-issued since: not in a list any more
                if op == "default":
                    nums = [
                        str(x[0])
                        for x in q(
                            "INSERT INTO spare_rows SELECT FROM generate_series(1, %s) RETURNING num",
                            [rng.randint(1, 5)],
                        )
                    ]
                    hand(nums, "default")
                    log.append(("default", nums))
                elif op == "savepoint":
                    n_sp += 1
                    q(f"SAVEPOINT s{n_sp}")
                    stack.append((f"s{n_sp}", set()))
                    log.append(("savepoint", n_sp))
                elif op in ("rollback", "release") and stack:
                    i = rng.randrange(len(stack))
                    name = stack[i][0]
                    if op == "rollback":
                        for s in stack[i:]:
                            seen |= s[1]
                        q(f"ROLLBACK TO SAVEPOINT {name}")
                        restored |= seen & set(spares(conn))
                        stack[i] = (name, set())
                        del stack[i + 1 :]
                    else:
                        q(f"RELEASE SAVEPOINT {name}")
                        del stack[i:]
                    log.append((op, name))
                elif op == "claim" and listed:
                    c = rng.choice(sorted(listed))
                    q("SELECT idmint.claim_entity_number(%s)", [c])
                    log.append(("claim", c))
                elif op == "bind" and listed:
                    c = rng.choice(sorted(listed))
                    q("INSERT INTO bound_rows (num) VALUES (%s)", [c])
                    log.append(("bind", c))
                elif op == "bind_null":
                    nums = [
                        str(x[0])
                        for x in q("INSERT INTO bound_rows (num) VALUES (NULL) RETURNING num")
                    ]
                    hand(nums, "bind_null")
                    log.append(("bind_null", nums))
                elif op == "bulk":
                    nums = [
                        str(x[0])
                        for x in q("SELECT idmint.gen_entity_numbers(4, %s)", [rng.randint(1, 3)])
                    ]
                    restored.clear()  # the call un-issued the list first; it may draw them anew
                    hand(nums, "bulk")
                    log.append(("bulk", nums))
                elif op == "quote":
                    q(
                        "INSERT INTO quote_rows SELECT FROM generate_series(1, %s)",
                        [rng.randint(1, 8)],
                    )
                    log.append(("quote",))
                elif op == "discard":
                    q("DISCARD SEQUENCES")
                    log.append(("discard",))
                elif op == "immediate":
                    q("SET CONSTRAINTS ALL IMMEDIATE")
                    if rng.random() < 0.5:
                        q("SET CONSTRAINTS ALL DEFERRED")
                    log.append(("immediate",))
                elif op == "exception":
                    notes.clear()
                    q(EXCEPTION_BLOCK % rng.randint(1, 4))
                    got = list(notes)
                    hand(got, "exception")
                    seen |= set(got)
                    restored |= seen & set(spares(conn))
                    log.append(("exception", got))
                elif op == "late":
                    q("INSERT INTO late_rows VALUES (1)")
                    log.append(("late",))
                elif op == "upsert" and listed:
                    ids = q("SELECT id FROM bound_rows LIMIT 1")
                    if ids:
                        c = rng.choice(sorted(listed))
                        q(
                            "INSERT INTO bound_rows (id, num) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                            [ids[0][0], c],
                        )
                        log.append(("upsert", c))
                elif op == "delete":
                    q(
                        "DELETE FROM bound_rows WHERE id IN (SELECT id FROM bound_rows ORDER BY random() LIMIT 1)"
                    )
                    log.append(("delete",))
                elif op == "update" and listed:
                    c = rng.choice(sorted(listed))
                    old = q(
                        "WITH o AS (SELECT id, num FROM bound_rows ORDER BY random() LIMIT 1)"
                        " UPDATE bound_rows b SET num = %s FROM o WHERE b.id = o.id RETURNING o.num",
                        [c],
                    )
                    replaced.update(int(str(x[0])) for x in old if x[0] is not None)
                    log.append(("update", c))
            q("COMMIT")
        except psycopg.Error as e:
            failed = True
            if e.sqlstate not in ("40001", "40P01"):
                broken.append(("error", e.sqlstate, str(e).splitlines()[0], seed, r, list(log)))
            conn.rollback() if not conn.autocommit else q("ROLLBACK")
        if failed or not alone:
            continue
        for p in (ORDER, QUOTE):
            if check_exact(db, p):
                broken.append(("counts", p, check_exact(db, p), seed, r, list(log)))
            capacity = scalar(
                db, "SELECT issued FROM idmint.entity_capacity WHERE prefix = %s", [p]
            )
            if capacity != entity_rows(db, p):
                broken.append(("capacity", p, capacity, entity_rows(db, p), seed, r))
        stored = db.execute(
            "SELECT num FROM (SELECT num FROM spare_rows UNION ALL SELECT num FROM bound_rows) x"
            " WHERE num IS NOT NULL AND NOT EXISTS"
            " (SELECT FROM idmint.entity_numbers e WHERE e.number = x.num::integer)"
        ).fetchall()
        if stored:
            broken.append(("stored, not issued", stored, seed, r, list(log)))
        twice = db.execute(
            "SELECT num FROM (SELECT num FROM spare_rows UNION ALL SELECT num FROM bound_rows) x"
            " WHERE num IS NOT NULL GROUP BY num HAVING count(*) > 1"
        ).fetchall()
        if twice:
            broken.append(("in two rows", twice, seed, r, list(log)))
        unbound = db.execute(
            "SELECT num FROM bound_rows b WHERE num IS NOT NULL AND NOT EXISTS (SELECT FROM"
            " idmint.entity_numbers e WHERE e.number = b.num::integer AND e.bound_at IS NOT NULL)"
        ).fetchall()
        if unbound:
            broken.append(("stored, not bound", unbound, seed, r, list(log)))
        extra = orphans(db) - before_orphans - replaced
        if extra:
            broken.append(("bound, in no row", sorted(extra), seed, r, list(log)))
    return broken


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_spare_sequences_keep_every_rule_as_owner(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection], tables: None, seed: int
) -> None:
    """CONTRACT sections 1, 4, 5: whatever a transaction does around its DEFAULTs (see the
    module docstring), a number that a rolled-back savepoint or exception block handed out
    and that the rollback put back into the list never comes out of it; after every commit the counts
    are exact, entity_capacity.issued equals the rows, every stored number is issued (and
    bound for the trigger table), none is in two rows, no undocumented SQLSTATE.
    Withstood on 18d36fe (also a scratch-server version of this
    loop, about 30 seeds of 40-60 transactions, some three at a time) and, with the check
    limited to restored lists, 120 owner and 60 app-role seeds on 2eb68d5; with the mark
    comparison forced true it failed in each of 12 seeds."""
    assert run_sequences(db, connect(), seed, 25) == []


@pytest.mark.parametrize("seed", [4, 5])
def test_random_spare_sequences_keep_every_rule_as_app_role(
    db: psycopg.Connection,
    app_connect: Callable[..., psycopg.Connection],
    tables: None,
    seed: int,
) -> None:
    """As above, as a role with only idmint_user (currval/setval of idmint.entity_handouts
    run inside the SECURITY DEFINER functions; no 42501). Withstood on 18d36fe."""
    assert run_sequences(db, app_connect(), seed, 25) == []


def test_discard_sequences_inside_savepoints_cannot_revalidate_a_restored_list(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection], tables: None
) -> None:
    """The attempt aimed at the `greatest(coalesce(currval, 0), mark) + 1` of a new batch:
    DISCARD SEQUENCES forgets currval, the lists are emptied (bulk call) and a fresh batch
    sets a new mark inside an inner savepoint; rolling that back restores the outer list
    (with the numbers an earlier rolled-back savepoint saw) and its old mark. The new mark
    was above it (mark + 1), so currval never equals the restored mark: the seen numbers
    stay unhanded. Withstood on 18d36fe."""
    conn = connect(autocommit=False)
    conn.execute("INSERT INTO spare_rows SELECT FROM generate_series(1, 300)")
    while len(spares(conn)) < 6:
        conn.execute("INSERT INTO spare_rows DEFAULT VALUES")
    conn.execute("SAVEPOINT a")
    seen = [
        str(r[0])
        for r in conn.execute(
            "INSERT INTO spare_rows SELECT FROM generate_series(1, 3) RETURNING num"
        )
    ]
    conn.execute("ROLLBACK TO SAVEPOINT a")
    assert set(seen) <= set(spares(conn))
    for _ in range(3):
        conn.execute("SAVEPOINT b")
        conn.execute("DISCARD SEQUENCES")
        conn.execute("SELECT idmint.gen_entity_numbers(4, 1)")  # lists given back
        assert spares(conn) == []
        conn.execute(
            "INSERT INTO spare_rows SELECT FROM generate_series(1, 3)"
        )  # a new batch, a new mark
        conn.execute("ROLLBACK TO SAVEPOINT b")
    later = [
        str(r[0])
        for r in conn.execute(
            "INSERT INTO spare_rows SELECT FROM generate_series(1, 40) RETURNING num"
        )
    ]
    assert not set(later) & set(seen), sorted(set(later) & set(seen))
    conn.commit()
    assert check_exact(db, ORDER) == []
    assert scalar(db, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 4") == entity_rows(
        db, ORDER
    )


def test_a_deferred_app_trigger_issuing_at_commit_keeps_counts_exact(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection], tables: None
) -> None:
    """A deferred app trigger that fires after the commit-time count and issues DEFAULTs,
    some in an exception block, retakes a shard and draws a new batch: its spares are given
    back by the next count, its rolled-back rows are gone. Withstood on 18d36fe."""
    conn = connect(autocommit=False)
    conn.execute("INSERT INTO spare_rows SELECT FROM generate_series(1, 100)")
    conn.execute("INSERT INTO late_rows VALUES (1), (2)")
    conn.execute("INSERT INTO spare_rows SELECT FROM generate_series(1, 10)")
    conn.commit()
    assert scalar(db, "SELECT count(*) FROM spare_rows") == 100 + 10 + 2 * 5
    assert check_exact(db, ORDER) == []
    assert entity_rows(db, ORDER) == 120
    assert scalar(db, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 4") == 120


def test_concurrent_random_spare_sequences(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection], tables: None
) -> None:
    """Three such sequences at once (random isolation levels; 40001 and 40P01 are retried
    by dropping the transaction): no seen number handed out again, no other SQLSTATE, and
    at the end counts exact and entity_capacity.issued equal to the rows. Withstood on
    18d36fe."""
    import threading

    results: dict[int, list[object]] = {}
    conns = {seed: connect() for seed in (7, 8, 9)}

    def run(seed: int) -> None:
        try:
            results[seed] = run_sequences(db, conns[seed], seed, 15, alone=False)
        except Exception as e:
            results[seed] = [("crash", repr(e))]

    threads = [threading.Thread(target=run, args=(seed,)) for seed in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(results.get(seed) == [] for seed in conns), results
    for p in (ORDER, QUOTE):
        assert check_exact(db, p) == []
        assert scalar(
            db, "SELECT issued FROM idmint.entity_capacity WHERE prefix = %s", [p]
        ) == entity_rows(db, p)


def test_partition_moves_upserts_and_deletes_with_default_spares_keep_the_binding_rules(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection]
) -> None:
    """CONTRACT section 4 on a partitioned table with both the DEFAULT (spares) and the
    trigger: a partition move keeps the number (bound), an upsert that stores nothing binds
    nothing (its DEFAULT number stays issued, unbound, as any generated one), DELETE
    unbinds; a savepoint around moves and upserts rolled back changes nothing; counts exact.
    Withstood on 18d36fe."""
    db.execute(
        "CREATE TABLE pt (k int, id int, num varchar(7) DEFAULT idmint.gen_entity_number('order'),"
        " PRIMARY KEY (k, id)) PARTITION BY LIST (k)"
    )
    for k in (1, 2):
        db.execute(f"CREATE TABLE pt{k} PARTITION OF pt FOR VALUES IN ({k})")
        db.execute(
            f"CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON pt{k} FOR EACH ROW"
            " EXECUTE FUNCTION idmint.assign_entity_number('num', 'order')"
        )
    conn = connect(autocommit=False)
    conn.execute("INSERT INTO pt (k, id) SELECT 1, g FROM generate_series(1, 40) g")
    assert spares(conn) != []
    before = dict(conn.execute("SELECT id, num FROM pt").fetchall())
    conn.execute("SAVEPOINT a")
    conn.execute("UPDATE pt SET k = 2 WHERE id <= 5")
    conn.execute("INSERT INTO pt (k, id) VALUES (1, 6) ON CONFLICT DO NOTHING")
    conn.execute("ROLLBACK TO SAVEPOINT a")
    conn.execute("UPDATE pt SET k = 2 WHERE id <= 10")
    deleted = conn.execute("DELETE FROM pt WHERE id = 11 RETURNING num").fetchone()[0]  # type: ignore[index]
    unstored = conn.execute(
        "INSERT INTO pt (k, id) VALUES (1, 12) ON CONFLICT DO NOTHING RETURNING num"
    ).fetchall()
    assert unstored == []
    conn.execute("INSERT INTO pt (k, id) SELECT 1, g FROM generate_series(41, 60) g")
    conn.commit()
    after = dict(db.execute("SELECT id, num FROM pt").fetchall())
    assert all(after[i] == before[i] for i in range(1, 41) if i != 11)
    assert db.execute(
        "SELECT count(*) FROM pt JOIN idmint.entity_numbers e ON e.number = pt.num::integer"
        " AND e.bound_at IS NOT NULL"
    ).fetchone() == (59,)
    assert db.execute(
        "SELECT bound_at IS NULL FROM idmint.entity_numbers WHERE number = %s", [int(deleted)]
    ).fetchone() == (True,)
    # 59 rows, the deleted row's number and the DEFAULT number of the upsert (issued, unbound)
    assert entity_rows(db, ORDER) == 61
    assert check_exact(db, ORDER) == []
    assert scalar(db, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 4") == 61


# (SERIALIZABLE: one-number calls reach the waiting phase and get 40001 there, also before
# the spares; left open on issue 11 with the SERIALIZABLE limit in docs/DESIGN.md.)
@pytest.mark.parametrize("level", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
def test_concurrent_default_runs_never_reach_the_waiting_phase(
    db: psycopg.Connection, connect: Callable[..., psycopg.Connection], tables: None, level: str
) -> None:
    """CONTRACT section 4 (0.2): issuers never wait for each other, and a call waits (or
    reaches the waiting phase) only when the free numbers not held by open transactions
    are fewer than it asks for. Three sessions run short transactions of DEFAULT rows
    (with a rolled-back savepoint, a bulk call and a second type) at `level`, the type
    nearly empty. Errors allowed: 40001 / 40P01 outside the waiting phase (SERIALIZABLE's
    read/write dependencies are a documented limit).

    FAILED on 18d36fe at SERIALIZABLE only (3 of 3 runs; RC and RR pass): a DEFAULT for one
    number at ~0 % fill reached the waiting phase (phase 6 of _issue_entity_numbers, via
    the general path of _issue_entity_number) and raised 40001 "could not serialize access
    due to concurrent update" from its `FOR NO KEY UPDATE` of every unheld shard. NOT
    caused by the spares: it failed the same way (2 of 2 runs) with the migration of
    61e5feb~1 (before the spares). The cause: the transaction had met a read/write
    dependency, so every shard candidate of _entity_take_weighted failed with 40001 and
    was passed over. Fixed (the picks re-raise that failure); passes at all three levels."""
    import threading

    errors: list[str] = []
    conns = [connect() for _ in range(3)]

    def run(conn: psycopg.Connection) -> None:
        for _ in range(60):
            conn.execute(f"BEGIN ISOLATION LEVEL {level}")
            try:
                conn.execute("INSERT INTO spare_rows SELECT FROM generate_series(1, 25)")
                conn.execute("SAVEPOINT a")
                conn.execute("INSERT INTO spare_rows SELECT FROM generate_series(1, 5)")
                conn.execute("ROLLBACK TO SAVEPOINT a")
                conn.execute("SELECT idmint.gen_entity_numbers(4, 2)")
                conn.execute("INSERT INTO quote_rows SELECT FROM generate_series(1, 5)")
                conn.execute("INSERT INTO spare_rows SELECT FROM generate_series(1, 5)")
                conn.execute("COMMIT")
            except psycopg.Error as e:
                context = str(getattr(e.diag, "context", "") or "")
                waiting = (
                    "ORDER BY x.shard FOR NO KEY UPDATE" in context
                    and "_issue_entity_numbers" in context
                )
                errors.append(
                    f"{e.sqlstate}: {str(e).splitlines()[0]} | waiting phase: {waiting} | {context.splitlines()[-4:] if waiting else ''}"
                )
                conn.execute("ROLLBACK")

    threads = [threading.Thread(target=run, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    # 40001 "read/write dependencies" under SERIALIZABLE is a documented limit.
    assert [
        e for e in errors if "waiting phase: True" in e or not e.startswith(("40001", "40P01"))
    ] == []
