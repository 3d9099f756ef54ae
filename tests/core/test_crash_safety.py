"""SIGKILL `eirtrain` at random moments (and during checkpoint writes): every checkpoint left
behind loads, no temporary file passes for a checkpoint, and resuming finishes the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eir_core.bundle import load_bundle
from tests.helpers import tutorial_configs

pytestmark = [pytest.mark.slow]
EXTRA = [
    "--globals.basic_experiment.n_epochs=6",
    "--globals.evaluation_checkpoint.sample_interval=4",
    "--globals.evaluation_checkpoint.checkpoint_interval=4",
    "--globals.evaluation_checkpoint.n_saved_models=2",
    "--globals.evaluation_checkpoint.saved_result_detail_level=4",
]


def _cmd(args: list[str], mode: str) -> list[str]:
    return [sys.executable, "-m", "eir_core.cli.train", *args, *EXTRA, mode]


def _kill_during_write(proc: subprocess.Popen[bytes], folder: Path, deadline_s: float) -> bool:
    """SIGKILL as soon as a checkpoint's temporary file exists; True if one was caught."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and proc.poll() is None:
        if folder.is_dir() and any(n.endswith(".tmp") for n in os.listdir(folder)):
            proc.send_signal(signal.SIGKILL)
            return True
    proc.send_signal(signal.SIGKILL)
    return False


def _final_loss(run: Path) -> float:
    return float((run / "validation_average_history.log").read_text().strip().splitlines()[-1].split(",")[1])


def test_sigkill_at_random_moments_then_resume(tmp_path: Path, digits_dir: Path) -> None:
    run = tmp_path / "run"
    args = tutorial_configs(tmp_path, digits_dir, run, conditional=False)
    rng = np.random.default_rng(0)
    caught_writes = 0
    for k in range(6):
        mode = "--resume" if (run / "resume" / "state.safetensors").is_file() else "--overwrite"
        proc = subprocess.Popen(_cmd(args, mode), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if k % 2 == 0:
            caught_writes += _kill_during_write(proc, run / "saved_models", deadline_s=15)
        else:
            time.sleep(float(rng.uniform(2.5, 5.0)))  # a random moment, not a readiness wait
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for f in (run / "saved_models").glob("*.safetensors"):
            assert load_bundle(f).manifest["training"]["iteration"] > 0  # every checkpoint is whole
        assert not [
            p for p in (run / "saved_models").iterdir() if p.suffix == ".safetensors" and p.name.startswith(".")
        ]
    assert caught_writes >= 1, "no kill landed during a checkpoint write"

    mode = "--resume" if (run / "resume" / "state.safetensors").is_file() else "--overwrite"
    done = subprocess.run(_cmd(args, mode), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list((run / "saved_models").glob(".*.tmp"))  # resume removed interrupted writes
    final = [p for p in (run / "saved_models").glob("*.safetensors") if "_checkpoint_144_" in p.name]
    assert final and load_bundle(final[0]).manifest["training"]["iteration"] == 144

    clean = tmp_path / "clean"
    ref = subprocess.run(_cmd(tutorial_configs(tmp_path / "c", digits_dir, clean, conditional=False)
                              if (tmp_path / "c").mkdir() is None else [], "--overwrite"),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    # Same data order and the restored RNG: the interrupted run ends close to the clean one.
    assert abs(_final_loss(run) - _final_loss(clean)) / _final_loss(clean) < 0.25
