"""One etcd and a Patroni cluster on 127.0.0.1, for the HA fault tests (tests/faults/test_patroni.py).

Patroni 3.0.2 and etcd 3.4 from Debian (`make sysdeps` installs `patroni etcd-server`).
etcd runs as root; Patroni runs as the `postgres` user (PostgreSQL refuses root: see
`idmint.cluster.as_server_user`) and starts its own PostgreSQL from
/usr/lib/postgresql/15/bin. Everything lives in one directory made for the test under /tmp
(owned by that user) and removed afterwards.

Every process this module starts is known by its pid: etcd and Patroni are our children;
a postmaster is started by Patroni through a short-lived intermediate process (so it is
re-parented), and is found through its data directory's postmaster.pid and, as a last
resort, by a command line naming our private directory. `close()` ends exactly those pids
(and a postmaster's children), never anything found by a program name.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from idmint.cluster import as_server_user, child_pids, free_port, pid_alive, server_user

PATRONI = shutil.which("patroni") or "/usr/bin/patroni"
PATRONICTL = shutil.which("patronictl") or "/usr/bin/patronictl"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
PG_BINDIR = "/usr/lib/postgresql/15/bin"
SUPERUSER = ("postgres", "idmint-test-superuser")
REPLICATION = ("replicator", "idmint-test-replicator")
NAMESPACE = "/idmint-test/"

T = TypeVar("T")


def poll(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.05
) -> T:
    """Call probe() until it returns something other than None/False; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except Exception as e:  # a server that is down or restarting: keep polling
            value, last = None, e
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} ({last!r})")
        time.sleep(interval)


def _pids_naming(directory: Path) -> list[int]:
    """Processes whose command line names our private directory (a leftover postmaster)."""
    needle = str(directory).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def http_request(
    url: str, method: str = "GET", body: object = None, timeout: float = 2.0
) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:  # /primary answers 503 on a replica, with a body
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw.strip() else None
    except ValueError:
        return status, None


def http_json(url: str, method: str = "GET", body: object = None, timeout: float = 2.0) -> Any:
    return http_request(url, method, body, timeout)[1]


# -- configuration (docs/HA.md shows these, rendered by test_patroni_docs_show_the_settings) --


def etcd_argv(
    data_dir: Path | str, client_port: int | str, peer_port: int | str, token: str
) -> list[str]:
    """One etcd member on loopback; Patroni talks to it through the v3 API (`etcd3:`)."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        ETCD, "--name", "etcd0", "--data-dir", str(data_dir),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"etcd0={peer}", "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
    ]  # fmt: skip


def patroni_config(
    scope: str,
    name: str,
    directory: Path | str,
    pg_port: int | str,
    api_port: int | str,
    etcd_port: int | str,
    dcs: Mapping[str, object],
) -> dict[str, Any]:
    """One node's Patroni configuration file (bootstrap.dcs is the same on every node)."""
    return {
        "scope": scope,
        "namespace": NAMESPACE,
        "name": name,
        "restapi": {
            "listen": f"127.0.0.1:{api_port}",
            "connect_address": f"127.0.0.1:{api_port}",
        },
        "etcd3": {"hosts": [f"127.0.0.1:{etcd_port}"]},
        "bootstrap": {
            "dcs": dict(dcs),
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, {"auth": "scram-sha-256"}],
            "pg_hba": [
                f"host replication {REPLICATION[0]} 127.0.0.1/32 scram-sha-256",
                "host all all 127.0.0.1/32 scram-sha-256",
            ],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{pg_port}",
            "connect_address": f"127.0.0.1:{pg_port}",
            "data_dir": f"{directory}/data",
            "bin_dir": PG_BINDIR,
            "pgpass": f"{directory}/pgpass",
            "authentication": {
                "superuser": {"username": SUPERUSER[0], "password": SUPERUSER[1]},
                "replication": {"username": REPLICATION[0], "password": REPLICATION[1]},
            },
            "basebackup": [{"checkpoint": "fast"}],
            "parameters": {"unix_socket_directories": str(directory)},
        },
        "watchdog": {"mode": "off"},
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
    }


_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)  # a YAML double-quoted scalar


