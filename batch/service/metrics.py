"""Prometheus metrics and the /healthz + /metrics HTTP endpoint of the service.

Every metric lives in a dedicated CollectorRegistry (never the process-global one), so that
several services — in tests, several in one process — each have their own.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.files = Counter("usageplace_batch_files", "Files finished, per feed and status "
                             "(done, error, skipped, interrupted, auth_failed)", ["feed", "status"], registry=r)
        self.events = Counter("usageplace_batch_events", "Records of finished files, per feed and outcome "
                              "(accepted, rejected, invalid, failed, duplicate)", ["feed", "outcome"], registry=r)
        self.latency = Histogram("usageplace_batch_delivery_seconds", "Time of one POST of an event to Ropo One "
                                 "(every attempt)", ["feed"], buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("usageplace_batch_retries", "Event POSTs that were retries of an earlier attempt",
                               ["feed"], registry=r)
        self.queue = Gauge("usageplace_batch_queue_depth", "Files ready in the inbox at the last scan", ["feed"],
                           registry=r)
        self.last_scan = Gauge("usageplace_batch_last_scan_timestamp_seconds",
                               "Unix time of the last successful inbox scan", ["feed"], registry=r)
        self.inbox_errors = Counter("usageplace_batch_inbox_errors", "Inbox operations that failed "
                                    "(connection lost, host key refused ...)", ["feed"], registry=r)
        self.faults = Counter("usageplace_batch_faults", "Faults a feed paused or retried for, per feed and kind "
                              "(journal, storage, file, finish, worker)", ["feed", "kind"], registry=r)
        self.reloads = Counter("usageplace_batch_config_reloads", "Configuration changes, applied or refused",
                               ["result"], registry=r)
        self._feed_flags = _FeedFlags()
        r.register(self._feed_flags)
        self._lateness = _Lateness()
        r.register(self._lateness)

    def watch_feeds(self, source: FlagsFn) -> None:
        """``source()``: per feed, {"api_holding": bool, "inbox_unreachable": bool}, read at each scrape."""
        self._feed_flags.source = source

    def watch_lateness(self, source: LatenessFn) -> None:
        """``source()``: per feed with `expected:`, its Lateness at the last check, read at each scrape."""
        self._lateness.source = source

    def render(self) -> bytes:
        return generate_latest(self.registry)


HealthFn = Callable[[], tuple[bool, dict[str, Any]]]
FlagsFn = Callable[[], dict[str, dict[str, bool]]]
LatenessFn = Callable[[], dict[str, Any]]  # feed -> batch.service.lateness.Lateness


class _FeedFlags:
    """Gauges read from the service at scrape time: is a feed held up, and by what."""

    GAUGES = (("api_holding", "1 while the feed holds delivery because Ropo One is unreachable (an outage)"),
              ("inbox_unreachable", "1 while the feed's inbox cannot be reached (or is refused)"))

    def __init__(self) -> None:
        self.source: FlagsFn | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        flags = self.source() if self.source is not None else {}
        for key, help_text in self.GAUGES:
            gauge = GaugeMetricFamily(f"usageplace_batch_{key}", help_text, labels=["feed"])
            for feed, values in flags.items():
                gauge.add_metric([feed], 1.0 if values.get(key) else 0.0)
            yield gauge


class _Lateness:
    """Per feed with `expected:`: late or not, and its next due time (batch.service.lateness)."""

    def __init__(self) -> None:
        self.source: LatenessFn | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = self.source() if self.source is not None else {}
        late = GaugeMetricFamily("usageplace_batch_feed_late", "1 while the feed's expected file is late (a due time "
                                 "and its grace passed with no file)", labels=["feed"])
        due = GaugeMetricFamily("usageplace_batch_feed_next_due_timestamp_seconds",
                                "Unix time of the feed's next due time (expected:)", labels=["feed"])
        for feed, state in states.items():
            late.add_metric([feed], 1.0 if state.late else 0.0)
            due.add_metric([feed], state.next_due.timestamp())
        yield late
        yield due


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            healthy, detail = self.server.health()
            body = json.dumps({"status": "ok" if healthy else "unhealthy", **detail}, default=str).encode()
            self._send(200 if healthy else 503, body, "application/json")
        else:
            self._send(404, b"not found: try /healthz or /metrics\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s", format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics, health: HealthFn) -> None:
        super().__init__(address, _Handler)
        self.metrics = metrics
        self.health = health


class MetricsServer:
    """GET /healthz (200 or 503 with a JSON body) and /metrics (Prometheus text format)."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: HealthFn) -> None:
        self._server = _Server((host, port), metrics, health)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
