"""Property-based fuzzing of gRPC ModelInfer (real gRPC server in a thread, loopback): whatever a
client sends, the answer is a result or a client-side status (never INTERNAL or UNKNOWN), and the
server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from eir_serve import protocol
from eir_serve.grpc import grpc_predict_v2_pb2 as pb
from eir_serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from eir_serve.settings import Settings
from tests.helpers import bundle_version
from tests.serve.live import serve_in_thread

pytestmark = pytest.mark.slow
CURRENT = "<the bundle's version>"  # drawn, then replaced by the served version in the test
CLIENT_SIDE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def stub(tiny_conditional_bundle: Path) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    s = Settings(model_path=tiny_conditional_bundle, device="cpu", max_items_per_request=4, max_body_bytes=20_000)
    with serve_in_thread(s) as live, grpc.insecure_channel(live.grpc) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _contents(**kw: list[object]) -> pb.InferTensorContents:
    return pb.InferTensorContents(**kw)


CONTENTS = st.builds(
    _contents,
    bool_contents=st.lists(st.booleans(), max_size=4),
    int_contents=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=70),
    int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
    uint_contents=st.one_of(st.lists(st.integers(0, 2**32 - 1), max_size=70), st.just([7] * 64)),
    uint64_contents=st.lists(st.integers(0, 2**64 - 1), max_size=4),
    fp32_contents=st.lists(st.floats(width=32), max_size=4),
    fp64_contents=st.lists(st.floats(), max_size=4),
    bytes_contents=st.lists(st.one_of(st.binary(max_size=4), st.sampled_from([b"3", b"7", b"\xff"])), max_size=5),
)
SHAPE = st.one_of(
    st.lists(st.integers(-2, 6), max_size=4),
    st.lists(st.integers(0, 9), min_size=1, max_size=1),
    st.tuples(st.integers(0, 6), st.just(1), st.just(8), st.just(8)).map(list),
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=4),
)
PARAMETER = st.one_of(
    st.builds(pb.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
    st.builds(pb.InferParameter, uint64_param=st.integers(0, 2**64 - 1)),
    st.builds(pb.InferParameter, bool_param=st.booleans()),
    st.builds(pb.InferParameter, string_param=st.text(max_size=4)),
    st.builds(pb.InferParameter, double_param=st.floats()),
    st.just(pb.InferParameter()),
)
TENSOR = st.builds(
    pb.ModelInferRequest.InferInputTensor,
    name=st.sampled_from(["mnist", "mnist_label.CLASS", "mnist_label", "mnist_label.OTHER", "", "x"]),
    datatype=st.sampled_from([*protocol.DATATYPES, "WHAT", ""]),
    shape=SHAPE,
    contents=st.one_of(st.none(), CONTENTS),
    parameters=st.dictionaries(st.sampled_from(["binary_data_size", "x"]), PARAMETER, max_size=1),
)
RAW = st.one_of(
    st.just([]),
    st.lists(
        st.one_of(st.binary(max_size=80), st.binary(min_size=64, max_size=64), st.just(b"\x01\x00\x00\x003")),
        max_size=3,
    ),
)


@st.composite
def wild(draw: st.DrawFn) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["run", "run", "run", "other", ""])),
        model_version=draw(st.sampled_from(["", CURRENT, CURRENT, "2"])),
        id=draw(st.text(max_size=4)),
        inputs=draw(st.lists(TENSOR, max_size=3)),
        raw_input_contents=draw(RAW),
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name=n)
            for n in draw(st.lists(st.sampled_from(["mnist_output", "y"]), max_size=2))
        ],
    )
    for key, value in draw(
        st.dictionaries(st.sampled_from(["seed", "binary_data_output", "z"]), PARAMETER, max_size=2)
    ).items():
        req.parameters[key].CopyFrom(value)
    return req


@st.composite
def near_valid(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Right model, names and datatypes; batch sizes, bytes, categories and seeds drawn."""
    n = draw(st.integers(0, 5))
    categories = [b"3", b"7"] if draw(st.booleans()) else [b"3", b"7", b"", b"11", b"\xff"]
    labels = draw(st.lists(st.sampled_from(categories), min_size=n, max_size=n))
    req = pb.ModelInferRequest(model_name="run", model_version=draw(st.sampled_from(["", CURRENT])))
    if draw(st.booleans()):
        req.parameters["seed"].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    label = req.inputs.add(name="mnist_label.CLASS", datatype="BYTES", shape=[draw(st.sampled_from([n, n, n + 1]))])
    if draw(st.booleans()):  # all raw: the image and the length-prefixed labels
        req.inputs.add(name="mnist", datatype="UINT8", shape=[n, 1, 8, 8])
        size = draw(st.sampled_from([64 * n, 64 * n, 64 * n - 1, 64 * n + 3]))
        req.raw_input_contents.extend(
            [protocol.join_bytes(labels), draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))]
        )
    else:  # typed: the labels alone (the image is optional in this bundle)
        label.contents.bytes_contents.extend(labels)
    return req


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(req=st.one_of(wild(), near_valid()))
def test_model_infer_never_fails_server_side(
    stub: pb_grpc.GRPCInferenceServiceStub, tiny_conditional_bundle: Path, req: pb.ModelInferRequest
) -> None:
    version = bundle_version(tiny_conditional_bundle)
    if req.model_version == CURRENT:
        req.model_version = version
    try:
        resp = stub.ModelInfer(req, timeout=30)
    except grpc.RpcError as e:
        event(e.code().name)  # pytest --hypothesis-show-statistics: how often each status came back
        assert e.code() in CLIENT_SIDE, (e.code(), e.details(), req)
        assert e.details(), "every refusal carries a message"
        return
    event("OK")
    n = resp.outputs[0].shape[0]
    assert list(resp.outputs[0].shape) == [n, 1, 8, 8] and resp.model_version == version
    out = np.frombuffer(resp.raw_output_contents[0], "<f4")
    assert out.size == n * 64 and np.isfinite(out).all()


def test_still_serving_after_fuzzing(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
