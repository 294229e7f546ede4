"""Run reports: `python -m kd_jax.report WORKDIR [WORKDIR ...] [--out DIR]`.

Reads kd_jax workdirs (config.json, metrics.jsonl) and writes report.md, summary.json and plots.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import statistics
import sys
from typing import Any, Iterable, Optional, Sequence

from kd_jax import published as published_lib

TRAIN, EVAL, TEACHER = "train", "eval", "teacher"
KINDS = (TRAIN, EVAL, TEACHER)
PLOTS = ("eval_top1.png", "train_loss.png", "loss_terms.png")
# train/* keys that are not loss terms.
_NOT_TERMS = ("train/top1", "train/top5", "train/loss")

_log = logging.getLogger(__name__)


class ReportError(ValueError):
  """A workdir that cannot be read; the message names the path."""


@dataclasses.dataclass
class Run:
  """One workdir: its config and its metric lines, deduplicated and in step order."""
  workdir: str
  config: dict[str, Any]
  train: list[dict[str, Any]]
  evals: list[dict[str, Any]]
  teacher_eval: Optional[dict[str, Any]] = None
  warnings: list[str] = dataclasses.field(default_factory=list)

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))

  @property
  def loss(self) -> dict[str, Any]:
    return dict(self.config.get("loss") or {})

  @property
  def method(self) -> str:
    """Published-table method name: 'kd', 'dkd+ls', 'rkkd(dkd)', 'teacher', ..."""
    c = self.config
    base = c.get("base_method") or c.get("method", "")
    return published_lib.method_key(c.get("method", ""), base,
                                    bool(self.loss.get("standardize", False)),
                                    self.loss.get("ctkd_base", ""))

  @property
  def setting(self) -> tuple:
    """Runs with equal settings differ only by seed (and are averaged)."""
    c = self.config
    return (c.get("dataset", ""), c.get("teacher") or "", c.get("student", ""), self.method,
            c.get("base_method") or c.get("method", ""), c.get("num_epochs"),
            c.get("num_train_steps", -1), json.dumps(self.loss, sort_keys=True))


# ---------------------------------------------------------------------------------------
# Reading workdirs.


def _kind(record: dict[str, Any]) -> Optional[str]:
  for kind in (EVAL, TRAIN, TEACHER):
    if any(k.startswith(kind + "/") for k in record):
      return kind
  return None


def _number(value: Any) -> Any:
  """Non-finite floats are written as strings ('nan', 'inf'); reads them back as floats."""
  if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf"):
    return float(value)
  return value


def _parse_line(line: str) -> tuple[Optional[dict[str, Any]], bool]:
  """(record, recovered): a line cut by a kill may have the next record glued to its end."""
  try:
    record = json.loads(line)
    return (record if isinstance(record, dict) else None), False
  except json.JSONDecodeError:
    pass
  start = line.find("{", 1)
  while start != -1:
    try:
      record = json.loads(line[start:])
      if isinstance(record, dict):
        return record, True
    except json.JSONDecodeError:
      pass
    start = line.find("{", start + 1)
  return None, False


def read_metrics(path: str) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
  """Metric lines by kind, in step order, and warnings for the lines that were skipped.

  For a repeated (kind, step) the later line wins. A step at or before the latest one of its
  kind marks a resume from that step: lines of every kind logged after it are dropped, as
  they belong to work the resumed run redoes.
  """
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.read().split("\n")
  last = max((i for i, l in enumerate(lines) if l.strip()), default=-1)
  by_kind: dict[str, dict[float, dict[str, Any]]] = {k: {} for k in KINDS}
  latest: dict[str, float] = {}
  warnings = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    record, recovered = _parse_line(line)
    where = f"{path}:{i + 1}"
    if record is None:
      what = "truncated last line" if i == last else "unparsable line"
      warnings.append(f"{where}: skipped {what}")
      continue
    if recovered:
      warnings.append(f"{where}: skipped the cut start of the line, kept the record after it")
    kind = _kind(record)
    step = record.get("step")
    if kind is None:
      continue
    if not isinstance(step, (int, float)) or isinstance(step, bool):
      warnings.append(f"{where}: skipped a {kind} line without a numeric 'step'")
      continue
    record = {k: _number(v) for k, v in record.items()}
    if kind in latest and step <= latest[kind]:
      for k, other in by_kind.items():
        for s in [s for s in other if s > step]:
          del other[s]
        if k in latest:
          latest[k] = max(other, default=-math.inf)
    by_kind[kind][step] = record
    latest[kind] = max(step, latest.get(kind, -math.inf))
  for w in warnings:
    _log.warning(w)
  return {k: [v[s] for s in sorted(v)] for k, v in by_kind.items()}, warnings


def load_run(workdir: str) -> Run:
  """Reads WORKDIR/config.json and WORKDIR/metrics.jsonl; ReportError names a missing file."""
  if not os.path.isdir(workdir):
    raise ReportError(f"{workdir}: not a directory")
  files = {}
  for name in ("config.json", "metrics.jsonl"):
    files[name] = os.path.join(workdir, name)
    if not os.path.isfile(files[name]):
      raise ReportError(f"{files[name]}: missing; {workdir} is not a kd_jax run directory "
                        f"(expected config.json and metrics.jsonl written by launch.py)")
  try:
    with open(files["config.json"], encoding="utf-8") as f:
      config = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ReportError(f"{files['config.json']}: not valid JSON ({e})") from None
  if not isinstance(config, dict):
    raise ReportError(f"{files['config.json']}: expected a JSON object")
  metrics, warnings = read_metrics(files["metrics.jsonl"])
  teacher = metrics[TEACHER][-1] if metrics[TEACHER] else None
  return Run(workdir=workdir, config=config, train=metrics[TRAIN], evals=metrics[EVAL],
             teacher_eval=teacher, warnings=warnings)


# ---------------------------------------------------------------------------------------
# Numbers.


def _finite(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x: Any) -> Optional[float]:
  return 100.0 * x if _finite(x) else None


def _planned_epochs(run: Run) -> Optional[float]:
  """num_epochs, or num_train_steps in epochs when the run is step-limited."""
  steps = run.config.get("num_train_steps", -1)
  if _finite(steps) and steps > 0:
    for line in run.evals + run.train:
      if _finite(line.get("epoch")) and line["epoch"] > 0:
        return steps * line["epoch"] / line["step"]
    return None
  epochs = run.config.get("num_epochs")
  return float(epochs) if _finite(epochs) else None


def _is_complete(run: Run) -> bool:
  """Complete when the last evaluation is at the end of training."""
  if not run.evals:
    return False
  last = run.evals[-1]
  steps = run.config.get("num_train_steps", -1)
  if _finite(steps) and steps > 0:
    return last["step"] >= steps
  epochs = run.config.get("num_epochs")
  return _finite(last.get("epoch")) and _finite(epochs) and last["epoch"] >= epochs - 1e-6


def run_summary(run: Run) -> dict[str, Any]:
  """One run's numbers (accuracies in %); best = max eval top-1, earliest epoch on ties."""
  c = run.config
  evals = [e for e in run.evals if _finite(e.get("eval/top1"))]
  best = max(evals, key=lambda e: e["eval/top1"], default=None)  # first max wins
  final = evals[-1] if evals else None
  ips = [t["images_per_sec"] for t in run.train if _finite(t.get("images_per_sec"))]
  elapsed = [l["elapsed_s"] for l in run.train + run.evals if _finite(l.get("elapsed_s"))]
  skipped = [t["skipped_steps"] for t in run.train if _finite(t.get("skipped_steps"))]
  return {
      "name": run.name,
      "workdir": run.workdir,
      "method": run.method,
      "teacher": c.get("teacher") or "",
      "student": c.get("student", ""),
      "dataset": c.get("dataset", ""),
      "seed": c.get("seed"),
      "num_epochs": _planned_epochs(run),
      "epochs_done": final.get("epoch") if final else None,
      "final_top1": _pct(final["eval/top1"]) if final else None,
      "final_top5": _pct(final.get("eval/top5")) if final else None,
      "final_epoch": final.get("epoch") if final else None,
      "best_top1": _pct(best["eval/top1"]) if best else None,
      "best_top5": _pct(best.get("eval/top5")) if best else None,
      "best_epoch": best.get("epoch") if best else None,
      "teacher_top1": _pct(run.teacher_eval.get("teacher/top1")) if run.teacher_eval else None,
      "wall_s": max(elapsed) if elapsed else None,
      "images_per_sec": statistics.median(ips) if ips else None,
      "skipped_steps": max(skipped) if skipped else 0,
      "status": "complete" if _is_complete(run) else "partial",
      "warnings": list(run.warnings),
  }


