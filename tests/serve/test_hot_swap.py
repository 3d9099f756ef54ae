"""``--model-control poll``: a run folder served while better checkpoints arrive (watch.py).

The checkpoints are real ones, from one short eirtrain run that keeps several; each is copied
into the watched folder under a name that makes it the best so far, as eirtrain names a better
checkpoint."""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from eir_serve.app import create_app
from eir_serve.metrics import Metrics
from eir_serve.runtime import describe, load_predictor, resolve_runtime
from eir_serve.service import ModelService
from eir_serve.settings import Settings
from tests.helpers import place_checkpoint

pytestmark = pytest.mark.slow
FAILED_ONCE = re.compile(r'^eir_model_swaps_total\{model="[^"]+",result="failed"\} 1\.0$', re.M)
ITEM = {"mnist": base64.b64encode(np.arange(64, dtype=np.uint8).tobytes()).decode()}


def _expected(checkpoint: Path) -> bytes:
    """What the server's own runtime gives for ``checkpoint`` (the torch runtime here: the
    earlier checkpoints of a run carry no ONNX graph)."""
    settings = Settings(model_path=checkpoint, device="cpu")
    service = ModelService(
        load_predictor(settings, checkpoint, resolve_runtime(settings, checkpoint)), settings, Metrics()
    )
    out = service.predictor.predict(service.decode_items([ITEM]), [0])[0]["mnist_output"]
    return np.ascontiguousarray(out, "<f4").tobytes()


def _close(got: bytes, want: bytes) -> bool:
    """The same answer to float tolerance: a swapped-in model runs eager, the first one traced."""
    return bool(np.allclose(np.frombuffer(got, "<f4"), np.frombuffer(want, "<f4"), rtol=1e-5, atol=1e-4))


def _wait(what: Callable[[], bool], timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while not what():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)


@pytest.fixture
def watched(tmp_path: Path, checkpoints: list[Path]) -> Iterator[tuple[TestClient, Path]]:
    saved = tmp_path / "run" / "saved_models"
    saved.mkdir(parents=True)
    place_checkpoint(saved, checkpoints[0], 1)
    settings = Settings(
        model_path=tmp_path / "run", device="cpu", model_control="poll", poll_interval_s=0.05, body_timeout_s=0.5
    )
    with TestClient(create_app(settings)) as c:
        yield c, saved


def _answer(c: TestClient) -> bytes:
    r = c.post("/predict", params={"seed": 0}, json=[ITEM])
    assert r.status_code == 200, r.text
    return base64.b64decode(r.json()["result"][0]["mnist_output"])


def test_a_better_checkpoint_is_served_and_info_says_which(
    watched: tuple[TestClient, Path], checkpoints: list[Path]
) -> None:
    c, saved = watched
    assert _answer(c) == _expected(checkpoints[0])
    first = c.get("/info").json()["model"]
    target = place_checkpoint(saved, checkpoints[-1], 2)
    _wait(lambda: c.get("/info").json()["model"]["checkpoint"] == target.name)
    model = c.get("/info").json()["model"]
    assert model["training"]["iteration"] > first["training"]["iteration"]
    assert _close(_answer(c), _expected(checkpoints[-1])) and not _close(_answer(c), _expected(checkpoints[0]))
    # swapped-in models run eager on PyTorch (TorchScript would keep ~12 MB per load), or on ONNX Runtime
    assert "torchscript" not in describe(c.app.state.service.predictor)  # type: ignore[attr-defined]
    assert re.search(r'^eir_model_swaps_total\{model="[^"]+",result="ok"\} 1\.0$', c.get("/metrics").text, re.M)


def test_a_checkpoint_that_cannot_load_never_replaces_the_served_one(
    watched: tuple[TestClient, Path], checkpoints: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    c, saved = watched
    bad = saved / "run_checkpoint_99_perf-average=5.0000.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{half a header")
    _wait(lambda: FAILED_ONCE.search(c.get("/metrics").text) is not None)
    assert c.get("/info").json()["model"]["checkpoint"] != bad.name
    assert _answer(c) == _expected(checkpoints[0])
    assert any("not loaded, still serving" in r.getMessage() for r in caplog.records)
    time.sleep(0.3)  # several polls: the same broken file is not tried again
    assert FAILED_ONCE.search(c.get("/metrics").text)
    bad.unlink()
    target = place_checkpoint(saved, checkpoints[1], 6)
    _wait(lambda: c.get("/info").json()["model"]["checkpoint"] == target.name)
    assert _close(_answer(c), _expected(checkpoints[1]))


def test_swaps_under_load_fail_no_request_and_release_old_versions(
    watched: tuple[TestClient, Path], checkpoints: list[Path]
) -> None:
    c, saved = watched
    wanted = {_expected(p) for p in checkpoints}
    failures: list[str] = []
    answers: set[bytes] = set()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = c.post("/predict", params={"seed": 0}, json=[ITEM])
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                answers.add(base64.b64decode(r.json()["result"][0]["mnist_output"]))

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for k in range(8):  # each swap to the next checkpoint, round and round
            target = place_checkpoint(saved, checkpoints[(k + 1) % len(checkpoints)], 10 + k)
            _wait(lambda target=target: c.get("/info").json()["model"]["checkpoint"] == target.name)  # type: ignore[misc]
            for old in saved.glob("*.safetensors"):
                if old != target:
                    old.unlink()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    # every answer is one version's (to float tolerance: batch composition changes the last bits),
    # and the requests saw at least three of them
    versions = [np.frombuffer(w, "<f4") for w in wanted]
    seen = set()
    for a in answers:
        which = [i for i, v in enumerate(versions) if np.allclose(np.frombuffer(a, "<f4"), v, rtol=1e-4, atol=1e-3)]
        assert which, "an answer no version gives"
        seen.update(which)
    assert len(seen) >= 3
    watcher = c.app.state.models  # type: ignore[attr-defined]
    # the versions swapped out are stopped once no request can still hold them (body deadline + margin)
    _wait(lambda: not watcher.retiring)
    assert watcher.released == 8 and any(_close(_answer(c), w) for w in wanted)


def test_poll_needs_a_run_folder(tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match="--model-control poll watches a run folder"):
        create_app(Settings(model_path=tiny_bundle, device="cpu", model_control="poll"))
