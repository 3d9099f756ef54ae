"""Serving must not need the training-only libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CODE = """
import base64, sys
# As if the training-only libraries were not installed: importing any of them fails.
for name in ("matplotlib", "sklearn", "tqdm", "pytorch_optimizer"):
    sys.modules[name] = None
from fastapi.testclient import TestClient
from eir_serve.app import create_app
from eir_serve.settings import Settings
with TestClient(create_app(Settings(model_path=sys.argv[1], device="cpu"))) as c:
    assert c.get("/ready").status_code == 200
    r = c.post("/predict", json=[{"mnist": base64.b64encode(bytes(64)).decode()}])  # an all-black 8x8 image
    assert r.status_code == 200, r.text
    assert len(base64.b64decode(r.json()["result"][0]["mnist_output"])) == 64 * 4
print("SERVED")
"""


def test_serving_imports_no_training_only_library(tiny_bundle: Path) -> None:
    r = subprocess.run([sys.executable, "-c", CODE, str(tiny_bundle)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "SERVED", r.stdout
