from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from eir_core.bundle import MANIFEST_KEY, load_bundle, read_manifest, resolve_bundle_path, save_bundle
from eir_core.cli.bundle import main as eir_bundle
from eir_core.errors import BundleError
from eir_core.manifest import Manifest, TabularInput, checkpoint_name, parse_checkpoint_name
from eir_core.predict import Predictor


def test_round_trip_is_exact(tiny_bundle: Path, tmp_path: Path) -> None:
    b = load_bundle(tiny_bundle)
    copy = tmp_path / "copy.safetensors"
    save_bundle(copy, b.manifest, b.state_dict, b.input_stats, b.output_stats)
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
    future.write_bytes(
        st_save(
            tensors, metadata={MANIFEST_KEY: json.dumps({**b.manifest.model_dump(mode="json"), "format_version": 99})}
        )
    )
    with pytest.raises(BundleError, match="format version 99"):
        read_manifest(future)

    wrong = b.manifest.model_dump(mode="json")
    wrong["model_spec"]["outputs"][0]["shape"] = [1, 9, 9]
    mismatch = tmp_path / "mismatch.safetensors"
    mismatch.write_bytes(st_save(tensors, metadata={MANIFEST_KEY: json.dumps(wrong)}))
    with pytest.raises(BundleError, match="weights do not match"):
        Predictor.from_path(mismatch)

    bad = b.manifest.model_dump(mode="json")
    bad["inputs"][0]["type"] = "image"
    del bad["training"]["iteration"]
    invalid = tmp_path / "invalid.safetensors"
    invalid.write_bytes(st_save(tensors, metadata={MANIFEST_KEY: json.dumps(bad)}))
    with pytest.raises(BundleError, match=r"the manifest is invalid at inputs\.0: .*\(2 problem\(s\)\)"):
        read_manifest(invalid)

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


def test_inspect_takes_a_run_folder_like_eirserve(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tiny_bundle.parent.parent
    assert eir_bundle(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"bundle    {resolve_bundle_path(run)}"
    assert eir_bundle(["inspect", "--json", str(run / "saved_models")]) == 0
    assert json.loads(capsys.readouterr().out)["training"]["iteration"] == 48


def test_a_manifest_written_before_the_typed_manifest_still_reads() -> None:
    """The manifest of a bundle written by eirtrain at commit c8fb635 (untyped dict era)."""
    raw = json.loads((Path(__file__).parent / "fixtures" / "manifest_c8fb635_conditional.json").read_text())
    m = Manifest.model_validate(raw)
    label = m.input("mnist_label")
    assert isinstance(label, TabularInput) and label.offered("CLASS") == [str(d) for d in range(10)]
    assert m.optional_inputs == {"mnist"}
    assert m.training.iteration == 24 and m.training.world_size == 1
    assert m.model_spec.architecture == 1  # built by the rules of its time, not EIR 0.25's
    assert json.loads(m.model_dump_json())["inputs"] == raw["inputs"]  # the bytes' meaning is unchanged


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("run_checkpoint_48_perf-average=0.9882.safetensors", (48, 0.9882)),
        ("a_b_checkpoint_7_perf-average=-0.1250.safetensors", (7, -0.125)),
        ("x_checkpoint_3_perf-average=1e-05.safetensors", (3, 1e-05)),
        ("x_checkpoint_3_perf-average=1.5E+02.safetensors", (3, 150.0)),
        ("x_checkpoint_3.safetensors", None),
        ("x_checkpoint_3_perf-average=0.5.pt", None),
    ],
)
def test_one_checkpoint_name_parser(name: str, parsed: tuple[int, float] | None) -> None:
    assert parse_checkpoint_name(name) == parsed
    if parsed is not None:
        assert parse_checkpoint_name(checkpoint_name("r", parsed[0], parsed[1])) == (parsed[0], round(parsed[1], 4))
