"""Entity numbers (CONTRACT section 4): types, generation, claims, validation, capacity."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter

import psycopg
import pytest

from tests.util import Connect, gen, issued, raises_sqlstate, scalar, table_snapshot

SEEDED = {1: "part", 2: "material", 3: "batch", 4: "order", 5: "quote"}


def test_seeded_types_are_readable_as_prefix_and_name(db: psycopg.Connection) -> None:
    rows = db.execute("SELECT prefix, name FROM idmint.entity_types ORDER BY prefix").fetchall()
    assert dict(rows) == SEEDED
    cols = [c.name for c in db.execute("SELECT * FROM idmint.entity_types").description or []]
    assert cols == ["prefix", "name"]


@pytest.mark.parametrize("prefix", sorted(SEEDED))
def test_format_prefix_and_range_for_each_type(db: psycopg.Connection, prefix: int) -> None:
    name = SEEDED[prefix]
    got = gen(db, name, 200) + gen(db, prefix, 200) + gen(db, str(prefix), 200)
    got.append(str(scalar(db, "SELECT idmint.gen_entity_number(%s)", [name])))
    got.append(str(scalar(db, "SELECT idmint.gen_entity_number(%s)", [prefix])))
    assert len(got) == len(set(got)) == 602
    for number in got:
        assert re.fullmatch(rf"{prefix}[0-9]{{6}}", number), number
        assert prefix * 1_000_000 <= int(number) <= prefix * 1_000_000 + 999_999
    assert issued(db, prefix) == 602
    assert (
        scalar(
            db, "SELECT count(*) FROM idmint.entity_numbers WHERE number / 1000000 = %s", [prefix]
        )
        == 602
    )


@pytest.mark.parametrize(
    ("entity", "sqlstate"),
    [
        (None, "ID003"),
        ("", "ID003"),
        (0, "ID003"),
        (10, "ID003"),
        (-1, "ID003"),
        ("0", "ID003"),
        (7, "ID008"),
        ("7", "ID008"),
        ("nosuch", "ID008"),
        ("Part", "ID008"),
        (" part", "ID008"),
        ("10", "ID008"),
    ],
)
def test_bad_entity(db: psycopg.Connection, entity: object, sqlstate: str) -> None:
    before = table_snapshot(db)
    for query in (
        "SELECT idmint.gen_entity_numbers(%s, 3)",
        "SELECT idmint.gen_entity_number(%s)",
        "SELECT idmint.claim_entity_number('1234567', %s)",
    ):
        if entity is None and "claim" in query:
            continue  # claim's entity NULL means "any type"
        with raises_sqlstate(sqlstate):
            db.execute(query, [entity])
    assert table_snapshot(db) == before


@pytest.mark.parametrize("n", [None, 0, -1, 100001, 10**9, 2**31 - 1, -(2**31)])
def test_n_out_of_bounds_is_id003_and_writes_nothing(db: psycopg.Connection, n: int | None) -> None:
    before = table_snapshot(db)
    with raises_sqlstate("ID003"):
        db.execute("SELECT idmint.gen_entity_numbers('part', %s::int)", [n])
    assert table_snapshot(db) == before


def test_rollback_frees_the_numbers(connect: Connect) -> None:
    conn = connect(autocommit=False)
    got = gen(conn, "part", 1000)
    assert issued(conn, 1) == 1000
    conn.rollback()
    conn.autocommit = True
    assert issued(conn, 1) == 0
    assert scalar(conn, "SELECT count(*) FROM idmint.entity_numbers") == 0
    assert scalar(conn, "SELECT sum(issued) FROM idmint.entity_shards") == 0
    # A rolled-back number is free again: it can be claimed.
    assert scalar(conn, "SELECT idmint.claim_entity_number(%s)", [got[0]]) == got[0]


def test_n_100000_in_one_call(db: psycopg.Connection) -> None:
    got = gen(db, "batch", 100_000)
    assert len(got) == len(set(got)) == 100_000
    assert all(re.fullmatch(r"3[0-9]{6}", x) for x in got)
    row = db.execute(
        "SELECT issued, free, utilization FROM idmint.entity_capacity WHERE prefix = 3"
    ).fetchone()
    assert row is not None and row[0] == 100_000 and row[1] == 900_000 and float(row[2]) == 0.1


def test_second_digit_buckets_are_flat(db: psycopg.Connection) -> None:
    got = gen(db, "material", 20_000)
    buckets = Counter(x[1] for x in got)
    assert sorted(buckets) == list("0123456789")
    for digit, count in buckets.items():
        assert 0.08 <= count / 20_000 <= 0.12, (digit, count)


def test_setseed_has_no_effect(connect: Connect) -> None:
    conn = connect(autocommit=False)
    runs = []
    for _ in range(2):
        conn.execute("SELECT setseed(0.42)")
        runs.append(gen(conn, "part", 20))
        conn.rollback()
    assert runs[0] != runs[1]
    assert set(runs[0]).isdisjoint(runs[1]) or len(set(runs[0]) & set(runs[1])) < 3


def test_eight_threads_generating_concurrently_never_collide(connect: Connect) -> None:
    conns = [connect() for _ in range(8)]
    results: list[list[str]] = [[] for _ in conns]
    errors: list[BaseException] = []
    start = threading.Barrier(len(conns))

    def worker(i: int) -> None:
        try:
            start.wait()
            for k in range(15):
                with conns[i].transaction():
                    results[i] += gen(conns[i], "part" if k % 2 else 1, 200)
                    results[i].append(
                        str(scalar(conns[i], "SELECT idmint.gen_entity_number('part')"))
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(conns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    everything = [x for r in results for x in r]
    assert len(everything) == 8 * 15 * 201
    assert len(set(everything)) == len(everything)
    assert issued(conns[0], 1) == len(everything)
    assert scalar(conns[0], "SELECT count(*) FROM idmint.entity_numbers") == len(everything)


def test_claim_entity_number(db: psycopg.Connection) -> None:
    assert scalar(db, "SELECT idmint.claim_entity_number('1234567')") == "1234567"
    assert scalar(db, "SELECT idmint.claim_entity_number('2234567', 'material')") == "2234567"
    assert scalar(db, "SELECT idmint.claim_entity_number('3234567', 3)") == "3234567"
    assert scalar(db, "SELECT idmint.claim_entity_number('4234567', '4')") == "4234567"
    assert scalar(db, "SELECT idmint.claim_entity_number('5234567', NULL)") == "5234567"
    assert [issued(db, p) for p in range(1, 6)] == [1, 1, 1, 1, 1]
    row = db.execute(
        "SELECT how, issued_by FROM idmint.entity_numbers WHERE number = 1234567"
    ).fetchone()
    assert row == ("claim", scalar(db, "SELECT session_user"))
    generated = gen(db, "part", 1)[0]
    before = table_snapshot(db)
    for number, entity, sqlstate in [
        ("1234567", None, "ID004"),
        (generated, None, "ID004"),
        (generated, "part", "ID004"),
        ("2234567", "part", "ID003"),
        ("7234567", None, "ID008"),
        ("7234567", "part", "ID003"),
        (" 1234568", None, "ID003"),
        ("1234568 ", None, "ID003"),
        ("123456", None, "ID003"),
        ("12345678", None, "ID003"),
        ("0123456", None, "ID003"),
        ("1234a67", None, "ID003"),
        ("\uff11\uff12\uff13\uff14\uff15\uff16\uff17", None, "ID003"),  # full-width digits
        (None, None, "ID003"),
        ("", None, "ID003"),
    ]:
        with raises_sqlstate(sqlstate):
            db.execute("SELECT idmint.claim_entity_number(%s, %s::text)", [number, entity])
    assert table_snapshot(db) == before


@pytest.mark.parametrize(
    ("number", "entity", "expected"),
    [
        ("1234567", None, True),
        ("1234567", "part", True),
        ("1234567", "1", True),
        ("1234567", 1, True),
        ("1234567", "material", False),
        ("1234567", 2, False),
        ("1234567", "nosuch", False),
        ("1234567", "", False),
        ("1234567", 0, False),
        ("1234567", 2**31 - 1, False),
        ("7234567", None, False),
        ("0234567", None, False),
        ("123456", None, False),
        (" 1234567", None, False),
        (None, None, False),
        (None, "part", False),
        ("", None, False),
    ],
)
def test_is_valid_entity_number(
    db: psycopg.Connection, number: object, entity: object, expected: bool
) -> None:
    cast = "int" if isinstance(entity, int) else "text"
    query = f"SELECT idmint.is_valid_entity_number(%s, %s::{cast})"
    assert scalar(db, query, [number, entity]) is expected
    if entity is None:
        assert scalar(db, "SELECT idmint.is_valid_entity_number(%s)", [number]) is expected


def test_add_entity_type(db: psycopg.Connection) -> None:
    assert db.execute("SELECT * FROM idmint.add_entity_type(6, 'invoice')").fetchone() == (
        6,
        "invoice",
    )
    assert re.fullmatch(r"6[0-9]{6}", gen(db, "invoice", 1)[0])
    assert re.fullmatch(r"6[0-9]{6}", gen(db, 6, 1)[0])
    assert issued(db, 6) == 2
    before = table_snapshot(db)
    for prefix, name, sqlstate in [
        (6, "other", "ID004"),
        (7, "invoice", "ID004"),
        (1, "part", "ID004"),
        (0, "zero", "ID003"),
        (10, "ten", "ID003"),
        (None, "x", "ID003"),
        (7, None, "ID003"),
        (7, "", "ID003"),
        (7, " padded", "ID003"),
        (7, "padded\n", "ID003"),
        (7, "7", "ID003"),
        (7, "x" * 101, "ID003"),
    ]:
        with raises_sqlstate(sqlstate):
            db.execute("SELECT idmint.add_entity_type(%s::int, %s::text)", [prefix, name])
    assert table_snapshot(db) == before


def test_audit_records_who_when_and_how(connect: Connect) -> None:
    conn = connect(application_name="erp-import")
    gen(conn, "part", 30)
    conn.execute("SELECT idmint.gen_entity_number(2)")
    rows = conn.execute(
        "SELECT number / 1000000, how, issued_by, count(*),"
        " bool_and(issued_at BETWEEN now() - interval '1 minute' AND now() + interval '1 minute'),"
        " bool_and(bound_at IS NULL)"
        " FROM idmint.entity_numbers GROUP BY 1, 2, 3 ORDER BY 1"
    ).fetchall()
    user = scalar(conn, "SELECT session_user")
    assert rows == [(1, "gen", user, 30, True, True), (2, "gen", user, 1, True, True)]


def test_all_but_k_then_exactly_k_then_id005(connect: Connect) -> None:
    """High fill (deck mode), capacity alerts at 0.6/0.8/0.95 and the exact ID005 check."""
    db = connect()
    listener = connect()
    listener.execute("LISTEN idmint_capacity")
    db.execute("SELECT idmint.add_entity_type(9, 'nearly-full')")
    k = 10
    issued_numbers: set[str] = set()
    for i in range(9):
        got = gen(db, 9, 100_000)
        issued_numbers.update(got)
        if i == 8:  # dealt from the shard decks (built from 75 % shard fill on): still flat
            decks = "SELECT count(*) FROM idmint.entity_shards WHERE prefix = 9 AND deck"
            assert int(scalar(db, decks)) >= 100  # type: ignore[arg-type]
            buckets = Counter(x[1] for x in got)
            assert all(0.08 <= c / 100_000 <= 0.12 for c in buckets.values()), buckets
    issued_numbers.update(gen(db, 9, 99_990 - 1000))
    # Claims work in deck mode too (and take the number out of the deck).
    free_now = sorted(set(range(9_000_000, 10_000_000)) - {int(x) for x in issued_numbers})
    claimed = [str(x) for x in free_now[:1000]]
    for number in claimed:
        assert scalar(db, "SELECT idmint.claim_entity_number(%s, 9)", [number]) == number
    issued_numbers.update(claimed)
    assert len(issued_numbers) == 1_000_000 - k
    row = db.execute(
        "SELECT issued, free, utilization FROM idmint.entity_capacity WHERE prefix = 9"
    ).fetchone()
    assert row is not None and (row[0], row[1]) == (1_000_000 - k, k) and float(row[2]) == 0.99999

    thresholds = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=3)]
    assert [t["threshold"] for t in thresholds] == [0.6, 0.8, 0.95]
    assert all(t["scope"] == "entity" and t["key"] == 9 for t in thresholds)

    state = "SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM idmint.{} x"
    counts = [scalar(db, "SELECT count(*) FROM idmint.entity_numbers")] + [
        scalar(db, state.format(t)) for t in ("entity_free", "entity_shards")
    ]
    with raises_sqlstate("ID005"):
        gen(db, "nearly-full", k + 1)
    assert [scalar(db, "SELECT count(*) FROM idmint.entity_numbers")] + [
        scalar(db, state.format(t)) for t in ("entity_free", "entity_shards")
    ] == counts
    assert issued(db, 9) == 1_000_000 - k

    last = gen(db, 9, k)
    expected = {str(x) for x in range(9_000_000, 10_000_000)} - issued_numbers
    assert set(last) == expected and len(last) == k
    assert issued(db, 9) == 1_000_000
    with raises_sqlstate("ID005"):
        gen(db, 9, 1)
    with raises_sqlstate("ID004"):
        db.execute("SELECT idmint.claim_entity_number(%s)", [last[0]])
