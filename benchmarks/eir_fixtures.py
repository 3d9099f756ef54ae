"""Regenerate the EIR model fixtures of tests/core/test_eir_fidelity.py from real EIR 0.25.0 builds.

    python benchmarks/eir_fixtures.py [NAME ...]      (after: bash benchmarks/eir_reference.sh install)

For each case: `eir_reference.sh data` writes digits of the case's size with our `eir-data`,
then `eir_reference.sh structure` has EIR build the model of the example configs (the tutorial's,
examples/tutorial, for kinds a and b; the diffusion example's, examples/diffusion, alone or mixed
with the tutorial's for the CNN kinds d, u, m and c) on them, without training, and describe it
(benchmarks/eir_structure.py). The description (layers in order with their sizes, parameter count)
is written to tests/core/fixtures/eir_models/NAME.json (kinds a, b: test_eir_fidelity.py) or
tests/core/fixtures/eir_cnn_models/NAME.json (test_cnn_fidelity.py) together with the commands
and config files that made it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "eir_reference.sh"
OUT = ROOT / "tests" / "core" / "fixtures" / "eir_models"
CNN_OUT = ROOT / "tests" / "core" / "fixtures" / "eir_cnn_models"

# kind: (globals, inputs, outputs) as example files, the same as eir_reference.sh's write_configs
KINDS: dict[str, tuple[str, list[str], list[str]]] = {
    "a": ("tutorial/globals.yaml", ["tutorial/input_mnist_array.yaml"], ["tutorial/output.yaml"]),
    "b": (
        "tutorial/globals.yaml",
        ["tutorial/input_mnist_array_with_label.yaml", "tutorial/input_mnist_label.yaml"],
        ["tutorial/output_with_label.yaml"],
    ),
    "d": (
        "diffusion/globals.yaml",
        ["diffusion/input_mnist_array.yaml", "diffusion/input_mnist_label.yaml"],
        ["diffusion/output.yaml"],
    ),
    "u": ("diffusion/globals.yaml", ["diffusion/input_mnist_array.yaml"], ["diffusion/output.yaml"]),
    "m": ("tutorial/globals.yaml", ["tutorial/input_mnist_array.yaml"], ["diffusion/output.yaml"]),
    "c": ("diffusion/globals.yaml", ["diffusion/input_mnist_array.yaml"], ["tutorial/output.yaml"]),
}
_CNN_IN = "--input_mnist_array.model_config.model_init_config."
_CNN_OUT = "--output.model_config.model_init_config."
_MSE = [
    "--output.output_type_info.loss=mse",
    "--output.output_info.output_name=mnist_output",
    _CNN_OUT + "channel_exp_base=7",
]
# The diffusion example's CNN input set back to EIR's defaults (automatic layers)
_EIR_CNN_DEFAULTS = [
    _CNN_IN + kv
    for kv in (
        "layers=None",
        "channel_exp_base=2",
        "kernel_width=12",
        "first_kernel_expansion_width=1.0",
        "down_stride_width=4",
        "kernel_height=4",
        "first_kernel_expansion_height=1.0",
        "allow_first_conv_size_reduction=True",
    )
]

# name: (kind, side, flat 1-D arrays, output cutoff or None for the tutorial's "auto", config overrides)
_TUTORIAL_SIZES = [_CNN_IN + "channel_exp_base=6", _CNN_OUT + "channel_exp_base=7"]

CASES: dict[str, tuple[str, int, bool, int | None, list[str]]] = {
    "run1_28": ("a", 28, False, None, []),
    "run2_28": ("b", 28, False, None, []),
    "run1_8_cutoff128": ("a", 8, False, 128, []),
    "run2_8_cutoff128": ("b", 8, False, 128, []),
    "run1_16": ("a", 16, False, None, []),
    "run2_16": ("b", 16, False, None, []),
    "run1_32": ("a", 32, False, None, []),
    "run1_12": ("a", 12, False, None, []),
    "run1_flat256": ("a", 16, True, None, []),
    "run2_flat784": ("b", 28, True, None, []),
    # explicit `layers`, a halved first layer, and an output trunk growing ("up") to a cutoff
    "run1_16_layers_up": (
        "a",
        16,
        False,
        2048,
        [
            "--input_mnist_array.model_config.model_init_config.layers=[2,1]",
            "--input_mnist_array.model_config.model_init_config.first_channel_expansion=-2",
            "--output.model_config.model_init_config.direction=up",
        ],
    ),
    # CNN models (kinds d, u, m, c): the diffusion example, unconditional, an MSE cnn output,
    # a cnn input with an LCL output, and variants reaching the rules the examples do not
    "diffusion_example_8": ("d", 8, False, None, []),  # examples/diffusion as it is
    # EIR's MNIST diffusion tutorial sizes (channel_exp_base 6 in, 7 out), fixed here so that
    # these cases stay what they were when the example's sizes change
    "diffusion_8": ("d", 8, False, None, _TUTORIAL_SIZES),
    "diffusion_28": ("d", 28, False, None, _TUTORIAL_SIZES),
    "diffusion_8_ca2_up1_noattn": (
        "d",
        8,
        False,
        None,
        [
            *_TUTORIAL_SIZES,
            _CNN_OUT + "num_ca_blocks=2",
            _CNN_OUT + "up_every_n_blocks=1",
            _CNN_OUT + "attention_inclusion_cutoff=0",
        ],
    ),
    "unconditional_8": ("u", 8, False, None, _TUTORIAL_SIZES),
    "unconditional_28": ("u", 28, False, None, _TUTORIAL_SIZES),
    "mse_cnn_out_8": ("m", 8, False, None, _MSE),
    "mse_cnn_out_28": ("m", 28, False, None, _MSE),
    "cnn_in_lcl_out_28": ("c", 28, False, None, [_CNN_IN + "channel_exp_base=6"]),
    "cnn_in_eir_defaults_28": ("c", 28, False, None, _EIR_CNN_DEFAULTS),
    "cnn_in_many_blocks_28": (  # more than 8 automatic blocks: the ninth and later join the third group
        "c",
        28,
        False,
        None,
        [
            _CNN_IN + kv
            for kv in (
                "layers=None",
                "channel_exp_base=2",
                "first_kernel_expansion_width=1.0",
                "first_kernel_expansion_height=1.0",
                "down_sample_every_n_blocks=4",
                "cutoff=4",
                "attention_inclusion_cutoff=0",
            )
        ],
    ),
    "cnn_in_dilated_16": (
        "c",
        16,
        False,
        None,
        [
            _CNN_IN + kv
            for kv in (
                "layers=None",
                "kernel_width=3",
                "kernel_height=3",
                "first_kernel_expansion_width=1.0",
                "first_kernel_expansion_height=1.0",
                "down_stride_width=2",
                "down_stride_height=2",
                "dilation_factor_width=2",
                "dilation_factor_height=2",
                "down_sample_every_n_blocks=None",
                "cutoff=4",
                "first_channel_expansion=2",
                "num_output_features=64",
                "rb_do=0.1",
                "stochastic_depth_p=0.1",
                "channel_exp_base=6",
            )
        ],
    ),
}
COUNT = 1200  # EIR needs more samples than its validation set; the tutorial's 1 000 is cut to 200 here
OVERRIDES = ["--globals.basic_experiment.valid_size=200", "--globals.basic_experiment.n_epochs=1"]


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def configs_of(kind: str) -> dict[str, object]:
    """The example files of a CNN kind and their texts as EIR read them (before the data paths were
    filled in), so that a fixture stays the record of what EIR built when the examples change."""
    globals_, inputs, outputs = KINDS[kind]
    texts = {f: (ROOT / "examples" / f).read_text() for f in [globals_, *inputs, *outputs]}
    return {"globals": globals_, "inputs": inputs, "outputs": outputs, "texts": texts}


def make(name: str) -> Path:
    kind, side, flat, cutoff, overrides = CASES[name]
    data_cmd = ["bash", str(SCRIPT), "data", str(side), str(COUNT), *(["flat"] if flat else [])]
    data = Path(run(data_cmd).strip().splitlines()[-1])
    struct_cmd = ["bash", str(SCRIPT), "structure", str(data), kind, *([str(cutoff)] if cutoff else [])]
    struct_cmd += ["--", *OVERRIDES, *overrides]
    description = json.loads(run(struct_cmd))
    version = run(["bash", str(SCRIPT), "version"]).strip()
    fixture = {
        "made_by": [
            "python benchmarks/eir_fixtures.py " + name,
            " ".join(["benchmarks/eir_reference.sh", *data_cmd[2:]]),
            " ".join(["benchmarks/eir_reference.sh", *struct_cmd[2:4], "DATA", *struct_cmd[5:]]),
        ],
        "eir_version": version,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "run": kind,
        "input_shape": [side * side] if flat else [side, side],
        "output_cutoff": cutoff,
        "overrides": overrides,
        **({} if kind in "ab" else {"configs": configs_of(kind)}),
        **description,
    }
    out = OUT if kind in "ab" else CNN_OUT
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    return path


def main(argv: list[str]) -> int:
    names = argv or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    for name in names:
        path = make(name)
        print(f"{path.relative_to(ROOT)}: {json.loads(path.read_text())['parameters']} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
