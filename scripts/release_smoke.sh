#!/usr/bin/env bash
# The release smoke: the wheels in dist/ (`make dist`) installed as a user would, in fresh venvs.
#   1. serving venv: `pip install dist/*.whl` (no PyTorch): eirserve, eirtrain, eir-bundle and
#      eir-data answer --help; PyTorch is not installed;
#   2. training venv: PyTorch (TORCH_SPEC, default torch==2.13.0), then eir-core's wheel with
#      [train]: eir-data writes the digits, eirtrain trains the tutorial for one epoch, eir-bundle
#      inspects the bundle;
#   3. the serving venv's eirserve serves that bundle (ONNX Runtime) and answers /predict.
# Exits non-zero on any failure. Usage: bash scripts/release_smoke.sh [DIST_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dist=$(cd "${1:-dist}" && pwd)
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
port=${SMOKE_PORT:-18200}
work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "release smoke: FAILED: $*" >&2; exit 1; }
core=$(ls "$dist"/eir_core-*.whl 2>/dev/null | head -1)
serve=$(ls "$dist"/eir_serve-*.whl 2>/dev/null | head -1)
[ -n "$core" ] && [ -n "$serve" ] || fail "no eir_core/eir_serve wheels in $dist (make dist)"
ls "$dist"/eir_core-*.tar.gz "$dist"/eir_serve-*.tar.gz >/dev/null || fail "no sdists in $dist"
pip_q() { "$1/bin/python" -m pip install -q --disable-pip-version-check "${@:2}"; }

t0=$(date +%s)
"$python" -m venv "$work/serve"
pip_q "$work/serve" "$dist"/*.whl || fail "pip install of the wheels"
"$work/serve/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is not None)' \
  || fail "the serving install pulled in PyTorch"
for cli in eirserve eirtrain eir-bundle eir-data; do
  "$work/serve/bin/$cli" --help >/dev/null || fail "$cli --help"
done
echo "release smoke: serving venv ($(du -sm "$work/serve" | cut -f1) MB, no PyTorch): the four commands answer --help"

"$python" -m venv "$work/train"
pip_q "$work/train" "$torch_spec" || fail "pip install $torch_spec"
pip_q "$work/train" "$core[train]" || fail "pip install eir-core[train] from the wheel"
export MPLCONFIGDIR=$work/mpl
"$work/train/bin/eir-data" digits --output-folder "$work/data" >/dev/null || fail "eir-data digits"
conf=examples/tutorial/digits8
"$work/train/bin/eirtrain" --global_configs "$conf/globals.yaml" --input_configs "$conf/input_mnist_array.yaml" \
  --output_configs "$conf/output.yaml" --no-pbar \
  "--input_mnist_array.input_info.input_source=$work/data/mnist_npy" \
  "--output.output_info.output_source=$work/data/mnist_npy" \
  "--globals.basic_experiment.output_folder=$work/run" --globals.basic_experiment.n_epochs=1 \
  >"$work/train.log" 2>&1 || { tail -20 "$work/train.log" >&2; fail "eirtrain"; }
"$work/train/bin/eir-bundle" inspect "$work/run" | grep -q "^graph     ONNX" || fail "eir-bundle inspect: no ONNX graph"
echo "release smoke: training venv: eir-data, eirtrain (1 epoch) and eir-bundle from the wheel"

EIR_SERVE_GRPC_PORT=0 "$work/serve/bin/eirserve" --model-path "$work/run" --port "$port" --device cpu \
  2>"$work/serve.log" &
server=$!
"$work/serve/bin/python" - "$port" <<'PY' || { cat "$work/serve.log" >&2; fail "serving"; }
import base64, json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(600):
    try:
        if urllib.request.urlopen(f"{url}/ready", timeout=1).status == 200:
            break
    except OSError:
        time.sleep(0.1)
else:
    raise SystemExit("not ready after 60 s")
info = json.load(urllib.request.urlopen(f"{url}/info"))
assert info["model"]["runtime"] == "onnxruntime", info["model"]
body = json.dumps([{"mnist": base64.b64encode(bytes(range(64))).decode()}]).encode()
req = urllib.request.Request(f"{url}/predict", data=body, headers={"content-type": "application/json"})
out = base64.b64decode(json.load(urllib.request.urlopen(req))["result"][0]["mnist_output"])
assert len(out) == 64 * 4, len(out)
print("release smoke: eirserve (no PyTorch) answered /predict on ONNX Runtime")
PY
echo "release smoke: OK ($(( $(date +%s) - t0 )) s)"
