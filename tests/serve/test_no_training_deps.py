"""Serving must not need the training-only libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CODE = """
import sys
# As if the training-only libraries were not installed: importing any of them fails.
for name in ("matplotlib", "sklearn", "tqdm", "pytorch_optimizer"):
    sys.modules[name] = None
from fastapi.testclient import TestClient
from eir_serve.app import create_app
from eir_serve.settings import Settings
with TestClient(create_app(Settings(model_path=sys.argv[1], device="cpu"))) as c:
    assert c.get("/ready").status_code == 200
    assert c.post("/predict", json=[{"mnist": "A" * 88}]).status_code in (200, 422)
print("SERVED")
"""


def test_serving_imports_no_training_only_library(tiny_bundle: Path) -> None:
    r = subprocess.run([sys.executable, "-c", CODE, str(tiny_bundle)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "SERVED", r.stdout
