"""The installed `idmint` command, run in subprocesses against the real test cluster: every
command, its output, its exit codes and its stderr on errors (never a traceback)."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

import idmint
from tests.util import wait_expired

IDMINT = str(Path(sys.executable).with_name("idmint"))
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG") and k not in ("DATABASE_URL", "PYTHONPATH")
    }
    env.update(extra)
    return env


def run(
    *args: str,
    dsn: str | None = None,
    env: dict[str, str] | None = None,
    rc: int | None = 0,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = [IDMINT, *(["--dsn", dsn] if dsn is not None else []), *args]
    p = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=120,
        cwd=cwd,
    )
    assert "Traceback" not in p.stderr, p.stderr
    assert "Traceback" not in p.stdout, p.stdout
    if rc is not None:
        assert p.returncode == rc, f"{argv}: rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def refused(*args: str, dsn: str, sqlstate: str, rc: int = 1) -> str:
    """Run a command that the server refuses; returns stderr after checking its shape."""
    p = run(*args, dsn=dsn, rc=rc)
    assert p.stdout == ""
    first = p.stderr.splitlines()[0]
    assert first.startswith(f"idmint: error {sqlstate}: "), p.stderr
    return p.stderr


def lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    return p.stdout.splitlines()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def add_fleet(dsn: str, name: str, *opts: str) -> tuple[str, str]:
    code, fleet_id = run("fleet", "add", name, *opts, dsn=dsn).stdout.rstrip("\n").split("\t")
    return code, fleet_id


# -- help and usage ---------------------------------------------------------------------------

COMMANDS: list[list[str]] = [
    [],
    ["migrate"],
    ["rollback"],
    ["status"],
    ["fleet"],
    ["fleet", "add"],
    ["fleet", "list"],
    ["driver-id"],
    ["reserve"],
    ["confirm"],
    ["release"],
    ["numbers"],
    ["claim"],
    ["cleanup"],
    ["demo"],
    ["reset"],
    ["history"],
    ["types"],
    ["types", "list"],
    ["types", "add"],
    ["backfill"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "idmint")
def test_help_on_every_command(command: list[str]) -> None:
    p = run(*command, "--help")
    assert p.stdout.startswith("usage: idmint" + "".join(" " + c for c in command)), p.stdout
    assert p.stderr == ""


def test_top_level_help_lists_every_command() -> None:
    out = run("--help").stdout
    for name in (
        "migrate", "rollback", "status", "fleet", "driver-id", "reserve", "confirm",
        "release", "numbers", "claim", "cleanup", "demo", "reset", "history", "types",
        "backfill",
    ):  # fmt: skip
        assert re.search(rf"^\s+{name}\s", out, re.M), name
    assert "--dsn" in out


def test_version_and_python_m() -> None:
    assert run("--version").stdout.strip() == "idmint 0.1.0"
    p = subprocess.run(
        [sys.executable, "-m", "idmint", "--version"], capture_output=True, text=True, timeout=60
    )
    assert (p.returncode, p.stdout.strip()) == (0, "idmint 0.1.0")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["fleet"],
        ["fleet", "add"],
        ["fleet", "add", "X", "--max-drivers", "many"],
        ["driver-id"],
        ["driver-id", "ABC", "-n", "0"],
        ["driver-id", "ABC", "-n", "2", "--request-key", "k"],
        ["reserve", "ABC", "--ttl", "5x"],
        ["reserve", "ABC", "--ttl", ""],
        ["confirm"],
        ["release"],
        ["numbers", "part"],
        ["numbers", "part", "-3"],
        ["claim"],
        ["cleanup", "--every", "0"],
        ["cleanup", "--every", "soon"],
        ["rollback", "--steps", "0"],
        ["status", "--window", "lately"],
        # One bounds check for every number and duration (contract 0.2 §7): usage errors,
        # never a database refusal, an overflow or a traceback.
        ["numbers", "part", "0"],
        ["numbers", "part", "100001"],
        ["numbers", "part", "99999999999999999999"],
        ["numbers", "part", "1e3"],
        ["driver-id", "ABC", "-n", "1000"],
        ["driver-id", "ABC", "-n", "2000"],
        ["driver-id", "ABC", "-n", "99999999999999999999"],
        ["fleet", "add", "X", "--max-drivers", "0"],
        ["fleet", "add", "X", "--max-drivers", "1000"],
        ["fleet", "add", "X", "--fleet-id", "notauuid"],
        ["reserve", "ABC", "--ttl", "0s"],
        ["reserve", "ABC", "--ttl", "2d"],
        ["reserve", "ABC", "--ttl", "25h"],
        ["reserve", "ABC", "--ttl", "0.0000001"],
        ["status", "--window", "0s"],
        ["status", "--window", "99999999999999999999d"],
        ["status", "--window", "9" * 400],
        ["status", "--window", "360001d"],
        ["cleanup", "--every", "2d"],
        ["cleanup", "--every", "99999999999999999999d"],
        ["reset"],
        ["reset", "ABC", "1000"],
        ["reset", "ABC", "-1"],
        ["reset", "ABC", "ten"],
        ["history"],
        ["types"],
        ["types", "add", "10", "x"],
        ["types", "add", "0", "x"],
        ["types", "add", "1"],
        ["backfill", "app.parts", "pn"],
    ],
    ids=lambda a: " ".join(a)[:60] or "no-command",
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    # A reachable-looking DSN: usage is checked before any connection is tried.
    p = run(*args, dsn=f"host=127.0.0.1 port={closed_port()} connect_timeout=5", rc=2)
    assert p.stdout == ""
    assert "idmint: error" in p.stderr
    assert p.stderr.splitlines()[0].startswith("usage: idmint")


# -- connections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["migrate"],
        ["rollback"],
        ["status"],
        ["fleet", "list"],
        ["driver-id", "ABC"],
        ["cleanup"],
        ["cleanup", "--every", "1"],
    ],
    ids=lambda c: " ".join(c),
)
def test_connection_errors_exit_3(command: list[str]) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres?connect_timeout=5"
    p = run(*command, dsn=url, rc=3)
    assert p.stdout == ""
    assert p.stderr.startswith("idmint: error 08001: "), p.stderr
    assert "HINT: " in p.stderr


def test_malformed_dsn_and_database_url() -> None:
    p = run("status", dsn="this is not a dsn", rc=3)
    assert p.stderr.startswith("idmint: error 08001: ")
    port = closed_port()
    bad = f"postgresql://postgres@127.0.0.1:{port}/x?connect_timeout=5"
    p = run("driver-id", "ABC", env=clean_env(DATABASE_URL=bad), rc=3)
    assert f"port {port} failed" in p.stderr  # DATABASE_URL was used


def _pg_env(dsn: str) -> dict[str, str]:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    keys = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
    keys["password"] = "PGPASSWORD"
    return clean_env(**{env: str(info[k]) for k, env in keys.items() if info.get(k)})


def test_connection_from_database_url_and_pg_variables(dsn: str) -> None:
    code, _ = add_fleet(dsn, "Env")
    url = psycopg.conninfo.conninfo_to_dict(dsn)
    database_url = "postgresql://{user}@{host}:{port}/{dbname}".format(**url)
    assert run("driver-id", code, env=clean_env(DATABASE_URL=database_url)).stdout == (
        f"DRV-001{code}\n"
    )
    # libpq's PG* variables when there is neither --dsn nor DATABASE_URL
    assert run("driver-id", code, env=_pg_env(dsn)).stdout == f"DRV-002{code}\n"
    # --dsn wins over DATABASE_URL
    bad = f"postgresql://postgres@127.0.0.1:{closed_port()}/x"
    assert run("driver-id", code, dsn=dsn, env=clean_env(DATABASE_URL=bad)).stdout == (
        f"DRV-003{code}\n"
    )


def test_migrate_and_rollback_with_pg_variables_only(dsn: str, db: psycopg.Connection) -> None:
    env = _pg_env(dsn)
    assert lines(run("rollback", env=env)) == ["0001_idmint"]
    assert db.execute("SELECT to_regnamespace('idmint')").fetchone() == (None,)
    assert lines(run("migrate", env=env)) == ["0001_idmint"]
    assert db.execute("SELECT to_regnamespace('idmint') IS NOT NULL").fetchone() == (True,)


# -- migrate / rollback -----------------------------------------------------------------------


def test_migrate_rollback_round_trip(dsn: str, db: psycopg.Connection) -> None:
    p = run("migrate", dsn=dsn)  # the fixture's database is migrated already
    assert (p.stdout, p.stderr) == ("", "idmint: already up to date\n")

    assert lines(run("rollback", dsn=dsn)) == ["0001_idmint"]
    assert db.execute("SELECT to_regnamespace('idmint')").fetchone() == (None,)
    p = run("rollback", "--steps", "3", dsn=dsn)
    assert (p.stdout, p.stderr) == ("", "idmint: nothing to roll back\n")

    err = refused("driver-id", "ABC", dsn=dsn, sqlstate="3F000")
    assert "HINT: is idmint installed in this database? Run: idmint migrate" in err

    assert lines(run("migrate", dsn=dsn)) == ["0001_idmint"]
    code, _ = add_fleet(dsn, "Back")
    assert lines(run("driver-id", code, dsn=dsn)) == [f"DRV-001{code}"]
    assert lines(run("rollback", "--steps", "5", "--yes", dsn=dsn)) == ["0001_idmint"]
    assert lines(run("migrate", dsn=dsn)) == ["0001_idmint"]


# -- fleets -----------------------------------------------------------------------------------


def test_fleet_add_and_list(dsn: str, db: psycopg.Connection) -> None:
    code, fleet_id = add_fleet(dsn, "North Fleet", "--code", "nth", "--max-drivers", "20")
    assert code == "NTH"
    row = db.execute(
        "SELECT fleet_id::text, name, max_drivers FROM idmint.fleets WHERE code = 'NTH'"
    ).fetchone()
    assert row == (fleet_id, "North Fleet", 20)
    other, _ = add_fleet(dsn, "South")
    assert re.fullmatch(r"[A-HJ-NP-Z2-9]{3}", other)
    run("driver-id", "NTH", "-n", "3", dsn=dsn)
    run("reserve", "NTH", dsn=dsn)

    table = lines(run("fleet", "list", dsn=dsn))
    header, rule, *rows = table
    assert header.split() == [
        "CODE", "NAME", "MAX", "ASSIGNED", "RESERVED", "FREE", "UTIL", "FLEET_ID",
    ]  # fmt: skip
    assert set(rule) <= {"-", " "}
    assert len(rows) == 2
    north = next(r for r in rows if r.startswith("NTH "))
    assert north.split() == ["NTH", "North", "Fleet", "20", "3", "1", "16", "20.0%", fleet_id]
    # aligned: every column starts where its header starts (right-aligned ones end there)
    for name in ("NAME", "FLEET_ID"):
        col = header.index(name)
        assert all(r[col - 1] == " " and r[col] != " " for r in rows), (name, table)
    for name in ("MAX", "ASSIGNED", "RESERVED", "FREE", "UTIL"):
        end = header.index(name) + len(name)
        assert all(r[end - 1] != " " and r[end] == " " for r in rows), (name, table)


def test_fleet_add_errors(dsn: str) -> None:
    add_fleet(dsn, "One", "--code", "ABC")
    err = refused("fleet", "add", "Two", "--code", "abc", dsn=dsn, sqlstate="ID004")
    assert "ABC" in err
    refused("fleet", "add", "Bad", "--code", "AB0", dsn=dsn, sqlstate="ID003")
    refused("fleet", "add", "", dsn=dsn, sqlstate="ID003")


def test_fleet_list_empty(dsn: str) -> None:
    header, rule = lines(run("fleet", "list", dsn=dsn))
    assert header.startswith("CODE")
    assert rule.startswith("----")


# -- driver ids -------------------------------------------------------------------------------


def test_driver_id_single_bulk_and_request_key(dsn: str) -> None:
    code, fleet_id = add_fleet(dsn, "Ids", "--max-drivers", "6")
    assert lines(run("driver-id", code.lower(), dsn=dsn)) == [f"DRV-001{code}"]
    assert lines(run("driver-id", fleet_id, "-n", "3", dsn=dsn)) == [
        f"DRV-00{i}{code}" for i in (2, 3, 4)
    ]
    first = lines(run("driver-id", code, "--request-key", "order-7", dsn=dsn))
    again = lines(run("driver-id", code, "--request-key", "order-7", dsn=dsn))
    assert first == again == [f"DRV-005{code}"]

    err = refused("driver-id", code, "-n", "2", dsn=dsn, sqlstate="ID001")
    assert code in err
    assert lines(run("driver-id", code, dsn=dsn)) == [f"DRV-006{code}"]
    refused("driver-id", code, dsn=dsn, sqlstate="ID001")


def test_driver_id_unknown_fleet(dsn: str) -> None:
    err = refused("driver-id", "ZZZ", dsn=dsn, sqlstate="ID002")
    assert "ZZZ" in err.splitlines()[0]
    assert err.splitlines()[-1].startswith("HINT: ")
    refused("driver-id", "ZZ", dsn=dsn, sqlstate="ID003")


def test_reserve_confirm_release(dsn: str, db: psycopg.Connection) -> None:
    code, _ = add_fleet(dsn, "Res")
    rid = run("reserve", code, "--ttl", "90s", "--by", "form-1", dsn=dsn).stdout.strip()
    assert rid == f"DRV-001{code}"
    row = db.execute(
        "SELECT status, reserved_by, expires_at - reserved_at FROM idmint.driver_id_ledger"
        " WHERE driver_id = %s",
        (rid,),
    ).fetchone()
    assert row == ("reserved", "form-1", timedelta(seconds=90))

    refused("confirm", rid, dsn=dsn, sqlstate="ID006")  # held by form-1
    assert lines(run("release", rid, "--by", "form-2", dsn=dsn)) == ["false"]
    assert lines(run("confirm", rid.lower(), "--by", "form-1", dsn=dsn)) == [rid]
    assert lines(run("confirm", rid, "--by", "form-1", dsn=dsn)) == [rid]  # idempotent
    refused("confirm", rid, "--by", "form-2", dsn=dsn, sqlstate="ID006")
    refused("release", rid, "--by", "form-1", dsn=dsn, sqlstate="ID007")

    other = run("reserve", code, "--ttl", "1h30m", dsn=dsn).stdout.strip()
    row = db.execute(
        "SELECT expires_at - reserved_at FROM idmint.driver_id_ledger WHERE driver_id = %s",
        (other,),
    ).fetchone()
    assert row == (timedelta(hours=1, minutes=30),)
    assert lines(run("release", other, dsn=dsn)) == ["true"]
    assert lines(run("release", other, dsn=dsn)) == ["false"]
    err = refused("confirm", other, dsn=dsn, sqlstate="ID006")
    assert other in err
    refused("confirm", "DRV-12", dsn=dsn, sqlstate="ID003")
    refused("reserve", "QQQ", dsn=dsn, sqlstate="ID002")
    # the released number is handed out again before the counter advances
    assert lines(run("driver-id", code, dsn=dsn)) == [other]


# -- entity numbers ---------------------------------------------------------------------------


def test_numbers_and_claim(dsn: str, db: psycopg.Connection) -> None:
    parts = lines(run("numbers", "part", "5", dsn=dsn))
    assert len(parts) == len(set(parts)) == 5
    assert all(re.fullmatch(r"1\d{6}", n) for n in parts)
    orders = lines(run("numbers", "4", "3", dsn=dsn))
    assert len(orders) == 3 and all(re.fullmatch(r"4\d{6}", n) for n in orders)
    issued = db.execute("SELECT count(*) FROM idmint.entity_numbers").fetchone()
    assert issued == (8,)

    free = next(f"1{i:06d}" for i in range(1000) if f"1{i:06d}" not in parts)
    assert lines(run("claim", free, dsn=dsn)) == [free]
    refused("claim", free, dsn=dsn, sqlstate="ID004")
    refused("claim", "12345", dsn=dsn, sqlstate="ID003")
    refused("claim", "2000001", "--entity", "part", dsn=dsn, sqlstate="ID003")
    assert lines(run("claim", "2000001", "--entity", "material", dsn=dsn)) == ["2000001"]
    refused("claim", "9000001", dsn=dsn, sqlstate="ID008")
    refused("numbers", "widget", "1", dsn=dsn, sqlstate="ID008")


# -- cleanup ----------------------------------------------------------------------------------


def reserve_short(dsn: str, fleet_name: str) -> str:
    code, _ = add_fleet(dsn, fleet_name)
    return run("reserve", code, "--ttl", "100ms", dsn=dsn).stdout.strip()


def test_cleanup_once(dsn: str, db: psycopg.Connection) -> None:
    # one fleet each: an expired reservation would be handed out again by the next reserve
    short = [reserve_short(dsn, f"Clean {i}") for i in range(2)]
    kept = run("reserve", add_fleet(dsn, "Kept")[0], "--ttl", "1h", dsn=dsn).stdout.strip()
    wait_expired(db, *short)
    assert lines(run("cleanup", dsn=dsn)) == ["2"]
    assert lines(run("cleanup", dsn=dsn)) == ["0"]
    rows = db.execute("SELECT driver_id, status FROM idmint.driver_id_ledger").fetchall()
    assert rows == [(kept, "reserved")]


class Daemon:
    """`idmint cleanup --every` in the background; its stdout lines arrive on a queue."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, matching: Callable[[str], bool], timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"process ended; output so far: {self.seen}")
            self.seen.append(line)
            if matching(line):
                return line

    def finish(self, timeout: float = 60.0) -> tuple[int, list[str], str]:
        rc = self.proc.wait(timeout=timeout)
        rest: list[str] = []
        while (line := self.lines.get(timeout=timeout)) is not None:
            rest.append(line)
        assert self.proc.stderr is not None
        return rc, rest, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*args: str, dsn: str) -> Daemon:
        d = Daemon([IDMINT, "--dsn", dsn, *args], clean_env())
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_cleanup_every_until_signal(
    dsn: str, db: psycopg.Connection, daemons: Callable[..., Daemon], sig: signal.Signals
) -> None:
    short = [reserve_short(dsn, f"Loop {i}") for i in range(3)]
    wait_expired(db, *short)

    d = daemons("cleanup", "--every", "1", dsn=dsn)
    banner = d.next_line(lambda s: "every" in s)
    assert re.fullmatch(
        rf"{TIMESTAMP} idmint cleanup: purging expired reservations every 1s", banner
    )
    first = d.next_line(lambda s: "purged" in s)
    assert re.fullmatch(rf"{TIMESTAMP} purged 3", first), first
    # a second run proves the loop goes on (the reservations are gone by now)
    second = d.next_line(lambda s: "purged" in s)
    assert re.fullmatch(rf"{TIMESTAMP} purged 0", second), second
    assert db.execute("SELECT count(*) FROM idmint.driver_id_ledger").fetchone() == (0,)

    d.proc.send_signal(sig)
    rc, rest, err = d.finish()
    assert rc == 0, (rc, rest, err)
    assert "Traceback" not in err and err == ""
    assert rest, d.seen
    assert re.fullmatch(rf"{TIMESTAMP} idmint cleanup: stopped by {sig.name} after \d+ run\(s\)",
                        rest[-1])  # fmt: skip
    assert all(re.fullmatch(rf"{TIMESTAMP} purged 0", line) for line in rest[:-1]), rest


