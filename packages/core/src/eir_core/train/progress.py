"""Progress of a long run: a tqdm bar on a terminal, a periodic log line elsewhere (CI, files)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("eir_core.train")


class Progress:
    def __init__(self, total: int, start: int, disabled: bool | None, log_every_s: float = 10.0) -> None:
        self.total, self.start = total, start
        self.t0 = time.perf_counter()
        self.last_log = self.t0
        self.log_every_s = log_every_s
        self.loss = float("nan")
        use_bar = sys.stderr.isatty() if disabled is None else not disabled
        self.bar: Any = None
        if use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, mininterval=0.5)

    def update(self, iteration: int, loss: float) -> None:
        self.loss = 0.9 * self.loss + 0.1 * loss if self.loss == self.loss else loss
        if self.bar is not None:
            self.bar.update(1)
            if iteration % 25 == 0:
                self.bar.set_postfix(loss=f"{self.loss:.4f}", refresh=False)
            return
        now = time.perf_counter()
        if now - self.last_log >= self.log_every_s or iteration == self.total:
            self.last_log = now
            done = iteration - self.start
            rate = done / max(now - self.t0, 1e-9)
            eta = (self.total - iteration) / rate if rate > 0 else float("inf")
            log.info(
                "iteration %d/%d (%.0f%%) loss %.4f, %.1f it/s, ETA %.0fs",
                iteration,
                self.total,
                100 * iteration / self.total,
                self.loss,
                rate,
                eta,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
