#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one call, on a bare machine with no network.
#
# Usage: bash benchmarks/gpu.sh --out DIR [--dry-run] [--wheels DIR] [--budget-s S]
#   --out DIR     where the JSON lines go: DIR/results.jsonl (every result line), DIR/steps.jsonl
#                 (one line per step: name, exit code, seconds, timed out or skipped),
#                 DIR/summary.jsonl (kd_jax over PyTorch eager and torch.compile, per batch),
#                 DIR/logs/NAME.log (each step's stdout and stderr)
#   --dry-run     tiny sizes on CPU, no installs: checks that every step still runs
#   --wheels DIR  wheels installed first for what the machine lacks (default benchmarks/wheels;
#                 benchmarks/README.md says how to download them)
#   --budget-s S  wall-clock budget of the whole script (default 450); a step gets at most its
#                 own timeout and what is left of the budget, and is skipped when under 20 s is left
# Environment: PYTHON (default python3).
#
# Steps, in order of value: install, environment, the smoke config through launch.py (a
# correctness check: it must exit 0 and learn), the KD step at batch 64 (kd_jax online, PyTorch
# eager, PyTorch torch.compile channels-last, kd_jax with the teacher table), a whole
# CIFAR-100-sized epoch with eval (benchmarks/epoch.py), the ranking loss at ImageNet size,
# kd_jax bfloat16 against PyTorch bfloat16 autocast at batch 64, a 25-run sweep step with the
# table, and the KD step at batch 512. A dry run uses one batch size (8) and 2 runs.
# A step that fails or times out is recorded and the next one runs; the exit code is 1 when any
# step failed, else 0.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
PYTHON="${PYTHON:-python3}"
out=""
dry=0
wheels="$here/wheels"
budget=450

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --wheels) wheels="$2"; shift 2 ;;
    --budget-s) budget="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$out" ]]; then echo "gpu.sh: --out DIR is required (see --help)" >&2; exit 2; fi
if ! [[ "$budget" =~ ^[1-9][0-9]*$ ]]; then
  echo "gpu.sh: --budget-s must be a whole number of seconds >= 1, got '$budget'" >&2; exit 2
fi
mkdir -p "$out/logs" || { echo "gpu.sh: cannot create --out $out" >&2; exit 2; }
out="$(cd "$out" && pwd)"
: > "$out/results.jsonl"; : > "$out/steps.jsonl"; : > "$out/summary.jsonl"
cd "$repo"
export TF_CPP_MIN_LOG_LEVEL=3

start=$SECONDS
failed=0

# step NAME TIMEOUT_S CMD...: runs CMD under `timeout`, appends its JSON result lines (stdout
# lines that parse as JSON objects) to results.jsonl, tagged with the step's name.
step() {
  local name="$1" limit="$2"; shift 2
  local left=$((budget - (SECONDS - start)))
  if ((left < 20)); then
    printf '{"kind": "step", "step": "%s", "skipped": true, "reason": "budget spent"}\n' \
      "$name" >> "$out/steps.jsonl"
    echo "gpu.sh: $name skipped (budget spent)" >&2
    failed=1
    return
  fi
  ((limit > left)) && limit=$left
  echo "gpu.sh: $name (timeout ${limit}s)" >&2
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" > "$out/logs/$name.out" 2> "$out/logs/$name.log" || rc=$?
  local secs=$((SECONDS - t0))
  "$PYTHON" - "$name" "$out/logs/$name.out" "$out/results.jsonl" <<'EOF'
import json, sys
name, src, dst = sys.argv[1:]
with open(src) as f, open(dst, "a") as g:
  for line in f:
    line = line.strip()
    if line.startswith("{"):
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(rec, dict):
        g.write(json.dumps({"step": name, **rec}) + "\n")
EOF
  local timed_out=false
  ((rc == 124 || rc == 137)) && timed_out=true
  printf '{"kind": "step", "step": "%s", "rc": %d, "seconds": %d, "timed_out": %s}\n' \
    "$name" "$rc" "$secs" "$timed_out" >> "$out/steps.jsonl"
  if ((rc != 0)); then
    failed=1
    echo "gpu.sh: $name failed (exit $rc; see $out/logs/$name.log)" >&2
  fi
}

