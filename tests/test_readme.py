"""The README runs: its code blocks, top to bottom, against one fresh PostgreSQL cluster.

What the reader is told to have (a database ``app`` owned by ``app_owner``, an application
role ``app``, a superuser ``postgres``) is created here; everything else (the idmint roles,
the install, the grants, every example) comes from the README itself, in order.

The fence tag decides what happens to a block:

- ``sql``: run statement by statement on one connection, opened with the conninfo of the
  block's first line, ``-- psql "<conninfo>"``. ``--> text`` shows the result of the
  statement(s) ending on that line: one ``-->`` per row (further rows on the following lines,
  which hold only ``--> …``), columns joined by `` | `` and written as psql writes them
  (``t``/``f``, NULL as nothing); an error shows as ``--> ERROR <SQLSTATE>: <message>``.
  A statement that returns rows or fails must show them.
- ``python``: all blocks run in one namespace. A top-level expression ending in
  ``# -> text`` must have ``repr(value) == text``; any other top-level expression must
  evaluate to None (a result nobody shows is an undocumented output).
- ``console``: ``$ idmint ARGS`` runs the installed CLI (the ``idmint`` next to this Python);
  the lines up to the next ``$`` are its output, stdout then stderr, and the command must
  exit 0 unless that output has a line starting ``idmint: error``. ``$ export NAME=value``
  sets the environment of the commands after it. Nothing else runs in a console block.
- ``shell``, ``text``, ``json``: shown, never run (``make demo``, ``pip install``, listings).

In every shown output ``…`` matches any non-empty text (random codes, numbers, uuids, times).
Host and port come from ``PGHOST``/``PGPORT``, as the README says.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.adapt import AdaptersMap
from psycopg.types.string import TextLoader
from pytest_postgresql import factories

from tests.conftest import PG_CTL

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUNNABLE = {"sql", "python", "console"}
SHOWN_ONLY = {"shell", "text", "json"}
MAX_LINES = 250

# A cluster of its own: the README creates the cluster-wide roles idmint_user and
# idmint_admin, which the shared test cluster already has.
readme_proc = factories.postgresql_proc(executable=PG_CTL, port=(24000, 24999))


@dataclass
class Block:
    tag: str
    line: int  # 1-based line of the opening fence
    text: str


def blocks(markdown: str) -> list[Block]:
    found: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if m is None:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"README.md:{start}: unclosed code block"
        found.append(Block(m.group(1), start, "\n".join(body)))
        i += 1
    return found


def matches(expected: str, actual: str) -> bool:
    """`…` in `expected` stands for any non-empty text; the rest must be equal."""
    pattern = ".+?".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, actual, re.DOTALL) is not None


def same_lines(expected: list[str], actual: list[str]) -> bool:
    return len(expected) == len(actual) and all(map(matches, expected, actual))


# -- sql ---------------------------------------------------------------------------------


def split_sql(line: str, quote: str) -> tuple[list[tuple[str, bool]], str, str]:
    """Cut one line into pieces of SQL, each flagged True when a ';' ends a statement there;
    also return the line's comment and the quote (' or ") still open at its end. Dollar
    quoting is not supported (the README has none)."""
    pieces: list[tuple[str, bool]] = []
    cur: list[str] = []
    comment = ""
    for i, c in enumerate(line):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif line.startswith("--", i):
            comment = line[i:]
            break
        elif c == "$":
            raise AssertionError(f"dollar quoting is not supported: {line!r}")
        elif c == ";":
            pieces.append(("".join(cur), True))
            cur = []
            continue
        cur.append(c)
    pieces.append(("".join(cur) + "\n", False))
    return pieces, comment, quote


def run_sql(block: Block) -> None:
    lines = block.text.splitlines()
    first = re.fullmatch(r'--\s*psql\s+"([^"]+)".*', lines[0].strip())
    assert first, f'README.md:{block.line}: an sql block starts with -- psql "<conninfo>"'
    # Every value loaded as the server's text output, as psql prints it.
    as_text = AdaptersMap()
    as_text.register_loader(0, TextLoader)
    buffer, quote = "", ""
    with psycopg.connect(first.group(1), autocommit=True, context=as_text) as conn:
        for idx, line in enumerate(lines):
            where = f"README.md:{block.line + 1 + idx}: {line.strip()}"
            pieces, comment, quote = split_sql(line, quote)
            ended, produced = False, []
            for text, ends in pieces:
                buffer += text
                if ends:
                    ended = True
                    produced += execute(conn, buffer)
                    buffer = ""
            shown = shown_sql(lines, idx, comment)
            if line.strip().startswith("-->"):
                continue  # a further row of the line above
            assert ended or not shown, f"{where}: --> on a line that ends no statement"
            assert same_lines(shown, produced), f"{where}\n shown: {shown}\n   got: {produced}"
    assert not buffer.strip(), f"README.md:{block.line}: unterminated statement {buffer!r}"


def execute(conn: psycopg.Connection[Any], statement: str) -> list[str]:
    if not statement.strip():
        return []
    try:
        cur = conn.execute(statement)
    except psycopg.Error as e:
        return [f"ERROR {e.sqlstate}: {e.diag.message_primary}"]
    if cur.description is None:
        return []
    rows = cur.fetchall()
    return [" | ".join("" if v is None else str(v) for v in row).rstrip() for row in rows]


def shown_sql(lines: list[str], idx: int, comment: str) -> list[str]:
    """The results shown for line idx: its own `--> …`, then the following lines that hold
    only `--> …`."""
    shown = [comment[3:].strip()] if comment.startswith("-->") else []
    for nxt in lines[idx + 1 :]:
        if not nxt.strip().startswith("-->"):
            break
        shown.append(nxt.strip()[3:].strip())
    return shown


# -- python ------------------------------------------------------------------------------


def run_python(block: Block, namespace: dict[str, Any]) -> None:
    lines = block.text.splitlines()
    tree = ast.parse(block.text, filename=f"README.md:{block.line}")
    for node in tree.body:
        where = f"README.md:{block.line + node.lineno}"
        last = lines[(node.end_lineno or node.lineno) - 1]
        shown = re.search(r"#\s*->\s*(.*)$", last)
        if isinstance(node, ast.Expr):
            code = compile(ast.Expression(node.value), where, "eval")
            value = eval(code, namespace)
            if shown is None:
                assert value is None, f"{where}: {value!r} is not shown (add # -> ...)"
            else:
                got = repr(value)
                assert matches(shown.group(1).strip(), got), (
                    f"{where}\n shown: {shown.group(1).strip()}\n   got: {got}"
                )
        else:
            assert shown is None, f"{where}: # -> on a statement that has no value"
            exec(compile(ast.Module([node], []), where, "exec"), namespace)


# -- console -----------------------------------------------------------------------------


def idmint_command() -> list[str]:
    script = Path(sys.executable).with_name("idmint")
    return [str(script)] if script.exists() else [sys.executable, "-m", "idmint"]


def run_console(block: Block, setenv: Callable[[str, str], None]) -> None:
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith("$ "), f"README.md:{block.line + 1 + i}: output without a command"
        j = i + 1
        while j < len(lines) and not lines[j].startswith("$ "):
            j += 1
        where = f"README.md:{block.line + 1 + i}: {line}"
        argv = shlex.split(line[2:], comments=True)
        if argv[0] == "export":
            assert j == i + 1, f"{where}: export prints nothing"
            for assignment in argv[1:]:
                name, _, value = assignment.partition("=")
                setenv(name, value)
        else:
            assert argv[0] == "idmint", f"{where}: only idmint runs here (use ```shell)"
            p = subprocess.run(
                idmint_command() + argv[1:], capture_output=True, text=True, timeout=120
            )
            got = p.stdout.splitlines() + p.stderr.splitlines()
            shown = lines[i + 1 : j]
            assert same_lines(shown, got), f"{where}\n shown: {shown}\n   got: {got}"
            failed = any(s.startswith("idmint: error") for s in shown)
            assert (p.returncode != 0) == failed, f"{where}: exit code {p.returncode}"
        i = j


# -- the test ----------------------------------------------------------------------------


@pytest.fixture
def readme_env(readme_proc: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh cluster with what the README asks the reader to have: database `app` owned by
    `app_owner`, application role `app`, superuser `postgres`; libpq pointed at it."""
    assert readme_proc.user == "postgres"
    for name in list(os.environ):
        if name.startswith("PG") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("PGHOST", str(readme_proc.host))
    monkeypatch.setenv("PGPORT", str(readme_proc.port))
    with psycopg.connect("dbname=postgres user=postgres", autocommit=True) as su:
        su.execute("CREATE ROLE app_owner LOGIN")
        su.execute("CREATE ROLE app LOGIN")
        su.execute("CREATE DATABASE app OWNER app_owner")
    yield


def test_readme_is_a_quick_start() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES
    tags = [b.tag for b in blocks(text)]
    assert set(tags) <= RUNNABLE | SHOWN_ONLY, set(tags) - RUNNABLE - SHOWN_ONLY
    assert set(tags) >= RUNNABLE


def test_readme_runs_top_to_bottom(readme_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace: dict[str, Any] = {"__name__": "readme"}
    ran = 0
    for block in blocks(README.read_text()):
        if block.tag == "sql":
            run_sql(block)
        elif block.tag == "python":
            run_python(block, namespace)
        elif block.tag == "console":
            run_console(block, monkeypatch.setenv)
        else:
            continue
        ran += 1
    assert ran >= 5
