"""``model_type: cnn`` inputs and outputs (MSE and diffusion) build EIR 0.25.0's models, layer for layer.

The fixtures under fixtures/eir_cnn_models/ were made by a real EIR 0.25.0 (benchmarks/eir_fixtures.py
through benchmarks/eir_reference.sh): EIR built the model of the example YAMLs each fixture names
(examples/diffusion, alone or mixed with examples/tutorial, with the recorded overrides; their texts
are recorded in the fixture) on digits of the recorded size, and described it with
benchmarks/eir_structure.py. Here the same YAMLs go through our schema and spec builder
(train/spec.py) and MetaModel, and the same description must come out.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from pydantic import TypeAdapter

from eir_core.config.load import apply_overrides, build_experiment_config, parse_override, read_yaml
from eir_core.config.schema import (
    ArrayInputConfig,
    CNNModelInitConfig,
    CNNUpscaleModelInitConfig,
    InputConfig,
    LCLModelInitConfig,
    OutputConfig,
    OutputLCLModelInitConfig,
)
from eir_core.errors import ConfigError
from eir_core.model.meta import InputSpec, MetaModel, ModelSpec, OutputSpec, timestep_key
from eir_core.train.spec import array_input_spec, output_spec

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "examples" / "tutorial"
FIXTURES = sorted((Path(__file__).parent / "fixtures" / "eir_cnn_models").glob("*.json"))
LABEL_CARDINALITY = 11  # 10 digits + EIR's code for unknown/missing

_spec = importlib.util.spec_from_file_location("eir_structure", ROOT / "benchmarks" / "eir_structure.py")
assert _spec is not None and _spec.loader is not None
eir_structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eir_structure)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (Path(__file__).parent / "fixtures" / "eir_cnn_models" / f"{name}.json").read_text()
    )
    return data


def fixture_spec(eir: dict[str, Any], extra: list[str] | None = None) -> ModelSpec:
    """Our ModelSpec of the YAMLs EIR was given (recorded in the fixture) with its overrides, for
    digits of its size.

    The texts are validated by the schema directly (not build_experiment_config): which
    combinations a run may train is the trainer's concern, the model they describe is this one's."""
    configs = eir["configs"]
    datas = {Path(f): yaml.safe_load(configs["texts"][f]) for f in [*configs["inputs"], *configs["outputs"]]}
    apply_overrides(datas, [parse_override(t) for t in [*eir["overrides"], *(extra or [])]])
    shape = (1, *eir["input_shape"])
    specs = []
    for f in configs["inputs"]:
        ic = TypeAdapter(InputConfig).validate_python(datas[Path(f)])
        if isinstance(ic, ArrayInputConfig):
            specs.append(array_input_spec(ic, shape))
        else:
            specs.append(InputSpec(name=ic.name, type="tabular", cat_cardinalities={"CLASS": LABEL_CARDINALITY}))
    outs = [output_spec(OutputConfig.model_validate(datas[Path(f)]), shape) for f in configs["outputs"]]
    return ModelSpec(inputs=specs, outputs=outs)


def ours(spec: ModelSpec) -> dict[str, Any]:
    torch.manual_seed(0)
    description: dict[str, Any] = eir_structure.describe(MetaModel(spec))
    for layer in description["layers"]:  # our tabular extractor keeps its embeddings in a ModuleDict
        layer["path"] = layer["path"].replace(".embeddings.", ".embed_")
    return description


def batch_for(spec: ModelSpec, n: int, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    batch: dict[str, Any] = {}
    for inp in spec.inputs:
        if inp.type == "array":
            assert inp.shape is not None
            batch[inp.name] = torch.randn(n, *inp.shape, generator=g)
        else:
            batch[inp.name] = {
                "cat": torch.randint(0, LABEL_CARDINALITY, (n, 1), generator=g),
                "con": torch.zeros(n, 0),
            }
    for out in spec.outputs:
        if out.diffusion_time_steps is not None:
            batch[timestep_key(out.name)] = torch.randint(0, out.diffusion_time_steps, (n,), generator=g)
    return batch


def test_fixtures_cover_the_cases() -> None:
    names = {p.stem for p in FIXTURES}
    assert {
        "diffusion_8",
        "diffusion_example_8",
        "diffusion_28",
        "unconditional_8",
        "mse_cnn_out_8",
        "mse_cnn_out_28",
        "cnn_in_lcl_out_28",
        "cnn_in_eir_defaults_28",
    } <= names
    for p in FIXTURES:
        data = json.loads(p.read_text())
        assert data["eir_version"] == "0.25.0"
        assert data["made_by"][0].startswith("python benchmarks/eir_fixtures.py")
        assert len(data["layers"]) > 20


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_structure_matches_eirs_build(path: Path) -> None:
    eir = json.loads(path.read_text())
    mine = ours(fixture_spec(eir))
    for a, b in zip(mine["layers"], eir["layers"]):
        assert a == b, f"{path.stem}: ours {a} != EIR's {b}"
    assert len(mine["layers"]) == len(eir["layers"])
    assert mine["parameters"] == eir["parameters"]


@pytest.mark.parametrize(
    ("name", "params"),
    [("diffusion_8", 2_486_265), ("unconditional_8", 2_336_231), ("diffusion_example_8", 632_661)],
)
def test_diffusion_example_has_eirs_parameter_count(name: str, params: int) -> None:
    model = MetaModel(fixture_spec(fixture(name)))
    assert sum(p.numel() for p in model.parameters()) == params == fixture(name)["parameters"]


def test_structure_comparison_detects_a_difference() -> None:
    """Not vacuous: one more channel exponent in the output, or a different input kernel, shows."""
    eir = fixture("diffusion_8")
    wider = fixture_spec(eir, ["--output.model_config.model_init_config.channel_exp_base=6"])
    assert ours(wider)["layers"] != eir["layers"]
    kernel = fixture_spec(eir, ["--input_mnist_array.model_config.model_init_config.kernel_width=5"])
    assert ours(kernel)["layers"] != eir["layers"]


def test_diffusion_model_reads_noised_array_timesteps_and_label() -> None:
    spec = fixture_spec(fixture("diffusion_8"))
    assert [o.diffusion_time_steps for o in spec.outputs] == [500]
    model = MetaModel(spec)
    assert list(model.fusion_modules) == ["pass-through"]  # no MLP fusion: nothing reads it
    model.eval()
    batch = batch_for(spec, 2)
    with torch.no_grad():
        out = model(batch)["mnist"]
        assert out.shape == (2, 1, 8, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()
        later = model({**batch, timestep_key("mnist"): batch[timestep_key("mnist")] + 1})["mnist"]
        other_label = model({**batch, "mnist_label": {"cat": (batch["mnist_label"]["cat"] + 1) % 10}})["mnist"]
    assert not torch.equal(out, later)  # the timestep is embedded in the model
    assert not torch.equal(out, other_label)  # the label reaches it by cross-attention
    with pytest.raises(KeyError, match="__timestep_mnist"):
        model({k: v for k, v in batch.items() if k != timestep_key("mnist")})
    model.train()
    model(batch)["mnist"].pow(2).mean().backward()
    emb = model.output_modules["mnist"].feature_extractor.timestep_mixing_layer.time_embedding
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["unconditional_8", "mse_cnn_out_28", "cnn_in_lcl_out_28", "cnn_in_dilated_16"])
def test_forward_shapes(name: str) -> None:
    eir = fixture(name)
    spec = fixture_spec(eir)
    model = MetaModel(spec).eval()
    with torch.no_grad():
        out = model(batch_for(spec, 2))
    side = eir["input_shape"][0]
    assert {k: tuple(v.shape) for k, v in out.items()} == {o.name: (2, 1, side, side) for o in spec.outputs}


def test_cnn_specs_survive_the_manifest() -> None:
    """A bundle records the spec as JSON; the model built from it is the same network."""
    spec = fixture_spec(fixture("diffusion_8"))
    again = ModelSpec.from_manifest(json.loads(spec.model_dump_json()))
    assert again == spec
    assert ours(again) == ours(spec)


def _onnx_check(spec: ModelSpec, tmp_path: Path) -> None:
    """Export through eir_core.onnx_export's module rewrite at its opset, with a dynamic batch
    and the diffusion timesteps as a graph input; onnxruntime must match the model."""
    ort = pytest.importorskip("onnxruntime")
    from eir_core import onnx_export

    model = MetaModel(spec).eval()
    names = [i.name for i in spec.inputs] + [timestep_key(o.name) for o in spec.outputs if o.diffusion_time_steps]

    class Positional(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            batch: dict[str, Any] = {}
            for name, x in zip(names, xs):
                tabular = any(i.name == name and i.type == "tabular" for i in spec.inputs)
                batch[name] = {"cat": x, "con": x[:, :0].float()} if tabular else x
            out = self.inner(batch)
            return tuple(out[o.name] for o in spec.outputs)

    def flat(batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return tuple(batch[n]["cat"] if isinstance(batch[n], dict) else batch[n] for n in names)

    target = tmp_path / "model.onnx"
    wrapped = Positional(onnx_export._exportable(model)).eval()
    axes = {f"in{k}": {0: "batch"} for k in range(len(names))} | {"out0": {0: "batch"}}
    torch.onnx.export(
        wrapped,
        flat(batch_for(spec, 2)),
        target,
        input_names=[f"in{k}" for k in range(len(names))],
        output_names=["out0"],
        dynamic_axes=axes,
        opset_version=onnx_export.OPSET,
        dynamo=False,
    )
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    fed = {i.name for i in session.get_inputs()}
    for n in (1, 3):
        xs = flat(batch_for(spec, n, seed=n))
        with torch.no_grad():
            want = Positional(model)(*xs)[0].numpy()
        got = session.run(None, {f"in{k}": x.numpy() for k, x in enumerate(xs) if f"in{k}" in fed})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_diffusion_model_exports_to_onnx(tmp_path: Path) -> None:
    _onnx_check(fixture_spec(fixture("diffusion_8")), tmp_path)


def test_cnn_output_with_pooling_exports_to_onnx(tmp_path: Path) -> None:
    """The upscaling overshoots 28x28 (16 -> 32) and pools back: adaptive pooling between sizes that
    do not divide, which the exporter refuses, goes as averaging matrices. A small model: label in."""
    cfg = CNNUpscaleModelInitConfig(channel_exp_base=3, attention_inclusion_cutoff=0, n_final_extra_blocks=0)
    spec = ModelSpec(
        inputs=[InputSpec(name="mnist_label", type="tabular", cat_cardinalities={"CLASS": LABEL_CARDINALITY})],
        outputs=[OutputSpec(name="mnist_output", shape=(1, 28, 28), model_type="cnn", cnn=cfg)],
    )
    blocks = MetaModel(spec).output_modules["mnist_output"].feature_extractor.blocks
    assert [type(b).__name__ for b in blocks] == [
        "CNNUpscaleResidualBlock",
        "CNNUpscaleResidualBlock",
        "UpSamplingResidualBlock",
        "AdaptiveAvgPool2d",
    ]
    _onnx_check(spec, tmp_path)


# ----------------------------------------------------------------------------- config


def _tutorial(*overrides: str) -> Any:
    t = TUTORIAL
    return build_experiment_config(
        [t / "globals.yaml"], [t / "input_mnist_array.yaml"], [t / "output.yaml"], override_tokens=list(overrides)
    )


def test_cnn_input_config_takes_eirs_keys_and_names_unknown_ones() -> None:
    cfg = _tutorial("--input_mnist_array.model_config.model_type=cnn")
    init = cfg.input_configs[0].model_config_.model_init_config
    assert isinstance(init, CNNModelInitConfig)
    assert (init.kernel_width, init.attention_inclusion_cutoff, init.down_stride_width, init.cutoff) == (8, 128, 4, 32)
    with pytest.raises(ConfigError, match=r"unknown key 'model_config.model_init_config.kernel_widht'.*'kernel_width'"):
        _tutorial(
            "--input_mnist_array.model_config.model_type=cnn",
            "--input_mnist_array.model_config.model_init_config.kernel_widht=3",
        )
    with pytest.raises(ConfigError, match=r"unknown key 'model_config.model_init_config.num_lcl_chunks'"):
        _tutorial(
            "--input_mnist_array.model_config.model_type=cnn",
            "--input_mnist_array.model_config.model_init_config.num_lcl_chunks=3",
        )
    with pytest.raises(ConfigError, match=r"down_stride_width \(9\) must not exceed kernel_width \(8\)"):
        _tutorial(
            "--input_mnist_array.model_config.model_type=cnn",
            "--input_mnist_array.model_config.model_init_config.down_stride_width=9",
        )


def test_cnn_options_not_built_here_say_so() -> None:
    with pytest.raises(
        ConfigError,
        match=r"supported by EIR, not implemented here: input 'mnist': model_config.model_init_config.l1=0.1",
    ):
        _tutorial(
            "--input_mnist_array.model_config.model_type=cnn",
            "--input_mnist_array.model_config.model_init_config.l1=0.1",
        )
    with pytest.raises(ConfigError, match="supported by EIR, not implemented here: model_type=transformer"):
        _tutorial("--input_mnist_array.model_config.model_type=transformer")


def test_cnn_output_config_needs_channel_exp_base_as_in_eir(tmp_path: Path) -> None:
    t = TUTORIAL
    raw = read_yaml(t / "output.yaml")
    raw["model_config"] = {"model_type": "cnn"}
    (tmp_path / "output.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"missing required key 'model_config.model_init_config.channel_exp_base'"):
        build_experiment_config([t / "globals.yaml"], [t / "input_mnist_array.yaml"], [tmp_path / "output.yaml"])
    cfg = _tutorial("--output.model_config.model_type=cnn")  # the tutorial's channel_exp_base: 4
    spec = output_spec(cfg.output_configs[0], (1, 8, 8))
    assert spec.model_type == "cnn" and spec.cnn is not None and spec.lcl is None
    assert (spec.cnn.channel_exp_base, spec.cnn.rb_do, spec.cnn.n_final_extra_blocks, spec.diffusion_time_steps) == (
        4,
        0.1,
        1,
        None,
    )


# ----------------------------------------------------------------------------- where EIR fails


def test_a_kernel_larger_than_the_padded_map_is_a_config_error() -> None:
    from torch import nn

    from eir_core.model.cnn import FirstCNNBlock, size_after

    assert size_after(FirstCNNBlock(nn.Conv2d(1, 4, (3, 5), padding=(1, 0))), 4, 5, "conv.0") == (4, 1)
    with pytest.raises(ConfigError, match=r"kernel \(3, 5\) of conv.0.conv_1 exceeds its padded 4x4 input"):
        size_after(FirstCNNBlock(nn.Conv2d(1, 4, (3, 5), padding=(1, 0))), 4, 4, "conv.0")


def test_automatic_layers_that_never_end_are_a_config_error() -> None:
    """1x1 kernels with stride 1 never shrink the map, and down-sampling stops at 1x1, above a
    cutoff of 1: EIR's loop runs for ever here; this one stops and says why."""
    cfg = CNNModelInitConfig(kernel_width=1, kernel_height=1, down_stride_width=1, cutoff=1)
    spec = ModelSpec(
        inputs=[InputSpec(name="x", type="array", shape=(1, 8, 8), model_type="cnn", cnn=cfg)],
        outputs=[
            OutputSpec(name="y", shape=(1, 8, 8), model_type="cnn", cnn=CNNUpscaleModelInitConfig(channel_exp_base=2))
        ],
    )
    with pytest.raises(ConfigError, match="automatic rule finds no end"):
        MetaModel(spec)


def test_a_diffusion_output_needs_the_cnn_input_of_its_name() -> None:
    spec = fixture_spec(fixture("unconditional_8"))
    lcl_input = InputSpec(name="mnist", type="array", shape=(1, 8, 8), lcl=LCLModelInitConfig())
    with pytest.raises(ConfigError, match="an array input of the same name with model_type: cnn"):
        MetaModel(spec.model_copy(update={"inputs": [lcl_input]}))
    (out,) = spec.outputs
    lcl_out = out.model_copy(update={"model_type": "lcl", "cnn": None, "lcl": OutputLCLModelInitConfig()})
    with pytest.raises(ConfigError, match="a diffusion output needs model_type: cnn"):
        MetaModel(spec.model_copy(update={"outputs": [lcl_out]}))
