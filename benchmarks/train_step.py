"""Times the real jitted train step of any method on synthetic device-resident CIFAR-like data.

Builds the run with kd_jax/train/loop.py's own `build_trainer` (student, teacher, optimizer, the
method's views and loss parameters); prints one JSON line (images/s, step ms). With
--teacher-cache the step reads the exact teacher-logit tables (kd_jax/train/teacher_cache.py,
built by the loop's `teacher_tables`) of a small synthetic split (--num-examples, default 64)
instead of running the teacher on the views that have one; the tables' build is timed
separately (table_build_s). The step's cost does not depend on the
split's size: it gathers B rows whatever N is.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Sequence

# Runnable as `python benchmarks/train_step.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=wrong-import-position

from kd_jax import config as config_lib  # pylint: disable=wrong-import-position
from kd_jax import data as data_lib  # pylint: disable=wrong-import-position
from kd_jax import methods  # pylint: disable=wrong-import-position
from kd_jax import models  # pylint: disable=wrong-import-position
from kd_jax.train import loop  # pylint: disable=wrong-import-position
from kd_jax.train import state as state_lib  # pylint: disable=wrong-import-position
from kd_jax.train import step as step_lib  # pylint: disable=wrong-import-position
from kd_jax.train import sweep  # pylint: disable=wrong-import-position



def method_config(method: str, teacher: str, student: str, dtype: str) -> Any:
  """base_config + method_defaults (rkkd on base 'kd') on synthetic data, random teacher."""
  config = config_lib.base_config()
  config_lib.method_defaults(config, method, base_method="kd" if method == "rkkd" else method)
  config.dataset = "synthetic"
  config.num_classes = config_lib.NUM_CLASSES["synthetic"]
  config.student = student
  if methods.needs_teacher(config):
    config.teacher = teacher
    config.teacher_checkpoint = "random:0"
  config.dtype = config.teacher_dtype = dtype
  return config


def build_config(args: argparse.Namespace) -> Any:
  """The run config of `method_config`, sized for the timed steps."""
  config = method_config(args.method, args.teacher, args.student, args.dtype)
  config.batch_size = args.batch_size
  config.steps_per_dispatch = args.steps_per_dispatch
  config.num_train_steps = (args.warmup + args.steps) * args.repeats + args.steps_per_dispatch
  config.num_devices = args.num_devices
  return config


@dataclasses.dataclass
class Setup:
  """What loop.train_and_evaluate builds before its first step (minus checkpoints, eval)."""
  config: Any
  spec: step_lib.StepSpec
  state: state_lib.TrainState
  teacher_vars: Any
  data: tuple[jax.Array, jax.Array]
  num_devices: int
  table_build_s: float = 0.0      # --teacher-cache: seconds to build the table (not in the step)


def build(args: argparse.Namespace) -> Setup:
  """Config, mesh, a synthetic device-resident split, then loop.build_trainer's student,
  teacher, optimizer, state (with the method's loss parameters) and StepSpec, as a run."""
  config = build_config(args)
  mesh = loop.make_mesh(config)
  num_devices = mesh.devices.size
  config_lib.validate(config, model_names=models.names(), num_devices=num_devices)
  repl = NamedSharding(mesh, P())

  # Synthetic CIFAR-shaped split, device-resident and replicated like the in-memory pipeline.
  rng = np.random.default_rng(args.seed)
  n = max(args.num_examples or (64 if args.teacher_cache else 50000), config.batch_size)
  images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, config.num_classes, size=(n,), dtype=np.int32)
  data = (jax.device_put(images, repl), jax.device_put(labels, repl))
  trainer = loop.build_trainer(config, mesh, steps_per_epoch=n // config.batch_size,
                               total_steps=config.num_train_steps, in_memory=True,
                               mean=tuple(data_lib.CIFAR_MEAN), std=tuple(data_lib.CIFAR_STD))
  spec, teacher_vars = trainer.spec, trainer.teacher_vars
  if args.runs > 1:  # runs with seeds seed, seed+1, ... stacked as by --config.sweep
    state = sweep.stacked_states(trainer, [config.seed + r for r in range(args.runs)], repl)
  else:
    state = trainer.init_state()
  build_s = 0.0
  if args.teacher_cache and spec.teacher is not None:
    # The loop's own table build (one table per augmentation of the method's views with a
    # finite view set; MLKD's strong view runs the teacher online), reused from --table-dir.
    views = tuple(zip([v.name for v in spec.loss.views], data_lib.view_augments(
        config.augment, [v.augment for v in spec.loss.views], True)))
    with (contextlib.nullcontext(args.table_dir) if args.table_dir
          else tempfile.TemporaryDirectory(prefix="kd_jax_bench_table_")) as directory:
      config.teacher_cache = directory
      t0 = time.perf_counter()
      teacher_vars = loop.teacher_tables(config, spec, teacher_vars, (images, labels), views,
                                         mesh)
      build_s = time.perf_counter() - t0
    spec = dataclasses.replace(spec, teacher_table=True)
  return Setup(config, spec, state, teacher_vars, data, num_devices, build_s)


