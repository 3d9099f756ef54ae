"""``eir-bundle inspect FILE|RUN_FOLDER``: print a bundle's manifest (no weights are loaded).

A run folder means its best checkpoint, exactly as ``eirserve --model-path`` picks it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eir_core.bundle import read_manifest, resolve_bundle_path
from eir_core.errors import EirError


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eir-bundle", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="print the manifest of a .safetensors bundle or a run folder's best one")
    i.add_argument("path", type=Path, metavar="FILE|RUN_FOLDER")
    i.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    args = p.parse_args(argv)
    try:
        path = resolve_bundle_path(args.path)
        m = read_manifest(path)
    except EirError as e:
        print(f"eir-bundle: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(m.model_dump_json(indent=2))
        return 0
    print(f"bundle    {path}")
    for line in m.describe():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