def to_yaml(value: object, indent: int = 0) -> str:
    """Block YAML for nested dicts and lists of scalars (what Patroni's files need)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, Mapping | list) and v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 2).rstrip("\n"))
            else:
                lines.append(f"{pad}{k}: {_scalar(v) if v or v is False or v == 0 else '{}'}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping):
                body = to_yaml(item, indent + 2).rstrip("\n")
                lines.append(f"{pad}- {body.lstrip()}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(pad + _scalar(value))
    return "\n".join(lines) + "\n"


@dataclass
class Node:
    name: str
    directory: Path
    pg_port: int
    api_port: int
    config_file: Path
    proc: subprocess.Popen[bytes] | None = None
    postmasters: set[int] = field(default_factory=set)  # every postmaster pid seen

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "patroni.log"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        if pid_alive(pid):
            self.postmasters.add(pid)
            return pid
        return None

    def patroni_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def dsn(self, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.pg_port, user=SUPERUSER[0], password=SUPERUSER[1],
            dbname=dbname, connect_timeout=3,
        )  # fmt: skip

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class PatroniCluster:
    """`PatroniCluster.start(3, dcs={...})`: etcd + n Patroni nodes; `close()` ends them all."""

    def __init__(self, size: int, dcs: Mapping[str, object], scope: str = "idmint") -> None:
        self.user = server_user()  # who Patroni runs as: it must own the files
        self.base = Path(tempfile.mkdtemp(prefix="idmint-patroni-", dir="/tmp"))
        self._own(self.base)
        self.scope = scope
        self.dcs_settings = dict(dcs)
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.etcd: subprocess.Popen[bytes] | None = None
        self.nodes = [self._make_node(f"node{i}") for i in range(size)]
        self.by_name = {n.name: n for n in self.nodes}
        self._log_files: list[Any] = []

    # -- configuration --------------------------------------------------------------------

    def _make_node(self, name: str) -> Node:
        directory = self.base / name
        directory.mkdir(mode=0o700)
        self._own(directory)
        return Node(name, directory, free_port(), free_port(), directory / "patroni.yml")

    def patroni_config(self, node: Node) -> dict[str, Any]:
        return patroni_config(
            self.scope, node.name, node.directory, node.pg_port, node.api_port,
            self.etcd_port, self.dcs_settings,
        )  # fmt: skip

    def _write_config(self, node: Node) -> None:
        node.config_file.write_text(to_yaml(self.patroni_config(node)))
        self._own(node.config_file)

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, *self.user)

    # -- life cycle -----------------------------------------------------------------------

    @classmethod
    def start(cls, size: int, dcs: Mapping[str, object]) -> PatroniCluster:
        c = cls(size, dcs)
        try:
            c.start_etcd()
            for node in c.nodes:
                c._write_config(node)
            # The first node bootstraps alone: until its bootstrap writes the dynamic
            # configuration (loop_wait 1) to etcd, a waiting node sleeps Patroni's default
            # loop_wait of 10 s between looks.
            c.start_node(c.nodes[0])
            poll("the first node to bootstrap", c.leader, 60)
            for node in c.nodes[1:]:
                c.start_node(node)
        except BaseException:
            c.close()
            raise
        return c

    def _env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        env["HOME"] = str(self.base)
        return env

    def start_etcd(self) -> None:
        data = self.base / "etcd"
        data.mkdir(mode=0o700)
        client = f"http://127.0.0.1:{self.etcd_port}"
        log = open(self.base / "etcd.log", "ab")  # noqa: SIM115 - closed in close()
        self._log_files.append(log)
        self.etcd = subprocess.Popen(
            etcd_argv(data, self.etcd_port, self.etcd_peer_port, self.base.name),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=self._env(), start_new_session=True,
        )  # fmt: skip
        poll(
            "etcd to answer",
            lambda: http_json(f"{client}/health").get("health") == "true",
            timeout=30,
        )

    def start_node(self, node: Node) -> None:
        """Start the node's Patroni (as postgres); it bootstraps, clones or rejoins by itself."""
        log = open(node.log_file, "ab")  # noqa: SIM115 - closed in close()
        self._log_files.append(log)
        node.proc = subprocess.Popen(
            [PATRONI, str(node.config_file)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=self._env(), cwd=node.directory, start_new_session=True, **as_server_user(),
        )  # fmt: skip

    def close(self, keep_logs: Path | None = None) -> None:
        """End every process this cluster started, by pid, and remove its directory
        (after copying the logs to `keep_logs` or $IDMINT_KEEP_PATRONI_LOGS, if given)."""
        patronis = [n.proc.pid for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        _signal_all(patronis, signal.SIGSTOP)  # no Patroni restarts anything from here on
        postmasters: set[int] = set()
        for node in self.nodes:
            node.postmaster_pid()
            postmasters |= {p for p in node.postmasters if pid_alive(p)}
        postmasters |= set(_pids_naming(self.base)) - set(patronis)
        doomed = set(postmasters)
        for pid in postmasters:
            doomed |= set(child_pids(pid))
        _signal_all(doomed, signal.SIGKILL)
        _signal_all(patronis, signal.SIGKILL)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.kill()
        for node in self.nodes:
            if node.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(10)
        if self.etcd is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.etcd.wait(10)
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in doomed) and time.monotonic() < deadline:
            time.sleep(0.01)
        for f in self._log_files:
            f.close()
        keep = keep_logs or os.environ.get("IDMINT_KEEP_PATRONI_LOGS")
        if keep:
            for log in self.base.glob("**/*.log"):
                target = Path(keep) / self.base.name / log.relative_to(self.base)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, target)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- faults ---------------------------------------------------------------------------

    def kill_postmaster(self, node: Node) -> int:
        """kill -9 of the node's postmaster only (Patroni keeps running); returns its pid."""
        pid = node.postmaster_pid()
        assert pid is not None, f"{node.name} has no running postmaster"
        os.kill(pid, signal.SIGKILL)
        return pid

    def lose_node(self, node: Node) -> None:
        """The node is gone: its Patroni, its postmaster and every backend die together."""
        assert node.proc is not None
        pm = node.postmaster_pid()
        group = [node.proc.pid] + ([pm, *child_pids(pm)] if pm is not None else [])
        _signal_all(group, signal.SIGSTOP)  # freeze all first: nobody reacts to the others
        _signal_all(group, signal.SIGKILL)
        node.proc.wait(10)
        poll(f"{node.name}'s processes to end", lambda: not any(pid_alive(p) for p in group), 10)

    # -- observing ------------------------------------------------------------------------

    def live_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.patroni_alive()]

    def cluster_state(self) -> dict[str, Any]:
        """GET /cluster from the first live node that answers."""
        last: Exception | None = None
        for node in self.live_nodes():
            try:
                return dict(http_json(f"{node.api}/cluster"))
            except (OSError, ValueError) as e:
                last = e
        raise RuntimeError(f"no Patroni REST API answers: {last!r}")

    def published_optime(self) -> int | None:
        """The leader's WAL position as Patroni last published it in etcd (the `/status` key,
        written once per loop_wait): what `maximum_lag_on_failover` is measured against."""
        key = base64.b64encode(f"{NAMESPACE}{self.scope}/status".encode()).decode()
        url = f"http://127.0.0.1:{self.etcd_port}/v3/kv/range"
        status, body = http_request(url, "POST", {"key": key})
        if status != 200 or not body or not body.get("kvs"):
            return None
        return int(json.loads(base64.b64decode(body["kvs"][0]["value"]))["optime"])

    def leader(self) -> Node | None:
        for m in self.cluster_state()["members"]:
            if m["role"] == "leader" and m["state"] == "running":
                return self.by_name[m["name"]]
        return None

    def members(self) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in self.cluster_state()["members"]}

    def wait_healthy(self, nodes: int, *, sync: bool, timeout: float = 60.0) -> Node:
        """Wait for a running leader, nodes-1 running replicas that stream from it and, in
        synchronous mode, a synchronous standby that PostgreSQL itself reports as `sync`."""

        def probe() -> Node | None:
            members = self.members()
            leader = self.leader()
            if leader is None or len(members) != nodes:
                return None
            replicas = [m for m in members.values() if m["name"] != leader.name]
            if any(m["state"] != "running" for m in replicas):
                return None
            with leader.connect() as conn:
                rows = conn.execute(
                    "SELECT application_name, sync_state FROM pg_stat_replication"
                    " WHERE state = 'streaming'"
                ).fetchall()
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if in_recovery != (False,) or len(rows) != nodes - 1:
                return None
            if sync:
                syncs = {a for a, s in rows if s == "sync"}
                role_sync = {m["name"] for m in replicas if m["role"] == "sync_standby"}
                if not syncs or syncs != role_sync:
                    return None
            return leader

        return poll(f"a healthy {nodes}-node cluster", probe, timeout)

    def patronictl(self, *args: str, timeout: float = 60.0) -> str:
        res = subprocess.run(
            [PATRONICTL, "-c", str(self.nodes[0].config_file), *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            env=self._env(),
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"patronictl {' '.join(args)} failed: {res.stdout}{res.stderr}")
        return res.stdout

    def patch_config(self, changes: Mapping[str, object]) -> None:
        """PATCH the dynamic configuration (kept in etcd) through a live node's REST API."""

        def applied() -> bool:
            # A node answers 409 when its view of the configuration was stale: try again.
            node = self.live_nodes()[0]
            status, _ = http_request(f"{node.api}/config", "PATCH", changes)
            if status != 200:
                return False
            status, config = http_request(f"{node.api}/config")
            return status == 200 and all(config.get(k) == v for k, v in changes.items())

        poll(f"Patroni to store {changes}", applied, 30)

    def multi_host_dsn(self, dbname: str = "idmint") -> str:
        return client_dsn([n.pg_port for n in self.nodes], dbname)


def client_dsn(ports: Sequence[int | str], dbname: str = "idmint") -> str:
    """What a client uses: every node, and libpq keeps the first that accepts writes."""
    return psycopg.conninfo.make_conninfo(
        host=",".join("127.0.0.1" for _ in ports),
        port=",".join(str(p) for p in ports),
        user=SUPERUSER[0], password=SUPERUSER[1], dbname=dbname,
        target_session_attrs="read-write", connect_timeout=2,
    )  # fmt: skip
