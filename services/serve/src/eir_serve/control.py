"""Model control on request: the model-repository extension of the Open Inference Protocol as
Triton documents it (index, load, unload), shared by HTTP (routes/repository.py) and gRPC.

* index: every model of the repository with each version's state (``READY``, ``LOADING``,
  ``UNAVAILABLE``) and, for one that failed, the reason; ``ready``: only those serving.
* load: (re)load a model by its version policy, its past failures forgotten; a model that is
  new in the repository folder is found. Allowed with ``--model-control explicit`` only (Triton:
  ``--model-control-mode=explicit``); a failure is a 400 that gives the reason, and the
  versions served before stay served.
* unload: stop serving a model; its versions finish the requests they hold first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eir_serve.errors import ApiError
from eir_serve.protocol import bad, registry
from eir_serve.repository import Registry
from eir_serve.versions import models_in

UNLOAD_PARAMETERS = {"unload_dependents"}  # Triton's; this server has no ensembles, so nothing depends


def _explicit(state: Any, what: str) -> None:
    mode = state.settings.model_control
    if mode != "explicit":
        raise ApiError(
            400,
            "model_control",
            f"{what} on request needs --model-control explicit; this server runs with --model-control {mode}",
        )


def index(state: Any, ready_only: Any = False) -> list[dict[str, str]]:
    if not isinstance(ready_only, bool):
        raise bad(f"'ready': expected true or false, got {ready_only!r}")
    return registry(state).index(ready_only)  # type: ignore[no-any-return]


async def load(state: Any, name: str, parameters: Mapping[str, Any]) -> None:
    models: Registry = registry(state)
    _explicit(state, "loading a model")
    if parameters:
        key = next(iter(parameters))
        what = "a model configuration" if key == "config" else "model files" if key.startswith("file:") else "it"
        raise bad(f"load parameter {key!r}: this server cannot take {what}; put the bundle in the repository")
    source = None
    if name not in models.models:
        repository = state.settings.model_repository
        if repository is not None:
            source = (await asyncio.to_thread(models_in, Path(repository))).get(name)
        if source is None:
            where = f"the repository {repository}" if repository is not None else "this server (--model-path)"
            raise ApiError(404, "not_found", f"no model {name!r} in {where}")
    model = await models.reload(name, source)
    if model.default is None:
        raise bad(f"failed to load {name!r}: {model.reason}")


async def unload(state: Any, name: str, parameters: Mapping[str, Any]) -> None:
    models: Registry = registry(state)
    _explicit(state, "unloading a model")
    unknown = sorted(set(parameters) - UNLOAD_PARAMETERS)
    if unknown:
        raise bad(f"unload parameter {unknown[0]!r}: unknown; this server takes {', '.join(sorted(UNLOAD_PARAMETERS))}")
    if name not in models.models:
        raise ApiError(404, "not_found", f"unknown model {name!r}; this server's models: {', '.join(models.models)}")
    await models.unload(name)
