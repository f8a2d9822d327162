"""One worker thread runs the backbone for the whole server: dynamic batching of predictions, continuous batching of
streams, interleaved.

Requests go into a bounded queue (``QueueFull`` beyond ``max_queue`` waiting). The worker loops; each turn it
1. runs one prediction pass if predictions wait: up to ``max_batch_size`` rows of any adapters in one mixed-task pass
   (``workflows.inference.predict_mixed``; when nothing is decoding, the first request waits up to ``max_wait`` for
   company), each request getting its own rows back on its event loop; or one prompt-scoring call;
2. admits waiting streams into the running decode batch (``scheduler.DecodeScheduler``: prefilled together, merged at
   this step, up to ``max_running`` rows);
3. runs one decoding step for every running stream; finished and abandoned rows leave the batch.
So a long generation never starves ``/v1/predict``: each turn serves both. The backbone is only ever touched by this
thread. ``batching=False`` serves one request at a time to its end (the comparison the benchmarks make).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from eptctl.core.errors import EptctlError
from eptctl.serving.engine import EngineUnavailable
from eptctl.serving.scheduler import DecodeScheduler
from eptctl.serving.streams import StreamRow
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


@dataclass
class Call:
    """A function to run on the worker thread (it may touch the backbone) and the future awaiting its result."""

    fn: Callable[[], object]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class Batcher:
    """``await submit(rows)`` -> one result dict per row (label, scores, truncated, adapter); ``submit_stream(row)``
    puts a stream in line for the running batch; ``await call(fn)`` runs ``fn`` on the worker.

    ``running``: streams in the decode batch; ``waiting``: requests queued and not started. ``on_step(kind, rows)``
    is called for every decoding pass (``"prefill"`` or ``"step"``) with its row count. ``stop()`` lets the worker
    finish every job already queued and every running stream, then ends it.
    """

    def __init__(self, backbone, *, max_batch_size: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256,
                 batching: bool = True, metrics=None, max_running: int = 64,
                 on_step: Callable[[str, int], None] | None = None):
        self.backbone = backbone
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.max_queue, self.batching, self.metrics = max_queue, batching, metrics
        self._queue: queue.Queue = queue.Queue()
        self._predicts: deque = deque()  # Jobs and Calls taken from the queue, not yet run
        self._streams: deque[StreamRow] = deque()  # streams taken from the queue, not yet admitted
        self.decoder = DecodeScheduler(backbone, max_running if batching else 1, on_step)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eptctl-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def running(self) -> int:
        """Streams in the running decode batch."""
        return self.decoder.running

    @property
    def waiting(self) -> int:
        """Requests (predictions, streams, calls) queued and not started."""
        return self._queue.qsize() + len(self._predicts) + len(self._streams)

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the queued jobs and running streams, then stop the worker (waits at most ``timeout`` seconds)."""
        self._stopping.set()
        self._thread.join(timeout)

    def _put(self, item) -> None:
        if self._stopping.is_set() or not self._thread.is_alive():
            raise EngineUnavailable("the backbone's worker is not running (the server is starting or stopping)",
                                    hint="retry after a moment")
        if self.waiting >= self.max_queue:
            raise QueueFull(f"{self.waiting} requests are waiting (limit {self.max_queue})",
                            hint="retry after a moment, or raise --max-queue")
        self._queue.put(item)
        self._gauge()

    async def submit(self, rows: list[tuple[ServableAdapter, str, str | None]]) -> list[dict]:
        """Queue ``rows`` for the next pass and wait for their results. Raises ``QueueFull``."""
        loop = asyncio.get_running_loop()
        job = Job(rows, loop.create_future(), loop)
        self._put(job)
        return await job.future

    def submit_stream(self, row: StreamRow) -> None:
        """Queue a stream; its events arrive on ``row.events``. Raises ``QueueFull``."""
        self._put(row)

    async def call(self, fn: Callable[[], object]):
        """Run ``fn()`` on the worker thread between passes and return its result. Raises ``QueueFull``."""
        loop = asyncio.get_running_loop()
        job = Call(fn, loop.create_future(), loop)
        self._put(job)
        return await job.future

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.waiting)

    def _run(self) -> None:
        turn = self._turn if self.batching else self._one_request
        while not (self._stopping.is_set() and self._idle()):
            turn()
            self._gauge()

    def _idle(self) -> bool:
        return not (self.waiting or self.decoder.running)

    def _take(self, timeout: float) -> bool:
        """Move one queued request into its line (waiting up to ``timeout`` s); False if none came."""
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return False
        (self._streams if isinstance(item, StreamRow) else self._predicts).append(item)
        return True

    def _turn(self) -> None:
        """One turn of the batched loop (see the module docstring)."""
        busy = bool(self.decoder.running or self._predicts or self._streams)
        self._take(0 if busy else 0.05)
        while self._take(0):  # everything queued joins its line now: the next turn may admit it
            pass
        if self._predicts:
            self._serve_predictions()
        room = self.decoder.room()
        if room and self._streams:
            self.decoder.admit([self._streams.popleft() for _ in range(min(room, len(self._streams)))])
        self.decoder.step()

    def _one_request(self) -> None:
        """``batching=False``: the next request alone, to its end."""
        if not self._take(0.05):
            return
        if self._streams:
            self.decoder.admit([self._streams.popleft()])
            while self.decoder.running:
                self.decoder.step()
        else:
            self._run_job(self._predicts.popleft())

    def _serve_predictions(self) -> None:
        """One prediction pass: the first waiting job and, batched, the jobs that fit beside it (waiting up to
        ``max_wait`` for more when no stream is decoding)."""
        first = self._predicts.popleft()
        if isinstance(first, Call):
            return self._run_job(first)
        jobs, rows = [first], len(first.rows)
        deadline = time.monotonic() + (0 if self.decoder.running or self._streams else self.max_wait)
        while rows < self.max_batch_size:
            if not self._predicts and not self._take(max(0.0, deadline - time.monotonic())):
                break
            if not self._predicts or isinstance(self._predicts[0], Call):
                break
            if rows + len(self._predicts[0].rows) > self.max_batch_size:
                break  # it starts the next pass
            job = self._predicts.popleft()
            jobs.append(job)
            rows += len(job.rows)
        self._score(jobs)

    def _run_job(self, job) -> None:
        if isinstance(job, Job):
            return self._score([job])
        try:
            result = job.fn()
        except BaseException as err:  # noqa: BLE001  (the error goes back to the request, never kills the worker)
            job.loop.call_soon_threadsafe(_set_exception, job.future, err)
            return
        job.loop.call_soon_threadsafe(_set_result, job.future, result)

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