def _jsonable(x: Any) -> Any:
  """Non-finite floats become None so that summary.json is strict JSON."""
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _mean_std(values: Iterable[Optional[float]]) -> dict[str, Any]:
  """Mean and sample standard deviation (n-1); std is None for fewer than 2 values."""
  v = [x for x in values if x is not None]
  return {"mean": statistics.mean(v) if v else None,
          "std": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}


def _differing_hparams(runs: Sequence[Run]) -> dict[tuple, str]:
  """Per setting, the loss hyperparameters that tell it apart from the same method's others."""
  coarse: dict[tuple, dict[tuple, dict[str, Any]]] = {}
  for r in runs:
    coarse.setdefault(r.setting[:7], {})[r.setting] = r.loss
  out = {}
  for settings in coarse.values():
    keys = sorted({k for loss in settings.values() for k in loss})
    differ = [k for k in keys
              if len({json.dumps(l.get(k), sort_keys=True) for l in settings.values()}) > 1]
    for setting, loss in settings.items():
      out[setting] = ", ".join(f"{k}={loss.get(k)}" for k in differ)
  return out


def summarize(runs: Sequence[Run]) -> list[dict[str, Any]]:
  """One row per setting: mean ± std over its complete runs (over all if none is complete)."""
  groups: dict[tuple, list[Run]] = {}
  for r in runs:
    groups.setdefault(r.setting, []).append(r)
  hparams = _differing_hparams(runs)
  rows = []
  for setting in sorted(groups, key=lambda s: tuple(str(x) for x in s)):
    members = sorted(groups[setting], key=lambda r: (str(r.config.get("seed")), r.workdir))
    stats = [run_summary(r) for r in members]
    complete = [s for s in stats if s["status"] == "complete"]
    used = complete or stats
    if len(complete) == len(stats):
      status = "complete"
    elif complete:
      status = f"{len(complete)}/{len(stats)} complete"
    else:
      status = "partial"
    first = members[0]
    row = {
        "method": first.method,
        "teacher": first.config.get("teacher") or "",
        "student": first.config.get("student", ""),
        "dataset": first.config.get("dataset", ""),
        "num_epochs": stats[0]["num_epochs"],
        "hparams": hparams.get(setting, ""),
        "loss": first.loss,
        "runs": [s["workdir"] for s in used],
        "seeds": [s["seed"] for s in used],
        "n": len(used),
        "n_runs": len(stats),
        "n_complete": len(complete),
        "status": status,
        "final_top1": _mean_std(s["final_top1"] for s in used),
        "best_top1": _mean_std(s["best_top1"] for s in used),
        "best_epochs": [s["best_epoch"] for s in used],
        "final_top5": _mean_std(s["final_top5"] for s in used),
        "best_top5": _mean_std(s["best_top5"] for s in used),
        "wall_s": _mean_std(s["wall_s"] for s in used)["mean"],
        "images_per_sec": _median([s["images_per_sec"] for s in used]),
    }
    row["published"] = [_compare(p, row) for p in published_lib.lookup_config(first.config)]
    rows.append(row)
  return rows


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
  v = [x for x in values if x is not None]
  return statistics.median(v) if v else None


