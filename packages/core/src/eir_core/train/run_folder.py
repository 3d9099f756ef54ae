"""The run folder (``basic_experiment.output_folder``): whether a run may start, resume or
start over in it, and making it.

Nothing here deletes what eirtrain did not write. A run folder is recognised by the marker file
the trainer writes into it before anything else (or, for runs made before the marker, by
``meta/eir_core_version.txt``). ``--overwrite`` removes only the entries a run writes, and only
in such a folder, never in ``/``, the home folder, the current folder or one of its ancestors.
A folder is created only after configs and data have loaded, and a run that failed before it
saved anything does not block the same command.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO

from eir_core import __version__
from eir_core.errors import RunFolderError
from eir_core.manifest import checkpoints_in
from eir_core.train.checkpoint import read_resume_info

log = logging.getLogger("eir_core.train")

MARKER = ".eirtrain-run"
LEGACY_MARKER = Path("meta") / "eir_core_version.txt"
# What a run writes at the top of its folder; --overwrite removes these and nothing else.
RUN_ENTRIES = (
    MARKER,
    "configs",
    "saved_models",
    "resume",
    "results",
    "latents",
    "meta",
    "model_architecture",
    "logging_history.log",
    "train_average_history.log",
    "validation_average_history.log",
    "training_curve_LOSS_1.png",
    "training_curve_PERF-AVERAGE_1.png",
    "latents_visualization_tsne.png",
)


class Plan(Enum):
    FRESH = "fresh"  # nothing there yet (or only empty folders)
    START_OVER = "start over"  # our run's entries are removed first
    RESUME = "resume"


def _files_under(d: Path, limit: int = 3) -> list[str]:
    found: list[str] = []
    for root, _, files in os.walk(d):
        for f in files:
            found.append(str(Path(root, f).relative_to(d)))
            if len(found) >= limit:
                return found
    return found


def _refuse_to_clear(d: Path) -> str | None:
    """Why ``d`` must never be cleared, or None."""
    real = d.resolve()
    cwd = Path.cwd().resolve()
    if real == Path(real.anchor):
        return "it is the filesystem root"
    if real == Path.home().resolve():
        return "it is the home folder"
    if real == cwd or cwd.is_relative_to(real):
        return "it is the current folder or one of its parents"
    return None


@dataclass
class RunFolder:
    """A run holds an exclusive lock on its marker file while it trains, so that a second
    eirtrain on the same folder is refused instead of clearing it under the first."""

    path: Path
    _lock: IO[bytes] | None = field(default=None, repr=False)

    @property
    def resume_state(self) -> Path:
        return self.path / "resume" / "state.safetensors"

    @property
    def saved_models(self) -> Path:
        return self.path / "saved_models"

    def is_run(self) -> bool:
        return (self.path / MARKER).is_file() or (self.path / LEGACY_MARKER).is_file()

    def has_progress(self) -> bool:
        return self.resume_state.is_file() or bool(self.saved_models.is_dir() and checkpoints_in(self.saved_models))

    def plan(self, resume: bool, overwrite: bool, job_id: str | None = None, restart: int = 0) -> Plan:
        """Decide from what is on disk, writing nothing. Raises RunFolderError with the fix."""
        d = self.path
        if restart and job_id:  # torchrun --max-restarts started this job again
            again = self._restarted(job_id, restart)
            if again is not None:
                return again
        if d.exists() and not d.is_dir():
            raise RunFolderError(f"{d}: basic_experiment.output_folder is a file; choose a folder path")
        files = _files_under(d) if d.is_dir() else []
        if not files:
            if resume:
                raise RunFolderError(f"{d}: nothing to resume (no run there yet); drop --resume")
            return Plan.FRESH
        if self._locked_elsewhere():
            raise RunFolderError(
                f"{d}: another eirtrain is training in this folder right now; wait for it to finish "
                "or choose another basic_experiment.output_folder"
            )
        if not self.is_run():
            raise RunFolderError(
                f"{d}: basic_experiment.output_folder holds files that eirtrain did not write "
                f"({', '.join(files)}); eirtrain never writes into or deletes such a folder. "
                "Choose another output_folder (e.g. --globals.basic_experiment.output_folder=runs/NAME)"
            )
        if overwrite:
            why = _refuse_to_clear(d)
            if why:
                raise RunFolderError(f"{d}: --overwrite refused: {why}. Choose another basic_experiment.output_folder")
            return Plan.START_OVER
        if resume:
            if not self.resume_state.is_file():
                raise RunFolderError(f"{d}: nothing to resume (no resume/state.safetensors); drop --resume")
            return Plan.RESUME
        if not self.has_progress():
            log.info("%s: the run there saved nothing (it failed early); starting over in it", d)
            return Plan.START_OVER
        raise RunFolderError(
            f"{d}: the run folder already has a run in it. Pass --resume to continue it, "
            "--overwrite to delete it and start over, or choose another basic_experiment.output_folder"
        )

    def _locked_elsewhere(self) -> bool:
        marker = self.path / MARKER
        if not marker.is_file():
            return False
        with marker.open("rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        """Let another run use the folder (also happens when this process ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _restarted(self, job_id: str, restart: int) -> Plan | None:
        """If this torchrun job wrote the resume state, continue from it; if the folder is this
        job's but it failed before saving, start over. Otherwise the usual rules apply."""
        state = self.resume_state
        if state.is_file() and read_resume_info(state).get("job_id") == job_id:
            log.warning("torchrun restart %d of job %s: continuing from the saved state", restart, job_id)
            return Plan.RESUME
        marker = self.path / "meta" / "torchrun_job_id.txt"
        if not state.is_file() and marker.is_file() and marker.read_text().strip() == job_id:
            log.warning("torchrun restart %d of job %s: nothing saved yet, starting over", restart, job_id)
            return Plan.START_OVER
        return None

    def make(self, plan: Plan, job_id: str | None = None) -> None:
        """Carry the plan out: clear our own entries (START_OVER), write the marker first, then
        the folders a run needs. Called once configs and data have loaded."""
        d = self.path
        if plan is Plan.START_OVER:
            self._clear()
        d.mkdir(parents=True, exist_ok=True)
        if plan is not Plan.RESUME or not (d / MARKER).is_file():
            record = {"eir_core_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (d / MARKER).write_text(json.dumps(record) + "\n")
        self._lock = (d / MARKER).open("rb")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise RunFolderError(f"{d}: another eirtrain started in this folder at the same moment") from None
        if plan is Plan.RESUME:  # temporary files of writes a crash interrupted: never complete, drop them
            for stale in [*d.glob("saved_models/.*.tmp"), *d.glob("resume/.*.tmp")]:
                stale.unlink(missing_ok=True)
        self.saved_models.mkdir(exist_ok=True)
        (d / "meta").mkdir(exist_ok=True)
        (d / LEGACY_MARKER).write_text(__version__ + "\n")
        if job_id:  # which torchrun job this folder belongs to, for its restarts
            (d / "meta" / "torchrun_job_id.txt").write_text(job_id + "\n")

    def _clear(self) -> None:
        d = self.path
        if not d.is_dir():
            return
        for name in RUN_ENTRIES:
            p = d / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        left = _files_under(d, limit=5)
        if left:
            log.warning("%s: kept files that eirtrain did not write: %s", d, ", ".join(left))
