"""The exact teacher-logit table: the frozen teacher's logits for every view of every training image.

An augmentation with a finite set of views (its `num_views` in kd_jax/data/augmentations.py;
CIFAR's pad-crop-flip: zero-pad 4, random 32x32 crop, random horizontal flip, 9 x 9 x 2 = 162
views; 'none': 1) makes the teacher's logits on every image the step can ever see a finite
table [N, views, classes]. Built once (large eval batches, no gradient), the table replaces the
teacher forward in every step of every run with that teacher and data: the step draws the view
exactly as without the table and gathers its row. A run's views of other augmentations run the
teacher online.

Tables live under `config.teacher_cache` in a directory named by a fingerprint of everything
that decides their contents (teacher architecture, weights and compute dtype; dataset, split and
the bytes of its images and labels; augmentation; normalization; class count). A directory whose
manifest or file does not match is never used: one line says why and the table is rebuilt.
The table is float32 (a bfloat16 table is not offered); it is held in device memory, replicated
on every device of the mesh. When it does not fit, the run stops with one line before building.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import zlib
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax import console
from kd_jax import data as data_lib
from kd_jax.data import augmentations
from kd_jax.errors import ConfigError
from kd_jax.train import step as step_lib

PyTree = Any
FORMAT_VERSION = 1
_TABLE_FILE = "logits.npy"
_MANIFEST_FILE = "manifest.json"
# Fields that describe a table without deciding its contents (not in the fingerprint).
_INFO_FIELDS = ("build_s", "built_on", "table_crc32", "shape")


def table_bytes(num_examples: int, num_views: int, num_classes: int) -> int:
  """Bytes of a float32 table [num_examples, num_views, num_classes]."""
  return 4 * num_examples * num_views * num_classes


def _sha256_arrays(arrays: Sequence[tuple[str, np.ndarray]]) -> str:
  h = hashlib.sha256()
  for name, a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def weights_sha256(variables: PyTree) -> str:
  """sha256 over every leaf of `variables` (path, dtype, shape, bytes), in path order."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
  return _sha256_arrays(sorted((jax.tree_util.keystr(p), v) for p, v in leaves))


def manifest_fields(*, teacher_name: str, teacher_dtype: str, teacher_vars: PyTree,
                    dataset: str, split: str, images: np.ndarray, labels: np.ndarray,
                    augment: str, mean: Sequence[float], std: Sequence[float],
                    num_classes: int) -> dict:
  """Everything that decides a table's contents, as JSON-able fields."""
  return {
      "format": FORMAT_VERSION,
      "teacher": teacher_name,
      "teacher_dtype": teacher_dtype,
      "teacher_weights_sha256": weights_sha256(teacher_vars),
      "dataset": dataset,
      "split": split,
      "num_examples": int(len(labels)),
      "data_sha256": _sha256_arrays([("images", images), ("labels", labels)]),
      "augment": augment,
      "num_views": augmentations.num_views(augment),
      "mean": [float(m) for m in mean],
      "std": [float(s) for s in std],
      "num_classes": int(num_classes),
      "table_dtype": "float32",
  }


def fingerprint(fields: dict) -> str:
  """Directory name of the table of `fields`: 20 hex digits of their sha256."""
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def _first_difference(want: dict, got: dict) -> Optional[str]:
  for k in sorted(set(want) | set(got)):
    if want.get(k) != got.get(k):
      return k
  return None


