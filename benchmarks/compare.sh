#!/usr/bin/env bash
# Runs the JAX train step and the PyTorch reference steps (eager and torch.compile) on this
# machine, interleaved: each round runs every mode once, one process each, so machine load
# falls on all of them alike. Prints JSON lines: every run's result, then per pair/batch
# {"kind": "ratio", ...} with the median images/s of each mode over the rounds, the best
# PyTorch mode, and kd_jax (online, and with the teacher table if asked) over both peers.
#
# Usage: benchmarks/compare.sh [--methods "kd ctkd mlkd dist"] [--pairs "T,S T,S"]
#          [--batch-sizes "64 128"] [--steps N]
#          [--repeats R] [--warmup W] [--threads N] [--dtype float32|bfloat16]
#          [--steps-per-dispatch K] [--num-examples N] [--rounds N]
#          [--jax-modes "online table"] [--torch-modes "eager compile_cl"]
#          [--compile-backend inductor|eager] [--runs N]
#   --jax-modes:   online = the teacher runs every step; table = the exact teacher-logit table
#   --torch-modes: eager, compile (torch.compile of the whole step); a _cl suffix (eager_cl,
#                  compile_cl) stores models and batches channels-last (NHWC)
#   --runs N: the kd_jax step of N vmapped runs (images/s counts all runs)
#   --methods: each method's step on both sides (PyTorch: the authors' way, MLKD's two views)
# Environment: PYTHON (default: the repository's .venv/bin/python if present, else python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi

methods="kd"
pairs="resnet32x4,resnet8x4 wrn_40_2,wrn_16_2"
batch_sizes="64"
steps=10
repeats=1
warmup=2
threads=0
dtype=float32
spd=1
num_examples=50000
rounds=1
jax_modes="online"
torch_modes="eager compile_cl"
compile_backend=inductor
runs=1

while [[ $# -gt 0 ]]; do
  case "$1" in
    --methods) methods="$2"; shift 2 ;;
    --pairs) pairs="$2"; shift 2 ;;
    --batch-sizes) batch_sizes="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --steps-per-dispatch) spd="$2"; shift 2 ;;
    --num-examples) num_examples="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --jax-modes) jax_modes="$2"; shift 2 ;;
    --torch-modes) torch_modes="$2"; shift 2 ;;
    --compile-backend) compile_backend="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for m in $methods; do
  case "$m" in kd|ctkd|mlkd|dist) ;; *)
    echo "compare.sh: --methods: unknown method '$m' (accepted: kd ctkd mlkd dist)" >&2; exit 2 ;;
  esac
done
for m in $jax_modes; do
  case "$m" in online|table) ;; *)
    echo "compare.sh: --jax-modes: unknown mode '$m' (accepted: online table)" >&2; exit 2 ;;
  esac
done
for m in $torch_modes; do
  case "$m" in eager|compile|eager_cl|compile_cl) ;; *)
    echo "compare.sh: --torch-modes: unknown mode '$m' (accepted: eager compile eager_cl" \
      "compile_cl)" >&2; exit 2 ;;
  esac
done
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
  echo "compare.sh: --rounds must be an integer >= 1, got '$rounds'" >&2; exit 2
fi

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

tables="$(mktemp -d)"
trap 'rm -rf "$tables"' EXIT
cd "$repo"
for method in $methods; do
  for pair in $pairs; do
    teacher="${pair%%,*}"
    student="${pair##*,}"
    for bs in $batch_sizes; do
      lines=()
      for ((round = 1; round <= rounds; round++)); do
        for m in $jax_modes; do
          echo "compare.sh: $method $teacher -> $student, batch $bs, round $round, kd_jax $m" >&2
          extra=()
          # One table build per pair and batch; later rounds load it (table_build_s: the load).
          if [[ "$m" == table ]]; then extra=(--teacher-cache --num-examples "$bs"
            --table-dir "$tables");
          else extra=(--num-examples "$num_examples"); fi
          line="$("$PYTHON" benchmarks/train_step.py --teacher "$teacher" --student "$student" \
            --method "$method" --batch-size "$bs" --steps "$steps" --repeats "$repeats" \
            --warmup "$warmup" --dtype "$dtype" --steps-per-dispatch "$spd" --runs "$runs" \
            "${extra[@]}" | last_json)"
          echo "$line"; lines+=("$line")
        done
        for m in $torch_modes; do
          echo "compare.sh: $method $teacher -> $student, batch $bs, round $round, PyTorch $m" >&2
          extra=()
          if [[ "$m" == compile* ]]; then extra=(--compile --compile-backend "$compile_backend"); fi
          if [[ "$m" == *_cl ]]; then extra+=(--channels-last); fi
          line="$("$PYTHON" benchmarks/torch_reference.py --teacher "$teacher" \
            --student "$student" --method "$method" --batch-size "$bs" --steps "$steps" \
            --repeats "$repeats" --warmup "$warmup" --threads "$threads" \
            "${extra[@]}" | last_json)"
          echo "$line"; lines+=("$line")
        done
      done
      printf '%s\n' "${lines[@]}" | "$PYTHON" "$here/summarize_compare.py"
    done
  done
done
