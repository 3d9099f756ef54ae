"""Request bodies: read under a size limit, parse as strict JSON, hand to FastAPI.

The parser is jiter (pydantic's JSON parser, as a standalone package) because it is the one at
hand that refuses everything a hostile client can send to a Python JSON reader: nesting past
200 levels (the standard library recurses into a RecursionError), duplicate keys (orjson and
the standard library keep the last one silently), lone surrogates and invalid UTF-8. Numbers
are then held to what a 64-bit integer or a finite double can carry: ``1e999`` parses as
infinity and a 10 000-digit integer as a Python int, and neither means anything to a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any

import jiter
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from eir_serve.errors import ApiError, item_error

INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # int64 and uint64 together


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes (413) and a client that left mid-body (400)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # the client went away mid-body: nobody will read an answer
        raise ApiError(400, "client_disconnected", "the client closed the connection before the body ended") from None
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """Strict JSON -> Python values, or a 422 naming the problem (and where it is)."""
    try:
        value = jiter.from_json(raw, allow_inf_nan=False, catch_duplicate_keys=True, cache_mode="keys")
    except ValueError as e:
        message = str(e)
        if "recursion limit" in message:
            message = message.replace("recursion limit exceeded", "nested too deeply")
        elif "number out of range" in message:
            message = message.replace("number out of range", "number too large")
        raise item_error(None, "body", f"not valid JSON ({message})") from None
    _check_numbers(value)
    return value


def _check_numbers(value: Any) -> None:
    """Refuse infinite floats and integers past 64 bits anywhere in a parsed document."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is list:
            if not _numbers_in_range(v):
                stack.extend(v)
        elif t is dict:
            stack.extend(v.values())
        elif t is float:
            if math.isinf(v):
                raise item_error(None, "body", "not valid JSON (a number is too large for a double)")
        elif t is int and not INT_MIN <= v <= INT_MAX:
            raise item_error(None, "body", "not valid JSON (an integer does not fit in 64 bits)")


def _numbers_in_range(values: list[Any]) -> bool:
    """True for a list of numbers all within the int64/uint64 range (so finite), found by min and
    max in C: V2's JSON tensors are long lists of numbers. False: look at each element."""
    if not values or type(values[0]) not in (int, float):
        return False
    try:
        lo, hi = min(values), max(values)
    except TypeError:  # not numbers only
        return False
    return type(lo) in (int, float) and type(hi) in (int, float) and INT_MIN <= lo and hi <= INT_MAX


async def read_json_body(request: Request, limit: int) -> Any:
    """The request's JSON, refusing bodies over ``limit`` bytes (413) and anything not strict JSON (422)."""
    return parse_json(await read_body(request, limit))


class _ParsedRequest(Request):
    """A request whose body has already been read and parsed; FastAPI reads it from here."""

    def __init__(self, scope: Scope, receive: Receive, raw: bytes, parsed: Any) -> None:
        super().__init__(scope, receive)
        self._raw, self._parsed = raw, parsed

    async def body(self) -> bytes:
        return self._raw

    async def json(self) -> Any:
        return self._parsed


class JsonBodyRoute(APIRoute):
    """A route whose declared body model is validated from ``read_json_body``'s result, not from
    FastAPI's own reading (no size limit, and the standard library's parser). Routes without a
    body are left as they are."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if self.body_field is None:
            return handle

        async def read_then_handle(request: Request) -> Response:
            raw = await read_body(request, request.app.state.settings.max_body_bytes)
            parsed = parse_json(raw)
            # The body is JSON whatever its declared type (curl -d says form-urlencoded), as it
            # always was here; tell FastAPI so, or it would validate the raw bytes instead.
            scope = request.scope
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))
            return await handle(_ParsedRequest(scope, request.receive, raw, parsed))

        return read_then_handle
