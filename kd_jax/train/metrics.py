"""Run outputs: WORKDIR/metrics.jsonl (one JSON object per line), TensorBoard events, terminal lines.

Only process 0 writes. Every start (`start(step)`) cuts metrics.jsonl back to the restored step
(to nothing when no checkpoint was restored: step-0 lines are written again), so a resumed run's
file reads exactly like an unbroken one and holds each step once. TensorBoard events are then
rebuilt from that file: the old event files are deleted and the kept lines replayed into a fresh
one, so TensorBoard never shows a step twice (metrics.jsonl is the one source of truth).
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from typing import Any, Optional

import jax

from kd_jax import console
from kd_jax.errors import ConfigError


def _jsonable(value: Any) -> Any:
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def _start_wandb(workdir: str, project: str, run_config: Any):
  """A Weights & Biases run for `workdir` (the same run again when the workdir resumes).

  Logs the resolved config; WANDB_MODE=offline keeps everything under WORKDIR/wandb.
  """
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError(f"config.wandb_project={project!r} needs the wandb package, which is "
                      f"not installed: pip install wandb (or leave config.wandb_project='')"
                      ) from None
  id_path = os.path.join(workdir, "wandb_run_id")
  if os.path.exists(id_path):
    with open(id_path) as f:
      run_id = f.read().strip()
  else:
    run_id = uuid.uuid4().hex[:12]
    with open(id_path, "w") as f:
      f.write(run_id)
  config = run_config.to_dict() if hasattr(run_config, "to_dict") else dict(run_config or {})
  return wandb.init(project=project, id=run_id, resume="allow", dir=workdir,
                    name=os.path.basename(os.path.abspath(workdir)), config=config)


class _ScalarEventWriter:
  """TensorBoard scalar events written with the tensorboard package alone (no TensorFlow).

  The records are what tf.summary.scalar writes: a float32 scalar tensor under the 'scalars'
  plugin, in an events.out.tfevents.* file of TFRecords, so TensorBoard and its event readers
  see the same tags and values. (tensorboard's own EventFileWriter would import TensorFlow.)
  """

  def __init__(self, log_dir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.summary.writer import record_writer
    from tensorboard.util import tensor_util
    # pylint: enable=g-import-not-at-top
    os.makedirs(log_dir, exist_ok=True)
    self._event_pb2, self._summary_pb2, self._tensor_util = event_pb2, summary_pb2, tensor_util
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.kd_jax")
    self._writer = record_writer.RecordWriter(open(os.path.join(log_dir, name), "wb"))
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
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb_dir = os.path.join(workdir, "tensorboard")
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
    if os.path.isdir(self.tb_dir):
      for name in os.listdir(self.tb_dir):
        if name.startswith("events.out.tfevents"):
          os.remove(os.path.join(self.tb_dir, name))
    self._open_tensorboard()
    for record in kept:
      self._write_tb(record)

  def truncate_after(self, step: int) -> list[dict]:
    """Drops lines logged after `step` (they belong to work lost by an interruption), and all
    lines when `step` is 0 (a start from scratch logs step 0 again). Returns the kept records."""
    if not self.enabled or not os.path.exists(self.path):
      return []
    kept = []
    with open(self.path) as f:
      for line in f:
        if not line.endswith("\n"):
          continue  # a line cut by a kill mid-write
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if step > 0 and isinstance(record, dict) and record.get("step", 0) <= step:
          kept.append(record)
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.write("".join(json.dumps(k) + "\n" for k in kept))
    os.replace(tmp, self.path)
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
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
    self._open_tensorboard()
    if self._tb is not None:
      self._write_tb(record)
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log({k: v for k, v in record.items()
                       if k != "step" and isinstance(v, (int, float))}, step=int(step))

  def print_progress(self, step: int, scalars: dict[str, Any], eta_s: Optional[float]) -> None:
    if not self.enabled:
      return
    parts = [f"step {step}/{self.total_steps}"]
    for key in ("epoch", "train/loss", "train/top1", "eval/top1", "eval/top5", "lr",
                "images_per_sec"):
      if key in scalars:
        v = _jsonable(scalars[key])
        parts.append(f"{key} {v:.4g}" if isinstance(v, float) else f"{key} {v}")
    if scalars.get("skipped_steps"):
      parts.append(f"skipped {int(scalars['skipped_steps'])} non-finite steps so far")
    if eta_s is not None:
      parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(max(eta_s, 0)))}")
    console.info(" | ".join(parts))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None
