"""Drawing of training artifacts (curves, sample grids, t-SNE) in a separate process.

Matplotlib and t-SNE are pure-Python/NumPy heavy: on a thread they hold the GIL and stall the
training loop (a small model is Python-bound), and inline they add seconds per validation.
So the trainer sends jobs, one JSON line each, to ``python -m eir_core.train.render``, which
draws PNGs while training goes on. Arrays travel as ``.npy``/``.npz`` files the trainer wrote.
A failed drawing is logged by the renderer and never stops training.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

log = logging.getLogger("eir_core.train")


def _spawn() -> subprocess.Popen[str]:
    # One thread and a lower priority: drawing must not take cores from training.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "eir_core.train.render"],
        stdin=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=env,
    )  # no preexec_fn: forking a process with threads (gloo, imports) and running Python
    # in the child before exec can deadlock it, and Popen would wait on it for ever


_prestarted: subprocess.Popen[str] | None = None


def prestart() -> None:
    """Start the renderer before the trainer imports PyTorch: its own imports (matplotlib,
    scikit-learn, ~1.6 s) then run on the core that the trainer's single-threaded start-up leaves
    free, instead of at idle priority during training and so at its end. The next ``Renderer``
    takes it over; unused, it ends when eirtrain does (its stdin closes)."""
    global _prestarted
    if _prestarted is None:
        _prestarted = _spawn()


def discard_prestarted() -> None:
    """Let an unused prestarted renderer end (a run that stopped before training)."""
    global _prestarted
    if _prestarted is not None and _prestarted.stdin is not None:
        _prestarted.stdin.close()
    _prestarted = None


class Renderer:
    """Client side: a lazily started renderer process fed through its stdin."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start now (or take over the prestarted one), so its imports overlap other work."""
        global _prestarted
        if self.proc is None or self.proc.poll() is not None:
            if _prestarted is not None and _prestarted.poll() is None:
                self.proc, _prestarted = _prestarted, None
            else:
                self.proc = _spawn()

    def submit(self, kind: str, **job: Any) -> None:
        self.start()
        assert self.proc is not None
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"kind": kind, **job}) + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:  # ValueError: after finish()
            log.warning("the plot renderer is gone (%s); artifacts of this round are not drawn", e)

    def finish(self) -> None:
        """No more jobs: the renderer leaves the idle class and draws what is queued on every core,
        while the trainer goes on with its last work (the final bundle); ``close`` waits for it."""
        if self.proc is not None and self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def close(self, timeout: float = 120.0) -> None:
        if self.proc is None:
            return
        self.finish()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc = None


def _lower_priority() -> None:
    """Run in the renderer itself, first thing: drawing must not take cores from training, and
    Ctrl-C (which reaches the whole process group) is the trainer's to handle; it ends the
    renderer by closing stdin once the plots of the checkpoint being saved are done."""
    import signal

    if hasattr(os, "nice"):
        os.nice(10)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warm_imports() -> None:
    """Import the drawing libraries now (at nice 10, during the trainer's own start-up), not at
    idle priority when the first job arrives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure

    try:
        import sklearn.decomposition
        import sklearn.manifold  # noqa: F401
    except ImportError:
        pass


def _idle_priority() -> None:
    """The idle scheduling class (Linux) while training runs: a nice value only weighs the
    renderer against the trainer, and not at all when both already run at nice 19 (``nice -n 19
    eirtrain``), where drawing a t-SNE took a core from the training loop. Under SCHED_IDLE the
    renderer draws on cores that training leaves idle; what is left when training ends is drawn
    then (see ``_normal_priority``)."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass


def _normal_priority() -> None:
    """Training is over (stdin closed) and the trainer waits for the last plots: leave the idle
    class so that other programs on the machine cannot starve them (where the system allows an
    unprivileged process to: otherwise they are drawn at idle priority), and let t-SNE use every
    core, which training no longer needs (1.5 s instead of 2.3 s for 1 000 points on 2 cores)."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_OTHER"):
        try:
            if os.sched_getscheduler(0) == getattr(os, "SCHED_IDLE", None):
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            pass
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # scikit-learn's dependency
    except ImportError:
        return
    threadpool_limits(limits=os.cpu_count() or 1)


def _do(job: dict[str, Any]) -> None:
    from eir_core.train import plots

    kind = job["kind"]
    if kind == "curve":
        plots.plot_curve(
            Path(job["path"]),
            [tuple(x) for x in job["train"]],
            [tuple(x) for x in job["valid"]],
            job["title"],
            job.get("skip", 0),
        )
    elif kind == "grid":
        with np.load(job["arrays"], allow_pickle=False) as z:
            rows = [(label, [z[f"{i}_{k}"] for k in range(n)]) for i, (label, n) in enumerate(job["rows"])]
        plots.plot_sample_grid(Path(job["path"]), rows, job["titles"])
        Path(job["arrays"]).unlink(missing_ok=True)
    elif kind == "tsne":
        chunks = [np.load(p, allow_pickle=False) for p in job["batches"]]
        rec = np.concatenate(chunks)
        labels = job.get("labels")
        plots.plot_tsne([Path(p) for p in job["paths"]], rec["Latent"], labels, job["title"])
    else:
        raise ValueError(f"unknown job kind {kind!r}")


def serve(stream: IO[str]) -> None:
    import threading

    pending: list[dict[str, Any]] = []
    cond = threading.Condition()
    done = False

    def read() -> None:
        nonlocal done
        for line in stream:
            with cond:
                pending.append(json.loads(line))
                cond.notify()
        with cond:
            done = True
            cond.notify()

    threading.Thread(target=read, daemon=True).start()
    while True:
        with cond:
            while not pending and not done:
                cond.wait()
            finishing = done
            if not pending:
                return
            job = pending.pop(0)
            # A curve is redrawn whole at every validation: skip it when a newer one is queued.
            stale = job["kind"] == "curve" and any(j.get("path") == job["path"] for j in pending)
        if finishing:
            _normal_priority()  # in this thread, which draws
        if stale:
            continue
        try:
            _do(job)
        except Exception as e:  # report and go on with the next job
            print(f"eir renderer: {type(e).__name__}: {e}", file=sys.stderr)


def _exit_now() -> None:
    """Every job is drawn and its PNG written (atomically, closed): end without the interpreter's
    teardown of matplotlib and scikit-learn (~0.3 s, which the trainer waits for at its end)."""
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _lower_priority()
    _warm_imports()
    _idle_priority()
    serve(sys.stdin)
    _exit_now()
