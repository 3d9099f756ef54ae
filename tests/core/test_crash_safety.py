"""SIGKILL ``eirtrain`` mid-write of a checkpoint, between its write and its rename, and at
moments read from its own log: every checkpoint left behind loads, no temporary file passes for
a checkpoint, and resuming finishes the run with exactly the numbers of an uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from eir_core.bundle import load_bundle
from tests.helpers import tutorial_configs

pytestmark = [pytest.mark.slow]
EXTRA = [
    "--globals.basic_experiment.n_epochs=3",  # 72 iterations: a checkpoint, samples and a validation every 6
    "--globals.evaluation_checkpoint.sample_interval=6",
    "--globals.evaluation_checkpoint.checkpoint_interval=6",
    "--globals.evaluation_checkpoint.n_saved_models=2",
    "--globals.evaluation_checkpoint.saved_result_detail_level=4",
    "--no-pbar",
]

# Runs eirtrain in a process that SIGKILLs itself inside the atomic write of the N-th
# checkpoint: after half of its bytes ("half"), or after fsync, just before the rename ("rename").
KILLER = """
import os, signal, sys
from eir_core import _fs
where, nth = sys.argv[1], int(sys.argv[2])
seen = {"n": 0}
real_replace, real_fdopen = os.replace, os.fdopen

def is_ckpt(path):
    return "_checkpoint_" in str(path)

def replace(src, dst, *a, **k):
    if is_ckpt(dst):
        seen["n"] += 1
        if where == "rename" and seen["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)

class HalfWriter:
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)
    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name):
        return getattr(self.f, name)

def fdopen(fd, *a, **k):
    f = real_fdopen(fd, *a, **k)
    if where == "half" and is_ckpt(f.name if isinstance(f.name, str) else os.readlink(f"/proc/self/fd/{fd}")):
        seen["n"] += 1
        if seen["n"] == nth:
            return HalfWriter(f)
    return f

_fs.os.replace = replace
_fs.os.fdopen = fdopen
from eir_core.cli.train import main
sys.exit(main(sys.argv[3:]))
"""


def _cmd(args: list[str], mode: str) -> list[str]:
    return [sys.executable, "-m", "eir_core.cli.train", *args, *EXTRA, *([mode] if mode else [])]


def _killed_at(where: str, nth: int, args: list[str], mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", KILLER, where, str(nth), *args, *EXTRA, *([mode] if mode else [])],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _validation_log(run: Path) -> list[str]:
    return (run / "validation_average_history.log").read_text().strip().splitlines()


def _check_folder(run: Path) -> None:
    for f in (run / "saved_models").glob("*.safetensors"):
        if not f.name.startswith("."):
            assert load_bundle(f).manifest.training.iteration > 0  # every checkpoint is whole
    assert not [p for p in (run / "saved_models").iterdir() if p.suffix == ".safetensors" and p.name.startswith(".")]


def _kill_after_log_line(args: list[str], mode: str, text: str) -> None:
    """SIGKILL as soon as the run logs ``text`` (read from its stderr, no timing guess)."""
    import signal

    proc = subprocess.Popen(_cmd(args, mode), stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if text in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before logging {text!r}"


@pytest.mark.long
def test_sigkill_mid_write_and_mid_run_then_resume_equals_a_clean_run(tmp_path: Path, digits_dir: Path) -> None:
    run = tmp_path / "run"
    args = tutorial_configs(tmp_path, digits_dir, run, conditional=False)

    r = _killed_at("half", 3, args, "")  # half of the 3rd checkpoint's bytes written
    assert r.returncode == -9, r.stderr[-2000:]
    assert list((run / "saved_models").glob(".*.tmp")), "the kill did not land inside a checkpoint write"
    _check_folder(run)

    r = _killed_at("rename", 2, args, "--resume")  # whole file written and synced, not renamed yet
    assert r.returncode == -9, r.stderr[-2000:]
    _check_folder(run)

    _kill_after_log_line(args, "--resume", "iteration 42: validation loss")
    _check_folder(run)

    done = subprocess.run(_cmd(args, "--resume"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list((run / "saved_models").glob(".*.tmp"))  # resume removed interrupted writes
    final = [p for p in (run / "saved_models").glob("*.safetensors") if "_checkpoint_72_" in p.name]
    assert final and load_bundle(final[0]).manifest.training.iteration == 72

    clean = tmp_path / "clean"
    (tmp_path / "c").mkdir()
    ref = subprocess.run(
        _cmd(tutorial_configs(tmp_path / "c", digits_dir, clean, conditional=False), ""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    # Same data order, restored optimizer, schedule and random streams: the interrupted run's
    # validations at the iterations it reached after its last resume are the clean run's.
    got, want = _validation_log(run), _validation_log(clean)
    assert len(want) == 1 + 72 // 6 and want[-1].startswith("72,")
    assert got[-1] == want[-1]
    assert got[-5:] == want[-5:]
    # ... and the training history, through all four interruptions, holds every iteration once.
    train = (run / "train_average_history.log").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in train] == list(range(1, 73))
