"""Nearly full entity types (CONTRACT section 4, revision 0.2): every free number is equally
likely, numbers that a rolled-back call saw tell nothing about later calls, and two calls
that are both short of numbers never deadlock.

The set-up writes idmint's tables directly, as the superuser, so that a test does not
spend a minute filling a type: a fresh type whose only free numbers are 60 in each of two
of its shards, counted and with their decks built, exactly as the engine leaves a shard.
Draws are rolled back one by one inside a server-side loop (a subtransaction each), which
undoes them like a rolled-back transaction: the numbers, the shard holding and the hint.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter, defaultdict

import psycopg
import pytest

from tests.util import Connect, gen, issued, only_free, scalar

PREFIX = 9
FREE_SHARDS = (17, 123)
PER_SHARD = 60

# Draws in one server round trip, each undone: `n` numbers per draw, `draws` times.
DRAW_AND_UNDO = """
CREATE TEMP TABLE seen (draw integer, pos integer, number text);
DO $$
DECLARE
    got text[];
BEGIN
    FOR d IN 1 .. %(draws)s LOOP
        BEGIN
            got := ARRAY(SELECT idmint.gen_entity_numbers(9, %(n)s));
            IF %(n)s = 1 THEN
                got := got || idmint.gen_entity_number(9);  -- the single-number path too
            END IF;
            RAISE EXCEPTION 'undo';
        EXCEPTION WHEN raise_exception THEN
            INSERT INTO seen SELECT d, o, x FROM unnest(got) WITH ORDINALITY AS u(x, o);
        END;
    END LOOP;
END $$;
"""


@pytest.fixture
def nearly_full(db: psycopg.Connection) -> set[str]:
    """Type 9 with 120 free numbers, 60 in each of two shards, decks built; returns them."""
    free = only_free(db, PREFIX, {s: (PER_SHARD, True) for s in FREE_SHARDS})
    return {str(n) for numbers in free.values() for n in numbers}


def draw_and_undo(db: psycopg.Connection, n: int, draws: int) -> list[list[str]]:
    db.execute(DRAW_AND_UNDO % {"n": n, "draws": draws})
    rows = db.execute("SELECT draw, number FROM seen ORDER BY draw, pos").fetchall()
    db.execute("DROP TABLE seen")
    out: dict[int, list[str]] = defaultdict(list)
    for d, x in rows:
        out[d].append(x)
    return list(out.values())


def test_every_free_number_is_equally_likely(db: psycopg.Connection, nearly_full: set[str]) -> None:
    draws = draw_and_undo(db, 1, 1200)  # 2 400 single numbers, both single-number paths
    counts = Counter(x for d in draws for x in d)
    assert set(counts) == nearly_full  # every free number comes out, nothing else
    expected = sum(counts.values()) / len(nearly_full)  # 20 each
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    # 119 degrees of freedom: mean 119, sd 15.4. Dealing a run of a stored shuffle from
    # a random point (0.2's first decks) weights each card by the gap before it: about 2 400.
    assert chi2 < 200, chi2
    assert issued(db, PREFIX) == 1_000_000 - 2 * PER_SHARD  # everything was undone


def test_a_rolled_back_deal_says_nothing_about_the_next(
    db: psycopg.Connection, nearly_full: set[str]
) -> None:
    draws = draw_and_undo(db, 5, 600)
    assert all(len(set(d)) == 5 and set(d) <= nearly_full for d in draws)
    # Which number followed which: after a rollback a replayed or rotated order would show
    # the same successor again and again. Fresh uniform deals spread each number's
    # successors over its shard's other 59 (the most common one: about 1 in 8).
    followers: dict[str, Counter[str]] = defaultdict(Counter)
    for d in draws:
        for x, y in itertools.pairwise(d):
            followers[x][y] += 1
    share = sum(c.most_common(1)[0][1] for c in followers.values()) / sum(
        sum(c.values()) for c in followers.values()
    )
    assert share < 0.35, share
    # Consecutive deals share about 0.2 numbers on average (same shard half the time).
    overlap = sum(len(set(a) & set(b)) for a, b in itertools.pairwise(draws)) / (len(draws) - 1)
    assert overlap < 1, overlap


def test_two_short_calls_never_deadlock(connect: Connect, nearly_full: set[str]) -> None:
    """Each holds one shard and asks for more than the other free numbers: one gets ID005
    (not 40P01) and, once it has rolled back, the other gets its numbers. With card
    sharing one may also be served first (its own shard and a card of the other's) while
    the other has not dealt yet: then the other waits for it (the free numbers no open
    transaction took are fewer than it asks for) until its lock_timeout (55P03)."""
    a, b = connect(autocommit=False), connect(autocommit=False)
    first = {c: set(gen(c, PREFIX, 1)) for c in (a, b)}  # b skips the shard a holds
    assert first[a] != first[b]
    out: dict[psycopg.Connection, object] = {}
    go = threading.Barrier(2)

    def take(conn: psycopg.Connection) -> None:
        conn.execute("SET lock_timeout = '5s'")
        go.wait()
        try:
            out[conn] = len(gen(conn, PREFIX, PER_SHARD))
        except psycopg.Error as e:
            out[conn] = e.sqlstate
            conn.rollback()  # the victim ends: the other one can go on

    threads = [threading.Thread(target=take, args=(c,)) for c in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, out.values())) in (["60", "ID005"], ["55P03", "60"]), out
    winner = a if out[a] == PER_SHARD else b
    winner.commit()
    assert issued(winner, PREFIX) == 1_000_000 - 2 * PER_SHARD + 1 + PER_SHARD
    assert scalar(
        winner, "SELECT count(*) FROM idmint.entity_numbers WHERE number / 1000000 = 9"
    ) == (1_000_000 - 2 * PER_SHARD + 1 + PER_SHARD)
