"""Clients nobody here wrote: tritonclient (HTTP and gRPC), as a user would call eirserve, against a
real uvicorn + gRPC server in a thread on loopback ephemeral ports. Answers must equal /predict."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from eir_serve.errors import ApiError
from eir_serve.grpc.server import grpc_service
from eir_serve.metrics import Metrics
from eir_serve.settings import Settings
from tests.helpers import bundle_version
from tests.serve.live import Live, free_port, serve_in_thread

pytestmark = pytest.mark.slow
SEED = 11


@pytest.fixture(scope="module")
def live(tiny_conditional_bundle: Path) -> Iterator[Live]:
    with serve_in_thread(Settings(model_path=tiny_conditional_bundle, device="cpu", batch_timeout_ms=2)) as lv:
        yield lv


@pytest.fixture(scope="module")
def served(tiny_conditional_bundle: Path) -> str:
    """The version the bundle is served as (its training iteration)."""
    return bundle_version(tiny_conditional_bundle)


@pytest.fixture(scope="module")
def name(live: Live) -> str:
    return str(httpx.get(f"http://{live.http}/info").json()["model"]["name"])


@pytest.fixture(scope="module")
def batch(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    imgs = np.stack([np.load(digits_dir / "mnist_npy" / f"{10001 + i}.npy") for i in range(3)]).reshape(3, 1, 8, 8)
    return imgs, np.array([b"2", b"5", b"9"], dtype=object)


def predict(live: Live, imgs: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    items = [
        {"mnist": base64.b64encode(i.tobytes()).decode(), "mnist_label": {"CLASS": c.decode()}}
        for i, c in zip(imgs, labels)
    ]
    r = httpx.post(f"http://{live.http}/predict", params={"seed": seed}, json=items, timeout=30)
    r.raise_for_status()
    return np.stack(
        [np.frombuffer(base64.b64decode(x["mnist_output"]), "<f4").reshape(1, 8, 8) for x in r.json()["result"]]
    )


@pytest.mark.parametrize("versioned", [False, True])
def test_http_client_health_and_metadata(live: Live, name: str, served: str, versioned: bool) -> None:
    version = served if versioned else ""
    c = httpclient.InferenceServerClient(live.http)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(name, model_version=version)
    assert not c.is_model_ready(name, model_version="2")
    meta = c.get_model_metadata(name, model_version=version)
    assert meta["versions"] == [served]
    assert {"name": "mnist", "datatype": "UINT8", "shape": [-1, 1, 8, 8]} in meta["inputs"]
    assert {"name": "mnist_label.CLASS", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]


@pytest.mark.parametrize("versioned", [False, True])
def test_grpc_client_health_and_metadata(live: Live, name: str, served: str, versioned: bool) -> None:
    version = served if versioned else ""
    c = grpcclient.InferenceServerClient(live.grpc)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(name, model_version=version)
    assert not c.is_model_ready(name, model_version="2") and not c.is_model_ready("other")
    meta = c.get_model_metadata(name, model_version=version, as_json=True)
    assert meta["versions"] == [served] and meta["platform"] == "pytorch_eir"
    assert {"name": "mnist", "datatype": "UINT8", "shape": ["-1", "1", "8", "8"]} in meta["inputs"]
    assert "binary_tensor_data" in c.get_server_metadata().extensions


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("versioned", [False, True])
def test_http_client_infer_equals_predict(
    live: Live, name: str, batch: tuple[np.ndarray, np.ndarray], served: str, versioned: bool, binary: bool
) -> None:
    version = served if versioned else ""
    imgs, labels = batch
    img = httpclient.InferInput("mnist", list(imgs.shape), "UINT8")
    img.set_data_from_numpy(imgs, binary_data=binary)
    lab = httpclient.InferInput("mnist_label.CLASS", [3], "BYTES")
    lab.set_data_from_numpy(labels, binary_data=binary)
    out = httpclient.InferRequestedOutput("mnist_output", binary_data=binary)
    c = httpclient.InferenceServerClient(live.http)
    r = c.infer(name, [img, lab], model_version=version, outputs=[out], parameters={"seed": SEED}, request_id="x7")
    assert r.get_response()["id"] == "x7" and r.get_response()["model_version"] == served
    assert ("parameters" in r.get_response()["outputs"][0]) is binary  # binary_data_size only when binary
    np.testing.assert_allclose(r.as_numpy("mnist_output"), predict(live, imgs, labels, SEED), rtol=1e-6)


@pytest.mark.parametrize("versioned", [False, True])
def test_grpc_client_infer_equals_predict(
    live: Live, name: str, batch: tuple[np.ndarray, np.ndarray], served: str, versioned: bool
) -> None:
    version = served if versioned else ""
    imgs, labels = batch
    img = grpcclient.InferInput("mnist", list(imgs.shape), "UINT8")
    img.set_data_from_numpy(imgs)
    lab = grpcclient.InferInput("mnist_label.CLASS", [3], "BYTES")
    lab.set_data_from_numpy(labels)
    c = grpcclient.InferenceServerClient(live.grpc)
    r = c.infer(name, [img, lab], model_version=version, parameters={"seed": SEED}, request_id="g1")
    assert r.get_response().id == "g1" and r.get_response().model_version == served
    got = r.as_numpy("mnist_output")
    assert got.dtype == np.float32 and got.shape == (3, 1, 8, 8)
    np.testing.assert_allclose(got, predict(live, imgs, labels, SEED), rtol=1e-6)


def test_grpc_typed_contents_from_the_clients_own_proto(
    live: Live, name: str, served: str, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    """tritonclient's independently written .proto, typed contents instead of raw bytes."""
    imgs, labels = batch
    req = service_pb2.ModelInferRequest(model_name=name, model_version=served)
    req.parameters["seed"].int64_param = SEED
    t = req.inputs.add(name="mnist", datatype="UINT8", shape=imgs.shape)
    t.contents.uint_contents.extend(imgs.reshape(-1).tolist())
    t = req.inputs.add(name="mnist_label.CLASS", datatype="BYTES", shape=[3])
    t.contents.bytes_contents.extend(list(labels))
    with grpc.insecure_channel(live.grpc) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
        assert [o.name for o in resp.outputs] == ["mnist_output"] and list(resp.outputs[0].shape) == [3, 1, 8, 8]
        got = np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(3, 1, 8, 8)
        np.testing.assert_allclose(got, predict(live, imgs, labels, SEED), rtol=1e-6)
        t.contents.bytes_contents[0] = b"\xff"
        with pytest.raises(grpc.RpcError) as e:
            service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == "input 'mnist_label.CLASS': a BYTES element is not UTF-8 text"


