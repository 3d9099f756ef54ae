"""What bounds the gRPC server before a call is trusted (``server.py`` serves the calls).

* ``grpc_limits``: the largest message (the largest request the model can answer, in the widest
  protobuf encoding, and at most ``--max-body-bytes``), the largest answer, and how many calls
  may run at once so that their messages hold about ``--max-inflight-body-bytes`` at most.
* ``safe_parser``: bytes that are not the call's message become ``Malformed`` (answered
  INVALID_ARGUMENT with one log line per ``LOG_EVERY_S``), not an exception that grpc logs with a
  traceback per call and answers UNKNOWN.
* ``CheckBeforeMessage``: the per-call check (the API key) on the call's metadata, before its
  message is read.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError, Message

from eir_core.manifest import ArrayInput
from eir_serve.errors import ApiError
from eir_serve.settings import Settings

if TYPE_CHECKING:
    from eir_serve.service import ModelService

log = logging.getLogger("eir_serve.grpc")
# A per-call check: gets the call's metadata (lower-case keys), raises ApiError (e.g. 401) to refuse.
CallCheck = Callable[[Mapping[str, str]], None]
LOG_EVERY_S = 10.0  # malformed messages: one log line per this many seconds at most
WIDEST_VALUE = 10  # bytes of one tensor value in the widest protobuf encoding (a negative varint)
PER_TENSOR = 256  # a tensor's name, datatype and shape in a request
SLACK = 64 * 1024  # the request's id, parameters and requested outputs

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


@dataclass(frozen=True)
class GrpcLimits:
    max_message_bytes: int  # receive
    max_answer_bytes: int  # send
    max_concurrent_rpcs: int


def grpc_limits(service: ModelService | None, settings: Settings) -> GrpcLimits:
    """The gRPC server's limits from the model and the settings (module doc). Without a model
    (a server started before one is loaded), the settings alone."""
    cap = settings.max_body_bytes
    answer = cap
    if service is not None:
        per_item = 0
        for e in service.inputs.values():
            if isinstance(e, ArrayInput):
                per_item += math.prod(e.shape) * WIDEST_VALUE
            else:
                longest = max((len(c.encode()) for v in e.categories.values() for c in v), default=0)
                per_item += (len(e.cat_columns) + len(e.con_columns)) * (WIDEST_VALUE + 4 + longest)
        tensors = len(service.inputs) + sum(
            len(e.cat_columns) + len(e.con_columns) for e in service.inputs.values() if not isinstance(e, ArrayInput)
        )
        items = settings.max_items_per_request
        cap = min(cap, items * per_item + tensors * PER_TENSOR + SLACK)
        answer = items * sum(math.prod(o.shape) * 4 for o in service.outputs.values()) + SLACK
    calls = settings.max_inflight_body_bytes // (2 * cap)  # a message and its parsed copy
    return GrpcLimits(cap, answer, max(4, min(1024, calls)))


class Malformed:
    """What the deserializer gives for bytes that are not the call's protobuf message."""

    def __init__(self, error: str) -> None:
        self.error = error


def safe_parser(cls: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(raw: bytes) -> Message | Malformed:
        try:
            return cls.FromString(raw)
        except (DecodeError, RuntimeWarning, ValueError) as e:
            return Malformed(str(e) or type(e).__name__)

    return parse


class RareLog:
    """One warning line per ``every_s`` at most, with how many were left out."""

    def __init__(self, every_s: float) -> None:
        self.every_s, self.last, self.left_out = every_s, -math.inf, 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            self.left_out += 1
            return
        more = f" ({self.left_out} more in the last {now - self.last:.0f} s)" if self.left_out else ""
        log.warning("%s%s", message, more)
        self.last, self.left_out = now, 0


class CheckBeforeMessage(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc's stubs leave it untyped
    """Runs ``check`` on a guarded call's metadata before its message is read. A refused call is
    answered by a handler that never asks for the message (stream-unary: the message is read only
    when iterated), so its bytes are neither buffered past HTTP/2's flow-control window nor parsed."""

    def __init__(
        self,
        check: CallCheck,
        guarded: frozenset[str],
        responses: Mapping[str, Any],
        count: Callable[[str, grpc.StatusCode, float], None],
    ) -> None:
        self.check, self.guarded, self.responses, self.count = check, guarded, responses, count

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        if method in self.guarded:
            metadata = {k.lower(): v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
            try:
                self.check(metadata)
            except ApiError as e:
                return self._refusal(method, e)
        return await continuation(details)

    def _refusal(self, method: str, e: ApiError) -> grpc.RpcMethodHandler:
        status = STATUS.get(e.status, grpc.StatusCode.PERMISSION_DENIED)
        response = self.responses[method]

        async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            self.count(method, status, time.perf_counter())
            await context.abort(status, e.message)

        return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=response.SerializeToString)
