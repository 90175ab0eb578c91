"""Jepsen-style operation history for driver-id allocation, and its checker.

Every allocation a client attempts is recorded as `invoke`, then exactly one of
- `ok(id)`  : the server acknowledged the commit and answered with that id;
- `fail`    : the server answered with an error on a live connection (autocommit: nothing
              was committed);
- `info`    : the outcome is unknown (the connection died during the call, e.g. during
              COMMIT; the transaction may or may not have committed).
A client that got `info` reconnects and invokes again with the SAME request_key; the
server then answers with the id the first attempt committed, or allocates a new one.

`check(history, committed)` compares the history with the ids committed in the database
after recovery (`committed`: driver id -> the request_key stored with it, or None):
- duplicate     : one id acknowledged for two different request keys (a reissue);
- key conflict  : one request key acknowledged with two different ids, or an acknowledged
                  id stored in the database under another key;
- lost          : an acknowledged id missing from the database;
- hole          : a fleet's committed numbers are not exactly 1..k;
- unexplained   : a committed id that no acknowledged operation returned and that no
                  operation of unknown outcome (`info`, never resolved) can account for.
Ids whose only outcome was `info` may go either way.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["invoke", "ok", "fail", "info"]


@dataclass(frozen=True)
class Op:
    process: int
    kind: Kind
    fleet: str
    key: str
    value: str | None = None  # the driver id (ok) or the error (fail/info)


class History:
    """Thread-safe, append-only list of operations."""

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        self.oks = 0

    def _add(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)
            if op.kind == "ok":
                self.oks += 1

    def invoke(self, process: int, fleet: str, key: str) -> None:
        self._add(Op(process, "invoke", fleet, key))

    def ok(self, process: int, fleet: str, key: str, driver_id: str) -> None:
        self._add(Op(process, "ok", fleet, key, driver_id))

    def fail(self, process: int, fleet: str, key: str, error: str) -> None:
        self._add(Op(process, "fail", fleet, key, error))

    def info(self, process: int, fleet: str, key: str, error: str) -> None:
        self._add(Op(process, "info", fleet, key, error))

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)


def split_id(driver_id: str) -> tuple[str, int]:
    """DRV-007ABC -> ("ABC", 7)."""
    return driver_id[7:10].upper(), int(driver_id[4:7])


@dataclass
class CheckResult:
    duplicates: list[str] = field(default_factory=list)
    key_conflicts: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    holes: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    invokes: int = 0
    oks: int = 0
    fails: int = 0
    infos: int = 0
    unresolved: int = 0  # keys whose only outcome was info
    committed: int = 0

    @property
    def valid(self) -> bool:
        return not (
            self.duplicates or self.key_conflicts or self.lost or self.holes or self.unexplained
        )

    def summary(self) -> str:
        return (
            f"{self.invokes} invoked, {self.oks} ok, {self.fails} fail, {self.infos} info "
            f"({self.unresolved} unresolved), {self.committed} committed; "
            f"duplicates={self.duplicates[:5]} ({len(self.duplicates)}), "
            f"key_conflicts={self.key_conflicts[:5]} ({len(self.key_conflicts)}), "
            f"lost={self.lost[:5]} ({len(self.lost)}), holes={self.holes[:5]} "
            f"({len(self.holes)}), unexplained={self.unexplained[:5]} ({len(self.unexplained)})"
        )


def check(ops: Iterable[Op], committed: Mapping[str, str | None]) -> CheckResult:
    """Check a complete history against the committed state after recovery."""
    r = CheckResult()
    ids_of_key: dict[str, set[str]] = defaultdict(set)
    keys_of_id: dict[str, set[str]] = defaultdict(set)
    outcomes: dict[str, set[str]] = defaultdict(set)
    fleet_of_key: dict[str, str] = {}
    for op in ops:
        fleet_of_key[op.key] = op.fleet.upper()
        if op.kind == "invoke":
            r.invokes += 1
            continue
        outcomes[op.key].add(op.kind)
        if op.kind == "ok":
            r.oks += 1
            assert op.value is not None
            ids_of_key[op.key].add(op.value.upper())
            keys_of_id[op.value.upper()].add(op.key)
        elif op.kind == "fail":
            r.fails += 1
        else:
            r.infos += 1
    committed = {k.upper(): v for k, v in committed.items()}
    r.committed = len(committed)

    for driver_id, keys in sorted(keys_of_id.items()):
        if len(keys) > 1:
            r.duplicates.append(f"{driver_id} acknowledged for keys {sorted(keys)}")
        if driver_id not in committed:
            r.lost.append(driver_id)
        elif committed[driver_id] is not None and committed[driver_id] not in keys:
            r.key_conflicts.append(f"{driver_id} stored under key {committed[driver_id]!r}")
    for key, ids in sorted(ids_of_key.items()):
        if len(ids) > 1:
            r.key_conflicts.append(f"key {key!r} acknowledged as {sorted(ids)}")

    unresolved = {k for k, kinds in outcomes.items() if "ok" not in kinds and "info" in kinds}
    r.unresolved = len(unresolved)
    spare: dict[str, int] = defaultdict(int)  # unresolved info ops per fleet
    for key in unresolved:
        spare[fleet_of_key[key]] += 1

    numbers: dict[str, set[int]] = defaultdict(set)
    for driver_id in committed:
        fleet, number = split_id(driver_id)
        numbers[fleet].add(number)
    for driver_id in keys_of_id:  # acknowledged ids count for the 1..k range even if lost
        fleet, number = split_id(driver_id)
        numbers[fleet].add(number)
    for fleet, nums in sorted(numbers.items()):
        for n in range(1, max(nums) + 1):
            candidate = f"DRV-{n:03d}{fleet}"
            if candidate not in committed and candidate not in r.lost:
                r.holes.append(candidate)

    for driver_id, key in sorted(committed.items()):
        if driver_id in keys_of_id:
            continue
        fleet, _ = split_id(driver_id)
        if key is not None:
            if key in unresolved:
                continue
            r.unexplained.append(f"{driver_id} (key {key!r}, never acknowledged)")
        elif spare[fleet] > 0:
            spare[fleet] -= 1
        else:
            r.unexplained.append(driver_id)
    return r
