"""`make clean` removes what the demos wrote and nothing else: a demo run folder loses exactly the
files its journal records, a demo data folder exactly what eir-data wrote, while a user's runs
and data (examples/tutorial/runs, data) and any file of theirs in the demo folder stay."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from eir_core.train.run_folder import Plan, RunFolder

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(folder: Path) -> list[Path]:
    """A run folder as eirtrain leaves it: its journal records each file before it is written."""
    rf = RunFolder(folder)
    rf.make(Plan.FRESH)
    written = []
    for rel in ("saved_models/x_checkpoint_10_perf-average=0.5.safetensors", "train_average_history.log",
                "results/out/out/samples/10/auto/0.npy"):  # fmt: skip
        p = folder / rel
        rf.record(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
        written.append(p)
    rf.release()
    return written


def test_clean_removes_only_what_the_demos_wrote(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    run = demo / "runs" / "digits8_01_array_mnist_generation"
    written = _fake_run(run)
    mine_in_run = run / "saved_models" / "my_notes.txt"
    mine_in_run.write_text("keep")
    data = demo / "data" / "digits8"
    (data / "mnist_npy").mkdir(parents=True)
    for sid in ("10000", "10001"):
        (data / "mnist_npy" / f"{sid}.npy").write_text("x")
    (data / "mnist_labels.csv").write_text("ID,CLASS\n10000,0\n10001,1\n")
    (data / ".made-by-run_demo").write_text("")
    mine_in_data = data / "mnist_npy" / "99999.npy"  # not in the demo's labels: not the demo's
    mine_in_data.write_text("keep")
    users_data = demo / "data" / "digits28"  # no demo marker: data the demo did not write
    (users_data / "mnist_npy").mkdir(parents=True)
    (users_data / "mnist_npy" / "1.npy").write_text("keep")
    (users_data / "mnist_labels.csv").write_text("ID,CLASS\n1,3\n")

    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "clean_demos.py"), str(demo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in written)
    assert not (run / ".eirtrain-run").exists() and not (run / "meta").exists()
    assert mine_in_run.read_text() == "keep" and "my_notes.txt" in r.stdout
    assert not (data / "mnist_labels.csv").exists() and not (data / "mnist_npy" / "10000.npy").exists()
    assert mine_in_data.read_text() == "keep"
    assert (users_data / "mnist_npy" / "1.npy").read_text() == "keep" and (users_data / "mnist_labels.csv").exists()

    # Nothing left of the demo's: the folders go too.
    mine_in_run.unlink()
    mine_in_data.unlink()
    for p in (users_data / "mnist_npy" / "1.npy", users_data / "mnist_labels.csv"):
        p.unlink()
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "clean_demos.py"), str(demo)], capture_output=True, text=True
    )
    assert r.returncode == 0 and not demo.exists(), r.stdout + r.stderr


def test_no_make_target_deletes_a_users_runs_or_data() -> None:
    """make clean's recipe (as make would run it) names no tutorial runs/ or data/ folder, and
    the demos write only under examples/tutorial/demo/."""
    dry = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "clean_demos.py examples/tutorial/demo" in dry
    for line in dry.splitlines():
        assert not re.search(r"rm -rf? .*examples/tutorial/(runs|data)\b", line), line
    makefile = (ROOT / "Makefile").read_text()
    assert "examples/tutorial/runs" not in makefile and "$(DEMO_DIR)/runs" not in makefile
    demo = (ROOT / "examples" / "tutorial" / "run_demo.sh").read_text()
    assert "mkdir -p demo\ncd demo\n" in demo
    assert "rm " not in demo.replace('rm -f "$log"', "")  # the demo deletes only its own temporary log
