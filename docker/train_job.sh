#!/usr/bin/env bash
# Training as a Kubernetes job (deploy/kubernetes/train): train one run into a shared volume, then
# publish its best bundle for the serving Deployment. The same script runs
#   * in the single-node Job: eirtrain, one process;
#   * in each pod of the Kubeflow Training Operator's PyTorchJob: torchrun, which takes the
#     number of nodes, this node's rank, the master's address and port and the processes per
#     node from the PET_* variables the operator sets (PET_NNODES, PET_NODE_RANK, ...).
# Environment:
#   RUN_NAME       the run's folder under $WORK/runs and the published bundle's name (required)
#   WORK           the volume (default /work): data/, runs/, published/
#   TUTORIAL_RUN   autoencoder|conditional: the tutorial configs and the built-in digits, which the
#                  data step (--data) writes once. For your own configs and data, set
#                  EIRTRAIN_ARGS instead (the config files and --key=value overrides, without
#                  output_folder) and put the data on the volume.
#   EIRTRAIN_ARGS  see TUTORIAL_RUN
# Usage: train_job.sh --data | --wait-for-data | (no argument: train, then publish on rank 0)
set -euo pipefail
work=${WORK:-/work}
name=${RUN_NAME:?set RUN_NAME, the run folder name}
case "$name" in */*|.*|"") echo "RUN_NAME=$name: a plain folder name, please" >&2; exit 2 ;; esac
conf=${TUTORIAL_CONFIGS:-/app/examples/tutorial/digits8}  # the image's copy of examples/tutorial/digits8
data=$work/data/digits8
ready=$data/mnist_labels.csv  # written last by eir-data

case "${1:-}" in
  --data)  # once: the built-in digits in EIR's layout (skipped when present)
    if [ -f "$ready" ]; then echo "data already in $data"; exit 0; fi
    rm -rf "$data.partial"
    eir-data digits --output-folder "$data.partial"
    mv "$data.partial" "$data"
    exit 0 ;;
  --wait-for-data)  # the other pods of a PyTorchJob, until the master's data step is done
    for _ in $(seq "${DATA_WAIT_S:-600}"); do [ -f "$ready" ] && exit 0; sleep 1; done
    echo "no data in $data after ${DATA_WAIT_S:-600} s" >&2; exit 1 ;;
  "") ;;
  *) echo "usage: train_job.sh [--data | --wait-for-data]" >&2; exit 2 ;;
esac

run=$work/runs/$name
if [ -n "${EIRTRAIN_ARGS:-}" ]; then
  read -r -a args <<<"$EIRTRAIN_ARGS"
else
  kind=${TUTORIAL_RUN:-autoencoder}
  src=$data/mnist_npy
  case "$kind" in
    autoencoder)
      args=(--global_configs "$conf/globals.yaml" --input_configs "$conf/input_mnist_array.yaml"
            --output_configs "$conf/output.yaml"
            "--input_mnist_array.input_info.input_source=$src" "--output.output_info.output_source=$src") ;;
    conditional)
      args=(--global_configs "$conf/globals.yaml"
            --input_configs "$conf/input_mnist_array_with_label.yaml" "$conf/input_mnist_label.yaml"
            --output_configs "$conf/output_with_label.yaml"
            "--input_mnist_array_with_label.input_info.input_source=$src"
            "--input_mnist_label.input_info.input_source=$data/mnist_labels.csv"
            "--output_with_label.output_info.output_source=$src") ;;
    *) echo "TUTORIAL_RUN=$kind: use autoencoder or conditional" >&2; exit 2 ;;
  esac
  args+=(${N_EPOCHS:+"--globals.basic_experiment.n_epochs=$N_EPOCHS"})
fi
args+=("--globals.basic_experiment.output_folder=$run" --no-pbar)
# A pod started again (the Job's backoffLimit, a node lost) continues the run from its resume
# state; a run that failed before its first checkpoint is started over by eirtrain itself.
[ -f "$run/resume/state.safetensors" ] && args+=(--resume)
mkdir -p "$work/runs"

if [ -n "${PET_NNODES:-}" ]; then
  torchrun -m eir_core.cli.train "${args[@]}"
else
  eirtrain "${args[@]}"
fi

# Publish: rank 0 of the job (the Job's only pod, the PyTorchJob's Master) copies the run's best
# checkpoint to published/$RUN_NAME.safetensors, whole or not at all (copy, then rename).
if [ "${PET_NODE_RANK:-0}" = 0 ]; then  # the operator sets it in every pod; a Job has no such variable
  best=$(python -c 'import sys; from pathlib import Path; from eir_core.bundle import resolve_bundle_path, read_manifest
p = resolve_bundle_path(Path(sys.argv[1])); read_manifest(p); print(p)' "$run")
  mkdir -p "$work/published"
  cp "$best" "$work/published/.$name.partial"
  mv -f "$work/published/.$name.partial" "$work/published/$name.safetensors"
  echo "published $best as $work/published/$name.safetensors"
fi
