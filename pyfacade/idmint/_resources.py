"""Where the packaged SQL and migrations live (wheel) or the checkout's copies (editable)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    packaged = _HERE / name
    if packaged.is_dir():
        return packaged
    return _HERE.parent.parent / name


def migrations_dir() -> Path:
    """The installed migrations folder: for plain yoyo, alembic or Django ``RunSQL``."""
    return _find("migrations")


def sql_dir() -> Path:
    return _find("sql")
