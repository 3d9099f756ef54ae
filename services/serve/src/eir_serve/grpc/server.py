"""The protocol's ``GRPCInferenceService`` on ``--grpc-port``, beside the HTTP server.

It shares everything with HTTP: the ModelService and its batcher (gRPC and HTTP items land in
the same forward passes), the checks and tensors of protocol.py, and the metrics
(``eir_requests_total{route="/inference.GRPCInferenceService/ModelInfer", status="OK"}``; a call
the client cancelled or whose deadline passed counts as ``CANCELLED`` or ``DEADLINE_EXCEEDED``).
Errors are gRPC status codes with the same messages as HTTP's ``{"error": ...}``:
INVALID_ARGUMENT (400), NOT_FOUND (404), RESOURCE_EXHAUSTED (413), UNAVAILABLE (503),
DEADLINE_EXCEEDED (504). Answers carry ``raw_output_contents``.

Bounds, all from the same settings as HTTP's (``grpc_limits``): a message may be as large as the
largest request the model can answer (``--max-items-per-request`` items in the widest encoding),
and no larger than ``--max-body-bytes``; calls at once are capped so that their messages hold
about ``--max-inflight-body-bytes`` at most (``maximum_concurrent_rpcs``: past it
RESOURCE_EXHAUSTED before the message is read); metadata is capped at ``--max-header-bytes``.

A per-call check (``check_call``, e.g. the API key in the call's metadata) runs in an interceptor
when the call's metadata has arrived and before its message is read: a refused call never has
its message received, let alone parsed. A message that is not valid protobuf is
INVALID_ARGUMENT with one log line (at most one per ``LOG_EVERY_S``, counting the others).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
import numpy as np

from eir_serve import __version__, control, protocol
from eir_serve.errors import ApiError
from eir_serve.grpc import grpc_predict_v2_pb2 as pb
from eir_serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from eir_serve.grpc.bounds import (
    LOG_EVERY_S,
    STATUS,
    CallCheck,
    CheckBeforeMessage,
    Malformed,
    RareLog,
    grpc_limits,
    safe_parser,
)
from eir_serve.metrics import Metrics
from eir_serve.ports import GrpcPortError
from eir_serve.protocol import RequestTensor, TensorSpec, bad
from eir_serve.service import ModelService
from eir_serve.settings import Settings

log = logging.getLogger("eir_serve.grpc")
T = TypeVar("T")
SERVICE = "inference.GRPCInferenceService"
# The calls ``check_call`` guards: inference. Health, readiness and metadata stay open for probes.
GUARDED = frozenset({"ModelInfer", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"})

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
    def __init__(self, state: Any, metrics: Metrics) -> None:
        self.state = state  # the app's state: .service and .ready, as the HTTP routes see them
        self.metrics = metrics
        self.malformed = RareLog(LOG_EVERY_S)

    def count(self, method: str, status: grpc.StatusCode, t0: float) -> None:
        route = f"/{SERVICE}/{method}"
        self.metrics.requests.labels(route, status.name).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - t0)

    async def _call(
        self, method: str, context: grpc.aio.ServicerContext, request: Any, run: Callable[[], Awaitable[T]]
    ) -> T:
        t0, status = time.perf_counter(), grpc.StatusCode.OK
        try:
            if isinstance(request, Malformed):
                self.malformed.warning(f"gRPC {method}: the request is not a valid protobuf message ({request.error})")
                raise bad(f"the request is not a valid {method}Request protobuf message")
            return await run()
        except ApiError as e:
            status = STATUS.get(e.status, grpc.StatusCode.INTERNAL)
            message = e.message
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed: nobody waits
            left = context.time_remaining()
            status = grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left <= 0 else grpc.StatusCode.CANCELLED
            raise
        except Exception:  # never a crashed call without an answer; the log has the traceback
            log.exception("gRPC %s failed", method)
            status, message = grpc.StatusCode.INTERNAL, "the server failed; see its log"
        finally:
            self.count(method, status, t0)
        await context.abort(status, message)
        raise AssertionError("unreachable: abort raises")

    def _service(self, name: str, version: str) -> ModelService:
        return protocol.model_service(self.state, name, version)

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        async def run() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, request, run)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        async def run() -> pb.ServerReadyResponse:
            models = getattr(self.state, "models", None)
            return pb.ServerReadyResponse(ready=bool(self.state.ready) and models is not None and models.ready())

        return await self._call("ServerReady", context, request, run)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        async def run() -> pb.ModelReadyResponse:
            # A yes/no question: an unknown model or version is "not ready" (HTTP says so with a 404).
            try:
                self._service(request.name, request.version)
            except ApiError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._call("ModelReady", context, request, run)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        async def run() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name="eirserve", version=__version__, extensions=protocol.EXTENSIONS)

        return await self._call("ServerMetadata", context, request, run)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def run() -> pb.ModelMetadataResponse:
            service = self._service(request.name, request.version)

            def meta(specs: dict[str, TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
                return [
                    pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.metadata_shape)
                    for s in specs.values()
                ]

            return pb.ModelMetadataResponse(
                name=request.name,
                versions=protocol.model_versions(self.state, request.name),
                platform=protocol.PLATFORM,
                inputs=meta(protocol.input_specs(service)),
                outputs=meta(protocol.output_specs(service)),
            )

        return await self._call("ModelMetadata", context, request, run)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        async def run() -> pb.ModelInferResponse:
            service = self._service(request.model_name, request.model_version)
            seed = protocol.parse_seed(_parameter(request.parameters, "seed"))
            noise_scale = protocol.parse_noise_scale(_parameter(request.parameters, "noise_scale"))
            sampling = protocol.parse_sampling(service, lambda key: _parameter(request.parameters, key))
            outputs = protocol.requested_outputs(service, [o.name for o in request.outputs])
            items = protocol.decode_inputs(service, request_tensors(request))
            # A call the client cancels is cancelled here too: its sample leaves the step loop.
            arrays = await protocol.infer(service, items, seed, outputs, noise_scale, sampling)
            answer = pb.ModelInferResponse(model_name=request.model_name, model_version=service.version, id=request.id)
            for name, arr in arrays.items():
                answer.outputs.add(name=name, datatype="FP32", shape=arr.shape)
                answer.raw_output_contents.append(protocol.to_raw(arr, "FP32"))
            return answer

        # Not counted as on its way for the adaptive batch wait (batcher.py): measured, gRPC calls
        # gained nothing from it in batch size and cost 30 % more CPU per call.
        return await self._call("ModelInfer", context, request, run)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        async def run() -> pb.RepositoryIndexResponse:
            rows = control.index(self.state, request.ready)
            return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows])

        return await self._call("RepositoryIndex", context, request, run)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        async def run() -> pb.RepositoryModelLoadResponse:
            await control.load(self.state, request.model_name, _repository_parameters(request.parameters))
            return pb.RepositoryModelLoadResponse()

        return await self._call("RepositoryModelLoad", context, request, run)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        async def run() -> pb.RepositoryModelUnloadResponse:
            await control.unload(self.state, request.model_name, _repository_parameters(request.parameters))
            return pb.RepositoryModelUnloadResponse()

        return await self._call("RepositoryModelUnload", context, request, run)


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


METHODS: dict[str, tuple[Any, Any]] = {  # name: (request, response) message classes
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
    "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse),
    "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse),
}


def _repository_parameters(parameters: Any) -> dict[str, Any]:
    """A load or unload call's parameters as plain values (each is one of the oneof's fields)."""
    out = {}
    for key, p in parameters.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def _handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """What protoc's ``add_GRPCInferenceServiceServicer_to_server`` registers, with a parser that
    turns bytes that are not the message into ``Malformed`` instead of an exception (which grpc
    logs with a traceback per call and answers UNKNOWN)."""
    return {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=safe_parser(req), response_serializer=resp.SerializeToString
        )
        for name, (req, resp) in METHODS.items()
    }


@asynccontextmanager
async def grpc_service(
    state: Any, settings: Settings, metrics: Metrics, check_call: CallCheck | None = None
) -> AsyncIterator[int | None]:
    """Serve gRPC on ``settings.grpc_port`` while the block runs (0: no gRPC; yields None).
    On exit, in-flight calls get up to ``request_timeout_s`` to finish; new ones are refused."""
    if not settings.grpc_port:
        yield None
        return
    limits = grpc_limits(getattr(state, "service", None), settings)
    servicer = InferenceServicer(state, metrics)
    server = grpc.aio.server(
        interceptors=[CheckBeforeMessage(check_call, GUARDED, {m: r for m, (_, r) in METHODS.items()}, servicer.count)]
        if check_call is not None
        else [],
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_answer_bytes),
            ("grpc.max_metadata_size", settings.max_header_bytes),
            # A second server on a taken port must fail, not share it, unless sharing is the point.
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    state.grpc_limits = limits
    handler = grpc.method_handlers_generic_handler(SERVICE, _handlers(servicer))
    server.add_generic_rpc_handlers((handler,))
    address = _address(settings.host, settings.grpc_port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise GrpcPortError(f"cannot serve gRPC on {address} ({e}); pick another --grpc-port, 0 for none") from None
    await server.start()
    state.grpc_port = port
    log.info(
        "gRPC (Open Inference Protocol) on %s: messages up to %d bytes, %d calls at once",
        address,
        limits.max_message_bytes,
        limits.max_concurrent_rpcs,
    )
    try:
        yield port
    finally:
        await server.stop(grace=settings.request_timeout_s)
