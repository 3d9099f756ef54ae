from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from eir_core.bundle import load_bundle
from eir_core.cli.train import main as eirtrain
from eir_core.config.load import build_experiment_config
from eir_core.train.trainer import Trainer, TrainOptions
from tests.helpers import tutorial_configs, with_values


def _cfg(tmp: Path, digits: Path, run: Path, conditional: bool = False):
    args = tutorial_configs(tmp, digits, run, conditional)
    return build_experiment_config(
        [Path(args[1])], [Path(a) for a in args[3:-3] if a.endswith(".yaml")], [Path(args[-2])]
    )


@pytest.mark.long
def test_interrupt_saves_and_resume_finishes(tmp_path: Path, digits_dir: Path) -> None:
    run = tmp_path / "run"
    cfg = _cfg(tmp_path, digits_dir, run)
    t = Trainer(cfg, TrainOptions(no_pbar=True))
    t.setup()
    real_step = t._step

    def step(idx: np.ndarray) -> float:
        if t.state.iteration == 13:
            t.stop.signal = signal.SIGTERM  # as the handler would on SIGTERM
        return real_step(idx)

    t._step = step  # type: ignore[method-assign]
    assert t.train() == 128 + signal.SIGTERM
    assert t.state.iteration == 14
    ckpts = list((run / "saved_models").glob("*_checkpoint_14_*.safetensors"))
    assert ckpts and load_bundle(ckpts[0]).manifest.training.iteration == 14

    t2 = Trainer(cfg, TrainOptions(resume=True, no_pbar=True))
    t2.setup()
    assert t2.state.iteration == 14
    assert t2.train() == 0
    assert t2.state.iteration == t2.total_iters == 2 * (1597 // 64)
    assert [v[0] for v in t2.state.valid_history] == [14, 20, 40, 48]
    # The list the history file and the training curve are drawn from holds the whole run.
    assert [r[0] for r in t2.histories.train] == list(range(1, 49))
    final = sorted((run / "saved_models").glob("*.safetensors"))
    assert any("_checkpoint_48_" in p.name for p in final)


@pytest.mark.long
def test_run_is_deterministic_for_a_seed(tmp_path: Path, digits_dir: Path) -> None:
    losses = []
    for k in range(2):
        cfg = with_values(
            _cfg(tmp_path, digits_dir, tmp_path / f"run{k}"), **{"global_config.basic_experiment.n_epochs": 1}
        )
        t = Trainer(cfg, TrainOptions(no_pbar=True, seed=3))
        t.setup()
        t.train()
        losses.append([round(x[1], 6) for x in t.histories.train])
    assert losses[0] == losses[1]


def test_final_checkpoint_without_any_interval(tmp_path: Path, digits_dir: Path) -> None:
    args = tutorial_configs(tmp_path, digits_dir, tmp_path / "run", conditional=False)
    assert (
        eirtrain(
            [
                *args,
                "--globals.evaluation_checkpoint.checkpoint_interval=None",
                "--globals.evaluation_checkpoint.sample_interval=1000",
                "--globals.basic_experiment.n_epochs=1",
            ]
        )
        == 0
    )
    names = [p.name for p in (tmp_path / "run" / "saved_models").glob("*.safetensors")]
    assert len(names) == 1 and "_checkpoint_24_" in names[0]


@pytest.mark.long
def test_lazy_reading_matches_memory_dataset(tmp_path: Path, digits_dir: Path) -> None:
    losses = {}
    for memory in (True, False):
        cfg = with_values(
            _cfg(tmp_path, digits_dir, tmp_path / f"run{memory}"),
            **{"global_config.basic_experiment.n_epochs": 1, "global_config.basic_experiment.memory_dataset": memory},
        )
        t = Trainer(cfg, TrainOptions(no_pbar=True))
        t.setup()
        col = t.data.outputs["mnist_output"]
        assert (col.preloaded is not None) == memory
        t.train()
        losses[memory] = [round(x[1], 5) for x in t.histories.train]
    assert losses[True] == losses[False]


def test_early_stopping_ends_the_run_and_keeps_a_final_checkpoint(tmp_path: Path, digits_dir: Path) -> None:
    g = "global_config."
    cfg = with_values(
        _cfg(tmp_path, digits_dir, tmp_path / "run"),
        **{
            g + "basic_experiment.n_epochs": 50,
            g + "evaluation_checkpoint.sample_interval": 5,
            g + "evaluation_checkpoint.checkpoint_interval": 5,
            g + "training_control.early_stopping_patience": 2,
            g + "optimization.lr": 1e-30,  # below every weight's float32 resolution: nothing improves
            g + "lr_schedule.warmup_steps": 0,
            g + "lr_schedule.lr_schedule": "same",
        },
    )
    t = Trainer(cfg, TrainOptions(no_pbar=True))
    t.setup()
    assert t.train() == 0
    assert t.state.iteration < t.total_iters
    names = [p.name for p in (tmp_path / "run" / "saved_models").glob("*.safetensors")]
    assert any(f"_checkpoint_{t.state.iteration}_" in n for n in names)


def test_inputs_and_outputs_sharing_no_id_is_an_error(tmp_path: Path, digits_dir: Path) -> None:
    import shutil

    from eir_core.errors import DataError

    other = tmp_path / "other" / "mnist_npy"
    other.mkdir(parents=True)
    for p in sorted((digits_dir / "mnist_npy").glob("*.npy"))[:50]:
        shutil.copy(p, other / f"x{p.name}")
    cfg = with_values(
        _cfg(tmp_path, digits_dir, tmp_path / "run"), **{"input_configs.0.input_info.input_source": str(other)}
    )
    t = Trainer(cfg, TrainOptions(no_pbar=True))
    with pytest.raises(DataError, match="is a sample ID of the outputs"):
        t.setup()


def test_final_bundle_runs_on_one_thread_and_gives_the_count_back() -> None:
    """The final bundle is written with PyTorch on one thread (the renderer's last plots get the
    cores); an in-process run (tests, benchmarks) gets its thread count back, also on an error."""
    import torch

    from eir_core.train.saving import one_intra_op_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_intra_op_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_intra_op_thread():
            raise RuntimeError("a failed export")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _rows(path: Path) -> list[str]:
    return path.read_text().splitlines()[1:]


@pytest.mark.long
def test_ctrl_c_then_resume_keeps_the_whole_history(tmp_path: Path, digits_dir: Path) -> None:
    """A real eirtrain, interrupted with SIGINT (Ctrl-C) after its first validation, then resumed:
    every history file holds the whole run, the rows written before the interruption unchanged."""
    import subprocess
    import sys

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "eir_core.cli.train",
        *tutorial_configs(tmp_path, digits_dir, run, conditional=False),
        "--globals.basic_experiment.n_epochs=4",  # 96 iterations, validation every 20
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "iteration 20: validation loss" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 130, rest[-2000:]
    train_log, valid_log = run / "train_average_history.log", run / "validation_average_history.log"
    out_log = run / "results" / "mnist_output" / "mnist_output" / "validation_mnist_output_history.log"
    before = {p: _rows(p) for p in (train_log, valid_log, out_log)}
    stopped = int(before[train_log][-1].split(",")[0])
    assert 20 < stopped < 96, f"stopped at {stopped}"
    assert [int(r.split(",")[0]) for r in before[train_log]] == list(range(1, stopped + 1))

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "incomplete" not in done.stderr
    after = {p: _rows(p) for p in before}
    assert [int(r.split(",")[0]) for r in after[train_log]] == list(range(1, 97))
    for p, rows in before.items():
        assert after[p][: len(rows)] == rows, p  # what was there before the interruption is kept as it was
    want = sorted({20, stopped, 40, 60, 80, 96})  # every 20, the interruption's, the last
    assert [int(r.split(",")[0]) for r in after[valid_log]] == want
    assert [int(r.split(",")[0]) for r in after[out_log]] == want
