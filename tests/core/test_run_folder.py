"""No command destroys what it did not make; mistakes leave nothing that blocks a retry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eir_core.cli.train import main as eirtrain
from eir_core.train.run_folder import MARKER
from tests.helpers import tutorial_configs

SHORT = ["--globals.basic_experiment.n_epochs=1", "--globals.evaluation_checkpoint.saved_result_detail_level=4"]


def _args(tmp: Path, digits: Path, out: Path | str) -> list[str]:
    return [*tutorial_configs(tmp, digits, Path(out), conditional=False), *SHORT, "--no-pbar"]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("eirtrain: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_overwrite_of_the_current_folder_is_refused_and_deletes_nothing(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_notes.txt").write_text("keep me")
    args = _args(work, digits_dir, ".")
    monkeypatch.chdir(work)
    assert eirtrain([*args, "--overwrite"]) == 2
    msg = _one_error_line(capsys)
    assert "did not write" in msg and "my_notes.txt" in msg
    assert (work / "my_notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in work.iterdir()) == [
        "globals.yaml",
        "input_mnist_array.yaml",
        "my_notes.txt",
        "output.yaml",
    ]


def test_a_folder_of_user_files_is_never_written_into_or_cleared(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert eirtrain([*_args(tmp_path, digits_dir, out), *flags]) == 2
        assert "output_folder" in _one_error_line(capsys)
        assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_overwrite_refuses_home_and_parents_of_the_current_folder(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    (home / MARKER).write_text("{}\n")  # even a folder that looks like a run
    (home / "precious.txt").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    assert eirtrain([*_args(tmp_path, digits_dir, home), "--overwrite"]) == 2
    assert "home folder" in _one_error_line(capsys)
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(home / "sub")
    assert eirtrain([*_args(tmp_path, digits_dir, home), "--overwrite"]) == 2
    assert "current folder or one of its parents" in _one_error_line(capsys)
    assert (home / "precious.txt").is_file() and (home / "sub").is_dir()


@pytest.mark.long
def test_a_data_error_leaves_no_folder_and_the_fixed_command_just_runs(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "x1"
    args = _args(tmp_path, digits_dir, out)
    bad = [*args, "--input_mnist_array.input_info.input_source=data/digits28/mnist_npy"]
    assert eirtrain(bad) == 2
    msg = _one_error_line(capsys)
    assert "input 'mnist': input_info.input_source = data/digits28/mnist_npy" in msg
    assert str(tmp_path / "data" / "digits28" / "mnist_npy") in msg
    assert not out.exists(), "a failed start must not leave a run folder behind"
    assert eirtrain(args) == 0  # the corrected command, without --resume or --overwrite


def test_only_a_run_that_recorded_its_early_failure_restarts_without_a_flag(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from eir_core.train.trainer import Trainer

    out = tmp_path / "run"
    args = _args(tmp_path, digits_dir, out)

    def broken_step(self: Trainer, idx: object) -> float:
        raise ValueError("a bug in the first step")

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_step", broken_step)
        with pytest.raises(ValueError, match="a bug in the first step"):
            eirtrain(args)
    assert '"failed": "before its first checkpoint"' in (out / MARKER).read_text()
    assert eirtrain(args) == 0  # the same command, no flag: eirtrain recorded the failure itself
    assert list((out / "saved_models").glob("*_checkpoint_24_*.safetensors"))

    # A folder that merely looks like a run that saved nothing (no recorded failure) is kept.
    other = tmp_path / "other"
    (other / "configs").mkdir(parents=True)
    (other / MARKER).write_text('{"format": 2}\n')
    (other / "logging_history.log").write_text("mine")
    capsys.readouterr()
    assert eirtrain(_args(tmp_path, digits_dir, other)) == 2
    assert "already has a run" in _one_error_line(capsys)
    assert (other / "logging_history.log").read_text() == "mine"


def test_a_finished_run_whose_checkpoints_were_moved_away_is_not_wiped(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = _args(tmp_path, digits_dir, out)
    assert eirtrain(args) == 0
    (out / "saved_models").rename(tmp_path / "kept_models")
    (out / "resume").rename(tmp_path / "kept_resume")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    curves = (out / "validation_average_history.log").read_text()
    capsys.readouterr()
    assert eirtrain(args) == 2
    assert "already has a run" in _one_error_line(capsys)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "validation_average_history.log").read_text() == curves


@pytest.mark.long
def test_overwrite_keeps_a_users_files_anywhere_in_the_run_folder(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = [*_args(tmp_path, digits_dir, out), "--globals.evaluation_checkpoint.saved_result_detail_level=5"]
    assert eirtrain(args) == 0
    mine = {
        "saved_models/notes.txt": "a note",
        "results/mnist_output/report.md": "my report",
        "results/mnist_output/mnist_output/samples/24/auto/my_pick.npy": "x",
        "configs/my_variant.yaml": "a: 1",
        "meta/where_i_ran_it.txt": "laptop",
        "resume/backup_of_state.bin": "b",
        "latents_visualization_tsne_v2.png": "p",
    }
    for rel, text in mine.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    outside = tmp_path / "outside.txt"
    outside.write_text("not the run's")
    with (out / MARKER).open("a") as f:  # a journal line that points outside the folder
        f.write('{"wrote": "../outside.txt"}\n{"wrote": "/etc/hostname"}\n')
    capsys.readouterr()
    assert eirtrain([*args, "--overwrite"]) == 0
    for rel, text in mine.items():
        assert (out / rel).read_text() == text, rel
    assert outside.read_text() == "not the run's"
    assert list((out / "saved_models").glob("*_checkpoint_24_*.safetensors"))
    err = capsys.readouterr().err
    assert "kept files that eirtrain did not write" in err and "not a path inside it" in err


@pytest.mark.long
def test_resume_never_removes_a_checkpoint_it_did_not_write(tmp_path: Path, digits_dir: Path) -> None:
    out = tmp_path / "run"
    args = _args(tmp_path, digits_dir, out)
    assert eirtrain(args) == 0
    (final,) = (out / "saved_models").glob("*.safetensors")
    # The worst score possible in the run's own naming: the keeper (n_saved_models=1) would
    # drop it first if it counted it among the run's checkpoints.
    foreign = out / "saved_models" / f"{out.name}_checkpoint_1_perf-average=-9.0000.safetensors"
    foreign.write_bytes(final.read_bytes())
    assert eirtrain([*args, "--resume", "--globals.basic_experiment.n_epochs=2"]) == 0
    assert foreign.is_file()
    assert list((out / "saved_models").glob("*_checkpoint_48_*.safetensors"))


def test_overwrite_of_a_run_without_a_record_of_its_files_is_refused(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "old_run"
    (out / "saved_models").mkdir(parents=True)
    (out / MARKER).write_text('{"eir_core_version": "0.1.0", "created": "2024-01-01T00:00:00"}\n')
    (out / "saved_models" / "old_run_checkpoint_24_perf-average=0.9000.safetensors").write_text("weights")
    assert eirtrain([*_args(tmp_path, digits_dir, out), "--overwrite"]) == 2
    assert "kept no record of the files it wrote" in _one_error_line(capsys)
    assert [p.name for p in (out / "saved_models").iterdir()] == [
        "old_run_checkpoint_24_perf-average=0.9000.safetensors"
    ]


@pytest.mark.long
def test_overwrite_removes_only_what_a_run_writes_and_resume_of_a_finished_run_says_how_to_go_on(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = _args(tmp_path, digits_dir, out)
    assert eirtrain(args) == 0
    (out / "my_analysis.ipynb").write_text("{}")
    first = {p.name for p in (out / "saved_models").iterdir()}
    capsys.readouterr()

    assert eirtrain([*args, "--resume"]) == 2
    msg = _one_error_line(capsys)
    assert "already finished (iteration 24 of 24)" in msg and "n_epochs" in msg and "--overwrite" in msg

    assert eirtrain(args) == 2
    assert "already has a run" in _one_error_line(capsys)

    assert eirtrain([*args, "--overwrite"]) == 0
    assert (out / "my_analysis.ipynb").read_text() == "{}"
    assert "kept files that eirtrain did not write: my_analysis.ipynb" in capsys.readouterr().err
    assert {p.name for p in (out / "saved_models").iterdir()} == first  # same seed, same checkpoints

    assert eirtrain([*args, "--resume", "--globals.basic_experiment.n_epochs=2"]) == 0  # training further
    assert list((out / "saved_models").glob("*_checkpoint_48_*.safetensors"))


def test_training_output_is_honest(tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = [
        *_args(tmp_path, digits_dir, out),
        "--globals.evaluation_checkpoint.checkpoint_interval=4",
        "--globals.evaluation_checkpoint.sample_interval=4",
        "--globals.evaluation_checkpoint.n_saved_models=1",
    ]
    assert eirtrain(args) == 0
    err = capsys.readouterr().err
    assert "removed older checkpoint" in err
    assert "drawing the last plots" in err
    done = next(ln for ln in err.splitlines() if " done: " in ln)
    from eir_core.bundle import load_bundle

    (final,) = (out / "saved_models").glob("*_checkpoint_24_*.safetensors")
    bundle = load_bundle(final)
    assert f"in {bundle.manifest.training.elapsed_s:.1f}s" in done
    assert os.path.getsize(out / "logging_history.log") > 0
    rows = (out / "validation_average_history.log").read_text().splitlines()
    assert rows[0] == "iteration,loss-average,perf-average" and [r.split(",")[0] for r in rows[1:]] == [
        str(i) for i in range(4, 25, 4)
    ]


@pytest.mark.long
def test_a_second_eirtrain_on_a_folder_in_use_is_refused(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    args = _args(tmp_path, digits_dir, out)
    first = subprocess.Popen(
        [sys.executable, "-m", "eir_core.cli.train", *args, "--globals.basic_experiment.n_epochs=50"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stderr is not None
        assert any("first training step done" in line for line in first.stderr)
        for flags in ([], ["--overwrite"]):
            assert eirtrain([*args, *flags]) == 2
            assert "another eirtrain is training in this folder" in _one_error_line(capsys)
        assert (out / "configs").is_dir() and (out / MARKER).is_file()
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    assert list((out / "saved_models").glob("*.safetensors"))  # the first run saved as asked, untouched
