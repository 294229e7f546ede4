"""Run outputs: WORKDIR/metrics.jsonl (one JSON object per line), TensorBoard events, terminal lines.

Only process 0 writes. Every start (`start(step)`) cuts metrics.jsonl back to the restored step
(to nothing when no checkpoint was restored: step-0 lines are written again), so a resumed run's
file reads exactly like an unbroken one and holds each step once. TensorBoard events are then
rebuilt from that file: the old event files are deleted and the kept lines replayed into a fresh
one, so TensorBoard never shows a step twice (metrics.jsonl is the one source of truth).

Paths go through `etils.epath`. On a local disk each line is appended; on an object store
(`gs://...`, no append) the writer keeps the file's lines and rewrites it whole at each write.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from typing import Any, Optional

from etils import epath
import jax

from kd_jax import console
from kd_jax.train import progress
from kd_jax.errors import ConfigError
from kd_jax.train.workdir import is_local


def _jsonable(value: Any) -> Any:
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def _start_wandb(workdir: str, project: str, run_config: Any):
  """A Weights & Biases run for `workdir` (the same run again when the workdir resumes).

  Logs the resolved config; WANDB_MODE=offline keeps everything under WORKDIR/wandb (under
  wandb's default local directory when the workdir is on an object store).
  """
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError(f"config.wandb_project={project!r} needs the wandb package, which is "
                      f"not installed: pip install wandb (or leave config.wandb_project='')"
                      ) from None
  id_path = epath.Path(workdir) / "wandb_run_id"
  if id_path.exists():
    run_id = id_path.read_text().strip()
  else:
    run_id = uuid.uuid4().hex[:12]
    id_path.write_text(run_id)
  config = run_config.to_dict() if hasattr(run_config, "to_dict") else dict(run_config or {})
  name = (os.path.basename(os.path.abspath(workdir)) if is_local(workdir)
          else epath.Path(workdir).name)
  return wandb.init(project=project, id=run_id, resume="allow",
                    dir=workdir if is_local(workdir) else None, name=name, config=config)


class _ScalarEventWriter:
  """TensorBoard scalar events written with the tensorboard package alone (no TensorFlow).

  The records are what tf.summary.scalar writes: a float32 scalar tensor under the 'scalars'
  plugin, in an events.out.tfevents.* file of TFRecords, so TensorBoard and its event readers
  see the same tags and values. (tensorboard's own EventFileWriter would import TensorFlow.)
  """

  def __init__(self, log_dir: epath.Path):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.summary.writer import record_writer
    from tensorboard.util import tensor_util
    # pylint: enable=g-import-not-at-top
    log_dir.mkdir(parents=True, exist_ok=True)
    self._event_pb2, self._summary_pb2, self._tensor_util = event_pb2, summary_pb2, tensor_util
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.kd_jax")
    self._writer = record_writer.RecordWriter((log_dir / name).open("wb"))
    self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    self.flush()

  def _add(self, event) -> None:
    self._writer.write(event.SerializeToString())

  def scalar(self, tag: str, value: float, step: int) -> None:
    pb2 = self._summary_pb2
    metadata = pb2.SummaryMetadata(plugin_data=pb2.SummaryMetadata.PluginData(
        plugin_name="scalars"))
    tensor = self._tensor_util.make_tensor_proto(float(value), dtype="float32")
    summary = pb2.Summary(value=[pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)])
    self._add(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MetricWriter:
  """Appends metric lines to metrics.jsonl and TensorBoard; prints progress."""

  def __init__(self, workdir: str, *, total_steps: int, tensorboard: bool = True,
               wandb_project: str = "", run_config: Any = None):
    self.enabled = jax.process_index() == 0
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.tb_dir = epath.Path(workdir) / "tensorboard"
    self._local = is_local(workdir)
    self._lines: Optional[list[str]] = None  # object stores: the lines, rewritten at each write
    self.total_steps = total_steps
    self._want_tb = self.enabled and tensorboard
    self._tb = None
    self._wandb = None
    if self.enabled and wandb_project:
      self._wandb = _start_wandb(workdir, wandb_project, run_config)

  def _open_tensorboard(self) -> None:
    if not self._want_tb or self._tb is not None:
      return
    self._want_tb = False
    try:
      self._tb = _ScalarEventWriter(self.tb_dir)
    except ImportError as e:
      console.warn(f"no TensorBoard events ({e}); metrics.jsonl is written as usual. "
                   f"pip install tensorboard for them.")

  def start(self, step: int) -> None:
    """Cuts metrics.jsonl back to `step` (the restored checkpoint; 0 = none) and rebuilds the
    TensorBoard events from it. Call once per start, before writing."""
    kept = self.truncate_after(step)
    if not self.enabled:
      return
    if self.tb_dir.is_dir():
      for path in self.tb_dir.iterdir():
        if path.name.startswith("events.out.tfevents"):
          path.unlink()
    self._open_tensorboard()
    for record in kept:
      self._write_tb(record)

  def truncate_after(self, step: int) -> list[dict]:
    """Drops lines logged after `step` (they belong to work lost by an interruption), and all
    lines when `step` is 0 (a start from scratch logs step 0 again). Returns the kept records."""
    self._lines = None if self._local else []
    if not self.enabled or not self.path.exists():
      return []
    kept = []
    for line in self.path.read_text().splitlines(keepends=True):
      if not line.endswith("\n"):
        continue  # a line cut by a kill mid-write
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if step > 0 and isinstance(record, dict) and record.get("step", 0) <= step:
        kept.append(record)
    text = "".join(json.dumps(k) + "\n" for k in kept)
    if self._local:  # a temporary file and an atomic rename
      tmp = self.path.with_name(self.path.name + ".tmp")
      tmp.write_text(text)
      os.replace(tmp, self.path)
    else:  # object stores replace an object atomically
      self._lines = text.splitlines(keepends=True)
      self.path.write_text(text)
    return kept

  def _write_tb(self, record: dict) -> None:
    if self._tb is None:
      return
    for k, v in record.items():
      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.scalar(k, v, record["step"])

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _jsonable(v) for k, v in scalars.items()})
    line = json.dumps(record) + "\n"
    if self._local:
      with self.path.open("a") as f:
        f.write(line)
    else:
      if self._lines is None:
        self._lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
      self._lines.append(line)
      self.path.write_text("".join(self._lines))
    self._open_tensorboard()
    if self._tb is not None:
      self._write_tb(record)
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log({k: v for k, v in record.items()
                       if k != "step" and isinstance(v, (int, float))}, step=int(step))

  def print_progress(self, step: int, scalars: dict[str, Any], eta_s: Optional[float]) -> None:
    if self.enabled:  # accuracies in percent, ETA as M:SS (progress.step_line)
      console.info(progress.step_line(step, self.total_steps,
                                      {k: _jsonable(v) for k, v in scalars.items()}, eta_s))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None
