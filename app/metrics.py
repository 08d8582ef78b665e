"""Prometheus metrics, correct with several workers (prometheus-client's multiprocess mode).

With ``PROMETHEUS_MULTIPROC_DIR`` set (the ``filegate`` command sets it for ``--workers`` > 1),
every worker writes its samples to files there and ``/metrics`` adds them up; otherwise each app
keeps its own registry.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.storage.cache.store import CacheEvents

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class CacheMetrics(CacheEvents):
    """The read-through cache's counters (``CacheStore`` reports to them)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.hits = Counter(
            "filegate_cache_hits", "Reads answered from the cache", ["backend"], registry=registry
        )
        self.misses = Counter(
            "filegate_cache_misses",
            "Reads the cache had to ask the backend for",
            ["backend"],
            registry=registry,
        )
        self.served = Counter(
            "filegate_cache_served_bytes",
            "Bytes served from the cache",
            ["backend"],
            registry=registry,
        )
        self.fills = Counter(
            "filegate_cache_fills", "Files read whole and kept", ["backend"], registry=registry
        )
        self.filled_bytes = Counter(
            "filegate_cache_filled_bytes", "Bytes kept by fills", ["backend"], registry=registry
        )
        self.evictions = Counter(
            "filegate_cache_evictions", "Entries removed (room, expiry, delete)", registry=registry
        )
        self.used = Gauge(
            "filegate_cache_size_bytes",
            "Bytes the cache's entries take",
            multiprocess_mode="livesum",
            registry=registry,
        )

    def hit(self, backend: str, size: int) -> None:
        self.hits.labels(backend).inc()
        if size:
            self.served.labels(backend).inc(size)

    def miss(self, backend: str) -> None:
        self.misses.labels(backend).inc()

    def filled(self, backend: str, size: int) -> None:
        self.fills.labels(backend).inc()
        self.filled_bytes.labels(backend).inc(size)

    def evicted(self, count: int) -> None:
        self.evictions.inc(count)

    def size(self, used: int) -> None:
        self.used.set(used)


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
        self.breaker_open = Gauge(
            "filegate_backend_breaker_open",
            "1 while a backend's breaker is open (it kept failing; requests fail fast)",
            ["backend"],
            multiprocess_mode="max",
            registry=registry,
        )
        self.breaker_rejected = Gauge(
            "filegate_backend_breaker_rejected",
            "Requests answered 503 by an open breaker, without asking the backend",
            ["backend"],
            multiprocess_mode="sum",
            registry=registry,
        )
        self.in_flight = Gauge(
            "filegate_requests_in_flight",
            "Requests being served",
            multiprocess_mode="livesum",
            registry=registry,
        )

        self.cache = CacheMetrics(registry)

        self._children: dict[tuple[str, str, int], tuple[Any, ...]] = {}

    def observe(
        self, method: str, route: str, status: int, seconds: float, received: int, sent: int
    ) -> None:
        """One finished request. The labelled children are looked up once per label set, not
        per request (``labels()`` takes a lock and builds keys each time)."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
                self.received.labels(route),
                self.sent.labels(route),
            )
            self._children[key] = children
        requests, latency, received_bytes, sent_bytes = children
        requests.inc()
        latency.observe(seconds)
        if received:
            received_bytes.inc(received)
        if sent:
            sent_bytes.inc(sent)

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self._registry)
