"""FastAPI dependencies: the loaded model service, or 503 while it is not ready."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from eir_serve.errors import ApiError
from eir_serve.service import ModelService


async def get_service(request: Request) -> ModelService:
    # async on purpose: FastAPI runs a plain-def dependency in a thread pool, a thread hop per request.
    service: ModelService | None = getattr(request.app.state, "service", None)
    if service is None or not request.app.state.ready:
        raise ApiError(503, "not_ready", "the model is still loading; retry shortly", headers={"Retry-After": "1"})
    return service


ServiceDep = Annotated[ModelService, Depends(get_service)]
