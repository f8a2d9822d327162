"""Prometheus metrics of one server (its own collector registry, so several apps in one process never clash).

Two families: eptctl's own (``eptctl_*``: ``/v1/predict``, the batcher, errors of every route) and, for the
OpenAI-compatible routes, the series vLLM exports for the same things under eptctl's prefix (``eptctl:*``, as SGLang
exports ``sglang:*``): a dashboard or alert written for ``vllm:time_to_first_token_seconds`` reads
``eptctl:time_to_first_token_seconds`` after a change of prefix. Their ``model_name`` label is the adapter's registry
reference (``task@3``), never a string a client sent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# vLLM's buckets for time to first token and time per output token (vllm/engine/metrics.py), seconds
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)


class ServeMetrics:
    """Requests and errors by adapter and status, request latency, rows and adapters per backbone pass, requests in
    flight, queue depth, loaded adapters; and the OpenAI routes' generation series (``GenerationMetrics``).
    ``render()`` gives the Prometheus text format."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("eptctl_requests", "Prediction requests by adapter and HTTP status",
                                ["adapter", "status"], registry=self.registry)
        self.errors = Counter("eptctl_errors", "Error responses by route and HTTP status", ["route", "status"],
                              registry=self.registry)
        self.latency = Histogram("eptctl_request_seconds", "Prediction request latency (s), queueing included",
                                 registry=self.registry, buckets=LATENCY_BUCKETS)
        self.batch_rows = Histogram("eptctl_batch_rows", "Inputs per backbone pass", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_adapters = Histogram("eptctl_batch_adapters", "Distinct adapters per backbone pass",
                                        registry=self.registry, buckets=(1, 2, 3, 4, 8, 16))
        self.in_flight = Gauge("eptctl_requests_in_flight", "Prediction requests received and not yet answered",
                               registry=self.registry)
        self.queue_depth = Gauge("eptctl_queue_depth", "Requests waiting for a backbone pass", registry=self.registry)
        self.loaded_adapters = Gauge("eptctl_loaded_adapters", "Materialized adapters in the cache",
                                     registry=self.registry)
        self.generation = GenerationMetrics(self.registry)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class GenerationMetrics:
    """vLLM's request and token series for the OpenAI-compatible routes (names: vLLM's, prefix ``eptctl:``).

    ``watch(engine)`` reads the running and waiting requests from the engine's ``running`` and ``waiting``
    attributes at each scrape when it has them; otherwise running counts the OpenAI requests this server is
    answering (``active``) and waiting reads 0."""

    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram

        labels = ["model_name"]
        self.ttft = Histogram("eptctl:time_to_first_token_seconds", "Time to the first output token (s)", labels,
                              registry=registry, buckets=TTFT_BUCKETS)
        self.tpot = Histogram("eptctl:time_per_output_token_seconds", "Time per output token after the first (s)",
                              labels, registry=registry, buckets=TPOT_BUCKETS)
        self.e2e = Histogram("eptctl:e2e_request_latency_seconds", "End-to-end request latency (s)", labels,
                             registry=registry, buckets=E2E_BUCKETS)
        self.prompt_tokens = Counter("eptctl:prompt_tokens", "Prompt tokens processed (soft prompt included)",
                                     labels, registry=registry)
        self.generation_tokens = Counter("eptctl:generation_tokens", "Tokens generated", labels, registry=registry)
        self.success = Counter("eptctl:request_success", "Finished OpenAI-API requests by adapter and reason",
                               ["model_name", "finished_reason"], registry=registry)
        self.running = Gauge("eptctl:num_requests_running", "Requests being decoded", registry=registry)
        self.waiting = Gauge("eptctl:num_requests_waiting", "Requests waiting to be decoded", registry=registry)
        self._active, self._lock = 0, threading.Lock()

    def watch(self, engine) -> None:
        """Read the running and waiting gauges from ``engine`` at each scrape (see the class docstring)."""
        has = {name: _readable(engine, name) for name in ("running", "waiting")}
        self.running.set_function(lambda: float(engine.running) if has["running"] else float(self._active))
        self.waiting.set_function(lambda: float(engine.waiting) if has["waiting"] else 0.0)

    def begin(self) -> None:
        """An OpenAI request started (the fallback ``running`` count)."""
        with self._lock:
            self._active += 1

    def end(self) -> None:
        """An OpenAI request ended, answered or not."""
        with self._lock:
            self._active -= 1

    def finished(self, model_name: str, timing: Timing) -> None:
        """Record one finished choice: its latencies, tokens and reason."""
        self.e2e.labels(model_name).observe(timing.e2e_s)
        if timing.ttft_s is not None:
            self.ttft.labels(model_name).observe(timing.ttft_s)
        if timing.completion_tokens > 1:
            per_token = (timing.e2e_s - timing.ttft_s) / (timing.completion_tokens - 1)
            self.tpot.labels(model_name).observe(per_token)
        self.prompt_tokens.labels(model_name).inc(timing.prompt_tokens)
        self.generation_tokens.labels(model_name).inc(timing.completion_tokens)
        self.success.labels(model_name, timing.reason).inc()


@dataclass(frozen=True)
class Timing:
    """What one answered choice reports to ``GenerationMetrics.finished``: seconds from the request's start to its
    first output (``ttft_s``; None when nothing was written) and to its end, token counts and the finish reason."""

    e2e_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    reason: str


def _readable(engine, name: str) -> bool:
    try:
        float(getattr(engine, name))
    except (AttributeError, TypeError, ValueError):
        return False
    return True
