"""Apply and roll back idmint's yoyo migrations through yoyo's Python API, under yoyo's lock."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from yoyo import get_backend, read_migrations

from ._resources import migrations_dir

LOCK_TIMEOUT_S = 120


def yoyo_url(dsn: str) -> str:
    """Turn a libpq DSN (URL or key=value) into yoyo's postgresql+psycopg:// URL."""
    if "://" not in dsn:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        user = quote(str(info.get("user", "")), safe="")
        password = info.get("password")
        auth = user + (":" + quote(str(password), safe="") if password else "")
        host = str(info.get("host", ""))
        hostpart = host if host and not host.startswith("/") else ""
        port = info.get("port")
        netloc = (auth + "@" if auth else "") + hostpart + (f":{port}" if port else "")
        query = f"host={quote(host)}" if host.startswith("/") else ""
        return urlunsplit(
            ("postgresql+psycopg", netloc, "/" + str(info.get("dbname", "")), query, "")
        )
    parts = urlsplit(dsn)
    return urlunsplit(("postgresql+psycopg", *parts[1:]))


def migrate(dsn: str) -> list[str]:
    """Apply every pending migration; returns the ids applied (empty when up to date)."""
    backend = get_backend(yoyo_url(dsn))
    try:
        migrations = read_migrations(str(migrations_dir()))
        with backend.lock(timeout=LOCK_TIMEOUT_S):
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
            return [m.id for m in pending]
    finally:
        backend.connection.close()


def rollback(dsn: str, steps: int = 1) -> list[str]:
    """Roll back the newest `steps` applied migrations; returns the ids rolled back."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    backend = get_backend(yoyo_url(dsn))
    try:
        migrations = read_migrations(str(migrations_dir()))
        with backend.lock(timeout=LOCK_TIMEOUT_S):
            applied = backend.to_rollback(migrations)
            chosen = applied[:steps]
            backend.rollback_migrations(chosen)
            return [m.id for m in chosen]
    finally:
        backend.connection.close()