if ((dry)); then
  # Tiny sizes on the CPU; every step and every command line of the full run, nothing installed.
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  pair=(--teacher resnet8 --student resnet8)
  first_batch=8; more_batches=""; steps=2; repeats=1; warmup=1; spd=2; runs=2
  jax_size=(--num-examples 64); torch_size=(--threads 1); backend=eager
  epoch_size=(--batch-size 16 --eval-batch-size 16 --epochs 2 --train-examples 96
              --eval-examples 32 --steps-per-dispatch 2)
  rank_size=(--batch-size 8 --num-classes 32 --repeats 2)
  smoke=(--config.num_train_steps=4 --config.train_examples=64 --config.eval_examples=32
         --config.batch_size=8 --config.eval_batch_size=32 --config.steps_per_dispatch=2
         --config.log_every_steps=2 --config.checkpoint_every_steps=4)
  smoke_min_top1=0
  limit_small=300; limit_step=300; limit_compile=300; limit_epoch=300
else
  pair=(--teacher resnet32x4 --student resnet8x4)
  first_batch=64; more_batches=512; steps=50; repeats=3; warmup=10; spd=10; runs=25
  jax_size=(--num-examples 50000); torch_size=(); backend=inductor
  epoch_size=(--batch-size 64 --eval-batch-size 256 --epochs 3 --steps-per-dispatch 11)
  rank_size=(--repeats 10)
  smoke=()
  # The smoke config ends near 9% top-1 on CPU (chance: 1%); a broken GPU path stays at chance.
  smoke_min_top1=0.03
  limit_small=120; limit_step=90; limit_compile=150; limit_epoch=150

  # ml_collections (configs, launch.py) is needed; tensorflow-datasets only for real datasets
  # (every step here is synthetic), so it is installed only if its wheels were brought along.
  step install 90 env PYTHON="$PYTHON" WHEELS="$wheels" bash -c '
    missing=()
    "$PYTHON" -c "import ml_collections" 2>/dev/null || missing+=(ml-collections)
    "$PYTHON" -c "import absl" 2>/dev/null || missing+=(absl-py)
    if ! "$PYTHON" -c "import tensorflow_datasets" 2>/dev/null \
        && ls "$WHEELS"/tensorflow_datasets-*.whl > /dev/null 2>&1; then
      missing+=(tensorflow-datasets)
    fi
    if ((${#missing[@]} == 0)); then echo "{\"kind\": \"install\", \"installed\": \"\"}"; exit 0; fi
    if [[ ! -d "$WHEELS" ]]; then
      echo "gpu.sh: missing ${missing[*]} and no wheel folder $WHEELS (benchmarks/README.md)" >&2
      exit 1
    fi
    "$PYTHON" -m pip install --no-index --find-links "$WHEELS" "${missing[@]}" >&2 || exit 1
    printf "{\"kind\": \"install\", \"installed\": \"%s\"}\n" "${missing[*]}"'
fi

step environment "$limit_small" "$PYTHON" -c '
import json, os, platform, subprocess
rec = {"kind": "environment", "python": platform.python_version(), "nproc": os.cpu_count()}
try:
  import jax
  rec.update(jax=jax.__version__, jax_devices=[f"{d.platform}:{d.device_kind}" for d in jax.devices()])
except Exception as e:  # pylint: disable=broad-except
  rec["jax_error"] = str(e).splitlines()[0]
try:
  import torch
  rec.update(torch=torch.__version__, torch_cuda=torch.cuda.is_available())
  if torch.cuda.is_available():
    rec["torch_device"] = torch.cuda.get_device_name(0)
except Exception as e:  # pylint: disable=broad-except
  rec["torch_error"] = str(e).splitlines()[0]
try:
  rec["nvidia_smi"] = subprocess.run(
      ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
      capture_output=True, text=True, timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError):
  pass
print(json.dumps(rec))'

smoke_dir="$out/smoke_workdir"
rm -rf "$smoke_dir"
step smoke "$limit_small" bash -c '
  "$0" launch.py --config=configs/smoke.py --workdir="$1" "${@:3}" >&2 || exit $?
  "$0" - "$1" "$2" <<EOF
import json, math, sys
workdir, min_top1 = sys.argv[1], float(sys.argv[2])
with open(workdir + "/metrics.jsonl") as f:
  records = [json.loads(line) for line in f if line.strip()]
evals = [r for r in records if "eval/top1" in r]
losses = [r["train/loss"] for r in records if "train/loss" in r]
ok = bool(evals) and bool(losses) and all(math.isfinite(v) for v in losses)
top1 = evals[-1]["eval/top1"] if evals else None
ok = ok and top1 is not None and top1 >= min_top1
print(json.dumps({"kind": "smoke", "ok": ok, "final_eval_top1": top1, "min_top1": min_top1,
                  "final_train_loss": losses[-1] if losses else None,
                  "steps": records[-1].get("step") if records else None}))
sys.exit(0 if ok else 1)
EOF' "$PYTHON" "$smoke_dir" "$smoke_min_top1" "${smoke[@]}"

common=(--method kd --steps "$steps" --repeats "$repeats" --warmup "$warmup")
# kd_steps BATCH: kd_jax online, PyTorch eager, PyTorch torch.compile channels-last, kd_jax
# with the teacher table.
kd_steps() {
  local bs="$1"
  step "jax_online_b$bs" "$limit_step" "$PYTHON" benchmarks/train_step.py "${pair[@]}" \
    "${common[@]}" --batch-size "$bs" --steps-per-dispatch "$spd" "${jax_size[@]}"
  step "torch_eager_b$bs" "$limit_step" "$PYTHON" benchmarks/torch_reference.py "${pair[@]}" \
    "${common[@]}" --batch-size "$bs" "${torch_size[@]}"
  step "torch_compile_cl_b$bs" "$limit_compile" "$PYTHON" benchmarks/torch_reference.py \
    "${pair[@]}" "${common[@]}" --batch-size "$bs" --compile --compile-backend "$backend" \
    --channels-last "${torch_size[@]}"
  step "jax_table_b$bs" "$limit_step" "$PYTHON" benchmarks/train_step.py "${pair[@]}" \
    "${common[@]}" --batch-size "$bs" --steps-per-dispatch "$spd" --teacher-cache \
    --num-examples "$bs"
}
kd_steps "$first_batch"
step epoch "$limit_epoch" "$PYTHON" benchmarks/epoch.py "${pair[@]}" --method kd "${epoch_size[@]}"
step rank_kendall "$limit_small" "$PYTHON" benchmarks/rank_kendall.py "${rank_size[@]}"
step "jax_online_bf16_b$first_batch" "$limit_step" "$PYTHON" benchmarks/train_step.py \
  "${pair[@]}" "${common[@]}" --batch-size "$first_batch" --steps-per-dispatch "$spd" \
  --dtype bfloat16 "${jax_size[@]}"
step "torch_eager_bf16_b$first_batch" "$limit_step" "$PYTHON" benchmarks/torch_reference.py \
  "${pair[@]}" "${common[@]}" --batch-size "$first_batch" --dtype bfloat16 "${torch_size[@]}"
step "jax_table_runs${runs}_b$first_batch" "$limit_step" "$PYTHON" benchmarks/train_step.py \
  "${pair[@]}" "${common[@]}" --batch-size "$first_batch" --steps-per-dispatch "$spd" \
  --teacher-cache --num-examples "$first_batch" --runs "$runs"
for bs in $more_batches; do kd_steps "$bs"; done

# kd_jax over each PyTorch mode, per batch size and dtype (single-run steps only).
"$PYTHON" - "$out/results.jsonl" "$out/summary.jsonl" <<'EOF' || failed=1
import json, sys
sys.path.insert(0, "benchmarks")
import summarize_compare
src, dst = sys.argv[1:]
with open(src) as f:
  recs = [json.loads(line) for line in f if line.strip()]
groups = {}
for r in recs:
  if r.get("impl") and r.get("runs", 1) == 1 and "batch_size" in r:
    groups.setdefault((r["batch_size"], r["dtype"]), []).append(r)
with open(dst, "w") as g:
  for key in sorted(groups):
    g.write(json.dumps(summarize_compare.summarize(groups[key])) + "\n")
EOF
printf '{"kind": "gpu_sh", "dry_run": %s, "seconds": %d, "failed": %s}\n' \
  "$([[ $dry == 1 ]] && echo true || echo false)" "$((SECONDS - start))" \
  "$([[ $failed == 1 ]] && echo true || echo false)" >> "$out/steps.jsonl"
echo "gpu.sh: done in $((SECONDS - start)) s; results in $out" >&2
exit "$failed"
