"""Training under torchrun: two CPU processes (gloo) on the 8x8 digits.

With dropout and stochastic depth off, one global batch dealt to two ranks gives the same
gradient as the whole batch in one process, so the losses must agree step by step. Stated
tolerance: relative 1e-4 on every training loss and on the validation loss (measured here:
equal in all six printed digits of the history files, i.e. within about 5e-6).
Also: resume, a signal to one rank, early stopping, the shared statistics, and the
collectives with their error agreement.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from eir_core.bundle import load_bundle
from eir_core.cli.train import main as eirtrain
from eir_core.predict import Predictor
from eir_core.train.checkpoint import read_resume_info
from tests.helpers import tutorial_configs, with_values, write_yaml

RTOL = 1e-4
pytestmark = [pytest.mark.timeout(300), pytest.mark.long]  # torchrun and gloo runs: `make test-long`


def _deterministic_configs(folder: Path, data: Path, run: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    args = tutorial_configs(folder, data, run, conditional=False)
    for name in ("input_mnist_array.yaml", "output.yaml"):
        cfg = yaml.safe_load((folder / name).read_text())
        cfg["model_config"]["model_init_config"]["rb_do"] = 0.0
        write_yaml(folder / name, cfg)
    fusion = {"model_type": "mlp-residual", "model_config": {"rb_do": 0.0, "stochastic_depth_p": 0.0}}
    return [*args, "--fusion_configs", str(write_yaml(folder / "fusion.yaml", fusion))]


def _env() -> dict[str, str]:
    """This environment without torchrun's variables (a test may itself run under a launcher)."""
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.run(
        [*cmd, "-m", "eir_core.cli.train", *args], capture_output=True, text=True, env=_env(), timeout=240
    )


def _history(run: Path, name: str) -> dict[int, float]:
    rows = (run / name).read_text().splitlines()[1:]
    return {int(r.split(",")[0]): float(r.split(",")[1]) for r in rows}


def _final_bundle(run: Path) -> Path:
    return max(
        (run / "saved_models").glob("*.safetensors"), key=lambda p: int(p.name.split("_checkpoint_")[1].split("_")[0])
    )


