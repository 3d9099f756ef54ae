"""The README as a landing page that keeps its promises: its two commands are the Makefile's and
CI's, its links lead to files, and its tour runs as written (through the docs runner, with the
shortening the README itself shows), served and asked as the README says."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.serve.realserver import RealServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_spec = importlib.util.spec_from_file_location("run_docs", ROOT / "scripts" / "run_docs.py")
assert _spec is not None and _spec.loader is not None
run_docs = importlib.util.module_from_spec(_spec)
sys.modules["run_docs"] = run_docs
_spec.loader.exec_module(run_docs)


def blocks() -> list:
    return [s for s in run_docs.parse_page(README.read_text(), "README.md") if isinstance(s, run_docs.Block)]


def test_the_two_commands_are_make_targets_and_ci_runs_the_readmes_test_command() -> None:
    commands = [b.code.split("#")[0].strip() for b in blocks() if b.code.startswith("make ")]
    assert commands[:2] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "lint", "docs", "docs-check", "clean"):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target
        assert f"make {target}" in README.read_text(), target
    ci = [ln.split("#")[0].strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    make_lines = [ln for ln in ci if ln.startswith("make ")]
    # CI's test command is exactly the README's, and each make target CI runs is one the README names.
    assert "make test" in make_lines
    for line in make_lines:
        assert line in README.read_text(), line
    # `make test` installs nothing behind the user's back (the web page test skips without Chromium).
    recipe = makefile[makefile.index("\ntest:") : makefile.index("\nlint:")]
    assert "apt-get" not in recipe and "browser" not in recipe.split("\n")[1]


def test_links_lead_to_files() -> None:
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 10, local
    for link in local:
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


def test_the_tour_runs_as_written(tmp_path: Path) -> None:
    """The README's tour (after `make demo`): the block with its eirtrain-extra applied through the
    runner's own Session, then its eirserve line served (on a free port) and asked by its client
    line."""
    tour = [b for b in blocks() if "source .venv/bin/activate" in b.code]
    serve = [b for b in blocks() if b.directive.background and "runs/ae" in b.code]
    ask = [b for b in blocks() if "demo_client.py" in b.code]
    assert len(tour) == len(serve) == len(ask) == 1
    assert tour[0].directive.eirtrain_extra == "--globals.basic_experiment.n_epochs=2"
    # A checkout of our own: the tutorial folder, and .venv pointing at this interpreter's venv.
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT / "examples" / "tutorial",
        checkout / "examples" / "tutorial",
        ignore=shutil.ignore_patterns("runs", "data", "demo"),
    )
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    state = tmp_path / "state"
    state.mkdir()
    session = run_docs.Session(checkout, state)
    log = tmp_path / "tour.log"
    ok, why = session.run(tour[0], 1, log)
    out = log.read_text()
    assert ok, f"{why}\n{out[-3000:]}"
    assert "Traceback" not in out
    assert re.search(r"^bundle +.*runs/ae/saved_models/ae_checkpoint_48_perf-average=", out, re.M), out[-3000:]
    assert (state / "cwd").read_text().strip() == str(checkout / "examples" / "tutorial")

    # The serve line as written, from where the tour left off; the port comes from the environment
    # (0: the OS picks a free one) so that nothing else on this machine's 8000/8001 matters.
    line = serve[0].code.split("#")[0].strip()
    assert line == "eirserve --model-path runs/ae"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIR_SERVE_")}
    proc = subprocess.Popen(
        ["bash", "-c", f"source {checkout}/.venv/bin/activate && exec {line}"],
        cwd=checkout / "examples" / "tutorial",
        env={**env, "EIR_SERVE_PORT": "0", "EIR_SERVE_GRPC_PORT": "0"},
        stderr=subprocess.PIPE,
        text=True,
    )
    server = RealServer(proc)
    try:
        server.wait_ready()
        assert httpx.get(f"{server.url}/info", timeout=10).json()["model"]["name"] == "ae"
        client = next(ln for ln in ask[0].code.splitlines() if "demo_client.py" in ln).split("#")[0]
        client = client.replace("http://127.0.0.1:8000", server.url)
        r = subprocess.run(
            ["bash", "-c", client],
            cwd=checkout / "examples" / "tutorial",
            env={**env, "PATH": f"{Path(sys.prefix) / 'bin'}:{env['PATH']}"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert "reconstruction error: mean squared error" in r.stdout and "average digit" in r.stdout, r.stdout
    finally:
        server.stop()


def test_demo_client_names_a_wrong_data_folder(tmp_path: Path) -> None:
    """From the repository root, the tutorial's relative data folder is not there: a one-line
    error that says where it is looked for and what would do, never a traceback."""
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples/tutorial/demo_client.py"),
            "--url",
            "http://127.0.0.1:9",
            "--data",
            "data/digits8",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "--data data/digits8: no such folder" in r.stderr and str(tmp_path) in r.stderr
    assert "mnist_npy" in r.stderr
