"""FastAPI dependencies: the default model's service, or 503 while it is not ready."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from eir_serve.errors import ApiError
from eir_serve.service import ModelService


async def get_service(request: Request) -> ModelService:
    """The default model's newest version (the EIR routes serve it)."""
    # async on purpose: FastAPI runs a plain-def dependency in a thread pool, a thread hop per request.
    state = request.app.state
    service: ModelService | None = state.service
    if service is not None and state.ready:
        return service
    models = state.models
    if not state.ready or models is None:
        raise ApiError(503, "not_ready", "the model is still loading; retry shortly", headers={"Retry-After": "1"})
    if models.default_model is None:
        raise ApiError(404, "not_found", "the model repository has no model yet")
    return models.lookup(models.default_model, None)  # type: ignore[no-any-return]  # raises: not serving


ServiceDep = Annotated[ModelService, Depends(get_service)]
