from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from eir_core.bundle import MANIFEST_KEY, load_bundle, read_manifest, save_bundle
from eir_core.cli.bundle import main as eir_bundle
from eir_core.errors import BundleError
from eir_core.predict import Predictor


def test_round_trip_is_exact(tiny_bundle: Path, tmp_path: Path) -> None:
    b = load_bundle(tiny_bundle)
    copy = tmp_path / "copy.safetensors"
    save_bundle(
        copy,
        {k: v for k, v in b.manifest.items() if k not in ("format", "format_version", "package_version")},
        b.state_dict,
        b.input_stats,
        b.output_stats,
    )
    b2 = load_bundle(copy)
    assert b2.manifest == b.manifest
    assert b2.state_dict.keys() == b.state_dict.keys()
    for k in b.state_dict:
        assert torch.equal(b.state_dict[k], b2.state_dict[k])
    assert (b2.input_stats["mnist"].mean == b.input_stats["mnist"].mean).all()
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file"


class _Marker:
    def __reduce__(self):  # executing this would create a file
        return (Path.touch, (Path("/tmp/eir_pickle_marker_should_not_exist"),))


def test_hostile_and_broken_files_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    marker = Path("/tmp/eir_pickle_marker_should_not_exist")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Marker()))
    with pytest.raises(BundleError, match="not a safetensors bundle"):
        Predictor.from_path(evil)
    assert not marker.exists()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_bundle.read_bytes()[:-1000])
    with pytest.raises(BundleError):
        Predictor.from_path(truncated)

    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(st_save({"w": torch.zeros(2)}))
    with pytest.raises(BundleError, match="without an EIR manifest"):
        read_manifest(foreign)

    b = load_bundle(tiny_bundle)
    tensors = {f"model.{k}": v for k, v in b.state_dict.items()}
    tensors.update(
        {
            "norm.input.mnist.mean": torch.zeros(1, 1, 1),
            "norm.input.mnist.std": torch.ones(1, 1, 1),
            "norm.output.mnist_output.mean": torch.zeros(1, 1, 1),
            "norm.output.mnist_output.std": torch.ones(1, 1, 1),
        }
    )
    future = tmp_path / "future.safetensors"
    future.write_bytes(st_save(tensors, metadata={MANIFEST_KEY: json.dumps({**b.manifest, "format_version": 99})}))
    with pytest.raises(BundleError, match="format version 99"):
        read_manifest(future)

    wrong = json.loads(json.dumps(b.manifest))
    wrong["model_spec"]["outputs"][0]["shape"] = [1, 9, 9]
    mismatch = tmp_path / "mismatch.safetensors"
    mismatch.write_bytes(st_save(tensors, metadata={MANIFEST_KEY: json.dumps(wrong)}))
    with pytest.raises(BundleError, match="weights do not match"):
        Predictor.from_path(mismatch)

    huge = tmp_path / "huge.safetensors"
    huge.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(BundleError, match="header length"):
        read_manifest(huge)


def test_inspect_prints_inputs_and_categories(
    tiny_conditional_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert eir_bundle(["inspect", str(tiny_conditional_bundle)]) == 0
    out = capsys.readouterr().out
    assert "mnist_label: tabular" in out and "CLASS: 0, 1, 2" in out and "modality_dropout_rate=0.3" in out
    assert eir_bundle(["inspect", "/nonexistent.safetensors"]) == 2
