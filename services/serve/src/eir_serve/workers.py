"""``eirserve --workers N``: N server processes on one port, and a supervisor that keeps them.

Each worker is a whole ``eirserve`` (model, batcher, event loop, gRPC server) bound with
SO_REUSEPORT, so the kernel spreads new connections over the workers' listening sockets; no
process hands connections to another. The supervisor (this module, in the process the user
started) only starts, watches and stops them:

* the port was checked free by the caller (bound without SO_REUSEPORT, then released), so the
  workers do not silently share it with some other server;
* metrics: a fresh ``PROMETHEUS_MULTIPROC_DIR`` for this run, removed at the end; a dead worker's
  live gauge is dropped from it (``mark_process_dead``);
* a worker that dies while serving (or is killed) is replaced; one that gives up during its
  start-up (a bad port, bundle or device the supervisor could not see) stops the whole server
  with its exit code, and so do too many replacements in a minute;
* SIGTERM and SIGINT are passed on once to every worker, which drains as a single server does;
  workers run in their own session (a terminal's Ctrl-C reaches the supervisor alone, not twice)
  and stop by themselves if the supervisor disappears (``EIR_SERVE_SUPERVISOR_PID``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import FrameType

from eir_serve.settings import Settings

log = logging.getLogger("eir_serve.workers")
SUPERVISOR_ENV = "EIR_SERVE_SUPERVISOR_PID"
# A worker that exits by itself sooner than this after its start failed to start (a bad bundle,
# port or device): replacing it would loop. One killed by a signal (OOM killer, kill -9) is replaced,
# but more than MAX_RESTARTS replacements within RESTART_WINDOW_S stop the server.
START_GRACE_S = 20.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float


def _worker_command(argv: list[str], port: int) -> list[str]:
    # The user's own flags, then the ones that make it a worker (argparse keeps the last of each).
    return [sys.executable, "-m", "eir_serve.cli", *argv, "--port", str(port), "--workers", "1", "--reuse-port"]


def run_workers(settings: Settings, port: int, argv: list[str]) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="eirserve-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir, SUPERVISOR_ENV: str(os.getpid())}
    command = _worker_command(argv, port)
    workers: dict[int, _Worker] = {}
    stopping: list[int] = []  # the signal that stops us, once received

    def start(index: int) -> None:
        proc = subprocess.Popen(command, env=env, start_new_session=True)  # noqa: S603  # our own command line
        workers[proc.pid] = _Worker(index, proc, time.monotonic())

    def forward(sig: int, frame: FrameType | None) -> None:
        if stopping:  # a second signal: stop at once
            for w in workers.values():
                w.proc.kill()
            return
        stopping.append(sig)
        log.info("%s: stopping %d workers", signal.Signals(sig).name, len(workers))
        for w in workers.values():
            w.proc.send_signal(sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    restarts: list[float] = []
    try:
        for i in range(settings.workers):
            start(i)
        log.info(
            "%d workers (pids %s) share http://%s:%d%s (SO_REUSEPORT)",
            settings.workers,
            ", ".join(str(p) for p in workers),
            settings.host,
            port,
            f" and gRPC port {settings.grpc_port}" if settings.grpc_port else "",
        )
        while workers:
            pid, status = os.wait()
            worker = workers.pop(pid, None)
            if worker is None:
                continue
            _mark_dead(pid, metrics_dir)
            exit_code = os.waitstatus_to_exitcode(status)
            if stopping:
                continue
            now = time.monotonic()
            if exit_code >= 0 and now - worker.started < START_GRACE_S:  # it gave up by itself, early
                log.error("worker %d (pid %d) failed to start (exit code %d): stopping", worker.index, pid, exit_code)
                code = exit_code or 3
                forward(signal.SIGTERM, None)
                continue
            restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(restarts) > MAX_RESTARTS:
                log.error("%d workers ended within %.0f s: stopping", len(restarts), RESTART_WINDOW_S)
                code = 3
                forward(signal.SIGTERM, None)
                continue
            how = f"signal {signal.Signals(-exit_code).name}" if exit_code < 0 else f"exit code {exit_code}"
            log.warning("worker %d (pid %d) ended (%s); starting another", worker.index, pid, how)
            start(worker.index)
    finally:
        for w in workers.values():  # only after an error in this loop itself
            w.proc.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def _mark_dead(pid: int, metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]  # unannotated upstream


def supervisor_gone() -> bool:
    """True in a worker whose supervisor has ended (the worker was re-parented)."""
    pid = os.environ.get(SUPERVISOR_ENV)
    return pid is not None and os.getppid() != int(pid)
