#!/usr/bin/env bash
# Build the images from this checkout and measure them: size (and size above the base image),
# build time without the layer cache, and for eir-serve the time from `docker run` to the first
# 200 from /ready (and from the container's start, as Docker records it), repeated; for eir-train
# the time of a short tutorial run in the container. Prints a table and writes it, with the
# machine's load average next to every timing, to benchmarks/results/images.md (and .json), or
# to benchmarks/results/NAME.md with RESULTS_NAME=NAME.
#   bash scripts/measure_images.sh                 serve (CPU) and train
#   REPEATS=7 bash scripts/measure_images.sh
#   IMAGES="serve serve-cuda train" bash scripts/measure_images.sh   serve-cuda: PyTorch's CUDA
#       build from download.pytorch.org (TORCH_INDEX_URL); needs that index and several GB
#   ALSO_READY="eir-serve:old" bash scripts/measure_images.sh   also time /ready of images built before
# Besides the wall-clock time to ready, which grows with whatever else the machine runs, the CPU
# time the container used until it was ready is read from its cgroup (cgroup v1 or v2): that
# figure does not depend on the load.
# Needs a Docker engine, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
images=${IMAGES:-serve train}
repeats=${REPEATS:-5}
base=${PYTHON_IMAGE:-python:3.11-slim}
tag=measure
port=${MEASURE_PORT:-18300}
cuda_index=${TORCH_CUDA_INDEX_URL:-https://download.pytorch.org/whl/cu126}
work=$(mktemp -d)
models=$work/models
results=benchmarks/results
name=${RESULTS_NAME:-images}
mkdir -p "$results" "$models"
chmod 777 "$models"  # the images run as uid 10001
cleanup() { docker rm -f "eir-measure-$$" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

load() { cut -d' ' -f1 /proc/loadavg; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
size_of() { docker image inspect -f '{{.Size}}' "$1"; }
mb() { python3 -c "import sys; print(round(int(sys.argv[1]) / 1e6))" "$1"; }

docker image inspect "$base" >/dev/null 2>&1 || docker pull "$base" >/dev/null
base_bytes=$(size_of "$base")
rows=()
json="[]"
add_json() {  # add_json KEY=VALUE ...: one object per image
  json=$(python3 -c '
import json, sys
rows = json.loads(sys.argv[1]); rows.append(dict(kv.split("=", 1) for kv in sys.argv[2:])); print(json.dumps(rows))' "$json" "$@")
}

build() {  # build NAME DOCKERFILE [build args...]: prints seconds
  local name=$1 file=$2; shift 2
  local t0; t0=$(now)
  docker build -q --no-cache --build-arg "PYTHON_IMAGE=$base" "$@" -f "$file" -t "eir-$name:$tag" . >"$work/build-$name.log" 2>&1 \
    || { cat "$work/build-$name.log" >&2; exit 1; }
  secs "$t0" "$(now)"
}

cpu_s() {  # CPU seconds a container has used so far (its cgroup), or "-"
  local id f
  id=$(docker inspect -f '{{.Id}}' "$1")
  for f in /sys/fs/cgroup/cpuacct/docker/$id/cpuacct.usage /sys/fs/cgroup/system.slice/docker-$id.scope/cpu.stat \
           /sys/fs/cgroup/docker/$id/cpu.stat; do
    [ -r "$f" ] || continue
    case "$f" in
      *cpuacct.usage) python3 -c "import sys; print(f'{int(open(sys.argv[1]).read()) / 1e9:.2f}')" "$f" ;;
      *) awk '$1 == "usage_usec" {printf "%.2f\n", $2 / 1e6}' "$f" ;;
    esac
    return
  done
  echo "-"
}

median() { python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }

for image in $images; do
  case "$image" in
    serve) file=docker/serve.Dockerfile; args=() ;;
    serve-cuda) file=docker/serve.Dockerfile; args=(--build-arg TORCH_SPEC=torch==2.13.0 --build-arg "TORCH_INDEX_URL=$cuda_index") ;;
    train) file=docker/train.Dockerfile; args=() ;;
    *) echo "unknown image $image (serve, serve-cuda, train)" >&2; exit 2 ;;
  esac
  l0=$(load)
  build_s=$(build "$image" "$file" "${args[@]}")
  bytes=$(size_of "eir-$image:$tag")
  echo "eir-$image: $(mb "$bytes") MB, $(mb $((bytes - base_bytes))) MB above $base ($(mb "$base_bytes") MB); built in $build_s s (load $l0)"
  ready="-"; started="-"; run_s="-"; lr="-"
  if [ "$image" = train ]; then
    # A short tutorial run (1 epoch on the 8x8 digits) into $models: also the bundle the serve
    # images are timed on.
    lr=$(load); t0=$(now)
    docker run --rm -e N_EPOCHS=1 -e MODELS_DIR=/models/tutorial -v "$models:/models" "eir-train:$tag" >"$work/train.log" 2>&1 \
      || { tail -20 "$work/train.log" >&2; exit 1; }
    run_s=$(secs "$t0" "$(now)")
    echo "  a 1-epoch tutorial run in the container: $run_s s (load $lr)"
  fi
  rows+=("| eir-$image | $(mb "$bytes") | $(mb $((bytes - base_bytes))) | $build_s (load $l0) | READY_$image | $run_s |")
  add_json image="eir-$image" bytes="$bytes" base_bytes="$base_bytes" build_s="$build_s" build_load="$l0" train_1epoch_s="$run_s"