def _read_manifest(directory: str) -> Optional[dict]:
  try:
    with open(os.path.join(directory, _MANIFEST_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _try_load(directory: str, fields: dict) -> tuple[Optional[np.ndarray], str]:
  """(table, '') if `directory` holds the table of `fields`, intact; else (None, why not)."""
  manifest = _read_manifest(directory)
  if manifest is None:
    return None, f"{directory} has no readable {_MANIFEST_FILE}"
  stored = {k: v for k, v in manifest.items() if k not in _INFO_FIELDS}
  diff = _first_difference(fields, stored)
  if diff is not None:
    return None, (f"{directory} was built for {diff}={stored.get(diff)!r}, this run has "
                  f"{fields.get(diff)!r}")
  want_shape = (fields["num_examples"], fields["num_views"], fields["num_classes"])
  try:
    table = np.load(os.path.join(directory, _TABLE_FILE), mmap_mode="r")
  except (OSError, ValueError) as e:
    return None, f"{directory}/{_TABLE_FILE} cannot be read ({e})"
  if table.shape != want_shape or table.dtype != np.float32:
    return None, (f"{directory}/{_TABLE_FILE} holds {table.dtype}{list(table.shape)}, "
                  f"expected float32{list(want_shape)}")
  table = np.array(table)
  if zlib.crc32(table.data) != manifest.get("table_crc32"):
    return None, f"{directory}/{_TABLE_FILE} does not match its checksum (damaged)"
  return table, ""


def _available_memory(mesh) -> tuple[int, str]:
  """(bytes free per device for the table, 'device' or 'host')."""
  dev = mesh.devices.flat[0]
  stats = None
  try:
    stats = dev.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if dev.platform != "cpu" and stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), "device"
  avail = None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          avail = int(line.split()[1]) * 1024
  except OSError:
    pass
  if avail is None:
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  # CPU devices share the host's memory: one copy per device plus the host copy.
  return avail // (mesh.devices.size + 1), "host (CPU devices)"


def _gb(n: float) -> str:
  return f"{n / 2 ** 30:.2f} GiB"


def check_fits(nbytes: int, mesh) -> None:
  """ConfigError (one line) when a table of `nbytes` cannot be held on every device."""
  free, where = _available_memory(mesh)
  if nbytes > 0.8 * free:
    raise ConfigError(
        f"config.teacher_cache: the teacher table needs {_gb(nbytes)} per device but only "
        f"{_gb(free)} of {where} memory is free per device (the table is used only when it "
        f"takes at most 80%); set config.teacher_cache='' to run the teacher every step, or "
        f"use fewer config.train_examples")


def _make_view_fn(teacher: nn.Module, mean, std, mesh, augment: str):
  """jit fn(vars, images_u8 [B,H,W,3], view int32 []) -> float32 logits [B, C] of view number
  `view` of augmentation `augment` (the registry's `view`) of every image."""
  view_of = augmentations.get(augment).view

  def run(variables, images, view):
    x = data_lib.normalize(view_of(images, view), mean, std)
    out = teacher.apply(variables, x, train=False)
    return (out[0] if isinstance(out, tuple) else out).astype(jnp.float32)
  repl, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return jax.jit(run, in_shardings=(repl, batch, repl), out_shardings=repl,
                 compiler_options=step_lib.compiler_options(mesh))


def build_table(teacher: nn.Module, teacher_vars: PyTree, images: np.ndarray, *,
                num_classes: int, augment: str, mean, std, mesh,
                chunk: int = 0, partial_dir: Optional[str] = None) -> np.ndarray:
  """The float32 table [N, views, C] of `teacher`'s logits on every view of every image.

  Prints an estimate of time and memory after timing the first chunk, then a progress line
  about every 10%. View v is the registry's view v of `augment` (pad_crop_flip: the image
  zero-padded by 4 in raw pixels, cropped at the view's offsets, mirrored if the view flips),
  then normalized, as in the training step.
  With `partial_dir` the table is written there as it is built (a memory-mapped
  logits.npy, and views.json listing the finished views), and the views it already lists
  are not computed again: a build stopped by a signal resumes from its finished views.
  """
  n = len(images)
  views = augmentations.num_views(augment)
  if views is None:
    raise ConfigError(f"config.teacher_cache: augmentation {augment!r} has no finite set of "
                      f"views; accepted: {', '.join(augmentations.finite_names())}")
  ndev = mesh.devices.size
  if not chunk:
    chunk = 256 if mesh.devices.flat[0].platform == "cpu" else 2048
  chunk = max(ndev, min(chunk, n) // ndev * ndev)
  fn = _make_view_fn(teacher, mean, std, mesh, augment)
  finished: list = []
  if partial_dir is None:
    table = np.empty((n, views, num_classes), np.float32)
  else:
    table, finished = _open_partial(partial_dir, (n, views, num_classes))
  starts = list(range(0, n, chunk))
  total = views * len(starts)
  if finished:
    console.info(f"teacher table: resuming the build in {partial_dir}: {len(finished)} of "
                 f"{views} views already done")
  console.info(f"teacher table: {n} images x {views} views x {num_classes} classes = "
               f"{_gb(table.nbytes)} float32 per device; {n * views} teacher forwards in "
               f"{total} chunks of {chunk}")
  done, t0, next_report, t_compiled = 0, time.time(), 0.1, 0.0
  total -= len(finished) * len(starts)
  for v in range(views):
    if v in finished:
      continue
    view = np.int32(v)
    for s in starts:
      part = images[s:s + chunk]
      m = len(part)
      if m < chunk:  # pad the last chunk to the compiled shape
        part = np.concatenate([part, np.zeros((chunk - m,) + part.shape[1:], part.dtype)])
      logits = np.asarray(jax.device_get(fn(teacher_vars, part, view)))
      table[s:s + m, v] = logits[:m]
      done += 1
      if done == 1:
        t_compiled = time.time()  # the first chunk includes compilation
      elif done == 2:
        per = time.time() - t_compiled
        console.info(f"teacher table: about {per * (total - 2) / 60:.1f} min more at "
                     f"{chunk / per:.0f} images/s")
      if done / total >= next_report and done < total:
        el = time.time() - t0
        console.info(f"teacher table: {100 * done / total:.0f}% ({done}/{total} chunks, "
                     f"{el:.0f} s, about {el * (total - done) / done:.0f} s left)")
        next_report = math.floor(10 * done / total + 1) / 10
    if partial_dir is not None:
      table.flush()
      finished.append(v)
      _write_json(os.path.join(partial_dir, _VIEWS_FILE), {"views": finished})
  return table


_VIEWS_FILE = "views.json"
_FIELDS_FILE = "fields.json"


def _write_json(path: str, data: Any) -> None:
  """path <- JSON, atomically (a temporary file, then a rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _open_partial(partial_dir: str, shape: tuple) -> tuple[np.ndarray, list]:
  """(memory-mapped table, finished views) of a build under way in partial_dir (new if none)."""
  path = os.path.join(partial_dir, _TABLE_FILE)
  try:
    with open(os.path.join(partial_dir, _VIEWS_FILE)) as f:
      finished = [int(v) for v in json.load(f)["views"]]
    table = np.lib.format.open_memmap(path, mode="r+")
    if table.shape != shape or table.dtype != np.float32:
      raise ValueError("another shape")
  except (OSError, ValueError, KeyError, TypeError):
    finished = []
    table = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
  return table, finished


def _finish(partial: str, directory: str, table: np.ndarray, manifest: dict) -> None:
  """Completes the build in `partial` (the table's file is already there, or is written now)
  with its manifest, then renames it to `directory`."""
  if not isinstance(table, np.memmap):
    np.save(os.path.join(partial, _TABLE_FILE), table)
  for name in (_VIEWS_FILE, _FIELDS_FILE):
    if os.path.exists(os.path.join(partial, name)):
      os.remove(os.path.join(partial, name))
  _write_json(os.path.join(partial, _MANIFEST_FILE), manifest)
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(partial, directory)


def probe_directory(path: str, nbytes: int) -> None:
  """ConfigError (one line) unless `path` can hold a table of `nbytes`: it is (or can be made)
  a directory, a file can be written in it, and the disk has the space (checked before any
  teacher forward, so a full disk is not found after the build)."""
  from kd_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_probe_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
    free = shutil.disk_usage(path).free
  except OSError as e:
    raise ConfigError(f"config.teacher_cache={path!r} cannot be written "
                      f"({workdir_lib.describe_os_error(e)}); give a writable directory, or "
                      f"config.teacher_cache='' to run the teacher every step") from None
  need = nbytes + 2 ** 20   # the table and its manifest
  if free < need:
    raise ConfigError(f"config.teacher_cache={path!r}: the teacher table needs {_gb(need)} on "
                      f"disk but only {_gb(free)} is free there; free space, give another "
                      f"directory, or config.teacher_cache='' to run the teacher every step")


def load_or_build(path: str, *, teacher: nn.Module, teacher_vars: PyTree, teacher_name: str,
                  teacher_dtype: str, dataset: str, split: str, images: np.ndarray,
                  labels: np.ndarray, augment: str, mean, std, num_classes: int,
                  mesh) -> tuple[jax.Array, dict]:
  """The table of this teacher and data, replicated on `mesh`: reused from PATH or built there.

  Returns (table, info) with info = {'dir', 'built', 'build_s'}.
  """
  if augmentations.num_views(augment) is None:
    raise ConfigError(f"config.teacher_cache works with the augmentations with a finite set of "
                      f"views ({', '.join(augmentations.finite_names())}); got {augment!r}")
  fields = manifest_fields(teacher_name=teacher_name, teacher_dtype=teacher_dtype,
                           teacher_vars=teacher_vars, dataset=dataset, split=split,
                           images=images, labels=labels, augment=augment, mean=mean, std=std,
                           num_classes=num_classes)
  directory = os.path.join(path, fingerprint(fields))
  nbytes = table_bytes(len(labels), fields["num_views"], num_classes)
  check_fits(nbytes, mesh)
  table, why = (None, "")
  if os.path.isdir(directory):
    table, why = _try_load(directory, fields)
    if table is None:
      console.info(f"teacher table: not used, {why}; rebuilding it")
  else:
    _report_other_tables(path, fields)
  info = {"dir": directory, "built": table is None, "build_s": 0.0}
  if table is None:
    writer = jax.process_index() == 0
    partial = f"{directory}.partial"
    if writer:
      probe_directory(path, nbytes)
      _start_partial(partial, fields)
    t0 = time.time()
    try:
      table = build_table(teacher, teacher_vars, images, num_classes=num_classes,
                          augment=augment, mean=mean, std=std, mesh=mesh,
                          partial_dir=partial if writer and jax.process_count() == 1 else None)
      info["build_s"] = time.time() - t0
      if not np.all(np.isfinite(table)):
        raise ConfigError(f"config.teacher_cache: the teacher gives non-finite logits on some "
                          f"training views; the table is not written (check "
                          f"config.teacher_checkpoint)")
      if writer:
        manifest = dict(fields, build_s=info["build_s"], built_on=str(mesh.devices.flat[0]),
                        table_crc32=zlib.crc32(table), shape=list(table.shape))
        _finish(partial, directory, table, manifest)
    except Exception as e:  # pylint: disable=broad-except  # a failed build leaves nothing
      if writer:
        shutil.rmtree(partial, ignore_errors=True)
      if isinstance(e, OSError):
        from kd_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
        raise ConfigError(f"config.teacher_cache: writing the teacher table in {partial} failed "
                          f"({workdir_lib.describe_os_error(e)}); nothing is left there") from None
      raise
    # A signal (errors.Interrupted, KeyboardInterrupt) keeps the finished views in `partial`.
    console.info(f"teacher table: built in {info['build_s']:.0f} s, saved to {directory}")
  else:
    console.info(f"teacher table: reusing {directory} ({_gb(table.nbytes)})")
  if isinstance(table, np.memmap):  # in memory: a device array may alias host memory
    table = np.array(table)
  repl = NamedSharding(mesh, P())
  return jax.make_array_from_callback(table.shape, repl, lambda idx: table[idx]), info


def _start_partial(partial: str, fields: dict) -> None:
  """Makes `partial` the directory of a build of `fields`: kept if it holds one of the same
  fields (a build stopped by a signal), else emptied."""
  try:
    with open(os.path.join(partial, _FIELDS_FILE)) as f:
      if json.load(f) == fields:
        return
  except (OSError, ValueError):
    pass
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  _write_json(os.path.join(partial, _FIELDS_FILE), fields)


def _report_other_tables(path: str, fields: dict) -> None:
  """One line when PATH holds a table of the same teacher built for something else."""
  if not os.path.isdir(path):
    return
  for name in sorted(os.listdir(path)):
    manifest = _read_manifest(os.path.join(path, name))
    if manifest is None or manifest.get("teacher") != fields["teacher"]:
      continue
    diff = _first_difference(fields, {k: v for k, v in manifest.items()
                                      if k not in _INFO_FIELDS})
    if diff is not None:
      console.info(f"teacher table: {os.path.join(path, name)} ({fields['teacher']}) was built "
                   f"for another {diff}; building a new table")
      return
