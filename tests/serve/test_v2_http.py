"""The Open Inference Protocol over HTTP, in-process: versioned routes, the protocol's error object,
the binary tensor data extension (built by hand here, byte by byte), strict datatypes and shapes."""

from __future__ import annotations

import base64
import gzip
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from eir_serve import protocol
from eir_serve.app import create_app
from eir_serve.settings import Settings
from tests.helpers import bundle_version

HEADER = "Inference-Header-Content-Length"


def model(c: TestClient) -> str:
    return str(c.get("/info").json()["model"]["name"])


def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {HEADER: str(len(head)), "content-type": "application/octet-stream"}


def split_answer(r: Any) -> tuple[dict[str, Any], bytes]:
    n = int(r.headers[HEADER])
    return json.loads(r.content[:n]), r.content[n:]


def predict(c: TestClient, items: list[dict[str, Any]], seed: int) -> np.ndarray:
    result = c.post(f"/predict?seed={seed}", json=items).json()["result"]
    return np.stack([np.frombuffer(base64.b64decode(r["mnist_output"]), "<f4").reshape(1, 8, 8) for r in result])


def images(digits_dir: Path, n: int) -> np.ndarray:
    return np.stack([np.load(digits_dir / "mnist_npy" / f"{10001 + i}.npy") for i in range(n)])


@pytest.mark.parametrize("versioned", [False, True])
def test_every_model_route_answers_with_and_without_version(
    cond_client: TestClient, tiny_conditional_bundle: Path, versioned: bool
) -> None:
    name, version = model(cond_client), bundle_version(tiny_conditional_bundle)
    assert version != "1"  # a checkpoint's version is its training iteration
    base = f"/v2/models/{name}" + (f"/versions/{version}" if versioned else "")
    meta = cond_client.get(base)
    assert meta.status_code == 200 and meta.json()["versions"] == [version]
    assert cond_client.get(f"{base}/ready").json() == {"ready": True}
    body = {"inputs": [{"name": "mnist_label.CLASS", "shape": [1], "datatype": "BYTES", "data": ["2"]}]}
    r = cond_client.post(f"{base}/infer", json=body)
    assert r.status_code == 200 and r.json()["model_version"] == version


def test_other_versions_and_models_are_404_in_the_protocol_shape(cond_client: TestClient) -> None:
    name = model(cond_client)
    for path in (f"/v2/models/{name}/versions/2", f"/v2/models/{name}/versions/2/ready", "/v2/models/nope/ready"):
        r = cond_client.get(path)
        assert r.status_code == 404 and set(r.json()) == {"error"}, (path, r.text)
    r = cond_client.post(f"/v2/models/{name}/versions/0/infer", json={"inputs": []})
    version = cond_client.get(f"/v2/models/{name}").json()["versions"][0]
    assert r.json() == {"error": f"model {name!r} has no version '0' loaded; loaded: {version}"}
    assert cond_client.get("/v2/models/nope").json() == {"error": f"unknown model 'nope'; this server's models: {name}"}
    r = cond_client.get("/v2/no/such/route")
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    r = cond_client.delete(f"/v2/models/{name}/infer")
    assert r.status_code == 405 and isinstance(r.json()["error"], str)
    # /predict keeps its richer shape.
    assert cond_client.post("/predict", json={}).json()["error"]["code"] == "invalid_input"


