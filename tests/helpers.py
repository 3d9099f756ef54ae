"""Helpers shared by the tests: config files for small tutorial-shaped runs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from eir_core.manifest import checkpoint_name, parse_checkpoint_name


def with_values(model: BaseModel, **values: object) -> Any:
    """A copy of a frozen config with dotted paths replaced, e.g.
    ``with_values(cfg, **{"global_config.basic_experiment.n_epochs": 1, "input_configs.0.input_info.input_source": p})``."""
    out = model
    for path, value in values.items():
        out = _replace(out, path.split("."), value)
    return out


def _replace(node: Any, keys: list[str], value: object) -> Any:
    head, rest = keys[0], keys[1:]
    if isinstance(node, list):
        i = int(head)
        return [*node[:i], _replace(node[i], rest, value) if rest else value, *node[i + 1 :]]
    new = _replace(getattr(node, head), rest, value) if rest else value
    return node.model_copy(update={head: new})


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tutorial_configs(folder: Path, data: Path, run: Path, conditional: bool, **globals_extra: object) -> list[str]:
    """CLI arguments for a small tutorial-shaped run on the 8x8 digits."""
    g = {
        "basic_experiment": {
            "batch_size": 64,
            "memory_dataset": True,
            "n_epochs": 2,
            "output_folder": str(run),
            "valid_size": 200,
        },
        "evaluation_checkpoint": {"checkpoint_interval": 20, "sample_interval": 20, "n_saved_models": 1},
        "optimization": {"lr": 0.002, "optimizer": "adabelief"},
        "lr_schedule": {"warmup_steps": 10},
    }
    if conditional:
        g["latent_sampling"] = {"layers_to_sample": ["fusion_modules.computed.fusion_modules.fusion.1.0"]}
    for k, v in globals_extra.items():
        g.setdefault(k, {}).update(v)  # type: ignore[union-attr]
    array_in = {
        "input_info": {"input_source": str(data / "mnist_npy"), "input_name": "mnist", "input_type": "array"},
        "input_type_info": {"normalization": "channel", "modality_dropout_rate": 0.3 if conditional else 0.0},
        "model_config": {
            "model_type": "lcl",
            "model_init_config": {"kernel_width": 8, "attention_inclusion_cutoff": 128},
        },
    }
    out = {
        "output_info": {
            "output_source": str(data / "mnist_npy"),
            "output_name": "mnist_output",
            "output_type": "array",
        },
        "output_type_info": {"normalization": "channel"},
        "model_config": {"model_type": "lcl", "model_init_config": {"channel_exp_base": 4}},
    }
    args = [
        "--global_configs",
        str(write_yaml(folder / "globals.yaml", g)),
        "--input_configs",
        str(write_yaml(folder / "input_mnist_array.yaml", array_in)),
    ]
    if conditional:
        label = {
            "input_info": {
                "input_source": str(data / "mnist_labels.csv"),
                "input_name": "mnist_label",
                "input_type": "tabular",
            },
            "input_type_info": {"input_cat_columns": ["CLASS"]},
        }
        args.append(str(write_yaml(folder / "input_mnist_label.yaml", label)))
        out["sampling_config"] = {
            "manual_inputs": [{"mnist_label": {"CLASS": "0"}}, {"mnist_label": {"CLASS": "5"}}],
            "n_eval_inputs": 4,
        }
    args += ["--output_configs", str(write_yaml(folder / "output.yaml", out)), "--no-pbar"]
    return args


def diffusion_configs(
    folder: Path,
    data: Path,
    run: Path,
    label_dropout: float = 0.2,
    sampling: dict[str, Any] | None = None,
    epochs: int = 2,
    latent_layers: list[str] | None = None,
) -> list[str]:
    """CLI arguments for a tiny label-conditioned diffusion run on the 8x8 digits (the shape of
    examples/diffusion, with few channels, time steps and sampling steps)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = {
        "basic_experiment": {
            "batch_size": 64,
            "memory_dataset": True,
            "n_epochs": epochs,
            "output_folder": str(run),
            "valid_size": 200,
        },
        "evaluation_checkpoint": {"checkpoint_interval": 20, "sample_interval": 20, "n_saved_models": 1},
        "optimization": {"lr": 0.002, "optimizer": "adamw"},
    }
    if latent_layers:
        g["latent_sampling"] = {"layers_to_sample": latent_layers}
    image = {
        "input_info": {"input_source": str(data / "mnist_npy"), "input_name": "mnist", "input_type": "array"},
        "input_type_info": {"normalization": "channel"},
        "model_config": {
            "model_type": "cnn",
            "model_init_config": {
                "channel_exp_base": 3,
                "kernel_width": 3,
                "kernel_height": 3,
                "down_stride_width": 1,
                "down_stride_height": 1,
                "first_stride_expansion_width": 1,
                "first_stride_expansion_height": 1,
                "allow_first_conv_size_reduction": False,
                "down_sample_every_n_blocks": 2,
                "layers": [1, 1],
            },
        },
    }
    label = {
        "input_info": {
            "input_source": str(data / "mnist_labels.csv"),
            "input_name": "mnist_label",
            "input_type": "tabular",
        },
        "input_type_info": {"input_cat_columns": ["CLASS"], "modality_dropout_rate": label_dropout},
    }
    out = {
        "output_info": {"output_source": str(data / "mnist_npy"), "output_name": "mnist", "output_type": "array"},
        "output_type_info": {"normalization": "channel", "loss": "diffusion", "diffusion_time_steps": 20},
        "model_config": {
            "model_type": "cnn",
            "model_init_config": {"channel_exp_base": 4, "rb_do": 0.0, "stochastic_depth_p": 0.0},
        },
        "sampling_config": {
            "diffusion_inference_steps": 5,
            "diffusion_sampler": "ddim",
            "manual_inputs": [{"mnist_label": {"CLASS": "0"}}, {"mnist_label": {"CLASS": "5"}}],
            "n_eval_inputs": 2,
            **(sampling or {}),
        },
    }
    return [
        "--global_configs",
        str(write_yaml(folder / "globals.yaml", g)),
        "--input_configs",
        str(write_yaml(folder / "input_mnist_array.yaml", image)),
        str(write_yaml(folder / "input_mnist_label.yaml", label)),
        "--output_configs",
        str(write_yaml(folder / "output.yaml", out)),
        "--no-pbar",
    ]


