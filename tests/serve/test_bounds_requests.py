"""What a request must pass from its headers before its body is read, and strict reading of what
it sends: the API key, cross-site browser requests, media types, the bytes that bodies in
progress may hold together, header integers, content codings, tensor shapes, JSON cost and depth.
In-process (TestClient) except where stalled uploads need sockets (a real uvicorn in a thread)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from eir_serve import body as body_module
from eir_serve.app import create_app
from eir_serve.body import MAX_JSON_DEPTH, JsonLimits, parse_json
from eir_serve.errors import ApiError
from eir_serve.gate import ascii_int, coding_of
from eir_serve.settings import Settings
from tests.serve.live import serve_in_thread

KEY = "s3cret"
IMAGE = {"name": "mnist", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": list(range(64))}


@pytest.fixture(scope="module")
def keyed(tiny_bundle: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=tiny_bundle, device="cpu", api_key=KEY))) as c:
        yield c


@pytest.fixture(scope="module")
def open_client(tiny_bundle: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=tiny_bundle, device="cpu"))) as c:
        yield c


def _infer(c: TestClient) -> str:
    return f"/v2/models/{c.get('/info').json()['model']['name']}/infer"


class _Spy:
    """A request body that records whether anyone read it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.read = data, False

    def __iter__(self) -> Iterator[bytes]:
        self.read = True
        yield self.data


