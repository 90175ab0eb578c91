"""Start a real PgBouncer (transaction pooling, default_pool_size 2) in front of a PostgreSQL
server, for the facade's tests.

Every database name is forwarded (``* = host=... port=...``), so each test's fresh database
is reachable through it. PgBouncer refuses to run as root: as root it runs with
``-u postgres``, so its config lives in a world-readable temporary directory (pytest's own
temporary directories are private to root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgBouncer:
    """``with PgBouncer(host, port, user) as bouncer: bouncer.conninfo(dbname)``."""

    def __init__(
        self,
        server_host: str,
        server_port: int,
        user: str,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 2,
    ) -> None:
        self.server_host = server_host
        self.server_port = server_port
        self.user = user
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.host = "127.0.0.1"
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def conninfo(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=self.user, dbname=dbname
        )

    def _write_config(self) -> Path:
        self._dir = Path(tempfile.mkdtemp(prefix="idmint-pgbouncer-"))
        self._dir.chmod(0o755)
        users = self._dir / "users.txt"
        users.write_text(f'"{self.user}" ""\n')
        ini = self._dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {self.host}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.default_pool_size}\n"
            "max_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "server_reset_query =\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        for path in (users, ini):
            path.chmod(0o644)
        return ini

    def start(self) -> PgBouncer:
        self.port = free_port()
        ini = self._write_config()
        cmd = [PGBOUNCER, str(ini)]
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", "postgres"]
        assert self._dir is not None
        self._log = open(self._dir / "pgbouncer.log", "wb")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self._proc.returncode}: {self.log()}")
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)

    def log(self) -> str:
        if self._dir is None or not (self._dir / "pgbouncer.log").exists():
            return ""
        return (self._dir / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            self._log.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
