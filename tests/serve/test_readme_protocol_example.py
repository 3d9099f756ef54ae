"""The README's tritonclient example runs as written against a real server (only the ports change)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from eir_serve.settings import Settings
from tests.serve.live import serve_in_thread

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_tritonclient_example(tiny_conditional_bundle: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "tritonclient" in b)
    with serve_in_thread(Settings(model_path=tiny_conditional_bundle, device="cpu")) as live:
        code = example.replace("127.0.0.1:8000", live.http).replace("127.0.0.1:8001", live.grpc)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(1,", "1,", "8,", "8)"] * 2