done

# Time to ready of each serve image, on the bundle the train image wrote (trained here if the
# train image was not measured in this run).
if ! ls "$models"/tutorial/saved_models/*.safetensors >/dev/null 2>&1; then
  docker image inspect "eir-train:$tag" >/dev/null 2>&1 || build train docker/train.Dockerfile >/dev/null
  docker run --rm -e N_EPOCHS=1 -e MODELS_DIR=/models/tutorial -v "$models:/models" "eir-train:$tag" >"$work/train.log" 2>&1 \
    || { tail -20 "$work/train.log" >&2; exit 1; }
fi
for image in $images ${ALSO_READY:-}; do
  case "$image" in serve|serve-cuda) ref=eir-$image:$tag ;; *:*) ref=$image ;; *) continue ;; esac
  from_run=(); from_start=(); loads=(); cpus=()
  for _ in $(seq "$repeats"); do
    docker rm -f "eir-measure-$$" >/dev/null 2>&1 || true
    loads+=("$(load)")
    t0=$(now)
    docker run -d --name "eir-measure-$$" -p "127.0.0.1:$port:8000" -e EIR_SERVE_GRPC_PORT=8001 \
      -v "$models/tutorial:/models:ro" --read-only --tmpfs /tmp "$ref" >/dev/null
    ok=""
    for _ in $(seq 3000); do
      if curl -sf -o /dev/null "http://127.0.0.1:$port/ready"; then ok=$(now); break; fi
      sleep 0.01
    done
    cpus+=("$(cpu_s "eir-measure-$$")")
    [ -n "$ok" ] || { docker logs "eir-measure-$$" >&2; echo "$ref never became ready" >&2; exit 1; }
    started=$(docker inspect -f '{{.State.StartedAt}}' "eir-measure-$$")
    start_s=$(python3 -c "import datetime, sys; print(datetime.datetime.fromisoformat(sys.argv[1][:26].rstrip('Z') + '+00:00').timestamp())" "$started")
    from_run+=("$(secs "$t0" "$ok")"); from_start+=("$(secs "$start_s" "$ok")")
    curl -sf -X POST -H 'content-type: application/json' \
      -d "[{\"mnist\": \"$(python3 -c 'import base64; print(base64.b64encode(bytes(range(64))).decode())')\"}]" \
      "http://127.0.0.1:$port/predict" >/dev/null || { docker logs "eir-measure-$$" >&2; echo "/predict failed" >&2; exit 1; }
  done
  docker rm -f "eir-measure-$$" >/dev/null
  r=$(median "${from_run[@]}"); s=$(median "${from_start[@]}")
  c=$( [ "${cpus[0]}" = - ] && echo - || median "${cpus[@]}")
  echo "$ref ready: median $r s after docker run, $s s after the container started, $c CPU s" \
       "(each: ${from_run[*]} / ${from_start[*]} / ${cpus[*]}; load ${loads[*]})"
  cell="$r after run, $s after start, $c CPU s (median of $repeats; load ${loads[0]}-${loads[-1]})"
  found=""
  for i in "${!rows[@]}"; do
    [[ ${rows[$i]} == *READY_$image* ]] && { rows[$i]=${rows[$i]/READY_$image/$cell}; found=1; }
  done
  [ -n "$found" ] || rows+=("| $ref (built before) | $(mb "$(size_of "$ref")") | $(mb $(( $(size_of "$ref") - base_bytes ))) | - | $cell | - |")
  add_json image="$ref ready" ready_after_run_s="$r" ready_after_start_s="$s" cpu_s="$c" runs="${from_run[*]}" starts="${from_start[*]}" cpus="${cpus[*]}" loads="${loads[*]}"
done
for i in "${!rows[@]}"; do rows[$i]=${rows[$i]/READY_train/-}; done

{
  echo "# Image sizes, build times, time to ready"
  echo
  echo "$(date -u +%Y-%m-%d), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs; base $base, $(mb "$base_bytes") MB."
  echo "Made by \`bash scripts/measure_images.sh\` (IMAGES=\"$images\", REPEATS=$repeats). Load: the 1-minute load average when each timing began."
  echo
  echo "| image | MB | MB above base | build, no cache (s) | /ready 200 (s) | 1-epoch tutorial run (s) |"
  echo "| --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
} >"$results/$name.md"
echo "$json" | python3 -m json.tool >"$results/$name.json"
cat "$results/$name.md"
