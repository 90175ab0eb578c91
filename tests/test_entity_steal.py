"""Card sharing (contract §4: "A call may wait only when the free numbers not held by open
transactions are fewer than it asks for"): near exhaustion a transaction that took one
number of a deck shard does not hold the shard's other free numbers. Other transactions
take cards of that deck (entity_steals counts them), the holder's deals pass over them,
and counts stay exact on committed state.

The first three tests come from an adversarial review (attack2); the set-ups write
idmint's tables as the superuser exactly as the engine leaves them (tests.util.only_free);
calls under test are made as an app role that is a member of idmint_user only.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.util import Connect, gen, issued, only_free, raises_sqlstate, scalar, wait_until_blocked

PREFIX = 9


@pytest.fixture
def app_role(db: psycopg.Connection) -> Iterator[str]:
    """An app role: member of idmint_user only, owner of its own schema."""
    role = f"steal_app_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    db.execute(sql.SQL("GRANT idmint_user TO {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("CREATE SCHEMA steal AUTHORIZATION {}").format(sql.Identifier(role)))
    yield role
    db.execute("DROP SCHEMA steal CASCADE")
    db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))


@pytest.fixture
def app_connect(connect: Connect, app_role: str) -> Connect:
    def _connect(**kwargs: object) -> psycopg.Connection:
        return connect(user=app_role, **kwargs)

    return _connect


def shard_of(db: psycopg.Connection, number: int | str) -> int:
    return int(
        scalar(
            db,
            "SELECT (get_byte(k, v % 200) + get_byte(k, 400 + (v / 200) % 100)"
            " + get_byte(k, 500 + v / 20000)) % 200"
            " FROM (SELECT r.shard_key AS k, %s::integer % 1000000 AS v"
            "       FROM idmint.entity_ranges r WHERE r.prefix = %s) x",
            [int(number), PREFIX],
        )  # type: ignore[arg-type]
    )


def assert_exact(db: psycopg.Connection) -> None:
    """With no transaction open: every shard's committed count (issued plus its steal
    rows) equals its rows, every deck holds exactly its free numbers, and
    entity_capacity says the number of rows."""
    bad = db.execute(
        """
        WITH k AS (SELECT r.shard_key AS k FROM idmint.entity_ranges r WHERE r.prefix = %(p)s),
        rows AS (
            SELECT (get_byte(k, v %% 200) + get_byte(k, 400 + (v / 200) %% 100)
                    + get_byte(k, 500 + v / 20000)) %% 200 AS shard, count(*) AS n
            FROM (SELECT e.number %% 1000000 AS v FROM idmint.entity_numbers e
                  WHERE e.number / 1000000 = %(p)s) e, k
            GROUP BY 1)
        SELECT x.shard, x.issued, coalesce(t.n, 0) AS stolen, coalesce(rows.n, 0) AS rows,
               (SELECT count(*) FROM idmint.entity_free f WHERE f.prefix = x.prefix AND f.shard = x.shard)
                   AS cards, x.deck
        FROM idmint.entity_shards x
        LEFT JOIN (SELECT t.shard, sum(t.n) AS n FROM idmint.entity_steals t
                   WHERE t.prefix = %(p)s GROUP BY 1) t ON t.shard = x.shard
        LEFT JOIN rows ON rows.shard = x.shard
        WHERE x.prefix = %(p)s
          AND (x.issued + coalesce(t.n, 0) <> coalesce(rows.n, 0)
               OR x.deck AND (SELECT count(*) FROM idmint.entity_free f
                              WHERE f.prefix = x.prefix AND f.shard = x.shard) <> 5000 - coalesce(rows.n, 0))
        """,
        {"p": PREFIX},
    ).fetchall()
    assert bad == []
    rows = scalar(db, "SELECT count(*) FROM idmint.entity_numbers WHERE number / 1000000 = %s", [PREFIX])
    assert issued(db, PREFIX) == rows


def steals(db: psycopg.Connection) -> int:
    return int(scalar(db, "SELECT coalesce(sum(n), 0) FROM idmint.entity_steals"))  # type: ignore[arg-type]


# --- from attack2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["gen_entity_number(9)", "gen_entity_numbers(9, 1)"])
def test_a_call_does_not_wait_for_numbers_nobody_took(
    db: psycopg.Connection, app_connect: Connect, call: str
) -> None:
    """120 free numbers, 60 in each of two deck shards; b takes one (`call`) and stays
    open; a asks for 61: 119 free numbers are not held by any open transaction, so a must
    not wait (lock_timeout 1s)."""
    only_free(db, PREFIX, {17: (60, True), 123: (60, True)})
    a, b = app_connect(autocommit=False), app_connect(autocommit=False)
    b.execute(f"SELECT idmint.{call}").fetchall()
    a.execute("SET lock_timeout = '1s'")
    try:
        got = gen(a, PREFIX, 61)
    except psycopg.Error as e:
        pytest.fail(f"{e.sqlstate}: {e}")
    assert len(set(got)) == 61
    a.commit()
    b.commit()
    assert_exact(db)
    assert issued(db, PREFIX) == 1_000_000 - 120 + 62
