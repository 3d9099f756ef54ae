"""Train a few iterations on the built-in digits and load the bundle back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eir_core.bundle import read_manifest
from eir_core.predict import Predictor


def test_autoencoder_bundle_loads_and_reconstructs(tiny_bundle: Path, digits_dir: Path) -> None:
    run = tiny_bundle.parent.parent
    m = read_manifest(tiny_bundle)
    first = m.inputs[0]
    assert (first.type, first.name, first.shape, first.dtype) == ("array", "mnist", (1, 8, 8), "|u1")
    assert m.outputs[0].dtype == "<f4"
    assert m.training.iteration == 2 * (1597 // 64)  # final checkpoint = last iteration
    for name in ("train_average_history.log", "validation_average_history.log", "training_curve_LOSS_1.png"):
        assert (run / name).is_file(), name
    samples = run / "results/mnist_output/mnist_output/samples"
    last = max(int(p.name) for p in samples.iterdir())
    assert (samples / str(last) / "auto" / "0_generated.npy").is_file()
    assert (samples / str(last) / "auto" / "grid.png").stat().st_size > 1000
    meta = json.loads((samples / str(last) / "auto" / "meta.json").read_text())
    assert len(meta) == 10

    pred = Predictor.from_path(tiny_bundle, device="cpu")
    img = np.load(digits_dir / "mnist_npy" / "10005.npy")
    out = pred.predict([{"mnist": img}], seeds=[0])[0]["mnist_output"]
    assert out.shape == (1, 8, 8) and out.dtype == np.float32
    # Even a few iterations reconstruct better than predicting the mean image.
    mse_model = float(np.mean((out[0] - img) ** 2))
    mse_mean = float(np.mean((img.mean() - img) ** 2))
    assert mse_model < mse_mean
