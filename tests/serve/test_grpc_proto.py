"""The .proto we wrote speaks the same wire format as the protocol's clients, and the checked-in
modules are what scripts/gen_grpc.sh makes from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2 as triton

from eir_serve.grpc import grpc_predict_v2_pb2 as ours

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ["grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py"]


def fields(d: Descriptor) -> dict[str, tuple[int, int, str]]:
    """Field name -> (number, wire type, message type) for d and its nested messages."""
    out = {f"{d.name}.{f.name}": (f.number, f.type, f.message_type.name if f.message_type else "") for f in d.fields}
    for nested in d.nested_types:
        out.update({f"{d.name}.{k}": v for k, v in fields(nested).items()})
    return out


@pytest.mark.parametrize("message", sorted(ours.DESCRIPTOR.message_types_by_name))
def test_every_message_matches_tritonclients_copy_of_the_protocol(message: str) -> None:
    assert fields(ours.DESCRIPTOR.message_types_by_name[message]) == fields(
        triton.DESCRIPTOR.message_types_by_name[message]
    )


def test_the_service_has_the_protocols_name_and_methods() -> None:
    ours_service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours_service.full_name == "inference.GRPCInferenceService"
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for m in ours_service.methods:
        t = theirs.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name) == (t.input_type.full_name, t.output_type.full_name)
    assert [m.name for m in ours_service.methods] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",  # Triton's model-repository extension
    ]  # fmt: skip


def test_checked_in_modules_are_what_the_script_generates(tmp_path: Path) -> None:
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_grpc.sh"), sys.executable],
        env={**os.environ, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    src = ROOT / "services" / "serve" / "src" / "eir_serve" / "grpc"
    for name in GENERATED:
        assert (tmp_path / "eir_serve" / "grpc" / name).read_text() == (src / name).read_text(), name
