"""Generate the sync facade (pyfacade/idmint/client.py) from the async one (aio.py).

The async facade is the one written by hand; the sync one is the same code without
async/await, with psycopg's sync classes. `--check` (run by `make test`) fails when
client.py is not what this script makes of aio.py. The generated file is formatted with
ruff, so the rules below only need to get the tokens right.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "pyfacade" / "idmint" / "aio.py"
TARGET = ROOT / "pyfacade" / "idmint" / "client.py"

DOCSTRING = '''"""The synchronous facade, :class:`IdMint`.

GENERATED from aio.py by tools/async_to_sync.py: edit aio.py and run `make facade`.
"""'''

# (pattern, replacement), applied in order to the whole text.
RULES: list[tuple[str, str]] = [
    (r'\A""".*?"""', DOCSTRING.replace("\\", "\\\\")),
    (r"await asyncio\.to_thread\((\w+), ", r"\1("),
    (r"await psycopg\.AsyncConnection\.connect\(", "psycopg.connect("),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"^import asyncio$", "import threading"),
    (r"\basyncio\.Lock\(\)", "threading.Lock()"),
    (r"\basyncio\.sleep\(", "time.sleep("),
    (r"\basynccontextmanager\b", "contextmanager"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncConnectionPool\b", "ConnectionPool"),
    (r"\bAsyncConnection\b", "Connection"),
    (r"\bAsyncIdMint\b", "IdMint"),
]


def generate(source: str) -> str:
    text = source
    for pattern, replacement in RULES:
        text = re.sub(pattern, replacement, text, flags=re.MULTILINE | re.DOTALL)
    if "async" in re.sub(r'""".*?"""|#.*', "", text, flags=re.DOTALL):
        raise SystemExit("async_to_sync: an 'async' survived; add a rule")
    ruff = Path(sys.executable).with_name("ruff")
    formatted = subprocess.run(
        [str(ruff), "format", "--stdin-filename", str(TARGET), "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return formatted.stdout


def main(argv: list[str]) -> int:
    text = generate(SOURCE.read_text())
    if "--check" in argv:
        if TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run `make facade`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
