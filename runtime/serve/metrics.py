"""Prometheus metrics of ``serve`` (prometheus-client), one registry per server so tests can run many apps."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from retina_deploy.runtime.detector import Detector

# Routes are labelled by name, never by the raw path: unknown paths would grow the label set without bound.
ROUTES = ("/v1/detect", "/v1/model", "/health/live", "/health/ready", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServeMetrics:
    """The server's counters, histograms and gauges, in ``registry``.

    retina_http_requests_total{route, status}: every answered request ("other" for unknown routes).
    retina_request_latency_seconds{route}: time from the request's arrival to its answer.
    retina_batch_size: images per batch the model ran; retina_batch_seconds: time of each batch.
    retina_queue_depth: requests waiting for a batch; retina_requests_in_flight: requests being answered.
    retina_rejections_total{reason}: queue_full, not_ready, draining, too_large, bad_request, timeout,
        client_disconnected (the client left while sending its body).
    retina_images_total: images detected.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "retina_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "retina_request_latency_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("retina_batch_size", "Images per model batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram(
            "retina_batch_seconds",
            "Seconds per model batch (backend + post-processing)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("retina_queue_depth", "Requests waiting for a batch", registry=r)
        self.in_flight = Gauge("retina_requests_in_flight", "Requests being answered", registry=r)
        self.rejections = Counter("retina_rejections", "Requests refused, by reason", ["reason"], registry=r)
        self.images = Counter("retina_images", "Images detected", registry=r)

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)


class MeteredDetector(Detector):
    """A Detector that records each batch's size and time in ``metrics`` (same backend, same results)."""

    def __init__(self, detector: Detector, metrics: ServeMetrics) -> None:
        super().__init__(detector.backend, detector.spec, max_pixels=detector.max_pixels, source=detector.source)
        self.metrics = metrics

    def run_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = super().run_batch(batch)
        self.metrics.batch_seconds.observe(time.perf_counter() - start)
        self.metrics.batch_size.observe(batch.shape[0])
        self.metrics.images.inc(batch.shape[0])
        return out
