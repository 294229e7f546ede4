"""Times whole CIFAR-sized training epochs, evaluation included, through the real run loop.

Runs `kd_jax.train.loop.train_and_evaluate` (what `launch.py` runs: checkpoints, metrics,
eval after every epoch) on the offline synthetic CIFAR-shaped dataset (50,000 train and
10,000 eval images by default) with a random teacher, then reads the epoch boundaries from
metrics.jsonl. Epoch 1 includes set-up and compilation; the later epochs are the steady-state
figure.
Prints one JSON line, e.g.

    python benchmarks/epoch.py --teacher resnet32x4 --student resnet8x4 --method kd \
      --batch-size 64 --epochs 3 --steps-per-dispatch 11
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from typing import Sequence

# Runnable as `python benchmarks/epoch.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # pylint: disable=wrong-import-position

from kd_jax.train import loop  # pylint: disable=wrong-import-position
from kd_jax.train import sweep  # pylint: disable=wrong-import-position


def build_config(args: argparse.Namespace):
  """train_step.method_config (synthetic data, random teacher) for `args.epochs` epochs."""
  config = train_step.method_config(args.method, args.teacher, args.student, args.dtype)
  config.batch_size = args.batch_size
  config.eval_batch_size = args.eval_batch_size
  config.steps_per_dispatch = args.steps_per_dispatch
  config.num_epochs = args.epochs
  config.train_examples = args.train_examples
  config.eval_examples = args.eval_examples
  config.num_devices = args.num_devices
  if args.runs > 1:
    config.sweep = "seed=" + ",".join(str(config.seed + r) for r in range(args.runs))
  return config


def epoch_seconds(records: list[dict]) -> list[float]:
  """Wall seconds of each epoch, eval included: differences of elapsed_s at the eval records."""
  marks = [r["elapsed_s"] for r in records if "eval/top1" in r]
  return [b - a for a, b in zip([0.0] + marks[:-1], marks)]


def run(args: argparse.Namespace) -> dict:
  config = build_config(args)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = args.workdir or os.path.join(tmp, "run")
    if args.teacher_cache and config.teacher:
      config.teacher_cache = (args.teacher_cache if args.teacher_cache != "tmp"
                              else os.path.join(tmp, "tables"))
    if config.sweep:
      result = sweep.train_sweep(config, workdir)[0]
      first_run = os.path.join(workdir, "runs", sweep.expand(config)[0][0])
    else:
      result = loop.train_and_evaluate(config, workdir)
      first_run = workdir
    with open(os.path.join(first_run, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
  seconds = epoch_seconds(records)
  if len(seconds) != args.epochs:
    raise RuntimeError(f"expected {args.epochs} eval records, found {len(seconds)}")
  steady = seconds[1:] or seconds
  train_images = (args.train_examples // args.batch_size) * args.batch_size
  dev = jax.devices()[0]
  return {
      "kind": "epoch", "method": args.method, "teacher": args.teacher, "student": args.student,
      "batch_size": args.batch_size, "dtype": args.dtype,
      "steps_per_dispatch": args.steps_per_dispatch, "train_images_per_epoch": train_images,
      "eval_images": args.eval_examples, "epochs": args.epochs,
      "epoch_s": seconds, "first_epoch_s": seconds[0],
      "steady_epoch_s": statistics.median(steady),
      "steady_train_images_per_sec": train_images / statistics.median(steady),
      "runs": args.runs,
      "steady_total_train_images_per_sec": args.runs * train_images / statistics.median(steady),
      "teacher_cache": bool(args.teacher_cache and config.teacher),
      "final_eval_top1": result.final.get("top1"),
      "device": f"{dev.platform}:{dev.device_kind} x{jax.device_count()}",
      "jax": jax.__version__,
  }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  train_step.add_run_args(p)
  p.add_argument("--eval-batch-size", type=int, default=64)
  p.add_argument("--epochs", type=int, default=3, help="epoch 1 includes set-up and compilation")
  p.add_argument("--train-examples", type=int, default=50000)
  p.add_argument("--eval-examples", type=int, default=10000)
  p.add_argument("--workdir", default="", help="keep the run here (default: a temp dir)")
  p.add_argument("--teacher-cache", default="",
                 help="DIR of teacher tables (config.teacher_cache; 'tmp' = a temp dir, so the "
                      "table's build falls in epoch 1)")
  p.add_argument("--runs", type=int, default=1,
                 help="N seeds in one program (config.sweep); epoch_s are of the whole sweep")
  args = p.parse_args(argv)
  for name in ("batch_size", "eval_batch_size", "epochs", "steps_per_dispatch",
               "train_examples", "eval_examples", "runs"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  return args


def main(argv: Sequence[str] | None = None) -> dict:
  result = run(parse_args(argv))
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
