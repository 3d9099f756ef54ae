"""Packed and unpacked sizes of wheel files, read from their zip directories (nothing is
extracted or installed): what a package adds to an image before bytecode. Used for the CUDA
variant's comparison in docs/deploying.md ("Images and releases").

    python benchmarks/wheel_sizes.py WHEEL... [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path


def sizes(path: Path) -> tuple[int, int]:
    with zipfile.ZipFile(path) as z:
        return path.stat().st_size, sum(i.file_size for i in z.infolist())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("wheels", nargs="+", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args()
    rows = [(w.name, *sizes(w)) for w in sorted(args.wheels)]
    lines = ["| wheel | packed MB | unpacked MB |", "| --- | --- | --- |"]
    lines += [f"| {name} | {packed / 1e6:.1f} | {unpacked / 1e6:.1f} |" for name, packed, unpacked in rows]
    total = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"| total | {total[0] / 1e6:.1f} | {total[1] / 1e6:.1f} |")
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
