"""Baseline: the naive PyTorch broadcast form of the RKKD loss over full [B, C, C] tensors.

Prints one JSON object as the last line; the inputs match benchmarks/rank_kendall.py exactly.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import numpy as np
import torch
from machine import cpu_model  # pylint: disable=wrong-import-position


def make_logits(batch: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Same generator, seed and scale as rank_kendall.make_logits (kept separate: no jax import)."""
  rng = np.random.default_rng(seed)
  student = (2.0 * rng.standard_normal((batch, classes))).astype(np.float32)
  teacher = (2.0 * rng.standard_normal((batch, classes))).astype(np.float32)
  return student, teacher


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steepness", type=float, default=100.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  student, teacher = make_logits(args.batch_size, args.num_classes, args.seed)
  s = torch.from_numpy(student).requires_grad_()
  t = torch.from_numpy(teacher)
  k = args.steepness
  b, c = s.shape

  def step():
    ds = s[:, :, None] - s[:, None, :]
    dt = t[:, :, None] - t[:, None, :]
    tau = (torch.tanh(k * ds) * torch.tanh(k * dt)).sum() / (b * c * (c - 1))
    loss = 1.0 - tau  # mean over the batch of 1 - tau_i
    s.grad = None
    loss.backward()
    return loss.detach()

  t0 = time.perf_counter()
  step()
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    loss = step()
    times.append((time.perf_counter() - t0) * 1e3)
  result = {
      "impl": "torch naive broadcast [B,C,C] + backward",
      "B": b,
      "C": c,
      "steepness": k,
      "form": "tanh",
      "fwd_bwd_ms": round(statistics.median(times), 2),
      "fwd_bwd_ms_min": round(min(times), 2),
      "first_call_s": round(first_s, 2),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "device": f"cpu: {cpu_model()}",
      "nproc": os.cpu_count(),
      "torch_threads": torch.get_num_threads(),
      "repeats": args.repeats,
      "loss": float(loss),
      "grad_abs_sum": float(s.grad.abs().sum()),
      "torch": torch.__version__,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