def test_two_gloo_processes_match_one_process_and_resume(tmp_path: Path, digits_dir: Path) -> None:
    single = tmp_path / "single"
    assert (
        eirtrain(
            [*_deterministic_configs(tmp_path / "c1", digits_dir, single), "--globals.basic_experiment.n_epochs=2"]
        )
        == 0
    )

    ddp = tmp_path / "ddp"
    args = _deterministic_configs(tmp_path / "c2", digits_dir, ddp)
    first = _torchrun([*args, "--globals.basic_experiment.n_epochs=1"])
    assert first.returncode == 0, first.stderr[-3000:]

    one, two = _history(single, "train_average_history.log"), _history(ddp, "train_average_history.log")
    assert sorted(two) == list(range(1, 25))  # 1597 training samples // 64 = 24 global steps
    steps = sorted(two)
    np.testing.assert_allclose([two[i] for i in steps], [one[i] for i in steps], rtol=RTOL)

    # Rank 0 alone wrote the artifacts, once: one validation row per evaluation, one final checkpoint.
    valid = _history(ddp, "validation_average_history.log")
    assert sorted(valid) == [20, 24]
    log = (ddp / "logging_history.log").read_text()
    assert "[rank 1]" not in log and "[rank 0] done: 24 iterations" in log

    bundle = load_bundle(_final_bundle(ddp))
    assert bundle.manifest.training.world_size == 2
    assert bundle.manifest.training.batch_size == 64
    assert bundle.manifest.training.batch_size_per_process == 32
    image = np.load(sorted((digits_dir / "mnist_npy").glob("*.npy"))[0])
    out = Predictor(bundle, device="cpu").predict([{"mnist": image}])[0]["mnist_output"]
    assert out.shape == (1, 8, 8) and np.isfinite(out).all()

    # Resume the two-process run for a second epoch: it continues where the one-process run went.
    resumed = _torchrun([*args, "--globals.basic_experiment.n_epochs=2", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at iteration 24 of 48" in resumed.stderr
    after = _history(ddp, "train_average_history.log")
    later = [i for i in sorted(after) if i > 24]
    assert later == list(range(25, 49))
    np.testing.assert_allclose([after[i] for i in later], [one[i] for i in later], rtol=RTOL)
    v_one, v_two = _history(single, "validation_average_history.log"), _history(ddp, "validation_average_history.log")
    np.testing.assert_allclose(v_two[48], v_one[48], rtol=RTOL)
    assert load_bundle(_final_bundle(ddp)).manifest.training.iteration == 48


def test_batch_not_divisible_by_processes_is_a_clear_error(tmp_path: Path, digits_dir: Path) -> None:
    run = tmp_path / "run"
    args = tutorial_configs(tmp_path, digits_dir, run, conditional=False)
    res = _torchrun([*args, "--globals.basic_experiment.batch_size=63"])
    assert res.returncode != 0
    assert "basic_experiment.batch_size=63" in res.stderr and "use 62 or 64" in res.stderr, res.stderr[-4000:]
    assert "eir_core/" not in res.stderr  # no traceback through our code (torchrun adds its own summary)
    assert not (run / "saved_models").exists()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *_children(int(child))]
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def _signal_rank_1_once_training(args: list[str], sig: int, *launcher: str) -> tuple[int, str]:
    """Start a 2-process torchrun run, send ``sig`` to rank 1 only once rank 0 has validated at
    iteration 20 (training well under way), and return torchrun's exit code and its stderr."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *launcher]
    proc = subprocess.Popen(
        [*cmd, "-m", "eir_core.cli.train", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "iteration 20: validation loss" in line:
                break
        workers = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert workers, "rank 1 not found among torchrun's children"
        os.kill(workers[0], sig)
        lines += proc.stderr.readlines()
        proc.wait(timeout=180)
    finally:
        proc.kill()
    return proc.returncode, "".join(lines)


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path: Path, digits_dir: Path) -> None:
    run = tmp_path / "run"
    args = tutorial_configs(tmp_path, digits_dir, run, conditional=False)
    _, log = _signal_rank_1_once_training([*args, "--globals.basic_experiment.n_epochs=500"], signal.SIGTERM)
    assert "[rank 0] another rank was signalled" in log, log[-3000:]
    stopped = int(log.split("interrupted at iteration ")[1].split(";")[0])
    assert 0 < stopped < 24 * 500
    saved = sorted((run / "saved_models").glob("*.safetensors"))
    assert any(f"_checkpoint_{stopped}_" in p.name for p in saved)
    info = read_resume_info(run / "resume" / "state.safetensors")
    assert info["iteration"] == stopped and info["world_size"] == 2


def test_early_stopping_is_decided_together(tmp_path: Path, digits_dir: Path) -> None:
    run = tmp_path / "run"
    args = tutorial_configs(tmp_path, digits_dir, run, conditional=False)
    overrides = [
        "--globals.basic_experiment.n_epochs=50",
        "--globals.evaluation_checkpoint.sample_interval=5",
        "--globals.evaluation_checkpoint.checkpoint_interval=5",
        "--globals.training_control.early_stopping_patience=2",
        "--globals.optimization.lr=1e-30",  # below float32 resolution: nothing improves, rank 0's validations say stop
        "--globals.lr_schedule.warmup_steps=0",
        "--globals.lr_schedule.lr_schedule=same",
    ]
    res = _torchrun([*args, *overrides])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "early stopping at iteration" in res.stderr
    stopped = int(res.stderr.split("early stopping at iteration ")[1].split(":")[0])
    assert stopped < 24 * 50
    assert _history(run, "train_average_history.log").keys() == set(range(1, stopped + 1))
    assert any(f"_checkpoint_{stopped}_" in p.name for p in (run / "saved_models").glob("*.safetensors"))


def test_fitted_state_from_rank_0_is_used_verbatim(tmp_path: Path, digits_dir: Path) -> None:
    from eir_core.config.load import build_experiment_config
    from eir_core.data.dataset import build_run_data

    args = tutorial_configs(tmp_path, digits_dir, tmp_path / "run", conditional=True)
    g, i1, i2, o = (Path(args[k]) for k in (1, 3, 4, 6))
    cfg = build_experiment_config([g], [i1, i2], [o])
    fitted = build_run_data(cfg, 0).fitted_state()
    fitted = json.loads(json.dumps(fitted))  # as it travels between ranks
    assert len(fitted["stats"]) == 1 and "mnist_label" in fitted["encodings"]  # input and output share files
    fitted["stats"][0]["mean"] = (np.asarray(fitted["stats"][0]["mean"]) + 1.0).tolist()
    fitted["encodings"]["mnist_label"]["categories"]["CLASS"].reverse()
    data = build_run_data(cfg, 0, fitted)
    stats = data.outputs["mnist_output"].stats
    np.testing.assert_array_equal(stats.mean, np.asarray(fitted["stats"][0]["mean"], np.float32))
    assert (
        data.inputs["mnist_label"].encoding.categories["CLASS"]
        == fitted["encodings"]["mnist_label"]["categories"]["CLASS"]
    )  # type: ignore[union-attr]
    assert data.fingerprint() == build_run_data(cfg, 0).fingerprint()  # same samples and split
    assert data.fingerprint() != build_run_data(cfg, 1).fingerprint()  # another seed splits differently


COLLECTIVES = """
import json, os, sys
from eir_core.errors import DataError
from eir_core.train.distributed import Dist, PeerFailed

d = Dist.from_env()
d.init(__import__("torch").device("cpu"))
out = {}
out["json"] = d.broadcast_json({"rank0": "x" * 5000} if d.rank == 0 else None)
out["gather"] = d.all_gather_json(list(range(d.rank * 3)))
out["sum"] = d.all_reduce_sum([float(d.rank), 1.0])
out["bytes"] = len(d.broadcast_bytes(b"" if d.rank == 0 else None))

def outcome(work):
    try:
        return "ok: " + str(work())
    except PeerFailed as e:
        return "peer: " + str(e)
    except DataError as e:
        return "own: " + str(e)

def fail_on_main():
    raise DataError("broken on rank 0")

def fail_on_1():
    if d.rank == 1:
        raise DataError("broken on rank 1")
    return "fine"

out["from_main"] = outcome(lambda: d.from_main(fail_on_main))
out["agree"] = outcome(lambda: d.agree(fail_on_1))
out["after"] = d.all_reduce_sum([1.0])  # the group still works after both errors
d.close()
with open(os.path.join(sys.argv[1], f"rank{d.rank}.json"), "w") as f:
    json.dump(out, f)
"""


def test_collectives_and_error_agreement_between_two_processes(tmp_path: Path) -> None:
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    res = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["json"] == r1["json"] == {"rank0": "x" * 5000}
    assert r0["gather"] == r1["gather"] == [[], [0, 1, 2]]
    assert r0["sum"] == r1["sum"] == [1.0, 2.0]
    assert r0["bytes"] == r1["bytes"] == 0
    assert r0["from_main"] == "own: broken on rank 0"
    assert r1["from_main"] == "peer: rank 0 stopped with an error: broken on rank 0"
    assert r0["agree"] == "peer: rank 1 stopped with an error: broken on rank 1"
    assert r1["agree"] == "own: broken on rank 1"
    assert r0["after"] == r1["after"] == [2.0]


def test_two_nodes_with_torchrun_rendezvous_flags(tmp_path: Path, digits_dir: Path) -> None:
    """Two launchers, one process each, meeting through c10d rendezvous (as on two machines)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    args = tutorial_configs(tmp_path, digits_dir, run, conditional=False)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    launch += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes"]
    cmd = [*launch, "-m", "eir_core.cli.train", *args, "--globals.basic_experiment.n_epochs=1"]
    nodes = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()) for _ in "ab"
    ]
    outputs = [p.communicate(timeout=240)[1] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert sum("[rank 0] done: 24 iterations" in o for o in outputs) == 1
    assert load_bundle(_final_bundle(run)).manifest.training.world_size == 2


def test_torchrun_restart_after_a_killed_rank_continues_the_run(tmp_path: Path, digits_dir: Path) -> None:
    """--max-restarts: rank 1 is SIGKILLed; rank 0 keeps the weights as the resume state and the
    restarted job continues from it instead of refusing the used run folder or starting over.

    Rarely (about 1 in 20 here) rank 0 does not learn that its peer died until torchrun kills
    it 30 s later; the restart then continues from the checkpoint of iteration 20. That run is
    checked too, and the scenario is tried once more for the save-on-peer-loss path."""
    for attempt in range(2):
        run = tmp_path / f"run{attempt}"
        args = tutorial_configs(tmp_path, digits_dir, run, conditional=False)
        returncode, log = _signal_rank_1_once_training(
            [*args, "--globals.basic_experiment.n_epochs=8"], signal.SIGKILL, "--max-restarts=1"
        )
        assert returncode == 0, log[-4000:]
        assert "torchrun restart 1 of job" in log and "continuing from the saved state" in log
        final = load_bundle(_final_bundle(run)).manifest.training
        assert final.iteration == 192 and final.world_size == 2
        if "saved the resume state at iteration " in log:
            saved = int(log.split("saved the resume state at iteration ")[1].split(" ")[0])
            assert f"resuming at iteration {saved} of 192" in log and saved >= 20
            return
        assert "resuming at iteration 20 of 192" in log, log[-4000:]
    pytest.fail("rank 0 did not save its weights after losing rank 1, twice")


def test_a_restart_resumes_only_a_state_written_by_the_same_job(tmp_path: Path, digits_dir: Path) -> None:
    from eir_core.config.load import build_experiment_config
    from eir_core.errors import RunFolderError
    from eir_core.train.distributed import Dist
    from eir_core.train.trainer import Trainer, TrainOptions

    args = tutorial_configs(tmp_path, digits_dir, tmp_path / "run", conditional=False)
    cfg = with_values(
        build_experiment_config([Path(args[1])], [Path(args[3])], [Path(args[5])]),
        **{"global_config.basic_experiment.n_epochs": 1},
    )
    first = Trainer(cfg, TrainOptions(no_pbar=True), Dist(job_id="job-a"))
    first.setup()
    assert first.train() == 0
    with pytest.raises(RunFolderError, match="already has a run"):  # another job's state: not taken over
        Trainer(cfg, TrainOptions(no_pbar=True), Dist(job_id="job-b", restart=1)).setup()
    with pytest.raises(RunFolderError, match="already has a run"):  # the first attempt never resumes by itself
        Trainer(cfg, TrainOptions(no_pbar=True), Dist(job_id="job-a", restart=0)).setup()
    again = Trainer(cfg, TrainOptions(no_pbar=True, overwrite=True), Dist(job_id="job-a", restart=1))
    again.setup()  # a restart of job-a continues (and --overwrite does not wipe its progress)
    assert again.opts.resume and again.state.iteration == first.state.iteration == 24

    # A job that failed before saving anything: its restart starts over in its own folder,
    # while another job's restart still may not touch it.
    cfg = with_values(cfg, **{"global_config.basic_experiment.output_folder": str(tmp_path / "run2")})
    running = Trainer(cfg, TrainOptions(no_pbar=True), Dist(job_id="job-c"))
    running.setup()
    assert not (tmp_path / "run2" / "resume").exists()
    with pytest.raises(RunFolderError, match="another eirtrain is training in this folder"):
        Trainer(cfg, TrainOptions(no_pbar=True), Dist(job_id="job-d", restart=1)).setup()
    running.run.release()  # job-c's process died
    fresh = Trainer(cfg, TrainOptions(no_pbar=True), Dist(job_id="job-c", restart=1))
    fresh.setup()
    assert not fresh.opts.resume and fresh.state.iteration == 0


def test_bad_launcher_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from eir_core.errors import ConfigError
    from eir_core.train.distributed import Dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match=r"RANK=5 is not in 0..WORLD_SIZE-1 \(WORLD_SIZE=2\)"):
        Dist.from_env()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ConfigError, match="RANK='one' is not an integer"):
        Dist.from_env()
    monkeypatch.setenv("RANK", "1")
    d = Dist.from_env()
    assert d.enabled and not d.is_main and d.restart == 0
