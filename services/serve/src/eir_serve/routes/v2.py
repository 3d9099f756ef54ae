"""Open Inference Protocol (KServe V2) over HTTP: health, metadata, infer; every model route in
its unversioned and ``/versions/{version}`` form; JSON and the binary tensor data extension.

Binary extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes, then the
raw bytes of each input that has ``parameters.binary_data_size`` (in input order; BYTES elements
each a 4-byte little-endian length and the bytes). Outputs asked for with
``parameters.binary_data: true`` (or every output, with the request parameter
``binary_data_output: true``) come back the same way. Tensors are described in protocol.py;
errors under /v2 are ``{"error": "<message>"}`` (errors.py).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic_core
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.routing import Match, Route
from starlette.types import Scope

from eir_core.diffusion_sampling import SamplingParams
from eir_serve import __version__, protocol
from eir_serve.auth import require_api_key
from eir_serve.body import off_loop, parse_json, read_body
from eir_serve.errors import ApiError
from eir_serve.gate import ascii_int, coding_of
from eir_serve.protocol import RequestTensor, TensorSpec, bad
from eir_serve.routes.generate import GENERATE_DOC, STREAM_DOC, _generate, _generate_stream
from eir_serve.routes.ops import server_ready
from eir_serve.schemas.v2 import (
    InferRequest,
    InferResponse,
    InferTensor,
    LiveResponse,
    ModelMetadataResponse,
    ProtocolErrorResponse,
    ReadyResponse,
    ServerMetadataResponse,
    TensorMetadata,
)
from eir_serve.service import ModelService, client_gone

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
HEADER_LENGTH = "Inference-Header-Content-Length"
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ProtocolErrorResponse, "description": "bad request (the message names the tensor)"},
    404: {"model": ProtocolErrorResponse, "description": "unknown model or version"},
    413: {"model": ProtocolErrorResponse, "description": "body or batch too large"},
    503: {"model": ProtocolErrorResponse, "description": "not ready, or queue full"},
}


@router.get("", response_model=ServerMetadataResponse, description="Server name, version and protocol extensions.")
async def server_metadata() -> ServerMetadataResponse:
    return ServerMetadataResponse(name="eirserve", version=__version__, extensions=protocol.EXTENSIONS)


@router.get("/health/live", response_model=LiveResponse)
async def live() -> LiveResponse:
    return LiveResponse(live=True)


@router.get("/health/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def v2_ready(request: Request) -> JSONResponse:
    ok = server_ready(request.app.state)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def model_metadata(service: ModelService, name: str, versions: list[str]) -> ModelMetadataResponse:
    def meta(specs: dict[str, TensorSpec]) -> list[TensorMetadata]:
        return [TensorMetadata(name=s.name, datatype=s.datatype, shape=s.metadata_shape) for s in specs.values()]

    return ModelMetadataResponse(
        name=name,
        versions=versions,
        platform=protocol.PLATFORM,
        inputs=meta(protocol.input_specs(service)),
        outputs=meta(protocol.output_specs(service)),
        parameters=_sampling_parameters(service),
    )


def _sampling_parameters(service: ModelService) -> dict[str, str | int | float | bool] | None:
    """/info's ``model.sampling`` flattened into the protocol's parameter values."""
    info = service.sampling_info()
    if info is None:
        return None
    out: dict[str, str | int | float | bool] = {"sampling_output": info["output"]}
    for name in ("steps", "eta", "guidance_scale"):
        spec = info[name]
        if spec is None:
            continue
        for key in ("default", "min", "max"):
            if spec[key] is not None:
                out[f"{name}_{key}"] = spec[key]
    out["sampler_default"] = info["sampler"]["default"]
    out["sampler_choices"] = ",".join(info["sampler"]["choices"])
    return out


def _both_forms(method: str, tail: str, endpoint: Callable[..., Coroutine[Any, Any, Any]], **kwargs: Any) -> None:
    """Register ``/models/{name}<tail>`` and ``/models/{name}/versions/{version}<tail>``."""

    async def unversioned(name: str, request: Request) -> Any:
        return await endpoint(protocol.model_service(request.app.state, name, None), name, None, request)

    async def versioned(name: str, version: str, request: Request) -> Any:
        return await endpoint(protocol.model_service(request.app.state, name, version), name, version, request)

    base = endpoint.__name__.strip("_")
    router.add_api_route(
        f"/models/{{name}}{tail}", unversioned, methods=[method], name=f"model_{base}", responses=ERRORS, **kwargs
    )
    router.add_api_route(
        f"/models/{{name}}/versions/{{version}}{tail}",
        versioned,
        methods=[method],
        name=f"model_{base}_version",
        responses=ERRORS,
        **kwargs,
    )


async def _metadata(service: ModelService, name: str, version: str | None, request: Request) -> JSONResponse:
    versions = protocol.model_versions(request.app.state, name)
    return JSONResponse(model_metadata(service, name, versions).model_dump(exclude_none=True))


async def _ready(service: ModelService, name: str, version: str | None, request: Request) -> ReadyResponse:
    return ReadyResponse(ready=True)  # model_service answered 404 or 503 for a model or version not serving


@dataclass(frozen=True)
class _Decoded:
    """An infer request, checked and decoded into /predict's items."""

    id: str | None
    items: list[dict[str, Any]]
    seed: int | None
    noise_scale: float | None
    sampling: SamplingParams | None
    outputs: list[TensorSpec]
    binary: dict[str, bool]


