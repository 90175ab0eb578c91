"""The ``idmint`` command line: migrations, fleets, driver ids, entity numbers, status, cleanup.

Connection: ``--dsn`` (before the command), else ``$DATABASE_URL``, else libpq's ``PG*``
variables. Results go to stdout, one per line (tables for ``status`` and ``fleet list``).
Errors go to stderr as ``idmint: error <SQLSTATE>: <message>`` (plus DETAIL/HINT lines) with
exit code 1 (a refused call), 2 (bad usage) or 3 (no connection); never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import select
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import date, datetime, timedelta, timezone
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import psycopg

from . import __version__
from ._render import format_table, pct, render_status
from .errors import IdmintError

if TYPE_CHECKING:
    from .client import IdMint

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_INTERRUPTED = 130

_TTL_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_TTL_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|sec|min|s|m|h|d)")


# -- argument types ---------------------------------------------------------------------------


def parse_ttl(text: str) -> timedelta:
    """'30s', '5m', '1h', '1d', '1h30m', '250ms' or a plain number of seconds."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return timedelta(seconds=float(s))
    pos, seconds = 0, 0.0
    for m in _TTL_PART.finditer(s):
        if m.start() != pos:
            break
        seconds += float(m.group(1)) * _TTL_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 30s, 5m, 1h, 1h30m)")
    return timedelta(seconds=seconds)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid uuid {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


# -- the parser --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with `idmint: error: ...` on stderr and exit code 2 (its default)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"idmint: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="idmint",
        description="Gapless fleet driver ids and random typed entity numbers, minted in "
        "PostgreSQL.",
        epilog="Connection: --dsn, else $DATABASE_URL, else libpq's PG* variables. "
        "Exit codes: 0 ok, 1 refused (SQLSTATE on stderr), 2 usage, 3 no connection.",
    )
    p.add_argument(
        "--dsn",
        metavar="URL",
        help="libpq connection string or URL (default: $DATABASE_URL, else PG* variables)",
    )
    p.add_argument("--version", action="version", version=f"idmint {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    def cmd(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help)

    c = cmd(
        "migrate",
        "apply pending migrations (idempotent); prints the ids applied",
        "Apply pending migrations and print the ids applied. Returns at once when nothing "
        "is pending (any role that can use idmint). A role that may not migrate is told "
        "which privilege it lacks before anything is locked. An install made with plain "
        "SQL (idmint sql, alembic, Django) is recorded as applied instead of replayed.",
    )
    c.set_defaults(func=cmd_migrate)

    c = cmd(
        "rollback",
        "roll back the newest migration(s); prints the ids rolled back",
        "Roll back the newest migration(s) and print the ids rolled back. Rolling back "
        "0001_idmint drops schema idmint with every fleet, driver id and entity number: "
        "when there are any, it asks on a terminal and otherwise needs --yes (without it: "
        "exit 2, nothing changed). An install without any of them rolls back at once.",
    )
    c.add_argument("--steps", type=_positive_int, default=1, metavar="N", help="default 1")
    c.add_argument("--yes", action="store_true", help="drop idmint's data without asking")
    c.set_defaults(func=cmd_rollback)

    c = cmd(
        "migrations",
        "list each migration as applied or pending, and the installed version",
        "List idmint's migrations: applied or pending (by the database's idmint.version()) "
        "and when yoyo recorded them ('no': installed with plain SQL, `idmint migrate` "
        "records it; 'unknown': this role cannot read yoyo's records).",
    )
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.set_defaults(func=cmd_migrations)

    c = cmd(
        "sql",
        "print the migrations' SQL (for psql -1 -f, alembic op.execute, Django RunSQL)",
        "Print every migration's SQL in order, to run in one transaction: "
        "`idmint sql | psql -1 -f -`. With --rollback, the rollback scripts, newest first. "
        "No connection is made; `idmint migrate` later records such an install as applied.",
    )
    c.add_argument(
        "--rollback", action="store_true", help="print the SQL that removes idmint instead"
    )
    c.set_defaults(func=cmd_sql, needs_db=False)

    c = cmd(
        "status",
        "capacity per fleet and entity type, with a projected exhaustion date",
        "Used, reserved, free and utilization per fleet and per entity type, the recent "
        "allocation rate and the date capacity runs out at that rate ('never' when idle).",
    )
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument(
        "--window",
        type=parse_ttl,
        default=timedelta(days=7),
        metavar="DURATION",
        help="how far back the allocation rate is measured (default 7d)",
    )
    c.set_defaults(func=cmd_status)

    fleet = cmd("fleet", "add or list fleets")
    fsub = fleet.add_subparsers(
        dest="fleet_command", metavar="SUBCOMMAND", required=True, parser_class=_Parser
    )
    c = fsub.add_parser(
        "add", help="add a fleet; prints its code and fleet_id", description="Add a fleet."
    )
    c.add_argument("name", metavar="NAME")
    c.add_argument("--code", metavar="C", help="3-character code (default: a random free one)")
    c.add_argument(
        "--max-drivers", type=_int, default=999, metavar="N", help="1..999 (default 999)"
    )
    c.add_argument("--fleet-id", type=_uuid, metavar="UUID", help="the application's own fleet id")
    c.set_defaults(func=cmd_fleet_add)
    c = fsub.add_parser(
        "list", help="list fleets with their capacity", description="List fleets (a table)."
    )
    c.set_defaults(func=cmd_fleet_list)

    c = cmd("driver-id", "allocate and assign driver ids; prints one per line")
    c.add_argument("fleet", metavar="FLEET", help="fleet code or fleet_id")
    c.add_argument("-n", type=_positive_int, default=1, metavar="N", help="how many (default 1)")
    c.add_argument(
        "--request-key",
        metavar="KEY",
        help="idempotency key (only with -n 1): a repeat returns the id issued the first time",
    )
    c.set_defaults(func=cmd_driver_id)

    c = cmd("reserve", "reserve a driver id for a registration in progress; prints it")
    c.add_argument("fleet", metavar="FLEET", help="fleet code or fleet_id")
    c.add_argument(
        "--ttl",
        type=parse_ttl,
        default=timedelta(minutes=5),
        metavar="DURATION",
        help="how long the reservation holds, e.g. 30s, 5m, 1h (default 5m, at most 1d)",
    )
    c.add_argument("--by", dest="reserved_by", metavar="WHO", help="who reserves it")
    c.set_defaults(func=cmd_reserve)

    c = cmd("confirm", "confirm a reserved driver id (idempotent); prints the id")
    c.add_argument("driver_id", metavar="ID")
    c.add_argument("--by", dest="reserved_by", metavar="WHO", help="the holder named at reserve")
    c.set_defaults(func=cmd_confirm)

    c = cmd(
        "release",
        "give back a reserved driver id; prints true, or false if it was not reserved",
    )
    c.add_argument("driver_id", metavar="ID")
    c.add_argument("--by", dest="reserved_by", metavar="WHO", help="the holder named at reserve")
    c.set_defaults(func=cmd_release)

    c = cmd("numbers", "issue N new entity numbers; prints one per line")
    c.add_argument("entity", metavar="ENTITY", help="type name (part, order, ...) or prefix 1..9")
    c.add_argument("n", type=_positive_int, metavar="N")
    c.set_defaults(func=cmd_numbers)

    c = cmd("claim", "register a manually entered entity number; prints it")
    c.add_argument("number", metavar="NUMBER")
    c.add_argument("--entity", metavar="ENTITY", help="check it is of this type")
    c.set_defaults(func=cmd_claim)

    c = cmd(
        "cleanup",
        "purge expired reservations once, or every SECONDS until SIGINT/SIGTERM",
        "Delete expired driver id reservations and print how many. With --every, repeat "
        "until interrupted (SIGINT/SIGTERM), logging one line per run; for databases "
        "without pg_cron.",
    )
    c.add_argument("--every", type=_positive_seconds, metavar="SECONDS")
    c.set_defaults(func=cmd_cleanup)

    c = cmd(
        "demo",
        "walk through idmint on a throwaway local PostgreSQL (no DSN needed)",
        "Start a private PostgreSQL in a temp dir (system binaries, else the "
        "'idmint[embedded]' extra), migrate it, mint some ids, show the status table, then "
        "remove everything.",
    )
    c.set_defaults(func=cmd_demo, needs_db=False)
    return p


# -- connection and output helpers -------------------------------------------------------------


def resolve_dsn(args: argparse.Namespace) -> str:
    """--dsn, else $DATABASE_URL, else '' (libpq then reads PG* variables)."""
    if args.dsn is not None:
        return str(args.dsn)
    return os.environ.get("DATABASE_URL", "")


def explicit_dsn(dsn: str) -> str:
    """A conninfo with every parameter spelled out (libpq PG* variables resolved), for tools
    such as yoyo that do not read the environment the way libpq does."""
    if dsn:
        return dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        params = dict(conn.info.get_parameters())
        password = conn.info.password
    if password:
        params["password"] = password
    return psycopg.conninfo.make_conninfo("", **params)


def _client(dsn: str) -> IdMint:
    from .client import IdMint

    return IdMint(dsn)


@contextmanager
def _mint(args: argparse.Namespace) -> Iterator[IdMint]:
    yield _client(resolve_dsn(args))


def out(line: object = "", stream: TextIO | None = None) -> None:
    print(line, file=stream or sys.stdout, flush=True)


# -- commands -----------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import migrate_outcome

    outcome = migrate_outcome(explicit_dsn(resolve_dsn(args)))
    for mid in outcome.adopted:
        out(f"idmint: recorded {mid} as applied (it was installed with plain SQL)", sys.stderr)
    for mid in outcome.applied:
        out(mid)
    if not outcome.applied and not outcome.adopted:
        out("idmint: already up to date", sys.stderr)
    return EXIT_OK


def _confirm(question: str) -> bool:
    """Ask on the terminal; only 'y' or 'yes' is a yes (end of input is a no)."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _data_loss_refused(args: argparse.Namespace, ids: Sequence[str], counts: object) -> int:
    steps = f" --steps {args.steps}" if args.steps != 1 else ""
    out(
        f"idmint: error: rolling back {', '.join(ids)} would drop idmint's data: {counts}",
        sys.stderr,
    )
    out(
        f"HINT: nothing was changed; to drop it run `idmint rollback{steps} --yes`"
        " (back it up first: pg_dump -n idmint)",
        sys.stderr,
    )
    return EXIT_USAGE


def cmd_rollback(args: argparse.Namespace) -> int:
    from .migrate import DataLossRefused, rollback, rollback_plan

    dsn = explicit_dsn(resolve_dsn(args))
    allow = bool(args.yes)
    if not allow:
        ids, counts = rollback_plan(dsn, args.steps)
        if counts:
            if not sys.stdin.isatty():
                return _data_loss_refused(args, ids, counts)
            if not _confirm(f"Roll back {', '.join(ids)} and drop {counts}?"):
                out("idmint: rollback cancelled; nothing was changed", sys.stderr)
                return EXIT_ERROR
            allow = True
    try:
        undone = rollback(dsn, steps=args.steps, allow_data_loss=allow)
    except DataLossRefused as e:  # data arrived after the check above
        return _data_loss_refused(args, e.ids, e.counts)
    for mid in undone:
        out(mid)
    if not undone:
        out("idmint: nothing to roll back", sys.stderr)
        if _installed_unrecorded(dsn):
            out(
                "HINT: idmint is installed but yoyo has no record of it (plain SQL): run"
                " `idmint migrate` to adopt it first, or `idmint sql --rollback | psql -1 -f -`",
                sys.stderr,
            )
    return EXIT_OK


def _installed_unrecorded(dsn: str) -> bool:
    from .migrate import migrations_status

    try:
        _, rows = migrations_status(dsn)
    except IdmintError:
        return False
    return any(r.applied and r.recorded is False for r in rows)


def _utc(at: datetime | None) -> str | None:
    """yoyo stores naive UTC timestamps."""
    if at is None:
        return None
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def cmd_migrations(args: argparse.Namespace) -> int:
    from .migrate import migrations_status

    version, rows = migrations_status(explicit_dsn(resolve_dsn(args)))
    if args.json:
        doc = {
            "version": version,
            "migrations": [
                {
                    "id": r.id,
                    "state": "applied" if r.applied else "pending",
                    "recorded": r.recorded,
                    "recorded_at": _utc(r.recorded_at),
                }
                for r in rows
            ],
        }
        out(json.dumps(doc, indent=2))
        return EXIT_OK
    table: list[list[object]] = [
        [
            r.id,
            "applied" if r.applied else "pending",
            "unknown"
            if r.recorded is None
            else (_utc(r.recorded_at) or "yes")
            if r.recorded
            else "no",
        ]
        for r in rows
    ]
    for line in format_table(("MIGRATION", "STATE", "RECORDED"), table):
        out(line)
    out(f"version: {version or 'none (idmint is not installed; run: idmint migrate)'}")
    if any(r.applied and r.recorded is False for r in rows):
        out("idmint: installed with plain SQL; `idmint migrate` records it as applied", sys.stderr)
    return EXIT_OK


def cmd_sql(args: argparse.Namespace) -> int:
    from .migrate import migration_sql

    sys.stdout.write(migration_sql(rollback=args.rollback))
    sys.stdout.flush()
    return EXIT_OK


def _json_default(v: object) -> object:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, timedelta):
        return v.total_seconds()
    return str(v)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        with _mint(args) as mint:
            rows = mint.capacity_report(args.window)
    except psycopg.errors.InvalidSchemaName as e:  # 3F000: no schema idmint
        out(f"idmint: error {e.sqlstate}: idmint is not installed in this database", sys.stderr)
        out(
            "HINT: install it with `idmint migrate` (as the database owner),"
            " or `idmint sql | psql -1 -f -`",
            sys.stderr,
        )
        return EXIT_ERROR
    if args.json:
        doc = [dataclasses.asdict(r) for r in rows]
        for r in doc:
            if isinstance(r.get("exhausted_at"), datetime):
                r["exhausted_at"] = r["exhausted_at"].astimezone(timezone.utc).isoformat()
        out(json.dumps(doc, indent=2, default=_json_default))
    else:
        for line in render_status(rows):
            out(line)
    return EXIT_OK


def cmd_fleet_add(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        fleet = mint.add_fleet(
            args.name, code=args.code, max_drivers=args.max_drivers, fleet_id=args.fleet_id
        )
    out(f"{fleet.code}\t{fleet.fleet_id}")
    return EXIT_OK


def cmd_fleet_list(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        fleets = sorted(mint.fleet_capacity(), key=lambda f: (f.code, str(f.fleet_id)))
    rows: list[list[object]] = [
        [
            f.code,
            f.name,
            f.max_drivers,
            f.assigned,
            f.reserved,
            f.free,
            pct(f.utilization),
            str(f.fleet_id),
        ]
        for f in fleets
    ]
    headers = ("CODE", "NAME", "MAX", "ASSIGNED", "RESERVED", "FREE", "UTIL", "FLEET_ID")
    for line in format_table(headers, rows, right=(6,)):
        out(line)
    return EXIT_OK


class UsageError(Exception):
    """A combination of arguments the parser cannot check by itself (exit 2)."""


def cmd_driver_id(args: argparse.Namespace) -> int:
    if args.request_key is not None and args.n != 1:
        raise UsageError("argument --request-key: works with -n 1 only")
    with _mint(args) as mint:
        if args.n == 1:
            ids = [mint.next_driver_id(args.fleet, request_key=args.request_key)]
        else:
            ids = mint.next_driver_ids(args.fleet, args.n)
    for i in ids:
        out(i)
    return EXIT_OK


def cmd_reserve(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        rid = mint.reserve_driver_id(args.fleet, reserved_by=args.reserved_by, ttl=args.ttl)
    out(rid)
    return EXIT_OK


def cmd_confirm(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        out(mint.confirm_driver_id(args.driver_id, args.reserved_by))
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        released = mint.release_driver_id(args.driver_id, args.reserved_by)
    out("true" if released else "false")
    return EXIT_OK


def _entity(text: str) -> int | str:
    return int(text) if re.fullmatch(r"[0-9]", text) else text


def cmd_numbers(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        numbers = list(mint.gen_entity_numbers(_entity(args.entity), args.n))
    for n in numbers:
        out(n)
    return EXIT_OK


def cmd_claim(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        if args.entity is None:
            number = mint.claim_entity_number(args.number)
        else:
            number = mint.claim_entity_number(args.number, _entity(args.entity))
    out(number)
    return EXIT_OK


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class _StopSignals:
    """SIGINT/SIGTERM set a flag and wake a select() instead of raising mid-call."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        os.close(self._r)
        os.close(self._w)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signum
        with suppress(OSError):
            os.write(self._w, b"x")

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when a stop signal arrived."""
        if self.received is None and seconds > 0:
            select.select([self._r], [], [], seconds)
        return self.received is not None


def cmd_cleanup(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        if args.every is None:
            out(mint.purge_expired_reservations())
            return EXIT_OK
        return _cleanup_loop(mint, args.every)


def _cleanup_loop(mint: Any, every: float) -> int:
    runs = 0
    with _StopSignals() as stop:
        next_at = time.monotonic()
        while not stop.received:
            try:
                purged = mint.purge_expired_reservations()
            except (psycopg.Error, IdmintError) as e:
                if runs == 0:
                    raise  # a bad DSN or an unmigrated database: fail at once
                out(f"{_now()} run failed: {_describe(e)}", sys.stderr)
            else:
                if runs == 0:  # connected and migrated: now it is a running service
                    out(f"{_now()} idmint cleanup: purging expired reservations every {every:g}s")
                out(f"{_now()} purged {purged}")
            runs += 1
            next_at += every
            now = time.monotonic()
            if next_at < now:  # a run took longer than the interval: do not pile up
                next_at = now
            if stop.wait(next_at - now):
                break
        name = signal.Signals(stop.received).name if stop.received else "?"
        out(f"{_now()} idmint cleanup: stopped by {name} after {runs} run(s)")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo()


# -- errors and main ---------------------------------------------------------------------------


def _describe(e: BaseException) -> str:
    state = getattr(e, "sqlstate", None) or ""
    text = str(getattr(e, "message", None) or e).strip()
    msg = text.splitlines()[0] if text else type(e).__name__
    return f"{state}: {msg}" if state else msg


def _is_connection_error(e: psycopg.Error) -> bool:
    if isinstance(e, psycopg.InterfaceError):
        return True
    if isinstance(e, psycopg.ProgrammingError) and e.sqlstate is None:
        return "connection" in str(e) or "dsn" in str(e).lower()  # a malformed conninfo
    if not isinstance(e, psycopg.OperationalError):
        return False
    state = e.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def report_error(e: BaseException, stream: TextIO | None = None) -> int:
    """Print an expected error in idmint's format; returns the exit code."""
    err = stream or sys.stderr
    lines: list[str] = []
    if isinstance(e, IdmintError):
        lines.append(f"idmint: error {e.sqlstate}: {e.message}")
        if e.detail:
            lines.append(f"DETAIL: {e.detail}")
        if e.hint:
            lines.append(f"HINT: {e.hint}")
        code = EXIT_ERROR
    elif isinstance(e, psycopg.Error):
        connection = _is_connection_error(e)
        state = e.sqlstate or ("08001" if connection else None)
        diag = e.diag
        message = diag.message_primary or str(e).strip() or type(e).__name__
        if connection:
            message = " ".join(str(e).split()) or message
        lines.append(f"idmint: error {state}: {message}" if state else f"idmint: error: {message}")
        if diag.message_detail:
            lines.append(f"DETAIL: {diag.message_detail}")
        hint = diag.message_hint
        if not hint and (
            state == "3F000" or (state in ("42883", "42P01") and "idmint." in message)
        ):
            hint = "is idmint installed in this database? Run: idmint migrate"
        if not hint and connection:
            hint = "pass --dsn URL, set DATABASE_URL, or the PG* variables"
        if hint:
            lines.append(f"HINT: {hint}")
        code = EXIT_CONNECTION if connection else EXIT_ERROR
    else:
        lines.append(f"idmint: error: {e}")
        code = EXIT_ERROR
    for line in lines:
        print(line, file=err, flush=True)
    return code


def _expected_errors() -> tuple[type[BaseException], ...]:
    from yoyo.exceptions import LockTimeout

    from ._cluster import ClusterError

    return (psycopg.Error, IdmintError, ClusterError, LockTimeout, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UsageError as e:
        parser.error(str(e))
    except KeyboardInterrupt:
        print("idmint: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except _expected_errors() as e:
        return report_error(e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
