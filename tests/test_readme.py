"""The README's "Using it like EIR" block, run as a newcomer would copy it: activate the venv,
make the data where the configs look, train, inspect the run folder, serve it, ask it."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.realserver import RealServer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def readme_block(marker: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    after = text[text.index(f"<!-- readme-test: {marker}") :]
    block = re.search(r"```bash\n(.*?)```", after, re.S)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


def test_using_it_like_eir_works_as_written(tmp_path: Path) -> None:
    lines = readme_block("using-like-eir")
    assert lines[0] == "source .venv/bin/activate" and lines[-1].startswith("eirserve ")
    # A checkout of our own: the tutorial folder, and .venv pointing at this interpreter's venv.
    shutil.copytree(
        ROOT / "examples" / "tutorial",
        tmp_path / "examples" / "tutorial",
        ignore=shutil.ignore_patterns("runs", "data"),
    )
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIR_SERVE_")}
    script = "set -euo pipefail\n" + "\n".join(lines[:-1]) + "\n"
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert re.search(r"^bundle +.*runs/ae/saved_models/ae_checkpoint_\d+_perf-average=", r.stdout, re.M), r.stdout

    # The last line serves; port 0 (through the environment) lets the OS pick a free port, and
    # gRPC stays off so that nothing else on this machine's 8001 matters.
    serve = "set -euo pipefail\n" + "\n".join([*lines[:2], "exec " + lines[-1]]) + "\n"
    proc = subprocess.Popen(
        ["bash", "-c", serve],
        cwd=tmp_path,
        env={**env, "EIR_SERVE_PORT": "0", "EIR_SERVE_GRPC_PORT": "0"},
        stderr=subprocess.PIPE,
        text=True,
    )
    server = RealServer(proc)  # reads the port it logs, drains its stderr
    try:
        server.wait_ready()  # the port is bound before the model loads; it answers once ready
        img = np.load(tmp_path / "examples/tutorial/data/digits8/mnist_npy/10001.npy")
        got = httpx.post(
            f"{server.url}/predict", json=[{"mnist": base64.b64encode(img.tobytes()).decode()}], timeout=30
        )
        assert got.status_code == 200, got.text
        out = np.frombuffer(base64.b64decode(got.json()["result"][0]["mnist_output"]), "<f4")
        assert out.shape == (64,) and np.isfinite(out).all()
    finally:
        server.stop()
