"""``eir-bundle inspect FILE|RUN_FOLDER``: print a bundle's manifest (no weights are loaded).
``eir-bundle add-graph FILE|RUN_FOLDER``: add the model's ONNX graph to a bundle that has none
(one written by an older eir-core, or without the onnx package), for ``eirserve``'s ONNX runtime.

A run folder means its best checkpoint, exactly as ``eirserve --model-path`` picks it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eir_core.bundle import GRAPH_META_KEY, has_graph, read_manifest, resolve_bundle_path
from eir_core.errors import EirError
from eir_core.extras import require


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eir-bundle",
        allow_abbrev=False,
        description="Look into and complete eirtrain's bundles (.safetensors). A run folder means its best "
        "checkpoint, exactly as eirserve --model-path picks it.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{inspect,add-graph}", help="what to do")
    i = sub.add_parser("inspect", help="print the manifest of a .safetensors bundle or a run folder's best one")
    i.add_argument("path", type=Path, metavar="FILE|RUN_FOLDER", help="a bundle, or a run folder (its best one)")
    i.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    g = sub.add_parser(
        "add-graph",
        help="export the model to ONNX (checked against it) and write it into the bundle, atomically",
    )
    g.add_argument("path", type=Path, metavar="FILE|RUN_FOLDER", help="a bundle, or a run folder (its best one)")
    g.add_argument("--force", action="store_true", help="replace a graph the bundle already has")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = resolve_bundle_path(args.path)
        m = read_manifest(path)
        if args.command == "add-graph":
            if not (has_graph(path) and not args.force):
                require("train", "eir-bundle add-graph (PyTorch's ONNX exporter, checked on onnxruntime)")
            return _add_graph(path, args.force)
        graph = has_graph(path)
    except EirError as e:
        print(f"eir-bundle: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(m.model_dump_json(indent=2))
        return 0
    print(f"bundle    {path}")
    for line in m.describe():
        print(line)
    print(f"graph     {'ONNX (eirserve runs it without PyTorch)' if graph else 'none (eir-bundle add-graph adds one)'}")
    return 0


def _add_graph(path: Path, force: bool) -> int:
    if has_graph(path) and not force:
        print(f"{path}: already has an ONNX graph ({GRAPH_META_KEY}); --force replaces it")
        return 0
    from eir_core.onnx_export import add_graph  # PyTorch and the exporter: only for this command

    add_graph(path, print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
