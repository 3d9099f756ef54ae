#!/usr/bin/env bash
# Regenerates eirserve's gRPC modules from services/serve/src/eir_serve/grpc/grpc_predict_v2.proto.
# The generated files are checked in (serving needs only grpcio + protobuf, not grpcio-tools):
#   make grpc-stubs        (or: bash scripts/gen_grpc.sh [python]; OUT=dir writes there instead)
# Needs grpcio-tools (requirements-dev.txt). The stubs pin the runtime they need: grpcio >= the
# tools' version, protobuf >= the bundled protoc's (see services/serve/pyproject.toml).
set -euo pipefail
PY="${1:-.venv/bin/python}"
SRC=services/serve/src
cd "$(dirname "$0")/.."
OUT="${OUT:-$SRC}"
mkdir -p "$OUT"
"$PY" -m grpc_tools.protoc -I "$SRC" --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  eir_serve/grpc/grpc_predict_v2.proto
# The protocol's messages are named inference.* in every implementation (tritonclient, KServe,
# MLServer ship the same names). Registered in protobuf's process-wide pool, two of them in one
# process fail with "duplicate symbol 'inference.ServerLiveRequest'". Ours go to a private pool,
# so eirserve can share a process with those clients (our tests do). The wire format is unchanged.
sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile/_descriptor_pool.DescriptorPool().AddSerializedFile/' \
  "$OUT/eir_serve/grpc/grpc_predict_v2_pb2.py"
grep -q '_descriptor_pool.DescriptorPool().AddSerializedFile' "$OUT/eir_serve/grpc/grpc_predict_v2_pb2.py"
echo "generated $OUT/eir_serve/grpc/grpc_predict_v2_pb2{.py,.pyi,_grpc.py}"
