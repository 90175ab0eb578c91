"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager

import psycopg
import pytest
from hypothesis import strategies as st


@contextmanager
def raises_sqlstate(sqlstate: str) -> Iterator[pytest.ExceptionInfo[psycopg.Error]]:
    """Expect a psycopg error with exactly this SQLSTATE."""
    with pytest.raises(psycopg.Error) as info:
        yield info
    assert info.value.sqlstate == sqlstate, f"{info.value.sqlstate}: {info.value}"


def lock_waits(
    observer: psycopg.Connection,
    *,
    waiter: int | None = None,
    blocker: int | None = None,
    application_name: str | None = None,
    exclude: Collection[int] = (),
    timeout: float = 30.0,
) -> dict[int, list[int]]:
    """Poll the server (`pg_blocking_pids`, never a sleep in place of it) until some backend
    waits on a lock: backend `waiter`, or any waiting on `blocker`, of `application_name`,
    not in `exclude`. Returns {waiting pid: the pids it waits for} for each such backend."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = observer.execute(
            "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity"
            " WHERE cardinality(pg_blocking_pids(pid)) > 0"
            " AND (%(waiter)s::int IS NULL OR pid = %(waiter)s)"
            " AND (%(blocker)s::int IS NULL OR %(blocker)s = ANY (pg_blocking_pids(pid)))"
            " AND (%(app)s::text IS NULL OR application_name = %(app)s)",
            {"waiter": waiter, "blocker": blocker, "app": application_name},
        ).fetchall()
        found = {pid: list(blockers) for pid, blockers in rows if pid not in exclude}
        if found:
            return found
        time.sleep(0.005)
    raise AssertionError(
        f"no backend waited on a lock (waiter={waiter}, blocker={blocker},"
        f" application_name={application_name}, exclude={sorted(exclude)})"
    )


def wait_until_blocked(observer: psycopg.Connection, pid: int, timeout: float = 30.0) -> list[int]:
    """Wait until backend `pid` waits on a lock; returns the pids it waits for."""
    return lock_waits(observer, waiter=pid, timeout=timeout)[pid]


def wait_expired(db: psycopg.Connection, *driver_ids: str, timeout: float = 30.0) -> None:
    """Poll until the server itself reports these (tiny-ttl) reservations as expired."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT count(*) FILTER (WHERE status = 'expired') FROM idmint.driver_id_ledger"
            " WHERE driver_id = ANY(%s)",
            [list(driver_ids)],
        ).fetchone()
        if row == (len(driver_ids),):
            return
        time.sleep(0.002)
    raise AssertionError(f"reservations {driver_ids} never expired")


def table_snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every idmint table, to prove that a failed call wrote nothing."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c"
            " WHERE c.relnamespace = 'idmint'::regnamespace AND c.relkind = 'r' ORDER BY 1"
        )
    ]
    return {t: conn.execute(f"SELECT * FROM {t} x ORDER BY x::text").fetchall() for t in tables}


def scalar(conn: psycopg.Connection, query: str, params: object = None) -> object:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def gen(conn: psycopg.Connection, entity: object, n: int) -> list[str]:
    """`idmint.gen_entity_numbers(entity, n)` on `conn`, in the order returned."""
    return [r[0] for r in conn.execute("SELECT idmint.gen_entity_numbers(%s, %s)", [entity, n])]


def issued(conn: psycopg.Connection, prefix: int) -> int:
    """How many numbers of the entity type `prefix` are issued (`entity_capacity`)."""
    return int(
        scalar(conn, "SELECT issued FROM idmint.entity_capacity WHERE prefix = %s", [prefix])
    )  # type: ignore[arg-type]


Connect = Callable[..., psycopg.Connection]


def fuzz_texts(valid_looking: Sequence[str]) -> st.SearchStrategy[str | None]:
    """Text arguments for the fuzz tests: NULL, inputs that look valid, any text but NUL."""
    return (
        st.none()
        | st.sampled_from(valid_looking)
        | st.text(
            alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
            max_size=40,
        )
    )


def type_partition(prefix: int) -> str:
    """SQL for every number of a type with its shard (columns number, prefix, shard),
    by the engine's own definition of the secret partition (superuser only)."""
    return (
        f"idmint._entity_shards_of(ARRAY(SELECT generate_series({prefix:d} * 1000000,"
        f" {prefix:d} * 1000000 + 999999)))"
    )


def shard_of(db: psycopg.Connection, number: int | str) -> int:
    """The shard of an entity number (superuser only)."""
    return int(
        scalar(db, "SELECT shard FROM idmint._entity_shards_of(ARRAY[%s::integer])", [int(number)])  # type: ignore[call-overload]
    )


