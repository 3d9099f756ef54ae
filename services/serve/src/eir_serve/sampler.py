"""Continuous batching of diffusion sampling: one forward pass per step for every request in flight.

A diffusion model answers a request by running its sampler: tens to hundreds of forward passes.
Batching whole requests (``batcher.py``) would make a request that arrives during a sample wait
for all of its steps. Here one worker thread keeps a set of sampling jobs (``SampleJob``, one per
request) and runs a loop:

1. admit waiting requests while the rows of the jobs in flight stay within ``max_rows`` (a job
   with guidance needs two rows per item), in arrival order; a job bigger than ``max_rows`` runs
   when it is alone;
2. drop jobs whose request is gone (client disconnected, deadline passed): they stop costing
   forward passes at the next step;
3. run ONE forward pass carrying the current step of every job, each at its own timestep, step
   count and sampler (``DiffusionSampling.step_jobs``), and advance each job's sampler;
4. hand finished jobs their un-normalized samples, and streaming jobs their progress.

A job's samples depend on its items, seeds and parameters only: its noise comes from per-item
generators, and the forward pass of a row does not depend on the other rows (checked bit for bit
in the tests), so a request gets the same digit alone or batched with any others.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eir_core.diffusion_sampling import DiffusionSampling, SampleJob, SamplingParams
from eir_core.inference import ArrayBatch
from eir_serve.batcher import QueueFull

log = logging.getLogger("eir_serve.sampler")

Forward = Callable[[ArrayBatch], dict[str, np.ndarray]]
Finish = Callable[[SampleJob], list[dict[str, np.ndarray]]]


@dataclass
class Progress:
    """One progress event of a streamed sample: the model's estimate of the finished sample
    after ``step`` of ``steps`` (un-normalized, one array per item), or the sample itself when
    ``done``."""

    step: int
    steps: int
    done: bool
    arrays: list[dict[str, np.ndarray]]


@dataclass(eq=False)
class Request:
    """A request's sampling, as the worker sees it. ``cancel()`` (from any thread) makes the worker
    drop it before its next step."""

    items: Sequence[Any]
    seeds: Sequence[int]
    noise_scales: Sequence[float]
    params: SamplingParams
    future: asyncio.Future[list[dict[str, np.ndarray]]]
    loop: asyncio.AbstractEventLoop
    progress: Callable[[Progress], None] | None = None  # called on the request's loop
    every: int = 1  # progress after every ``every`` steps (and the last)
    enqueued: float = field(default_factory=time.perf_counter)
    job: SampleJob | None = None
    cancelled: bool = False
    steps_run: int = 0  # forward passes that carried this request (for tests and metrics)

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def gone(self) -> bool:
        return self.cancelled or self.future.done()


class StepBatcher:
    """The step loop's worker thread; ``submit`` is awaited on the event loop."""

    def __init__(
        self,
        sampling: DiffusionSampling,
        forward: Forward,
        finish: Finish,
        max_rows: int,
        max_queue: int,
        metrics: Any | None = None,
    ) -> None:
        self.sampling = sampling
        self.forward = forward
        self.finish = finish
        self.max_rows = max_rows
        self.max_queue = max_queue
        self.metrics = metrics
        self._inbox: queue.Queue[Request | None] = queue.Queue()
        self._pending: collections.deque[Request] = collections.deque()  # taken from the inbox, not yet admitted
        self._active: list[Request] = []
        self._waiting_items = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="eir-sampler", daemon=True)
        self._stopping = False
        self.forward_passes = 0

    @property
    def queue_depth(self) -> int:
        return self._waiting_items

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every admitted and queued request, then stop the worker."""
        self._stopping = True
        self._inbox.put(None)
        self._thread.join(timeout)

    def submit_nowait(
        self,
        items: Sequence[Any],
        seeds: Sequence[int],
        noise_scales: Sequence[float],
        params: SamplingParams,
        progress: Callable[[Progress], None] | None = None,
        every: int = 1,
    ) -> Request:
        """Queue a request (on the event loop); await ``request.future`` for its samples."""
        if len(seeds) != len(items) or len(noise_scales) != len(items):
            raise ValueError(f"{len(items)} items need as many seeds and noise scales")
        if self._stopping:
            raise QueueFull("the server is shutting down")
        with self._lock:
            if self._waiting_items + len(items) > self.max_queue:
                raise QueueFull(f"{self._waiting_items} items are waiting (max_queue={self.max_queue})")
            self._waiting_items += len(items)
            self._set_depth()
        loop = asyncio.get_running_loop()
        req = Request(items, seeds, noise_scales, params, loop.create_future(), loop, progress, max(1, every))
        self._inbox.put(req)
        return req

    async def submit(
        self, items: Sequence[Any], seeds: Sequence[int], noise_scales: Sequence[float], params: SamplingParams
    ) -> list[dict[str, np.ndarray]]:
        req = self.submit_nowait(items, seeds, noise_scales, params)
        try:
            return await req.future
        finally:
            req.cancel()  # a no-op once it finished; else (timeout, cancellation) the worker drops it

    # ------------------------------------------------------------------ worker thread
    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._waiting_items)

    def _rows(self, req: Request) -> int:
        guided = req.params.guidance_scale not in (None, 1.0)
        return len(req.items) * (2 if guided else 1)

    def _admit(self, block: bool) -> bool:
        """Move requests from the inbox into the active set while their rows fit. False: stop."""
        stop = False
        while True:
            try:
                got = self._inbox.get(block=block and not self._active and not self._pending)
            except queue.Empty:
                break
            if got is None:
                stop = True
                break
            self._pending.append(got)
            block = False
        rows = sum(r.job.rows for r in self._active if r.job is not None)
        while self._pending:
            req = self._pending[0]
            if req.gone:
                self._pending.popleft()
                self._left_queue(req, cancelled=True)
                continue
            need = self._rows(req)
            if self._active and rows + need > self.max_rows:
                break
            self._pending.popleft()
            self._left_queue(req, cancelled=False)
            try:
                req.job = self.sampling.job(req.items, req.seeds, req.noise_scales, req.params)
            except Exception as e:  # parameters were checked by the route; this is a bug or a bad bundle
                log.exception("could not start sampling")
                _deliver(req, e)
                continue
            req.job.track_estimate = req.progress is not None
            self._active.append(req)
            rows += req.job.rows
        return stop

    def _left_queue(self, req: Request, cancelled: bool) -> None:
        with self._lock:
            self._waiting_items -= len(req.items)
            self._set_depth()
        if self.metrics is not None:
            self.metrics.sampling_queue_seconds.observe(time.perf_counter() - req.enqueued)
            if cancelled:
                self.metrics.sampling_cancelled.inc()

    def _run(self) -> None:
        stop = False
        while True:
            stop = self._admit(block=not stop) or stop
            gone = [r for r in self._active if r.gone]
            if gone:
                self._active = [r for r in self._active if not r.gone]
                if self.metrics is not None:
                    self.metrics.sampling_cancelled.inc(len(gone))
            if self.metrics is not None:
                self.metrics.sampling_active.set(len(self._active))
            if not self._active:
                if stop and not self._pending and self._inbox.empty():
                    return
                continue
            self._step()

    def _step(self) -> None:
        jobs = [r.job for r in self._active if r.job is not None]
        try:
            self.sampling.step_jobs(self.forward, jobs)
        except Exception as e:  # one bad step fails the requests in it, not the worker
            log.exception("sampling step failed")
            for r in self._active:
                _deliver(r, e)
            self._active = []
            return
        self.forward_passes += 1
        if self.metrics is not None:
            self.metrics.sampling_steps.inc()
            self.metrics.sampling_rows.observe(sum(j.rows for j in jobs))
        still: list[Request] = []
        for r in self._active:
            job = r.job
            assert job is not None
            r.steps_run += 1
            if job.done:
                try:
                    result: list[dict[str, np.ndarray]] | Exception = self.finish(job)
                except Exception as e:
                    log.exception("finishing a sample failed")
                    result = e
                if r.progress is not None and not isinstance(result, Exception):
                    _notify(r, Progress(job.step_index, job.steps, True, result))
                _deliver(r, result)
                if self.metrics is not None:
                    self.metrics.items.inc(len(r.items))
                continue
            if r.progress is not None and job.step_index % r.every == 0 and job.estimate is not None:
                _notify(r, Progress(job.step_index, job.steps, False, self._estimate(job)))
            still.append(r)
        self._active = still

    def _estimate(self, job: SampleJob) -> list[dict[str, np.ndarray]]:
        assert job.estimate is not None
        return self.sampling.items.split_outputs({job.output: job.estimate}, job.n)


def _notify(req: Request, p: Progress) -> None:
    cb = req.progress
    if cb is not None and not req.gone:
        req.loop.call_soon_threadsafe(cb, p)


def _deliver(req: Request, answer: list[dict[str, np.ndarray]] | Exception) -> None:
    def resolve() -> None:
        if req.future.done():  # timed out or the client went away meanwhile
            return
        if isinstance(answer, Exception):
            req.future.set_exception(answer)
        else:
            req.future.set_result(answer)

    req.loop.call_soon_threadsafe(resolve)
