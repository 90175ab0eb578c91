"""The throwaway cluster the benchmarks run on, and a description of the machine."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from idmint.cluster import LocalCluster
from idmint.migrate import migrate

DBNAME = "bench"

# Server settings. Durability stays at the defaults (fsync, synchronous_commit and
# full_page_writes on): the physical limit of a gapless counter is the commit flush.
# Checkpoints are moved out of the way (the runner issues CHECKPOINT between points)
# and memory is sized so the data sets stay cached.
SETTINGS: dict[str, str] = {
    "shared_buffers": "512MB",
    "work_mem": "32MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "16GB",
    "min_wal_size": "1GB",
    "checkpoint_timeout": "1h",
    "max_connections": "120",
    "autovacuum": "on",
}
PROFILE_SETTINGS: dict[str, str] = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "track_functions": "all",
}


def start_cluster(profile: bool = False) -> LocalCluster:
    settings = dict(SETTINGS)
    if profile:
        settings.update(PROFILE_SETTINGS)
    cluster = LocalCluster(settings, embedded=False).start()
    try:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DBNAME}")
        migrate(cluster.dsn_for(DBNAME))
        if profile:
            with psycopg.connect(cluster.dsn_for(DBNAME), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    except BaseException:
        cluster.close()
        raise
    return cluster


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _disk_of(path: Path) -> str:
    try:
        out = subprocess.run(
            ["df", "-hT", str(path)], capture_output=True, text=True, check=True, timeout=10
        ).stdout.splitlines()
        return out[-1] if out else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def fsync_rate(cluster: LocalCluster, seconds: int = 1) -> str:
    """pg_test_fsync's fdatasync line for the cluster's disk (one 8 kB write)."""
    tool = cluster.bindir / "pg_test_fsync"
    if not tool.exists():
        return ""
    target = cluster.tempdir / "fsync.probe"
    try:
        out = subprocess.run(
            [str(tool), "-s", str(seconds), "-f", str(target)],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    finally:
        target.unlink(missing_ok=True)
    for line in out.splitlines():
        if line.strip().startswith("fdatasync"):
            return " ".join(line.split())
    return ""


def migration_digest() -> str:
    """sha256 (first 12 hex) of the migration that was benchmarked: which idmint ran."""
    from idmint import migrations_dir

    h = hashlib.sha256()
    for f in sorted(Path(migrations_dir()).glob("*.sql")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def machine(cluster: LocalCluster, conn: psycopg.Connection[Any]) -> dict[str, Any]:
    mem_kb = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = _read("/proc/loadavg").split()[:3]
    version = conn.execute("SELECT version()").fetchone()
    names = sorted(
        {
            *SETTINGS,
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "wal_level",
            "track_functions",
            "shared_preload_libraries",
        }
    )
    rows = conn.execute(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
        [names],
    ).fetchall()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": load,
        "disk": _disk_of(cluster.tempdir),
        "fsync_probe": fsync_rate(cluster),
        "postgresql": version[0] if version else "",
        "settings": dict(rows),
        "pgbench": pgbench_path(cluster),
        "idmint_migration_sha256": migration_digest(),
    }


def pgbench_path(cluster: LocalCluster) -> str:
    cand = cluster.bindir / "pgbench"
    if cand.exists():
        return str(cand)
    found = shutil.which("pgbench")
    if not found:
        raise RuntimeError("pgbench not found (install postgresql-client / postgresql-15)")
    return found
