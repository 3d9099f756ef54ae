"""The optional API key: inference routes need `Authorization: Bearer <key>`, probes never do."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Page

from eir_serve.app import create_app
from eir_serve.auth import check_bearer, resolve_api_key
from eir_serve.settings import Settings
from tests.serve.realserver import EIRSERVE, eirserve
from tests.serve.test_web_page import NON_BLANK, browser_page  # noqa: F401  (the browser fixture)

KEY = "k3y-For_tests.0123456789"


def test_check_bearer_accepts_exactly_the_key() -> None:
    assert check_bearer(None, None) and check_bearer("anything", None)  # no key configured: open
    assert check_bearer(f"Bearer {KEY}", KEY) and check_bearer(f"bearer {KEY}", KEY)
    for bad in (None, "", KEY, f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer ", f"Token {KEY}"):
        assert not check_bearer(bad, KEY), bad


def test_key_from_file_env_or_flag_and_clear_errors(tmp_path: Path, tiny_bundle: Path) -> None:
    f = tmp_path / "api-key"
    f.write_text(KEY + "\n")  # as `kubectl create secret --from-file` or an editor leaves it
    assert resolve_api_key(Settings(model_path=tiny_bundle, api_key_file=f)) == KEY
    assert resolve_api_key(Settings(model_path=tiny_bundle, api_key=KEY)) == KEY
    assert resolve_api_key(Settings(model_path=tiny_bundle)) is None
    with pytest.raises(ValueError, match="missing"):
        resolve_api_key(Settings(model_path=tiny_bundle, api_key_file=tmp_path / "missing"))
    with pytest.raises(ValueError, match="only one"):
        resolve_api_key(Settings(model_path=tiny_bundle, api_key=KEY, api_key_file=f))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="non-empty"):
        resolve_api_key(Settings(model_path=tiny_bundle, api_key_file=tmp_path / "empty"))
    r = subprocess.run(
        [*EIRSERVE, "--model-path", str(tiny_bundle), "--api-key-file", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "api_key_file" in r.stderr and "missing" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def keyed(tiny_bundle: Path) -> Iterator[TestClient]:
    env = {k: v for k, v in os.environ.items()}
    os.environ["EIR_SERVE_API_KEY"] = KEY  # the environment variable, as the manifests set it
    try:
        app = create_app(Settings(model_path=tiny_bundle, device="cpu"))  # type: ignore[call-arg]
    finally:
        os.environ.clear()
        os.environ.update(env)
    with TestClient(app) as c:
        yield c


def test_inference_needs_the_key_and_probes_do_not(keyed: TestClient, digits_dir: Path) -> None:
    img = np.load(digits_dir / "mnist_npy" / "10001.npy")
    payload = [{"mnist": base64.b64encode(img.tobytes()).decode()}]
    name = keyed.get("/info").json()["model"]["name"]  # /info stays open (the web page reads it first)
    v2 = {"inputs": [{"name": "mnist", "shape": [1, 1, *img.shape], "datatype": "UINT8", "data": img.ravel().tolist()}]}
    for path, body in (("/predict", payload), (f"/v2/models/{name}/infer", v2)):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
            r = keyed.post(path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            err = r.json()["error"]
            if path.startswith("/v2/"):  # the protocol's error: the message as a string
                assert isinstance(err, str) and "Authorization: Bearer" in err
            else:
                assert err["code"] == "unauthorized" and "Authorization: Bearer" in err["message"]
        r = keyed.post(path, json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200, (path, r.text)
    for path in ("/health", "/ready", "/v2/health/ready", "/v2/health/live", "/metrics", "/info", "/", "/v2"):
        assert keyed.get(path).status_code == 200, path
    assert 'status="401"' in keyed.get("/metrics").text


def test_key_is_off_by_default(client: TestClient, digits_dir: Path) -> None:
    img = np.load(digits_dir / "mnist_npy" / "10001.npy")
    assert client.post("/predict", json=[{"mnist": base64.b64encode(img.tobytes()).decode()}]).status_code == 200


@pytest.mark.e2e
@pytest.mark.slow
def test_web_page_asks_for_the_key(tiny_conditional_bundle: Path, browser_page: tuple[Page, list[str]]) -> None:  # noqa: F811
    page, errors = browser_page
    prompts: list[str] = []

    def answer(dialog):  # type: ignore[no-untyped-def]
        prompts.append(dialog.message)
        dialog.accept("wrong" if len(prompts) == 1 else KEY)

    with eirserve(tiny_conditional_bundle, env={"EIR_SERVE_API_KEY": KEY}) as server:
        url = server.url
        page.on("dialog", answer)
        page.goto(url + "/")
        page.wait_for_function("document.querySelectorAll('#digit option').length === 10", timeout=20_000)
        page.select_option("#digit", "4")
        page.fill("#count", "2")
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('#gallery canvas').length === 2", timeout=20_000)
        assert all(c.evaluate(NON_BLANK) > 5 for c in page.query_selector_all("#gallery canvas"))
        assert len(prompts) == 2 and "key" in prompts[0].lower() and "not accepted" in prompts[1].lower(), prompts
        page.click("#go")  # the key is remembered for the page's session
        page.wait_for_function("document.querySelectorAll('#gallery canvas').length === 2", timeout=20_000)
        assert len(prompts) == 2
        assert [e for e in errors if "401" not in e] == []  # the browser logs the refused first try
        page.remove_listener("dialog", answer)
