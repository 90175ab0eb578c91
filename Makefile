# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The demo needs only the package itself; the test stamp (a superset) counts for it too.
DEMO_STAMP := $(VENV)/.installed-demo

APT_PACKAGES := postgresql-15 postgresql-contrib postgresql-15-cron pgbouncer libpq-dev patroni etcd-server

.PHONY: demo test lint typecheck pytest sysdeps venv bench soak migration facade clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $(DEMO_STAMP)

venv: $(STAMP)

# Installs the servers the tests start (real PostgreSQL, pg_cron, PgBouncer, Patroni + etcd).
# Needs root for apt; as another user it checks and explains instead.
sysdeps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

demo: $(DEMO_STAMP)
	$(BIN)/idmint demo

lint: $(STAMP)
	$(BIN)/ruff check pyfacade tests bench tools
	$(BIN)/ruff format --check pyfacade tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

# The generated initial migration must match sql/ (sql/ is the one place code is written).
migration: $(STAMP)
	$(BIN)/python tools/build_migration.py

# The sync facade (client.py) is generated from the async one (aio.py).
facade: $(STAMP)
	$(BIN)/python tools/async_to_sync.py

# The suite mostly waits (lock and statement timeouts, the cron minute, servers starting):
# 4 workers, each with its own throwaway servers, keep it under 15 minutes on 2 cores.
TEST_WORKERS ?= 4
pytest: $(STAMP) sysdeps
	$(BIN)/python tools/build_migration.py --check
	$(BIN)/python tools/async_to_sync.py --check
	$(BIN)/pytest -q -p no:randomly -n $(TEST_WORKERS)

test: sysdeps $(STAMP) lint typecheck pytest

# Benchmarks against the peers on a throwaway cluster (docs/BENCHMARKS.md): the full run
# (10 s per point, 3 repetitions, about 15 minutes) unless BENCH_ARGS says otherwise,
# e.g. `make bench BENCH_ARGS=--quick` (about 4 minutes) or `BENCH_ARGS=--profile-only`.
BENCH_ARGS ?=
bench: $(STAMP) sysdeps
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

soak: $(STAMP) sysdeps
	IDMINT_SOAK=1 $(BIN)/pytest -q tests/faults

clean:
	rm -rf $(VENV) dist build