async def _infer(service: ModelService, name: str, version: str | None, request: Request) -> Response:
    body = await read_body(request, service.settings.max_body_bytes)
    pool = request.app.state.parse_pool  # a large body is decoded off the event loop
    headers = request.headers
    d = await off_loop(
        pool, len(body), _decode, service, body, headers.get("content-encoding"), headers.get(HEADER_LENGTH)
    )
    gone = client_gone(request) if service.diffusion is not None else None
    arrays = await protocol.infer(service, d.items, d.seed, d.outputs, d.noise_scale, d.sampling, gone)
    size = sum(a.size for a in arrays.values()) * 8  # about the bytes of a JSON answer
    return await off_loop(pool, size, _answer, name, service.version, d.id, arrays, d.binary)


def _decode(service: ModelService, body: bytes, encoding: str | None, header_length: str | None) -> _Decoded:
    body = _decompress(body, encoding, service.settings.max_body_bytes)
    header, binary = _split(body, header_length)
    try:  # the same strict, bounded JSON reader as every other route
        raw = parse_json(header, service.json_limits)
    except ApiError as e:
        raise ApiError(
            413 if e.status == 413 else 400, e.code, "body: " + (e.details[0]["message"] if e.details else e.message)
        ) from None
    try:
        req = InferRequest.model_validate(raw)
    except ValidationError as e:
        raise bad(_describe(e)) from None
    params = req.parameters or {}
    seed = protocol.parse_seed(params.get("seed"))
    noise_scale = protocol.parse_noise_scale(params.get("noise_scale"))
    sampling = protocol.parse_sampling(service, params.get)
    outputs = protocol.requested_outputs(service, [o.name for o in req.outputs or []])
    binary_out = _binary_outputs(req, outputs, params.get("binary_data_output", False))
    items = protocol.decode_inputs(service, _request_tensors(req.inputs, binary))
    return _Decoded(req.id, items, seed, noise_scale, sampling, outputs, binary_out)


