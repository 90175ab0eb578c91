"""Entity numbers: idmint.gen_entity_numbers against the ADR-017 app-side generator and the
plain-insert floor, at several fill levels of a type.

Two floors: the peer's (known free numbers inserted into its one-column table) and idmint's
table floor (known free numbers inserted into idmint.entity_numbers with the audit columns
every issued number carries, as the owner). The second is what any engine that keeps an
audit row per number must pay at least.

Every measured call runs in its own transaction that is rolled back afterwards, so fill
levels stay fixed across repetitions (idmint registers numbers in the caller's
transaction; a rollback frees them). The commit is therefore excluded for all three.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

CAPACITY = 1_000_000
FILLS = (0.0, 50.0, 80.0, 95.0, 99.9, 99.99)
NS = (1, 30, 100, 3000, 100_000)
FILL_CALL = 100_000  # idmint is filled through gen_entity_numbers calls of this size
PEER_MAX_RETRIES = 10  # the ADR's MAX_RETRIES (its value is not given there)
UNBOUNDED_LIMIT_S = 30.0


def filled(fill: float) -> int:
    return round(CAPACITY * fill / 100)


def prefix_of(i: int) -> int:
    return i + 1  # fill level i uses entity type prefix i+1 (types 6.. are added)


# --- the ADR-017 peer ------------------------------------------------------------------


@dataclass
class PeerResult:
    numbers: list[int]
    rounds: int
    failed: bool
    candidates: int = 0


def buffer_factor(fill: float) -> int:
    """ADR-017: a 2x buffer, 3x above 50 % and 5x above 80 % full."""
    return 2 if fill < 0.5 else 3 if fill < 0.8 else 5


def peer_generate(
    conn: psycopg.Connection[Any],
    table: str,
    prefix: int,
    n: int,
    fill: float,
    max_retries: int | None = PEER_MAX_RETRIES,
    deadline: float | None = None,
) -> PeerResult:
    """ADR-017's generator, as fast as its design allows.

    Draws candidates in Python (buffer by fill), probes them with one `= ANY` query per
    round, retries rounds for the shortfall up to max_retries, and registers the chosen
    numbers with one array INSERT. The fill is known for free (cached by the app).
    """
    lo = prefix * CAPACITY
    population = range(lo, lo + CAPACITY)
    factor = buffer_factor(fill)
    chosen: list[int] = []
    seen: set[int] = set()
    rounds = 0
    drawn = 0
    probe = f"SELECT number FROM {table} WHERE number = ANY(%b)"
    while len(chosen) < n:
        if max_retries is not None and rounds >= max_retries:
            return PeerResult(chosen, rounds, True, drawn)
        if deadline is not None and time.perf_counter() > deadline:
            return PeerResult(chosen, rounds, True, drawn)
        rounds += 1
        need = n - len(chosen)
        k = min(need * factor, CAPACITY)
        cands = [c for c in random.sample(population, k) if c not in seen]
        drawn += k
        taken = {r[0] for r in conn.execute(probe, [cands]).fetchall()}
        for c in cands:
            if c not in taken:
                seen.add(c)
                chosen.append(c)
                if len(chosen) == n:
                    break
    conn.execute(f"INSERT INTO {table} (number) SELECT unnest(%b::integer[])", [chosen])
    return PeerResult(chosen, rounds, False, drawn)


# --- fixtures ----------------------------------------------------------------------------


def setup(conn: psycopg.Connection[Any], fills: tuple[float, ...]) -> list[dict[str, Any]]:
    """Fill one idmint type and one peer table per fill level; returns fill timings."""
    out = []
    conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
    for i, fill in enumerate(fills):
        p = prefix_of(i)
        if p > 5:
            conn.execute("SELECT idmint.add_entity_type(%s, %s)", [p, f"bench fill {fill}"])
        count = filled(fill)
        t0 = time.perf_counter()
        left = count
        calls = []
        while left > 0:
            k = min(FILL_CALL, left)
            c0 = time.perf_counter()
            with conn.transaction():
                conn.execute("SELECT count(*) FROM idmint.gen_entity_numbers(%s, %s)", [p, k])
            calls.append(round(time.perf_counter() - c0, 3))
            left -= k
        t_idmint = time.perf_counter() - t0
        table = f"bench.peer_{p}"
        conn.execute(f"CREATE TABLE {table} (number integer PRIMARY KEY)")
        conn.execute(
            f"INSERT INTO {table} (number) SELECT %s + x FROM"
            " (SELECT x FROM generate_series(0, %s - 1) x ORDER BY random() LIMIT %s) s",
            [p * CAPACITY, CAPACITY, count],
        )
        out.append(
            {
                "fill": fill,
                "prefix": p,
                "count": count,
                "idmint_fill_s": t_idmint,
                "idmint_fill_calls_s": calls,
            }
        )
    conn.execute("VACUUM ANALYZE")
    conn.execute("CHECKPOINT")
    return out


def free_sample(conn: psycopg.Connection[Any], table: str, prefix: int, n: int) -> list[int]:
    row = conn.execute(
        f"SELECT array_agg(g) FROM (SELECT g FROM generate_series(%s, %s) g"
        f" WHERE NOT EXISTS (SELECT FROM {table} t WHERE t.number = g)"
        " ORDER BY random() LIMIT %s) s",
        [prefix * CAPACITY, prefix * CAPACITY + CAPACITY - 1, n],
    ).fetchone()
    assert row is not None
    return list(row[0])


# --- measuring ---------------------------------------------------------------------------


@dataclass
class EPoint:
    fill: float
    n: int
    idmint_ms: list[float] = field(default_factory=list)
    peer_ms: list[float] = field(default_factory=list)
    floor_ms: list[float] = field(default_factory=list)
    table_floor_ms: list[float] = field(default_factory=list)
    peer_failures: int = 0
    peer_rounds: list[int] = field(default_factory=list)
    idmint_errors: list[str] = field(default_factory=list)
    peer_unbounded_ms: float | None = None
    peer_unbounded_rounds: int | None = None
    peer_unbounded_failed: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        def med(xs: list[float]) -> float | None:
            return statistics.median(xs) if xs else None

        return {
            "fill": self.fill,
            "n": self.n,
            "idmint_ms": med(self.idmint_ms),
            "peer_ms": med(self.peer_ms),
            "floor_ms": med(self.floor_ms),
            "table_floor_ms": med(self.table_floor_ms),
            "samples": len(self.idmint_ms),
            "peer_failures": self.peer_failures,
            "peer_rounds_median": med([float(r) for r in self.peer_rounds]),
            "idmint_errors": self.idmint_errors,
            "peer_unbounded_ms": self.peer_unbounded_ms,
            "peer_unbounded_rounds": self.peer_unbounded_rounds,
            "peer_unbounded_failed": self.peer_unbounded_failed,
            "raw": {
                "idmint_ms": self.idmint_ms,
                "peer_ms": self.peer_ms,
                "floor_ms": self.floor_ms,
                "table_floor_ms": self.table_floor_ms,
            },
        }


def iterations(n: int, quick: bool) -> int:
    if n <= 100:
        return 10 if quick else 20
    if n <= 3000:
        return 3 if quick else 7
    return 1 if quick else 3


def _time_idmint(conn: psycopg.Connection[Any], prefix: int, n: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    rows = conn.execute("SELECT idmint.gen_entity_numbers(%s, %s)", [prefix, n]).fetchall()
    dt = time.perf_counter() - t0
    conn.rollback()
    return dt * 1000, len(rows)


def _time_peer(
    conn: psycopg.Connection[Any], table: str, prefix: int, n: int, fill: float
) -> tuple[float, PeerResult]:
    t0 = time.perf_counter()
    res = peer_generate(conn, table, prefix, n, fill / 100)
    dt = time.perf_counter() - t0
    conn.rollback()
    return dt * 1000, res


def _time_floor(conn: psycopg.Connection[Any], table: str, numbers: list[int]) -> float:
    t0 = time.perf_counter()
    conn.execute(f"INSERT INTO {table} (number) SELECT unnest(%b::integer[])", [numbers])
    dt = time.perf_counter() - t0
    conn.rollback()
    return dt * 1000


def _time_table_floor(conn: psycopg.Connection[Any], numbers: list[int]) -> float:
    """The same insert into idmint's own table, with the columns idmint writes per number."""
    t0 = time.perf_counter()
    conn.execute(
        "INSERT INTO idmint.entity_numbers (number, issued_at, how, issued_by, issued_xid)"
        " SELECT x, statement_timestamp(), 'gen', session_user, pg_current_xact_id()"
        " FROM unnest(%b::integer[]) AS x ORDER BY x",
        [numbers],
    )
    dt = time.perf_counter() - t0
    conn.rollback()
    return dt * 1000


