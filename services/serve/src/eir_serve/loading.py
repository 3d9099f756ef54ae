"""What the server loads: the models of ``--model-path`` or ``--model-repository`` (planned
before the app starts, so that a bad bundle or flag is refused at once), how one version is
loaded, and the loading at start."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eir_core.bundle import read_manifest, resolve_bundle_path
from eir_core.errors import BundleError
from eir_serve.metrics import Metrics
from eir_serve.repository import Loader, Model, Registry
from eir_serve.runtime import load_checked, resolve_runtime
from eir_serve.service import ModelService, example_payload
from eir_serve.settings import Settings
from eir_serve.versions import Found, VersionPolicy, found_in, models_in, policy_for

log = logging.getLogger("eir_serve")


@dataclass
class Plan:
    models: dict[str, Model]
    default: str | None  # the model of /predict, /info and the web page
    example: list[dict[str, Any]] | None  # a /predict body the default model accepts (for /docs)
    where: str  # for the OpenAPI description
    bundle: Path | None = None  # --model-path's checkpoint as it stands now (None: a repository, or no checkpoint yet)
    runtime: str | None = None  # what runs that bundle


def plan_models(settings: Settings) -> Plan:
    """The models to serve; BundleError or ValueError (naming the flag) when it cannot work."""
    if settings.model_path is not None:
        return _plan_path(settings, Path(settings.model_path))
    repository = Path(settings.model_repository or ".")
    on_disk = models_in(repository)
    if settings.default_model is not None and settings.default_model not in on_disk:
        have = ", ".join(on_disk) or "none"
        raise ValueError(f"--default-model {settings.default_model!r}: no such model in {repository} (models: {have})")
    wanted = _loaded_at_start(settings, on_disk)
    models = {}
    for name, source in on_disk.items():
        model = Model(name, source, policy_for(settings, name), wanted=name in wanted)
        if not model.wanted:
            model.reason = f"not loaded (--model-control explicit): POST /v2/repository/models/{name}/load"
        models[name] = model
    default = settings.default_model or next(iter(on_disk), None)
    example = None
    if default is not None:
        try:
            chosen = VersionPolicy("best").choose(found_in(on_disk[default]))
            example = example_payload(read_manifest(chosen[0].path)) if chosen else None
        except (BundleError, OSError, ValueError):
            example = None
    return Plan(models, default, example, f"Models of `{repository}`: {', '.join(on_disk) or 'none yet'}")


def _loaded_at_start(settings: Settings, on_disk: dict[str, Path]) -> set[str]:
    if settings.model_control != "explicit" or settings.load_model.strip() == "*":
        return set(on_disk)
    names = {n.strip() for n in settings.load_model.split(",") if n.strip()}
    unknown = sorted(names - set(on_disk))
    if unknown:
        raise ValueError(f"--load-model: no model {', '.join(unknown)} in {settings.model_repository}")
    return names


def _plan_path(settings: Settings, path: Path) -> Plan:
    waiting = settings.model_control == "poll" and not path.is_file() and not found_in(path)
    if waiting:  # serve while training: the run has no checkpoint yet (or no folder: eirtrain makes it)
        model = Model(path.name, path, policy_for(settings, path.name))
        model.reason = f"waiting for the first checkpoint in {path}"
        return Plan({path.name: model}, path.name, None, f"Run `{path}` (waiting for its first checkpoint)")
    bundle = resolve_bundle_path(path)
    manifest = read_manifest(bundle)
    runtime = resolve_runtime(settings, bundle)
    if runtime == "torch":  # a device PyTorch cannot use is refused now, not in the lifespan
        from eir_core.device import resolve_device

        resolve_device(settings.device)
    name = manifest.run_name
    model = Model(name, path, policy_for(settings, name))
    where = f"Model `{name}` from `{bundle.name}`"
    return Plan({name: model}, name, example_payload(manifest), where, bundle, runtime)


def version_loader(state: Any, settings: Settings, metrics: Metrics) -> Loader:
    """Loads, checks (one forward pass) and starts one version, in a thread."""
    # PyTorch keeps ~12 MB of TorchScript's compilation state per traced model for the life of the
    # process (measured: 12 loads, +110 MB; eager and ONNX Runtime stay flat), so versions loaded
    # after the start run eager on the torch runtime unless --graph torchscript asks for it.
    later = settings.model_copy(update={"graph": "eager"}) if settings.graph == "auto" else settings

    def load(name: str, found: Found) -> ModelService:
        chosen = later if state.ready else settings
        runner = load_checked(chosen, found.path, resolve_runtime(chosen, found.path))
        service = ModelService(runner, settings, metrics, name, found.version, state.arrivals)
        service.checkpoint = found.path.name
        service.batcher.start()
        return service

    return load


async def start_models(
    registry: Registry, settings: Settings, plan: Plan, predictor: Any, metrics: Metrics
) -> None:  # fmt: skip
    """Load what is served from the start. ``--model-path`` without poll must load (its error is
    the server's); a repository's model that fails is reported and left unavailable."""
    if predictor is not None and settings.model_path is not None:
        (model,) = plan.models.values()
        (best,) = VersionPolicy("best").choose(found_in(model.source))  # what the CLI loaded
        service = ModelService(predictor, settings, metrics, model.name, best.version, registry.state.arrivals)
        service.checkpoint = best.path.name
        service.batcher.start()
        registry.adopt(model.name, best, service)
        if model.policy.kind != "best":
            await registry.sync(model)
        return
    for model in plan.models.values():
        if model.wanted:
            await registry.sync(model)
    if settings.model_path is not None and settings.model_control != "poll":
        (model,) = plan.models.values()
        if model.default is None:
            raise BundleError(model.reason)