def test_bad_requests_through_the_clients_print_our_message(
    live: Live, name: str, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    imgs = batch[0].astype(np.float64)
    message = "input 'mnist': datatype 'FP64' does not match the model's UINT8"
    for binary in (False, True):
        t = httpclient.InferInput("mnist", list(imgs.shape), "FP64")
        t.set_data_from_numpy(imgs, binary_data=binary)
        with pytest.raises(InferenceServerException) as e:
            httpclient.InferenceServerClient(live.http).infer(name, [t])
        assert e.value.status() == "400" and e.value.message() == message
        assert str(e.value) == f"[400] {message}"  # what the client prints
    g = grpcclient.InferInput("mnist", list(imgs.shape), "FP64")
    g.set_data_from_numpy(imgs)
    with pytest.raises(InferenceServerException) as e:
        grpcclient.InferenceServerClient(live.grpc).infer(name, [g])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and e.value.message() == message
    assert str(e.value) == f"[StatusCode.INVALID_ARGUMENT] {message}"
    g = grpcclient.InferInput("mnist", [3, 64], "UINT8")
    g.set_data_from_numpy(batch[0].reshape(3, 64))
    with pytest.raises(InferenceServerException) as e:
        grpcclient.InferenceServerClient(live.grpc).infer(name, [g], model_version="")
    assert e.value.message() == "input 'mnist': shape [3, 64] does not match the model's [N, 1, 8, 8]"
    with pytest.raises(InferenceServerException) as e:
        grpcclient.InferenceServerClient(live.grpc).infer(name, [g], model_version="2")
    assert e.value.status() == "StatusCode.NOT_FOUND" and "no version '2'" in e.value.message()
    h = httpclient.InferInput("mnist", [3, 64], "UINT8")
    h.set_data_from_numpy(batch[0].reshape(3, 64))
    with pytest.raises(InferenceServerException) as e:
        httpclient.InferenceServerClient(live.http).infer(name, [h], model_version="2")
    assert e.value.status() == "404" and "no version '2'" in e.value.message()


def test_grpc_and_http_share_the_batcher_and_metrics(
    live: Live, name: str, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    labels = batch[1]

    def grpc_call(i: int) -> np.ndarray:
        t = grpcclient.InferInput("mnist_label.CLASS", [1], "BYTES")
        t.set_data_from_numpy(labels[i % 3 : i % 3 + 1])
        r = grpcclient.InferenceServerClient(live.grpc).infer(name, [t], parameters={"seed": i})
        return np.asarray(r.as_numpy("mnist_output"))

    def http_call(i: int) -> np.ndarray:
        body = [{"mnist_label": {"CLASS": labels[i % 3].decode()}}]
        r = httpx.post(f"http://{live.http}/predict", params={"seed": i}, json=body, timeout=30)
        return np.frombuffer(base64.b64decode(r.json()["result"][0]["mnist_output"]), "<f4").reshape(1, 1, 8, 8)

    before = httpx.get(f"http://{live.http}/metrics").text
    with ThreadPoolExecutor(8) as pool:
        g = list(pool.map(grpc_call, range(24)))
        h = list(pool.map(http_call, range(24)))
    for a, b in zip(g, h):  # the same item and seed gives the same answer whichever way it came
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    after = httpx.get(f"http://{live.http}/metrics").text

    def value(text: str, prefix: str) -> float:
        return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(prefix))

    route = 'eir_requests_total{route="/inference.GRPCInferenceService/ModelInfer",status="OK"}'
    assert value(after, route) - value(before, route) == 24
    assert value(after, "eir_predicted_items_total") - value(before, "eir_predicted_items_total") == 48


def test_grpc_receive_limit_is_max_body_bytes(tiny_bundle: Path) -> None:
    with serve_in_thread(Settings(model_path=tiny_bundle, device="cpu", max_body_bytes=4096)) as lv:
        t = grpcclient.InferInput("mnist", [100, 1, 8, 8], "UINT8")  # 6400 bytes of pixels
        t.set_data_from_numpy(np.zeros((100, 1, 8, 8), np.uint8))
        c = grpcclient.InferenceServerClient(lv.grpc)
        with pytest.raises(InferenceServerException) as e:
            c.infer("run", [t])
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        small = grpcclient.InferInput("mnist", [1, 1, 8, 8], "UINT8")
        small.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.uint8))
        assert c.infer("run", [small]).as_numpy("mnist_output").shape == (1, 1, 8, 8)