def _compare(p: published_lib.Published, row: dict[str, Any]) -> dict[str, Any]:
  """A published entry beside our mean under the same convention (best or last epoch).

  No delta when the training lengths differ (a 2-epoch run against a 240-epoch number).
  """
  ours = row["best_top1" if p.convention == "best" else "final_top1"]["mean"]
  epochs = row["num_epochs"]
  comparable = p.epochs is None or (epochs is not None and abs(epochs - p.epochs) < 1e-6)
  return {"top1": p.top1, "source": p.source, "convention": p.convention, "note": p.note,
          "epochs": p.epochs, "ours": ours, "comparable": comparable,
          "delta": None if ours is None or not comparable else ours - p.top1}


# ---------------------------------------------------------------------------------------
# Markdown.


def _f(x: Optional[float], digits: int = 2) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def _ms(stat: dict[str, Any]) -> str:
  if stat["mean"] is None:
    return "–"
  return _f(stat["mean"]) + ("" if stat["std"] is None else f" ± {_f(stat['std'])}")


def _epoch(e: Any) -> str:
  return "–" if not _finite(e) else f"{e:g}"


def _wall(s: Optional[float]) -> str:
  if s is None:
    return "–"
  s = int(round(s))
  if s >= 3600:
    return f"{s // 3600}h {s % 3600 // 60:02d}m"
  return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _ips(x: Optional[float]) -> str:
  if x is None:
    return "–"
  return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _cell(x: Any) -> str:
  return (str(x) if x not in (None, "") else "–").replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _published_cells(row: dict[str, Any]) -> tuple[str, str]:
  pub, delta = [], []
  for p in row["published"]:
    pub.append(f"{p['top1']:g} `{p['source']}` {p['convention']}")
    if not p["comparable"]:
      delta.append(f"n/a ({_epoch(row['num_epochs'])} vs {p['epochs']} epochs)")
    else:
      delta.append("–" if p["delta"] is None else f"{p['delta']:+.2f} ({p['convention']})")
  return "<br>".join(pub), "<br>".join(delta)


