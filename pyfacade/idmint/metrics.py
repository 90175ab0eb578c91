"""Optional Prometheus metrics for the facade (``pip install 'idmint[metrics]'``).

Nothing here imports ``prometheus_client`` until a client is built with ``metrics=True``
(the default registry) or ``metrics=<a CollectorRegistry>``. Without that, the client
holds :data:`NO_METRICS`, whose methods do nothing.

Per operation (label ``operation``, the facade method's name):

- ``idmint_calls_total`` - calls, successful or not;
- ``idmint_call_duration_seconds`` - latency histogram of calls, retries and backoff included;
- ``idmint_retries_total`` - attempts repeated after 40001 / 40P01 / 55P03;
- ``idmint_failures_total`` - calls that raised, labelled also by ``sqlstate``
  (``""`` when the error carried none, e.g. a failed connection).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from .errors import IdmintError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: Latency buckets in seconds: an allocation is a few milliseconds; retries add backoff.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Recorder(Protocol):
    """What a client calls; implemented by :class:`Metrics` and :class:`NoMetrics`."""

    def call(self, operation: str, seconds: float) -> None: ...
    def retry(self, operation: str) -> None: ...
    def failure(self, operation: str, sqlstate: str | None) -> None: ...


class NoMetrics:
    """The recorder of a client without metrics: every method does nothing."""

    def call(self, operation: str, seconds: float) -> None:
        pass

    def retry(self, operation: str) -> None:
        pass

    def failure(self, operation: str, sqlstate: str | None) -> None:
        pass


NO_METRICS = NoMetrics()


class Metrics:
    """The four metric families, registered once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        self.calls = Counter(
            "idmint_calls",
            "idmint facade calls, successful or not",
            ["operation"],
            registry=registry,
        )
        self.latency = Histogram(
            "idmint_call_duration_seconds",
            "idmint facade call latency, retries and backoff included",
            ["operation"],
            registry=registry,
            buckets=BUCKETS,
        )
        self.retries = Counter(
            "idmint_retries",
            "idmint facade attempts repeated after 40001, 40P01 or 55P03",
            ["operation"],
            registry=registry,
        )
        self.failures = Counter(
            "idmint_failures",
            "idmint facade calls that raised, by SQLSTATE",
            ["operation", "sqlstate"],
            registry=registry,
        )

    def call(self, operation: str, seconds: float) -> None:
        self.calls.labels(operation).inc()
        self.latency.labels(operation).observe(seconds)

    def retry(self, operation: str) -> None:
        self.retries.labels(operation).inc()

    def failure(self, operation: str, sqlstate: str | None) -> None:
        self.failures.labels(operation, sqlstate or "").inc()


# Registering the same metric name twice in one registry fails, so clients sharing a
# registry share one Metrics.
_by_registry: weakref.WeakKeyDictionary[Any, Metrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def recorder(metrics: bool | CollectorRegistry | None) -> Recorder:
    """The recorder for a client's ``metrics`` argument: falsy -> no metrics (and no import);
    ``True`` -> prometheus_client's default registry; a registry -> that registry."""
    if metrics is None or metrics is False:
        return NO_METRICS
    try:
        import prometheus_client
    except ImportError as exc:
        raise IdmintError(
            "metrics=... needs the prometheus_client package: pip install 'idmint[metrics]'"
        ) from exc
    registry: CollectorRegistry = prometheus_client.REGISTRY if metrics is True else metrics
    with _lock:
        found = _by_registry.get(registry)
        if found is None:
            found = _by_registry[registry] = Metrics(registry)
        return found
