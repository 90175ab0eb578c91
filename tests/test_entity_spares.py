"""Column DEFAULTs draw their numbers in batches ("spares", sql/50): a run of
`gen_entity_number` calls in one transaction inserts its numbers a batch at a time and hands
them out one per call. What was not handed out must be gone by commit, so every rule of
CONTRACT section 4 holds as if each call had issued one number: exact counts (also in the
transaction's own view), rollback and savepoints free everything, ID005 only on committed
state, a claim or a binding of such a number works, and no number is handed out twice.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from tests.util import (
    ORDER,
    Connect,
    assert_exactly_issued,
    check_exact,
    defaults,
    entity_rows,
    issued,
    only_free,
    raises_sqlstate,
    scalar,
    spares,
)


def test_a_run_of_defaults_leaves_exactly_its_rows_issued(
    db: psycopg.Connection, connect: Connect, spare_rows: str
) -> None:
    conn = connect(autocommit=False)
    got = defaults(conn, 1000)
    assert spares(conn), "a run of 1 000 DEFAULTs draws in batches"
    # The transaction's own view counts only what it handed out.
    assert issued(conn, ORDER) == 1000
    assert issued(db, ORDER) == 0
    conn.commit()
    assert_exactly_issued(db, got)
    assert scalar(db, "SELECT count(*) FROM idmint.entity_numbers WHERE how <> 'gen'") == 0


def test_one_by_one_statements_never_hand_out_a_number_twice(
    db: psycopg.Connection, connect: Connect, spare_rows: str
) -> None:
    conn = connect(autocommit=False)
    got = [
        str(scalar(conn, "INSERT INTO spare_rows DEFAULT VALUES RETURNING num")) for _ in range(300)
    ]
    got += [str(scalar(conn, "SELECT idmint.gen_entity_number(4)")) for _ in range(100)]
    conn.commit()
    assert_exactly_issued(db, got)


def test_rolled_back_savepoints_free_their_numbers_and_keep_the_rest(
    db: psycopg.Connection, connect: Connect, spare_rows: str
) -> None:
    conn = connect(autocommit=False)
    kept = defaults(conn, 300)
    conn.execute("SAVEPOINT a")
    defaults(conn, 200)
    conn.execute("ROLLBACK TO SAVEPOINT a")
    kept += defaults(conn, 100)
    # A PL/pgSQL exception block is a subtransaction too: its rows and numbers go.
    conn.execute(
        """
        DO $$ BEGIN
            INSERT INTO spare_rows SELECT FROM generate_series(1, 150);
            RAISE EXCEPTION 'undo';
        EXCEPTION WHEN raise_exception THEN NULL;
        END $$
        """
    )
    kept += defaults(conn, 50)
    assert issued(conn, ORDER) == 450
    conn.commit()
    assert_exactly_issued(db, kept)


def seen_in_a_rolled_back_savepoint(
    conn: psycopg.Connection, how: str
) -> tuple[list[str], list[str]]:
    """With at least 10 spares listed: the numbers that `how` (a savepoint or an exception
    block) handed out and undid, and as many numbers handed out right after it."""
    while len(spares(conn)) < 10:
        defaults(conn, 1)
    k = min(30, len(spares(conn)))
    if how == "savepoint":
        conn.execute("SAVEPOINT s")
        seen = defaults(conn, k)
        conn.execute("ROLLBACK TO SAVEPOINT s")
    else:
        conn.execute("CREATE TEMP TABLE seen (num text) ON COMMIT DROP")
        conn.execute(
            """
            DO $$ DECLARE x text; BEGIN
                FOR i IN 1 .. %s LOOP
                    BEGIN
                        INSERT INTO spare_rows DEFAULT VALUES RETURNING num INTO x;
                        INSERT INTO seen VALUES (x);
                        RAISE EXCEPTION 'undo';
                    EXCEPTION WHEN raise_exception THEN
                        INSERT INTO seen VALUES (x);  -- (the first insert went with the block)
                    END;
                END LOOP;
            END $$
            """.replace("%s", str(k))
        )
        seen = [str(r[0]) for r in conn.execute("SELECT num FROM seen")]
        conn.execute("DROP TABLE seen")
    return seen, defaults(conn, k)


@pytest.mark.parametrize("how", ["savepoint", "exception block"])
def test_numbers_a_rolled_back_savepoint_saw_do_not_come_out_next(
    db: psycopg.Connection, connect: Connect, spare_rows: str, how: str
) -> None:
    """CONTRACT section 4 (0.2): numbers a rolled-back call saw tell nothing about later
    calls. A restored spare list would hand the same numbers out again, in the same order;
    by chance, the next k numbers of the shard meet k given ones about k*k/4000 times."""
    conn = connect(autocommit=False)
    kept = defaults(conn, 300)
    for _ in range(3):
        seen, after = seen_in_a_rolled_back_savepoint(conn, how)
        assert len(seen) >= 10
        assert len(set(seen) & set(after)) <= 5, (seen, after)
        kept += after
    conn.commit()
    assert_exactly_issued(db, kept)


def test_a_spare_can_be_claimed_and_is_then_never_handed_out(
    db: psycopg.Connection, connect: Connect, spare_rows: str
) -> None:
    conn = connect(autocommit=False)
    got = defaults(conn, 100)
    listed = spares(conn)
    assert listed
    claimed = listed[0]
    assert scalar(conn, "SELECT idmint.claim_entity_number(%s)", [claimed]) == claimed
    assert claimed not in spares(conn)
    with raises_sqlstate("ID004"):
        conn.execute("SAVEPOINT b")
        conn.execute("SELECT idmint.claim_entity_number(%s)", [claimed])
    conn.execute("ROLLBACK TO SAVEPOINT b")
    got += defaults(conn, 500)
    assert claimed not in got
    assert issued(conn, ORDER) == 601
    conn.commit()
    assert_exactly_issued(db, [*got, claimed])
    assert (
        scalar(db, "SELECT how FROM idmint.entity_numbers WHERE number = %s", [int(claimed)])
        == "claim"
    )


def test_a_spare_an_app_row_carries_is_bound_and_never_handed_out(
    db: psycopg.Connection, connect: Connect, spare_rows: str
) -> None:
    db.execute("CREATE TABLE bound_rows (num varchar(7))")
    db.execute(
        "CREATE TRIGGER num BEFORE INSERT OR UPDATE OR DELETE ON bound_rows FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_entity_number('num', 'order')"
    )
    conn = connect(autocommit=False)
    got = defaults(conn, 100)
    carried = spares(conn)[-1]  # the next one a DEFAULT would hand out
    conn.execute("INSERT INTO bound_rows VALUES (%s)", [carried])
    assert carried not in spares(conn)
    got += defaults(conn, 500)
    assert carried not in got
    conn.commit()
    assert_exactly_issued(db, [*got, carried])
    assert scalar(
        db,
        "SELECT bound_at IS NOT NULL FROM idmint.entity_numbers WHERE number = %s",
        [int(carried)],
    )


def test_a_call_for_the_last_free_numbers_is_not_short_of_the_spares(
    db: psycopg.Connection, connect: Connect
) -> None:
    # One sparse shard (3 000 free, so DEFAULTs draw batches there) and nothing else free.
    free = only_free(db, 7, {10: (3000, False)})
    conn = connect(autocommit=False)
    got = [
        str(r[0])
        for r in conn.execute("SELECT idmint.gen_entity_number(7) FROM generate_series(1, 200)")
    ]
    assert spares(conn, 7)
    got += [str(r[0]) for r in conn.execute("SELECT idmint.gen_entity_numbers(7, 2800)")]
    assert spares(conn, 7) == []
    with raises_sqlstate("ID005"):
        conn.execute("SELECT idmint.gen_entity_number(7)")
    conn.rollback()
    got = [
        str(r[0])
        for r in conn.execute("SELECT idmint.gen_entity_number(7) FROM generate_series(1, 200)")
    ]
    got += [str(r[0]) for r in conn.execute("SELECT idmint.gen_entity_numbers(7, 2800)")]
    conn.commit()
    assert {int(x) for x in got} == free[10]
    assert issued(db, 7) == 1_000_000
    assert check_exact(db, 7) == []


def test_an_early_count_gives_back_the_spares(
    db: psycopg.Connection, connect: Connect, spare_rows: str
) -> None:
    conn = connect(autocommit=False)
    got = defaults(conn, 300)
    conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert spares(conn) == []
    got += defaults(conn, 300)
    assert issued(conn, ORDER) == 600
    conn.commit()
    assert_exactly_issued(db, got)


def test_a_rewritten_spare_setting_still_gives_issued_numbers_of_the_type(
    db: psycopg.Connection, connect: Connect, app_role: str, app_connect: Connect
) -> None:
    conn = app_connect(autocommit=False)
    got = []
    for bad in ("garbage!", "9999999", "12345678", "4000000x", ""):
        conn.execute("SELECT set_config('idmint.entity_spare_4', %s, true)", [bad])
        x = str(scalar(conn, "SELECT idmint.gen_entity_number('order')"))
        assert len(x) == 7 and x[0] == "4", (bad, x)
        got.append(x)
    got += [
        str(r[0])
        for r in conn.execute("SELECT idmint.gen_entity_number(4) FROM generate_series(1, 100)")
    ]
    conn.commit()
    assert_exactly_issued(db, got)


def test_concurrent_default_writers_with_rollbacks_stay_exact(
    db: psycopg.Connection, connect: Connect, spare_rows: str
) -> None:
    kept: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        try:
            with connect(autocommit=False) as conn:
                conn.execute("SET lock_timeout = '5s'")
                for t in range(6):
                    got = defaults(conn, 150 + 10 * w)
                    if (w + t) % 3 == 0:
                        conn.rollback()
                    else:
                        conn.commit()
                        with lock:
                            kept.extend(got)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert_exactly_issued(db, kept)
    assert entity_rows(db, ORDER) == len(kept)
