"""What a person watching a run sees: live progress of each phase and the final summary.

`Progress` shows one phase at a time (loading, the teacher's evaluation, compiling the train
step, training, evaluation). On a terminal it redraws one live line (`\\r`); when stdout is not
a terminal (a log file, a notebook, CI) it prints a line when a phase starts, at most every
`interval_s` seconds while it runs, and when it ends. Only process 0 writes.

`run_summary(workdir)` is the human-readable end of a run, read back from the workdir's
metrics.jsonl (and config.json), so re-running a finished run prints exactly the same summary.

Every human-readable line formats the same way: accuracies in percent (`format_percent`;
metrics.jsonl keeps fractions), durations and ETAs as M:SS or H:MM:SS (`format_duration`), a
log line's metrics through `format_metric` / `step_line`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional, TextIO

from etils import epath
import numpy as np

from kd_jax import console


def format_duration(seconds: Optional[float]) -> str:
  """H:MM:SS (or M:SS under an hour); '?' for None or a non-finite value."""
  if seconds is None or not math.isfinite(seconds):
    return "?"
  seconds = int(round(max(seconds, 0.0)))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# Metrics that are accuracies (fractions in metrics.jsonl, percent on the terminal).
PERCENT_METRICS = ("train/top1", "train/top5", "eval/top1", "eval/top5", "teacher/top1",
                   "teacher/top5")


def format_percent(fraction: Any) -> str:
  """0.015 -> '1.50%'."""
  return f"{100.0 * float(fraction):.2f}%"


def format_metric(key: str, value: Any) -> str:
  """'eval/top1 1.50%' for an accuracy, 'train/loss 4.536' (4 significant digits) otherwise."""
  if key in PERCENT_METRICS or key.endswith(("/top1", "/top5")):
    return f"{key} {format_percent(value)}"
  if isinstance(value, float):
    return f"{key} {value:.4g}"
  return f"{key} {value}"


# The metrics of a training log line, in this order.
STEP_LINE_METRICS = ("epoch", "train/loss", "train/top1", "eval/top1", "eval/top5", "lr",
                     "images_per_sec")


def step_line(step: int, total_steps: int, scalars: dict[str, Any],
              eta_s: Optional[float]) -> str:
  """'step 10/60 | epoch 0.1667 | train/loss 4.536 | train/top1 1.25% | ... | ETA 1:05'."""
  parts = [f"step {step}/{total_steps}"]
  for key in STEP_LINE_METRICS:
    if key in scalars:
      value = scalars[key]
      value = float(value) if isinstance(value, (float, np.floating)) else value
      parts.append(format_metric(key, value))
  if scalars.get("skipped_steps"):
    parts.append(f"skipped {int(scalars['skipped_steps'])} non-finite steps so far")
  if eta_s is not None:
    parts.append(f"ETA {format_duration(eta_s)}")
  return " | ".join(parts)


def _bar(fraction: float, width: int = 20) -> str:
  filled = int(round(min(max(fraction, 0.0), 1.0) * width))
  return "[" + "#" * filled + "." * (width - filled) + "]"


class Progress:
  """Live progress of one phase at a time; see the module docstring.

  Args:
    stream: where to write (default sys.stdout).
    live: redraw one line in place; default: whether `stream` is a terminal.
    interval_s: the most frequent periodic line when not live.
    enabled: write at all; default: process 0 only.
    clock: time source (tests pass a fake one).
  """

  def __init__(self, stream: Optional[TextIO] = None, *, live: Optional[bool] = None,
               interval_s: float = 30.0, enabled: Optional[bool] = None,
               clock: Callable[[], float] = time.monotonic):
    self.stream = stream if stream is not None else sys.stdout
    if live is None:
      isatty = getattr(self.stream, "isatty", None)
      live = bool(isatty and isatty())
    self.live = live
    self.interval_s = interval_s
    self.enabled = console._is_main_process() if enabled is None else enabled  # pylint: disable=protected-access
    self.clock = clock
    self._name: Optional[str] = None
    self._total: Optional[int] = None
    self._unit = ""
    self._start = 0.0
    self._last_line = 0.0
    self._done = 0
    self._rate_start = 0.0
    self._rate_done = 0
    self._line_open = False

  # -- writing ---------------------------------------------------------------------------

  def _write(self, text: str, *, final: bool) -> None:
    if not self.enabled:
      return
    if self.live:
      self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
      self._line_open = not final
    else:
      self.stream.write(text + "\n")
    self.stream.flush()

  def message(self, text: str) -> None:
    """A line of its own (a live line is cleared first and redrawn by the next update)."""
    if not self.enabled:
      return
    self.pause()
    self.stream.write(text + "\n")
    self.stream.flush()

  # -- phases ----------------------------------------------------------------------------

  def pause(self) -> None:
    """Clears the live line so that another line can be printed; the next update redraws."""
    if self.enabled and self._line_open:
      self.stream.write("\r\x1b[2K")
      self.stream.flush()
      self._line_open = False

  def start(self, name: str, total: Optional[int] = None, unit: str = "",
            done: int = 0, announce: bool = True) -> None:
    """Begins phase `name` of `total` units (None: unknown), `done` of them already done.

    announce=False: when not live, no line now (only periodic ones and the end's).
    """
    self._name, self._total, self._unit = name, total, unit
    self._start = self._last_line = self.clock()
    self._done = done
    self._rate_start, self._rate_done = self._start, done
    if announce or self.live:
      self._write(self._text(), final=False)

  def restart_rate(self, done: Optional[int] = None) -> None:
    """Measures the rate (and ETA) from now and `done` units on, e.g. after compilation."""
    if done is not None:
      self._done = done
    self._rate_start, self._rate_done = self.clock(), self._done

  def update(self, done: int, extra: str = "") -> None:
    """`done` units of the phase are done; redraws or, not live, prints every interval_s."""
    self._done = done
    now = self.clock()
    if self.live or now - self._last_line >= self.interval_s:
      self._last_line = now
      self._write(self._text(extra), final=False)

  def finish(self, extra: str = "", silent: bool = False) -> None:
    """Ends the phase with a final line (elapsed time); silent=True: no line, clears it."""
    if self._name is None:
      return
    if silent:
      self.pause()
      self._name = None
      return
    elapsed = self.clock() - self._start
    total = self._total if self._total is not None else self._done
    self._done = total
    text = f"{self._name}: done in {format_duration(elapsed)}"
    if total:
      text += f" ({total} {self._unit})".replace(" )", ")")
    self._write(text + (f" | {extra}" if extra else ""), final=True)
    self._name = None

  def eta_s(self) -> Optional[float]:
    """Seconds left at the rate since start()/restart_rate(); None before any rate."""
    if self._total is None:
      return None
    done = self._done - self._rate_done
    spent = self.clock() - self._rate_start
    if done <= 0 or spent <= 0:
      return None
    return (self._total - self._done) * spent / done

  def _text(self, extra: str = "") -> str:
    parts = [f"{self._name}:"]
    if self._total:
      parts.append(f"{_bar(self._done / self._total)} {self._done}/{self._total} {self._unit}"
                   .rstrip())
      eta = self.eta_s()
      if self._done > self._rate_done:
        parts.append(f"ETA {format_duration(eta)}")
    elif self._done:
      parts.append(f"{self._done} {self._unit}".rstrip())
    else:
      parts.append("...")
    elapsed = self.clock() - self._start
    parts.append(f"{format_duration(elapsed)} elapsed")
    if extra:
      parts.append(extra)
    return " ".join(parts[:1]) + " " + " | ".join(parts[1:])


# ---------------------------------------------------------------------------------------
# The summary of a run.


def _read_metrics(path: epath.Path) -> list[dict[str, Any]]:
  records = []
  if not path.exists():
    return records
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


_pct = format_percent


def _run_line(workdir: str) -> Optional[str]:
  """'  method rkkd: student resnet8, teacher resnet8 with RANDOM weights (...)' from config.json."""
  path = epath.Path(workdir) / "config.json"
  try:
    config = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(config, dict) or "method" not in config:
    return None
  line = f"  method {config['method']}: student {config.get('student')}"
  teacher, source = config.get("teacher"), str(config.get("teacher_checkpoint") or "")
  if teacher:
    if source.startswith("random:"):
      line += (f", teacher {teacher} with RANDOM weights (teacher_checkpoint={source!r}: a "
               f"pipeline check, not a distillation result)")
    elif source:
      line += f", teacher {teacher} from {source}"
  return line


def run_summary(workdir: str) -> str:
  """Human-readable summary of the run in `workdir`, from its metrics.jsonl.

  Best and last eval top-1 in percent with their epochs, the teacher's top-1 (when there is
  a teacher), the wall time and where the best checkpoint and the metrics are.
  """
  from kd_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  path = epath.Path(workdir) / "metrics.jsonl"
  runs_dir = epath.Path(workdir) / "runs"
  if not path.exists() and runs_dir.is_dir():
    return sweep_summary(workdir)
  records = _read_metrics(path)
  evals = [r for r in records if "eval/top1" in r]
  steps = max((int(r.get("step", 0)) for r in records), default=0)
  elapsed = max((float(r["elapsed_s"]) for r in records if "elapsed_s" in r), default=None)
  epochs = max((float(r["epoch"]) for r in records if "epoch" in r), default=0.0)
  lines = [f"Done: {steps} steps ({epochs:.3g} epoch{'' if epochs == 1 else 's'}) in "
           f"{format_duration(elapsed)} wall time ({workdir})"]
  run_line = _run_line(workdir)
  if run_line:
    lines.append(run_line)
  if evals:
    best = max(evals, key=lambda r: (r["eval/top1"], -r["step"]))
    last = evals[-1]
    lines.append(f"  best eval top-1  {_pct(best['eval/top1'])} at epoch "
                 f"{math.ceil(best.get('epoch', 0) - 1e-9)} (step {best['step']}); "
                 f"checkpoint: {ckpt_lib.best_model_note(workdir)}")
    last_line = (f"  last eval top-1  {_pct(last['eval/top1'])} at epoch "
                 f"{math.ceil(last.get('epoch', 0) - 1e-9)} (step {last['step']})")
    if "eval/top5" in last:
      last_line += f", top-5 {_pct(last['eval/top5'])}"
    lines.append(last_line)
  else:
    lines.append("  no evaluation recorded yet")
  teacher = [r for r in records if "teacher/top1" in r]
  if teacher:
    lines.append(f"  teacher top-1    {_pct(teacher[-1]['teacher/top1'])}")
  lines.append(f"  metrics: {os.fspath(path)}")
  return "\n".join(lines)


def sweep_summary(workdir: str) -> str:
  """Summary of a sweep workdir: one line per run (WORKDIR/runs/NAME/metrics.jsonl) with its
  best and last eval top-1 in percent; the sweep keeps no best model per run."""
  runs_dir = epath.Path(workdir) / "runs"
  names = sorted(p.name for p in runs_dir.iterdir() if (p / "metrics.jsonl").exists())
  per_run = {n: _read_metrics(runs_dir / n / "metrics.jsonl") for n in names}
  records = [r for rs in per_run.values() for r in rs]
  steps = max((int(r.get("step", 0)) for r in records), default=0)
  elapsed = max((float(r["elapsed_s"]) for r in records if "elapsed_s" in r), default=None)
  lines = [f"Done: a sweep of {len(names)} runs, {steps} steps each, in "
           f"{format_duration(elapsed)} wall time ({workdir})"]
  run_line = _run_line(workdir)
  if run_line:
    lines.append(run_line)
  width = max((len(n) for n in names), default=0)
  for name in names:
    evals = [r for r in per_run[name] if "eval/top1" in r]
    if not evals:
      lines.append(f"  {name:<{width}}  no evaluation recorded yet")
      continue
    best = max(evals, key=lambda r: (r["eval/top1"], -r["step"]))
    lines.append(f"  {name:<{width}}  best eval top-1 {_pct(best['eval/top1'])} (step "
                 f"{best['step']}), last {_pct(evals[-1]['eval/top1'])} (step "
                 f"{evals[-1]['step']})")
  lines.append(f"  metrics: {os.fspath(runs_dir)}/NAME/metrics.jsonl; export a run with "
               f"python -m kd_jax.export {workdir} --run NAME --out FILE")
  return "\n".join(lines)
