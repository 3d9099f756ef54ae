"""eir_serve.client: Client and AsyncClient in-process (httpx transports), and once against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from eir_core.predict import Predictor
from eir_serve.app import create_app
from eir_serve.client import AsyncClient, Client, EirServeError
from eir_serve.settings import Settings
from tests.serve.realserver import eirserve


@pytest.fixture(scope="module")
def cond_app_client(tiny_conditional_bundle: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=tiny_conditional_bundle, device="cpu"))) as c:
        yield c


def image(digits_dir: Path, sid: int = 10001) -> np.ndarray:
    return np.load(digits_dir / "mnist_npy" / f"{sid}.npy")


def test_client_predicts_what_the_predictor_does(
    cond_app_client: TestClient, tiny_conditional_bundle: Path, digits_dir: Path
) -> None:
    items = [{"mnist": image(digits_dir), "mnist_label": {"CLASS": "3"}}, {"mnist_label": {"CLASS": np.int64(7)}}]
    with Client("http://testserver", http=cond_app_client) as c:
        assert c.info()["inputs"]["mnist"]["dtype"] == "|u1"
        out = c.predict(items, seed=11)
        scale = c.info()["model"]["noise_scale"]  # the server's, for the left-out image
    direct = Predictor.from_path(tiny_conditional_bundle, device="cpu").predict(
        [items[0], {"mnist_label": {"CLASS": "7"}}], seeds=[11, 12], noise_scale=scale
    )
    assert len(out) == 2
    for got, want in zip(out, direct, strict=True):
        assert got["mnist_output"].shape == (1, 8, 8) and got["mnist_output"].dtype == np.float32
        np.testing.assert_allclose(got["mnist_output"], want["mnist_output"], rtol=1e-4, atol=1e-3)
    out[0]["mnist_output"] += 1  # the answer's arrays are the caller's to change


def test_client_passes_a_noise_scale(cond_app_client: TestClient, tiny_conditional_bundle: Path) -> None:
    label = [{"mnist_label": {"CLASS": "4"}}]
    predictor = Predictor.from_path(tiny_conditional_bundle, device="cpu")
    with Client("http://testserver", http=cond_app_client) as c:
        for scale in (0.0, 2.5):
            got = c.predict(label, seed=3, noise_scale=scale)[0]["mnist_output"]
            want = predictor.predict([{"mnist_label": {"CLASS": "4"}}], seeds=[3], noise_scale=scale)[0]
            np.testing.assert_allclose(got, want["mnist_output"], rtol=1e-4, atol=1e-3)
        with pytest.raises(EirServeError) as e:
            c.predict(label, noise_scale=-1.0)
        assert e.value.field == "noise_scale"


def test_client_converts_to_the_model_dtype_only_when_exact(cond_app_client: TestClient, digits_dir: Path) -> None:
    img = image(digits_dir)
    with Client("http://testserver", http=cond_app_client) as c:
        exact = c.predict([{"mnist": img.astype(np.float64), "mnist_label": {"CLASS": "1"}}], seed=1)
        same = c.predict([{"mnist": img, "mnist_label": {"CLASS": "1"}}], seed=1)
        np.testing.assert_array_equal(exact[0]["mnist_output"], same[0]["mnist_output"])
        with pytest.raises(ValueError, match="'mnist': the model takes uint8"):
            c.predict([{"mnist": img / 255.0, "mnist_label": {"CLASS": "1"}}])


def test_client_raises_the_servers_message_and_field(cond_app_client: TestClient, digits_dir: Path) -> None:
    with Client("http://testserver", http=cond_app_client) as c:
        with pytest.raises(EirServeError) as e:
            c.predict([{"mnist_label": {"CLASS": "3"}}, {"mnist_label": {"CLASS": "12"}}])
        assert e.value.status == 422 and e.value.code == "invalid_input"
        assert e.value.item == 1 and e.value.field == "mnist_label.CLASS"
        assert "unknown category '12'" in e.value.message and "unknown category" in str(e.value)
        with pytest.raises(EirServeError) as e:
            c.predict([{"mnist": image(digits_dir)[:, :4]}])  # half an image
        assert e.value.field == "mnist" and "expected 64 bytes" in e.value.message


def test_async_client_in_process(cond_app_client: TestClient) -> None:
    app = cond_app_client.app  # started (lifespan run) by the TestClient

    async def scenario() -> list[list[dict[str, np.ndarray]]]:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))  # type: ignore[arg-type]
        async with http, AsyncClient("http://testserver", http=http) as c:
            assert (await c.info())["outputs"]["mnist_output"]["shape"] == [1, 8, 8]
            answers = await asyncio.gather(*[c.predict([{"mnist_label": {"CLASS": str(d)}}], seed=5) for d in range(4)])
            with pytest.raises(EirServeError) as e:
                await c.predict([{"nope": np.zeros(3)}])
            assert e.value.field == "nope"
            return answers

    answers = asyncio.run(scenario())
    with Client("http://testserver", http=cond_app_client) as c:
        for d, got in enumerate(answers):
            want = c.predict([{"mnist_label": {"CLASS": str(d)}}], seed=5)
            np.testing.assert_allclose(got[0]["mnist_output"], want[0]["mnist_output"], rtol=1e-4, atol=1e-3)


@pytest.mark.e2e
@pytest.mark.slow
def test_client_against_a_real_server(tiny_bundle: Path, digits_dir: Path) -> None:
    img = image(digits_dir)
    with eirserve(tiny_bundle) as server, Client(server.url) as c:
        out = c.predict([{"mnist": img}, {"mnist": image(digits_dir, 10002)}])
        assert [o["mnist_output"].shape for o in out] == [(1, 8, 8), (1, 8, 8)]
        want = Predictor.from_path(tiny_bundle, device="cpu").predict([{"mnist": img}], seeds=[0])
        np.testing.assert_allclose(out[0]["mnist_output"], want[0]["mnist_output"], rtol=1e-4, atol=1e-3)
        assert c.predict([{"mnist": img.astype(np.float32)}])[0]["mnist_output"].shape == (1, 8, 8)
        with pytest.raises(EirServeError) as e:
            c.predict([{"mnist_typo": img}])
        assert e.value.status == 422 and e.value.field == "mnist_typo" and "unknown input" in e.value.message
