"""Dynamic batching across requests and across adapters, off the event loop.

Requests go into a bounded queue; one worker thread takes the first, waits up to ``max_wait`` for more, packs up to
``max_batch_size`` rows of any adapters into one mixed-task pass (each row with its own prompt and offset,
``workflows.inference.predict_mixed``) and hands every request its own rows back on its event loop. The backbone is
only ever touched by that thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

from eptctl.core.errors import EptctlError
from eptctl.workflows.inference import ServableAdapter, predict_mixed


class QueueFull(EptctlError):
    """More requests are waiting than ``max_queue`` (HTTP 503 with Retry-After)."""


@dataclass
class Job:
    """One request: a list of (adapter, text, text_pair) rows and the future its handler awaits."""

    rows: list[tuple[ServableAdapter, str, str | None]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """``await submit(rows)`` -> one result dict per row (label, scores, truncated, adapter).

    ``batching=False`` runs one request per pass (the comparison the benchmark makes). ``stop()`` lets the worker
    finish every job already queued, then ends it.
    """

    def __init__(self, backbone, *, max_batch_size: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256,
                 batching: bool = True, metrics=None):
        self.backbone = backbone
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.max_queue, self.batching, self.metrics = max_queue, batching, metrics
        self._queue: queue.Queue[Job] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eptctl-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the queued jobs, then stop the worker (waits at most ``timeout`` seconds)."""
        self._stopping.set()
        self._thread.join(timeout)

    async def submit(self, rows: list[tuple[ServableAdapter, str, str | None]]) -> list[dict]:
        """Queue ``rows`` for the next pass and wait for their results. Raises ``QueueFull``."""
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests are waiting (limit {self.max_queue})",
                            hint="retry after a moment, or raise --max-queue")
        loop = asyncio.get_running_loop()
        job = Job(rows, loop.create_future(), loop)
        self._queue.put(job)
        self._gauge()
        return await job.future

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._queue.qsize())

    def _run(self) -> None:
        carry: Job | None = None
        while True:
            if carry is not None:
                first, carry = carry, None
            else:
                try:
                    first = self._queue.get(timeout=0.05)
                except queue.Empty:
                    if self._stopping.is_set():
                        return
                    continue
            jobs, rows = [first], len(first.rows)
            deadline = time.monotonic() + self.max_wait
            while self.batching and rows < self.max_batch_size:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if rows + len(job.rows) > self.max_batch_size:
                    carry = job  # it starts the next pass
                    break
                jobs.append(job)
                rows += len(job.rows)
            self._gauge()
            self._score(jobs)

    def _score(self, jobs: list[Job]) -> None:
        index_of: dict[str, int] = {}  # adapter id -> its index in this pass
        servables: list[ServableAdapter] = []
        flat = []
        for job in jobs:
            for servable, text, pair in job.rows:
                if servable.record.id not in index_of:
                    index_of[servable.record.id] = len(servables)
                    servables.append(servable)
                flat.append((index_of[servable.record.id], text, pair))
        try:
            results = predict_mixed(self.backbone, servables, flat, batch_size=max(len(flat), 1))
        except BaseException as err:  # noqa: BLE001  (any failure goes back to the requests, never kills the worker)
            for job in jobs:
                job.loop.call_soon_threadsafe(_set_exception, job.future, err)
            return
        if self.metrics is not None:
            self.metrics.batch_rows.observe(len(flat))
            self.metrics.batch_adapters.observe(len(servables))
        start = 0
        for job in jobs:
            part = results[start: start + len(job.rows)]
            start += len(job.rows)
            job.loop.call_soon_threadsafe(_set_result, job.future, part)


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():  # the client may have gone away
        future.set_result(value)


def _set_exception(future: asyncio.Future, err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)
