"""The tutorial configs build EIR 0.25.0's model, layer for layer.

The fixtures under fixtures/eir_models/ were made by a real EIR 0.25.0 (benchmarks/eir_fixtures.py,
through the project's installer benchmarks/eir_reference.sh): EIR built the model of the tutorial
YAMLs (examples/tutorial) on digits of each size and described it with benchmarks/eir_structure.py.
Here the same YAMLs go through our config loader and model, and the same description must come out.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from eir_core.config.load import build_experiment_config
from eir_core.config.schema import ArrayInputConfig
from eir_core.model.meta import ARCHITECTURE, InputSpec, MetaModel, ModelSpec, OutputSpec

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "examples" / "tutorial"
FIXTURES = sorted((Path(__file__).parent / "fixtures" / "eir_models").glob("*.json"))

_spec = importlib.util.spec_from_file_location("eir_structure", ROOT / "benchmarks" / "eir_structure.py")
assert _spec is not None and _spec.loader is not None
eir_structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eir_structure)

# The tutorial's label column has 10 classes; the encoding adds one code for unknown/missing
# values, as EIR does (its printed model: Embedding(11, 6)).
LABEL_CARDINALITY = 11


def tutorial_spec(
    run: str, input_shape: list[int], output_cutoff: int | None, extra: list[str] | None = None
) -> ModelSpec:
    """Our ModelSpec of the tutorial YAMLs, as the trainer makes it, for data of ``input_shape``."""
    if run == "a":
        inputs, outputs = [TUTORIAL / "input_mnist_array.yaml"], [TUTORIAL / "output.yaml"]
    else:
        inputs = [TUTORIAL / "input_mnist_array_with_label.yaml", TUTORIAL / "input_mnist_label.yaml"]
        outputs = [TUTORIAL / "output_with_label.yaml"]
    stem = outputs[0].stem
    overrides = [f"--{stem}.model_config.model_init_config.cutoff={output_cutoff}"] if output_cutoff else []
    overrides += extra or []
    cfg = build_experiment_config([TUTORIAL / "globals.yaml"], inputs, outputs, override_tokens=overrides)
    shape = (1, *input_shape) if len(input_shape) == 2 else (1, 1, input_shape[0])
    specs = []
    for ic in cfg.input_configs:
        if isinstance(ic, ArrayInputConfig):
            specs.append(InputSpec(name=ic.name, type="array", shape=shape, lcl=ic.model_config_.model_init_config))
        else:
            specs.append(InputSpec(name=ic.name, type="tabular", cat_cardinalities={"CLASS": LABEL_CARDINALITY}))
    out = [OutputSpec(name=oc.name, shape=shape, lcl=oc.model_config_.model_init_config) for oc in cfg.output_configs]
    return ModelSpec(inputs=specs, outputs=out, fusion=cfg.fusion_config.model_config_)


def ours(spec: ModelSpec) -> dict[str, Any]:
    torch.manual_seed(0)
    description: dict[str, Any] = eir_structure.describe(MetaModel(spec))
    for layer in description["layers"]:  # our tabular extractor keeps its embeddings in a ModuleDict
        layer["path"] = layer["path"].replace(".embeddings.", ".embed_")
    return description


def test_fixtures_cover_the_tutorial_runs_and_more_sizes() -> None:
    names = {p.stem for p in FIXTURES}
    assert {"run1_28", "run2_28", "run1_8_cutoff128", "run2_8_cutoff128"} <= names
    assert len(names) >= 8
    for p in FIXTURES:
        data = json.loads(p.read_text())
        assert data["eir_version"] == "0.25.0"
        assert data["made_by"][0].startswith("python benchmarks/eir_fixtures.py")
        assert len(data["layers"]) > 20


@pytest.mark.parametrize(
    ("run", "shape", "cutoff", "params"),
    [
        ("a", [28, 28], None, 426_996),
        ("b", [28, 28], None, 430_140),
        ("a", [8, 8], 128, 336_012),
        ("b", [8, 8], 128, 339_156),
    ],
)
def test_tutorial_configs_have_eirs_parameter_counts(
    run: str, shape: list[int], cutoff: int | None, params: int
) -> None:
    model = MetaModel(tutorial_spec(run, shape, cutoff))
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_structure_matches_eirs_build(fixture: Path) -> None:
    eir = json.loads(fixture.read_text())
    mine = ours(tutorial_spec(eir["run"], eir["input_shape"], eir["output_cutoff"], eir.get("overrides")))
    assert len(mine["layers"]) == len(eir["layers"])
    for a, b in zip(mine["layers"], eir["layers"], strict=True):
        assert a == b, f"{fixture.stem}: ours {a} != EIR's {b}"
    assert mine["parameters"] == eir["parameters"]


def test_structure_comparison_detects_a_difference() -> None:
    """The comparison above is not vacuous: a different kernel width changes the description."""
    eir = json.loads((FIXTURES[0]).read_text())
    spec = tutorial_spec(eir["run"], eir["input_shape"], eir["output_cutoff"])
    out = spec.outputs[0]
    wider = out.model_copy(update={"lcl": out.lcl.model_copy(update={"kernel_width": 16})})
    assert ours(spec.model_copy(update={"outputs": [wider]}))["layers"] != eir["layers"]


def test_eight_by_eight_without_cutoff_terminates_like_cutoff_128() -> None:
    """EIR's rule never ends for 64 outputs (width stalls at 128); ours stops at the stall,
    which is the model EIR builds with ``cutoff: 128``."""
    auto = ours(tutorial_spec("a", [8, 8], None))
    fixed = ours(tutorial_spec("a", [8, 8], 128))
    assert auto == fixed
    assert auto["parameters"] == 336_012


def test_forward_shapes_and_architecture_field() -> None:
    spec = tutorial_spec("b", [28, 28], None)
    assert spec.architecture == ARCHITECTURE == 2
    model = MetaModel(spec)
    batch = {
        "mnist": torch.randn(3, 1, 28, 28),
        "mnist_label": {"cat": torch.tensor([[0], [5], [10]]), "con": torch.zeros(3, 0)},
    }
    out = model(batch)["mnist_output"]
    assert out.shape == (3, 1, 28, 28) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def _old_style_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as eir-lite wrote it before architectures were recorded: no "architecture"
    key, and every LCL setting dumped explicitly with that time's defaults (kernel_width 16)."""
    spec = json.loads(json.dumps(manifest["model_spec"]))
    del spec["architecture"]
    for entry in [*spec["inputs"], *spec["outputs"]]:
        if entry.get("lcl") and entry["lcl"]["kernel_width"] == 12:
            entry["lcl"]["kernel_width"] = 16
    return {**manifest, "model_spec": spec}