def test_cleanup_every_fails_fast_on_unmigrated_database(dsn: str) -> None:
    run("rollback", dsn=dsn)
    p = run("cleanup", "--every", "1", dsn=dsn, rc=1)
    assert "idmint: error 3F000: " in p.stderr


# -- status -----------------------------------------------------------------------------------


def _status_json(dsn: str, *opts: str) -> list[dict[str, object]]:
    doc = json.loads(run("status", "--json", *opts, dsn=dsn).stdout)
    assert isinstance(doc, list)
    return doc


def test_status_table_and_json(dsn: str) -> None:
    busy, _ = add_fleet(dsn, "Busy", "--max-drivers", "10")
    idle, _ = add_fleet(dsn, "Idle", "--max-drivers", "50")
    run("driver-id", busy, "-n", "4", dsn=dsn)
    run("reserve", busy, dsn=dsn)
    run("numbers", "part", "40", dsn=dsn)

    doc = _status_json(dsn)
    by_key = {(r["scope"], str(r["key"])): r for r in doc}
    fields = {"scope", "key", "name", "capacity", "used", "reserved", "free", "utilization",
              "per_day", "exhausted_at"}  # fmt: skip
    assert all(set(r) == fields for r in doc)

    b = by_key[("fleet", busy)]
    assert (b["name"], b["capacity"], b["used"], b["reserved"], b["free"]) == ("Busy", 10, 4, 1, 5)
    assert b["utilization"] == pytest.approx(0.5)
    assert isinstance(b["per_day"], float) and b["per_day"] > 0
    assert isinstance(b["exhausted_at"], str)
    when = datetime.fromisoformat(b["exhausted_at"])
    assert when.tzinfo is not None and when > datetime.now(timezone.utc)

    i = by_key[("fleet", idle)]
    assert (i["used"], i["reserved"], i["free"], i["per_day"], i["exhausted_at"]) == (
        0, 0, 50, 0.0, None,
    )  # fmt: skip

    part = by_key[("entity", "1")]
    assert (part["name"], part["used"], part["capacity"]) == ("part", 40, 1_000_000)
    assert isinstance(part["per_day"], float) and part["per_day"] > 0
    assert part["exhausted_at"] is not None
    order = by_key[("entity", "4")]
    assert (order["used"], order["exhausted_at"]) == (0, None)

    table = lines(run("status", dsn=dsn))
    header, rule, *rows = table
    assert header.split() == [
        "SCOPE", "KEY", "NAME", "CAPACITY", "USED", "RESERVED", "FREE", "UTIL", "PER_DAY",
        "EXHAUSTED",
    ]  # fmt: skip
    assert len(rule) == len(header) and set(rule) <= {"-", " "}
    assert len(rows) == len(doc)
    row = {r.split()[1]: r.split() for r in rows if r.startswith("fleet")}
    expected_date = when.astimezone(timezone.utc).date().isoformat()
    assert row[busy][-1] == expected_date
    assert date.fromisoformat(row[busy][-1]) >= datetime.now(timezone.utc).date()
    assert row[busy][3:8] == ["10", "4", "1", "5", "50.0%"]
    assert row[idle][-1] == "never"
    entity = {r.split()[1]: r.split() for r in rows if r.startswith("entity")}
    assert entity["1"][-1] != "never" and entity["4"][-1] == "never"
    # the last column is right-aligned: every row ends where the header ends
    assert all(len(r) == len(header) for r in rows), table