def _describe(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
    return f"{where}: {first.get('msg')}{more}"


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """gzip/deflate bodies (tritonclient's request_compression_algorithm), bounded by ``limit``
    once inflated and checked whole: the stream must end (gzip: with its CRC and length trailer,
    deflate: with zlib's checksum), be one gzip member, and nothing may follow it."""
    try:
        coding = coding_of(encoding)
    except ValueError as e:
        raise ApiError(415, "unsupported_encoding", str(e)) from None
    if coding == "identity":
        return body
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise bad(f"body is not valid {coding} ({e})") from None
    if len(out) > limit:
        raise ApiError(413, "body_too_large", f"decompressed body is over the limit of {limit} bytes")
    if not d.eof:
        raise bad(f"body is not valid {coding}: the compressed stream is cut short (no end or checksum)")
    if d.unused_data:
        what = "a second gzip member" if coding == "gzip" and d.unused_data[:2] == b"\x1f\x8b" else "bytes"
        raise bad(f"body is not valid {coding}: {what} after the end of the compressed stream")
    return out


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    n = ascii_int(header_length)
    if n is None or n > len(body):
        raise bad(f"{HEADER_LENGTH} {header_length!r}: expected the JSON header's size, at most {len(body)} bytes")
    return body[:n], body[n:]


def _request_tensors(inputs: Sequence[InferTensor], binary: bytes) -> list[RequestTensor]:
    tensors, offset = [], 0
    for t in inputs:
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            if t.data is None:
                raise bad(f"input {t.name!r}: no 'data' and no 'binary_data_size' parameter")
            tensors.append(RequestTensor(t.name, t.datatype, t.shape, t.data, protocol.from_json))
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad(f"input {t.name!r}: binary_data_size must be a non-negative integer, got {size!r}")
        if t.data is not None:
            raise bad(f"input {t.name!r}: give either 'data' or 'binary_data_size', not both")
        chunk = binary[offset : offset + size]
        if len(chunk) != size:
            raise bad(f"input {t.name!r}: binary_data_size {size}, but only {len(chunk)} bytes follow the header")
        offset += size
        tensors.append(RequestTensor(t.name, t.datatype, t.shape, chunk, protocol.from_raw))
    if offset != len(binary):
        raise bad(f"{len(binary) - offset} bytes after the JSON header belong to no input (binary_data_size)")
    return tensors


def _binary_outputs(req: InferRequest, outputs: list[TensorSpec], all_binary: Any) -> dict[str, bool]:
    if not isinstance(all_binary, bool):
        raise bad(f"parameter 'binary_data_output': expected true or false, got {all_binary!r}")
    binary = {o.name: all_binary for o in outputs}
    for o in req.outputs or []:
        params = o.parameters or {}
        if "classification" in params:
            raise bad(f"output {o.name!r}: the classification extension is not supported")
        flag = params.get("binary_data", all_binary)
        if not isinstance(flag, bool):
            raise bad(f"output {o.name!r}: parameter 'binary_data' must be true or false, got {flag!r}")
        binary[o.name] = flag
    return binary


def _answer(
    name: str, version: str, request_id: str | None, arrays: dict[str, np.ndarray], binary: dict[str, bool]
) -> Response:
    outputs, raws = [], []
    for out_name, arr in arrays.items():
        tensor: dict[str, Any] = {"name": out_name, "datatype": "FP32", "shape": list(arr.shape)}
        if binary[out_name]:
            raw = protocol.to_raw(arr, "FP32")
            tensor["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            tensor["data"] = arr.reshape(-1).tolist()
        outputs.append(tensor)
    answer: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": outputs}
    if request_id is not None:
        answer["id"] = request_id
    if not raws:
        if all(np.isfinite(a).all() for a in arrays.values()):  # JSON has no NaN: those keep the checked path
            return Response(pydantic_core.to_json(answer), media_type="application/json")  # ~3x json.dumps
        return JSONResponse(answer)
    header = json.dumps(answer, separators=(",", ":")).encode()
    return Response(
        header + b"".join(raws), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))}
    )


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` inlined (for a requestBody in openapi_extra)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_refs(InferRequest.model_json_schema())},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"binary tensor data extension: a JSON InferRequest of {HEADER_LENGTH} bytes, "
                "then the raw bytes of each input that has parameters.binary_data_size",
            },
        },
    }
}
_both_forms("GET", "", _metadata, response_model=ModelMetadataResponse, description="Inputs and outputs as tensors.")
_both_forms("GET", "/ready", _ready, response_model=ReadyResponse, description="200 once the model is ready.")
_both_forms(
    "POST",
    "/generate",
    _generate,
    description=GENERATE_DOC,
    dependencies=[Depends(require_api_key)],
)
_both_forms(
    "POST",
    "/generate_stream",
    _generate_stream,
    description=STREAM_DOC,
    dependencies=[Depends(require_api_key)],
    response_class=StreamingResponse,
)
_both_forms(
    "POST",
    "/infer",
    _infer,
    response_model=InferResponse,
    openapi_extra=INFER_BODY,
    description=(__doc__ or "").split("\n\n")[1],
    dependencies=[Depends(require_api_key)],
)


# ------------------------------------------------------------------ the infer routes' fast path
class _FastRoute(Route):
    """A Starlette route, matched before FastAPI's: the protocol's infer takes only its path
    parameters and reads its body by hand, so FastAPI's per-request dependency solving and
    parameter validation (a third of the route's own CPU at C=32) buy it nothing. The APIRoutes
    above stay for the OpenAPI schema. The API key was checked from the headers by the gate."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL:
            child["route"] = self  # the metrics middleware labels requests by the route's template
        return match, child


async def _fast_infer(request: Request) -> Response:
    name, version = request.path_params["name"], request.path_params.get("version")
    return await _infer(protocol.model_service(request.app.state, name, version), name, version, request)


FAST_ROUTES = [
    _FastRoute("/v2/models/{name}/infer", _fast_infer, methods=["POST"]),
    _FastRoute("/v2/models/{name}/versions/{version}/infer", _fast_infer, methods=["POST"]),
]
