#!/usr/bin/env bash
# The whole product on the built-in digits: data -> train -> bundle -> serve -> request.
#   bash examples/tutorial/run_demo.sh               run 1: the autoencoder
#   bash examples/tutorial/run_demo.sh conditional   run 2: image + label, label-only generation
#   SIZE=28 bash examples/tutorial/run_demo.sh       the tutorial's real 28x28 shape (10 000 images)
#   NPROC=2 bash examples/tutorial/run_demo.sh       train with 2 processes under torchrun (DDP)
# Needs eirtrain, eir-data, eir-bundle and eirserve on PATH (`make demo` sets that up).
set -euo pipefail
cd "$(dirname "$0")"
kind=${1:-autoencoder}
size=${SIZE:-8}
nproc=${NPROC:-1}
train=(eirtrain)
if [ "$nproc" -gt 1 ]; then train=(torchrun --standalone --nproc-per-node "$nproc" -m eir_core.cli.train); fi
if [ "$size" = 28 ]; then conf=.; data=data/digits28; else conf=digits8; data=data/digits8; fi
if [ ! -f "$data/mnist_labels.csv" ]; then
  if [ "$size" = 28 ]; then eir-data digits --size 28 --count 10000 --output-folder "$data"
  else eir-data digits --output-folder "$data"; fi
fi

if [ "$kind" = conditional ]; then
  run=runs/$( [ "$size" = 28 ] || echo digits8_ )02_array_mnist_generation_with_labels
  "${train[@]}" --global_configs "$conf/globals.yaml" \
    --input_configs "$conf/input_mnist_array_with_label.yaml" "$conf/input_mnist_label.yaml" \
    --output_configs "$conf/output_with_label.yaml" \
    --globals.basic_experiment.output_folder="$run" --overwrite
else
  run=runs/$( [ "$size" = 28 ] || echo digits8_ )01_array_mnist_generation
  "${train[@]}" --global_configs "$conf/globals.yaml" --input_configs "$conf/input_mnist_array.yaml" \
    --output_configs "$conf/output.yaml" --globals.basic_experiment.output_folder="$run" --overwrite
fi

bundle=$(ls -t "$run"/saved_models/*.safetensors | head -1)
echo; eir-bundle inspect "$bundle"; echo

if ! command -v eirserve >/dev/null; then
  echo "eirserve is not installed (pip install -e services/serve); stopping after training." >&2
  exit 0
fi
free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
grpc_port=$(free_port)  # gRPC's default 8001 may be taken on a shared machine
eirserve --model-path "$run" --host 127.0.0.1 --port "$port" --grpc-port "$grpc_port" --log-level warning &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
python demo_client.py --url "http://127.0.0.1:$port" --data "$data" --kind "$kind"
