"""Fixtures for fault tests: private clusters (fsync on) that tests may crash.

IDMINT_SOAK=1 (`make soak`) selects the full sizes; `make test` runs shorter loops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import FaultCluster

SOAK = os.environ.get("IDMINT_SOAK", "") not in ("", "0")


def size(quick: int, soak: int) -> int:
    """The quick size in `make test`, the full one under IDMINT_SOAK=1."""
    return soak if SOAK else quick


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Callable[..., FaultCluster]]:
    """Factory for new primaries: clusters(name, **settings); all are stopped afterwards."""
    made: list[FaultCluster] = []

    def _new(name: str = "primary", **settings: object) -> FaultCluster:
        c = FaultCluster.create(tmp_path / name, settings)
        made.append(c)
        return c

    _new.made = made  # type: ignore[attr-defined]  # standbys register here too
    yield _new
    for c in made:
        c.close()
