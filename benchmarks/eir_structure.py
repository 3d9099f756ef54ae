"""A model's structure as data: the layers that carry shape, in module order, and the parameter count.

    EIR's venv:  python eir_structure.py --global_configs ... --input_configs ... --output_configs ...
                 (eirtrain's arguments) builds the model the way `eirtrain` does, without training,
                 and prints its structure as JSON (the model text EIR prints goes to stderr).
    Tests:       ``describe(model)`` gives the same description for an eir-lite MetaModel.

Only ``describe`` is used by the tests, and it needs nothing but torch: the description is
taken from the modules' parameter shapes and a few attributes both implementations share
(LCL: in/out features, kernel, chunks, sets; CNN blocks: heights, widths, heads, contexts).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from torch import nn

# Layers whose sizes make up the architecture; everything else (activations, containers,
# identities) carries no shape.
_LCL_ATTRS = ("in_features", "out_features", "kernel_size", "num_chunks", "out_feature_sets")


def _layer(module: nn.Module) -> dict[str, Any] | None:
    kind = type(module).__name__
    if kind == "LCL":
        return {"kind": "LCL", **{a: int(getattr(module, a)) for a in _LCL_ATTRS}}
    if isinstance(module, nn.Linear):
        return {"kind": "Linear", "in": module.in_features, "out": module.out_features, "bias": module.bias is not None}
    if isinstance(module, nn.RMSNorm):
        return {"kind": "RMSNorm", "dim": list(module.normalized_shape)}
    if isinstance(module, nn.MultiheadAttention):
        return {"kind": "MultiheadAttention", "dim": module.embed_dim, "heads": module.num_heads}
    if isinstance(module, nn.Embedding):
        return {"kind": "Embedding", "num": module.num_embeddings, "dim": module.embedding_dim}
    if isinstance(module, nn.Dropout):
        return {"kind": "Dropout", "p": module.p}
    if kind == "StochasticDepth":
        return {"kind": "StochasticDepth", "p": float(module.p)}  # type: ignore[arg-type]
    if kind == "LayerScale":
        (param,) = module.parameters(recurse=False)
        entry = {"kind": "LayerScale", "dim": param.numel(), "init": float(module.__dict__["init_values"])}
        return entry if param.dim() == 1 else {**entry, "shape": list(param.shape)}  # CNN blocks: (1, C, 1, 1)
    if kind in ("PositionalEmbedding", "GeneralPositionalEmbedding"):
        (param,) = module.parameters(recurse=False)
        return {"kind": kind, "shape": list(param.shape)}
    return _cnn_layer(module, kind)


_CNN_BLOCK_ATTRS = {  # shape-bearing attributes of blocks whose children do not show them all
    "ConvAttentionBlock": ("embedding_dim", "num_heads", "in_height", "in_width"),
    "CrossAttention": ("heads", "dim_head"),
    "CrossAttentionArrayOutBlock": ("context_channels", "context_height", "context_width"),
    "TimeStepMixingBlock": ("input_height", "input_width"),
    "GRN": ("in_channels",),
}


def _cnn_layer(module: nn.Module, kind: str) -> dict[str, Any] | None:
    """The layers of EIR's CNN input and output models (convolutions, norms, pooling, blocks)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        entry: dict[str, Any] = {
            "kind": kind,
            "in": module.in_channels,
            "out": module.out_channels,
            "kernel": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": list(module.padding) if isinstance(module.padding, tuple) else module.padding,
            "dilation": list(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
        }
        if module.transposed:
            entry["output_padding"] = list(module.output_padding)
        return entry
    if isinstance(module, nn.GroupNorm):
        return {"kind": "GroupNorm", "groups": module.num_groups, "channels": module.num_channels}
    if isinstance(module, nn.Dropout2d):
        return {"kind": "Dropout2d", "p": module.p}
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        return {"kind": "AdaptiveAvgPool2d", "size": list(size) if isinstance(size, tuple) else size}
    if isinstance(module, nn.Upsample):
        scale = module.scale_factor
        return {"kind": "Upsample", "scale": list(scale) if isinstance(scale, tuple) else scale, "mode": module.mode}
    if isinstance(module, nn.Unflatten):
        return {"kind": "Unflatten", "dim": module.dim, "sizes": list(module.unflattened_size)}
    if kind in _CNN_BLOCK_ATTRS:
        return {"kind": kind, **{a: int(getattr(module, a)) for a in _CNN_BLOCK_ATTRS[kind]}}
    return None


def describe(model: nn.Module) -> dict[str, Any]:
    """{"parameters": N, "layers": [{"path", "kind", sizes...}, ...]} in module order."""
    layers = []
    for path, module in model.named_modules():
        entry = _layer(module)
        if entry is not None:
            layers.append({"path": path, **entry})
    return {"parameters": sum(p.numel() for p in model.parameters()), "layers": layers}


def main() -> int:
    import tempfile

    out, sys.stdout = sys.stdout, sys.stderr  # EIR logs to stdout; only the JSON goes there

    from eir.setup.config import get_configs  # type: ignore[import-not-found]
    from eir.train import get_default_experiment  # type: ignore[import-not-found]
    from eir.train_utils.step_logic import get_default_hooks  # type: ignore[import-not-found]

    if not any(a.startswith("--globals.basic_experiment.output_folder") for a in sys.argv):
        sys.argv.append(f"--globals.basic_experiment.output_folder={tempfile.mkdtemp(prefix='eir-structure-')}")
    configs = get_configs()
    experiment = get_default_experiment(configs=configs, hooks=get_default_hooks(configs=configs))
    model = getattr(experiment.model, "_original_module", experiment.model)  # unwrap Lightning Fabric's wrapper
    print(model, file=sys.stderr)
    out.write(json.dumps(describe(model), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