def test_status_window(dsn: str, db: psycopg.Connection) -> None:
    code, _ = add_fleet(dsn, "Old", "--max-drivers", "10")
    run("driver-id", code, "-n", "2", dsn=dsn)
    db.execute(
        "UPDATE idmint.fleets SET created_at = now() - interval '30 days' WHERE code = %s", [code]
    )
    week = {str(r["key"]): r for r in _status_json(dsn)}
    day = {str(r["key"]): r for r in _status_json(dsn, "--window", "1d")}
    # the same two allocations over a 7x shorter window: a 7x higher rate
    assert week[code]["per_day"] == pytest.approx(2 / 7)
    assert day[code]["per_day"] == pytest.approx(2.0)
    # one duration syntax: plain seconds, hours and days
    for same in ("86400", "24h", "1440m"):
        again = {str(r["key"]): r for r in _status_json(dsn, "--window", same)}
        assert again[code]["per_day"] == pytest.approx(2.0)


def test_status_rate_of_a_young_fleet(dsn: str) -> None:
    """A fleet created just now with 7 ids: its rate is over its life, not 7 ids / 7 days."""
    code, _ = add_fleet(dsn, "Young")
    run("driver-id", code, "-n", "7", dsn=dsn)
    [row] = [r for r in _status_json(dsn) if r["key"] == code]
    assert isinstance(row["per_day"], float) and row["per_day"] > 7  # younger than a day
    [line] = [r.split() for r in lines(run("status", dsn=dsn)) if f" {code} " in r]
    assert line[-2] != "1.00" and float(line[-2]) > 7


