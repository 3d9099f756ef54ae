"""The run folder (``basic_experiment.output_folder``): whether a run may start, resume or
start over in it, making it, and the record of what the run wrote there.

Nothing here deletes a file that eirtrain did not write. The trainer writes the marker file
first; it is also the run's journal: a header line, then one JSON line per file the run is
about to write (``{"wrote": "saved_models/x.safetensors"}``), per file it removed, per
checkpoint it completed and, when the run fails before its first checkpoint, a line that says
so. ``--overwrite`` deletes the recorded files by name (and the temporary files of their
interrupted atomic writes), then the folders that this left empty: a file of the user's
anywhere inside the run folder survives. It never works in ``/``, the home folder, the current
folder or one of its ancestors, nor in a run made before the journal existed. A run is started
over without a flag only when its journal records that it failed before its first checkpoint.
A folder is created only after configs and data have loaded.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath

from eir_core import __version__
from eir_core.errors import RunFolderError

log = logging.getLogger("eir_core.train")

MARKER = ".eirtrain-run"
LEGACY_MARKER = Path("meta") / "eir_core_version.txt"
JOURNAL_FORMAT = 2  # 1 (or no "format"): a marker without the record of files
MAX_MARKER_BYTES = 256 << 20  # a journal this big is not one eirtrain wrote
_TMP_RANDOM = 8  # tempfile.mkstemp's random part: ``.<name>.<8 chars>.tmp`` (eir_core._fs)


class Plan(Enum):
    FRESH = "fresh"  # nothing there yet (or only empty folders)
    START_OVER = "start over"  # the run's recorded files are removed first
    RESUME = "resume"


@dataclass
class Journal:
    """What a run's marker says about it."""

    format: int = 0
    files: list[str] = field(default_factory=list)  # written and not removed since, in order
    saved: bool = False  # a checkpoint or resume state was completed
    failed_early: bool = False  # the run recorded that it failed before its first checkpoint

    @property
    def records_files(self) -> bool:
        return self.format >= JOURNAL_FORMAT


def read_journal(marker: Path) -> Journal:
    """The journal in ``marker``; a line cut short by a crash (the last one) is skipped."""
    try:
        if marker.stat().st_size > MAX_MARKER_BYTES:
            return Journal()
        lines = marker.read_bytes().splitlines()
    except OSError:
        return Journal()
    records = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    if not records or not isinstance(records[0].get("format"), int):
        return Journal()
    j = Journal(format=records[0]["format"])
    files: dict[str, None] = {}
    for rec in records[1:]:
        if isinstance(rec.get("wrote"), str):
            files[rec["wrote"]] = None
        elif isinstance(rec.get("removed"), str):
            files.pop(rec["removed"], None)
        elif isinstance(rec.get("saved"), str):
            j.saved = True
        elif "failed" in rec:
            j.failed_early = True
    j.files = list(files)
    j.failed_early = j.failed_early and not j.saved
    return j


def _files_under(d: Path, limit: int = 3, skip: tuple[str, ...] = ()) -> list[str]:
    found: list[str] = []
    for root, _, files in os.walk(d):
        for f in files:
            rel = str(Path(root, f).relative_to(d))
            if rel in skip:
                continue
            found.append(rel)
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


def _temp_files_of(p: Path) -> list[Path]:
    """Temporary files an interrupted atomic write of ``p`` left beside it."""
    head = f".{p.name}."
    try:
        names = os.listdir(p.parent)
    except OSError:
        return []
    return [
        p.parent / n
        for n in names
        if n.startswith(head) and n.endswith(".tmp") and len(n) == len(head) + _TMP_RANDOM + len(".tmp")
    ]


