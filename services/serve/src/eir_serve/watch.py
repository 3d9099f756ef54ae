"""``--model-control poll``: serve a run folder while ``eirtrain`` writes better checkpoints.

Every ``--poll-interval-s`` the watcher asks which checkpoint of the run folder ``--model-path``
would choose now (the best perf-average, then the latest: ``resolve_bundle_path``). When that is
a file it does not serve, it swaps it in without failing a request:

1. the new checkpoint is loaded and checked with one forward pass (``load_checked``) in a thread,
   beside the version being served, and its batcher started;
2. new requests go to it from then on (``app.state.service`` is replaced; every route and gRPC
   call reads it once per request);
3. the old version keeps answering the requests that already hold it. It is stopped (its queued
   and admitted work finished first) once every request that could still hold it is past: a
   request reads its body within ``--body-timeout-s`` and then queues at once, so the watcher
   waits that long (and until the old batcher's queue is empty) before it lets the old one go.

A checkpoint that cannot be loaded (half-copied, corrupt, another model's) is logged with the
reason, counted (``eir_model_swaps_total{result="failed"}``) and never replaces the version being
served; it is tried again only if the file changes. ``/info`` says which checkpoint is served
(``model.checkpoint``, ``model.training.iteration``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eir_core.bundle import resolve_bundle_path
from eir_core.errors import EirError

log = logging.getLogger("eir_serve.watch")
RETIRE_MARGIN_S = 2.0  # beyond the body deadline: the parse pool's queue, the route's own checks


def check_model_control(settings: Any) -> None:
    """A ValueError naming the flags when ``--model-control poll`` has nothing to watch."""
    if settings.model_control == "poll" and not Path(settings.model_path).is_dir():
        raise ValueError(
            f"--model-control poll watches a run folder, but --model-path {settings.model_path} is a file; "
            "pass the run folder eirtrain writes"
        )


@dataclass
class Retiring:
    service: Any
    since: float


@dataclass
class CheckpointWatcher:
    """Polls ``folder`` and swaps better checkpoints into ``state.service``."""

    state: Any
    folder: Path
    interval_s: float
    retire_after_s: float
    load: Any  # (path) -> a started ModelService; runs in a thread
    metrics: Any
    failed: dict[Path, tuple[float, int]] = field(default_factory=dict)  # path -> (mtime, size) that failed
    retiring: list[Retiring] = field(default_factory=list)
    released: int = 0  # versions swapped out and stopped

    def _candidate(self) -> Path | None:
        try:
            return resolve_bundle_path(self.folder)
        except EirError:  # the folder lost its checkpoints (moved away): keep serving what is loaded
            return None

    @staticmethod
    def _stamp(path: Path) -> tuple[float, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_mtime, st.st_size

    async def poll_once(self) -> bool:
        """One look at the folder; True when a new checkpoint was swapped in."""
        await self._release_retired()
        path = await asyncio.to_thread(self._candidate)
        if path is None or path == self.state.bundle_path:
            return False
        stamp = self._stamp(path)
        if stamp is None or self.failed.get(path) == stamp:
            return False
        t0 = time.perf_counter()
        try:
            service = await asyncio.to_thread(self.load, path)
        except (EirError, ValueError, OSError) as e:
            self.failed[path] = stamp
            self.metrics.model_swaps.labels(result="failed").inc()
            log.warning("checkpoint %s not loaded, still serving %s: %s", path.name, self.state.bundle_path.name, e)
            return False
        old = self.state.service
        self.state.service = service
        self.state.bundle_path = path
        self.failed.pop(path, None)
        self.metrics.model_swaps.labels(result="ok").inc()
        iteration = service.predictor.manifest.training.iteration
        took = time.perf_counter() - t0
        log.info("now serving %s (iteration %s; loaded and warmed up in %.2f s)", path.name, iteration, took)
        if old is not None:
            self.retiring.append(Retiring(old, time.monotonic()))
        self.metrics.model_versions_loaded.set(1 + len(self.retiring))
        return True

    async def _release_retired(self, force: bool = False) -> None:
        keep: list[Retiring] = []
        for r in self.retiring:
            quiet = r.service.batcher.queue_depth == 0  # stop() would finish them, but not hold the loop
            if force or (time.monotonic() - r.since >= self.retire_after_s and quiet):
                await asyncio.to_thread(r.service.batcher.stop)
                self.released += 1
            else:
                keep.append(r)
        if len(keep) < len(self.retiring):
            self.retiring = keep
            self.metrics.model_versions_loaded.set(1 + len(keep))
            gc.collect()  # the released model's cycles (PyTorch modules hold some) go now, not at some later collection
            _trim_heap()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the serving, only the watching of this round
                log.exception("polling %s failed", self.folder)

    async def close(self) -> None:
        await self._release_retired(force=True)


def _trim_heap() -> None:
    """Give the freed heap of a released model back to the OS (glibc's malloc_trim; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.asynccontextmanager
async def watching(watcher: CheckpointWatcher | None) -> Any:
    """Run ``watcher`` (when there is one) for as long as the block runs."""
    if watcher is None:
        yield
        return
    task = asyncio.create_task(watcher.run(), name="eirserve-checkpoint-watcher")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watcher.close()
