"""Run outputs: WORKDIR/metrics.jsonl (one JSON object per line), TensorBoard events, terminal lines.

Only process 0 writes. metrics.jsonl and the TensorBoard events are two copies of the same
records. Every start (`start(step)`) cuts both back to the restored step (to nothing when no
checkpoint was restored: step-0 lines are written again), so a resumed run's outputs read exactly
like an unbroken one and hold each step once. A copy that lacks steps the other holds up to that
step (a deleted or truncated metrics.jsonl, deleted event files) is rebuilt from the other, saying
so in one line; the surviving copy is never deleted. Lines rebuilt from events carry TensorBoard's
float32 values. The events are rewritten as one new file before the old files are removed.

Paths go through `etils.epath`. On a local disk each line is appended; on an object store
(`gs://...`, no append) the writer keeps the file's lines and rewrites it whole at each write. A
failed write raises WorkdirError naming the file, the errno and the step (storage.py).
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
import uuid
from typing import Any, Optional

from etils import epath
import jax

from kd_jax import console
from kd_jax.train import progress
from kd_jax.errors import ConfigError
from kd_jax.train import storage
from kd_jax.train.storage import is_local


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


def _tfrecords(data: bytes):
  """The payloads of a TFRecord file's records (a record cut by a kill ends the file)."""
  pos = 0
  while pos + 12 <= len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    pos += 12                      # length, its masked CRC
    if pos + n + 4 > len(data):
      return
    yield data[pos:pos + n]
    pos += n + 4                   # payload, its masked CRC


def _event_files(tb_dir: epath.Path) -> list[epath.Path]:
  if not tb_dir.is_dir():
    return []
  return sorted((p for p in tb_dir.iterdir() if p.name.startswith("events.out.tfevents")),
                key=lambda p: p.name)


