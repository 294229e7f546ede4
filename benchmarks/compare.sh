#!/usr/bin/env bash
# Runs the JAX train step and the PyTorch-eager reference back to back on this machine.
# Prints JSON lines: each implementation's result, then {"kind": "ratio", ...} per pair/batch.
#
# Usage: benchmarks/compare.sh [--pairs "T,S T,S"] [--batch-sizes "64 128"] [--steps N]
#          [--repeats R] [--warmup W] [--threads N] [--dtype float32|bfloat16]
#          [--steps-per-dispatch K] [--num-examples N]
# Environment: PYTHON (default: the repository's .venv/bin/python if present, else python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi

pairs="resnet32x4,resnet8x4 wrn_40_2,wrn_16_2"
batch_sizes="64"
steps=10
repeats=1
warmup=2
threads=0
dtype=float32
spd=1
num_examples=50000

while [[ $# -gt 0 ]]; do
  case "$1" in
    --pairs) pairs="$2"; shift 2 ;;
    --batch-sizes) batch_sizes="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --steps-per-dispatch) spd="$2"; shift 2 ;;
    --num-examples) num_examples="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Last line of a command's stdout that parses as a JSON object (the benchmark result).
last_json() {
  "$PYTHON" -c '
import json, sys
rec = None
for line in sys.stdin:
  line = line.strip()
  if line.startswith("{"):
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      pass
if rec is None:
  sys.exit("compare.sh: no JSON result line")
print(json.dumps(rec))'
}

cd "$repo"
for pair in $pairs; do
  teacher="${pair%%,*}"
  student="${pair##*,}"
  for bs in $batch_sizes; do
    echo "compare.sh: $teacher -> $student, batch $bs" >&2
    jax_line="$("$PYTHON" benchmarks/train_step.py --teacher "$teacher" --student "$student" \
      --method kd --batch-size "$bs" --steps "$steps" --repeats "$repeats" --warmup "$warmup" \
      --dtype "$dtype" --steps-per-dispatch "$spd" --num-examples "$num_examples" | last_json)"
    echo "$jax_line"
    torch_line="$("$PYTHON" benchmarks/torch_reference.py --teacher "$teacher" \
      --student "$student" --method kd --batch-size "$bs" --steps "$steps" \
      --repeats "$repeats" --warmup "$warmup" --threads "$threads" | last_json)"
    echo "$torch_line"
    "$PYTHON" -c '
import json, sys
j, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"kind": "ratio", "teacher": j["teacher"], "student": j["student"],
                  "batch_size": j["batch_size"], "dtype": j["dtype"],
                  "jax_images_per_sec": j["images_per_sec"],
                  "torch_images_per_sec": t["images_per_sec"],
                  "jax_over_torch": j["images_per_sec"] / t["images_per_sec"],
                  "jax_device": j["device"], "torch_device": t["device"]}))' \
      "$jax_line" "$torch_line"
  done
done