def number_state(db: psycopg.Connection, number: str | int) -> tuple[bool, bool]:
    """(issued, bound) of an entity number, read as idmint's owner."""
    row = db.execute(
        "SELECT true, bound_at IS NOT NULL FROM idmint.entity_numbers WHERE number = %s",
        [int(number)],
    ).fetchone()
    return (False, False) if row is None else (bool(row[0]), bool(row[1]))


def victim_driver(db: psycopg.Connection) -> object:
    """Fleet North (ABC) and a table public.drivers with the driver-id trigger, holding
    one row; returns the driver id the row got."""
    db.execute("SELECT idmint.add_fleet('North', 'ABC')")
    db.execute(
        "CREATE TABLE public.drivers (email text PRIMARY KEY, fleet text, driver_id text UNIQUE);"
        "CREATE TRIGGER d BEFORE INSERT OR UPDATE OR DELETE ON public.drivers FOR EACH ROW"
        " EXECUTE FUNCTION idmint.assign_driver_id('fleet', 'driver_id')"
    )
    return scalar(db, "INSERT INTO public.drivers VALUES ('a@x', 'ABC') RETURNING driver_id")


def issue_directly(db: psycopg.Connection, prefix: int, per_shard: int) -> int:
    """White-box set-up (superuser): issue members 0 .. per_shard - 1 of every shard of
    type `prefix` by writing idmint's tables as the engine would leave them, without
    spending a minute on calls. Returns how many (200 * per_shard)."""
    count = 200 * per_shard
    db.execute(
        "INSERT INTO idmint.entity_numbers (number, issued_at, how, issued_by, issued_xid)"
        " SELECT %(p)s * 1000000 + m.v, now(), 'gen', current_user, pg_current_xact_id()"
        " FROM idmint.entity_ranges r, generate_series(0, 199) AS s,"
        " idmint._entity_members(r.shard_key, s, ARRAY(SELECT generate_series(0, %(c)s - 1))) AS m"
        " WHERE r.prefix = %(p)s",
        {"p": prefix, "c": per_shard},
    )
    db.execute("UPDATE idmint.entity_shards SET issued = %s WHERE prefix = %s", [per_shard, prefix])
    return count


