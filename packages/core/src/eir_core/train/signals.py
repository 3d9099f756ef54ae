"""Stopping on Ctrl-C / SIGTERM after the current step, and small process facts."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from types import FrameType

from eir_core.errors import ConfigError

log = logging.getLogger("eir_core.train")
_IMPORTED_AT = time.perf_counter()


class StopRequest:
    """The first SIGINT/SIGTERM asks the run to stop after this step (with a checkpoint).
    Alone, a second one aborts the save. Under torchrun, repeats are the launcher's echo of a
    Ctrl-C or its SIGTERM once another rank has exited; they must not cut rank 0's checkpoint
    short (torchrun SIGKILLs a rank that hangs), so they are ignored."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self, distributed: bool) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self.signal is not None:
                if distributed:
                    return
                raise KeyboardInterrupt
            self.signal = signum
            again = "" if distributed else " (again to abort)"
            log.warning("signal %d: finishing this step, then saving a checkpoint%s", signum, again)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; elsewhere since import of this module)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED_AT


def run_seed() -> int:
    raw = os.environ.get("EIR_SEED", "0")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"EIR_SEED={raw!r} is not an integer") from None
