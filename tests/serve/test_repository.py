"""Models and versions (repository.py, control.py): a repository of several models, version
policies, per-version readiness, metrics by model and version, model control on request
(Triton's model-repository extension, with tritonclient over HTTP and gRPC), a run served before
its first checkpoint, and the flags' errors."""

from __future__ import annotations

import base64
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from eir_core.manifest import parse_checkpoint_name
from eir_serve.app import create_app
from eir_serve.settings import Settings
from eir_serve.versions import Found, VersionPolicy
from tests.helpers import place_checkpoint
from tests.serve.live import serve_in_thread

pytestmark = pytest.mark.slow
ITEM = {"mnist": base64.b64encode(np.arange(64, dtype=np.uint8).tobytes()).decode()}
V2_ITEM = {"inputs": [{"name": "mnist", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": list(range(64))}]}
LABEL = {"name": "mnist_label.CLASS", "shape": [1], "datatype": "BYTES", "data": ["3"]}


def _wait(what: Callable[[], bool], timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while not what():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)


def _iteration(path: Path) -> str:
    parsed = parse_checkpoint_name(path.name)
    assert parsed is not None
    return str(parsed[0])


@pytest.fixture
def repo(tmp_path: Path, tiny_bundle: Path, tiny_conditional_bundle: Path, checkpoints: list[Path]) -> Path:
    """digits: a run folder of several checkpoints; cond: a folder holding one bundle; ae: a bundle file."""
    root = tmp_path / "models"
    saved = root / "digits" / "saved_models"
    saved.mkdir(parents=True)
    for rank, c in enumerate(checkpoints[:3], start=1):
        place_checkpoint(saved, c, rank)
    (root / "cond").mkdir()
    shutil.copyfile(tiny_conditional_bundle, root / "cond" / "model.safetensors")
    shutil.copyfile(tiny_bundle, root / "ae.safetensors")
    (root / "notes.txt").write_text("not a model")
    return root


def _settings(repo: Path, **kw: Any) -> Settings:
    return Settings(model_repository=repo, device="cpu", **kw)


def _infer(c: TestClient, path: str) -> Any:
    body = {"inputs": [*V2_ITEM["inputs"], LABEL]} if "/cond/" in path else V2_ITEM
    r = c.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------ version policy
def _found(number: int, perf: float) -> Found:
    return Found(str(number), number, perf, Path(f"x_{number}_{perf}"), (0, 0))


def test_version_policies_choose_as_documented() -> None:
    found = [_found(10, 0.5), _found(20, 0.9), _found(30, 0.7), _found(20, 0.95)]
    assert [f.version for f in VersionPolicy.parse("best").choose(found)] == ["20"]
    assert VersionPolicy.parse("best").choose(found)[0].perf == 0.95  # two files of one iteration: the better
    assert [f.version for f in VersionPolicy.parse("latest:2").choose(found)] == ["30", "20"]
    assert [f.version for f in VersionPolicy.parse("latest").choose(found)] == ["30"]
    assert [f.version for f in VersionPolicy.parse("all").choose(found)] == ["30", "20", "10"]
    assert [f.version for f in VersionPolicy.parse("specific:10,30,99").choose(found)] == ["30", "10"]
    for bad in ("latest:0", "newest", "specific:", "specific:a", "all:2", "latest:-1"):
        with pytest.raises(ValueError, match="expected best, latest:N"):
            VersionPolicy.parse(bad)


# ------------------------------------------------------------------ a repository
def test_every_model_of_the_repository_is_served_by_its_name(repo: Path, checkpoints: list[Path]) -> None:
    with TestClient(create_app(_settings(repo))) as c:
        index = c.post("/v2/repository/index").json()
        assert {(r["name"], r["state"]) for r in index} == {("ae", "READY"), ("cond", "READY"), ("digits", "READY")}
        newest = _iteration(checkpoints[2])
        assert [r["version"] for r in index if r["name"] == "digits"] == [newest]  # latest:1 by default
        assert c.get("/v2/models/cond").json()["versions"] == ["1"]  # a bundle not named as a checkpoint
        for name in ("ae", "cond", "digits"):
            assert _infer(c, f"/v2/models/{name}/infer")["model_name"] == name
        assert _infer(c, f"/v2/models/digits/versions/{newest}/infer")["model_version"] == newest
        assert c.get("/v2/models/nope").json() == {
            "error": "unknown model 'nope'; this server's models: ae, cond, digits"
        }
        # The EIR routes serve the default model: the first by name.
        assert c.post("/predict", json=[ITEM]).status_code == 200 and c.get("/info").status_code == 200
        text = c.get("/metrics").text
        for name in ("ae", "digits"):
            assert re.search(rf'^eir_predicted_items_total\{{model="{name}",version="[0-9]+"\}} [12]\.0$', text, re.M)
        assert re.search(rf'^eir_model_ready\{{model="digits",version="{newest}"\}} 1\.0$', text, re.M)


def test_latest_n_serves_each_version_and_unversioned_goes_to_the_newest(repo: Path, checkpoints: list[Path]) -> None:
    policies = {"digits": "latest:2"}
    with TestClient(create_app(_settings(repo, model_version_policies=policies, default_model="digits"))) as c:
        old, new = _iteration(checkpoints[1]), _iteration(checkpoints[2])
        assert c.get("/v2/models/digits").json()["versions"] == [new, old]
        answers = {v: _infer(c, f"/v2/models/digits/versions/{v}/infer") for v in (old, new)}
        assert answers[old]["outputs"][0]["data"] != answers[new]["outputs"][0]["data"]  # different weights
        assert _infer(c, "/v2/models/digits/infer") == {**answers[new], "model_version": new}
        assert c.get(f"/v2/models/digits/versions/{old}/ready").json() == {"ready": True}
        gone = _iteration(checkpoints[0])
        r = c.get(f"/v2/models/digits/versions/{gone}/ready")
        assert r.status_code == 404 and r.json() == {
            "error": f"model 'digits' has no version '{gone}' loaded; loaded: {new}, {old}"
        }
        assert c.get("/info").json()["model"]["checkpoint"].startswith(f"run_checkpoint_{new}_")


def test_specific_and_all(repo: Path, checkpoints: list[Path]) -> None:
    first = _iteration(checkpoints[0])
    with TestClient(
        create_app(_settings(repo, version_policy="all", model_version_policies={"digits": f"specific:{first}"}))
    ) as c:
        assert c.get("/v2/models/digits").json()["versions"] == [first]
        assert c.get("/v2/models/cond").json()["versions"] == ["1"]


# ------------------------------------------------------------------ control on request
@pytest.fixture
def explicit(repo: Path) -> Iterator[Any]:
    with serve_in_thread(_settings(repo, model_control="explicit", load_model="ae,digits")) as live:
        yield live


def test_tritonclient_controls_models_over_http(explicit: Any) -> None:
    c = httpclient.InferenceServerClient(explicit.http)
    index = {r["name"]: r for r in c.get_model_repository_index()}
    assert index["cond"]["state"] == "UNAVAILABLE" and "not loaded" in index["cond"]["reason"]
    assert index["ae"]["state"] == "READY" and c.is_server_ready()  # ready: what should be loaded is
    with pytest.raises(InferenceServerException, match="POST /v2/repository/models/cond/load"):
        c.get_model_metadata("cond")
    c.load_model("cond")
    assert c.is_model_ready("cond") and c.is_model_ready("cond", "1")
    c.unload_model("digits")
    assert not c.is_model_ready("digits")
    with pytest.raises(InferenceServerException, match="'digits' is not loaded"):
        c.get_model_metadata("digits")
    assert [r["name"] for r in c.get_model_repository_index() if r["state"] == "READY"] == ["ae", "cond"]
    c.load_model("digits")
    assert c.is_model_ready("digits")
    with pytest.raises(InferenceServerException, match="no model 'nope' in the repository"):
        c.load_model("nope")
    with pytest.raises(InferenceServerException, match="cannot take a model configuration"):
        c.load_model("ae", config='{"max_batch_size": 8}')


def test_tritonclient_controls_models_over_grpc(explicit: Any) -> None:
    g = grpcclient.InferenceServerClient(explicit.grpc)
    index = g.get_model_repository_index(as_json=True)["models"]
    assert {m["name"]: m["state"] for m in index} == {"ae": "READY", "cond": "UNAVAILABLE", "digits": "READY"}
    g.load_model("cond")
    assert g.is_model_ready("cond", "1")
    g.unload_model("cond")
    assert not g.is_model_ready("cond")
    ready = g.get_model_repository_index(as_json=True)["models"]
    assert "cond" not in {m["name"] for m in ready if m.get("state") == "READY"}
    with pytest.raises(InferenceServerException) as e:
        g.unload_model("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_a_new_model_folder_is_found_by_load(explicit: Any, repo: Path, tiny_bundle: Path) -> None:
    (repo / "later").mkdir()
    shutil.copyfile(tiny_bundle, repo / "later" / tiny_bundle.name)
    c = httpclient.InferenceServerClient(explicit.http)
    c.load_model("later")
    assert c.is_model_ready("later", _iteration(tiny_bundle))


def test_load_and_unload_need_explicit_control_and_the_key(repo: Path) -> None:
    with TestClient(create_app(_settings(repo, api_key="k3y"))) as c:
        assert c.post("/v2/repository/index").status_code == 401
        auth = {"Authorization": "Bearer k3y"}
        assert c.post("/v2/repository/index", headers=auth).status_code == 200
        r = c.post("/v2/repository/models/ae/unload", headers=auth)
        assert r.status_code == 400 and "needs --model-control explicit" in r.json()["error"]
        r = c.post("/v2/repository/index", headers={**auth, "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403  # a page on another site cannot drive the repository
        r = c.post("/v2/repository/index", headers=auth, json={"ready": "yes"})
        assert r.status_code == 400 and r.json() == {"error": "'ready': expected true or false, got 'yes'"}
        # Bounded before the key and before the body: a large body without the key is a 401 from the
        # headers; with it, past 64 KiB is a 413, and a small body of too many values is refused unparsed.
        big = b"[" + b"0," * 40_000 + b"0]"
        assert (
            c.post("/v2/repository/index", content=big, headers={"content-type": "application/json"}).status_code == 401
        )
        r = c.post("/v2/repository/index", content=big, headers={**auth, "content-type": "application/json"})
        assert r.status_code == 413 and "over the limit" in r.json()["error"]
        many = b"[" + b"0," * 5_000 + b"0]"
        r = c.post("/v2/repository/index", content=many, headers={**auth, "content-type": "application/json"})
        assert r.status_code == 413 and "too large a JSON document" in r.json()["error"]


# ------------------------------------------------------------------ poll, broken files, readiness
def test_poll_finds_new_models_and_versions_and_survives_broken_files(repo: Path, checkpoints: list[Path]) -> None:
    settings = _settings(repo, model_control="poll", poll_interval_s=0.05, body_timeout_s=0.5)
    with TestClient(create_app(settings)) as c:
        saved = repo / "digits" / "saved_models"
        broken = saved / "run_checkpoint_999_perf-average=9.0000.safetensors"
        broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{half")
        _wait(lambda: any(r["state"] == "UNAVAILABLE" for r in c.post("/v2/repository/index").json()))
        row = next(r for r in c.post("/v2/repository/index").json() if r["state"] == "UNAVAILABLE")
        assert row["name"] == "digits" and row["version"] == "999" and "not a safetensors bundle" in row["reason"]
        assert _infer(c, "/v2/models/digits/infer")["model_version"] == _iteration(checkpoints[2])  # still served
        broken.unlink()
        staged = place_checkpoint(repo.parent, checkpoints[0], 50)  # then moved in whole, as iteration 1000
        staged.rename(saved / staged.name.replace(f"_{_iteration(staged)}_", "_1000_"))
        _wait(lambda: c.get("/v2/models/digits").json().get("versions") == ["1000"])
        (repo / "ae.safetensors").unlink()
        _wait(lambda: "ae" not in {r["name"] for r in c.post("/v2/repository/index").json()})
        assert c.get("/v2/models/ae").status_code == 404
        models = c.app.state.models  # type: ignore[attr-defined]
        _wait(lambda: not models.retiring)  # every version swapped out or removed is stopped


def test_readiness_all_or_any(repo: Path) -> None:
    (repo / "broken").mkdir()
    (repo / "broken" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{half")
    with TestClient(create_app(_settings(repo))) as c:
        assert c.get("/ready").status_code == 503 and c.get("/v2/health/ready").json() == {"ready": False}
        assert c.post("/v2/models/ae/infer", json=V2_ITEM).status_code == 200  # the others serve
        r = c.get("/v2/models/broken/ready")
        assert r.status_code == 503 and "not a safetensors bundle" in r.json()["error"]
    with TestClient(create_app(_settings(repo, ready_when="any"))) as c:
        assert c.get("/ready").status_code == 200
    shutil.rmtree(repo / "broken")
    (repo / "training" / "saved_models").mkdir(parents=True)  # a run that has no checkpoint yet
    with TestClient(create_app(_settings(repo))) as c:
        assert c.get("/ready").status_code == 200
        assert c.get("/v2/models/training/ready").status_code == 503


def test_a_run_is_served_from_its_first_checkpoint(tmp_path: Path, checkpoints: list[Path]) -> None:
    run = tmp_path / "run"  # not there yet: eirtrain makes it
    settings = Settings(model_path=run, device="cpu", model_control="poll", poll_interval_s=0.05)
    with TestClient(create_app(settings)) as c:
        assert c.get("/ready").status_code == 503
        (run / "saved_models").mkdir(parents=True)
        r = c.post("/predict", json=[ITEM])
        assert r.status_code == 503 and "waiting for the first checkpoint" in r.json()["error"]["message"]
        place_checkpoint(run / "saved_models", checkpoints[0], 1)
        _wait(lambda: c.get("/ready").status_code == 200)
        assert c.post("/predict", json=[ITEM]).status_code == 200
        assert c.get("/info").json()["model"]["training"]["iteration"] == int(_iteration(checkpoints[0]))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({}, "give one of --model-path"),
        ({"model_repository": "missing"}, "--model-repository missing: no such folder"),
        ({"model_repository": ".", "model_path": "x"}, "give one of --model-path"),
        ({"version_policy": "newest"}, "--version-policy 'newest': expected best"),
        ({"default_model": "nope"}, "--default-model 'nope': no such model"),
        ({"model_control": "explicit", "load_model": "ae,nope"}, "--load-model: no model nope"),
        ({"model_control": "explicit", "workers": 2}, "--model-control explicit with --workers 2"),
    ],
)
def test_flags_that_cannot_work_are_refused_with_their_names(
    repo: Path, monkeypatch: pytest.MonkeyPatch, flags: dict[str, Any], message: str
) -> None:
    monkeypatch.chdir(repo.parent)
    base: dict[str, Any] = {"model_repository": repo} if "model_repository" not in flags and flags else {}
    with pytest.raises(ValueError, match=re.escape(message)):
        create_app(Settings(device="cpu", **{**base, **flags}))
