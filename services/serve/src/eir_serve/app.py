"""``create_app(settings)``: the FastAPI app. The lifespan loads the bundle once, warms it up,
starts the batcher, and only then reports ready; on shutdown the batcher drains first."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from eir_core.bundle import read_manifest, resolve_bundle_path
from eir_core.inference import Runner
from eir_serve import __version__
from eir_serve.auth import check_bearer, resolve_api_key
from eir_serve.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    unhandled_error_handler,
    validation_error_handler,
)
from eir_serve.gate import BodyPool, GateConfig, RequestGate
from eir_serve.grpc.server import grpc_service
from eir_serve.metrics import Metrics, MetricsMiddleware
from eir_serve.routes import eir, ops, v2, web
from eir_serve.runtime import describe, load_checked, load_predictor, resolve_runtime
from eir_serve.server import BodyTimeoutMiddleware, DrainingMiddleware
from eir_serve.service import ModelService, example_payload
from eir_serve.settings import Settings
from eir_serve.watch import RETIRE_MARGIN_S, CheckpointWatcher, check_model_control, watching

log = logging.getLogger("eir_serve")


def create_app(settings: Settings, predictor: Runner | None = None) -> FastAPI:
    """``predictor``: the model, already loaded and checked (``runtime.load_checked``, as
    ``eirserve`` does before it listens); without it the lifespan loads it."""
    bundle_path = resolve_bundle_path(Path(settings.model_path))
    manifest = read_manifest(bundle_path)
    runtime = resolve_runtime(settings, bundle_path)
    if runtime == "torch":  # a device PyTorch cannot use is refused now, not in the lifespan
        from eir_core.device import resolve_device

        resolve_device(settings.device)
    api_key = resolve_api_key(settings)
    metrics = Metrics()
    check_model_control(settings)

    def check_call(metadata: Mapping[str, str]) -> None:  # gRPC's ModelInfer, as the HTTP infer routes
        if not check_bearer(metadata.get("authorization"), api_key):
            raise ApiError(
                401, "unauthorized", "this server needs an API key: send metadata 'authorization: Bearer <key>'"
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def load() -> ModelService:
            if predictor is not None:
                return ModelService(predictor, settings, metrics)  # warmed up by load_checked
            service = ModelService(load_predictor(settings, bundle_path, runtime), settings, metrics)
            service.warm_up()
            return service

        service = await asyncio.to_thread(load)
        service.checkpoint = bundle_path.name
        app.state.bundle_path = bundle_path
        # What is loaded now (PyTorch, the app, the model: ~200 000 objects) lives as long as the
        # process; frozen, the collector no longer walks it, and an old-generation collection
        # takes well under a millisecond instead of ~80 ms in the middle of requests.
        gc.collect()
        gc.freeze()
        service.batcher.start()
        # Large bodies are parsed and decoded here, off the event loop. One thread: the work holds
        # the interpreter most of the time, so a second would not go faster, only take the loop's turns.
        app.state.parse_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eirserve-parse")
        app.state.service = service
        try:
            # grpc_port 0: no gRPC. The key is checked from a call's metadata, before its message is read.
            app.state.watcher = checkpoint_watcher(app.state, settings, metrics)
            async with (
                grpc_service(app.state, settings, metrics, check_call if api_key else None),
                watching(app.state.watcher),
            ):
                app.state.ready = True
                log.info("serving %s on %s", bundle_path, describe(service.predictor))
                yield
                app.state.ready = False  # gRPC drains its calls while reporting not ready
        finally:
            app.state.ready = False
            await asyncio.to_thread(app.state.service.batcher.stop)  # the watcher may have swapped it
            pool, app.state.parse_pool = app.state.parse_pool, None
            pool.shutdown(wait=False)

    app = FastAPI(
        title="eirserve",
        version=__version__,
        description=f"Model `{manifest.run_name}` from `{bundle_path.name}`. EIR-compatible `/predict` "
        "and `/info`, Open Inference Protocol under `/v2`, `/health`, `/ready`, `/metrics`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.ready = False
    app.state.service = None
    app.state.api_key = api_key
    app.state.draining = False
    app.state.parse_pool = None  # the lifespan's thread for large bodies
    app.state.body_pool = BodyPool(settings.max_inflight_body_bytes)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
    app.add_middleware(RequestGate, config=GateConfig(api_key, settings.max_body_bytes, app.state.body_pool))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_timeout_s)
    app.add_middleware(DrainingMiddleware, state=app.state)
    app.include_router(eir.build_router(example_payload(manifest)))
    app.include_router(v2.router)
    app.include_router(ops.router)
    app.include_router(web.router)
    if settings.enable_echo:
        app.include_router(ops.echo_router)
    return app


def checkpoint_watcher(state: Any, settings: Settings, metrics: Metrics) -> CheckpointWatcher | None:
    """``--model-control poll``: the watcher of the run folder (watch.py); None otherwise."""
    if settings.model_control != "poll":
        return None

    # PyTorch keeps ~12 MB of TorchScript's compilation state per traced model for the life of the
    # process (measured: 12 loads, +110 MB; eager and ONNX Runtime stay flat), so checkpoints swapped
    # in run eager on the torch runtime unless --graph torchscript asks for it.
    swap_settings = settings.model_copy(update={"graph": "eager"}) if settings.graph == "auto" else settings

    def load(path: Path) -> ModelService:
        runner = load_checked(swap_settings, path, resolve_runtime(swap_settings, path))
        service = ModelService(runner, settings, metrics)
        service.checkpoint = path.name
        service.batcher.start()
        return service

    retire_after_s = settings.body_timeout_s + RETIRE_MARGIN_S
    return CheckpointWatcher(state, Path(settings.model_path), settings.poll_interval_s, retire_after_s, load, metrics)


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory eir_serve.app:app_from_env`` (settings from EIR_SERVE_*). uvicorn's own
    command line does not add what ``eirserve`` does in ``eir_serve.server``: the header deadline,
    the connection cap and the drain on SIGTERM."""
    return create_app(Settings())
