"""The ``idmint`` command line: migrations, fleets, driver ids, entity numbers, status, cleanup.
A thin layer over the facade (one facade call per command, no SQL of its own); docs/CLI.md.

Connection: ``--dsn`` (before the command), else ``$DATABASE_URL``, else libpq's ``PG*``
variables; never echoed. Results go to stdout, one per line (tables for the listings, or
JSON with ``--json``). Errors go to stderr as ``idmint: error <SQLSTATE>: <message>`` (plus
DETAIL/HINT lines, HINTs naming CLI commands) with exit code 1 (a refused call), 2 (bad
usage, including any argument out of bounds) or 3 (no connection); never a traceback. A
closed stdout ends the command quietly (exit 141).
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import date, datetime, timedelta, timezone
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO
from urllib.parse import unquote, urlsplit

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
EXIT_BROKEN_PIPE = 141

# -- argument types and their bounds ------------------------------------------------------------
#
# Every number and duration a command takes is checked here, once, against the limits of the SQL
# function it goes to: out of range is a usage error (exit 2) before any connection is made, never
# a database refusal, an overflow or a traceback.

#: Driver ids per call (next_driver_ids): a fleet holds at most 999.
DRIVER_IDS = (1, 999)
#: Entity numbers per call (gen_entity_numbers).
ENTITY_NUMBERS = (1, 100_000)
#: A fleet's max_drivers (add_fleet).
MAX_DRIVERS = (1, 999)
#: reset_driver_sequence's last_number (the fleet's own max_drivers is checked by the server).
LAST_NUMBER = (0, 999)
#: Entity type prefixes (add_entity_type).
ENTITY_PREFIX = (1, 9)
#: reserve --ttl: positive, at most a day (reserve_driver_id).
TTL_MAX = timedelta(days=1)
#: status --window: positive, at most 1000 years (capacity_report; PostgreSQL counts a year as
#: 360 days when it compares intervals).
WINDOW_MAX = timedelta(days=360_000)
#: cleanup --every: positive, at most a day.
EVERY_MAX = timedelta(days=1)

_DURATION_UNITS = {
    "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
}  # fmt: skip
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|sec|min|s|m|h|d)")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _seconds(text: str) -> float | None:
    """'30s', '5m', '2h', '7d', '1h30m', '250ms' or a plain number of seconds; None if not."""
    s = text.strip().lower()
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", s):
        return float(s)
    pos, seconds = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return seconds if s and pos == len(s) else None


def duration(most: timedelta) -> Callable[[str], timedelta]:
    """The argument type of every duration option: positive and at most `most`."""

    def parse(text: str) -> timedelta:
        seconds = _seconds(text)
        if seconds is None:
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r} (use e.g. 30s, 5m, 2h, 7d, 1h30m or seconds)"
            )
        # Compared as seconds first: a huge value (even inf) never reaches timedelta.
        if not seconds <= most.total_seconds():
            raise argparse.ArgumentTypeError(f"duration {text!r} is longer than {_span(most)}")
        value = timedelta(seconds=seconds)
        if value <= timedelta(0):
            raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
        return value

    parse.__name__ = "duration"  # argparse names the type in some messages
    return parse


def _span(d: timedelta) -> str:
    days, rest = divmod(int(d.total_seconds()), 86400)
    return f"{days}d" if not rest else f"{int(d.total_seconds())}s"


def count(bounds: tuple[int, int], what: str = "") -> Callable[[str], int]:
    """The argument type of every integer argument: within `bounds` (inclusive)."""
    lo, hi = bounds

    def parse(text: str) -> int:
        if not _INTEGER.fullmatch(text):
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}")
        value = int(text) if len(text) <= 20 else None  # longer: far out of any bound
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"must be {lo}..{hi}{f' ({what})' if what else ''}, got {text}"
            )
        return value

    parse.__name__ = "count"
    return parse


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


# -- the parser --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with `idmint: error: ...` on stderr and exit code 2 (its default); never
    echoes a connection string (a DSN placed after the command is an unknown argument)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        if re.search(r"unrecognized arguments: .*--d", message):
            message += " (--dsn goes before the command: idmint --dsn URL COMMAND ...)"
        self.exit(EXIT_USAGE, f"idmint: error: {scrub(message)}\n")


# -- secrets -------------------------------------------------------------------------------------

_SECRETS: list[str] = []


def _looks_like_dsn(token: str) -> bool:
    return "://" in token or bool(re.search(r"\bpassword\s*=", token, re.I))


def note_secrets(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Remember what must never be printed: the value of --dsn (also an abbreviation, or
    after the command), anything shaped like a DSN, $DATABASE_URL, and their passwords."""
    dsns = [env.get("DATABASE_URL", "")]
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        if name in ("--d", "--ds", "--dsn"):
            dsns.append(value if eq else argv[i + 1] if i + 1 < len(argv) else "")
        elif _looks_like_dsn(token):
            dsns.append(token)
    passwords = [env.get("PGPASSWORD", "")]
    for dsn in dsns:
        _SECRETS.append(dsn)
        # Also as written in a malformed DSN, which libpq may quote back in its error.
        with suppress(ValueError):
            passwords.append(urlsplit(dsn).password or "")
        passwords += re.findall(r"password\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)", dsn, re.I)
        with suppress(Exception):
            passwords.append(str(psycopg.conninfo.conninfo_to_dict(dsn).get("password") or ""))
    passwords += [unquote(p) for p in passwords] + [p.strip("'") for p in passwords]
    # Alone, a very short password would turn ordinary words into ***; DSNs are hidden anyway.
    _SECRETS.extend(p for p in passwords if len(p) >= 4)