def test_status_unmigrated(dsn: str) -> None:
    run("rollback", dsn=dsn)
    assert refused("status", dsn=dsn, sqlstate="3F000") == (
        "idmint: error 3F000: idmint is not installed in this database\n"
        "HINT: install it with `idmint migrate` (as the database owner),"
        " or `idmint sql | psql -1 -f -`\n"
    )
    assert refused("status", "--json", dsn=dsn, sqlstate="3F000").startswith(
        "idmint: error 3F000: idmint is not installed in this database\n"
    )
    hint = "HINT: is idmint installed in this database? Run: idmint migrate"
    assert hint in refused("fleet", "list", dsn=dsn, sqlstate="42P01")


def test_status_bad_window_is_a_usage_error(dsn: str) -> None:
    p = run("status", "--window", "99999999999999999999d", dsn=dsn, rc=2)
    assert "argument --window: duration '99999999999999999999d' is longer than" in p.stderr


# -- contract 0.2 §7: reset, history, types, backfill, --json -----------------------------------


def test_reset(dsn: str) -> None:
    code, _ = add_fleet(dsn, "Reset", "--max-drivers", "20")
    run("driver-id", code, "-n", "2", dsn=dsn)
    assert lines(run("reset", code, "10", dsn=dsn)) == ["10"]
    assert lines(run("driver-id", code, dsn=dsn)) == [f"DRV-011{code}"]
    assert lines(run("reset", code.lower(), dsn=dsn)) == ["11"]  # default: the highest in use
    err = refused("reset", code, "5", dsn=dsn, sqlstate="ID004")
    assert "last_number must be at least 11" in err
    refused("reset", code, "21", dsn=dsn, sqlstate="ID003")  # above this fleet's 20
    refused("reset", "ZZZ", "1", dsn=dsn, sqlstate="ID002")
    [row] = json.loads(run("fleet", "list", "--json", dsn=dsn).stdout)
    assert (row["assigned"], row["free"]) == (3, 9)  # the skipped 3..10 are gone


