"""Dynamic batching: items of concurrent requests run as one forward pass on a worker thread.

Requests put their items on a bounded queue and await a future; one worker thread takes the
first waiting request, then more for up to ``batch_timeout`` while the batch stays within
``max_batch_size`` items, runs ONE predict call and hands each request its slice.

Adaptive wait (``--batch-wait-ms``): past that, the worker waits for more only while requests
are on their way (``Arrivals``: admitted with their headers, body being read or decoded, not yet
queued), at most ``batch_wait`` in all. Under load that fills larger batches (fewer forward
passes, thread hand-offs and loop wake-ups per request); a lone client (C=1) has nothing on its
way and never waits. The event
loop never runs model code. Items carry their own noise seeds and noise scales, so an item's
answer does not depend on what it was batched with.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("eir_serve.batcher")

WAIT_SLICE_S = 0.001  # the adaptive wait looks again at what is on its way this often
PredictFn = Callable[[Sequence[Any], Sequence[int], Sequence[float]], list[Any]]  # items, seeds, noise scales


class Arrivals:
    """How many requests are on their way to a batcher (the server's, shared by every model)."""

    def __init__(self) -> None:
        self.on_the_way = 0  # changed on the event loop only; the workers read it

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Count the request this block serves until it queues its job (``arrived``) or ends."""
        token = [True]
        self.on_the_way += 1
        handle = _ARRIVING.set((self, token))
        try:
            yield
        finally:
            _ARRIVING.reset(handle)
            if token[0]:
                token[0] = False
                self.on_the_way -= 1


_ARRIVING: contextvars.ContextVar[tuple[Arrivals, list[bool]] | None] = contextvars.ContextVar(
    "eir_arriving", default=None
)


def arrived() -> None:
    """The current request has queued its job (or will not): no longer on its way."""
    current = _ARRIVING.get()
    if current is not None and current[1][0]:
        current[1][0] = False
        current[0].on_the_way -= 1


class QueueFull(Exception):
    """More items are waiting than ``max_queue``; the client should retry later."""


@dataclass
class _Job:
    items: Sequence[Any]
    seeds: Sequence[int]
    noise_scales: Sequence[float]
    future: asyncio.Future[list[Any]]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(
        self,
        predict: PredictFn,
        max_batch_size: int,
        batch_timeout_s: float,
        max_queue: int,
        on_batch: Callable[[int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        arrivals: Arrivals | None = None,
        batch_wait_s: float = 0.0,
    ) -> None:
        self.predict = predict
        self.arrivals = arrivals
        self.batch_wait_s = batch_wait_s
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.on_depth = on_depth  # told the number of waiting items whenever it changes
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._waiting_items = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="eir-batcher", daemon=True)
        self._stopping = False

    @property
    def queue_depth(self) -> int:
        return self._waiting_items

    def start(self) -> None:
        self._thread.start()

    async def submit(self, items: Sequence[Any], seeds: Sequence[int], noise_scales: Sequence[float]) -> list[Any]:
        if len(seeds) != len(items) or len(noise_scales) != len(items):
            raise ValueError(f"{len(items)} items need as many seeds and noise scales")
        if self._stopping:
            raise QueueFull("the server is shutting down")
        with self._lock:
            if self._waiting_items + len(items) > self.max_queue:
                raise QueueFull(f"{self._waiting_items} items are waiting (max_queue={self.max_queue})")
            self._waiting_items += len(items)
            if self.on_depth is not None:
                self.on_depth(self._waiting_items)
        loop = asyncio.get_running_loop()
        job = _Job(items, seeds, noise_scales, loop.create_future(), loop)
        arrived()
        self._queue.put(job)
        return await job.future

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every queued job, then stop the worker."""
        self._stopping = True
        self._queue.put(None)
        self._thread.join(timeout)

    def _take_batch(self) -> tuple[list[_Job], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        jobs, n = [first], len(first.items)
        start = time.perf_counter()
        deadline = start + self.batch_timeout_s
        while n < self.max_batch_size:
            now = time.perf_counter()
            remaining, waiting = deadline - now, False
            window = start + self.batch_wait_s - now
            if remaining <= 0 < window and self._queue.empty() and self._coming():
                # adaptive: wait for those on their way, in slices, to see soon when the last of them
                # ends without queueing (a refused request)
                remaining, waiting = min(window, WAIT_SLICE_S), True
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                if waiting:
                    continue
                break
            if job is None:
                self._queue.put(None)  # see it again after this batch
                break
            if n + len(job.items) > self.max_batch_size:
                self._run_jobs(jobs)  # this one does not fit: run what we have, start anew
                jobs, n = [job], len(job.items)
                start = time.perf_counter()
                deadline = start + self.batch_timeout_s
                continue
            jobs.append(job)
            n += len(job.items)
        return jobs, False

    def _coming(self) -> bool:
        return self.arrivals is not None and self.arrivals.on_the_way > 0 and self.batch_wait_s > 0

    def _run(self) -> None:
        while True:
            jobs, stop = self._take_batch()
            if jobs:
                self._run_jobs(jobs)
            if stop:
                return

    def _run_jobs(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if not j.future.cancelled()]  # clients that went away
        with self._lock:
            self._waiting_items -= sum(len(j.items) for j in jobs)
            if self.on_depth is not None:
                self.on_depth(self._waiting_items)
        if not live:
            return
        items = [it for j in live for it in j.items]
        seeds = [s for j in live for s in j.seeds]
        scales = [s for j in live for s in j.noise_scales]
        try:
            results = self.predict(items, seeds, scales)
        except Exception as e:  # one bad batch must not stop the worker
            log.exception("prediction failed")
            _deliver([(j, e) for j in live])
            return
        if self.on_batch is not None:
            self.on_batch(len(items))
        answers: list[tuple[_Job, list[Any] | Exception]] = []
        start = 0
        for j in live:
            answers.append((j, results[start : start + len(j.items)]))
            start += len(j.items)
        _deliver(answers)


def _deliver(answers: list[tuple[_Job, list[Any] | Exception]]) -> None:
    """Hand each job its answer on its event loop: one wake-up of each loop per batch, not one per
    request (each wake-up is a write to the loop's self-pipe and a turn of the loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[list[Any]], list[Any] | Exception]]] = {}
    for job, answer in answers:
        by_loop.setdefault(job.loop, []).append((job.future, answer))
    for loop, pairs in by_loop.items():
        loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(pairs: list[tuple[asyncio.Future[list[Any]], list[Any] | Exception]]) -> None:
    for fut, answer in pairs:
        if fut.done():  # the request timed out or its client went away
            continue
        if isinstance(answer, Exception):
            fut.set_exception(answer)
        else:
            fut.set_result(answer)
