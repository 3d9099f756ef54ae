"""Serving a diffusion bundle: the step loop batches requests at every step, a sample depends only
on its seed and parameters (whatever protocol carried it and whatever it was batched with),
parameters are checked in each route's error shape, progress streams as Server-Sent Events, and
a request whose client left stops costing forward passes at the next step."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from fastapi.testclient import TestClient

from eir_core.diffusion_sampling import SamplingParams
from eir_core.onnx_runtime import OnnxPredictor
from eir_serve.app import create_app
from eir_serve.sampler import StepBatcher
from eir_serve.settings import Settings
from tests.serve.live import serve_in_thread

LABEL = "mnist_label"


def _decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), "<f4").reshape(1, 8, 8)


@pytest.fixture(scope="module")
def dclient(tiny_diffusion_run: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=tiny_diffusion_run, device="cpu"))) as c:
        yield c


def _predict(c: Any, digit: str, seed: int, **params: Any) -> np.ndarray:
    r = c.post("/predict", params={"seed": seed, **params}, json=[{LABEL: {"CLASS": digit}}])
    assert r.status_code == 200, r.text
    return _decode(r.json()["result"][0]["mnist"])


def test_info_and_metadata_describe_the_sampler(dclient: TestClient) -> None:
    info = dclient.get("/info").json()
    s = info["model"]["sampling"]
    assert s["output"] == "mnist"
    assert s["steps"] == {"default": 5, "min": 1, "max": 20}
    assert s["sampler"] == {"default": "ddim", "choices": ["ddpm", "ddim", "dpm_solver"]}
    assert s["guidance_scale"]["default"] == 2.0 and s["guidance_scale"]["inputs"] == [LABEL]
    assert info["outputs"]["mnist"]["diffusion"]["time_steps"] == 20
    assert info["inputs"]["mnist"]["optional"] is True  # sampling starts from noise in its place
    meta = dclient.get("/v2/models/run").json()
    assert meta["parameters"]["steps_default"] == 5 and meta["parameters"]["steps_max"] == 20
    assert meta["parameters"]["sampler_choices"] == "ddpm,ddim,dpm_solver"


def test_parameters_change_the_sample_and_the_same_ones_repeat_it(dclient: TestClient) -> None:
    a = _predict(dclient, "3", 11)
    assert np.array_equal(a, _predict(dclient, "3", 11))
    assert not np.array_equal(a, _predict(dclient, "3", 12))
    for other in ({"steps": 9}, {"sampler": "ddpm"}, {"eta": 0.9}, {"guidance_scale": 1.0}):
        assert not np.array_equal(a, _predict(dclient, "3", 11, **other)), other
    # the bundle's defaults, spelled out, are the defaults
    assert np.array_equal(a, _predict(dclient, "3", 11, steps=5, sampler="ddim", eta=0.2, guidance_scale=2.0))
    # the array EIR's request carries for the output's own input is not used (EIR samples from noise)
    img = base64.b64encode(np.full((1, 8, 8), 200, np.uint8).tobytes()).decode()
    r = dclient.post("/predict", params={"seed": 11}, json=[{"mnist": img, LABEL: {"CLASS": "3"}}])
    assert np.array_equal(_decode(r.json()["result"][0]["mnist"]), a)


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"steps": 21}, "steps", "from 1 to 20"),
        ({"steps": 0}, "steps", "from 1 to 20"),
        ({"sampler": "euler"}, "sampler", "ddpm, ddim, dpm_solver"),
        ({"eta": 1.5}, "eta", "from 0 to 1"),
        ({"eta": -0.1}, "eta", ">= 0"),
        ({"guidance_scale": 21}, "guidance_scale", "at most 20"),
    ],
)
def test_bad_parameters_are_refused_on_every_route(
    dclient: TestClient, params: dict[str, Any], field: str, says: str
) -> None:
    r = dclient.post("/predict", params=params, json=[{LABEL: {"CLASS": "3"}}])
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == field and says in r.json()["error"]["message"]
    tensor = {"name": "mnist_label.CLASS", "datatype": "BYTES", "shape": [1], "data": ["3"]}
    r = dclient.post("/v2/models/run/infer", json={"inputs": [tensor], "parameters": params})
    assert r.status_code == 400 and f"parameter '{field}'" in r.json()["error"] and says in r.json()["error"]
    r = dclient.post("/v2/models/run/generate", json={LABEL: {"CLASS": "3"}, "parameters": params})
    assert r.status_code == 400 and f"parameter '{field}'" in r.json()["error"]


def test_inf_and_nan_are_refused_by_the_query_parser(dclient: TestClient) -> None:
    for bad in ("inf", "nan"):
        r = dclient.post("/predict", params={"guidance_scale": bad}, json=[{LABEL: {"CLASS": "3"}}])
        assert r.status_code == 422, (bad, r.text)


def test_a_model_without_a_sampler_refuses_sampling_parameters(cond_client: TestClient) -> None:
    r = cond_client.post("/predict", params={"steps": 5}, json=[{"mnist_label": {"CLASS": "3"}}])
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "steps"
    assert "diffusion models" in r.json()["error"]["message"]


def test_stream_reports_progress_and_ends_with_the_same_sample(dclient: TestClient) -> None:
    want = _predict(dclient, "7", 5, steps=10)
    body = {LABEL: {"CLASS": "7"}, "parameters": {"seed": 5, "steps": 10, "every": 4}}
    with dclient.stream("POST", "/v2/models/run/generate_stream", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [(e["step"], e["steps"], e["done"]) for e in events] == [(4, 10, False), (8, 10, False), (10, 10, True)]
    assert np.array_equal(np.asarray(events[-1]["mnist"], np.float32), want)
    # the estimates move towards the sample
    errs = [np.abs(np.asarray(e["mnist"], np.float32) - want).mean() for e in events]
    assert errs[-1] == 0 and errs[0] > 0
    g = dclient.post("/v2/models/run/generate", json={LABEL: {"CLASS": "7"}, "parameters": {"seed": 5, "steps": 10}})
    assert np.array_equal(np.asarray(g.json()["mnist"], np.float32), want)


def test_queue_bound_answers_503(tiny_diffusion_run: Path) -> None:
    app = create_app(Settings(model_path=tiny_diffusion_run, device="cpu", max_queue=2))
    with TestClient(app) as c:
        r = c.post("/predict", json=[{LABEL: {"CLASS": "1"}}] * 3)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_torch_runtime_samples_as_onnx_runtime(tiny_diffusion_run: Path) -> None:
    got = {}
    for runtime in ("onnx", "torch"):
        app = create_app(Settings(model_path=tiny_diffusion_run, device="cpu", runtime=runtime))
        with TestClient(app) as c:
            got[runtime] = np.stack([_predict(c, d, 3, steps=8, sampler=s) for d in "18" for s in ("ddim", "ddpm")])
    np.testing.assert_allclose(got["torch"], got["onnx"], atol=0.05)  # pixel scale 0..255


# ----------------------------------------------------------------------- the step loop itself
def test_a_cancelled_request_leaves_the_loop_before_its_next_step(tiny_diffusion_run: Path) -> None:
    """The cancel arrives while step 3 runs: the request is in no later forward pass, and the
    other request in flight keeps going to its end with the same sample it gets alone."""
    bundle = max((tiny_diffusion_run / "saved_models").glob("*.safetensors"))
    p = OnnxPredictor.from_path(bundle, threads=1)
    assert p.diffusion is not None
    rows_seen: list[int] = []
    target: list[Any] = []

    def forward(batch: Any) -> dict[str, np.ndarray]:
        rows_seen.append(len(batch["mnist"]))
        if len(rows_seen) == 3:
            target[0].cancel()
        return p.run_batch(batch)

    def finish(job: Any) -> list[dict[str, np.ndarray]]:
        return p.split_outputs({job.output: job.x}, job.n)

    async def main() -> tuple[Any, list[dict[str, np.ndarray]]]:
        b = StepBatcher(p.diffusion, forward, finish, max_rows=64, max_queue=64)
        b.start()
        try:
            gone = b.submit_nowait([{LABEL: {"CLASS": "2"}}] * 3, [1, 2, 3], [1.0] * 3, SamplingParams(steps=20))
            target.append(gone)
            stays = await b.submit([{LABEL: {"CLASS": "4"}}], [9], [1.0], SamplingParams(steps=12))
            return gone, stays
        finally:
            b.stop()

    gone, stays = asyncio.run(main())
    assert gone.steps_run == 3 and not gone.future.done()
    # guidance doubles rows: 3 items -> 6 rows, 1 item -> 2 rows
    assert rows_seen[:3] == [8, 8, 8] and set(rows_seen[3:]) == {2}, rows_seen
    alone = p.predict([{LABEL: {"CLASS": "4"}}], [9], sampling=SamplingParams(steps=12))
    assert np.array_equal(stays[0]["mnist"], alone[0]["mnist"])


@pytest.fixture
def slow_forward() -> Iterator[Any]:
    """Make a live service's forward pass take 3 ms more (so that requests overlap), and record
    the rows of each pass."""
    rows: list[int] = []

    def install(app: Any) -> list[int]:
        batcher = app.state.service.batcher
        inner = batcher.forward

        def forward(batch: Any) -> Any:
            rows.append(len(batch["mnist"]))
            time.sleep(0.003)
            return inner(batch)

        batcher.forward = forward
        return rows

    yield install


@pytest.mark.slow
def test_same_seed_same_sample_on_every_protocol_alone_or_batched(tiny_diffusion_run: Path, slow_forward: Any) -> None:
    settings = Settings(model_path=tiny_diffusion_run, device="cpu")
    with serve_in_thread(settings) as live:
        rows = slow_forward(live.app)
        url = f"http://{live.http}"
        params = {"seed": 41, "steps": 12, "sampler": "ddpm", "guidance_scale": 1.5}
        want = _predict_base(url, "6", 41, **{k: v for k, v in params.items() if k != "seed"})
        tparams = dict(params)
        label = np.array([b"6"], dtype=object)

        h = httpclient.InferenceServerClient(live.http)
        for binary in (False, True):
            t = httpclient.InferInput("mnist_label.CLASS", [1], "BYTES")
            t.set_data_from_numpy(label, binary_data=binary)
            out = httpclient.InferRequestedOutput("mnist", binary_data=binary)
            got = h.infer("run", [t], outputs=[out], parameters=tparams).as_numpy("mnist")
            assert np.array_equal(got[0], want), f"V2 REST binary={binary}"

        g = grpcclient.InferenceServerClient(live.grpc)
        t = grpcclient.InferInput("mnist_label.CLASS", [1], "BYTES")
        t.set_data_from_numpy(label)
        assert np.array_equal(g.infer("run", [t], parameters=tparams).as_numpy("mnist")[0], want), "gRPC"
        with pytest.raises(Exception, match="parameter 'steps'"):
            g.infer("run", [t], parameters={"steps": 500})

        # the same request among 12 others with other digits, seeds, step counts and samplers
        rows.clear()

        async def crowd() -> list[np.ndarray]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:

                async def one(digit: str, seed: int, extra: dict[str, Any]) -> np.ndarray:
                    r = await c.post("/predict", params={"seed": seed, **extra}, json=[{LABEL: {"CLASS": digit}}])
                    assert r.status_code == 200, r.text
                    return _decode(r.json()["result"][0]["mnist"])

                others = [
                    one(str(i % 10), 100 + i, {"steps": 3 + i, "sampler": ("ddim", "ddpm", "dpm_solver")[i % 3]})
                    for i in range(12)
                ]
                mine = one("6", 41, {k: v for k, v in params.items() if k != "seed"})
                return list(await asyncio.gather(*others[:6], mine, *others[6:]))

        results = asyncio.run(crowd())
        assert np.array_equal(results[6], want), "batched with others"
        assert max(rows) > 4, f"the requests were never stepped together: {rows}"


def _predict_base(base_url: str, digit: str, seed: int, **params: Any) -> np.ndarray:
    r = httpx.post(f"{base_url}/predict", params={"seed": seed, **params}, json=[{LABEL: {"CLASS": digit}}])
    assert r.status_code == 200, r.text
    return _decode(r.json()["result"][0]["mnist"])


@pytest.mark.slow
def test_a_client_that_disconnects_stops_costing_forward_passes(long_diffusion_run: Path, slow_forward: Any) -> None:
    settings = Settings(model_path=long_diffusion_run, device="cpu")
    with serve_in_thread(settings) as live:
        slow_forward(live.app)
        batcher = live.app.state.service.batcher
        host, port = live.http.split(":")
        body = json.dumps([{LABEL: {"CLASS": "5"}}]).encode()
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"POST /predict?steps=1000&sampler=ddpm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 30
        while not (batcher._active and batcher._active[0].steps_run >= 5):
            assert time.monotonic() < deadline, "the request never started sampling"
            time.sleep(0.005)  # poll interval
        req = batcher._active[0]
        sock.close()
        at_close = req.steps_run
        while batcher.in_flight:
            assert time.monotonic() < deadline, "the request kept sampling after its client left"
            time.sleep(0.002)  # poll interval
        passes = batcher.forward_passes
        assert req.steps_run - at_close <= 2, (at_close, req.steps_run)  # the step running, at most one more
        assert req.steps_run < 100
        time.sleep(0.05)  # nothing is stepped any more (a wait for absence, not for readiness)
        assert batcher.forward_passes == passes
        metrics = httpx.get(f"http://{live.http}/metrics").text
        assert "eir_sampling_cancelled_total 1.0" in metrics


@pytest.mark.slow
def test_a_grpc_call_that_is_cancelled_leaves_the_loop(long_diffusion_run: Path, slow_forward: Any) -> None:
    settings = Settings(model_path=long_diffusion_run, device="cpu")
    with serve_in_thread(settings) as live:
        slow_forward(live.app)
        batcher = live.app.state.service.batcher
        g = grpcclient.InferenceServerClient(live.grpc)
        t = grpcclient.InferInput("mnist_label.CLASS", [1], "BYTES")
        t.set_data_from_numpy(np.array([b"5"], dtype=object))
        failed = threading.Event()

        def call() -> None:
            try:
                g.infer("run", [t], parameters={"steps": 1000, "sampler": "ddpm"}, client_timeout=0.5)
            except Exception:
                failed.set()

        th = threading.Thread(target=call)
        th.start()
        th.join(30)
        assert failed.is_set()  # the client gave up after 0.5 s of a ~3 s sample
        deadline = time.monotonic() + 10
        while batcher.in_flight:
            assert time.monotonic() < deadline, "the cancelled call kept sampling"
            time.sleep(0.002)  # poll interval
        assert batcher.forward_passes < 1000


def test_python_client_takes_sampling_parameters_and_streams(dclient: TestClient) -> None:
    from eir_serve.client import Client, EirServeError

    c = Client("http://testserver", http=dclient)
    assert c.info()["model"]["sampling"]["steps"]["max"] == 20
    out = c.predict([{LABEL: {"CLASS": "2"}}], seed=9, steps=7, sampler="dpm_solver", guidance_scale=1.5)
    want = _predict(dclient, "2", 9, steps=7, sampler="dpm_solver", guidance_scale=1.5)
    assert np.array_equal(out[0]["mnist"], want)
    events = list(c.stream({LABEL: {"CLASS": "2"}}, seed=9, every=3, steps=7, sampler="dpm_solver", guidance_scale=1.5))
    assert [(e.step, e.done) for e in events] == [(3, False), (6, False), (7, True)]
    assert np.array_equal(events[-1].arrays["mnist"], want)
    with pytest.raises(EirServeError, match="parameter 'steps'") as e:
        list(c.stream({LABEL: {"CLASS": "2"}}, steps=99))
    assert e.value.status == 400
    with pytest.raises(EirServeError) as e2:
        c.predict([{LABEL: {"CLASS": "2"}}], sampler="euler")
    assert e2.value.field == "sampler"