def _header(runs: Sequence[Run], rows: Sequence[dict[str, Any]]) -> str:
  tags = sorted({t for r in rows for p in r["published"] for t in p["source"].split(",")})
  conventions = sorted({p["convention"] for r in rows for p in r["published"]})
  lines = [
      "# kd_jax report",
      "",
      f"{len(runs)} run(s): " + ", ".join(f"`{r.workdir}`" for r in runs),
      "",
      "How to read it (docs/report.md has the long version):",
      "",
      "- Top-1/top-5 are test accuracies in %. **final** = at the last evaluated epoch; "
      "**best** = the maximum over evaluated epochs, with its epoch (the earliest on ties). "
      "Top-5 is given at the best epoch / at the final epoch.",
      "- A **setting** is a method, teacher, student, dataset, epoch count and set of loss "
      "hyperparameters (the *hparams* column shows those that tell settings apart); its "
      "numbers are mean ± sample std (n−1) over its complete runs. A run is complete when "
      "its last evaluation is at the end of training. Partial runs (killed or still "
      "running) are listed under Runs and left out of the mean unless none is complete.",
      "- **Published numbers come in two conventions: best-epoch (mdistiller lineage: DKD, "
      "LS, RLD) and last-epoch (RepDistiller/CRD, and the KD baselines reprinted from it).** "
      "Δ = ours − published with ours taken under the published number's convention "
      "(best against best, last against last); n/a when the epoch counts differ.",
  ]
  for c in conventions:
    lines.append(f"  - *{c}*: {published_lib.CONVENTIONS[c]}")
  if tags:
    lines.append("- Source tags: " + "; ".join(
        f"`{t}` {published_lib.SOURCES.get(t, '?')}" for t in tags) + ".")
  lines.append("- wall time = the trainer's elapsed_s (kept across resumes); images/s = "
               "median over logged training windows.")
  return "\n".join(lines)


