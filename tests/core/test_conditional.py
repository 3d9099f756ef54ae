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


def test_every_validation_gets_its_plots(tiny_conditional_bundle: Path) -> None:
    """The renderer draws the plots of every validation, not only of the last one (it runs at
    idle priority during training and must still get through all of them)."""
    run = tiny_conditional_bundle.parent.parent
    samples = sorted((run / "results/mnist_output/mnist_output/samples").iterdir())
    latents = sorted((run / "latents/latent_outputs").iterdir())
    assert len(samples) == len(latents) > 1
    for folder in samples:
        for kind in ("auto", "manual"):
            assert (folder / kind / "grid.png").stat().st_size > 1000, folder / kind
            assert not (folder / kind / ".grid_arrays.npz").exists()  # consumed by the renderer
    for folder in latents:
        assert (folder / "fusion_modules.computed.fusion_modules.fusion.1.0" / "tsne.png").is_file(), folder


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


def test_renderer_draws_jobs_sent_before_and_after_the_end_of_training(tmp_path: Path) -> None:
    """The renderer's loop, in this process: a job it gets while training goes on (stdin open),
    then one more and the end of stdin (training over), as the trainer sends them."""
    import os
    import threading
    import time

    from eir_core.train.render import serve

    r, w = os.pipe()
    reader, writer = open(r), open(w, "w")
    done = threading.Event()
    t = threading.Thread(target=lambda: (serve(reader), done.set()), daemon=True)
    t.start()

    def job(name: str) -> str:
        path = tmp_path / f"{name}.png"
        return json.dumps(
            {"kind": "curve", "path": str(path), "train": [[1, 1.0], [2, 0.5]], "valid": [], "title": name}
        )

    writer.write(job("during") + "\n")
    writer.flush()
    deadline = time.monotonic() + 60
    while not (tmp_path / "during.png").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "during.png").stat().st_size > 1000
    writer.write(job("after") + "\n")
    writer.close()
    assert done.wait(60)
    assert (tmp_path / "after.png").stat().st_size > 1000
