"""The second half of the tutorial: label input, modality dropout, manual inputs, latents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eir_core.cli.train import main as eirtrain
from eir_core.errors import InputError
from eir_core.predict import Predictor
from tests.helpers import tutorial_configs


def test_run_writes_manual_samples_latents_and_tsne(tiny_conditional_bundle: Path) -> None:
    run = tiny_conditional_bundle.parent.parent
    last = max(int(p.name) for p in (run / "results/mnist_output/mnist_output/samples").iterdir())
    manual = run / f"results/mnist_output/mnist_output/samples/{last}/manual"
    meta = json.loads((manual / "meta.json").read_text())
    assert list(meta) == ["manual_0", "manual_1"]
    assert meta["manual_0"]["index"] == 4  # numbering continues after the 4 auto samples
    assert json.loads((manual / "4_inputs" / "mnist_label.json").read_text()) == {"CLASS": "0"}
    assert np.load(manual / "4_generated.npy").shape == (1, 8, 8)
    assert (manual / "grid.png").stat().st_size > 1000
    latents = run / f"latents/latent_outputs/{last}/fusion_modules.computed.fusion_modules.fusion.1.0"
    rec = np.load(latents / "batch_00000.npy")
    assert rec.dtype.names == ("Latent", "ID") and rec["Latent"].shape == (200, 256)
    assert (latents / "tsne.png").stat().st_size > 1000
    assert (run / "latents_visualization_tsne.png").is_file()


def test_label_only_generation_is_seeded(tiny_conditional_bundle: Path) -> None:
    p = Predictor.from_path(tiny_conditional_bundle, device="cpu")
    assert p.optional_inputs == {"mnist"}
    item = {"mnist_label": {"CLASS": "7"}}
    a = p.predict([item, item], seeds=[1, 2])
    b = p.predict([item], seeds=[1])
    np.testing.assert_allclose(a[0]["mnist_output"], b[0]["mnist_output"], rtol=1e-4, atol=1e-3)
    assert np.abs(a[0]["mnist_output"] - a[1]["mnist_output"]).mean() > 0.01  # different seeds differ
    with pytest.raises(InputError, match="allowed: 0, 1"):
        p.check_item({"mnist_label": {"CLASS": "x"}})
    with pytest.raises(InputError, match="required"):
        p.check_item({"mnist": np.zeros((1, 8, 8), np.uint8)})  # the label had no dropout


def test_manual_input_errors_name_the_input_and_allowed_values(
    tmp_path: Path, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tutorial_configs(tmp_path, digits_dir, tmp_path / "run", conditional=True)
    bad_cat = "--output.sampling_config.manual_inputs=[{'mnist_label': {'CLASS': '11'}}]"
    assert eirtrain([*args, bad_cat]) == 2
    err = capsys.readouterr().err
    assert "manual_inputs[0].mnist_label.CLASS" in err and "allowed: 0, 1, 2" in err
    bad_name = "--output.sampling_config.manual_inputs=[{'mnist_lable': {'CLASS': '1'}}]"
    assert eirtrain([*args, "--overwrite", bad_name]) == 2
    assert "unknown input 'mnist_lable'" in capsys.readouterr().err
