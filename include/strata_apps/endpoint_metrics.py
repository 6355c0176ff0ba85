"""Prometheus metrics of the reference endpoint (``GET /metrics``, Prometheus text format 0.0.4).

Families (each app has its own registry, so two apps in one process never share counts):

- ``strata_endpoint_requests_total{route, status}``: requests answered, by route template (the
  device id is not a label: ``/v1/device/register/{device_id}``; unknown paths are ``other``) and
  HTTP status;
- ``strata_endpoint_request_duration_seconds{route}``: a histogram of the time from the request
  reaching the app to its last body byte sent (buckets from 0.5 ms to 2.5 s);
- ``strata_endpoint_lookups_total{route, outcome}``: unit lookups by outcome — ``hit`` (the live
  lookup version holds the unit; for the device-register route: at least one experiment served),
  ``miss`` (it holds none of the request's units), ``online`` (``POST /experiment``: a unit the
  table does not hold, evaluated online), ``no_live_version`` and ``unavailable`` (Redis could not
  answer: a 503);
- ``strata_endpoint_live_version{version}``: 1 for the lookup version this process last read
  (from an answer, ``/healthz`` or the scrape itself); no sample while none is live;
- ``strata_endpoint_random_served_total{experiment_id, variant_id}``: device-register requests
  served each variant of a random (per-request) experiment, the only exposure count such an
  experiment has (no unit, no LOG event): :func:`random_split` tests the split against the
  variants' shares of the draw (:func:`strata.stats.srm.request_split`). Labels are bounded by the
  definitions (experiments × variants).

Single process: the server runs one uvicorn process (:mod:`strata_apps.endpoint_server`), so the
in-process registry is the whole truth. Running several workers would need prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``); the server does not do that.

Usage:
    >>> m = Metrics()
    >>> m.request("/experiment", 200, 0.002)
    >>> m.lookup("/experiment", "online")
    >>> m.live_version("v1")
    >>> text = m.exposition().decode()
    >>> 'strata_endpoint_requests_total{route="/experiment",status="200"} 1.0' in text
    True
    >>> 'strata_endpoint_live_version{version="v1"} 1.0' in text
    True
    >>> route_of("/v1/device/register/d-1"), route_of("/x/y")
    ('/v1/device/register/{device_id}', 'other')
"""

from __future__ import annotations

import threading
import time
from typing import Any

#: Latency buckets (seconds): the endpoint's target is p99 < 5 ms.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REGISTER_ROUTE = "/v1/device/register/{device_id}"
_REGISTER_PREFIX = "/v1/device/register/"
#: Paths that are their own route label; anything else is "other" (bounded label values).
KNOWN_ROUTES = frozenset({"/experiment", "/healthz", "/livez", "/metrics"})
OUTCOMES = ("hit", "miss", "online", "no_live_version", "unavailable")


def route_of(path: str) -> str:
    """The route label of a request path (a template, never a raw id)."""
    if path.startswith(_REGISTER_PREFIX):
        return REGISTER_ROUTE
    return path if path in KNOWN_ROUTES else "other"


class Metrics:
    """The endpoint's metric families in their own registry."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "strata_endpoint_requests", "HTTP requests answered, by route and status",
            ["route", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "strata_endpoint_request_duration_seconds",
            "Time from the request reaching the app to its last byte sent, by route",
            ["route"], buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.lookups = Counter(
            "strata_endpoint_lookups", "Unit lookups by route and outcome",
            ["route", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.live = Gauge(
            "strata_endpoint_live_version", "1 for the lookup version this process last read",
            ["version"], registry=self.registry,
        )  # fmt: skip
        self.random_served = Counter(
            "strata_endpoint_random_served",
            "Requests served each variant of a random (per-request) experiment",
            ["experiment_id", "variant_id"], registry=self.registry,
        )  # fmt: skip
        self._version: str | None = None
        self._lock = threading.Lock()

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def lookup(self, route: str, outcome: str, n: int = 1) -> None:
        self.lookups.labels(route, outcome).inc(n)

    def served_random(self, experiment_id: str, variant_id: int) -> None:
        """One request served ``variant_id`` of the random experiment ``experiment_id``."""
        self.random_served.labels(experiment_id, str(variant_id)).inc()

    def live_version(self, version: str | None) -> None:
        """Record the live version (None: none is live); cheap when it did not change."""
        if version == self._version:
            return
        with self._lock:
            self.live.clear()
            if version:
                self.live.labels(version).set(1)
            self._version = version

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware: counts every HTTP request by route and status and times it.

    A failure that escapes the app before a response started is counted as the 503 the app's
    last-resort handler answers it with.
    """

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[int] = []
        done: list[bool] = []

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.append(True)
                self.metrics.request(
                    route_of(scope.get("path", "")), status[0], time.perf_counter() - started
                )

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if not done:  # no complete response: an escaped failure (answered 503) or a hang-up
                code = status[0] if status else 503
                self.metrics.request(
                    route_of(scope.get("path", "")), code, time.perf_counter() - started
                )


def random_served_counts(exposition: str) -> dict[tuple[str, int], float]:
    """``{(experiment_id, vid): requests}`` from a ``/metrics`` scrape (Prometheus text)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, int], float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != "strata_endpoint_random_served":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels["experiment_id"], int(sample.labels["variant_id"]))
                out[key] = out.get(key, 0.0) + sample.value
    return out


def random_shares(defs: Any, day: Any) -> dict[str, dict[int, float]]:
    """``{experiment_id: {vid: share}}`` of the random experiments of ``defs`` (a
    :class:`strata.definitions.Definitions`) on ``day``: each variant's slot width in that day's
    ranges over the experiment's (the probability a request served the experiment drew it)."""
    from strata.contracts import PER_REQUEST_UNIT_TYPES

    layers = {lay.id: lay.unit_type for lay in defs.layers}
    out = {}
    for e in defs.experiments:
        if layers.get(e.layer) in PER_REQUEST_UNIT_TYPES:
            widths = {v.vid: float(v.end - v.start) for v in e.variants_on(day)}
            total = sum(widths.values())
            if total > 0:
                out[e.id] = {vid: w / total for vid, w in widths.items()}
    return out


def random_split(exposition: str, defs: Any, day: Any, alpha: float = 0.001) -> Any:
    """The split check of every random experiment from a ``/metrics`` scrape: the requests
    served per variant against the shares of ``day`` (:func:`strata.stats.srm.request_split`;
    a DataFrame, one row per experiment with requests). A random experiment ramped while the
    counters ran mixes two periods' shares: check it from a restart after the ramp day."""
    from strata.stats.srm import request_split

    return request_split(random_served_counts(exposition), random_shares(defs, day), alpha)
