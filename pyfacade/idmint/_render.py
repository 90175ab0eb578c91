"""Plain-text tables for the CLI and the demo (``idmint status``, ``idmint fleet list``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timezone

from .types import CapacityReport


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()
) -> list[str]:
    """Aligned columns under a rule; numbers and the `right` columns are right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    align_right = [
        i in right
        or (bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows))
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w)
            for v, w, r in zip(values, widths, align_right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(list(headers)), line(["-" * w for w in widths]), *(line(r) for r in cells)]


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def pct(v: float | None) -> str:
    return "" if v is None else f"{100.0 * v:.1f}%"


def _exhaustion(value: object) -> str:
    if value is None:
        return "never"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def render_status(rows: Sequence[CapacityReport]) -> list[str]:
    headers = (
        "SCOPE", "KEY", "NAME", "CAPACITY", "USED", "RESERVED", "FREE", "UTIL",
        "PER_DAY", "EXHAUSTED",
    )  # fmt: skip
    table: list[list[object]] = [
        [
            r.scope,
            r.key,
            r.name,
            r.capacity,
            r.used,
            r.reserved,
            r.free,
            pct(r.utilization),
            round(r.per_day, 2),
            _exhaustion(r.exhausted_at),
        ]
        for r in rows
    ]
    return format_table(headers, table, right=(7, 9))
