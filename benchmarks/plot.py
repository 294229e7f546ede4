"""Plots images/s against batch size (or N runs) for each implementation from JSON lines.

Reads the lines printed by train_step.py / torch_reference.py / compare.sh (files or stdin).
`--x runs` plots total images/s (all runs) against the number of vmapped runs (--runs N), with
the per-run figure beside it and the N x (one run) line for reference.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def read_records(lines: Iterable[str]) -> list[dict]:
  """Benchmark records (JSON objects with 'images_per_sec' and 'batch_size'); skips the rest."""
  records = []
  for line in lines:
    line = line.strip()
    if not line.startswith("{"):
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(rec, dict) and "images_per_sec" in rec and "batch_size" in rec:
      records.append(rec)
  return records


def series(records: Sequence[dict], x: str = "batch_size") -> dict[str, list[tuple[int, float]]]:
  """Label -> sorted (x, images/s), x a record key; repeated points are averaged."""
  groups: dict[str, dict[int, list[float]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for r in records:
    impl = r.get("impl", "jax")
    label = (f"{impl} {r.get('method', '?')} {r.get('teacher', '?')}->{r.get('student', '?')}"
             f" {r.get('dtype', 'float32')}")
    if x == "runs":
      label += f" batch {r['batch_size']}" + (" table" if r.get("teacher_cache") else "")
    groups[label][int(r.get(x, 1))].append(float(r["images_per_sec"]))
  return {label: sorted((b, sum(v) / len(v)) for b, v in pts.items())
          for label, pts in sorted(groups.items())}


def plot(records: Sequence[dict], out: str, title: str = "", x: str = "batch_size") -> None:
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  for label, pts in series(records, x).items():
    xs, ys = zip(*pts)
    style = "--" if label.startswith("torch") else "-"
    ax.plot(xs, ys, style, marker="o", label=label)
    if x == "runs" and xs[0] == 1:  # perfect scaling from one run, for reference
      ax.plot(xs, [ys[0] * n for n in xs], ":", color="grey", label="N x one run")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("batch size" if x == "batch_size" else "runs N (vmapped in one step)")
  ax.set_ylabel("training images / s" + (" (all runs)" if x == "runs" else ""))
  ax.set_title(title or "KD train step throughput")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("inputs", nargs="*", help="JSON-lines files ('-' or none = stdin)")
  p.add_argument("--out", default="benchmarks/throughput.png")
  p.add_argument("--title", default="")
  p.add_argument("--x", default="batch_size", choices=["batch_size", "runs"],
                 help="the x axis: batch size, or N runs (train_step.py --runs N)")
  args = p.parse_args(argv)
  lines: list[str] = []
  for path in args.inputs or ["-"]:
    if path == "-":
      lines.extend(sys.stdin)
    else:
      with open(path) as f:
        lines.extend(f)
  records = read_records(lines)
  if not records:
    sys.exit("plot.py: no benchmark records (JSON lines with images_per_sec) in the input")
  plot(records, args.out, args.title, args.x)
  print(json.dumps({"plot": args.out, "records": len(records)}))


if __name__ == "__main__":
  main()
