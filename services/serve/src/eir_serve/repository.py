"""Models and versions: what ``--model-path`` (one model) or ``--model-repository DIR`` serves.

Layout of a repository: each folder under ``DIR`` is a model named by the folder: an eirtrain run
folder (checkpoints in ``saved_models/``) or a folder of bundles; a ``.safetensors`` file directly
under ``DIR`` is a model named by the file's stem. A model's versions are its checkpoints,
numbered by training iteration (``<run>_checkpoint_<iteration>_perf-average=<x>.safetensors``);
a folder holding one bundle under another name has the single version ``1``. ``--model-path``
is the repository of one model, named by the bundle's run name.

The version policy picks the versions served (``VersionPolicy``); unversioned requests go to the
newest served version. The versions of a model change (``Registry.sync``) at start, on each poll
(``--model-control poll``) or on a load request (``explicit``), and never fail a request: a new
version is loaded and run once in a thread beside those served, then takes new requests; a
version no longer served finishes its requests before it is stopped (``Retiring``). A version
that cannot load is logged, shown in the index with the reason, retried only when its file
changes, and never takes the place of a working version.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eir_core.errors import EirError
from eir_serve.errors import ApiError
from eir_serve.versions import Found, Stamp, VersionPolicy, found_in, policy_for

log = logging.getLogger("eir_serve.repository")


# ------------------------------------------------------------------ what is loaded
@dataclass
class Version:
    found: Found
    service: Any  # ModelService


@dataclass
class Model:
    name: str
    source: Path
    policy: VersionPolicy
    versions: dict[str, Version] = field(default_factory=dict)  # replaced whole, never changed in place
    default: Any = None  # the service of unversioned requests: the newest version
    state: str = "UNAVAILABLE"  # READY, LOADING, UNAVAILABLE (Triton's names)
    reason: str = "not loaded yet"
    wanted: bool = True  # explicit control: loaded on request, unloaded on request
    loading: frozenset[str] = frozenset()
    empty: bool = False  # no file the policy picks (a run that has not written a checkpoint yet)
    failed: dict[Path, tuple[Stamp, str, str]] = field(default_factory=dict)  # path -> (stamp, version, reason)


@dataclass
class Retiring:
    service: Any
    since: float


Loader = Callable[[str, Found], Any]  # (model name, version) -> a started ModelService; runs in a thread


class Registry:
    def __init__(
        self, state: Any, settings: Any, models: Mapping[str, Model], default_model: str | None, load: Loader,
        metrics: Any, retire_after_s: float,
    ) -> None:  # fmt: skip
        self.state = state  # the app's: .service follows the default model's newest version
        self.settings = settings
        self.models = dict(models)
        self.default_model = default_model
        self.load = load
        self.metrics = metrics
        self.retire_after_s = retire_after_s
        self.ready_when = settings.ready_when
        self.retiring: list[Retiring] = []
        self.released = 0  # versions stopped after they were swapped out or unloaded
        self.lock = asyncio.Lock()  # one change of the loaded versions at a time

    # -------------------------------------------------------------- requests (on the event loop)
    def lookup(self, name: str, version: str | None) -> Any:
        """The service for ``name`` (and ``version``; empty or None: the newest); ApiError 404/503."""
        model = self.models.get(name)
        if model is None:
            have = ", ".join(self.models) or "none"
            raise ApiError(404, "not_found", f"unknown model {name!r}; this server's models: {have}")
        if not version:
            if model.default is None:
                raise self._unavailable(model)
            return model.default
        loaded = model.versions.get(version)
        if loaded is None:
            if version in model.loading:
                retry = {"Retry-After": "1"}
                raise ApiError(503, "not_ready", f"model {name!r} version {version!r} is loading", headers=retry)
            have = ", ".join(model.versions) or "none"
            raise ApiError(404, "not_found", f"model {name!r} has no version {version!r} loaded; loaded: {have}")
        return loaded.service

    def _unavailable(self, model: Model) -> ApiError:
        if model.state == "LOADING":
            return ApiError(503, "not_ready", f"model {model.name!r} is loading; retry", headers={"Retry-After": "1"})
        if not model.wanted:
            return ApiError(
                404, "not_found", f"model {model.name!r} is not loaded; POST /v2/repository/models/{model.name}/load"
            )
        why = f"model {model.name!r} is not available: {model.reason}"
        return ApiError(503, "not_ready", why, headers={"Retry-After": "5"})

    def versions(self, name: str) -> list[str]:
        """The versions of ``name`` being served, newest first."""
        loaded = self.models[name].versions.values()
        return [v.found.version for v in sorted(loaded, key=lambda v: v.found.number, reverse=True)]

    def ready(self) -> bool:
        """The server's readiness (``--ready-when``): every wanted model serves, or any model does.
        A repository's model with no file to serve yet (a run folder training has just made) does
        not hold the server back; ``--model-path``'s one model always does."""
        single = self.settings.model_path is not None
        serving = [m.default is not None for m in self.models.values() if m.wanted and (single or not m.empty)]
        if self.ready_when == "any":
            return any(serving)
        return all(serving)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: one entry per loaded or failed version, one for an idle model."""
        rows: list[dict[str, str]] = []
        for model in self.models.values():
            entries = [{"name": model.name, "version": v, "state": "READY", "reason": ""} for v in model.versions]
            entries += [{"name": model.name, "version": v, "state": "LOADING", "reason": ""} for v in model.loading]
            if not ready_only:
                served = {v.found.path for v in model.versions.values()}
                for path, (_, version, reason) in model.failed.items():
                    if path not in served:
                        row = {"name": model.name, "version": version, "state": "UNAVAILABLE", "reason": reason}
                        entries.append(row)
                if not entries:
                    entries.append({"name": model.name, "version": "", "state": model.state, "reason": model.reason})
            rows += [e for e in entries if not ready_only or e["state"] == "READY"]
        return rows

    # -------------------------------------------------------------- changes
    def adopt(self, name: str, found: Found, service: Any) -> None:
        """A version loaded before the server started (``eirserve --model-path``)."""
        model = self.models[name]
        self._install(model, {found.version: Version(found, service)})
        service.metrics.set_ready(True)

    async def sync(self, model: Model) -> bool:
        """Serve what the model's policy picks from its files now; True when anything changed."""
        async with self.lock:
            return await self._sync(model)

    async def _sync(self, model: Model) -> bool:
        try:
            found = await asyncio.to_thread(found_in, model.source)
        except (OSError, ValueError) as e:
            found, model.reason = [], str(e)
        chosen = model.policy.choose(found)
        on_disk = {f.path for f in found}
        model.failed = {p: why for p, why in model.failed.items() if p in on_disk}  # a removed file is forgotten
        model.empty = not chosen
        new: dict[str, Version] = {}
        failed_any = False
        todo = []
        for f in chosen:
            have = model.versions.get(f.version)
            if have is not None and have.found.path == f.path and have.found.stamp == f.stamp:
                new[f.version] = have
            elif model.failed.get(f.path, (None,))[0] == f.stamp:
                failed_any = True
            else:
                todo.append(f)
        if todo and model.default is None:
            model.state, model.reason = "LOADING", ""
        for f in todo:
            model.loading = model.loading | {f.version}
            try:
                service = await asyncio.to_thread(self.load, model.name, f)
            except (EirError, ValueError, OSError) as e:
                failed_any = True
                model.failed[f.path] = (f.stamp, f.version, f"{f.path.name}: {e}")
                self._counted(model.name, "failed")
                serving = ", ".join(model.versions) or "no version"
                log.warning("model %s: %s not loaded, still serving %s: %s", model.name, f.path.name, serving, e)
                continue
            finally:
                model.loading = model.loading - {f.version}
            model.failed.pop(f.path, None)
            self._counted(model.name, "ok")
            new[f.version] = Version(f, service)
            service.metrics.set_ready(True)
            log.info("model %s: version %s ready (%s)", model.name, f.version, f.path.name)
        keep_old = failed_any or not new  # a version goes only once what replaces it works
        for v, old in model.versions.items():
            if new.get(v) is old:
                continue
            if v not in new and keep_old:
                new[v] = old
            else:
                self._retire(old.service)
        changed = new != model.versions
        self._install(model, new)
        if not new:
            model.state = "UNAVAILABLE"
            if failed_any:
                model.reason = "; ".join(reason for _, _, reason in model.failed.values())
            elif not model.reason or model.reason == "not loaded yet":
                model.reason = f"waiting for a checkpoint in {model.source}"
        return changed

    def _counted(self, name: str, result: str) -> None:
        if self.state.ready:  # loads after the start (the start's own are the server's readiness)
            self.metrics.model_swaps.labels(name, result).inc()

    def _install(self, model: Model, versions: dict[str, Version]) -> None:
        model.versions = versions
        newest = max(versions.values(), key=lambda v: v.found.number, default=None)
        model.default = newest.service if newest else None
        if newest is not None:
            model.state, model.reason = "READY", ""
        if model.name == self.default_model:
            self.state.service = model.default
        self._count(model)

    def _retire(self, service: Any) -> None:
        service.metrics.set_ready(False)
        service.successor = lambda: self.lookup(service.model, None)
        self.retiring.append(Retiring(service, time.monotonic()))

    def _count(self, model: Model) -> None:
        mine = sum(1 for r in self.retiring if r.service.model == model.name)
        self.metrics.model_versions_loaded.labels(model.name).set(len(model.versions) + mine)

    async def unload(self, name: str) -> None:
        async with self.lock:
            model = self.models[name]
            for old in model.versions.values():
                self._retire(old.service)
            model.wanted = False
            self._install(model, {})
            model.state, model.reason = "UNAVAILABLE", "unloaded"
            log.info("model %s: unloaded", name)

    async def reload(self, name: str, source: Path | None = None) -> Model:
        """Load (or load again) a model: its failures are forgotten and its files looked at anew."""
        async with self.lock:
            model = self.models.get(name)
            if model is None:
                if source is None:
                    raise KeyError(name)
                model = self.models[name] = Model(name, source, policy_for(self.settings, name))
            model.wanted = True
            model.failed.clear()
            await self._sync(model)
            return model

    async def stop_all(self) -> None:
        """At shutdown: every version finishes its queued work and stops."""
        async with self.lock:
            for model in self.models.values():
                for old in model.versions.values():
                    self._retire(old.service)
                self._install(model, {})
        await self.release_retired(force=True)

    async def release_retired(self, force: bool = False) -> None:
        """Stop the versions swapped out once no request can still hold them (and their queue is empty)."""
        keep: list[Retiring] = []
        gone: list[Retiring] = []
        for r in self.retiring:
            quiet = r.service.batcher.queue_depth == 0
            if force or (time.monotonic() - r.since >= self.retire_after_s and quiet):
                gone.append(r)
            else:
                keep.append(r)
        if not gone:
            return
        self.retiring = keep
        for r in gone:
            r.service.stopped = True  # before the batcher stops: a late request goes to the successor
            await asyncio.to_thread(r.service.batcher.stop)
            r.service.metrics.release()
            self.released += 1
        for model in self.models.values():
            self._count(model)
        give_back_memory()


def give_back_memory() -> None:
    """After a version is released: collect its cycles (PyTorch modules hold some) now, and give
    the freed heap back to the OS (glibc's malloc_trim; elsewhere nothing to do)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