def wait_for_event(
    observer: psycopg.Connection, pid: int, event: str, timeout: float = 30.0
) -> None:
    """Poll until backend `pid` shows `wait_event` `event` (e.g. 'PgSleep')."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = observer.execute(
            "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
        if row is not None and row[0] == event:
            return
        time.sleep(0.002)
    raise AssertionError(f"backend {pid} never showed wait event {event}")


def only_free(
    db: psycopg.Connection, prefix: int, free: dict[int, tuple[int, bool]]
) -> dict[int, set[int]]:
    """White-box set-up (superuser): a new type `prefix` whose only free numbers are
    `free[shard][0]` random members of each listed shard (its deck built when
    `free[shard][1]`), written as the engine leaves them; every other number is issued and
    counted. Returns the free numbers per shard."""
    db.execute("SELECT idmint.add_entity_type(%s, %s)", [prefix, f"only free {prefix}"])
    db.execute("CREATE TEMP TABLE want (shard integer, per integer)")
    for s, (per, _) in free.items():
        db.execute("INSERT INTO want VALUES (%s, %s)", [s, per])
    db.execute(
        f"""
        CREATE TEMP TABLE free AS
        WITH m AS (SELECT number, shard FROM {type_partition(prefix)})
        SELECT x.number, x.shard
        FROM (SELECT m.*, row_number() OVER (PARTITION BY m.shard ORDER BY random()) AS rn
              FROM m JOIN want w ON w.shard = m.shard) x
        JOIN want w ON w.shard = x.shard
        WHERE x.rn <= w.per
        """,
        {"p": prefix},
    )
    db.execute(
        """
        INSERT INTO idmint.entity_numbers (number, issued_at, how, issued_by, issued_xid)
        SELECT v, now(), 'gen', current_user, pg_current_xact_id()
        FROM generate_series(%(p)s * 1000000, %(p)s * 1000000 + 999999) AS v
        WHERE v NOT IN (SELECT number FROM free)
        """,
        {"p": prefix},
    )
    decks = [s for s, (_, d) in free.items() if d]
    db.execute(
        """
        UPDATE idmint.entity_shards x
        SET issued = 5000 - (SELECT count(*) FROM free f WHERE f.shard = x.shard),
            deck = x.shard = ANY (%(decks)s)
        WHERE x.prefix = %(p)s
        """,
        {"p": prefix, "decks": decks},
    )
    db.execute(
        "INSERT INTO idmint.entity_free SELECT %s, shard, number FROM free WHERE shard = ANY (%s)",
        [prefix, decks],
    )
    out: dict[int, set[int]] = {s: set() for s in free}
    for number, shard in db.execute("SELECT number, shard FROM free").fetchall():
        out[shard].add(number)
    db.execute("DROP TABLE free, want")
    assert issued(db, prefix) == 1_000_000 - sum(per for per, _ in free.values())
    return out


def check_exact(db: psycopg.Connection, prefix: int) -> list[tuple[object, ...]]:
    """White-box (superuser), with no transaction of the type open: the shards of a type
    whose committed count (issued plus its steal rows) differs from their rows, that are
    still held, or whose deck differs from their free numbers. Empty when all is exact."""
    return db.execute(
        """
        WITH rows AS (
            SELECT x.shard, count(*) AS n
            FROM idmint._entity_shards_of(ARRAY(SELECT e.number FROM idmint.entity_numbers e
                                                WHERE e.number / 1000000 = %(p)s)) x
            GROUP BY 1)
        SELECT x.shard, x.issued, coalesce(t.n, 0) AS stolen, coalesce(rows.n, 0) AS rows,
               (SELECT count(*) FROM idmint.entity_free f WHERE f.prefix = x.prefix AND f.shard = x.shard)
                   AS cards, x.deck, x.holder
        FROM idmint.entity_shards x
        LEFT JOIN (SELECT t.shard, sum(t.n) AS n FROM idmint.entity_steals t
                   WHERE t.prefix = %(p)s GROUP BY 1) t ON t.shard = x.shard
        LEFT JOIN rows ON rows.shard = x.shard
        WHERE x.prefix = %(p)s
          AND (x.issued + coalesce(t.n, 0) <> coalesce(rows.n, 0) OR x.holder IS NOT NULL
               OR x.deck AND (SELECT count(*) FROM idmint.entity_free f
                              WHERE f.prefix = x.prefix AND f.shard = x.shard) <> 5000 - coalesce(rows.n, 0))
        """,
        {"p": prefix},
    ).fetchall()


def entity_rows(db: psycopg.Connection, prefix: int) -> int:
    """The rows of entity type `prefix` in idmint.entity_numbers (white-box)."""
    return int(
        scalar(  # type: ignore[arg-type]
            db, "SELECT count(*) FROM idmint.entity_numbers WHERE number / 1000000 = %s", [prefix]
        )
    )


def record_call(
    outcome: dict[str, str],
    who: str,
    conn: psycopg.Connection,
    query: str,
    args: Sequence[object],
    rollback: bool = False,
) -> None:
    """Run `query` (a thread's target) and record "ok" or "SQLSTATE: message" as
    outcome[who]; `rollback`: end the transaction at once on an error (its locks go)."""
    try:
        conn.execute(query, args).fetchall()
        outcome[who] = "ok"
    except psycopg.Error as e:
        outcome[who] = f"{e.sqlstate}: {str(e).splitlines()[0]}"
        if rollback:
            conn.rollback()


# --- column DEFAULT spares (tests/test_entity_spares*.py) ---------------------------------

ORDER = 4  # the seeded type 'order'


def spares(conn: psycopg.Connection, prefix: int = ORDER) -> list[str]:
    """This transaction's spare list (the setting an app can read, 7 digits a number)."""
    text = str(
        scalar(
            conn,
            "SELECT coalesce(current_setting(%s, true), '')",
            [f"idmint.entity_spare_{prefix}"],
        )
    )
    return [text[i : i + 7] for i in range(0, len(text), 7)]


def defaults(conn: psycopg.Connection, n: int, table: str = "spare_rows") -> list[str]:
    """Insert n rows whose number is the column DEFAULT; their numbers."""
    return [
        r[0]
        for r in conn.execute(
            f"INSERT INTO {table} SELECT FROM generate_series(1, %s) RETURNING num", [n]
        )
    ]


def assert_exactly_issued(db: psycopg.Connection, numbers: list[str], prefix: int = ORDER) -> None:
    """The committed numbers of the type are exactly `numbers`, all counted."""
    assert len(set(numbers)) == len(numbers)
    stored = {
        r[0]
        for r in db.execute(
            "SELECT number::text FROM idmint.entity_numbers WHERE number / 1000000 = %s", [prefix]
        )
    }
    assert stored == set(numbers), (len(stored), sorted(stored - set(numbers))[:5])
    assert issued(db, prefix) == len(numbers)
    assert check_exact(db, prefix) == []