def test_old_bundles_build_the_old_network_and_predict(tiny_bundle: Path, tmp_path: Path) -> None:
    import numpy as np
    from safetensors.torch import save as st_save

    from eir_core.bundle import MANIFEST_KEY, load_bundle
    from eir_core.predict import Predictor

    new = load_bundle(tiny_bundle)
    assert new.manifest.model_spec.architecture == ARCHITECTURE  # what training writes now
    manifest = _old_style_manifest(new.manifest.model_dump(mode="json"))
    old_spec = ModelSpec.from_manifest(manifest["model_spec"])
    assert old_spec.architecture == 1
    torch.manual_seed(1)
    old_model = MetaModel(old_spec)
    # The run-1 8x8 network eir-lite built before (measured at commit c8fb635, issue 16).
    assert sum(p.numel() for p in old_model.parameters()) == 246_220
    old = tmp_path / "old.safetensors"
    # Written as an eir-core of that time wrote it: the manifest as a plain JSON header.
    tensors = {f"model.{k}": v.contiguous() for k, v in old_model.state_dict().items()}
    for prefix, stats in (("norm.input", new.input_stats), ("norm.output", new.output_stats)):
        for name, st in stats.items():
            tensors[f"{prefix}.{name}.mean"] = torch.tensor(st.mean)
            tensors[f"{prefix}.{name}.std"] = torch.tensor(st.std)
    old.write_bytes(st_save(tensors, metadata={MANIFEST_KEY: json.dumps(manifest)}))

    predictor = Predictor.from_path(old, device="cpu")
    assert predictor.spec.architecture == 1
    for k, v in old_model.state_dict().items():
        assert torch.equal(predictor.model.state_dict()[k], v)
    image = np.arange(64, dtype=np.uint8).reshape(1, 8, 8) * 3
    out = predictor.predict([{"mnist": image}], seeds=[0])[0]["mnist_output"]
    assert out.shape == (1, 8, 8) and np.isfinite(out).all()
    # The old weights do not fit the new network: the recorded architecture is what makes them load.
    with pytest.raises(RuntimeError):
        MetaModel(ModelSpec.model_validate({**manifest["model_spec"], "architecture": 2})).load_state_dict(
            old_model.state_dict()
        )


def test_resume_state_of_the_old_network_is_refused_clearly(tmp_path: Path) -> None:
    from eir_core.errors import RunFolderError
    from eir_core.train.checkpoint import load_resume_state, save_resume_state

    spec = tutorial_spec("a", [8, 8], None)
    old = MetaModel(ModelSpec.model_validate({**spec.model_dump(), "architecture": 1}))
    save_resume_state(tmp_path / "state.safetensors", old, torch.optim.SGD(old.parameters(), lr=0.1), {"iteration": 1})
    new = MetaModel(spec)
    with pytest.raises(RunFolderError, match="different network.*--overwrite"):
        load_resume_state((tmp_path / "state.safetensors").read_bytes(), new, torch.optim.SGD(new.parameters(), lr=0.1))


def test_eir_data_writes_other_sizes_and_flat_arrays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The other fixture sizes come from `eir-data digits --size N [--flat]`."""
    import numpy as np

    from eir_core.cli.data import main as eir_data

    assert eir_data(["digits", "--size", "16", "--count", "20", "--flat", "--output-folder", str(tmp_path / "a")]) == 0
    files = sorted((tmp_path / "a" / "mnist_npy").glob("*.npy"))
    assert len(files) == 20 and np.load(files[0]).shape == (256,)
    assert eir_data(["digits", "--size", "3", "--output-folder", str(tmp_path / "b")]) == 2
    assert "--size must be between 4 and 64" in capsys.readouterr().err