def run(args: argparse.Namespace) -> dict:
  """Compiles the real train fn (config.steps_per_dispatch steps per call) and times it."""
  setup = build(args)
  config, state, teacher_vars, data = setup.config, setup.state, setup.teacher_vars, setup.data
  k = config.steps_per_dispatch
  if args.runs > 1:
    hp = {"seed": np.arange(config.seed, config.seed + args.runs, dtype=np.int32)}
    sweep_fn = sweep.make_sweep_train_fn(setup.spec, config, config.num_train_steps, k)
    train_fn = lambda s, t, d: sweep_fn(s, hp, t, d)
  else:
    train_fn = step_lib.make_train_fn(setup.spec, k)

  jax.block_until_ready((state, teacher_vars, data))
  # compile_s: the first call, i.e. compilation plus one dispatch (as torch_reference.py).
  t0 = time.perf_counter()
  state = jax.block_until_ready(train_fn(state, teacher_vars, data))
  compile_s = time.perf_counter() - t0

  dispatches = max(1, math.ceil(args.steps / k))
  for _ in range(math.ceil(args.warmup / k)):
    state = train_fn(state, teacher_vars, data)
  jax.block_until_ready(state)
  windows = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    for _ in range(dispatches):
      state = train_fn(state, teacher_vars, data)
    jax.block_until_ready(state)
    windows.append(time.perf_counter() - t0)

  sums, count, skipped = jax.device_get((state.metric_sums, state.metric_count, state.skipped))
  sums = {n: np.sum(v) for n, v in sums.items()}
  count, skipped = np.sum(count), np.sum(skipped)
  steps = dispatches * k
  seconds = statistics.median(windows)
  dev = jax.devices()[0]
  return {
      "impl": "jax",
      "method": args.method, "teacher": config.teacher or None, "student": args.student,
      "batch_size": args.batch_size, "dtype": args.dtype, "steps": steps,
      "repeats": args.repeats, "steps_per_dispatch": k,
      "runs": args.runs,
      "images_per_sec": args.batch_size * steps / seconds * args.runs,
      "images_per_sec_per_run": args.batch_size * steps / seconds,
      "step_ms": 1000.0 * seconds / steps,  # one step of all runs
      "step_ms_runs": [1000.0 * w / steps for w in windows],
      "compile_s": compile_s,
      "final_loss": float(sums["loss"]) / max(int(count), 1),
      "skipped_steps": int(skipped),
      "teacher_cache": bool(args.teacher_cache and config.teacher),
      "table_build_s": setup.table_build_s,
      "num_examples": int(data[1].shape[0]),
      "device": f"{dev.platform}:{dev.device_kind} x{setup.num_devices}",
      "jax": jax.__version__,
  }


def add_run_args(p: argparse.ArgumentParser) -> None:
  """The arguments of `method_config` and the batch shape, shared with epoch.py."""
  p.add_argument("--teacher", default="resnet32x4")
  p.add_argument("--student", default="resnet8x4")
  p.add_argument("--method", default="kd",
                 choices=[m for m in methods.names() if m != "teacher"])
  p.add_argument("--batch-size", type=int, default=64, help="global batch")
  p.add_argument("--dtype", default="float32", choices=list(models.DTYPES))
  p.add_argument("--steps-per-dispatch", type=int, default=1,
                 help="steps per dispatch (config.steps_per_dispatch; one lax.scan on accelerators)")
  p.add_argument("--num-devices", type=int, default=0, help="0 = all local devices")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_run_args(p)
  p.add_argument("--steps", type=int, default=20,
                 help="timed steps per repeat (rounded up to whole dispatches)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  p.add_argument("--repeats", type=int, default=1,
                 help="timed windows of --steps steps; the median is reported")
  p.add_argument("--num-examples", type=int, default=0,
                 help="size of the synthetic device-resident training split (default: 50000, "
                      "or 64 with --teacher-cache)")
  p.add_argument("--teacher-cache", action="store_true",
                 help="the step reads a prebuilt exact teacher-logit table (its build is timed "
                      "separately) instead of running the teacher")
  p.add_argument("--table-dir", default="",
                 help="with --teacher-cache: the tables' directory (config.teacher_cache): a "
                      "table built there by an earlier run with the same teacher, data and "
                      "views is loaded (table_build_s is then the load), else built there")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--runs", type=int, default=1,
                 help="N runs (seeds seed..seed+N-1) vmapped in one step, as --config.sweep; "
                      "images_per_sec counts all runs, images_per_sec_per_run one")
  args = p.parse_args(argv)
  for name in ("batch_size", "steps", "steps_per_dispatch", "repeats", "runs"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  if args.num_examples < 0:
    p.error("--num-examples must be >= 1 (or 0 for the default)")
  if args.warmup < 0:
    p.error("--warmup must be >= 0")
  return args


def main(argv: Sequence[str] | None = None) -> dict:
  result = run(parse_args(argv))
  if result["skipped_steps"] or not math.isfinite(result["final_loss"]):
    print(f"warning: {result['skipped_steps']} non-finite steps were skipped", file=sys.stderr)
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