@dataclass
class RunFolder:
    """A run holds an exclusive lock on its marker file while it trains, so that a second
    eirtrain on the same folder is refused instead of clearing it under the first. The same
    open file is the journal the run appends to (``record``)."""

    path: Path
    _fd: int | None = field(default=None, repr=False)
    _recorded: set[str] = field(default_factory=set, repr=False)
    _saved: bool = field(default=False, repr=False)

    @property
    def resume_state(self) -> Path:
        return self.path / "resume" / "state.safetensors"

    @property
    def saved_models(self) -> Path:
        return self.path / "saved_models"

    @property
    def marker(self) -> Path:
        return self.path / MARKER

    def is_run(self) -> bool:
        return self.marker.is_file() or (self.path / LEGACY_MARKER).is_file()

    def journal(self) -> Journal:
        return read_journal(self.marker) if self.marker.is_file() else Journal()

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
        journal = self.journal()
        if overwrite:
            why = _refuse_to_clear(d)
            if why:
                raise RunFolderError(f"{d}: --overwrite refused: {why}. Choose another basic_experiment.output_folder")
            if not journal.records_files:
                raise RunFolderError(
                    f"{d}: --overwrite refused: this run was made by an older eirtrain that kept no record of the "
                    "files it wrote, so they cannot be told from yours. Delete what you do not need yourself, or "
                    "choose another basic_experiment.output_folder"
                )
            return Plan.START_OVER
        if resume:
            if not self.resume_state.is_file():
                raise RunFolderError(f"{d}: nothing to resume (no resume/state.safetensors); drop --resume")
            return Plan.RESUME
        if journal.failed_early:
            log.info(
                "%s: the run there failed before its first checkpoint (%s says so); starting over in it", d, MARKER
            )
            return Plan.START_OVER
        raise RunFolderError(
            f"{d}: the run folder already has a run in it. Pass --resume to continue it, "
            "--overwrite to delete its files and start over, or choose another basic_experiment.output_folder"
        )

    def _locked_elsewhere(self) -> bool:
        if not self.marker.is_file():
            return False
        with self.marker.open("rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        """Let another run use the folder (also happens when this process ends)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _restarted(self, job_id: str, restart: int) -> Plan | None:
        """If this torchrun job wrote the resume state, continue from it; if the folder is this
        job's and its journal records no completed checkpoint, start over. Otherwise the usual
        rules apply."""
        from eir_core.train.checkpoint import read_resume_info  # PyTorch: not for make clean's use of this module

        state = self.resume_state
        if state.is_file() and read_resume_info(state).get("job_id") == job_id:
            log.warning("torchrun restart %d of job %s: continuing from the saved state", restart, job_id)
            return Plan.RESUME
        marker = self.path / "meta" / "torchrun_job_id.txt"
        journal = self.journal()
        same_job = marker.is_file() and marker.read_text().strip() == job_id
        if same_job and journal.records_files and not journal.saved and not self._locked_elsewhere():
            log.warning("torchrun restart %d of job %s: nothing saved yet, starting over", restart, job_id)
            return Plan.START_OVER
        return None

    # ------------------------------------------------------------------ making it
    def make(self, plan: Plan, job_id: str | None = None) -> None:
        """Carry the plan out: take the marker's lock, delete the recorded files of the run
        (START_OVER), start the journal, then the folders a run needs. Called once configs and
        data have loaded."""
        d = self.path
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.marker, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(f"{d}: another eirtrain started in this folder at the same moment") from None
        self._fd = fd
        journal = self.journal()
        if plan is Plan.START_OVER:
            self._clear(journal)
        if plan is Plan.RESUME and journal.records_files:
            self._recorded, self._saved = set(journal.files), journal.saved
            for rel in journal.files:  # writes a crash interrupted: never complete, drop them
                p = self._inside(rel)
                for tmp in _temp_files_of(p) if p is not None else []:
                    tmp.unlink(missing_ok=True)
        elif plan is not Plan.RESUME:
            os.ftruncate(fd, 0)
            self._append(
                {
                    "format": JOURNAL_FORMAT,
                    "eir_core_version": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "about": "eirtrain's record of the files this run wrote: --overwrite deletes these, nothing else",
                }
            )
        self.saved_models.mkdir(exist_ok=True)
        self.record(d / LEGACY_MARKER)
        (d / LEGACY_MARKER).parent.mkdir(exist_ok=True)
        (d / LEGACY_MARKER).write_text(__version__ + "\n")
        if job_id:  # which torchrun job this folder belongs to, for its restarts
            self.record(d / "meta" / "torchrun_job_id.txt")
            (d / "meta" / "torchrun_job_id.txt").write_text(job_id + "\n")

    def _append(self, rec: dict[str, object]) -> None:
        if self._fd is not None:
            os.write(self._fd, (json.dumps(rec) + "\n").encode())

    def record(self, path: Path) -> None:
        """Note that the run is about to write ``path`` (inside the run folder), before it does:
        a crash between the two leaves a record of a file that may not exist, never a file
        without a record. Does nothing in a process that did not make the folder (ranks > 0)."""
        if self._fd is None:
            return
        rel = path.relative_to(self.path).as_posix()
        if rel not in self._recorded:
            self._recorded.add(rel)
            self._append({"wrote": rel})

    def record_saved(self, path: Path) -> None:
        """A checkpoint or the resume state is complete on disk."""
        if self._fd is not None:
            self._saved = True
            self._append({"saved": path.relative_to(self.path).as_posix()})

    def record_removed(self, path: Path) -> None:
        if self._fd is not None:
            rel = path.relative_to(self.path).as_posix()
            self._recorded.discard(rel)
            self._append({"removed": rel})

    def owns(self, path: Path) -> bool:
        """Whether the journal records ``path`` as written by this run."""
        try:
            return path.relative_to(self.path).as_posix() in self._recorded
        except ValueError:
            return False

    def record_failure(self, reason: str) -> None:
        """The run is failing; before its first checkpoint that lets the same command start over."""
        if self._fd is not None and not self._saved:
            self._append({"failed": "before its first checkpoint", "reason": reason[:300], "at": time.time()})

    def _inside(self, rel: str) -> Path | None:
        """The path of a recorded name, or None if it could point outside the run folder."""
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or rel == MARKER:
            return None
        p = self.path.joinpath(*parts)
        root = os.path.realpath(self.path)
        parent = os.path.realpath(p.parent)
        if parent != root and not parent.startswith(root + os.sep):
            return None
        return p

    def remove(self) -> list[str]:
        """Delete this run: the files its journal records, then the journal itself and the
        folders that this left empty (the run folder too, when nothing else is in it). Files
        the run did not write stay; their paths (relative to the folder) are returned.
        Raises RunFolderError when the folder is not a run with a record of its files, or
        another eirtrain is training in it."""
        d = self.path
        if not self.marker.is_file():
            raise RunFolderError(f"{d}: not an eirtrain run folder (no {MARKER}); nothing removed")
        journal = self.journal()
        if not journal.records_files:
            raise RunFolderError(f"{d}: made by an older eirtrain that kept no record of its files; nothing removed")
        fd = os.open(self.marker, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunFolderError(
                    f"{d}: an eirtrain is training in this folder right now; nothing removed"
                ) from None
            self._clear(journal)
            self.marker.unlink()
        finally:
            os.close(fd)
        left = _files_under(d, limit=1_000_000)
        if not left:
            for root, _dirs, _files in sorted(os.walk(d), key=lambda w: len(Path(w[0]).parts), reverse=True):
                try:
                    os.rmdir(root)
                except OSError:
                    pass
        return left

    def _clear(self, journal: Journal) -> None:
        """Delete the files the journal records (and temporary files of their writes), then
        the folders among their parents that this left empty."""
        folders: set[Path] = set()
        n = 0
        for rel in journal.files:
            p = self._inside(rel)
            if p is None:
                log.warning("%s: %s records %r, which is not a path inside it; left alone", self.path, MARKER, rel)
                continue
            for target in [p, *_temp_files_of(p)]:
                if target.is_symlink() or target.is_file():
                    target.unlink()
                    n += 1
            folders.update(q for q in p.parents if q != self.path and q.is_relative_to(self.path))
        for f in sorted(folders, key=lambda q: len(q.parts), reverse=True):
            try:
                f.rmdir()
            except OSError:  # not empty (a file of the user's, or never made)
                pass
        log.info("%s: removed the %d files the previous run recorded writing", self.path, n)
        left = _files_under(self.path, limit=5, skip=(MARKER,))
        if left:
            log.warning("%s: kept files that eirtrain did not write: %s", self.path, ", ".join(left))
