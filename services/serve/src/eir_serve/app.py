"""``create_app(settings)``: the FastAPI app. The lifespan loads the bundle once, warms it up,
starts the batcher, and only then reports ready; on shutdown the batcher drains first."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from eir_core.inference import Runner
from eir_serve import __version__
from eir_serve.auth import check_bearer, resolve_api_key
from eir_serve.batcher import Arrivals
from eir_serve.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    unhandled_error_handler,
    validation_error_handler,
)
from eir_serve.gate import BodyPool, GateConfig, RequestGate
from eir_serve.grpc.server import grpc_service
from eir_serve.loading import Plan, plan_models, start_models, version_loader
from eir_serve.metrics import Metrics, MetricsMiddleware
from eir_serve.repository import Registry
from eir_serve.routes import eir, ops, v2, web
from eir_serve.routes import repository as repository_routes
from eir_serve.runtime import describe
from eir_serve.server import BodyTimeoutMiddleware, DrainingMiddleware
from eir_serve.settings import Settings
from eir_serve.versions import check_model_source
from eir_serve.watch import RETIRE_MARGIN_S, watching

log = logging.getLogger("eir_serve")


def create_app(settings: Settings, predictor: Runner | None = None, plan: Plan | None = None) -> FastAPI:
    """``predictor``: the model of ``--model-path``, already loaded and checked
    (``runtime.load_checked``, as ``eirserve`` does before it listens); without it the lifespan
    loads the models (repository.py)."""
    check_model_source(settings)
    plan = plan or plan_models(settings)  # eirserve made it already, before the port was bound
    api_key = resolve_api_key(settings)
    metrics = Metrics()

    def check_call(metadata: Mapping[str, str]) -> None:  # gRPC's ModelInfer, as the HTTP infer routes
        if not check_bearer(metadata.get("authorization"), api_key):
            raise ApiError(
                401, "unauthorized", "this server needs an API key: send metadata 'authorization: Bearer <key>'"
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = Registry(
            app.state, settings, plan.models, plan.default, version_loader(app.state, settings, metrics), metrics,
            RETIRE_MARGIN_S,
        )  # fmt: skip
        app.state.models = registry
        await start_models(registry, settings, plan, predictor, metrics)
        # What is loaded now (PyTorch, the app, the model: ~200 000 objects) lives as long as the
        # process; frozen, the collector no longer walks it, and an old-generation collection
        # takes well under a millisecond instead of ~80 ms in the middle of requests.
        gc.collect()
        gc.freeze()
        # Large bodies are parsed and decoded here, off the event loop. One thread: the work holds
        # the interpreter most of the time, so a second would not go faster, only take the loop's turns.
        app.state.parse_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eirserve-parse")
        try:
            # grpc_port 0: no gRPC. The key is checked from a call's metadata, before its message is read.
            poll = settings.model_control == "poll"
            async with (
                grpc_service(app.state, settings, metrics, check_call if api_key else None),
                watching(registry, poll, settings.model_repository, settings.poll_interval_s),
            ):
                app.state.ready = True
                for model in registry.models.values():
                    for v in model.versions.values():
                        where = describe(v.service.predictor)
                        log.info("serving %s version %s on %s", model.name, v.found.version, where)
                yield
                app.state.ready = False  # gRPC drains its calls while reporting not ready
        finally:
            app.state.ready = False
            await registry.stop_all()
            pool, app.state.parse_pool = app.state.parse_pool, None
            pool.shutdown(wait=False)

    app = FastAPI(
        title="eirserve",
        version=__version__,
        description=f"{plan.where}. EIR-compatible `/predict` and `/info`, Open Inference Protocol under "
        "`/v2` (with the model-repository extension), `/health`, `/ready`, `/metrics`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    app.state.service = None  # the default model's newest version (the EIR routes, the web page)
    app.state.models = None  # the Registry, from the lifespan on
    app.state.api_key = api_key
    app.state.draining = False
    app.state.parse_pool = None  # the lifespan's thread for large bodies
    app.state.body_pool = BodyPool(settings.max_inflight_body_bytes)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
    app.state.arrivals = Arrivals()  # requests on their way to a batcher (adaptive batching)
    gate = GateConfig(api_key, settings.max_body_bytes, app.state.body_pool, app.state.arrivals)
    app.add_middleware(RequestGate, config=gate)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_timeout_s)
    app.add_middleware(DrainingMiddleware, state=app.state)
    app.include_router(eir.build_router(plan.example))
    app.include_router(v2.router)
    app.include_router(repository_routes.router)
    app.router.routes[:0] = v2.FAST_ROUTES  # first: the protocol's infer, served without FastAPI's resolution
    app.include_router(ops.router)
    app.include_router(web.router)
    if settings.enable_echo:
        app.include_router(ops.echo_router)
    return app


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory eir_serve.app:app_from_env`` (settings from EIR_SERVE_*). uvicorn's own
    command line does not add what ``eirserve`` does in ``eir_serve.server``: the header deadline,
    the connection cap and the drain on SIGTERM."""
    return create_app(Settings())
