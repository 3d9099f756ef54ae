"""Hostile JSON on every route that reads JSON: a 4xx in the route's error shape, never a 5xx
(a 422 in the one error shape on /predict and /echo; the protocol's 400 ``{"error": "..."}`` under /v2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eir_serve.app import create_app
from eir_serve.body import parse_json
from eir_serve.errors import ApiError
from eir_serve.settings import Settings


@pytest.fixture(scope="module")
def hostile_client(tiny_conditional_bundle: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model_path=tiny_conditional_bundle, device="cpu", enable_echo=True))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def json_routes(hostile_client: TestClient) -> list[str]:
    name = hostile_client.get("/info").json()["model"]["name"]
    return ["/predict", "/echo", f"/v2/models/{name}/infer"]


def _is_one_error_shape(r: httpx.Response, status: int = 422) -> dict:
    if r.url.path.startswith("/v2/"):  # the Open Inference Protocol's own error: a string, 400 for 422
        assert r.status_code == (400 if status == 422 else status), (r.status_code, r.text[:300])
        message = r.json()["error"]
        assert isinstance(message, str) and set(r.json()) == {"error"}
        field = "body" if message.startswith("body: ") else None
        return {"code": "protocol", "message": message, "details": [{"field": field}]}
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert isinstance(err["code"], str) and isinstance(err["message"], str) and isinstance(err["details"], list)
    return err


LABEL = b'{"mnist_label": {"CLASS": "3"}}'
HOSTILE = {
    "5000 nested [": b"[" * 5000,
    "5000 nested {": b'{"a":' * 5000,
    "closed nesting past the limit": b"[" * 300 + b"]" * 300,
    "1e999": b'[{"mnist_label": {"CLASS": 1e999}}]',
    "-1e999": b"[-1e999]",
    "10 000-digit integer": b"[" + b"9" * 10_000 + b"]",
    "integer past 64 bits": b'{"inputs": [], "parameters": {"seed": 18446744073709551616}}',
    "negative past 64 bits": b"[-9223372036854775809]",
    "lone high surrogate": b'[{"mnist_label": {"CLASS": "\\ud800"}}]',
    "lone low surrogate": b'["\\udc00"]',
    "duplicate key": b'[{"mnist_label": {"CLASS": "3"}, "mnist_label": {"CLASS": "4"}}]',
    "duplicate nested key": b'[{"mnist_label": {"CLASS": "3", "CLASS": "4"}}]',
    "not UTF-8": b'[{"mnist_label": {"CLASS": "\xff\xfe"}}]',
    "UTF-16": '[{"mnist_label": {"CLASS": "3"}}]'.encode("utf-16"),
    "NaN literal": b"[NaN]",
    "Infinity literal": b"[Infinity]",
    "trailing garbage": b"[" + LABEL + b"] x",
    "empty body": b"",
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_body_is_a_422_on_every_json_route(
    hostile_client: TestClient, json_routes: list[str], raw: bytes
) -> None:
    for route in json_routes:
        r = hostile_client.post(route, content=raw, headers={"content-type": "application/json"})
        err = _is_one_error_shape(r)
        assert err["details"][0]["field"] == "body", (route, err)
        assert "not valid JSON" in err["message"], (route, err)


def test_what_is_refused_is_named() -> None:
    def message(raw: bytes) -> str:
        with pytest.raises(ApiError) as e:
            parse_json(raw)
        return e.value.message

    assert "nested too deeply: more than 64 levels" in message(b"[" * 5000)
    assert "duplicate key" in message(b'{"a": 1, "a": 2}')
    assert "too large for a double" in message(b"[1e999]")
    assert "does not fit in 64 bits" in message(b"[18446744073709551616]")
    assert "number too large" in message(b"[" + b"9" * 10_000 + b"]")
    # Long lists of numbers are checked as a whole (min/max); one bad value anywhere is still found.
    assert "64 bits" in message(b"[" + b"1, " * 1000 + b"18446744073709551616]")
    assert "64 bits" in message(b"[[1, 2], [3, -9223372036854775809]]")
    assert "too large for a double" in message(b'[1, "a", 1e999]')
    assert "too large for a double" in message(b"[1.5, [1e999]]")
    # What is allowed stays allowed: 64-bit extremes, big finite doubles, a real surrogate pair.
    assert parse_json(b"[18446744073709551615, -9223372036854775808, 1e308]") == [2**64 - 1, -(2**63), 1e308]
    assert parse_json(b'["\\ud83d\\ude00"]') == ["\U0001f600"]


def test_a_valid_body_still_works_on_every_json_route(hostile_client: TestClient, json_routes: list[str]) -> None:
    json_type = {"content-type": "application/json"}
    assert hostile_client.post("/predict", content=b"[" + LABEL + b"]", headers=json_type).status_code == 200
    assert hostile_client.post("/predict", content=b"[" + LABEL + b"]").status_code == 415  # no content type
    assert hostile_client.post("/echo", json=[{"mnist_label": {"CLASS": "3"}}]).status_code == 200
    v2 = {"inputs": [{"name": "mnist_label.CLASS", "shape": [1], "datatype": "BYTES", "data": ["3"]}]}
    assert hostile_client.post(json_routes[2], json=v2).status_code == 200


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "unclosed":
        return b"[" * depth
    # deep inside a real payload: the label's value, then the tensors' data
    inner = b"[" * depth + b"]" * depth
    return b'[{"mnist_label": {"CLASS": ' + inner + b"}}]"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(1, 20_000), kind=st.sampled_from(["list", "object", "unclosed", "in payload"]))
def test_any_nesting_depth_is_never_a_5xx(
    hostile_client: TestClient, json_routes: list[str], depth: int, kind: str
) -> None:
    raw = _nested(depth, kind)
    for route in json_routes:
        r = hostile_client.post(route, content=raw, headers={"content-type": "application/json"})
        assert r.status_code < 500, (route, depth, kind, r.status_code, r.text[:200])
        if r.status_code >= 400:
            _is_one_error_shape(r, r.status_code)
        if depth > 64:  # past the documented limit: too deep, or too many lists to be worth parsing
            too_large = r.status_code == 413
            err = _is_one_error_shape(r, 413 if too_large else 422)
            want = "too large a JSON document" if too_large else "nested too deeply: more than 64 levels"
            if kind == "unclosed" and depth <= 200:  # refused as cut short before it is found too deep
                want = "too large a JSON document" if too_large else "EOF while parsing"
            assert want in err["message"], (route, depth, err["message"])