def test_shutdown_lets_an_inflight_grpc_call_finish_then_refuses(tiny_bundle: Path) -> None:
    with serve_in_thread(Settings(model_path=tiny_bundle, device="cpu")) as lv:
        service = lv.app.state.service
        real, entered = service.predictor.predict, threading.Event()

        def slow(items: Any, seeds: Any, **kw: Any) -> Any:
            entered.set()
            threading.Event().wait(0.5)  # the call is in flight while shutdown starts
            return real(items, seeds, **kw)

        service.predictor.predict = slow
        t = grpcclient.InferInput("mnist", [1, 1, 8, 8], "UINT8")
        t.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.uint8))
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(grpcclient.InferenceServerClient(lv.grpc).infer, "run", [t])
            assert entered.wait(30)
            lv.server.should_exit = True  # what SIGTERM does
            assert pending.result(timeout=30).as_numpy("mnist_output").shape == (1, 1, 8, 8)
    with pytest.raises(InferenceServerException) as e:
        grpcclient.InferenceServerClient(lv.grpc).is_server_live()
    assert e.value.status() == "StatusCode.UNAVAILABLE"


def test_the_per_call_check_hook_can_refuse_a_call(tiny_bundle: Path) -> None:
    """Where the API key check plugs in: ModelInfer passes through check_call with the call's
    metadata; liveness, readiness and metadata stay open for probes."""
    seen: list[dict[str, str]] = []

    def check(metadata: Any) -> None:
        seen.append(dict(metadata))
        if metadata.get("authorization") != "Bearer ok":
            raise ApiError(401, "unauthorized", "missing or wrong API key")

    async def scenario() -> None:
        port = free_port()
        settings = Settings(model_path=tiny_bundle, host="127.0.0.1", grpc_port=port)
        state = SimpleNamespace(service=None, ready=False)
        async with grpc_service(state, settings, Metrics(), check_call=check):
            import tritonclient.grpc as grpcclient

            c = grpcclient_aio.InferenceServerClient(f"127.0.0.1:{port}")
            assert await c.is_server_live()  # a probe: never checked
            image = grpcclient.InferInput("mnist", [1, 1, 8, 8], "UINT8")
            image.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.uint8))
            with pytest.raises(InferenceServerException) as e:
                await c.infer("run", [image])
            assert e.value.status() == "StatusCode.UNAUTHENTICATED" and e.value.message() == "missing or wrong API key"
            with pytest.raises(InferenceServerException) as e:
                await c.infer("run", [image], headers={"authorization": "Bearer ok"})
            assert e.value.status() == "StatusCode.UNAVAILABLE"  # past the check: no model loaded here
            await c.close()

    asyncio.run(scenario())
    assert [m.get("authorization") for m in seen] == [None, "Bearer ok"]
