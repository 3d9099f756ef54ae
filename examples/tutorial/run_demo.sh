#!/usr/bin/env bash
# The whole product on the built-in digits: data -> train -> bundle -> serve -> request.
#   bash examples/tutorial/run_demo.sh               run 1: the autoencoder
#   bash examples/tutorial/run_demo.sh conditional   run 2: image + label, label-only generation
#   bash examples/tutorial/run_demo.sh diffusion     examples/diffusion: label-only digits sampled by diffusion
#   SIZE=28 bash examples/tutorial/run_demo.sh       the tutorial's real 28x28 shape (10 000 images)
#   NPROC=2 bash examples/tutorial/run_demo.sh       train with 2 processes under torchrun (DDP)
# Needs eirtrain, eir-data, eir-bundle and eirserve on PATH (`make demo` sets that up).
# Everything it writes goes under examples/tutorial/demo/ (data/ and runs/ there), never into
# the tutorial's own data/ and runs/ folders, which are yours: `make clean` removes only what
# the demo wrote (scripts/clean_demos.py).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p demo
cd demo
kind=${1:-autoencoder}
size=${SIZE:-8}
nproc=${NPROC:-1}
train=(eirtrain)
if [ "$nproc" -gt 1 ]; then train=(torchrun --standalone --nproc-per-node "$nproc" -m eir_core.cli.train); fi
if [ "$size" = 28 ]; then conf=..; data=data/digits28; else conf=../digits8; data=data/digits8; fi
if [ ! -f "$data/mnist_labels.csv" ]; then
  if [ "$size" = 28 ]; then eir-data digits --size 28 --count 10000 --output-folder "$data"
  else eir-data digits --output-folder "$data"; fi
  touch "$data/.made-by-run_demo"  # so that make clean knows this data is the demo's
fi

if [ "$kind" = diffusion ]; then
  # examples/diffusion: EIR's diffusion keys on the same digits (the configs read data/digits8 here)
  [ "$size" = 8 ] || { echo "the diffusion demo runs on the 8x8 digits (examples/diffusion/digits28 for 28x28)" >&2; exit 2; }
  run=runs/digits8_03_array_mnist_diffusion
  "${train[@]}" --global_configs ../../diffusion/globals.yaml \
    --input_configs ../../diffusion/input_mnist_array.yaml ../../diffusion/input_mnist_label.yaml \
    --output_configs ../../diffusion/output.yaml \
    --globals.basic_experiment.output_folder="$run" --overwrite ${DIFFUSION_EPOCHS:+--globals.basic_experiment.n_epochs=$DIFFUSION_EPOCHS}
elif [ "$kind" = conditional ]; then
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
# The demo serves HTTP on a port the server picks itself (--port 0; it logs which) and leaves
# gRPC off, so it never collides with anything already listening on this machine.
log=$(mktemp)
eirserve --model-path "$run" --host 127.0.0.1 --port 0 --grpc-port 0 --log-level info 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true; rm -f "$log"' EXIT
port=
for _ in $(seq 600); do
  port=$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$log" | head -1)
  [ -n "$port" ] && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1  # polling the server's log for the port it bound
done
[ -n "$port" ] || { cat "$log" >&2; echo "eirserve did not start" >&2; exit 1; }
python ../demo_client.py --url "http://127.0.0.1:$port" --data "$data" --kind "$kind"
echo
echo "demo: data and run are in examples/tutorial/demo/ ($data, $run); \`make clean\` removes what the demo wrote"
