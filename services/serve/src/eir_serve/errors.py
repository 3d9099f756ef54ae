"""One JSON error shape for every 4xx/5xx answer:

{"error": {"code": "invalid_input", "message": "...",
           "details": [{"item": 0, "field": "mnist", "message": "..."}]}}

except under /v2, where the Open Inference Protocol's error object is the answer:
{"error": "<message>"}, and a bad request is a 400 (not a 422).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.headers = headers


def where(item: int | None, field: str | None) -> str:
    """How a message names its place: "item 0, field 'mnist'", or "request"."""
    text = f"item {item}" if item is not None else "request"
    return text + (f", field {field!r}" if field else "")


def item_error(item: int | None, field: str | None, message: str, status: int = 422) -> ApiError:
    return ApiError(
        status,
        "invalid_input",
        f"{where(item, field)}: {message}",
        [{"item": item, "field": field, "message": message}],
    )


def error_body(code: str, message: str, details: list[dict[str, Any]]) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


V2_PREFIX = "/v2"


def is_protocol_path(request: Request) -> bool:
    path = request.url.path
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def protocol_error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """The Open Inference Protocol's error answer; its 'bad request' is 400."""
    return JSONResponse({"error": message}, status_code=400 if status == 422 else status, headers=headers)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if is_protocol_path(request):
        return protocol_error(exc.message, exc.status, exc.headers)
    return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A declared model's (or parameter's) validation errors, in the one shape: the request body's
    own errors name field "body", an item's errors its index and input."""
    assert isinstance(exc, RequestValidationError)
    details: list[dict[str, Any]] = []
    places = []
    for e in exc.errors():
        loc = list(e.get("loc", ()))
        in_body = bool(loc) and loc[0] == "body"
        loc = [p for p in loc if p not in ("body", "query", "path", "header")]
        item = next((p for p in loc if isinstance(p, int)), None)
        field = ".".join(str(p) for p in loc if not isinstance(p, int)) or None
        if field is None and item is None and in_body:
            field = "body"
        details.append({"item": item, "field": field, "message": str(e.get("msg"))})
        places.append(f"{where(item, field)}: {e.get('msg')}")
    msg = "; ".join(places)
    if is_protocol_path(request):
        return protocol_error(msg, 422)
    return JSONResponse(error_body("invalid_input", msg, details), status_code=422)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if is_protocol_path(request):
        return protocol_error(str(exc.detail), exc.status_code, getattr(exc, "headers", None))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail), []), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    if is_protocol_path(request):
        return protocol_error("the server failed; see its log", 500)
    return JSONResponse(error_body("internal_error", "the server failed; see its log", []), status_code=500)
