"""Prometheus metrics, correct with several workers (prometheus-client's multiprocess mode).

With ``PROMETHEUS_MULTIPROC_DIR`` set (the ``filegate`` command sets it for ``--workers`` > 1),
every worker writes its samples to files there and ``/metrics`` adds them up; otherwise each app
keeps its own registry.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self) -> None:
        self._registry = CollectorRegistry()
        registry = None if os.environ.get(MULTIPROC_ENV) else self._registry
        self.requests = Counter(
            "filegate_requests", "Requests served", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "filegate_request_duration_seconds",
            "Time from request to the last byte of the response",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.received = Counter(
            "filegate_received_bytes", "Request body bytes (uploads)", ["route"], registry=registry
        )
        self.sent = Counter(
            "filegate_sent_bytes", "Response body bytes (downloads)", ["route"], registry=registry
        )
        self.backend_errors = Counter(
            "filegate_backend_errors",
            "Failed backend operations",
            ["backend", "code"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "filegate_requests_in_flight",
            "Requests being served",
            multiprocess_mode="livesum",
            registry=registry,
        )

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self._registry)