def render_markdown(runs: Sequence[Run], rows: Sequence[dict[str, Any]],
                    plots: Sequence[str] = PLOTS) -> str:
  """report.md: header with the conventions, settings table, per-run table, plots."""
  settings = []
  for r in rows:
    pub, delta = _published_cells(r)
    settings.append([
        r["method"], r["teacher"], r["student"], r["dataset"], _epoch(r["num_epochs"]),
        r["hparams"], ", ".join(str(s) for s in r["seeds"]) + f" ({r['n']})",
        _ms(r["final_top1"]), _ms(r["best_top1"]),
        ", ".join(_epoch(e) for e in r["best_epochs"]),
        f"{_ms(r['best_top5'])} / {_ms(r['final_top5'])}", _wall(r["wall_s"]),
        _ips(r["images_per_sec"]), r["status"], pub, delta])
  per_run = []
  ordered = sorted(runs, key=lambda r: tuple(str(x) for x in r.setting) + (r.workdir,))
  for r, label in zip(ordered, run_labels(ordered)):
    s = run_summary(r)
    notes = []
    if s["skipped_steps"]:
      notes.append(f"{s['skipped_steps']} non-finite steps skipped")
    if s["warnings"]:
      notes.append(f"{len(s['warnings'])} metric line(s) skipped")
    per_run.append([
        label, s["method"], f"{s['teacher'] or '–'} → {s['student']}", s["dataset"],
        s["seed"], f"{_epoch(s['epochs_done'])} / {_epoch(s['num_epochs'])}",
        _f(s["final_top1"]), f"{_f(s['best_top1'])} ({_epoch(s['best_epoch'])})",
        f"{_f(s['best_top5'])} / {_f(s['final_top5'])}", _f(s["teacher_top1"]),
        _wall(s["wall_s"]), _ips(s["images_per_sec"]), s["status"], "; ".join(notes)])
  parts = [
      _header(runs, rows), "",
      "## Settings (mean ± std over seeds)", "",
      _table(["method", "teacher", "student", "dataset", "epochs", "hparams", "seeds (n)",
              "final top-1", "best top-1", "best epoch(s)", "top-5 best / final",
              "wall time", "images/s", "status", "published", "Δ ours − published"],
             settings), "",
      "## Runs", "",
      _table(["run", "method", "teacher → student", "dataset", "seed", "epochs",
              "final top-1", "best top-1 (epoch)", "top-5 best / final", "teacher top-1",
              "wall time", "images/s", "status", "notes"], per_run), "",
      "## Plots", "",
  ]
  titles = {"eval_top1.png": "eval top-1 vs epoch", "train_loss.png": "train loss vs epoch",
            "loss_terms.png": "loss terms vs epoch"}
  parts += [f"![{titles.get(p, p)}]({p})" for p in plots]
  warnings = [w for r in runs for w in r.warnings]
  if warnings:
    parts += ["", "## Skipped metric lines", ""] + [f"- `{w}`" for w in warnings]
  return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------
# Plots.


def run_labels(runs: Sequence[Run]) -> list[str]:
  """Short unique labels: the workdir's name, or more of its path where names repeat."""
  for depth in (1, 2, 3):
    labels = ["/".join(os.path.normpath(os.path.abspath(r.workdir)).split(os.sep)[-depth:])
              for r in runs]
    if len(set(labels)) == len(labels):
      return labels
  return [os.path.abspath(r.workdir) for r in runs]


def loss_terms(runs: Sequence[Run]) -> list[str]:
  """The train/* keys that are loss terms (everything but top-1/top-5 and the total)."""
  return sorted({k for r in runs for t in r.train for k in t
                 if k.startswith("train/") and k not in _NOT_TERMS})


def _series(lines: Sequence[dict[str, Any]], key: str, scale: float = 1.0):
  xs, ys = [], []
  for line in lines:
    if _finite(line.get("epoch")) and isinstance(line.get(key), (int, float)):
      xs.append(line["epoch"])
      ys.append(scale * line[key])
  return xs, ys