def scrub(text: str) -> str:
    """`text` with every remembered secret replaced by ***, longest first."""
    for secret in sorted({s for s in _SECRETS if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


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
    _json_option(c)
    c.add_argument(
        "--window",
        type=duration(WINDOW_MAX),
        default=timedelta(days=7),
        metavar="DURATION",
        help="how far back the allocation rate is measured, e.g. 1d, 12h (default 7d); a fleet"
        " or type younger than that is measured over its life",
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
        "--max-drivers",
        type=count(MAX_DRIVERS),
        default=999,
        metavar="N",
        help="1..999 (default 999)",
    )
    c.add_argument("--fleet-id", type=_uuid, metavar="UUID", help="the application's own fleet id")
    c.set_defaults(func=cmd_fleet_add)
    c = fsub.add_parser(
        "list",
        help="list fleets with their capacity",
        description="List fleets with their capacity (a table, or JSON).",
    )
    _json_option(c)
    c.set_defaults(func=cmd_fleet_list)

    c = cmd("driver-id", "allocate and assign driver ids; prints one per line")
    c.add_argument("fleet", metavar="FLEET", help="fleet code or fleet_id")
    c.add_argument(
        "-n",
        type=count(DRIVER_IDS, "a fleet holds at most 999 ids"),
        default=1,
        metavar="N",
        help="how many, 1..999 (default 1)",
    )
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
        type=duration(TTL_MAX),
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
    c.add_argument("n", type=count(ENTITY_NUMBERS), metavar="N", help="how many, 1..100000")
    c.set_defaults(func=cmd_numbers)

    c = cmd("claim", "register a manually entered entity number; prints it")
    c.add_argument("number", metavar="NUMBER")
    c.add_argument("--entity", metavar="ENTITY", help="check it is of this type")
    c.set_defaults(func=cmd_claim)

    c = cmd(
        "cleanup",
        "purge expired reservations once, or every DURATION until SIGINT/SIGTERM",
        "Delete expired driver id reservations and print how many. With --every, repeat "
        "until interrupted (SIGINT/SIGTERM), logging one line per run; for databases "
        "without pg_cron.",
    )
    c.add_argument(
        "--every",
        type=duration(EVERY_MAX),
        metavar="DURATION",
        help="e.g. 30s, 5m, 1h or plain seconds (at most 1d)",
    )
    c.set_defaults(func=cmd_cleanup)

    c = cmd(
        "demo",
        "walk through idmint on a throwaway local PostgreSQL (no DSN needed)",
        "Start a private PostgreSQL in a temp dir (system binaries, else the "
        "'idmint[embedded]' extra), migrate it, mint some ids, show the status table, then "
        "remove everything.",
    )
    c.set_defaults(func=cmd_demo, needs_db=False)

    _more_commands(cmd)
    return p


def _json_option(c: argparse.ArgumentParser) -> None:
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _more_commands(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """reset, history, types, backfill (contract 0.2 §7)."""
    c = cmd(
        "reset",
        "set a fleet's counter so that its next new id is N + 1; prints N",
        "Set the fleet's counter so that the next new number is N + 1 (default: the highest "
        "number assigned or reserved). Numbers skipped over are never handed out. Needs "
        "idmint_admin.",
    )
    c.add_argument("fleet", metavar="FLEET", help="fleet code or fleet_id")
    c.add_argument(
        "last_number",
        type=count(LAST_NUMBER, "and at most the fleet's max drivers"),
        nargs="?",
        metavar="N",
        help="0..999 (default: the highest number in use)",
    )
    c.set_defaults(func=cmd_reset)

    c = cmd(
        "history",
        "the audit trail of a driver id or an entity number",
        "The audit trail of one driver id (DRV-XXXYYY: reserved, confirmed, released, "
        "expired, assigned, reset) or, for a 7-digit argument, of one entity number (issued, "
        "bound), oldest first.",
    )
    c.add_argument("id", metavar="ID", help="a driver id, or a 7-digit entity number")
    _json_option(c)
    c.set_defaults(func=cmd_history)

    types = cmd("types", "list or add entity types")
    tsub = types.add_subparsers(
        dest="types_command", metavar="SUBCOMMAND", required=True, parser_class=_Parser
    )
    c = tsub.add_parser(
        "list", help="list entity types", description="List the registered entity types."
    )
    _json_option(c)
    c.set_defaults(func=cmd_types_list)
    c = tsub.add_parser(
        "add",
        help="register an entity type; prints its prefix and name",
        description="Register an entity type (prefix 1..9, a unique name). Needs idmint_admin.",
    )
    c.add_argument("prefix", type=count(ENTITY_PREFIX), metavar="PREFIX", help="1..9")
    c.add_argument("name", metavar="NAME")
    c.set_defaults(func=cmd_types_add)

    c = cmd(
        "backfill",
        "fill every NULL of a table column with new entity numbers; prints how many",
        "Fill every NULL in TABLE.COLUMN with new numbers of the type, bound to their rows, "
        "in one UPDATE run with your role's rights.",
    )
    c.add_argument("table", metavar="TABLE", help="e.g. app.parts (as SQL reads it)")
    c.add_argument("column", metavar="COLUMN")
    c.add_argument("entity", metavar="ENTITY", help="type name (part, order, ...) or prefix 1..9")
    c.set_defaults(func=cmd_backfill)


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
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, timedelta):
        return v.total_seconds()
    return str(v)  # uuid


def print_json(rows: Sequence[Any]) -> None:
    """--json: a list of objects, one per row, with the result dataclass's field names;
    timestamps in ISO 8601 (UTC), uuids as strings."""
    out(json.dumps([dataclasses.asdict(r) for r in rows], indent=2, default=_json_default))


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
        print_json(rows)
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
    if args.json:
        print_json(fleets)
        return EXIT_OK
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


def cmd_reset(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        out(mint.reset_driver_sequence(args.fleet, args.last_number))
    return EXIT_OK


_ENTITY_NUMBER = re.compile(r"[0-9]{7}")


def _at(v: datetime) -> str:
    return v.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cmd_history(args: argparse.Namespace) -> int:
    # Seven digits can only be an entity number (a driver id starts with DRV-).
    entity = bool(_ENTITY_NUMBER.fullmatch(args.id))
    with _mint(args) as mint:
        events: Sequence[Any] = (
            mint.entity_number_history(args.id) if entity else mint.driver_id_history(args.id)
        )
    if args.json:
        print_json(events)
        return EXIT_OK
    if entity:
        headers: tuple[str, ...] = ("AT", "EVENT", "HOW", "ACTOR", "XID")
        rows = [[_at(e.at), e.event, e.how, e.actor, e.issued_xid] for e in events]
    else:
        headers = ("AT", "EVENT", "HOW", "ACTOR", "APPLICATION", "RESERVED_BY", "DETAIL")
        rows = [
            [_at(e.at), e.event, e.how, e.actor, e.application_name, e.reserved_by, e.detail]
            for e in events
        ]
    for line in format_table(headers, rows):
        out(line)
    if not events:
        what = "entity number" if entity else "driver id"
        out(f"idmint: no history for {what} {args.id} (never issued)", sys.stderr)
    return EXIT_OK


def cmd_types_list(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        types = mint.entity_types()
    if args.json:
        print_json(types)
        return EXIT_OK
    for line in format_table(("PREFIX", "NAME"), [[t.prefix, t.name] for t in types]):
        out(line)
    return EXIT_OK


def cmd_types_add(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        added = mint.add_entity_type(args.prefix, args.name)
    out(f"{added.prefix}\t{added.name}")
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    with _mint(args) as mint:
        out(mint.backfill_entity_numbers(args.table, args.column, _entity(args.entity)))
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
        return _cleanup_loop(mint, args.every.total_seconds())


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
    if isinstance(e, psycopg.ProgrammingError) and e.sqlstate is None:  # a malformed conninfo
        return bool(re.search(r"connection|dsn|uri|percent-encoded", str(e), re.I))
    if not isinstance(e, psycopg.OperationalError):
        return False
    state = e.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


# The CLI command that does what a SQL function does, for HINTs written for SQL callers
# (the SQL stays the same for every client; the CLI translates).
CLI_COMMANDS = {
    "add_fleet": "idmint fleet add NAME",
    "fleet_capacity": "idmint fleet list",
    "next_driver_id": "idmint driver-id FLEET",
    "next_driver_ids": "idmint driver-id FLEET -n N",
    "reserve_driver_id": "idmint reserve FLEET",
    "confirm_driver_id": "idmint confirm ID",
    "release_driver_id": "idmint release ID",
    "purge_expired_reservations": "idmint cleanup",
    "reset_driver_sequence": "idmint reset FLEET N",
    "driver_id_history": "idmint history ID",
    "gen_entity_numbers": "idmint numbers ENTITY N",
    "gen_entity_number": "idmint numbers ENTITY 1",
    "claim_entity_number": "idmint claim NUMBER",
    "entity_types": "idmint types list",
    "add_entity_type": "idmint types add PREFIX NAME",
    "backfill_entity_numbers": "idmint backfill TABLE COLUMN ENTITY",
    "entity_number_history": "idmint history NUMBER",
    "capacity_report": "idmint status",
    "entity_capacity": "idmint status",
}
# idmint.name or idmint.name(...), but not inside a quoted SQL statement the hint gives to
# run as it is (e.g. 'SELECT idmint.purge_expired_reservations()').
_SQL_CALL = re.compile(r"(?<!')(?<!SELECT )\bidmint\.([a-z_]+)(?:\([^()]*\))?")


def cli_hint(hint: str) -> str:
    """A HINT with the SQL functions it names replaced by the CLI commands that do the same."""

    def swap(m: re.Match[str]) -> str:
        command = CLI_COMMANDS.get(m.group(1))
        return f"`{command}`" if command else m.group(0)

    return _SQL_CALL.sub(swap, hint)


def report_error(e: BaseException, stream: TextIO | None = None) -> int:
    """Print an expected error in idmint's format (HINTs naming CLI commands, no secret);
    returns the exit code."""
    err = stream or sys.stderr
    lines: list[str] = []
    if isinstance(e, IdmintError):
        lines.append(f"idmint: error {e.sqlstate}: {e.message}")
        if e.detail:
            lines.append(f"DETAIL: {e.detail}")
        if e.hint:
            lines.append(f"HINT: {cli_hint(e.hint)}")
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
            lines.append(f"HINT: {cli_hint(hint)}")
        code = EXIT_CONNECTION if connection else EXIT_ERROR
    else:
        lines.append(f"idmint: error: {e}")
        code = EXIT_ERROR
    for line in lines:
        print(scrub(line), file=err, flush=True)
    return code


def _expected_errors() -> tuple[type[BaseException], ...]:
    from yoyo.exceptions import LockTimeout

    from ._cluster import ClusterError

    return (psycopg.Error, IdmintError, ClusterError, LockTimeout, OSError)


def _quiet_stdout() -> None:
    """The reader of stdout went away: send what is left (Python flushes at exit) nowhere."""
    with suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    note_secrets(argv, os.environ)
    try:
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
        except BrokenPipeError:
            raise
        except _expected_errors() as e:
            return report_error(e)
    except BrokenPipeError:
        # `idmint numbers part 50000 | head -1`: end quietly, as a process killed by SIGPIPE
        # would (exit 128 + 13), not with "[Errno 32] Broken pipe".
        _quiet_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
