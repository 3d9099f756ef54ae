"""benchmarks/train_throughput.py's rounds: how they are summed up, and a bad --repeats."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module() -> object:
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports proctree from beside itself
    try:
        spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_rounds_are_summed_up_by_their_median() -> None:
    tt = _module()
    runs = [{"wall_s": 40.0}, {"wall_s": 30.0}, {"wall_s": 35.0}]
    assert tt.median_run(runs, "wall_s") == {"wall_s": 35.0}  # type: ignore[attr-defined]
    assert tt.median_run(runs[:2], "wall_s") == {"wall_s": 30.0}  # type: ignore[attr-defined]  # lower middle
    assert tt.median([2.63, 2.29, 2.96]) == 2.63  # type: ignore[attr-defined]
    assert tt.listed([2.63, 2.29]) == " (2.63, 2.29)" and tt.listed([2.63]) == ""  # type: ignore[attr-defined]


def test_repeats_below_one_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--repeats", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--repeats must be at least 1, got 0" in proc.stderr
