"""``eir-bundle inspect FILE``: print a bundle's manifest (no weights are loaded)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from eir_core.bundle import read_manifest
from eir_core.errors import EirError


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eir-bundle", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="print the manifest of a .safetensors bundle")
    i.add_argument("file", type=Path)
    i.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    args = p.parse_args(argv)
    try:
        m = read_manifest(args.file)
    except EirError as e:
        print(f"eir-bundle: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    t = m.get("training", {})
    print(f"bundle    {args.file}")
    print(f"format    {m['format']} v{m['format_version']} (eir-core {m.get('package_version')})")
    print(f"run       {m.get('run_name')}  iteration {t.get('iteration')}  perf-average {t.get('perf_average')}")
    if "world_size" in t:
        per = t.get("batch_size_per_process")
        print(
            f"trained   {t['world_size']} process(es), global batch {t.get('batch_size', '?')}"
            + (f" ({per} per process)" if per is not None else "")
        )
    for e in m["inputs"]:
        if e["type"] == "array":
            print(f"input     {e['name']}: array {e['shape']} {e['dtype']} normalization={e.get('normalization')}")
        else:
            cats = "; ".join(f"{c}: {', '.join(v)}" for c, v in e.get("categories", {}).items())
            print(f"input     {e['name']}: tabular  categories {cats}  continuous {e.get('con_columns')}")
        if e.get("modality_dropout_rate"):
            print(f"          (optional at prediction: modality_dropout_rate={e['modality_dropout_rate']})")
    for e in m["outputs"]:
        print(f"output    {e['name']}: array {e['shape']} float32 (training files {e.get('source_dtype')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
