"""Prometheus metrics of one server (its own collector registry, so several apps in one process never clash)."""

from __future__ import annotations


class ServeMetrics:
    """Requests and errors by adapter and status, request latency, rows and adapters per backbone pass, requests in
    flight, queue depth, loaded adapters. ``render()`` gives the Prometheus text format."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("eptctl_requests", "Prediction requests by adapter and HTTP status",
                                ["adapter", "status"], registry=self.registry)
        self.errors = Counter("eptctl_errors", "Error responses by route and HTTP status", ["route", "status"],
                              registry=self.registry)
        self.latency = Histogram("eptctl_request_seconds", "Prediction request latency (s), queueing included",
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_rows = Histogram("eptctl_batch_rows", "Inputs per backbone pass", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_adapters = Histogram("eptctl_batch_adapters", "Distinct adapters per backbone pass",
                                        registry=self.registry, buckets=(1, 2, 3, 4, 8, 16))
        self.in_flight = Gauge("eptctl_requests_in_flight", "Prediction requests received and not yet answered",
                               registry=self.registry)
        self.queue_depth = Gauge("eptctl_queue_depth", "Requests waiting for a backbone pass", registry=self.registry)
        self.loaded_adapters = Gauge("eptctl_loaded_adapters", "Materialized adapters in the cache",
                                     registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
