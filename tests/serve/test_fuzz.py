"""Property-based fuzzing of the whole HTTP surface (in-process): whatever a client sends,
the answer is never a 5xx, and every error has the one documented JSON shape."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eir_serve.app import create_app
from eir_serve.settings import Settings

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=20,
)
B64 = st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode())
LABEL = st.dictionaries(
    st.sampled_from(["CLASS", "OTHER", ""]), st.one_of(st.text(max_size=3), st.integers()), max_size=2
)
ITEM = st.fixed_dictionaries(
    {}, optional={"mnist": st.one_of(B64, JSON), "mnist_label": st.one_of(LABEL, JSON), "extra": JSON}
)
BODY = st.one_of(st.lists(ITEM, max_size=5), JSON)


@pytest.fixture(scope="module")
def fuzz_client(tiny_conditional_bundle: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model_path=tiny_conditional_bundle, device="cpu", enable_echo=True,
                              max_items_per_request=4))  # fmt: skip
    with TestClient(app) as c:
        yield c


def _check(r) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400 and r.url.path.startswith("/v2"):  # the Open Inference Protocol's error
        assert (
            r.status_code in (400, 404, 413, 415) and set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
        )
    elif r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err["code"], str) and isinstance(err["message"], str) and isinstance(err["details"], list)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY, seed=st.one_of(st.none(), st.integers(-5, 2**63), st.text(max_size=5)))
def test_predict_and_echo_never_fail_server_side(fuzz_client: TestClient, body: object, seed: object) -> None:
    params = {} if seed is None else {"seed": seed}
    _check(fuzz_client.post("/predict", json=body, params=params))
    _check(fuzz_client.post("/echo", json=body))


TENSOR = st.fixed_dictionaries(
    {"name": st.sampled_from(["mnist", "mnist_label.CLASS", "mnist_label", "x"]),
     "shape": st.lists(st.integers(-1, 70), max_size=4),
     "datatype": st.sampled_from(["UINT8", "FP32", "BYTES", "INT64", "WHAT"]),
     "data": st.one_of(st.lists(st.one_of(st.integers(-300, 300), st.text(max_size=2)), max_size=70), JSON)}
)  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.fixed_dictionaries({"inputs": st.lists(TENSOR, max_size=3)}, optional={"parameters": JSON}), JSON)
)
def test_v2_infer_never_fails_server_side(fuzz_client: TestClient, body: object) -> None:
    name = fuzz_client.get("/info").json()["model"]["name"]
    _check(fuzz_client.post(f"/v2/models/{name}/infer", json=body))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz/0123456789._-", max_size=30),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), raw=st.binary(max_size=60))  # fmt: skip
def test_any_path_and_method(fuzz_client: TestClient, path: str, method: str, raw: bytes) -> None:
    r = fuzz_client.request(method, "/" + path.lstrip("/"), content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, (method, path, r.status_code)


def test_slow_prediction_is_504(tiny_bundle: Path, digits_dir: Path) -> None:
    app = create_app(Settings(model_path=tiny_bundle, device="cpu", request_timeout_s=0.2))
    body = [{"mnist": base64.b64encode((digits_dir / "mnist_npy" / "10001.npy").read_bytes()[-64:]).decode()}]
    with TestClient(app) as client:
        real = app.state.service.predictor.predict

        def slow(items, seeds, **kw):  # type: ignore[no-untyped-def]
            time.sleep(0.6)
            return real(items, seeds, **kw)

        app.state.service.predictor.predict = slow
        r = client.post("/predict", json=body)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        app.state.service.predictor.predict = real
        # The slow batch still runs for a moment; once it is done, answers are on time again.
        codes = [client.post("/predict", json=body).status_code for _ in range(10)]
        assert codes[-1] == 200 and set(codes) <= {200, 504}
