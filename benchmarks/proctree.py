"""The benchmarks' view of a process tree (Linux /proc), shared by serve_load and train_throughput."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """The direct children of ``pid``, started by any of its threads (Linux's per-task children
    lists: no scan of all of /proc, which at every poll would take CPU from the run measured)."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return kids