def test_server_metadata_lists_the_binary_extension(cond_client: TestClient) -> None:
    meta = cond_client.get("/v2").json()
    assert meta["name"] == "eirserve" and "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"datatype": "FP64"}, "input 'mnist': datatype 'FP64' does not match the model's UINT8"),
        ({"datatype": "UINT16"}, "input 'mnist': datatype 'UINT16' does not match the model's UINT8"),
        (
            {"datatype": "F32"},
            "input 'mnist': datatype 'F32' (not a protocol datatype) does not match the model's UINT8",
        ),
        ({"shape": [1, 64]}, "input 'mnist': shape [1, 64] does not match the model's [N, 1, 8, 8]"),
        ({"shape": [1, 8, 8, 1]}, "input 'mnist': shape [1, 8, 8, 1] does not match the model's [N, 1, 8, 8]"),
        ({"data": [0.5] * 64}, "input 'mnist': UINT8 values are integers"),
        ({"data": [True] * 64}, "input 'mnist': UINT8 values are integers"),
        ({"data": [256] * 64}, "input 'mnist': values must lie in 0..255 for UINT8"),
        ({"data": [0] * 65}, "input 'mnist': shape [1, 1, 8, 8] needs 64 values, 'data' has 65"),
        ({"data": None}, "input 'mnist': no 'data' and no 'binary_data_size' parameter"),
        ({"name": "pixels"}, "input 'pixels': unknown input; this model's inputs are: mnist"),
        ({"shape": [0, 1, 8, 8], "data": []}, "batch size 0: send at least one item"),
        ({"shape": [-1, 1, 8, 8]}, "inputs.0.shape.0: Input should be greater than or equal to 0"),
    ],
)
def test_bad_tensors_are_400_with_a_message_naming_them(
    client: TestClient, tensor: dict[str, Any], message: str
) -> None:
    good = {"name": "mnist", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": [0] * 64}
    r = client.post(f"/v2/models/{model(client)}/infer", json={"inputs": [{**good, **tensor}]})
    assert r.status_code == 400 and r.json() == {"error": message}


def test_request_level_problems(client: TestClient) -> None:
    name = model(client)
    img = {"name": "mnist", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": [0] * 64}
    cases = [
        ({"inputs": [img, img]}, "input 'mnist' is given twice"),
        (
            {"inputs": [img], "parameters": {"seed": -1}},
            "parameter 'seed': expected an integer in 0..4611686018427387904, got -1",
        ),
        (
            {"inputs": [img], "outputs": [{"name": "x"}]},
            "output 'x': unknown output; this model's outputs are: mnist_output",
        ),
        (
            {"inputs": [img], "parameters": {"binary_data_output": 1}},
            "parameter 'binary_data_output': expected true or false, got 1",
        ),
        ({"inputs": []}, "inputs: List should have at least 1 item after validation, not 0"),
        ({}, "inputs: Field required"),
    ]
    for body, message in cases:
        r = client.post(f"/v2/models/{name}/infer", json=body)
        assert (r.status_code, r.json()) == (400, {"error": message})
    r = client.post(f"/v2/models/{name}/infer", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"].startswith("body: not valid JSON")


def test_nested_and_flat_data_agree_and_equal_predict(client: TestClient, digits_dir: Path) -> None:
    name, imgs = model(client), images(digits_dir, 3)
    flat = {"name": "mnist", "shape": [3, 1, 8, 8], "datatype": "UINT8", "data": imgs.reshape(-1).tolist()}
    nested = {**flat, "data": imgs.tolist()}
    answers = [
        client.post(f"/v2/models/{name}/infer", json={"inputs": [t], "parameters": {"seed": 9}}).json()
        for t in (flat, nested)
    ]
    assert answers[0]["outputs"] == answers[1]["outputs"]
    got = np.array(answers[0]["outputs"][0]["data"], np.float32).reshape(3, 1, 8, 8)
    want = predict(client, [{"mnist": base64.b64encode(i.tobytes()).decode()} for i in imgs], seed=9)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_binary_request_and_response_equal_json_and_predict(cond_client: TestClient, digits_dir: Path) -> None:
    """UINT8 image and BYTES label in binary (4-byte little-endian length prefixes), FP32 answer in binary."""
    name, imgs = model(cond_client), images(digits_dir, 2)
    labels = ["3", "8"]
    header = {
        "id": "r1",
        "parameters": {"seed": 4, "binary_data_output": True},
        "inputs": [
            {"name": "mnist", "shape": [2, 1, 8, 8], "datatype": "UINT8", "parameters": {"binary_data_size": 128}},
            {"name": "mnist_label.CLASS", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 10}},
        ],
    }
    label_bytes = struct.pack("<I", 1) + b"3" + struct.pack("<I", 1) + b"8"
    assert label_bytes == protocol.join_bytes(labels)
    body, headers = binary_body(header, imgs.tobytes(), label_bytes)
    version = cond_client.get(f"/v2/models/{name}").json()["versions"][0]
    r = cond_client.post(f"/v2/models/{name}/versions/{version}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    head, raw = split_answer(r)
    assert head["id"] == "r1" and head["outputs"] == [
        {"name": "mnist_output", "datatype": "FP32", "shape": [2, 1, 8, 8], "parameters": {"binary_data_size": 512}}
    ]
    got = np.frombuffer(raw, "<f4").reshape(2, 1, 8, 8)
    items = [
        {"mnist": base64.b64encode(i.tobytes()).decode(), "mnist_label": {"CLASS": c}} for i, c in zip(imgs, labels)
    ]
    np.testing.assert_allclose(got, predict(cond_client, items, seed=4), rtol=1e-6)
    as_json = {
        "parameters": {"seed": 4},
        "inputs": [
            {"name": "mnist", "shape": [2, 1, 8, 8], "datatype": "UINT8", "data": imgs.reshape(-1).tolist()},
            {"name": "mnist_label.CLASS", "shape": [2], "datatype": "BYTES", "data": labels},
        ],
        "outputs": [{"name": "mnist_output", "parameters": {"binary_data": False}}],
    }
    j = cond_client.post(f"/v2/models/{name}/infer", json=as_json)
    assert j.headers["content-type"] == "application/json" and HEADER not in j.headers
    np.testing.assert_array_equal(np.array(j.json()["outputs"][0]["data"], np.float32).reshape(2, 1, 8, 8), got)
    # One output asked for in binary while the request's default is JSON.
    as_json["outputs"] = [{"name": "mnist_output", "parameters": {"binary_data": True}}]
    head, raw = split_answer(cond_client.post(f"/v2/models/{name}/infer", json=as_json))
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(2, 1, 8, 8), got)


def test_gzip_body_is_accepted_and_bombs_are_refused(client: TestClient) -> None:
    name = model(client)
    body = json.dumps({"inputs": [{"name": "mnist", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": [1] * 64}]})
    r = client.post(
        f"/v2/models/{name}/infer", content=gzip.compress(body.encode()), headers={"content-encoding": "gzip"}
    )
    assert r.status_code == 200
    bomb = gzip.compress(b" " * 1_000_000)  # 1 MB of spaces: over the fixture's 64 kB limit once inflated
    r = client.post(f"/v2/models/{name}/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert r.status_code == 413 and "decompressed body" in r.json()["error"]
    r = client.post(f"/v2/models/{name}/infer", content=b"x", headers={"content-encoding": "br"})
    assert r.status_code == 415 and "Content-Encoding 'br'" in r.json()["error"]


@pytest.mark.parametrize(
    ("size", "chunks", "header_len", "message"),
    [
        (64, [b"\0" * 63], None, "input 'mnist': binary_data_size 64, but only 63 bytes follow the header"),
        (64, [b"\0" * 65], None, "1 bytes after the JSON header belong to no input (binary_data_size)"),
        (63, [b"\0" * 63], None, "input 'mnist': shape [1, 1, 8, 8] of UINT8 needs 64 bytes, got 63"),
        (-1, [b""], None, "input 'mnist': binary_data_size must be a non-negative integer, got -1"),
        (64, [b"\0" * 64], "x", "Inference-Header-Content-Length 'x': expected the JSON header's size, at most"),
        (64, [b"\0" * 64], "99999", "Inference-Header-Content-Length '99999': expected the JSON header's size"),
    ],
)
def test_binary_framing_errors(
    client: TestClient, size: int, chunks: list[bytes], header_len: str | None, message: str
) -> None:
    header = {
        "inputs": [
            {"name": "mnist", "shape": [1, 1, 8, 8], "datatype": "UINT8", "parameters": {"binary_data_size": size}}
        ]
    }
    body, headers = binary_body(header, *chunks)
    if header_len is not None:
        headers[HEADER] = header_len
    r = client.post(f"/v2/models/{model(client)}/infer", content=body, headers=headers)
    assert r.status_code == 400 and r.json()["error"].startswith(message), r.text


def test_binary_bytes_framing_errors(cond_client: TestClient) -> None:
    name = model(cond_client)

    def send(raw: bytes, n: int = 1) -> str:
        t = {
            "name": "mnist_label.CLASS",
            "shape": [n],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": len(raw)},
        }
        body, headers = binary_body({"inputs": [t]}, raw)
        r = cond_client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
        assert r.status_code == 400
        return str(r.json()["error"])

    assert send(struct.pack("<I", 5) + b"3") == "input 'mnist_label.CLASS': element 0 declares 5 bytes, only 1 remain"
    assert send(b"\x01\x00") == "input 'mnist_label.CLASS': 1 BYTES elements need at least 4 bytes, got 2"
    assert (
        send(protocol.join_bytes(["3", "4"])) == "input 'mnist_label.CLASS': 5 bytes left over after 1 BYTES elements"
    )
    assert send(struct.pack("<I", 1) + b"\xff") == "input 'mnist_label.CLASS': a BYTES element is not UTF-8 text"
    assert send(protocol.join_bytes(["11"])).startswith("item 0, field 'mnist_label.CLASS': unknown category '11'")


def test_limits_under_v2_are_protocol_errors(tiny_bundle: Path) -> None:
    app = create_app(Settings(model_path=tiny_bundle, device="cpu", max_items_per_request=2, max_body_bytes=4096))
    img = {"name": "mnist", "shape": [3, 1, 8, 8], "datatype": "UINT8", "data": [0] * 192}
    with TestClient(app) as c:
        name = model(c)
        r = c.post(f"/v2/models/{name}/infer", json={"inputs": [img]})
        assert r.status_code == 413 and r.json() == {"error": "batch size 3 is over the limit of 2 items per request"}
        r = c.post(f"/v2/models/{name}/infer", content=b" " * 5000)
        assert r.status_code == 413 and set(r.json()) == {"error"}


def test_not_ready_is_503_in_the_protocol_shape(tiny_bundle: Path) -> None:
    c = TestClient(create_app(Settings(model_path=tiny_bundle, device="cpu")))  # no `with`: lifespan not run
    for path in ("/v2/models/x", "/v2/models/x/versions/1/ready"):
        r = c.get(path)
        assert r.status_code == 503 and r.json() == {"error": "the server is loading its models; retry"}
    assert c.get("/v2/health/ready").status_code == 503


def test_openapi_documents_the_v2_models(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    infer = spec["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    body = infer["requestBody"]["content"]
    assert set(body["application/json"]["schema"]["properties"]) == {"id", "parameters", "inputs", "outputs"}
    assert "binary_data_size" in body["application/octet-stream"]["description"]
    assert infer["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferResponse"
    }
    assert infer["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProtocolErrorResponse"
    }
    # /predict's richer error shape is a different model under its own name
    predict_422 = spec["paths"]["/predict"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert predict_422 == {"$ref": "#/components/schemas/ErrorResponse"}
    for path in (
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/versions/{version}/ready",
    ):
        assert path in spec["paths"]
    assert {"ModelMetadataResponse", "ServerMetadataResponse", "TensorMetadata"} <= set(spec["components"]["schemas"])


DATATYPE_VALUES = {
    "BOOL": st.booleans(),
    "UINT8": st.integers(0, 255),
    "UINT16": st.integers(0, 2**16 - 1),
    "UINT32": st.integers(0, 2**32 - 1),
    "UINT64": st.integers(0, 2**64 - 1),
    "INT8": st.integers(-128, 127),
    "INT16": st.integers(-(2**15), 2**15 - 1),
    "INT32": st.integers(-(2**31), 2**31 - 1),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "FP16": st.floats(-1000, 1000, width=16),
    "FP32": st.floats(-1e6, 1e6, width=32),
    "FP64": st.floats(-1e300, 1e300),
}


@given(data=st.data(), datatype=st.sampled_from([*DATATYPE_VALUES, "BYTES"]))
def test_raw_and_json_decoding_agree_for_every_datatype(data: st.DataObject, datatype: str) -> None:
    values = data.draw(st.lists(DATATYPE_VALUES.get(datatype, st.text(max_size=5)), min_size=1, max_size=6))
    spec = protocol.TensorSpec("t", datatype, ())
    shape = [len(values)]
    if datatype == "BYTES":
        raw = protocol.join_bytes(values)
        assert protocol.from_raw(spec, shape, raw).tolist() == values
        assert protocol.from_json(spec, shape, values).tolist() == values
        assert protocol.to_raw(np.array(values, dtype=object), "BYTES") == raw
        return
    arr = np.array(values, dtype=protocol.NUMPY[datatype])
    raw = arr.tobytes()
    assert protocol.to_raw(arr, datatype) == raw
    np.testing.assert_array_equal(protocol.from_raw(spec, shape, raw), arr)
    np.testing.assert_array_equal(protocol.from_json(spec, shape, arr.tolist()), arr)