def read_tensorboard(tb_dir: epath.Path) -> list[dict]:
  """The scalar records of the event files in `tb_dir`, as metrics.jsonl lines: in file order,
  a record per line written (a new one at each new step, or when a tag repeats at one step)."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import event_pb2
  from tensorboard.util import tensor_util
  # pylint: enable=g-import-not-at-top
  records: list[dict] = []
  for path in _event_files(tb_dir):
    current: Optional[dict] = None
    for raw in _tfrecords(path.read_bytes()):
      try:
        event = event_pb2.Event.FromString(raw)
      except Exception:  # pylint: disable=broad-except  # a damaged record ends the file
        break
      if not event.HasField("summary"):
        continue
      for v in event.summary.value:
        value = (float(tensor_util.make_ndarray(v.tensor)) if v.HasField("tensor")
                 else float(v.simple_value))
        if current is None or current["step"] != event.step or v.tag in current:
          current = {"step": int(event.step)}
          records.append(current)
        current[v.tag] = value
  return records


def _numeric(record: dict) -> dict:
  return {k: v for k, v in record.items()
          if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _span(records: list[dict]) -> str:
  steps = sorted({r["step"] for r in records})
  return f"{len(records)} records of step{'s' if len(steps) > 1 else ''} " + (
      f"{steps[0]}..{steps[-1]}" if len(steps) > 1 else f"{steps[0]}")


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
    self.name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                 f"{os.getpid()}.kd_jax")
    self._writer = record_writer.RecordWriter((log_dir / self.name).open("wb"))
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

  def _tb_failure(self, e: OSError, step: Optional[int]) -> Exception:
    tb, self._tb = self._tb, None
    if tb is not None:
      try:
        tb.close()   # drops what could not be written, so nothing is retried at exit
      except Exception:  # pylint: disable=broad-except
        pass
    return storage.write_failure("TensorBoard events", self.tb_dir, e, step=step)

  def _open_tensorboard(self, step: Optional[int] = None) -> None:
    if not self._want_tb or self._tb is not None:
      return
    self._want_tb = False
    try:
      self._tb = _ScalarEventWriter(self.tb_dir)
    except ImportError as e:
      console.warn(f"no TensorBoard events ({e}); metrics.jsonl is written as usual. "
                   f"pip install tensorboard for them.")
    except OSError as e:
      raise self._tb_failure(e, step) from None

  def _tensorboard_records(self) -> Optional[list[dict]]:
    """The records of the existing event files; None without the tensorboard package."""
    try:
      return read_tensorboard(self.tb_dir)
    except ImportError:
      return None

  def start(self, step: int) -> None:
    """Cuts metrics.jsonl and the TensorBoard events back to `step` (the restored checkpoint;
    0 = none), each completed from the other where it lacks steps up to `step`. Call once per
    start, before writing."""
    self._lines = None if self._local else []
    if not self.enabled:
      return
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)   # the workdir
    except OSError as e:
      raise storage.write_failure("metrics", self.path, e, step=step) from None
    kept = [r for r in self._read_file() if step > 0 and r.get("step", 0) <= step]
    events = self._tensorboard_records() if self._want_tb else None
    if events is not None:
      events = [r for r in events if step > 0 and r["step"] <= step]
      have = {r["step"] for r in kept}
      lost = [r for r in events if r["step"] not in have]
      if lost:
        kept = sorted(kept + lost, key=lambda r: r["step"])
        console.warn(f"{self.path} lacked {_span(lost)} (up to the restored step {step}); "
                     f"rebuilt them from the TensorBoard events in {self.tb_dir} (float32 "
                     f"values)")
      have = {r["step"] for r in events}
      missing = [r for r in kept if r["step"] not in have and _numeric(r)]
      if missing:
        console.warn(f"the TensorBoard events in {self.tb_dir} lacked {_span(missing)}; "
                     f"rebuilt them from {self.path}")
    if kept or self.path.exists():
      self._rewrite_file(kept, step)
    old = _event_files(self.tb_dir)
    if not kept and not old:
      return  # nothing to replay or cut back: the events start with the first write
    self._open_tensorboard(step)
    if self._tb is None:
      return
    try:
      for record in kept:
        self._write_tb(record)
      self._tb.flush()
      for path in old:   # the new file is complete: the old ones go
        if path.name != self._tb.name:
          path.unlink()
    except OSError as e:
      raise self._tb_failure(e, step) from None

  def _read_file(self) -> list[dict]:
    """The complete JSON lines of metrics.jsonl (a line cut by a kill is dropped)."""
    if not self.path.exists():
      return []
    records = []
    for line in self.path.read_text().splitlines(keepends=True):
      if not line.endswith("\n"):
        continue  # a line cut by a kill mid-write
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and isinstance(record.get("step", 0), int):
        records.append(record)
    return records

  def _rewrite_file(self, records: list[dict], step: int) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    try:
      if self._local:  # a temporary file and an atomic rename
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
          tmp.write_text(text)
          os.replace(tmp, self.path)
        except OSError:
          if tmp.exists():
            tmp.unlink()
          raise
      else:  # object stores replace an object atomically
        self._lines = text.splitlines(keepends=True)
        self.path.write_text(text)
    except OSError as e:
      raise storage.write_failure("metrics", self.path, e, step=step) from None

  def _write_tb(self, record: dict) -> None:
    if self._tb is None:
      return
    for k, v in _numeric(record).items():
      self._tb.scalar(k, v, record["step"])

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _jsonable(v) for k, v in scalars.items()})
    line = json.dumps(record) + "\n"
    try:
      if self._local:
        with self.path.open("a") as f:
          f.write(line)
      else:
        if self._lines is None:
          self._lines = (self.path.read_text().splitlines(keepends=True) if self.path.exists()
                         else [])
        self._lines.append(line)
        self.path.write_text("".join(self._lines))
    except OSError as e:
      raise storage.write_failure("metrics", self.path, e, step=step) from None
    self._open_tensorboard(step)
    if self._tb is not None:
      try:
        self._write_tb(record)
        self._tb.flush()
      except OSError as e:
        raise self._tb_failure(e, step) from None
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