def _styles(n: int) -> list[dict[str, Any]]:
  """One fixed colour (and, past 20 runs, line style) per run, the same in every panel."""
  if n <= 10:
    return [{"color": f"C{i}"} for i in range(n)]
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  cmap = colormaps["tab20"]
  return [{"color": cmap(i % 20), "linestyle": ("-", "--", ":", "-.")[i // 20 % 4]}
          for i in range(n)]


def _plot_lines(ax, runs, labels, styles, kind: str, key: str, scale: float = 1.0) -> bool:
  drawn = False
  for run, label, style in zip(runs, labels, styles):
    xs, ys = _series(run.evals if kind == EVAL else run.train, key, scale)
    if xs:
      ax.plot(xs, ys, marker="." if len(xs) <= 30 else None, linewidth=1.2, label=label,
              **style)
      drawn = True
  if not drawn:
    ax.text(0.5, 0.5, f"no {key} logged yet", ha="center", va="center",
            transform=ax.transAxes)
  ax.grid(True, alpha=0.3)
  ax.set_xlabel("epoch")
  return drawn


def write_plots(runs: Sequence[Run], out_dir: str) -> list[str]:
  """eval_top1.png, train_loss.png and loss_terms.png (a grid, one panel per term)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  labels, styles = run_labels(runs), _styles(len(runs))
  legend = {"fontsize": "small"} if len(runs) <= 12 else {"fontsize": "xx-small", "ncol": 2}
  paths = []

  def save(fig, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    paths.append(path)

  for name, kind, key, scale, ylabel in (
      ("eval_top1.png", EVAL, "eval/top1", 100.0, "eval top-1 (%)"),
      ("train_loss.png", TRAIN, "train/loss", 1.0, "train loss")):
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    if _plot_lines(ax, runs, labels, styles, kind, key, scale):
      ax.legend(**legend)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} vs epoch")
    save(fig, name)

  terms = loss_terms(runs)
  ncols = min(3, max(len(terms), 1))
  nrows = max(1, math.ceil(len(terms) / ncols))
  fig = Figure(figsize=(5 * ncols, 3.5 * nrows + 0.6), layout="constrained")
  if not terms:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "no loss terms logged yet", ha="center", va="center")
    ax.set_axis_off()
  for i, term in enumerate(terms):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    _plot_lines(ax, runs, labels, styles, TRAIN, term)
    ax.set_title(term)
  if terms:
    handles = [Line2D([], [], label=l, **st) for l, st in zip(labels, styles)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(runs), 6),
               fontsize=legend["fontsize"])
  fig.suptitle("loss terms (as logged) vs epoch")
  save(fig, "loss_terms.png")
  return paths


# ---------------------------------------------------------------------------------------
# Entry point.


def write_report(workdirs: Sequence[str], out_dir: Optional[str] = None) -> dict[str, Any]:
  """Loads the runs, writes report.md, summary.json and the plots; returns the summary."""
  seen, runs = set(), []
  for w in workdirs:
    if os.path.realpath(w) not in seen:
      seen.add(os.path.realpath(w))
      runs.append(load_run(w))
  if not runs:
    raise ReportError("no workdirs given")
  out_dir = out_dir or os.path.join(workdirs[0], "report")
  os.makedirs(out_dir, exist_ok=True)
  rows = summarize(runs)
  plots = write_plots(runs, out_dir)
  with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
    f.write(render_markdown(runs, rows, [os.path.basename(p) for p in plots]))
  summary = {
      "conventions": published_lib.CONVENTIONS,
      "settings": rows,
      "runs": [run_summary(r) for r in runs],
      "plots": [os.path.basename(p) for p in plots],
      "out_dir": out_dir,
  }
  with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(_jsonable(summary), f, indent=2, allow_nan=False, default=str)
  return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m kd_jax.report",
      description="Tables (best- and last-epoch top-1, mean ± std over seeds, published "
                  "numbers) and plots from kd_jax run directories.")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="run directories (config.json + metrics.jsonl)")
  parser.add_argument("--out", default=None,
                      help="output directory (default: the first WORKDIR's report/)")
  args = parser.parse_args(argv)
  logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
  try:
    summary = write_report(args.workdirs, args.out)
  except ReportError as e:
    print(f"kd_jax.report: error: {e}", file=sys.stderr)
    return 2
  out = summary["out_dir"]
  print(f"wrote {os.path.join(out, 'report.md')}, summary.json and "
        f"{len(summary['plots'])} plots ({', '.join(summary['plots'])}) to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