def test_history_of_a_driver_id(dsn: str) -> None:
    user = psycopg.conninfo.conninfo_to_dict(dsn)["user"]
    code, fleet_id = add_fleet(dsn, "History")
    rid = run("reserve", code, "--by", "form", dsn=dsn).stdout.strip()
    run("release", rid, "--by", "form", dsn=dsn)
    assert lines(run("driver-id", code, dsn=dsn)) == [rid]

    header, rule, *rows = lines(run("history", rid.lower(), dsn=dsn))
    assert header.split() == [
        "AT", "EVENT", "HOW", "ACTOR", "APPLICATION", "RESERVED_BY", "DETAIL",
    ]  # fmt: skip
    assert set(rule) <= {"-", " "}
    assert [r.split()[1] for r in rows] == ["reserved", "released", "assigned"]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", r) for r in rows), rows

    doc = json.loads(run("history", rid, "--json", dsn=dsn).stdout)
    assert [(d["event"], d["how"], d["reserved_by"]) for d in doc] == [
        ("reserved", None, "form"),
        ("released", None, "form"),
        ("assigned", "next", None),
    ]
    assert set(doc[0]) == {
        "at", "fleet_id", "fleet_code", "driver_id", "number", "event", "how", "actor",
        "application_name", "reserved_by", "detail",
    }  # fmt: skip
    last = doc[-1]
    assert (last["driver_id"], last["number"], last["fleet_id"], last["actor"]) == (
        rid, 1, fleet_id, user,
    )  # fmt: skip
    assert datetime.fromisoformat(last["at"]).utcoffset() == timedelta(0)

    p = run("history", f"DRV-999{code}", dsn=dsn)
    assert len(lines(p)) == 2 and "no history" in p.stderr  # header and rule only
    assert json.loads(run("history", f"DRV-999{code}", "--json", dsn=dsn).stdout) == []
    refused("history", "DRV-1", dsn=dsn, sqlstate="ID003")


