"""Plots images/s against batch size for each implementation from benchmark JSON lines.

Reads the lines printed by train_step.py / torch_reference.py / compare.sh (files or stdin).
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


def series(records: Sequence[dict]) -> dict[str, list[tuple[int, float]]]:
  """Label -> sorted (batch size, images/s); repeated points are averaged."""
  groups: dict[str, dict[int, list[float]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for r in records:
    impl = r.get("impl", "jax")
    label = (f"{impl} {r.get('method', '?')} {r.get('teacher', '?')}->{r.get('student', '?')}"
             f" {r.get('dtype', 'float32')}")
    groups[label][int(r["batch_size"])].append(float(r["images_per_sec"]))
  return {label: sorted((b, sum(v) / len(v)) for b, v in pts.items())
          for label, pts in sorted(groups.items())}


def plot(records: Sequence[dict], out: str, title: str = "") -> None:
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  for label, pts in series(records).items():
    xs, ys = zip(*pts)
    style = "--" if label.startswith("torch") else "-"
    ax.plot(xs, ys, style, marker="o", label=label)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("batch size")
  ax.set_ylabel("training images / s")
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
  plot(records, args.out, args.title)
  print(json.dumps({"plot": args.out, "records": len(records)}))


if __name__ == "__main__":
  main()
