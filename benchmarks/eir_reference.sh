#!/usr/bin/env bash
# The original EIR (PyPI eir-dl 0.25.0) in its own venv, for side-by-side comparison with eirtrain.
#
#   eir_reference.sh install          venv with Python 3.13 (EIR needs >= 3.13) + eir-dl==0.25.0
#                                     (~2 min, ~6.5 GB; PyPI's CPU/CUDA torch comes with it)
#   eir_reference.sh data SIZE [COUNT] [flat]
#                                     our `eir-data digits` in the tutorial layout -> DIR/data/dSIZE_COUNT
#                                     (flat: 1-D arrays of SIZE*SIZE values); prints the folder
#   eir_reference.sh configs DATA OUT KIND [CUTOFF]
#                                     the example YAMLs with DATA as their source written to OUT. KIND:
#                                     a = tutorial run 1 (image -> image), b = tutorial run 2 (+ label),
#                                     d = examples/diffusion (cnn image + label -> diffusion), u = the same
#                                     without the label, m = tutorial input -> diffusion's cnn output,
#                                     c = diffusion's cnn input -> tutorial output;
#                                     CUTOFF adds `cutoff: CUTOFF` to the output model (a, b)
#   eir_reference.sh train NAME DATA KIND [CUTOFF] [-- eirtrain overrides...]
#                                     EIR's eirtrain on those configs -> DIR/runs/NAME (log: NAME.log)
#   eir_reference.sh model NAME       EIR's printed model of a run (model_architecture/model_info.txt)
#   eir_reference.sh version          the installed eir-dl version
#   eir_reference.sh structure DATA KIND [CUTOFF] [-- eirtrain overrides...]
#                                     EIR builds the model for those configs without training and
#                                     prints its structure as JSON (benchmarks/eir_structure.py)
#
# Everything goes under $EIR_REFERENCE_DIR (default ~/.cache/eir-reference). `eir-data` is taken from
# $EIR_DATA (default: this checkout's .venv/bin/eir-data, else the one on PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
dir=${EIR_REFERENCE_DIR:-$HOME/.cache/eir-reference}
venv=$dir/venv
usage() { sed -n 2,27p "$0" >&2; exit 2; }

eir_data() {
  if [ -n "${EIR_DATA:-}" ]; then echo "$EIR_DATA"
  elif [ -x "$root/.venv/bin/eir-data" ]; then echo "$root/.venv/bin/eir-data"
  else command -v eir-data || { echo "eir-data not found: run 'make setup' or set EIR_DATA" >&2; exit 1; }
  fi
}

need_venv() {
  [ -x "$venv/bin/eirtrain" ] || { echo "EIR is not installed in $venv: run '$0 install' first" >&2; exit 1; }
}

write_configs() {  # DATA OUT KIND [CUTOFF]
  local data=$1 out=$2 kind=$3 cutoff=${4:-}
  [ -d "$data/mnist_npy" ] || { echo "$data has no mnist_npy/ folder: make it with '$0 data SIZE'" >&2; exit 1; }
  mkdir -p "$out"
  local t=tutorial d=diffusion g ins outs f
  case "$kind" in  # globals (always a globals.yaml), inputs, outputs: example folder/file stem
    a) g=$t/globals ins="$t/input_mnist_array" outs=$t/output ;;
    b) g=$t/globals ins="$t/input_mnist_array_with_label $t/input_mnist_label" outs=$t/output_with_label ;;
    d) g=$d/globals ins="$d/input_mnist_array $d/input_mnist_label" outs=$d/output ;;
    u) g=$d/globals ins="$d/input_mnist_array" outs=$d/output ;;
    m) g=$t/globals ins="$t/input_mnist_array" outs=$d/output ;;
    c) g=$d/globals ins="$d/input_mnist_array" outs=$t/output ;;
    *) echo "kind must be a, b, d, u, m or c, not '$kind'" >&2; exit 2 ;;
  esac
  for f in $g $ins $outs; do
    # diffusion_guidance_scale is this project's own key (classifier-free guidance): EIR has none
    sed -e "s#data/digits[0-9]*/mnist_npy#$data/mnist_npy#" -e "s#data/digits[0-9]*/mnist_labels.csv#$data/mnist_labels.csv#" \
      -e "/^ *diffusion_guidance_scale:/d" "$root/examples/$f.yaml" > "$out/$(basename "$f").yaml"
  done
  if [ -n "$cutoff" ]; then
    f=$out/$(basename "$outs").yaml
    sed -i "s/^    channel_exp_base: 4\$/    channel_exp_base: 4\n    cutoff: $cutoff/" "$f"
    grep -q "cutoff: $cutoff" "$f" || { echo "could not add cutoff to $f" >&2; exit 1; }
  fi
  echo "--input_configs" $(for f in $ins; do echo "$out/$(basename "$f").yaml"; done) \
       "--output_configs $out/$(basename "$outs").yaml" > "$out/args"
}

