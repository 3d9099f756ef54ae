"""``python -m eir_core.cli.train`` and the renderer end with ``os._exit`` (no interpreter
teardown): whatever a normal exit would still have written must be written all the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import tutorial_configs


def test_renderer_process_draws_every_job_and_reports_failures_before_it_exits(tmp_path: Path) -> None:
    jobs = [
        {"kind": "curve", "path": str(tmp_path / "a.png"), "train": [[1, 1.0], [2, 0.5]], "valid": [], "title": "a"},
        {"kind": "nonsense"},
        {"kind": "curve", "path": str(tmp_path / "b.png"), "train": [], "valid": [[2, 0.5], [4, 0.2]], "title": "b"},
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "eir_core.train.render"],
        input="".join(json.dumps(j) + "\n" for j in jobs),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "eir renderer: ValueError: unknown job kind 'nonsense'" in proc.stderr
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000


def test_train_module_exit_keeps_exit_code_stderr_and_the_log_file(tmp_path: Path, digits_dir: Path) -> None:
    run = tmp_path / "run"
    args = tutorial_configs(tmp_path, digits_dir, run, conditional=False)
    cmd = [sys.executable, "-m", "eir_core.cli.train", *args, "--globals.basic_experiment.n_epochs=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "INFO done: " in proc.stderr
    log = (run / "logging_history.log").read_text()
    assert log.splitlines()[-1].split(" INFO ")[-1].startswith("done: "), log[-500:]  # flushed and closed
    assert list((run / "saved_models").glob("*.safetensors"))
    assert (run / "training_curve_LOSS_1.png").stat().st_size > 1000  # the renderer was waited for
    # An error still exits with its code and its message.
    bad = subprocess.run([*cmd, "--globals.basic_experiment.valid_size=0"], capture_output=True, text=True, timeout=240)
    assert bad.returncode == 2 and "valid_size" in bad.stderr, bad.stderr
