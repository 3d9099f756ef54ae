"""The forked read-ahead gives the trainer exactly what reading the files itself would, and
anything going wrong in the child only means the trainer reads the files itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eir_core.data import read_ahead
from eir_core.data.arrays import open_array_source
from tests.helpers import tutorial_configs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the read-ahead forks a child on Linux only")


def _folder(path: Path, n: int, shape: tuple[int, ...], dtype: type, sub: bool = False) -> Path:
    rng = np.random.default_rng(n)
    for i in range(n):
        where = path / f"part{i % 2}" if sub else path
        where.mkdir(parents=True, exist_ok=True)
        np.save(where / f"id{i:03d}.npy", (rng.random(shape) * 250).astype(dtype))
    return path


def _same(got: object, path: Path) -> None:
    want = open_array_source(path)
    want.load_all()
    assert got is not None
    for name in ("ids", "paths", "shape", "original_shape", "dtype"):
        assert getattr(got, name) == getattr(want, name), name
    assert str(got.source) == str(want.source)  # type: ignore[attr-defined]
    assert got.cache is not None and want.cache is not None  # type: ignore[attr-defined]
    assert got.cache.dtype == want.cache.dtype and got.cache.shape == want.cache.shape  # type: ignore[attr-defined]
    np.testing.assert_array_equal(got.cache, want.cache)  # type: ignore[attr-defined]


def test_child_reads_what_the_parent_would(tmp_path: Path) -> None:
    # Several sources in one memory file: the second and third start on later pages (odd sizes),
    # one is nested, one is a text file listing .npy paths, one is a float source, one is missing.
    a = _folder(tmp_path / "a", 37, (3, 5), np.uint8, sub=True)
    b = _folder(tmp_path / "b", 2100, (1, 7, 9), np.float32)  # >= 2000 files: the threaded reader
    c = tmp_path / "c.txt"
    c.write_text("\n".join(str(p) for p in sorted((tmp_path / "a" / "part1").glob("*.npy"))) + "\n")
    missing = tmp_path / "nothing_here"
    ahead = read_ahead.fork_reader({read_ahead.source_key(p): p for p in (a, b, c, missing)})
    _same(ahead.take(read_ahead.source_key(b)), b)
    _same(ahead.take(read_ahead.source_key(a)), a)
    _same(ahead.take(read_ahead.source_key(c)), c)
    assert ahead.take(read_ahead.source_key(missing)) is None  # the parent reads it and reports the error
    assert ahead.take(read_ahead.source_key(a)) is None  # each source is handed over once
    with pytest.raises(ChildProcessError):
        os.waitpid(ahead.pid, os.WNOHANG)  # the child was reaped


def test_failed_child_means_reading_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _folder(tmp_path / "a", 5, (4,), np.uint8)

    def broken(*_: object) -> None:
        raise MemoryError("the child ran out of memory")

    monkeypatch.setattr(read_ahead, "_read_into", broken)
    ahead = read_ahead.fork_reader({read_ahead.source_key(a): a})
    assert ahead.take(read_ahead.source_key(a)) is None


def test_discard_stops_a_child_that_still_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _folder(tmp_path / "a", 5, (4,), np.uint8)
    monkeypatch.setattr(read_ahead, "_read_into", lambda *_: time.sleep(60))
    ahead = read_ahead.fork_reader({read_ahead.source_key(a): a})
    t0 = time.monotonic()
    ahead.discard()
    assert time.monotonic() - t0 < 10
    with pytest.raises(ChildProcessError):
        os.waitpid(ahead.pid, os.WNOHANG)
    assert ahead.take(read_ahead.source_key(a)) is None


def test_no_fork_once_pytorch_is_loaded(tmp_path: Path) -> None:
    import torch  # noqa: F401  - as in this test process: forking now could inherit OpenMP's threads

    assert not read_ahead.usable()
    assert read_ahead.start([_folder(tmp_path / "a", 3, (4,), np.uint8)]) is None
    assert read_ahead.take(read_ahead.source_key(tmp_path / "a")) is None


@pytest.mark.long
def test_eirtrain_uses_it_and_trains_the_same(tmp_path: Path, digits_dir: Path) -> None:
    """A fresh eirtrain process reads the files in its child (a debug line says so) and its run is
    the same as that of a process that read the files itself (this test process: PyTorch loaded)."""
    from eir_core.cli.train import main

    runs = {}
    for name in ("forked", "in_process"):
        run = tmp_path / name
        (tmp_path / f"cfg_{name}").mkdir()
        args = [
            *tutorial_configs(tmp_path / f"cfg_{name}", digits_dir, run, conditional=False),
            "--globals.basic_experiment.n_epochs=1",
            "--globals.visualization_logging.log_level=debug",
        ]
        if name == "forked":
            done = subprocess.run(
                [sys.executable, "-m", "eir_core.cli.train", *args], capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, done.stderr[-3000:]
            assert "arrays read while PyTorch loaded" in done.stderr
        else:
            assert main(args) == 0
        runs[name] = (run / "train_average_history.log").read_text() + (
            run / "validation_average_history.log"
        ).read_text()
    assert runs["forked"] == runs["in_process"]