def test_history_of_an_entity_number(dsn: str) -> None:
    user = psycopg.conninfo.conninfo_to_dict(dsn)["user"]
    [number] = lines(run("numbers", "order", "1", dsn=dsn))
    header, _, row = lines(run("history", number, dsn=dsn))
    assert header.split() == ["AT", "EVENT", "HOW", "ACTOR", "XID"]
    assert row.split()[1:4] == ["issued", "gen", user]
    [doc] = json.loads(run("history", number, "--json", dsn=dsn).stdout)
    assert doc | {"at": None, "issued_xid": None} == {
        "at": None, "entity_number": number, "prefix": 4, "entity": "order", "event": "issued",
        "how": "gen", "actor": user, "issued_xid": None,
    }  # fmt: skip
    assert isinstance(doc["issued_xid"], int)
    assert json.loads(run("history", "4000000", "--json", dsn=dsn).stdout) in ([], [doc])
    refused("history", "0123456", dsn=dsn, sqlstate="ID003")


def test_types_list_and_add(dsn: str) -> None:
    header, rule, *rows = lines(run("types", "list", dsn=dsn))
    assert header.split() == ["PREFIX", "NAME"] and set(rule) <= {"-", " "}
    seeded = [[1, "part"], [2, "material"], [3, "batch"], [4, "order"], [5, "quote"]]
    assert [r.split() for r in rows] == [[str(p), n] for p, n in seeded]
    assert lines(run("types", "add", "7", "invoice", dsn=dsn)) == ["7\tinvoice"]
    doc = json.loads(run("types", "list", "--json", dsn=dsn).stdout)
    assert doc == [{"prefix": p, "name": n} for p, n in [*seeded, [7, "invoice"]]]
    assert re.fullmatch(r"7\d{6}\n", run("numbers", "invoice", "1", dsn=dsn).stdout)
    refused("types", "add", "7", "other", dsn=dsn, sqlstate="ID004")
    refused("types", "add", "8", "part", dsn=dsn, sqlstate="ID004")
    refused("types", "add", "8", " spaced", dsn=dsn, sqlstate="ID003")


def test_backfill(dsn: str, db: psycopg.Connection) -> None:
    db.execute(
        "CREATE SCHEMA app; CREATE TABLE app.parts (id int PRIMARY KEY, pn text, short varchar(3))"
    )
    db.execute("INSERT INTO app.parts (id) SELECT generate_series(1, 5)")
    assert lines(run("backfill", "app.parts", "pn", "part", dsn=dsn)) == ["5"]
    assert lines(run("backfill", "app.parts", "pn", "1", dsn=dsn)) == ["0"]
    filled = [r[0] for r in db.execute("SELECT pn FROM app.parts")]
    assert len(set(filled)) == 5 and all(re.fullmatch(r"1\d{6}", n) for n in filled)
    refused("backfill", "app.parts", "short", "part", dsn=dsn, sqlstate="ID003")
    refused("backfill", "app.parts", "pn", "widget", dsn=dsn, sqlstate="ID008")
    refused("backfill", "app.nothing", "pn", "part", dsn=dsn, sqlstate="42P01")


def test_fleet_list_json(dsn: str) -> None:
    assert json.loads(run("fleet", "list", "--json", dsn=dsn).stdout) == []
    code, fleet_id = add_fleet(dsn, "North", "--max-drivers", "20")
    run("driver-id", code, "-n", "3", dsn=dsn)
    run("reserve", code, dsn=dsn)
    assert json.loads(run("fleet", "list", "--json", dsn=dsn).stdout) == [
        {
            "fleet_id": fleet_id, "code": code, "name": "North", "max_drivers": 20,
            "assigned": 3, "reserved": 1, "free": 16, "utilization": 0.2,
        }
    ]  # fmt: skip


# -- one duration syntax, secrets, broken pipes, hints ---------------------------------------------


def test_cleanup_every_takes_a_duration(
    dsn: str, daemons: Callable[..., Daemon], db: psycopg.Connection
) -> None:
    d = daemons("cleanup", "--every", "5m", dsn=dsn)
    banner = d.next_line(lambda s: "every" in s)
    assert banner.endswith("idmint cleanup: purging expired reservations every 300s"), banner
    d.next_line(lambda s: "purged" in s)
    d.proc.send_signal(signal.SIGTERM)
    rc, _, err = d.finish()
    assert (rc, err) == (0, "")


SECRET = "S3cr3t-Passw0rd"


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--dsn", "{url}"],
        ["fleet", "list", "--dsn={url}"],
        ["driver-id", "ABC", "--ds", "{url}"],
        ["status", "{url}"],
        ["status", "--dsn", "host=127.0.0.1 user=x password={secret}"],
    ],
    ids=["after-command", "equals", "abbreviated", "positional", "key-value"],
)
def test_a_dsn_in_the_wrong_place_is_never_echoed(args: list[str]) -> None:
    url = f"postgresql://idmint:{SECRET}@127.0.0.1:{closed_port()}/db"
    p = run(*[a.format(url=url, secret=SECRET) for a in args], rc=2)
    assert SECRET not in p.stderr + p.stdout
    assert "unrecognized arguments: " in p.stderr and "***" in p.stderr
    if any(a.startswith("--d") for a in args):
        assert "--dsn goes before the command" in p.stderr


def test_a_malformed_dsn_is_never_echoed() -> None:
    """libpq quotes the malformed part of a URL back, here the password."""
    p = run("status", dsn=f"postgresql://idmint:{SECRET}%zz@127.0.0.1:{closed_port()}/db", rc=3)
    assert p.stderr.startswith("idmint: error 08001: ")
    assert SECRET not in p.stderr


