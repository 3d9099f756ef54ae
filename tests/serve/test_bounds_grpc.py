"""gRPC bounds before trust: the key from the call's metadata before its message is read, message
and concurrency limits derived from the settings and the model, malformed protobuf as
INVALID_ARGUMENT with one log line, and cancelled or expired calls counted as such."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from eir_serve.grpc import grpc_predict_v2_pb2 as pb
from eir_serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from eir_serve.grpc import server as grpc_server
from eir_serve.settings import Settings
from tests.serve.live import Live, serve_in_thread

KEY = "s3cret"
ROUTE = "/inference.GRPCInferenceService/ModelInfer"


def _request(raw: bytes | None = None) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="mnist", datatype="UINT8", shape=[1, 1, 8, 8])
    return pb.ModelInferRequest(model_name="run", inputs=[tensor], raw_input_contents=[raw or bytes(64)])


def _count(live: Live, status: str) -> float:
    text = live.app.state.metrics.render().decode()
    for line in text.splitlines():
        if line.startswith("eir_requests_total{") and f'route="{ROUTE}"' in line and f'status="{status}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_call_without_the_key_is_refused_before_its_message_is_read(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []

    class Counting:  # the servicer's parser, counting the messages it is given
        @staticmethod
        def FromString(raw: bytes) -> pb.ModelInferRequest:
            parsed.append(len(raw))
            return pb.ModelInferRequest.FromString(raw)

    monkeypatch.setitem(grpc_server.METHODS, "ModelInfer", (Counting, pb.ModelInferResponse))
    with serve_in_thread(Settings(model_path=tiny_bundle, device="cpu", api_key=KEY)) as live:
        limit = live.app.state.grpc_limits.max_message_bytes
        with grpc.insecure_channel(live.grpc, options=[("grpc.max_send_message_length", -1)]) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            for _ in range(5):
                with pytest.raises(grpc.RpcError) as e:
                    stub.ModelInfer(_request(bytes(limit - 200)), timeout=30)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            answer = stub.ModelInfer(_request(), metadata=[("authorization", f"Bearer {KEY}")], timeout=30)
            assert answer.outputs[0].name == "mnist_output"
        assert parsed == [len(_request().SerializeToString())], "a refused call's message was parsed"
        assert _count(live, "UNAUTHENTICATED") == 5


def test_limits_come_from_the_settings_and_the_model(tiny_bundle: Path) -> None:
    settings = Settings(model_path=tiny_bundle, device="cpu", max_inflight_body_bytes=4 * 1024 * 1024)
    with serve_in_thread(settings) as live:
        limits = live.app.state.grpc_limits
        # 256 items of 64 values in the widest encoding, plus room for names and parameters
        assert 256 * 64 * 10 < limits.max_message_bytes < settings.max_body_bytes
        assert limits.max_concurrent_rpcs == max(4, settings.max_inflight_body_bytes // (2 * limits.max_message_bytes))
        with grpc.insecure_channel(live.grpc, options=[("grpc.max_send_message_length", -1)]) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(_request(bytes(limits.max_message_bytes + 1)), timeout=30)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            # More calls at once than allowed (each held in a slow forward pass): the rest are refused.
            service = live.app.state.service
            real, gate = service.predictor.predict, threading.Event()

            def slow(items: Any, seeds: Any, **kw: Any) -> Any:
                gate.wait(20)
                return real(items, seeds, **kw)

            service.predictor.predict = slow
            futures = [stub.ModelInfer.future(_request(), timeout=60) for _ in range(limits.max_concurrent_rpcs + 8)]
            deadline = time.monotonic() + 30
            while _refused(futures) < 8 and time.monotonic() < deadline:
                time.sleep(0.05)
            gate.set()
            codes = [_code(f) for f in futures]
            service.predictor.predict = real
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 8, codes
        assert codes.count(grpc.StatusCode.OK) >= limits.max_concurrent_rpcs - 1, codes


def _refused(futures: list[Any]) -> int:
    return sum(f.done() and f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for f in futures)


def _code(f: Any) -> grpc.StatusCode:
    try:
        f.result(timeout=60)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_malformed_protobuf_is_invalid_argument_with_one_log_line(
    tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with serve_in_thread(Settings(model_path=tiny_bundle, device="cpu")) as live:
        with caplog.at_level(logging.WARNING), grpc.insecure_channel(live.grpc) as ch:
            raw_call = ch.unary_unary(ROUTE, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            for junk in (b"\xff\xff\xff\xff", b"\x0a\xff", b"\x12\x05ab") * 7:
                with pytest.raises(grpc.RpcError) as e:
                    raw_call(junk, timeout=30)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not a valid ModelInferRequest" in (e.value.details() or "")
        lines = [r for r in caplog.records if "not a valid protobuf message" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert "Traceback" not in caplog.text and _count(live, "INVALID_ARGUMENT") == 21


def test_cancelled_and_expired_calls_are_counted_as_such(tiny_bundle: Path) -> None:
    with serve_in_thread(Settings(model_path=tiny_bundle, device="cpu")) as live:
        service = live.app.state.service
        real, entered = service.predictor.predict, threading.Semaphore(0)

        def slow(items: Any, seeds: Any, **kw: Any) -> Any:
            entered.release()
            time.sleep(1.5)
            return real(items, seeds, **kw)

        service.predictor.predict = slow
        with grpc.insecure_channel(live.grpc) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(_request(), timeout=0.5)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert entered.acquire(timeout=30)
            future = stub.ModelInfer.future(_request(), timeout=60)
            assert entered.acquire(timeout=30)
            future.cancel()
        deadline = time.monotonic() + 30
        while (_count(live, "CANCELLED") < 1 or _count(live, "DEADLINE_EXCEEDED") < 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        service.predictor.predict = real
        assert _count(live, "DEADLINE_EXCEEDED") == 1 and _count(live, "CANCELLED") == 1
        assert _count(live, "OK") == 0


def test_a_request_within_the_limits_still_works(tiny_bundle: Path) -> None:
    with (
        serve_in_thread(Settings(model_path=tiny_bundle, device="cpu")) as live,
        grpc.insecure_channel(live.grpc) as ch,
    ):
        answer = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(_request(np.arange(64, dtype=np.uint8).tobytes()))
        assert np.frombuffer(answer.raw_output_contents[0], np.float32).shape == (64,)
