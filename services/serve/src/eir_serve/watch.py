"""The registry's housekeeping task, and ``--model-control poll``.

Every ``--poll-interval-s`` (``poll``): the repository is listed again (a new folder is a new
model, loaded at once; a folder that went away is unloaded), and every model that is meant to be
loaded is synced with its files (``Registry.sync``: a new or better checkpoint is loaded beside
the versions served and takes new requests; see repository.py). In every mode, a version swapped
out or unloaded is stopped ``RETIRE_MARGIN_S`` after it stopped taking new requests, once its
queue is empty (its batcher finishes what it has first). A request that looked it up before it
stopped and reaches it after (its body was still arriving) is passed on to the version that
serves then (``ModelService.successor``), so stopping early fails no request and keeps few
versions in memory at once.

This is how ``eirserve --model-path RUN_FOLDER --model-control poll`` serves a run while
``eirtrain`` writes it: ``/info`` says which checkpoint (``model.checkpoint``,
``model.training.iteration``) and the web page follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from eir_serve.repository import Model, Registry
from eir_serve.versions import models_in, policy_for

log = logging.getLogger("eir_serve.watch")
RETIRE_MARGIN_S = 2.0  # after a version stops taking new requests: most of those holding it have queued
HOUSEKEEPING_S = 1.0  # how often released versions are looked at when nothing polls


async def poll_once(registry: Registry, repository: Path | None) -> bool:
    """One look at the repository and every wanted model; True when anything changed."""
    await registry.release_retired()
    changed = False
    if repository is not None:
        try:
            on_disk = await asyncio.to_thread(models_in, repository)
        except OSError as e:
            log.warning("cannot list --model-repository %s: %s", repository, e)
            on_disk = None
        if on_disk is not None:
            for name, source in on_disk.items():
                if name not in registry.models:
                    registry.models[name] = Model(name, source, policy_for(registry.settings, name))
                    log.info("model %s: new in the repository", name)
            for name in [n for n in registry.models if n not in on_disk]:
                await registry.unload(name)
                registry.models.pop(name, None)
                log.info("model %s: gone from the repository", name)
                changed = True
    for model in list(registry.models.values()):
        if model.wanted:
            changed = await registry.sync(model) or changed
    return changed


async def _run(registry: Registry, poll: bool, repository: Path | None, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s if poll else min(interval_s, HOUSEKEEPING_S))
        try:
            if poll:
                await poll_once(registry, repository)
            else:
                await registry.release_retired()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not stop the serving, only this round of it
            log.exception("polling the models failed")


@contextlib.asynccontextmanager
async def watching(registry: Registry, poll: bool, repository: Path | None, interval_s: float) -> AsyncIterator[None]:
    """Run the housekeeping (and polling, with ``poll``) for as long as the block runs; at the
    end every version still held is stopped."""
    task = asyncio.create_task(_run(registry, poll, repository, interval_s), name="eirserve-models")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await registry.release_retired(force=True)
