"""The docs' Open Inference Protocol examples run as written against a real server: the
tritonclient example of the Serving page (only the ports change) against a model named as the
run the pages train and serve there, and the KServe curl and tritonclient examples of the
Deploying page against a model named as deploy/'s training names it, with an API key."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eir_serve.settings import Settings
from tests.helpers import bundle_named
from tests.serve.live import serve_in_thread

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("run_docs", ROOT / "scripts" / "run_docs.py")
assert _spec is not None and _spec.loader is not None
rd = importlib.util.module_from_spec(_spec)
sys.modules["run_docs"] = rd
_spec.loader.exec_module(rd)


def page_blocks(name: str) -> list:
    page = ROOT / "docs" / name
    return [s for s in rd.parse_page(page.read_text(), name) if isinstance(s, rd.Block)]


def test_serving_pages_tritonclient_example(tiny_conditional_bundle: Path, tmp_path: Path) -> None:
    blocks = page_blocks("serving.md")
    example = next(b for b in blocks if b.kind == "python" and "tritonclient" in b.code)
    served = [b for b in blocks[: blocks.index(example)] if b.directive.background][-1]
    # The model it calls is the run served before it, which the Training page trains.
    run = re.search(r"--model-path runs/(\w+)", served.code)
    assert run is not None
    name = run.group(1)
    assert f'infer("{name}"' in example.code and example.code.count(f'"{name}"') == 2
    assert f"output_folder=runs/{name}" in (ROOT / "docs" / "training.md").read_text()

    bundle = bundle_named(tiny_conditional_bundle, tmp_path, name)
    with serve_in_thread(Settings(model_path=bundle, device="cpu")) as live:
        code = example.code.replace("127.0.0.1:8000", live.http).replace("127.0.0.1:8001", live.grpc)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(1,", "1,", "8,", "8)"] * 2


def test_deploying_pages_kserve_examples(tiny_bundle: Path, tmp_path: Path) -> None:
    blocks = page_blocks("deploying.md")
    curl = next(b for b in blocks if "INGRESS_HOST" in b.code and b.kind == "shell")
    python = next(b for b in blocks if "INGRESS_HOST" in b.code and b.kind == "python")
    # deploy/'s training names its run tutorial_<TUTORIAL_RUN>_<SIZE>, autoencoder and 8 by default.
    once = (ROOT / "docker" / "train_once.sh").read_text()
    assert "kind=${TUTORIAL_RUN:-autoencoder}" in once and "size=${SIZE:-8}" in once
    name = "tutorial_autoencoder_8"
    assert f"/v2/models/{name}/infer" in curl.code and f'infer("{name}"' in python.code

    key = "k" * 32
    bundle = bundle_named(tiny_bundle, tmp_path, name)
    with serve_in_thread(Settings(model_path=bundle, device="cpu", api_key=key)) as live:
        host, port = live.http.split(":")
        env = {
            **os.environ,
            "INGRESS_HOST": host,
            "INGRESS_PORT": port,
            "SERVICE_HOSTNAME": "eir-tutorial.example",
            "KEY": key,
        }
        # The curl call as written; SERVICE_HOSTNAME comes from the environment, not from kubectl.
        call = curl.code.split("\n", 1)[1]
        assert call.startswith("curl ")
        r = subprocess.run(["bash", "-c", call], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        assert answer["model_name"] == name and answer["outputs"][0]["shape"] == [1, 1, 8, 8], answer
        p = subprocess.run([sys.executable, "-c", python.code], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "(1, 1, 8, 8)"
        # Without the key, the same call is refused.
        denied = subprocess.run(["bash", "-c", call], env={**env, "KEY": "wrong"}, capture_output=True, text=True)
        assert "error" in json.loads(denied.stdout) and "outputs" not in denied.stdout, denied.stdout
