"""The protocol's ``GRPCInferenceService`` on ``--grpc-port``, beside the HTTP server.

It shares everything with HTTP: the ModelService and its batcher (gRPC and HTTP items land in
the same forward passes), the checks and tensors of protocol.py, the body limit (gRPC's receive
limit is ``max_body_bytes``) and the metrics (``eir_requests_total{route="/inference.
GRPCInferenceService/ModelInfer", status="OK"}``). Errors are gRPC status codes with the same
messages as HTTP's ``{"error": ...}``: INVALID_ARGUMENT (400), NOT_FOUND (404), RESOURCE_EXHAUSTED
(413), UNAVAILABLE (503), DEADLINE_EXCEEDED (504). Answers carry ``raw_output_contents``.

Every call passes through ``InferenceServicer._call``: the one place where a per-call check
(``check_call``, e.g. an API key in the call's metadata) runs before the method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
import numpy as np

from eir_serve import __version__, protocol
from eir_serve.errors import ApiError
from eir_serve.grpc import grpc_predict_v2_pb2 as pb
from eir_serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from eir_serve.metrics import Metrics
from eir_serve.ports import GrpcPortError
from eir_serve.protocol import RequestTensor, TensorSpec, bad
from eir_serve.service import ModelService
from eir_serve.settings import Settings

log = logging.getLogger("eir_serve.grpc")
T = TypeVar("T")
SERVICE = "inference.GRPCInferenceService"
# A per-call check: gets the call's metadata (lower-case keys), raises ApiError (e.g. 401) to refuse.
CallCheck = Callable[[Mapping[str, str]], None]
# The calls ``check_call`` guards: inference. Health, readiness and metadata stay open for probes.
GUARDED = frozenset({"ModelInfer"})

STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Which typed field of InferTensorContents holds each datatype (the protocol's table).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: Any, metrics: Metrics, check_call: CallCheck | None = None) -> None:
        self.state = state  # the app's state: .service and .ready, as the HTTP routes see them
        self.metrics = metrics
        self.check_call = check_call

    async def _call(self, method: str, context: grpc.aio.ServicerContext, run: Callable[[], Awaitable[T]]) -> T:
        t0, status = time.perf_counter(), grpc.StatusCode.OK
        try:
            if self.check_call is not None and method in GUARDED:
                self.check_call({k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)})
            return await run()
        except ApiError as e:
            status = STATUS.get(e.status, grpc.StatusCode.INTERNAL)
            message = e.message
        except Exception:  # never a crashed call without an answer; the log has the traceback
            log.exception("gRPC %s failed", method)
            status, message = grpc.StatusCode.INTERNAL, "the server failed; see its log"
        finally:
            route = f"/{SERVICE}/{method}"
            self.metrics.requests.labels(route, status.name).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
        await context.abort(status, message)
        raise AssertionError("unreachable: abort raises")

    def _service(self) -> ModelService:
        service: ModelService | None = getattr(self.state, "service", None)
        if service is None or not self.state.ready:
            raise ApiError(503, "not_ready", "the model is not ready; retry shortly")
        return service

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        async def run() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, run)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        async def run() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=bool(self.state.ready))

        return await self._call("ServerReady", context, run)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        async def run() -> pb.ModelReadyResponse:
            # A yes/no question: an unknown model or version is "not ready" (HTTP says so with a 404).
            service: ModelService | None = getattr(self.state, "service", None)
            if service is None:
                return pb.ModelReadyResponse(ready=False)
            try:
                protocol.check_model(service, request.name, request.version)
            except ApiError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=bool(self.state.ready))

        return await self._call("ModelReady", context, run)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        async def run() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name="eirserve", version=__version__, extensions=protocol.EXTENSIONS)

        return await self._call("ServerMetadata", context, run)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def run() -> pb.ModelMetadataResponse:
            service = self._service()
            protocol.check_model(service, request.name, request.version)

            def meta(specs: dict[str, TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
                return [
                    pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.metadata_shape)
                    for s in specs.values()
                ]

            return pb.ModelMetadataResponse(
                name=request.name,
                versions=[protocol.VERSION],
                platform=protocol.PLATFORM,
                inputs=meta(protocol.input_specs(service)),
                outputs=meta(protocol.output_specs(service)),
            )

        return await self._call("ModelMetadata", context, run)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        async def run() -> pb.ModelInferResponse:
            service = self._service()
            protocol.check_model(service, request.model_name, request.model_version)
            seed = protocol.parse_seed(_parameter(request.parameters, "seed"))
            noise_scale = protocol.parse_noise_scale(_parameter(request.parameters, "noise_scale"))
            outputs = protocol.requested_outputs(service, [o.name for o in request.outputs])
            items = protocol.decode_inputs(service, request_tensors(request))
            arrays = await protocol.infer(service, items, seed, outputs, noise_scale)
            answer = pb.ModelInferResponse(model_name=request.model_name, model_version=protocol.VERSION, id=request.id)
            for name, arr in arrays.items():
                answer.outputs.add(name=name, datatype="FP32", shape=arr.shape)
                answer.raw_output_contents.append(protocol.to_raw(arr, "FP32"))
            return answer

        return await self._call("ModelInfer", context, run)


def _parameter(params: Mapping[str, pb.InferParameter], key: str) -> Any:
    if key not in params:
        return None
    which = params[key].WhichOneof("parameter_choice")
    return None if which is None else getattr(params[key], which)


def request_tensors(request: pb.ModelInferRequest) -> list[RequestTensor]:
    """Inputs from ``raw_input_contents`` (all of them) or typed ``contents`` (each of them)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise bad(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input")
    tensors = []
    for k, t in enumerate(request.inputs):
        shape = list(t.shape)
        if raw:
            if t.HasField("contents"):
                raise bad(f"input {t.name!r}: 'contents' is not allowed when raw_input_contents is used")
            tensors.append(RequestTensor(t.name, t.datatype, shape, raw[k], protocol.from_raw))
        else:
            tensors.append(RequestTensor(t.name, t.datatype, shape, t.contents, from_contents))
    return tensors


def from_contents(spec: TensorSpec, shape: Sequence[int], contents: pb.InferTensorContents) -> np.ndarray:
    """Typed ``InferTensorContents`` -> array of ``shape`` in the spec's dtype, range-checked."""
    field = CONTENTS.get(spec.datatype)
    if field is None:
        raise bad(f"input {spec.name!r}: {spec.datatype} has no typed contents; send raw_input_contents")
    values = getattr(contents, field)
    n = protocol.element_count(shape)
    if len(values) != n:
        raise bad(f"input {spec.name!r}: shape {list(shape)} needs {n} values in contents.{field}, got {len(values)}")
    if spec.datatype == "BYTES":
        return protocol.from_raw(spec, shape, protocol.join_bytes(list(values)))
    dt = protocol.NUMPY[spec.datatype]
    if dt.kind in "ui" and n:
        info = np.iinfo(dt)
        lo, hi = min(values), max(values)
        if lo < info.min or hi > info.max:
            raise bad(f"input {spec.name!r}: values must lie in {info.min}..{info.max} for {spec.datatype}")
    arr = np.array(values, dtype=dt).reshape(shape)
    if dt.kind == "f" and not np.isfinite(arr).all():
        raise bad(f"input {spec.name!r}: contains NaN or infinite values")
    return arr


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@asynccontextmanager
async def grpc_service(
    state: Any, settings: Settings, metrics: Metrics, check_call: CallCheck | None = None
) -> AsyncIterator[int | None]:
    """Serve gRPC on ``settings.grpc_port`` while the block runs (0: no gRPC; yields None).
    On exit, in-flight calls get up to ``request_timeout_s`` to finish; new ones are refused."""
    if not settings.grpc_port:
        yield None
        return
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            # A second server on a taken port must fail, not share it, unless sharing is the point.
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ]
    )
    servicer = InferenceServicer(state, metrics, check_call)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]  # protoc output
    address = _address(settings.host, settings.grpc_port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise GrpcPortError(f"cannot serve gRPC on {address} ({e}); pick another --grpc-port, 0 for none") from None
    await server.start()
    state.grpc_port = port
    log.info("gRPC (Open Inference Protocol) on %s", address)
    try:
        yield port
    finally:
        await server.stop(grace=settings.request_timeout_s)
