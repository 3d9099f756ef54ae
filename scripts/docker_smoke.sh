#!/usr/bin/env bash
# Build the images, `docker compose up`, wait for health, send a real /predict, check the
# answer, tear down. Exits non-zero (with the services' logs) on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
project=eirsmoke$$
port=${SMOKE_PORT:-18000}
export EIR_SERVE_PORT=$port
export EIR_SERVE_GRPC_PORT=${SMOKE_GRPC_PORT:-$((port + 1))}  # compose publishes gRPC here
dc() { docker compose -p "$project" "$@"; }
fail() { echo "docker smoke: FAILED: $*" >&2; dc logs --no-color >&2 || true; dc down -v >/dev/null 2>&1 || true; exit 1; }
trap 'fail "interrupted"' INT TERM

dc build || fail "build"
dc up -d serve || fail "compose up"
for _ in $(seq 180); do
  status=$(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q serve)" 2>/dev/null || echo starting)
  [ "$status" = healthy ] && break
  sleep 1
done
[ "$status" = healthy ] || fail "serve did not become healthy (status: $status)"
curl -sf "http://127.0.0.1:$port/info" >/dev/null || fail "/info"
python3 - "$port" <<'PY' || fail "/predict answer"
import base64, json, sys, urllib.request
port = sys.argv[1]
info = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/info"))
shape = info["inputs"]["mnist"]["shape"]
n = 1
for s in shape:
    n *= s
img = bytes((i * 37) % 256 for i in range(n))  # a uint8 image, as EIR's clients send
req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", method="POST",
                             data=json.dumps([{"mnist": base64.b64encode(img).decode()}]).encode(),
                             headers={"content-type": "application/json"})
if "mnist_label" in info["inputs"]:
    raise SystemExit("smoke expects the autoencoder model")
out = json.load(urllib.request.urlopen(req))["result"][0]["mnist_output"]
raw = base64.b64decode(out)
assert len(raw) == 4 * n, len(raw)
import array
vals = array.array("f", raw)
assert all(v == v for v in vals) and -200 < min(vals) and max(vals) < 500, (min(vals), max(vals))
print(f"docker smoke: /predict answered {len(vals)} float32 values in [{min(vals):.1f}, {max(vals):.1f}]")
PY
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^eir-(serve|train):local' || true
dc down -v >/dev/null
echo "docker smoke: OK"
