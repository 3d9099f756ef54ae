"""The HTTP surface in-process: EIR payloads, /info, errors, seeds, V2, ops."""

from __future__ import annotations

import asyncio
import base64
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from eir_core.predict import Predictor
from eir_serve.app import create_app
from eir_serve.settings import Settings


def b64(a: np.ndarray) -> str:
    return base64.b64encode(a.tobytes()).decode()


def decode(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").reshape(1, 8, 8)


def image(digits_dir: Path, sid: int = 10001) -> np.ndarray:
    return np.load(digits_dir / "mnist_npy" / f"{sid}.npy")


def test_predict_matches_the_predictor_and_eir_shape(client: TestClient, tiny_bundle: Path, digits_dir: Path) -> None:
    imgs = [image(digits_dir, 10001), image(digits_dir, 10002)]
    r = client.post("/predict", json=[{"mnist": b64(i)} for i in imgs])
    assert r.status_code == 200
    result = r.json()["result"]
    assert len(result) == 2 and set(result[0]) == {"mnist_output"}
    assert len(base64.b64decode(result[0]["mnist_output"])) == 8 * 8 * 4
    direct = Predictor.from_path(tiny_bundle, device="cpu").predict([{"mnist": i} for i in imgs], seeds=[0, 1])
    for got, want in zip(result, direct):
        np.testing.assert_allclose(decode(got["mnist_output"]), want["mnist_output"], rtol=1e-5, atol=1e-4)


def test_info_has_eir_keys_dtypes_and_model(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["inputs"]["mnist"] == {"type": "array", "shape": [1, 8, 8], "dtype": "|u1", "optional": False}
    assert info["outputs"]["mnist_output"]["dtype"] == "<f4"
    assert info["outputs"]["mnist_output"]["source_dtype"] == "|u1"
    assert info["model"]["device"] == "cpu"


def test_info_lists_label_categories_and_optional_image(cond_client: TestClient) -> None:
    info = cond_client.get("/info").json()
    assert info["inputs"]["mnist"]["optional"] is True
    lab = info["inputs"]["mnist_label"]
    assert lab["type"] == "tabular" and lab["categorical_columns"]["CLASS"] == [str(d) for d in range(10)]


def test_label_only_generation_is_seeded(cond_client: TestClient) -> None:
    items = [{"mnist_label": {"CLASS": "3"}}, {"mnist_label": {"CLASS": "3"}}]

    def gen(seed: int) -> list[np.ndarray]:
        return [
            decode(r["mnist_output"]) for r in cond_client.post(f"/predict?seed={seed}", json=items).json()["result"]
        ]

    a, b, c = gen(7), gen(7), gen(8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.abs(a[0] - a[1]).mean() > 0.1  # item i uses seed 7+i: two samples of one label differ
    assert np.abs(a[0] - c[0]).mean() > 0.1
    # Item 1 with seed 7 is item 0 with seed 8 (equal up to float32 rounding of the batch's matmuls).
    np.testing.assert_allclose(a[1], c[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("body", "status", "field", "text"),
    [
        ({"mnist": "AAAA"}, 422, "body", "expected a JSON list"),
        ([], 422, "body", "empty"),
        ([{"mnist": 5}], 422, "mnist", "base64 string"),
        (
            [{"mnist": "!!notbase64!!"}],
            422,
            "mnist",
            "not valid base64: encode the raw array bytes with standard base64 (RFC 4648",
        ),
        ([{"mnist": base64.b64encode(b"\x00" * 63).decode()}], 422, "mnist", "expected 64 bytes"),
        ([{"mnist": ""}], 422, "mnist", "expected 64 bytes"),
        ([{"mnist_typo": "AAAA"}], 422, "mnist_typo", "unknown input"),
        ([{}], 422, None, "at least one input"),
        (["x"], 422, None, "expected an object"),
    ],
)
def test_bad_payloads_get_4xx_naming_item_and_field(
    client: TestClient, body: object, status: int, field: str | None, text: str
) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert text in err["message"]
    detail = err["details"][0]
    assert detail["field"] == field
    if isinstance(body, list) and body:
        assert detail["item"] == 0


def test_second_item_is_named(client: TestClient, digits_dir: Path) -> None:
    r = client.post("/predict", json=[{"mnist": b64(image(digits_dir))}, {"mnist": "abc"}])
    assert r.status_code == 422 and r.json()["error"]["details"][0]["item"] == 1


def test_not_json_too_many_items_too_large(client: TestClient, digits_dir: Path) -> None:
    r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/predict", json=[{"mnist": b64(image(digits_dir))}] * 17)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_items"
    r = client.post("/predict", content=b"[" + b" " * 70_000 + b"]", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_missing_required_input_and_category_errors(client: TestClient, cond_client: TestClient) -> None:
    r = cond_client.post("/predict", json=[{"mnist_label": {"CLASS": "12"}}])
    assert r.status_code == 422
    d = r.json()["error"]["details"][0]
    assert d["field"] == "mnist_label.CLASS" and "allowed: 0, 1, 2" in d["message"]
    r = cond_client.post("/predict", json=[{"mnist_label": {"CLASS": 12}}])  # the integer form of an unknown one
    assert r.status_code == 422 and "unknown category '12'" in r.json()["error"]["message"]
    for wrong in (5.0, True, [5]):
        r = cond_client.post("/predict", json=[{"mnist_label": {"CLASS": wrong}}])
        assert r.status_code == 422, wrong
        d = r.json()["error"]["details"][0]
        assert d["field"] == "mnist_label.CLASS" and "expected a category string" in d["message"]
    r = cond_client.post("/predict", json=[{"mnist_label": "5"}])
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "mnist_label"
    r = cond_client.post("/predict", json=[{"mnist_label": {"KLASS": "5"}}])
    assert r.status_code == 422 and "unknown column" in r.json()["error"]["message"]


@pytest.mark.parametrize("label", [{}, {"CLASS": None}])
def test_a_tabular_input_without_its_column_is_a_422_naming_it(
    cond_client: TestClient, digits_dir: Path, label: dict[str, object]
) -> None:
    # Leaving the label out altogether is a 422 (it was trained without dropout): an empty object
    # must not pass instead, with the column silently imputed.
    for item in ({"mnist_label": label}, {"mnist_label": label, "mnist": b64(image(digits_dir))}):
        r = cond_client.post("/predict", json=[{"mnist_label": {"CLASS": "3"}}, item])
        assert r.status_code == 422, r.text
        d = r.json()["error"]["details"][0]
        assert d["item"] == 1 and d["field"] == "mnist_label.CLASS", d
        assert "missing" in d["message"] and "CLASS" in d["message"]
    assert cond_client.post("/predict", json=[{"mnist_label": {"CLASS": "3"}}]).status_code == 200


def test_integer_categories_as_eir_clients_send_them(cond_client: TestClient) -> None:
    as_int = cond_client.post("/predict?seed=3", json=[{"mnist_label": {"CLASS": 5}}, {"mnist_label": {"CLASS": 0}}])
    as_str = cond_client.post(
        "/predict?seed=3", json=[{"mnist_label": {"CLASS": "5"}}, {"mnist_label": {"CLASS": "0"}}]
    )
    assert as_int.status_code == 200, as_int.text
    assert as_int.json() == as_str.json()


def test_float64_bytes_for_a_uint8_input_are_named(client: TestClient, digits_dir: Path) -> None:
    img = image(digits_dir).astype(np.float64)  # what np.load of a float image, or img / 1.0, gives
    r = client.post("/predict", json=[{"mnist": b64(img)}])
    assert r.status_code == 422
    d = r.json()["error"]["details"][0]
    assert d["field"] == "mnist" and "8 bytes per value: did you send float64?" in d["message"]
    r = client.post("/predict", json=[{"mnist": b64(img.astype(np.float32))}])
    assert r.status_code == 422 and "did you send float32?" in r.json()["error"]["message"]


def test_nan_in_float_input_is_refused(tiny_bundle: Path) -> None:
    from eir_serve.codec import CodecError, decode_array

    with pytest.raises(CodecError, match="NaN"):
        decode_array(b64(np.array([np.nan, 1.0], "<f4")), "<f4", (2,))


def test_concurrent_requests_are_batched_and_equal_to_single(tiny_conditional_bundle: Path) -> None:
    """A fresh app whose first forward pass is held until 7 more one-item requests wait: those 7
    then run as ONE forward pass (items of different requests), answering as they would alone."""
    app = create_app(Settings(model_path=tiny_conditional_bundle, device="cpu", max_batch_size=16))
    items = [{"mnist_label": {"CLASS": str(d)}} for d in range(8)]
    with TestClient(app) as client:
        single = [client.post(f"/predict?seed={100 + i}", json=[it]).json() for i, it in enumerate(items)]
        service = app.state.service
        real, gate, sizes = service.predictor.predict, threading.Event(), []

        def held(batch, seeds, **kw):  # type: ignore[no-untyped-def]
            sizes.append(len(batch))
            if len(sizes) == 1:
                assert gate.wait(30), "the other requests never queued"
            return real(batch, seeds, **kw)

        service.predictor.predict = held

        async def scenario() -> list[dict]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                first = asyncio.create_task(c.post("/predict?seed=100", json=[items[0]]))
                while not sizes:  # the first request's forward pass has started (and is held)
                    await asyncio.sleep(0.005)
                rest = [asyncio.create_task(c.post(f"/predict?seed={100 + i}", json=[items[i]])) for i in range(1, 8)]
                while service.batcher.queue_depth < 7:  # all seven wait behind it
                    await asyncio.sleep(0.005)
                gate.set()
                return [(await t).json() for t in [first, *rest]]

        concurrent = asyncio.run(scenario())
        service.predictor.predict = real
    assert sizes == [1, 7]
    for got, want in zip(concurrent, single, strict=True):
        np.testing.assert_allclose(
            decode(got["result"][0]["mnist_output"]), decode(want["result"][0]["mnist_output"]), rtol=1e-4, atol=1e-3
        )


def test_ops_endpoints(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    m = client.get("/metrics")
    assert m.status_code == 200 and 'eir_requests_total{route="/predict"' in m.text
    assert client.get("/nope").json()["error"]["code"] == "not_found"
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/").status_code == 200 and "Generate" in client.get("/").text


def test_openapi_example_works(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert client.post("/predict", json=body["examples"]["this model"]["value"]).status_code == 200


def test_docs_are_generated_from_the_schemas(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    predict = spec["paths"]["/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictRequest"
    }
    ok = predict["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PredictResponse"}
    bad = predict["responses"]["422"]["content"]["application/json"]["schema"]
    assert bad == {"$ref": "#/components/schemas/ErrorResponse"}
    assert schemas["PredictRequest"]["type"] == "array" and schemas["PredictRequest"]["minItems"] == 1
    info = spec["paths"]["/info"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert info == {"$ref": "#/components/schemas/InfoResponse"}
    assert set(schemas["InfoResponse"]["properties"]) == {"inputs", "outputs", "model"}
    assert {"ArrayInputInfo", "TabularInputInfo", "ArrayOutputInfo", "ModelInfo"} <= set(schemas)
    echo = spec["paths"]["/echo"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert echo == {"$ref": "#/components/schemas/PredictRequest"}


def test_echo_does_the_same_codec_work(client: TestClient, digits_dir: Path) -> None:
    r = client.post("/echo", json=[{"mnist": b64(image(digits_dir))}])
    assert r.status_code == 200 and len(base64.b64decode(r.json()["result"][0]["mnist_output"])) == 256


def test_v2_protocol(cond_client: TestClient) -> None:
    assert cond_client.get("/v2").json()["name"] == "eirserve"
    assert cond_client.get("/v2/health/live").json() == {"live": True}
    assert cond_client.get("/v2/health/ready").json() == {"ready": True}
    name = cond_client.get("/info").json()["model"]["name"]
    meta = cond_client.get(f"/v2/models/{name}").json()
    assert {"name": "mnist", "datatype": "UINT8", "shape": [-1, 1, 8, 8]} in meta["inputs"]
    assert {"name": "mnist_label.CLASS", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert cond_client.get(f"/v2/models/{name}/ready").json() == {"ready": True}
    body = {
        "inputs": [{"name": "mnist_label.CLASS", "shape": [2], "datatype": "BYTES", "data": ["1", "7"]}],
        "parameters": {"seed": 5},
    }
    r = cond_client.post(f"/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [2, 1, 8, 8] and out["datatype"] == "FP32" and len(out["data"]) == 128
    same = cond_client.post("/predict?seed=5", json=[{"mnist_label": {"CLASS": "1"}}, {"mnist_label": {"CLASS": "7"}}])
    np.testing.assert_allclose(
        np.array(out["data"], np.float32).reshape(2, 1, 8, 8)[0],
        decode(same.json()["result"][0]["mnist_output"]),
        rtol=1e-6,
    )
    img = {"name": "mnist", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": [0] * 64}
    label = {"name": "mnist_label.CLASS", "shape": [1], "datatype": "BYTES", "data": ["4"]}
    assert cond_client.post(f"/v2/models/{name}/infer", json={"inputs": [img, label]}).status_code == 200
    r = cond_client.post(f"/v2/models/{name}/infer", json={"inputs": [img]})  # the label is required
    assert r.status_code == 400 and "'mnist_label'" in r.json()["error"] and "required" in r.json()["error"]
    bad = {"inputs": [{**img, "data": [0] * 63}, label]}
    r = cond_client.post(f"/v2/models/{name}/infer", json=bad)
    assert r.status_code == 400 and r.json() == {
        "error": "input 'mnist': shape [1, 1, 8, 8] needs 64 values, 'data' has 63"
    }
    assert cond_client.get("/v2/models/other").status_code == 404
