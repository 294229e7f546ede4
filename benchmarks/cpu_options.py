"""XLA:CPU compiler options against the train step's own, on the student's forward + backward.

The part of the online KD step where kd_jax trails PyTorch on CPU is the student's backward
(BENCHMARKS.md). This compiles the student's forward + KD loss + gradients once per variant
(kd_jax.train.step's `_CPU_COMPILER_OPTIONS` plus the variant's options), times the variants
interleaved over --rounds, and checks each against the current options' result (float32
results must not move beyond rounding). Prints one JSON line per variant.

    python benchmarks/cpu_options.py --student resnet8x4 --batch-size 64 --rounds 4
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from kd_jax import models  # pylint: disable=wrong-import-position
from kd_jax.train import step as step_lib  # pylint: disable=wrong-import-position
from machine import kd_loss_jax  # pylint: disable=wrong-import-position


def variants() -> dict[str, dict]:
  """Name -> options added to (or replacing) the train step's CPU options."""
  ynn = step_lib._CPU_COMPILER_OPTIONS["xla_cpu_experimental_ynn_fusion_type"]  # pylint: disable=protected-access
  return {
      "current": {},
      "vector_width_512": {"xla_cpu_prefer_vector_width": "512"},
      "onednn": {"xla_cpu_use_onednn": True},
      "onednn_custom_call": {"xla_cpu_use_onednn": True,
                             "xla_cpu_experimental_onednn_custom_call": True},
      "concurrency_scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": True},
      "xnnpack_off": {"xla_cpu_use_xnnpack": False},
      "ynn_convolutions": {"xla_cpu_experimental_ynn_fusion_type":
                           ynn + ",LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--student", default="resnet8x4")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
  args = p.parse_args()
  table = variants()
  names = [n for n in args.only.split(",") if n] or list(table)
  unknown = [n for n in names if n not in table]
  if unknown or args.rounds < 1 or args.batch_size < 1:
    p.error(f"--only: unknown {unknown}; accepted: {', '.join(table)} "
            "(--rounds, --batch-size >= 1)")
  if "current" not in names:
    names.insert(0, "current")
  student = models.create(args.student, 100)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((args.batch_size, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 100, args.batch_size), jnp.int32)
  tl = jnp.asarray(rng.standard_normal((args.batch_size, 100)), jnp.float32)
  v = student.init({"params": jax.random.PRNGKey(0)}, x[:1], train=False)

  def loss(params, stats, x, tl, y):
    logits, _ = student.apply({"params": params, "batch_stats": stats}, x, train=True,
                              mutable=["batch_stats"])
    return kd_loss_jax(logits, tl, y)
  fn = jax.jit(jax.value_and_grad(loss))
  call_args = (v["params"], v["batch_stats"], x, tl, y)
  compiled, refused = {}, {}
  for name in names:
    options = {**step_lib._CPU_COMPILER_OPTIONS, **table[name]}  # pylint: disable=protected-access
    try:
      compiled[name] = fn.lower(*call_args).compile(options)
    except Exception as e:  # pylint: disable=broad-except
      refused[name] = str(e).splitlines()[0][:200]
  ref = jax.device_get(compiled["current"](*call_args))
  times = {n: [] for n in compiled}
  for _ in range(args.rounds):
    for name, c in compiled.items():
      jax.block_until_ready(c(*call_args))
      t0 = time.perf_counter()
      jax.block_until_ready(c(*call_args))
      times[name].append(1000.0 * (time.perf_counter() - t0))
  for name in names:
    rec = {"kind": "cpu_options", "variant": name, "options": table[name],
           "student": args.student, "batch_size": args.batch_size}
    if name in refused:
      rec["refused"] = refused[name]
    else:
      out = jax.device_get(compiled[name](*call_args))
      rec.update(median_ms=statistics.median(times[name]), ms=times[name],
                 over_current=statistics.median(times[name]) / statistics.median(times["current"]),
                 max_abs_diff_vs_current=max(float(np.max(np.abs(a - b))) for a, b in zip(
                     jax.tree.leaves(out), jax.tree.leaves(ref))))
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  main()