def points(fills: tuple[float, ...], ns: tuple[int, ...]) -> list[tuple[int, float, int]]:
    out = []
    for i, fill in enumerate(fills):
        free = CAPACITY - filled(fill)
        for n in ns:
            if n <= free:
                out.append((i, fill, n))
    return out


def measure(
    conn: psycopg.Connection[Any],
    maint: psycopg.Connection[Any],
    fills: tuple[float, ...],
    ns: tuple[int, ...],
    quick: bool,
    log: Any = print,
) -> list[EPoint]:
    """`conn` is a non-autocommit connection for the timed calls; `maint` autocommit."""
    results = []
    for i, fill, n in points(fills, ns):
        p = prefix_of(i)
        table = f"bench.peer_{p}"
        pt = EPoint(fill, n)
        free_numbers = free_sample(maint, table, p, n)
        free_in_idmint = free_sample(maint, "idmint.entity_numbers", p, n)
        # warm-up (plans, caches), not recorded
        _time_idmint(conn, p, n)
        _time_peer(conn, table, p, n, fill)
        _time_floor(conn, table, free_numbers)
        _time_table_floor(conn, free_in_idmint)
        for it in range(iterations(n, quick)):
            order = [0, 1, 2, 3][it % 4 :] + [0, 1, 2, 3][: it % 4]  # rotate who goes first
            for who in order:
                if who == 0:
                    try:
                        ms, got = _time_idmint(conn, p, n)
                    except psycopg.Error as e:
                        conn.rollback()
                        pt.idmint_errors.append(f"{e.sqlstate}: {e}")
                        continue
                    if got != n:
                        pt.idmint_errors.append(f"returned {got} of {n}")
                    pt.idmint_ms.append(ms)
                elif who == 1:
                    ms, res = _time_peer(conn, table, p, n, fill)
                    pt.peer_ms.append(ms)
                    pt.peer_rounds.append(res.rounds)
                    pt.peer_failures += res.failed
                elif who == 2:
                    pt.floor_ms.append(_time_floor(conn, table, free_numbers))
                else:
                    pt.table_floor_ms.append(_time_table_floor(conn, free_in_idmint))
        if pt.peer_failures:
            # How long the ADR design takes to actually deliver, with no retry limit.
            t0 = time.perf_counter()
            res = peer_generate(
                conn,
                table,
                p,
                n,
                fill / 100,
                max_retries=None,
                deadline=t0 + UNBOUNDED_LIMIT_S,
            )
            pt.peer_unbounded_ms = (time.perf_counter() - t0) * 1000
            conn.rollback()
            pt.peer_unbounded_rounds = res.rounds
            pt.peer_unbounded_failed = res.failed
        d = pt.as_dict()
        log(
            f"  entity fill {fill:>6}% n={n:>6}: idmint {d['idmint_ms']:.2f} ms,"
            f" peer {d['peer_ms']:.2f} ms ({pt.peer_failures} failed),"
            f" floor {d['floor_ms']:.2f} ms, table floor {d['table_floor_ms']:.2f} ms"
        )
        results.append(pt)
        maint.execute(
            "VACUUM idmint.entity_numbers, idmint.entity_free, idmint.entity_shards,"
            f" idmint.entity_ranges, {table}"
        )
    return results
