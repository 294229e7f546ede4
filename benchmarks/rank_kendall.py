"""Benchmark: forward+backward of kd_jax.losses.rank_kendall (jit) at ImageNet size, with peak RSS.

Prints one JSON object as the last line; see benchmarks/README_rank_kendall.md for the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kd_jax.losses import rank_kendall  # noqa: E402
from machine import cpu_model  # pylint: disable=wrong-import-position


def make_logits(batch: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Student/teacher logits shared with torch_rank_kendall.py (same generator and seed)."""
  rng = np.random.default_rng(seed)
  student = (2.0 * rng.standard_normal((batch, classes))).astype(np.float32)
  teacher = (2.0 * rng.standard_normal((batch, classes))).astype(np.float32)
  return student, teacher


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steepness", type=float, default=100.0)
  parser.add_argument("--form", default="tanh")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  student, teacher = make_logits(args.batch_size, args.num_classes, args.seed)
  s, t = jnp.asarray(student), jnp.asarray(teacher)

  def loss(s, t):
    return jnp.mean(rank_kendall(s, t, steepness=args.steepness, form=args.form))

  step = jax.jit(jax.value_and_grad(loss))
  t0 = time.perf_counter()
  value, grad = step(s, t)
  jax.block_until_ready(grad)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    value, grad = step(s, t)
    jax.block_until_ready(grad)
    times.append((time.perf_counter() - t0) * 1e3)
  dev = jax.devices()[0]
  result = {
      "impl": "kd_jax.rank_kendall (jit, custom_jvp)",
      "B": args.batch_size,
      "C": args.num_classes,
      "steepness": args.steepness,
      "form": args.form,
      "fwd_bwd_ms": round(statistics.median(times), 2),
      "fwd_bwd_ms_min": round(min(times), 2),
      "first_call_s": round(compile_s, 2),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "device": f"{dev.platform}: {cpu_model() if dev.platform == 'cpu' else dev.device_kind}",
      "nproc": os.cpu_count(),
      "repeats": args.repeats,
      "loss": float(value),
      "grad_abs_sum": float(jnp.sum(jnp.abs(grad))),
      "jax": jax.__version__,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
