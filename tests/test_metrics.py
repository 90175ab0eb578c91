"""Prometheus metrics of the facade (idmint[metrics]): calls, latency, retries and failures
by SQLSTATE per operation; and no prometheus_client import without them."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from prometheus_client import CollectorRegistry

import idmint
from tests.util import Connect


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_counts_after_calls_and_a_failure(dsn: str) -> None:
    registry = CollectorRegistry()
    mint = idmint.IdMint(dsn, metrics=registry)
    mint.add_fleet("North", code="ABC")
    for _ in range(3):
        mint.next_driver_id("ABC")
    mint.next_driver_ids("ABC", 2)
    with pytest.raises(idmint.UnknownFleetError):
        mint.next_driver_id("ZZZ")  # the forced failure

    assert value(registry, "idmint_calls_total", operation="add_fleet") == 1
    assert value(registry, "idmint_calls_total", operation="next_driver_id") == 4
    assert value(registry, "idmint_calls_total", operation="next_driver_ids") == 1
    assert value(registry, "idmint_call_duration_seconds_count", operation="next_driver_id") == 4
    assert value(registry, "idmint_call_duration_seconds_sum", operation="next_driver_id") > 0
    assert (
        value(registry, "idmint_failures_total", operation="next_driver_id", sqlstate="ID002") == 1
    )
    assert value(registry, "idmint_failures_total", operation="add_fleet", sqlstate="ID002") == 0
    assert value(registry, "idmint_retries_total", operation="next_driver_id") == 0
    # Nothing was recorded for operations that were not called.
    assert registry.get_sample_value("idmint_calls_total", {"operation": "gen_fleet_code"}) is None


def test_clients_share_a_registry(dsn: str, connect: Connect) -> None:
    registry = CollectorRegistry()
    first = idmint.IdMint(dsn, metrics=registry)
    second = idmint.IdMint(connect(), metrics=registry)  # registering twice would fail
    first.add_fleet("North", code="ABC")
    second.next_driver_id("ABC")
    first.next_driver_id("ABC")
    assert value(registry, "idmint_calls_total", operation="next_driver_id") == 2


def test_failure_without_sqlstate_and_retries(dsn: str, connect: Connect) -> None:
    registry = CollectorRegistry()
    broken = idmint.IdMint("host=127.0.0.1 port=1 dbname=x connect_timeout=2", metrics=registry)
    with pytest.raises(psycopg.OperationalError):
        broken.gen_fleet_code()
    assert value(registry, "idmint_failures_total", operation="gen_fleet_code", sqlstate="") == 1

    impatient = psycopg.conninfo.make_conninfo(dsn, options="-c lock_timeout=20")
    mint = idmint.IdMint(impatient, attempts=4, backoff_base=0.001, metrics=registry)
    mint.add_fleet("North", code="ABC")
    blocker = connect(autocommit=False)
    blocker.execute("SELECT 1 FROM idmint.fleets WHERE code = 'ABC' FOR UPDATE")
    with pytest.raises(idmint.ConcurrencyError):
        mint.reserve_driver_id("ABC")
    blocker.rollback()
    assert value(registry, "idmint_retries_total", operation="reserve_driver_id") == 3
    assert value(registry, "idmint_calls_total", operation="reserve_driver_id") == 1
    assert (
        value(registry, "idmint_failures_total", operation="reserve_driver_id", sqlstate="55P03")
        == 1
    )


@pytest.mark.asyncio
async def test_async_metrics(dsn: str) -> None:
    registry = CollectorRegistry()
    mint = idmint.AsyncIdMint(dsn, metrics=registry)
    await mint.add_fleet("North", code="ABC", max_drivers=1)
    await mint.next_driver_id("ABC")
    with pytest.raises(idmint.FleetCapacityError):
        await mint.next_driver_id("ABC")
    assert value(registry, "idmint_calls_total", operation="next_driver_id") == 2
    assert (
        value(registry, "idmint_failures_total", operation="next_driver_id", sqlstate="ID001") == 1
    )


def test_no_prometheus_import_without_metrics(dsn: str) -> None:
    """Without metrics=..., using the facade never imports prometheus_client."""
    script = (
        "import sys, idmint\n"
        f"m = idmint.IdMint({dsn!r})\n"
        "m.add_fleet('North', code='ABC'); m.next_driver_id('ABC')\n"
        "a = idmint.AsyncIdMint('dbname=x')\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
        "idmint.IdMint('dbname=x', metrics=True)\n"  # the control: now it is imported
        "assert 'prometheus_client' in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("client", [idmint.IdMint, idmint.AsyncIdMint])
def test_metrics_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, client: type[idmint.IdMint] | type[idmint.AsyncIdMint]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(idmint.IdmintError, match=r"pip install 'idmint\[metrics\]'") as info:
        client("dbname=x", metrics=True)
    assert isinstance(info.value.__cause__, ImportError)