def test_the_key_is_checked_before_a_body_byte_is_read(keyed: TestClient) -> None:
    payload = json.dumps({"inputs": [IMAGE]}).encode()
    for path in ("/predict", _infer(keyed)):
        spy = _Spy(payload)
        r = keyed.post(
            path, content=spy, headers={"content-type": "application/json", "content-length": str(len(payload))}
        )
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
        assert not spy.read, f"{path}: the body was read before the key was checked"
    ok = keyed.post(_infer(keyed), json={"inputs": [IMAGE]}, headers={"authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"content-type": "text/plain"}, 415),
        ({"content-type": "application/x-www-form-urlencoded"}, 415),
        ({"content-type": "multipart/form-data; boundary=x"}, 415),
        ({}, 415),
        ({"content-type": "application/json", "sec-fetch-site": "cross-site"}, 403),
        ({"content-type": "application/json", "origin": "http://evil.example"}, 403),
        ({"content-type": "application/json", "origin": "null"}, 403),
        ({"content-type": "Application/JSON; charset=utf-8", "sec-fetch-site": "same-origin"}, 200),
        ({"content-type": "application/json", "origin": "http://testserver"}, 200),
    ],
)
def test_predict_takes_json_from_its_own_site_only(open_client: TestClient, headers: dict, status: int) -> None:
    """A page on another site cannot make its visitors' browsers run inference here (a form
    post or a text/plain fetch needs no CORS preflight)."""
    image = [{"mnist": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="}]
    r = open_client.post("/predict", content=json.dumps(image).encode(), headers=headers)
    assert r.status_code == status, r.text
    if status != 200:
        assert r.json()["error"]["code"] in ("unsupported_media_type", "cross_origin")


def test_v2_infer_takes_json_binary_or_no_media_type(open_client: TestClient) -> None:
    raw = json.dumps({"inputs": [IMAGE]}).encode()
    for ctype in ("application/json", "application/octet-stream", None):
        headers = {"content-type": ctype} if ctype else {}
        assert open_client.post(_infer(open_client), content=raw, headers=headers).status_code == 200, ctype
    r = open_client.post(_infer(open_client), content=raw, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and set(r.json()) == {"error"}


def test_header_integers_are_ascii_digits(open_client: TestClient) -> None:
    assert ascii_int("12") == 12 and ascii_int(" 7 ") == 7
    assert ascii_int("²") is None and ascii_int("٣") is None and ascii_int("-1") is None and ascii_int("9" * 30) is None
    raw = json.dumps({"inputs": [IMAGE]}).encode()
    for value in ("²", "١٢", "-5", "1e3"):
        headers = {"inference-header-content-length": value.encode()}  # as the bytes a client sends
        r = open_client.post(_infer(open_client), content=raw, headers=headers)
        assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"], (value, r.text)


def test_gzip_and_deflate_are_checked_whole_and_their_names_in_any_case(open_client: TestClient) -> None:
    raw = json.dumps({"inputs": [IMAGE]}).encode()
    url = _infer(open_client)
    whole = gzip.compress(raw)
    for coding, data in (("GZIP", whole), ("Gzip", whole), ("DEFLATE", zlib.compress(raw)), ("gzip, identity", whole)):
        r = open_client.post(url, content=data, headers={"content-encoding": coding})
        assert r.status_code == 200, (coding, r.text)
    broken = {
        "no trailer": whole[:-8],
        "cut short": whole[: len(whole) // 2],
        "trailing garbage": whole + b"garbage",
        "a second member": whole + gzip.compress(b"{}"),
    }
    for what, data in broken.items():
        r = open_client.post(url, content=data, headers={"content-encoding": "gzip"})
        assert r.status_code == 400 and "gzip" in r.json()["error"], (what, r.status_code, r.text)
    r = open_client.post(url, content=zlib.compress(raw)[:-4], headers={"content-encoding": "deflate"})
    assert r.status_code == 400, r.text
    for coding in ("br", "gzip, gzip", "compress"):
        assert open_client.post(url, content=raw, headers={"content-encoding": coding}).status_code == 415, coding
    assert coding_of(" GZip ") == "gzip" and coding_of(None) == "identity"


@pytest.mark.parametrize("dim", ["1", 1.0, True, None, -1])
def test_tensor_shapes_are_json_integers(open_client: TestClient, dim: Any) -> None:
    tensor = {**IMAGE, "shape": [dim, 1, 8, 8]}
    r = open_client.post(_infer(open_client), json={"inputs": [tensor]})
    assert r.status_code == 400 and "shape" in r.json()["error"], r.text


def test_the_documented_nesting_limit_is_the_enforced_one() -> None:
    assert parse_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    for depth in (MAX_JSON_DEPTH + 1, 150, 250):
        with pytest.raises(ApiError) as e:
            parse_json(b"[" * depth + b"]" * depth)
        assert f"more than {MAX_JSON_DEPTH} levels" in e.value.message, depth


def test_a_body_too_costly_to_parse_is_refused_before_parsing(open_client: TestClient) -> None:
    limits = open_client.app.state.service.json_limits  # type: ignore[attr-defined]
    assert isinstance(limits, JsonLimits) and limits.containers < 100_000
    nested = b"[" + b",".join([b"[0]"] * 200_000) + b"]"
    flat = b"[" + b",".join([b"0"] * (limits.values + 10)) + b"]"
    for raw in (nested, flat):
        for path in ("/predict", _infer(open_client)):
            r = open_client.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 413 and "too large a JSON document" in r.text, (path, r.text[:200])
    # The largest request the model can answer still fits: 256 items of V2 JSON, nested as the shape.
    n = 256
    data = np.zeros((n, 1, 8, 8), np.uint8).tolist()
    r = open_client.post(_infer(open_client), json={"inputs": [{**IMAGE, "shape": [n, 1, 8, 8], "data": data}]})
    assert r.status_code == 200, r.text[:300]


def test_too_many_items_are_refused_before_they_are_validated(open_client: TestClient) -> None:
    many = json.dumps(["x"] * 20_000).encode()
    r = open_client.post("/predict", content=many, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_items", r.text[:300]


def test_large_bodies_are_parsed_off_the_event_loop(open_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = body_module.parse_json

    def spy(raw: bytes, limits: JsonLimits = JsonLimits()) -> Any:
        threads.append(threading.current_thread().name)
        return real(raw, limits)

    monkeypatch.setattr(body_module, "parse_json", spy)
    monkeypatch.setattr("eir_serve.routes.v2.parse_json", spy)
    n = 256
    big = {"inputs": [{**IMAGE, "shape": [n, 1, 8, 8], "data": np.zeros((n, 1, 8, 8), np.uint8).tolist()}]}
    big_raw = json.dumps(big, indent=2).encode()  # valid JSON, over INLINE_BYTES
    assert len(big_raw) > body_module.INLINE_BYTES
    json_type = {"content-type": "application/json"}
    assert open_client.post(_infer(open_client), content=big_raw, headers=json_type).status_code == 200
    assert open_client.post(_infer(open_client), json={"inputs": [IMAGE]}).status_code == 200
    b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="
    padded = json.dumps([{"mnist": b64}]).encode() + b" " * 100_000  # large, yet valid
    r = open_client.post("/predict", content=padded, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert threads[0].startswith("eirserve-parse") and threads[2].startswith("eirserve-parse"), threads
    assert not threads[1].startswith("eirserve-parse"), threads  # a small one stays on the loop: no thread hop


def _send_head(port: int, path: str, length: int, first: bytes = b"[") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    s.sendall(head.encode() + first)
    return s


def _status(s: socket.socket) -> tuple[int, bytes]:
    s.settimeout(10)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return int(got.split(b" ", 2)[1]), got


def test_stalled_uploads_cannot_hold_more_than_the_body_pool(tiny_bundle: Path) -> None:
    """With 256 KiB for bodies in progress, a stalled 150 kB upload holds its share; a second one
    is answered 503 with Retry-After at once, before its body, while small requests still pass."""
    settings = Settings(
        model_path=tiny_bundle, device="cpu", max_body_bytes=200_000, max_inflight_body_bytes=256 * 1024
    )
    with serve_in_thread(settings) as live:
        port = int(live.http.rsplit(":", 1)[1])
        pool = live.app.state.body_pool
        first = _send_head(port, "/predict", 150_000)
        for _ in range(200):  # until the server took the first one's share
            if pool.used:
                break
            threading.Event().wait(0.01)
        assert pool.used == 150_000
        second = _send_head(port, "/predict", 150_000)
        status, raw = _status(second)
        assert status == 503 and b"retry-after: 1" in raw.lower(), raw[:300]
        b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="
        r = httpx.post(f"http://{live.http}/predict", json=[{"mnist": b64}], timeout=10)
        assert r.status_code == 200, r.text
        first.close()
        second.close()
        for _ in range(200):  # the stalled upload's share comes back when it goes
            if pool.used == 0:
                break
            threading.Event().wait(0.01)
        assert pool.used == 0
