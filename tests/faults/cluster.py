"""Real PostgreSQL clusters that fault tests can crash, restart, replicate and promote.

`idmint.cluster.LocalCluster` (the demo's throwaway server) lives in a temporary directory;
fault tests need a data directory of their own under pytest's tmp_path, a standby made with
`pg_basebackup -R` and `pg_ctl promote`. This module adds those on top of the same binary
discovery and command line (`find_bindir`, `server_command` from idmint.cluster, which
knows how to run them as root). fsync stays ON.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg

from idmint.cluster import find_bindir, free_port, pid_alive, server_command
from idmint.migrate import migrate

PG_CTL_TIMEOUT_S = 120


class FaultCluster:
    """One PostgreSQL server (primary or standby) in `datadir`, listening on 127.0.0.1."""

    def __init__(self, datadir: Path, *, port: int | None = None) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries found")
        self.bindir = bindir
        self.datadir = datadir
        self.port = port or free_port()
        self.logfile = datadir.parent / f"{datadir.name}.log"

    # -- running binaries -----------------------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = PG_CTL_TIMEOUT_S + 30) -> str:
        res = subprocess.run(
            server_command([str(self.bindir / tool), *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {res.stderr.strip()}\n{log}")
        return res.stdout

    def configure(self, settings: Mapping[str, object]) -> None:
        """Append settings to postgresql.conf (a later line wins; takes effect at start)."""
        lines = [f"{k} = '{str(v).replace(chr(39), chr(39) * 2)}'" for k, v in settings.items()]
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n" + "\n".join(lines) + "\n")

    # -- life cycle -----------------------------------------------------------------------

    @classmethod
    def create(cls, datadir: Path, settings: Mapping[str, object] | None = None) -> FaultCluster:
        """initdb a new primary (fsync on, WAL for a standby) and start it."""
        c = cls(datadir)
        c._run(
            "initdb", "-D", str(datadir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        c.configure(
            {
                "listen_addresses": "127.0.0.1",
                "port": c.port,
                "unix_socket_directories": "",
                "fsync": "on",
                "synchronous_commit": "on",
                "wal_level": "replica",
                "max_wal_senders": 5,
                "max_connections": 100,
                "shared_buffers": "32MB",
                **(settings or {}),
            }
        )
        c.start()
        return c

    @classmethod
    def standby_of(
        cls, primary: FaultCluster, datadir: Path, application_name: str
    ) -> FaultCluster:
        """pg_basebackup -R from `primary` into `datadir`, then start it as a hot standby."""
        c = cls(datadir)
        source = psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=primary.port, user="postgres",
            application_name=application_name,
        )  # fmt: skip
        c._run(
            "pg_basebackup", "-d", source, "-D", str(datadir), "-R",
            "-X", "stream", "--checkpoint=fast", "--no-sync",
        )  # fmt: skip
        # The primary's postgresql.conf came along: give the standby its own port, and no
        # synchronous standby of its own (once promoted it must not wait for one).
        c.configure({"port": c.port, "synchronous_standby_names": "", "hot_standby": "on"})
        c.start()
        return c

    def start(self) -> None:
        """pg_ctl start -w: returns once crash recovery is over and connections are accepted."""
        self._run(
            "pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.logfile),
            "-w", "-t", str(PG_CTL_TIMEOUT_S),
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m MODE -w; `immediate` is a crash: no checkpoint, WAL buffers lost."""
        pid = self.postmaster_pid()
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w",
                  "-t", str(PG_CTL_TIMEOUT_S))  # fmt: skip
        if pid is not None:  # pg_ctl returns once postmaster.pid is gone; wait for the process
            deadline = time.monotonic() + 30
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)

    def crash(self) -> None:
        self.stop("immediate")

    def restart(self) -> None:
        self.start()

    def promote(self) -> None:
        """pg_ctl promote -w: returns once the standby accepts writes."""
        self._run("pg_ctl", "promote", "-D", str(self.datadir), "-w",
                  "-t", str(PG_CTL_TIMEOUT_S))  # fmt: skip

    def close(self) -> None:
        """Stop if running (immediate: nothing to keep), never raising."""
        if self.postmaster_pid() is not None:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        pid = self.postmaster_pid()
        if pid is not None and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    # -- connections ----------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", **extra: object) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, **extra
        )

    def connect(self, dbname: str = "postgres", **kw: object) -> psycopg.Connection:
        kw.setdefault("autocommit", True)
        return psycopg.connect(self.dsn(dbname), **kw)  # type: ignore[arg-type]

    def create_idmint_db(self, dbname: str = "idmint") -> str:
        """CREATE DATABASE + idmint migrations; returns its DSN."""
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        migrate(self.dsn(dbname))
        return self.dsn(dbname)
