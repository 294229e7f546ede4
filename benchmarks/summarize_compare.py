"""Reads the JSON lines of one compare.sh method/pair/batch (all rounds) on stdin; prints the ratio.

Each mode's figure is the median images/s over the rounds: kd_jax online (`impl` jax, no
teacher table), kd_jax with the table, PyTorch eager and torch.compile (each also channels-last,
suffix _cl). The best PyTorch mode is the fastest of their medians; `*_over_best_torch` divide
by it. `round_ratios` are
kd_jax online over the best PyTorch figure of the same round (the runs nearest in time).
"""
from __future__ import annotations

import json
import statistics
import sys
from typing import Iterable, Optional


TORCH_MODES = ("torch_eager", "torch_compile", "torch_eager_cl", "torch_compile_cl")


def mode(rec: dict) -> str:
  """jax_online, jax_table, or one of TORCH_MODES."""
  if rec["impl"] == "jax":
    return "jax_table" if rec.get("teacher_cache") else "jax_online"
  return rec["impl"] + ("_cl" if rec.get("channels_last") else "")


def summarize(records: Iterable[dict]) -> dict:
  """The ratio record of one pair and batch size (see the module docstring)."""
  records = list(records)
  by_mode: dict[str, list[float]] = {}
  rounds: list[dict[str, float]] = []
  for rec in records:
    m = mode(rec)
    if not rounds or m in rounds[-1]:  # a mode seen again starts the next round
      rounds.append({})
    rounds[-1][m] = rec["images_per_sec"]
    by_mode.setdefault(m, []).append(rec["images_per_sec"])
  med = {m: statistics.median(v) for m, v in by_mode.items()}
  torch_modes = [m for m in TORCH_MODES if m in med]
  best: Optional[str] = max(torch_modes, key=lambda m: med[m]) if torch_modes else None
  first = records[0]
  jax_rec = next((r for r in records if r["impl"] == "jax"), first)
  torch_rec = next((r for r in records if r["impl"] != "jax"), first)
  out = {"kind": "ratio", "method": first.get("method", "kd"),
         "teacher": first["teacher"], "student": first["student"],
         "batch_size": first["batch_size"], "dtype": jax_rec["dtype"],
         "rounds": len(rounds), "runs": jax_rec.get("runs", 1)}
  for m, v in med.items():
    out[f"{m}_images_per_sec"] = v
  # The keys of the eager-only comparison, kept: online (or table) kd_jax over eager PyTorch.
  jax_key = "jax_online" if "jax_online" in med else "jax_table"
  if jax_key in med:
    out["jax_images_per_sec"] = med[jax_key]
  if "torch_eager" in med:
    out["torch_images_per_sec"] = med["torch_eager"]
    if jax_key in med:
      out["jax_over_torch"] = med[jax_key] / med["torch_eager"]
  if best is not None:
    out["best_torch_mode"] = best
    out["best_torch_images_per_sec"] = med[best]
    for m in ("jax_online", "jax_table"):
      if m in med:
        out[f"{m}_over_best_torch"] = med[m] / med[best]
    out["round_ratios"] = [r["jax_online"] / max(r[t] for t in torch_modes if t in r)
                           for r in rounds
                           if "jax_online" in r and any(t in r for t in torch_modes)]
  out["jax_device"] = jax_rec.get("device")
  out["torch_device"] = torch_rec.get("device")
  return out


def main() -> None:
  records = [json.loads(line) for line in sys.stdin if line.strip().startswith("{")]
  if not records:
    sys.exit("summarize_compare.py: no JSON records on stdin")
  print(json.dumps(summarize(records)), flush=True)


if __name__ == "__main__":
  main()
