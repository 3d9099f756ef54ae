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
    then (see ``_leave_idle``)."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass


def _leave_idle(thread_id: int) -> None:
    """Training is over (stdin closed) and the trainer waits for the last plots: the drawing
    thread ``thread_id`` leaves the idle class, so that other programs on the machine cannot
    starve it (where the system allows an unprivileged process to: otherwise the plots are drawn
    at idle priority). Linux keeps the scheduling class per thread."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_OTHER"):
        try:
            if os.sched_getscheduler(thread_id) == getattr(os, "SCHED_IDLE", None):
                os.sched_setscheduler(thread_id, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            pass


def _use_threads(threads: int) -> None:
    """OpenMP threads (t-SNE) of the calling thread from now on: training no longer needs the
    cores. OpenMP keeps this count per thread, so each drawing lane sets its own."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # scikit-learn's dependency
    except ImportError:
        return
    threadpool_limits(limits=threads)


class _Outputs:
    """PNG writes, newest job first: with two drawing lanes an older job can finish after a newer
    one that writes the same file (``latents_visualization_tsne.png`` is every t-SNE's); its bytes
    are then dropped, so each file ends as the newest job drew it."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.written: dict[str, int] = {}

    def write(self, path: str, data: bytes, seq: int) -> None:
        from eir_core._fs import atomic_write_bytes

        with self.lock:
            if self.written.get(path, -1) > seq:
                return
            atomic_write_bytes(Path(path), data)
            self.written[path] = seq


def _do(job: dict[str, Any], out: _Outputs) -> None:
    from eir_core.train import plots

    kind, seq = job["kind"], job["seq"]
    if kind == "curve":
        train = [tuple(x) for x in job["train"]]
        png = plots.plot_curve(train, [tuple(x) for x in job["valid"]], job["title"], job.get("skip", 0))
        out.write(job["path"], png, seq)
    elif kind == "grid":
        with np.load(job["arrays"], allow_pickle=False) as z:
            rows = [(label, [z[f"{i}_{k}"] for k in range(n)]) for i, (label, n) in enumerate(job["rows"])]
        out.write(job["path"], plots.plot_sample_grid(rows, job["titles"]), seq)
        Path(job["arrays"]).unlink(missing_ok=True)
    elif kind == "tsne":
        chunks = [np.load(p, allow_pickle=False) for p in job["batches"]]
        rec = np.concatenate(chunks)
        tsne = plots.plot_tsne(rec["Latent"], job.get("labels"), job["title"])
        if tsne is not None:
            for path in job["paths"]:
                out.write(path, tsne, seq)
    else:
        raise ValueError(f"unknown job kind {kind!r}")


def serve(stream: IO[str]) -> None:
    """Draw the jobs of ``stream`` (one JSON line each) until it ends and every job is drawn.

    While training runs (the stream open), one job at a time on one thread. Once the stream ends
    the thread that read it becomes a second drawing lane on machines with 2 or more cores: what
    is queued then (typically the last two t-SNEs, whose scikit-learn work runs outside the GIL,
    plus grids and curves) is shared by both, each lane's t-SNE on half the cores (two t-SNEs of
    1 000 points: 3.0 s side by side on 1 core each, 4.3 s one after the other on 2)."""
    import threading

    pending: list[dict[str, Any]] = []
    cond = threading.Condition()
    done = False
    out = _Outputs()
    cores = os.cpu_count() or 1
    lanes = 2 if cores >= 2 else 1
    first_lane = threading.get_native_id()  # this thread, the lane that draws while training runs
    lane_threads = max(1, cores // lanes)  # OpenMP threads of each lane once training is over

    def work() -> None:
        """One drawing lane: take queued jobs until the stream has ended and none is left."""
        me = threading.get_native_id()
        normal = False
        while True:
            with cond:
                while not pending and not done:
                    cond.wait()
                if not pending:
                    return
                finishing = done
                # Once training is over, the longest jobs first: a t-SNE takes seconds, the rest
                # tenths, so a lane that starts one late ends last.
                first = next((i for i, j in enumerate(pending) if j["kind"] == "tsne"), 0) if finishing else 0
                job = pending.pop(first)
                # A curve is redrawn whole at every validation: skip it when a newer one is queued.
                stale = job["kind"] == "curve" and any(j.get("path") == job["path"] for j in pending)
            if finishing and not normal:
                _leave_idle(me)
                _use_threads(lane_threads)
                normal = True
            if stale:
                continue
            try:
                _do(job, out)
            except Exception as e:  # report and go on with the next job
                print(f"eir renderer: {type(e).__name__}: {e}", file=sys.stderr)

    def read() -> None:
        nonlocal done
        try:
            for seq, line in enumerate(stream):
                try:
                    job = {**json.loads(line), "seq": seq}
                except ValueError as e:
                    print(f"eir renderer: unreadable job line ({e})", file=sys.stderr)
                    continue
                with cond:
                    pending.append(job)
                    cond.notify()
        finally:
            with cond:
                done = True
                cond.notify_all()
            _leave_idle(first_lane)  # it may be in the middle of a job
        if lanes > 1:
            work()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    work()
    reader.join()  # its lane's last job, drawn and written


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
