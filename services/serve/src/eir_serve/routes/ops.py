"""Operations: liveness, readiness, Prometheus metrics, and the optional echo endpoint."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from eir_serve.body import JsonBodyRoute
from eir_serve.deps import ServiceDep
from eir_serve.schemas.eir import PredictRequest, PredictResponse

router = APIRouter(tags=["ops"])


@router.get("/health", description="The process is up (200 even while the model loads).")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def server_ready(state: object) -> bool:
    """Started, and the models serve as --ready-when asks (every wanted model, or any)."""
    models = getattr(state, "models", None)
    return bool(getattr(state, "ready", False)) and models is not None and models.ready()


@router.get(
    "/ready",
    description="200 once the models are loaded and warmed up (all of them, or any: --ready-when), 503 before.",
)
async def ready(request: Request) -> JSONResponse:
    if server_ready(request.app.state):
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics", description="Prometheus text format.")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


echo_router = APIRouter(tags=["ops"], route_class=JsonBodyRoute)


@echo_router.post(
    "/echo",
    description="Benchmark aid: /predict's decoding and encoding without the model.",
    response_model=PredictResponse,
)
async def echo(items: PredictRequest, service: ServiceDep) -> Response:
    decoded = service.decode_items(items.root)
    zeros = {name: np.zeros(o.shape, np.float32) for name, o in service.outputs.items()}
    return service.encode([zeros for _ in decoded])
