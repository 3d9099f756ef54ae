"""The model-repository extension over HTTP (control.py): ``POST /v2/repository/index``,
``POST /v2/repository/models/{name}/load`` and ``/unload``. Bodies are optional JSON
(``{"ready": true}``; ``{"parameters": {...}}``); the API key guards all three when one is set."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from eir_serve import control
from eir_serve.auth import require_api_key
from eir_serve.body import JsonLimits, parse_json, read_body
from eir_serve.protocol import bad
from eir_serve.schemas.v2 import ProtocolErrorResponse, RepositoryIndexEntry

router = APIRouter(prefix="/v2/repository", tags=["v2 model repository"], dependencies=[Depends(require_api_key)])
MAX_BODY = 64 * 1024
LIMITS = JsonLimits(values=1000, containers=100)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ProtocolErrorResponse, "description": "not allowed in this --model-control, or the load failed"},
    404: {"model": ProtocolErrorResponse, "description": "no such model"},
}


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, MAX_BODY)
    if not raw.strip():
        return {}
    body = parse_json(raw, LIMITS)
    if not isinstance(body, dict):
        raise bad(f"body: expected a JSON object, got {type(body).__name__}")
    return body


async def _parameters(request: Request) -> dict[str, Any]:
    parameters = (await _body(request)).get("parameters", {})
    if not isinstance(parameters, dict):
        raise bad(f"'parameters': expected a JSON object, got {type(parameters).__name__}")
    return parameters


@router.post(
    "/index",
    response_model=list[RepositoryIndexEntry],
    responses=ERRORS,
    description="Every model with the state of each version (READY, LOADING, UNAVAILABLE with the reason).",
)
async def repository_index(request: Request) -> JSONResponse:
    return JSONResponse(control.index(request.app.state, (await _body(request)).get("ready", False)))


@router.post(
    "/models/{name}/load",
    responses=ERRORS,
    description="Load (or load again) a model by its version policy (--model-control explicit).",
)
async def repository_load(name: str, request: Request) -> JSONResponse:
    await control.load(request.app.state, name, await _parameters(request))
    return JSONResponse({})


@router.post(
    "/models/{name}/unload",
    responses=ERRORS,
    description="Stop serving a model; its requests in flight finish first (--model-control explicit).",
)
async def repository_unload(name: str, request: Request) -> JSONResponse:
    await control.unload(request.app.state, name, await _parameters(request))
    return JSONResponse({})
