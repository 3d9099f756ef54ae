"""Reading a memory dataset's array files while the trainer imports PyTorch (Linux).

``import torch`` takes 1.3–1.9 s of one core, and the trainer can do nothing else meanwhile: a
thread reading files in the same process only slows the import down (every read that returns
waits for the importing thread to release the GIL). So before PyTorch is imported, ``start``
forks a child that lists and reads every array source of the configs, as ``open_array_source``
and ``ArraySource.read`` would, straight into a memory file (``memfd``) shared with the parent.
``take`` later hands the parent those arrays without a copy; a 10 000-file folder costs the
trainer ~0.01 s instead of ~0.25 s.

The child only ever reads: any problem in it (a missing folder, a bad file, a crash) means the
parent reads that source itself, the ordinary way, and reports the ordinary error. It never
imports PyTorch, and leaves by ``os._exit``, so nothing of the parent (atexit functions,
buffered output) runs twice. It runs at the same priority as the trainer; the renderer, which
imports its own libraries at that time too, runs at nice 10 and so mostly yields to it.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eir_core.config.schema import ArrayInputConfig, ExperimentConfig
from eir_core.data.arrays import ArraySource, open_array_source

log = logging.getLogger(__name__)

_PAGE = mmap.ALLOCATIONGRANULARITY
_pending: ReadAhead | None = None


def source_key(path: str | Path) -> str:
    """How sources are told apart: their resolved path (an input and an output often share one)."""
    return str(Path(path).resolve())


def usable() -> bool:
    """Whether forking is safe and pays: Linux, PyTorch not imported yet (no OpenMP pool, no CUDA
    state to inherit), and no other thread that could hold a lock at the fork."""
    return (
        sys.platform == "linux"
        and hasattr(os, "memfd_create")
        and "torch" not in sys.modules
        and threading.active_count() == 1
    )


@dataclass
class ReadAhead:
    """The parent's side: the child's pid, the pipe it reports on and the memory file."""

    pid: int
    report: int  # read end of the pipe: one line, "ok <index offset> <index length>"
    memory: int  # the memfd holding the arrays and, at the end, a JSON index of them
    _taken: dict[str, ArraySource] | None = None

    def take(self, key: str) -> ArraySource | None:
        """The source read for ``key`` (its arrays in ``cache``), or None: not asked for, or the
        child could not read it. The first call waits for the child."""
        if self._taken is None:
            self._taken = self._collect()
        return self._taken.pop(key, None)

    def _collect(self) -> dict[str, ArraySource]:
        try:
            with os.fdopen(self.report, "rb") as f:
                line = f.readline().split()
            _, status = os.waitpid(self.pid, 0)
            if status != 0 or len(line) != 3 or line[0] != b"ok":
                log.debug("read-ahead child gave no result (status %s): reading the files here", status)
                return {}
            index = json.loads(os.pread(self.memory, int(line[2]), int(line[1])))
            return {rec["key"]: self._source(rec) for rec in index if "offset" in rec}
        finally:
            os.close(self.memory)

    def _source(self, rec: dict[str, Any]) -> ArraySource:
        shape = tuple(rec["shape"])
        dtype = np.dtype(rec["dtype"])
        n = len(rec["paths"])
        if rec["nbytes"]:
            view = mmap.mmap(self.memory, rec["nbytes"], offset=rec["offset"])  # the array keeps it
            cache = np.frombuffer(view, dtype=dtype).reshape(n, *shape)
        else:
            cache = np.empty((n, *shape), dtype=dtype)
        return ArraySource(
            source=Path(rec["source"]),
            ids=rec["ids"],
            paths=rec["paths"],
            shape=(shape[0], shape[1], shape[2]),
            original_shape=tuple(rec["original_shape"]),
            dtype=dtype,
            cache=cache,
        )

    def discard(self) -> None:
        """Stop the child if it still runs and free what it read and nobody took."""
        if self._taken is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(self.report)
            os.close(self.memory)
        self._taken = {}


def start_for(cfg: ExperimentConfig) -> ReadAhead | None:
    """:func:`start` for the array sources that ``cfg`` loads into memory up front (those of a
    ``memory_dataset``; without it, files are read batch by batch and nothing is read ahead)."""
    if not cfg.global_config.basic_experiment.memory_dataset:
        return None
    inputs = [ic.input_info.input_source for ic in cfg.input_configs if isinstance(ic, ArrayInputConfig)]
    return start([*inputs, *(oc.output_info.output_source for oc in cfg.output_configs)])


def start(sources: Iterable[str | Path]) -> ReadAhead | None:
    """Fork the child that reads ``sources`` (folders or lists of ``.npy`` files), if
    :func:`usable`; the result is also kept for :func:`take`."""
    global _pending
    wanted = {source_key(s): Path(s) for s in sources}
    if not wanted or not usable():
        return None
    discard()
    _pending = fork_reader(wanted)
    return _pending


def fork_reader(wanted: dict[str, Path]) -> ReadAhead:
    """Fork the reading child for ``wanted`` (key -> source) without :func:`usable`'s checks."""
    memory = os.memfd_create("eir-read-ahead", os.MFD_CLOEXEC)
    report, report_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # the child: read, report, leave without running anything of the parent's
        code = 1  # any failure (even KeyboardInterrupt) only means the parent reads the files
        try:
            os.close(report)
            _read_into(memory, report_w, wanted)
            code = 0
        finally:
            os._exit(code)
    os.close(report_w)
    return ReadAhead(pid, report, memory)


def _read_into(memory: int, report: int, wanted: dict[str, Path]) -> None:
    index: list[dict[str, Any]] = []
    end = 0
    for key, path in wanted.items():
        try:
            src = open_array_source(path)
        except Exception:  # the parent repeats it and reports the error
            index.append({"key": key})
            continue
        nbytes = src.nbytes()
        if nbytes:
            os.ftruncate(memory, end + nbytes)
            with mmap.mmap(memory, nbytes, offset=end) as view:
                out = np.frombuffer(view, dtype=src.dtype).reshape(len(src.paths), *src.shape)
                try:
                    src.read(out=out)
                except Exception:  # as above
                    index.append({"key": key})
                    continue
                finally:
                    del out
        index.append(
            {
                "key": key,
                "source": str(src.source),
                "ids": src.ids,
                "paths": src.paths,
                "shape": list(src.shape),
                "original_shape": list(src.original_shape),
                "dtype": src.dtype.str,
                "offset": end,
                "nbytes": nbytes,
            }
        )
        end += -(-nbytes // _PAGE) * _PAGE  # the next source's map starts on a page
    blob = json.dumps(index).encode()
    os.pwrite(memory, blob, end)
    os.write(report, f"ok {end} {len(blob)}\n".encode())


def take(key: str) -> ArraySource | None:
    """The pending read-ahead's source for ``key`` (see :meth:`ReadAhead.take`), or None."""
    return _pending.take(key) if _pending is not None else None


def discard() -> None:
    """Drop the pending read-ahead (after a run, or before a new one)."""
    global _pending
    if _pending is not None:
        _pending.discard()
    _pending = None