case "${1:-}" in
install)
  py313=$(ls -d "$HOME"/.pyenv/versions/3.13*/bin/python3 2>/dev/null | head -1 || true)
  py313=${EIR_PYTHON:-$py313}
  [ -n "$py313" ] || { echo "no Python 3.13 under ~/.pyenv/versions (or set EIR_PYTHON)" >&2; exit 1; }
  mkdir -p "$dir"
  [ -x "$venv/bin/python" ] || "$py313" -m venv "$venv"
  "$venv/bin/pip" install -q eir-dl==0.25.0
  "$venv/bin/python" -c 'import importlib.metadata as m; print("EIR", m.version("eir-dl"), "installed in '"$venv"'")' ;;
data)
  [ $# -ge 2 ] || usage
  size=$2 count=${3:-} flat=${4:-}
  [ -z "$flat" ] || [ "$flat" = flat ] || usage
  out=$dir/data/d${size}${count:+_$count}${flat:+_flat}
  if [ -d "$out/mnist_npy" ]; then echo "$out"; exit 0; fi
  rm -rf "$out.tmp"
  "$(eir_data)" digits --size "$size" ${count:+--count "$count"} ${flat:+--flat} --output-folder "$out.tmp" >&2
  mv "$out.tmp" "$out" && echo "$out" ;;
configs)
  [ $# -ge 4 ] || usage
  write_configs "$(cd "$2" && pwd)" "$3" "$4" "${5:-}" ;;
train)
  [ $# -ge 4 ] || usage
  need_venv
  name=$2 data=$(cd "$3" && pwd) kind=$4; shift 4
  cutoff=""
  if [ $# -gt 0 ] && [ "$1" != "--" ]; then cutoff=$1; shift; fi
  [ "${1:-}" = "--" ] && shift
  mkdir -p "$dir/runs"
  conf=$dir/runs/$name.conf
  write_configs "$data" "$conf" "$kind" "$cutoff"
  rm -rf "$dir/runs/$name"
  # shellcheck disable=SC2046
  "$venv/bin/eirtrain" --global_configs "$conf/globals.yaml" $(cat "$conf/args") \
    --globals.basic_experiment.output_folder="$dir/runs/$name" "$@" > "$dir/runs/$name.log" 2>&1 \
    || { tail -20 "$dir/runs/$name.log" >&2; exit 1; }
  echo "$dir/runs/$name" ;;
version)
  need_venv
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("eir-dl"))' ;;
model)
  [ $# -ge 2 ] || usage
  cat "$dir/runs/$2/model_architecture/model_info.txt" ;;
structure)
  [ $# -ge 3 ] || usage
  need_venv
  data=$(cd "$2" && pwd) kind=$3; shift 3
  cutoff=""
  if [ $# -gt 0 ] && [ "$1" != "--" ]; then cutoff=$1; shift; fi
  [ "${1:-}" = "--" ] && shift
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/eir-structure.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  write_configs "$data" "$tmp/conf" "$kind" "$cutoff"
  # shellcheck disable=SC2046
  "$venv/bin/python" "$here/eir_structure.py" --global_configs "$tmp/conf/globals.yaml" $(cat "$tmp/conf/args") \
    --globals.basic_experiment.output_folder="$tmp/run" "$@" 2> "$tmp/log" || { tail -20 "$tmp/log" >&2; exit 1; }
  ;;
*) usage ;;
esac