def bundle_named(src: Path, dst_dir: Path, name: str) -> Path:
    """A copy of the bundle ``src`` whose run is called ``name`` (the model's name when served):
    the same tensors, the manifest's ``run_name`` changed, written as ``dst_dir/<name>.safetensors``."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(src), framework="numpy") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(metadata["eir_manifest"])
    manifest["run_name"] = name
    metadata["eir_manifest"] = json.dumps(manifest)
    dst_dir.mkdir(parents=True, exist_ok=True)
    out = dst_dir / f"{name}.safetensors"
    save_file(tensors, str(out), metadata=metadata)
    return out


def bundle_version(bundle: Path) -> str:
    """The protocol version eirserve gives a bundle: its training iteration (from the checkpoint
    name), or "1" for a bundle under another name."""
    parsed = parse_checkpoint_name(bundle.name)
    return str(parsed[0]) if parsed else "1"


def place_checkpoint(folder: Path, checkpoint: Path, rank: int) -> Path:
    """Copy ``checkpoint`` into ``folder`` as the best so far (perf-average ``rank``), atomically."""
    parsed = parse_checkpoint_name(checkpoint.name)
    assert parsed is not None, checkpoint
    target = folder / checkpoint_name("run", parsed[0], rank)
    part = folder / (target.name + ".part")
    shutil.copyfile(checkpoint, part)
    part.rename(target)
    return target
