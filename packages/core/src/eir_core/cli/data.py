"""``eir-data``: write the built-in digits, or convert real MNIST files, in EIR's layout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eir_core.errors import EirError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eir-data",
        allow_abbrev=False,
        description="Write data sets in the EIR tutorial layout (DIR/mnist_npy/<ID>.npy + DIR/mnist_labels.csv). "
        "It never writes into a folder whose mnist_npy/ already has files.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{digits,mnist}", help="what to write")
    d = sub.add_parser(
        "digits",
        help="scikit-learn's bundled handwritten digits (real data, no download)",
        description="scikit-learn's 1797 bundled 8x8 handwritten digits (real data, no download), optionally "
        "resized; IDs start at 10000 (8x8) or 20000 (other sizes).",
    )
    d.add_argument("--output-folder", "--output_folder", required=True, type=Path, help="where to write (new or empty)")
    d.add_argument("--size", type=int, default=8, help="side in pixels, 4..64 (8: the originals; else resized)")
    d.add_argument("--flat", action="store_true", help="write 1-D arrays of size*size values instead of images")
    d.add_argument("--count", type=int, default=None, help="number of samples (28x28: shifted copies past 1797)")
    d.add_argument("--seed", type=int, default=0, help="seed of the shifts that make copies past 1797 (default 0)")
    m = sub.add_parser(
        "mnist",
        help="convert MNIST IDX files (gz or not) or an .npz you already have",
        description="Convert MNIST files you already have (nothing is downloaded): the four IDX files "
        "(train-images-idx3-ubyte[.gz], ...) or one .npz with x_train/y_train (and x_test/y_test).",
    )
    m.add_argument(
        "--source",
        required=True,
        type=Path,
        help="a folder of MNIST IDX files (gzipped or not), one IDX images file (its labels file beside it), "
        "or an .npz with x_train/y_train (x_test/y_test)",
    )
    m.add_argument("--output-folder", "--output_folder", required=True, type=Path, help="where to write (new or empty)")
    m.add_argument(
        "--split", choices=("train", "test", "all"), default="train", help="which images to convert (default: train)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from eir_core.extras import require

        require("train", "eir-data")  # scikit-learn's digits, resized with PyTorch
        from eir_core.data.builtin import make_digits, write_tutorial_layout

        if args.count is not None if args.command == "digits" else False:
            if args.count < 1:
                raise EirError("--count must be at least 1")
        if args.command == "digits":
            if not 4 <= args.size <= 64:
                raise EirError(f"--size must be between 4 and 64, got {args.size}")
            images, labels = make_digits(args.size, args.count, args.seed)
            if args.flat:
                images = images.reshape(len(images), -1)
            start = 10000 if args.size == 8 else 20000
        else:
            from eir_core.data.mnist_files import read_mnist

            images, labels = read_mnist(args.source, args.split)
            start = 0
        if (args.output_folder / "mnist_npy").exists() and any((args.output_folder / "mnist_npy").iterdir()):
            raise EirError(f"{args.output_folder}/mnist_npy already has files; choose an empty --output-folder")
        write_tutorial_layout(args.output_folder, images, labels, start)
    except EirError as e:
        print(f"eir-data: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.output_folder}: {len(images)} samples, shape {tuple(images.shape[1:])}, dtype {images.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
