"""The resume state of a run: where it is, its best score so far, the schedule and the
random streams, saved beside the weights and optimizer (``checkpoint.save_resume_state``).

A resumed run continues exactly where it stopped: the data order depends only on
(seed, epoch) and every rank's random streams are restored when the number of processes is
the same; otherwise those streams start afresh (with a warning).
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eir_core.train.checkpoint import load_resume_state, save_resume_state
from eir_core.train.distributed import Dist
from eir_core.train.optim import LRSchedule, Optimizer

log = logging.getLogger("eir_core.train")


@dataclass
class TrainState:
    iteration: int = 0
    best_perf: float | None = None
    rounds_without_improvement: int = 0
    valid_history: list[tuple[int, float, float]] = field(default_factory=list)

    def no_improvement_for(self, perf: float, patience: int, buffer: int | None) -> bool:
        """Record a validation's perf-average; True when early stopping should end the run
        (``patience`` validations without a better one, none before iteration ``buffer``)."""
        if self.best_perf is None or perf > self.best_perf:
            self.best_perf, self.rounds_without_improvement = perf, 0
            return False
        self.rounds_without_improvement += 1
        if patience == 0 or (buffer is not None and self.iteration < buffer):
            return False
        return self.rounds_without_improvement >= patience


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """This process's random streams (numpy's and torch's CPU generator), as JSON."""
    return {
        "numpy": rng.bit_generator.state,
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def save(
    path: Path,
    model: torch.nn.Module,
    optimizer: Optimizer,
    state: TrainState,
    schedule: LRSchedule,
    rng: np.random.Generator,
    dist: Dist,
    rng_by_rank: list[Any] | None,
) -> None:
    info: dict[str, Any] = {
        "iteration": state.iteration,
        "best_perf": state.best_perf,
        "rounds": state.rounds_without_improvement,
        "schedule": schedule.state_dict(),
        "rng": rng.bit_generator.state,
        "valid_history": state.valid_history,
        "world_size": dist.world_size,
        "job_id": dist.job_id,
    }
    if rng_by_rank is not None:
        info["rng_by_rank"] = rng_by_rank
    save_resume_state(path, model, optimizer, info)


def restore(
    raw: bytes,
    source: str,
    model: torch.nn.Module,
    optimizer: Optimizer,
    schedule: LRSchedule,
    dist: Dist,
    seed: int,
    rng: np.random.Generator,
) -> tuple[TrainState, np.random.Generator]:
    """Load the state from ``raw`` (the file's bytes, as rank 0 read them) into the model,
    optimizer and schedule; returns the training state and the random generator to use."""
    info = load_resume_state(raw, model, optimizer, source=source)
    state = TrainState(
        iteration=int(info["iteration"]),
        best_perf=info["best_perf"],
        rounds_without_improvement=int(info["rounds"]),
        valid_history=[(int(v[0]), float(v[1]), float(v[2])) for v in info["valid_history"]],
    )
    schedule.load_state_dict(info["schedule"])
    saved_world = int(info.get("world_size", 1))
    by_rank = info.get("rng_by_rank")
    if not dist.enabled and saved_world == 1:
        rng.bit_generator.state = info["rng"]
    elif by_rank is not None and len(by_rank) == dist.world_size:
        mine = by_rank[dist.rank]
        rng.bit_generator.state = mine["numpy"]
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(mine["torch"])), dtype=torch.uint8))
    else:
        # Data order depends only on (seed, epoch), so it carries over; the random streams of
        # dropout and imputation cannot, and start afresh for this iteration and rank.
        why = (
            f"it was saved by {saved_world} process(es), this run has {dist.world_size}"
            if saved_world != dist.world_size
            else "it was saved after a process failed"
        )
        log.warning("the resume state has no random streams for this rank (%s): reseeded", why)
        rng = np.random.default_rng([seed, dist.rank, state.iteration])
        torch.manual_seed(seed * 1000 + 7919 * dist.rank + state.iteration)
    return state, rng