def test_a_broken_pipe_ends_quietly(dsn: str) -> None:
    """`idmint numbers batch 50000 | head -1`: no [Errno 32], exit 0 or 141 (SIGPIPE's)."""
    proc = subprocess.Popen(
        [IDMINT, "--dsn", dsn, "numbers", "batch", "50000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # far more than a pipe buffer is still to come
    rc = proc.wait(timeout=120)
    err = proc.stderr.read().decode()
    assert re.fullmatch(rb"3\d{6}\n", first)
    assert rc in (0, 141), (rc, err)
    assert err == ""


def test_hints_name_the_cli_command(dsn: str) -> None:
    err = refused("driver-id", "ZZZ", dsn=dsn, sqlstate="ID002")
    assert "HINT: create it with `idmint fleet add NAME`" in err
    err = refused("numbers", "widget", "1", dsn=dsn, sqlstate="ID008")
    assert "`idmint types list`" in err and "`idmint types add PREFIX NAME`" in err
    [number] = lines(run("numbers", "part", "1", dsn=dsn))
    err = refused("claim", number, dsn=dsn, sqlstate="ID004")
    assert "HINT: generate a new one with `idmint numbers ENTITY 1`" in err
    assert "idmint." not in err
    # The SQL (and so the facade) keeps naming SQL functions: the CLI translates.
    with pytest.raises(idmint.UnknownFleetError) as info:
        idmint.IdMint(dsn).next_driver_id("ZZZ")
    assert info.value.hint == "create it with idmint.add_fleet"


def test_cli_hint_translation() -> None:
    from idmint.cli import cli_hint

    assert cli_hint("release it with idmint.release_driver_id(...)") == (
        "release it with `idmint release ID`"
    )
    assert cli_hint("see idmint.entity_types") == "see `idmint types list`"
    # A statement the hint gives to run as it is stays SQL; unknown names stay as they are.
    sql = "run: SELECT cron.schedule_in_database('j', '* * * * *', 'SELECT idmint.purge_expired_reservations()', 'db')"
    assert cli_hint(sql) == sql
    assert cli_hint("see idmint.error_codes") == "see idmint.error_codes"


# -- installing and migrating: migrations, sql, adopting, safe rollback, app roles --------------

INSTALL_COMMANDS = [["migrations"], ["sql"]]


@pytest.mark.parametrize("command", INSTALL_COMMANDS, ids=lambda c: " ".join(c))
def test_help_on_install_commands(command: list[str]) -> None:
    p = run(*command, "--help")
    assert p.stdout.startswith("usage: idmint " + " ".join(command)), p.stdout
    top = run("--help").stdout
    assert re.search(rf"^\s+{command[0]}\s", top, re.M), top
    assert "--yes" in run("rollback", "--help").stdout


def psql() -> str:
    """psql of the server the tests run (the same lookup as tools/pg_ctl)."""
    found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    bindirs = [found.stdout.strip()] if found.returncode == 0 else []
    bindirs += sorted(
        (str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")),
        key=lambda d: int(Path(d).parent.name),
        reverse=True,
    )
    path = next(Path(d) / "psql" for d in bindirs if (Path(d) / "psql").exists())
    return str(path)


def pipe_to_psql(sql_args: list[str], target: str) -> None:
    """`idmint sql ... | psql -1 -f -`, as the docs say."""
    script = (
        f"set -o pipefail; {IDMINT} sql {' '.join(sql_args)}"
        f' | {psql()} -X -q -v ON_ERROR_STOP=1 -1 -f - -d "$TARGET"'
    )
    p = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env=clean_env(TARGET=target),
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "ERROR" not in p.stderr, p.stderr


@pytest.fixture
def empty_db(db: psycopg.Connection, dsn: str) -> Iterator[str]:
    """A database of the test cluster without idmint (nor yoyo's tables) in it."""
    name = f"idmint_cli_{os.urandom(5).hex()}"
    db.execute(f'CREATE DATABASE "{name}"')
    try:
        yield psycopg.conninfo.make_conninfo(dsn, dbname=name)
    finally:
        db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_sql_prints_every_migration_in_order_without_a_connection() -> None:
    root = Path(__file__).resolve().parent.parent / "migrations"
    # no DSN anywhere: `sql` never connects
    up = run("sql", env=clean_env()).stdout
    assert (root / "0001_idmint.sql").read_text().strip() in up
    assert up.startswith("-- ==== idmint migration 0001_idmint ====\n")
    down = run("sql", "--rollback", env=clean_env()).stdout
    assert down.startswith("-- ==== idmint rollback 0001_idmint ====\n")
    assert (root / "0001_idmint.rollback.sql").read_text().strip() in down


def test_sql_through_psql_then_migrate_adopts_it(empty_db: str) -> None:
    p = run("migrations", dsn=empty_db)
    assert lines(p) == [
        "MIGRATION    STATE    RECORDED",
        "-----------  -------  --------",
        "0001_idmint  pending  no",
        "version: none (idmint is not installed; run: idmint migrate)",
    ]

    pipe_to_psql([], empty_db)
    code, _ = add_fleet(empty_db, "Plain")
    assert lines(run("driver-id", code, dsn=empty_db)) == [f"DRV-001{code}"]
    p = run("migrations", dsn=empty_db)
    assert lines(p)[2:] == ["0001_idmint  applied  no", "version: 0001_idmint"]
    assert "`idmint migrate` records it as applied" in p.stderr
    p = run("rollback", "--yes", dsn=empty_db)  # yoyo has no record of it yet
    assert p.stdout == ""
    assert p.stderr.splitlines() == [
        "idmint: nothing to roll back",
        "HINT: idmint is installed but yoyo has no record of it (plain SQL): run"
        " `idmint migrate` to adopt it first, or `idmint sql --rollback | psql -1 -f -`",
    ]
    doc = json.loads(run("migrations", "--json", dsn=empty_db).stdout)
    assert doc == {
        "version": "0001_idmint",
        "migrations": [
            {"id": "0001_idmint", "state": "applied", "recorded": False, "recorded_at": None}
        ],
    }

    p = run("migrate", dsn=empty_db)  # 0.1: 42P07 relation "error_codes" already exists
    assert p.stdout == ""
    assert p.stderr == "idmint: recorded 0001_idmint as applied (it was installed with plain SQL)\n"
    assert run("migrate", dsn=empty_db).stderr == "idmint: already up to date\n"
    (entry,) = json.loads(run("migrations", "--json", dsn=empty_db).stdout)["migrations"]
    assert (entry["state"], entry["recorded"]) == ("applied", True)
    assert re.fullmatch(TIMESTAMP, entry["recorded_at"])
    assert lines(run("driver-id", code, dsn=empty_db)) == [f"DRV-002{code}"]  # data kept

    assert lines(run("rollback", "--yes", dsn=empty_db)) == ["0001_idmint"]
    assert lines(run("migrations", dsn=empty_db))[2] == "0001_idmint  pending  no"


def test_sql_rollback_through_psql_removes_idmint(dsn: str, db: psycopg.Connection) -> None:
    add_fleet(dsn, "Gone")
    pipe_to_psql(["--rollback"], dsn)
    assert db.execute("SELECT to_regnamespace('idmint')").fetchone() == (None,)


def test_migrate_refuses_a_newer_install(empty_db: str) -> None:
    pipe_to_psql([], empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION idmint.version() RETURNS text LANGUAGE sql"
            " AS $$ SELECT '0999_later'::text $$"
        )
    err = refused("migrate", dsn=empty_db, sqlstate="55000")
    assert "idmint version 0999_later" in err
    assert "HINT: upgrade the idmint package" in err
    refused("migrations", dsn=empty_db, sqlstate="55000")


# An app's login role: a member of idmint_user, nothing else.
@pytest.fixture
def app_dsn(db: psycopg.Connection, dsn: str) -> Iterator[str]:
    role = f"idmint_cli_app_{os.urandom(4).hex()}"
    db.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE idmint_user')
    yield psycopg.conninfo.make_conninfo(dsn, user=role)
    db.execute(f'DROP ROLE "{role}"')


def test_migrate_as_an_app_role(dsn: str, app_dsn: str) -> None:
    p = run("migrate", dsn=app_dsn)  # nothing pending: at once, no yoyo lock
    assert (p.stdout, p.stderr) == ("", "idmint: already up to date\n")
    assert lines(run("migrations", dsn=app_dsn))[2:] == [
        "0001_idmint  applied  unknown",
        "version: 0001_idmint",
    ]
    run("rollback", dsn=dsn)
    err = refused("migrate", dsn=app_dsn, sqlstate="42501")
    first, hint = err.splitlines()
    assert "cannot migrate idmint: it lacks " in first
    assert "INSERT, DELETE on table public.yoyo_lock" in first
    assert hint.startswith("HINT: run `idmint migrate` as the database owner")
    refused("rollback", dsn=app_dsn, sqlstate="42501")


def add_data(dsn: str) -> None:
    code, _ = add_fleet(dsn, "Kept")
    run("driver-id", code, "-n", "2", dsn=dsn)
    run("numbers", "part", "3", dsn=dsn)


def installed(db: psycopg.Connection) -> bool:
    row = db.execute("SELECT to_regnamespace('idmint') IS NOT NULL").fetchone()
    return bool(row and row[0])


def test_rollback_with_data_needs_yes_without_a_terminal(dsn: str, db: psycopg.Connection) -> None:
    add_data(dsn)
    p = run("rollback", dsn=dsn, rc=2)  # stdin is not a terminal here
    assert p.stdout == ""
    assert p.stderr.splitlines() == [
        "idmint: error: rolling back 0001_idmint would drop idmint's data:"
        " 1 fleet, 2 driver ids, 3 entity numbers",
        "HINT: nothing was changed; to drop it run `idmint rollback --yes`"
        " (back it up first: pg_dump -n idmint)",
    ]
    p = run("rollback", "--steps", "2", dsn=dsn, rc=2)
    assert "run `idmint rollback --steps 2 --yes`" in p.stderr
    assert installed(db)
    assert db.execute("SELECT count(*) FROM idmint.fleets").fetchone() == (1,)

    assert lines(run("rollback", "--yes", dsn=dsn)) == ["0001_idmint"]
    assert not installed(db)


def test_rollback_of_an_empty_install_asks_nothing(dsn: str, db: psycopg.Connection) -> None:
    """No fleet, driver id or entity number: nothing of the user's is lost (the built-in
    entity types come back with the next migrate)."""
    assert lines(run("rollback", dsn=dsn)) == ["0001_idmint"]
    assert not installed(db)


def run_on_a_terminal(*args: str, dsn: str, answer: str) -> subprocess.CompletedProcess[str]:
    """Run with stdin on a pseudo-terminal that has `answer` typed in already."""
    primary, secondary = pty.openpty()
    try:
        os.write(primary, answer.encode())
        return subprocess.run(
            [IDMINT, "--dsn", dsn, *args],
            stdin=secondary,
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=120,
        )
    finally:
        os.close(secondary)
        os.close(primary)


def test_rollback_with_data_asks_on_a_terminal(dsn: str, db: psycopg.Connection) -> None:
    add_data(dsn)
    question = "Roll back 0001_idmint and drop 1 fleet, 2 driver ids, 3 entity numbers? [y/N] "
    for answer in ("\n", "n\n", "yess\n"):
        p = run_on_a_terminal("rollback", dsn=dsn, answer=answer)
        assert (p.returncode, p.stdout) == (1, ""), p.stderr
        assert p.stderr == question + "idmint: rollback cancelled; nothing was changed\n"
        assert installed(db)
    p = run_on_a_terminal("rollback", dsn=dsn, answer="y\n")
    assert (p.returncode, p.stdout, p.stderr) == (0, "0001_idmint\n", question)
    assert not installed(db)
