"""What an app cannot do to the entity engine's per-transaction state, and when a claim
waits (CONTRACT section 4).

A transaction's shard hint lives in a setting an app can overwrite (`SET LOCAL
idmint.entity_<prefix>`); the committed counts, the shards an issuer inserts into and the
decks must not depend on it. "Never waits" is decided by the server (lock_timeout).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from tests.util import Connect, raises_sqlstate, scalar, shard_of, wait_until_blocked


def committed(db: psycopg.Connection, prefix: int) -> tuple[int, int, int]:
    """(entity_capacity.issued, the shard counts plus their steal rows, rows) as another
    session sees them."""
    row = db.execute(
        "SELECT (SELECT issued FROM idmint.entity_capacity WHERE prefix = %(p)s),"
        " (SELECT sum(issued) FROM idmint.entity_shards WHERE prefix = %(p)s)"
        " + (SELECT coalesce(sum(n), 0) FROM idmint.entity_steals WHERE prefix = %(p)s),"
        " (SELECT count(*) FROM idmint.entity_numbers WHERE number / 1000000 = %(p)s)",
        {"p": prefix},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@pytest.fixture
def app_role(db: psycopg.Connection) -> Iterator[str]:
    """A login role whose only privilege is membership in idmint_user."""
    db.execute(
        "DO $$ BEGIN CREATE ROLE idmint_test_state_app LOGIN;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    db.execute("GRANT idmint_user TO idmint_test_state_app")
    yield "idmint_test_state_app"


def overwrite_hint(conn: psycopg.Connection, prefix: int, mine: int) -> str:
    """Set every row's `mine` (third column) of this transaction's hint to `mine`."""
    return str(
        scalar(
            conn,
            "SELECT set_config(%(g)s, (SELECT array_agg(ARRAY[r[1], r[2], %(m)s] || r[4:])::text"
            " FROM (SELECT ARRAY(SELECT unnest(s[i:i][:])) AS r"
            "       FROM (SELECT current_setting(%(g)s)::integer[] AS s) x,"
            "            generate_subscripts(x.s, 1) AS i) y), true)",
            {"g": f"idmint.entity_{prefix}", "m": mine},
        )
    )


def test_an_app_cannot_misstate_the_committed_count(
    db: psycopg.Connection, connect: Connect, app_role: str
) -> None:
    app = connect(user=app_role, autocommit=False)
    app.execute("SELECT idmint.gen_entity_number('part')")
    app.execute("SELECT idmint.gen_entity_numbers('part', 3)")
    assert "4000" in overwrite_hint(app, 1, 4000)  # as if 4 000 numbers were taken per shard
    app.execute("SELECT idmint.gen_entity_number('part')")  # the fast path after the change
    app.commit()
    assert committed(db, 1) == (5, 5, 5)
    # The other way round: claiming fewer than taken.
    app.execute("SELECT idmint.gen_entity_numbers('part', 20)")
    overwrite_hint(app, 1, 0)
    app.commit()
    assert committed(db, 1) == (25, 25, 25)
    # And the app's own view counts its uncommitted rows, not the setting.
    app.execute("SELECT idmint.gen_entity_numbers('part', 7)")
    overwrite_hint(app, 1, 3000)
    assert scalar(app, "SELECT issued FROM idmint.entity_capacity WHERE prefix = 1") == 32
    app.rollback()
    assert committed(db, 1) == (25, 25, 25)


def test_a_forged_hint_cannot_make_an_issuer_use_another_transactions_shard(
    db: psycopg.Connection, connect: Connect, app_role: str
) -> None:
    holder = connect(autocommit=False)
    held = str(scalar(holder, "SELECT idmint.gen_entity_number('part')"))
    s = shard_of(db, held)
    app = connect(user=app_role, autocommit=False)
    app.execute("SET lock_timeout = '1s'")
    app.execute("SELECT set_config('idmint.entity_1', %s, true)", [f"{{{{{s},0,0,0}}}}"])
    got = [str(scalar(app, "SELECT idmint.gen_entity_number('part')")) for _ in range(20)]
    got += [r[0] for r in app.execute("SELECT idmint.gen_entity_numbers('part', 200)")]
    assert len(set(got)) == 220 and held not in got
    assert all(shard_of(db, n) != s for n in got)  # never from the shard the holder has
    app.commit()
    holder.commit()
    assert committed(db, 1) == (221, 221, 221)


def test_a_forged_hint_cannot_issue_a_card_of_a_deck(
    db: psycopg.Connection, connect: Connect, app_role: str
) -> None:
    """A shard with a deck: whatever the hint says, its numbers leave the deck when issued."""
    db.execute("SELECT idmint.add_entity_type(9, 'decked')")
    db.execute("SELECT count(*) FROM idmint.gen_entity_numbers(9, 100000)")  # builds decks
    s, card = db.execute(
        "SELECT f.shard, f.number FROM idmint.entity_free f WHERE f.prefix = 9 LIMIT 1"
    ).fetchone()  # type: ignore[misc]
    app = connect(user=app_role, autocommit=False)
    app.execute("SELECT idmint.claim_entity_number(%s)", [str(card)])  # takes the card
    app.execute("SELECT set_config('idmint.entity_9', %s, true)", [f"{{{{{s},0,0,0}}}}"])
    got = [str(scalar(app, "SELECT idmint.gen_entity_number(9)")) for _ in range(50)]
    app.commit()
    assert len(set(got)) == 50
    # No number is both issued and still a card: later deals cannot hand it out again.
    assert (
        scalar(
            db,
            "SELECT count(*) FROM idmint.entity_free f JOIN idmint.entity_numbers e USING (number)",
        )
        == 0
    )
    assert committed(db, 9) == (100_051, 100_051, 100_051)


def test_a_claim_waits_only_for_the_holder_of_the_numbers_shard(
    db: psycopg.Connection, connect: Connect
) -> None:
    """Documented choice (sql/50, _claim_entity_number): a claim takes the number's shard
    like a generator, so it waits while an open transaction holds that shard (1/200 of
    the type); any other claim, and every generator, goes on at once."""
    holder = connect(autocommit=False)
    held = int(str(scalar(holder, "SELECT idmint.gen_entity_number('part')")))
    s = shard_of(db, held)
    candidates = range(1_000_000, 1_010_000)
    free_here = next(n for n in candidates if n != held and shard_of(db, n) == s)
    free_elsewhere = next(n for n in candidates if shard_of(db, n) != s)
    claimer = connect()
    claimer.execute("SET lock_timeout = '1s'")
    assert scalar(claimer, "SELECT idmint.claim_entity_number(%s)", [str(free_elsewhere)])
    assert scalar(claimer, "SELECT idmint.gen_entity_number('part')")
    with raises_sqlstate("55P03"):  # lock_not_available: it would wait for the holder
        claimer.execute("SELECT idmint.claim_entity_number(%s)", [str(free_here)])
    claimer.execute("SET lock_timeout = '1min'")
    out: list[object] = []

    def claim() -> None:
        out.append(scalar(claimer, "SELECT idmint.claim_entity_number(%s)", [str(free_here)]))

    t = threading.Thread(target=claim)
    t.start()
    observer = connect()
    assert wait_until_blocked(observer, claimer.info.backend_pid) == [holder.info.backend_pid]
    holder.commit()
    t.join()
    assert out == [str(free_here)]
    assert committed(db, 1) == (4, 4, 4)
