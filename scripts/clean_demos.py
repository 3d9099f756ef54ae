"""``make clean``: remove what the Makefile's demos wrote, and nothing else.

The demos (``examples/tutorial/run_demo.sh``) write only under their own workspace,
``examples/tutorial/demo/``: run folders in ``runs/`` and the built-in digits in ``data/``.
Here a run folder loses exactly the files its journal (``.eirtrain-run``) records eirtrain
writing, and a data folder that the demo marked as its own (``.made-by-run_demo``) loses
``mnist_labels.csv`` and the ``mnist_npy/<ID>.npy`` files of the IDs listed in it. Folders that
this leaves empty go too. Anything else (a note of yours, a run you trained there by hand
without a journal) stays and is listed.

    python scripts/clean_demos.py examples/tutorial/demo
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

DATA_MARKER = ".made-by-run_demo"


def clean_data(folder: Path) -> int:
    """The demo's data in ``folder``; returns the number of files removed."""
    marker = folder / DATA_MARKER
    if not marker.is_file():
        return 0
    labels = folder / "mnist_labels.csv"
    n = 0
    if labels.is_file():
        with labels.open(newline="") as f:
            rows = list(csv.reader(f))
        for row in rows[1:]:
            if row and row[0].isdigit():
                p = folder / "mnist_npy" / f"{row[0]}.npy"
                if p.is_file():
                    p.unlink()
                    n += 1
        labels.unlink()
        n += 1
    marker.unlink()
    return n + 1


def remove_empty_folders(top: Path) -> None:
    for root, _dirs, _files in sorted(os.walk(top), key=lambda w: len(Path(w[0]).parts), reverse=True):
        try:
            os.rmdir(root)
        except OSError:
            pass  # not empty: something the demo did not write


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    work = Path(argv[0])
    if not work.is_dir():
        print(f"clean: {work}: nothing there")
        return 0
    from eir_core.errors import RunFolderError
    from eir_core.train.run_folder import RunFolder

    problems = 0
    runs = work / "runs"
    for run in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not run.is_dir() or not (run / ".eirtrain-run").is_file():
            continue
        try:
            kept = RunFolder(run).remove()
        except RunFolderError as e:
            print(f"clean: {e}", file=sys.stderr)
            problems += 1
            continue
        print(
            f"clean: removed the run {run}"
            + (f" (kept files eirtrain did not write: {', '.join(kept)})" if kept else "")
        )
    data = work / "data"
    for folder in sorted(data.iterdir()) if data.is_dir() else []:
        if folder.is_dir():
            n = clean_data(folder)
            if n:
                print(f"clean: removed the demo's data in {folder} ({n} files)")
    remove_empty_folders(work)
    if work.exists():
        left = sorted(str(p.relative_to(work)) for p in work.rglob("*") if not p.is_dir())
        print(
            f"clean: {work} kept: files the demos did not write: {', '.join(left[:10])}"
            + (" ..." if len(left) > 10 else "")
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
