"""The noise scale of imputed inputs over HTTP and gRPC: the server's setting, the per-request
override (``?noise_scale=``, the V2 request parameter), its validation, and that a batched item's
answer keeps its own request's scale."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

import eir_serve.cli as cli
from eir_core.bundle import resolve_bundle_path
from eir_core.predict import Predictor
from eir_serve.app import create_app
from eir_serve.settings import Settings
from tests.serve.live import serve_in_thread

LABELS = [{"mnist_label": {"CLASS": "7"}}, {"mnist_label": {"CLASS": "2"}}]


def outputs(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.stack(
        [np.frombuffer(base64.b64decode(x["mnist_output"]), "<f4").reshape(1, 8, 8) for x in r.json()["result"]]
    )


@pytest.fixture(scope="module")
def bundle(tiny_conditional_bundle: Path) -> Path:
    """The checkpoint ``cond_client`` serves (its run folder's best)."""
    return resolve_bundle_path(tiny_conditional_bundle.parent.parent)


@pytest.fixture(scope="module")
def predictor(bundle: Path) -> Predictor:
    return Predictor.from_path(bundle, device="cpu")


def direct(p: Predictor, seed: int, scale: float) -> np.ndarray:
    out = p.predict(LABELS, seeds=[seed, seed + 1], noise_scale=scale)
    return np.stack([o["mnist_output"] for o in out])


@pytest.fixture(scope="module")
def scaled_client(bundle: Path) -> Iterator[TestClient]:
    """A server whose default noise scale is 2."""
    with TestClient(create_app(Settings(model_path=bundle, device="cpu", noise_scale=2.0))) as c:
        yield c


def test_query_parameter_scales_the_noise(cond_client: TestClient, predictor: Predictor) -> None:
    at25 = outputs(cond_client.post("/predict?seed=3&noise_scale=2.5", json=LABELS))
    np.testing.assert_allclose(at25, direct(predictor, 3, 2.5), rtol=1e-5, atol=1e-3)
    at1 = outputs(cond_client.post("/predict?seed=3&noise_scale=1", json=LABELS))
    np.testing.assert_allclose(at1, direct(predictor, 3, 1.0), rtol=1e-5, atol=1e-3)
    assert np.abs(at25 - at1).mean() > 0.01
    at0 = outputs(cond_client.post("/predict?noise_scale=0", json=LABELS[:1] * 2))  # no seed, yet no noise
    np.testing.assert_allclose(at0[0], at0[1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bad", ["-1", "nan", "abc", "inf", "10.5", ""])
def test_a_bad_query_noise_scale_is_422_naming_it(cond_client: TestClient, bad: str) -> None:
    r = cond_client.post("/predict", params={"noise_scale": bad}, json=LABELS)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_input" and "noise_scale" in err["message"]
    assert [d["field"] for d in err["details"]] == ["noise_scale"]


def test_the_setting_is_the_default_and_a_request_overrides_it(
    scaled_client: TestClient, cond_client: TestClient, predictor: Predictor
) -> None:
    np.testing.assert_allclose(
        outputs(scaled_client.post("/predict?seed=3", json=LABELS)), direct(predictor, 3, 2.0), rtol=1e-5, atol=1e-3
    )
    np.testing.assert_allclose(
        outputs(scaled_client.post("/predict?seed=3&noise_scale=1", json=LABELS)),
        direct(predictor, 3, 1.0),
        rtol=1e-5,
        atol=1e-3,
    )
    assert scaled_client.get("/info").json()["model"]["noise_scale"] == 2.0
    default = Settings.model_fields["noise_scale"].default
    assert cond_client.get("/info").json()["model"]["noise_scale"] == default
    np.testing.assert_allclose(
        outputs(cond_client.post("/predict?seed=3", json=LABELS)), direct(predictor, 3, default), rtol=1e-5, atol=1e-3
    )


def test_the_setting_is_a_checked_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EIR_SERVE_NOISE_SCALE", raising=False)
    assert cli.load_settings(["--model-path", "m", "--noise-scale", "1.5"]).noise_scale == 1.5
    monkeypatch.setenv("EIR_SERVE_NOISE_SCALE", "0.75")
    assert cli.load_settings(["--model-path", "m"]).noise_scale == 0.75
    for bad in ["-1", "nan", "11"]:
        assert cli.main(["--model-path", "m", "--noise-scale", bad]) == 2
        assert "--noise-scale (or EIR_SERVE_NOISE_SCALE)" in capsys.readouterr().err


def test_batched_requests_keep_their_own_scale(bundle: Path) -> None:
    """Two requests with different scales in ONE forward pass each get their unbatched answer."""
    app = create_app(Settings(model_path=bundle, device="cpu"))
    body = LABELS[:1]
    with TestClient(app) as client:
        alone = {s: outputs(client.post(f"/predict?seed=9&noise_scale={s}", json=body)) for s in (0.5, 3.0)}
        service = app.state.service
        real, gate, calls = service.predictor.predict, threading.Event(), []

        def held(batch, seeds, **kw):  # type: ignore[no-untyped-def]
            calls.append(list(kw["noise_scale"]))
            if len(calls) == 1:
                assert gate.wait(30), "the other requests never queued"
            return real(batch, seeds, **kw)

        service.predictor.predict = held

        async def scenario() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                first = asyncio.create_task(c.post("/predict?seed=1", json=body))
                while not calls:  # its forward pass has started (and is held)
                    await asyncio.sleep(0.005)
                rest = [asyncio.create_task(c.post(f"/predict?seed=9&noise_scale={s}", json=body)) for s in (0.5, 3.0)]
                while service.batcher.queue_depth < 2:  # both wait behind it
                    await asyncio.sleep(0.005)
                gate.set()
                return [await t for t in [first, *rest]]

        answers = asyncio.run(scenario())
        service.predictor.predict = real
    assert calls[1:] == [[0.5, 3.0]]  # one forward pass, each item with its own request's scale
    for r, s in zip(answers[1:], (0.5, 3.0), strict=True):
        np.testing.assert_allclose(outputs(r), alone[s], rtol=1e-5, atol=1e-3)
    assert np.abs(alone[0.5] - alone[3.0]).mean() > 0.01


def v2_body(parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "parameters": parameters,
        "inputs": [{"name": "mnist_label.CLASS", "shape": [2], "datatype": "BYTES", "data": ["7", "2"]}],
    }


def test_v2_parameter_scales_the_noise(cond_client: TestClient, predictor: Predictor) -> None:
    name = cond_client.get("/info").json()["model"]["name"]
    r = cond_client.post(f"/v2/models/{name}/infer", json=v2_body({"seed": 3, "noise_scale": 2.5}))
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 1, 8, 8)
    np.testing.assert_allclose(got, direct(predictor, 3, 2.5), rtol=1e-5, atol=1e-3)
    r = cond_client.post(f"/v2/models/{name}/infer", json=v2_body({"seed": 3, "noise_scale": 0}))
    got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 1, 8, 8)
    np.testing.assert_allclose(got, direct(predictor, 3, 0.0), rtol=1e-5, atol=1e-3)
    for bad in [-1, 10.5, "abc", True, "nan"]:
        r = cond_client.post(f"/v2/models/{name}/infer", json=v2_body({"noise_scale": bad}))
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"].startswith("parameter 'noise_scale': expected a number in 0..10"), r.text


@pytest.mark.slow
def test_grpc_parameter_scales_the_noise(bundle: Path, predictor: Predictor) -> None:
    with serve_in_thread(Settings(model_path=bundle, device="cpu")) as lv:
        name = httpx.get(f"http://{lv.http}/info").json()["model"]["name"]
        lab = grpcclient.InferInput("mnist_label.CLASS", [2], "BYTES")
        lab.set_data_from_numpy(np.array([b"7", b"2"], dtype=object))
        c = grpcclient.InferenceServerClient(lv.grpc)
        got = c.infer(name, [lab], parameters={"seed": 3, "noise_scale": 2.5}).as_numpy("mnist_output")
        np.testing.assert_allclose(got, direct(predictor, 3, 2.5), rtol=1e-5, atol=1e-3)
        for bad in [float("nan"), -1.0]:
            with pytest.raises(InferenceServerException) as e:
                c.infer(name, [lab], parameters={"noise_scale": bad})
            assert e.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
            assert "parameter 'noise_scale'" in str(e.value.message())
