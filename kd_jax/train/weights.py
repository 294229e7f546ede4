"""One loader for given weights: the teacher (`config.teacher_checkpoint`) and the student's
starting point (`config.student_init`).

A source is one of:
  - a PyTorch `.pth`/`.pt` file (mdistiller/CRD/DHKD/torchvision), through the strict importer;
  - a `.msgpack` file of {'params', 'batch_stats'} as written by
    `python -m kd_jax.models.torch_import --out` or `python -m kd_jax.export --format msgpack`;
  - a kd_jax run workdir: `WORKDIR:latest` (its last saved state), `WORKDIR:best` (its best
    student); a plain `WORKDIR` means the role's default (`latest` for a student init, for a
    teacher its best if it has one, else its last state); a `best/` or `checkpoints/`
    subdirectory works too.
The variables are checked leaf by leaf against the configured model before use.
"""
from __future__ import annotations

from typing import Any, Optional, Type

from etils import epath
import flax
import jax
import numpy as np

from kd_jax import models
from kd_jax.errors import CheckpointError, WeightsFileError
from kd_jax.train import checkpoint as ckpt_lib

PyTree = Any
_WHICH = ("latest", "best")


def split_source(source: str) -> tuple[str, Optional[str]]:
  """'DIR:best' -> ('DIR', 'best'); 'DIR:latest' -> ('DIR', 'latest'); else (source, None)."""
  head, sep, tail = source.rpartition(":")
  if sep and tail in _WHICH and head:
    return head, tail
  return source, None


def is_msgpack(path: str) -> bool:
  return path.lower().endswith(".msgpack")


def read_msgpack(path: str) -> PyTree:
  """{'params', 'batch_stats'} (numpy) from a flax msgpack file, or a WeightsFileError."""
  try:
    restored = flax.serialization.msgpack_restore(epath.Path(path).read_bytes())
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsFileError(f"cannot read {path!r} as a flax .msgpack file (truncated or not "
                           f"msgpack: {type(e).__name__}: {str(e)[:200]})") from None
  if not isinstance(restored, dict) or "params" not in restored:
    keys = sorted(map(str, restored)) if isinstance(restored, dict) else type(restored).__name__
    raise WeightsFileError(f"{path!r} is not a kd_jax variables file: expected the keys "
                           f"'params' and 'batch_stats', found {keys}")
  return {"params": jax.tree.map(np.asarray, restored["params"]),
          "batch_stats": jax.tree.map(np.asarray, restored.get("batch_stats", {}))}


def check_like(variables: PyTree, abstract: PyTree, what: str, role: str,
               error: Type[Exception]) -> None:
  """Same tree structure and shapes as the model expects, or `error` naming the leaf."""
  got = {jax.tree_util.keystr(p): np.shape(v)
         for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
  want = {jax.tree_util.keystr(p): tuple(v.shape)
          for p, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  if missing or unexpected:
    raise error(f"{what}: parameters do not fit the configured {role}; missing "
                f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
  for k in sorted(want):
    if tuple(got[k]) != want[k]:
      raise error(f"{what}: {k} has shape {tuple(got[k])}, the configured {role} expects "
                  f"{want[k]} (wrong architecture or class count?)")


def abstract_variables(module, image_size: int) -> PyTree:
  return jax.eval_shape(lambda: models.init(
      module, {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, image_size))


def _check_workdir_model(path: str, source: str, model: str, num_classes: int, *, role: str,
                         key: str, error: Type[Exception]) -> None:
  """`error` naming the model a kd_jax workdir trained (its config.json) when it is not `model`
  with `num_classes` classes; nothing when the workdir has no readable config.json."""
  import json  # pylint: disable=import-outside-toplevel
  root = epath.Path(path)
  if root.name in ("best", "checkpoints"):
    root = root.parent
  try:
    saved = json.loads((root / "config.json").read_text())
  except (OSError, ValueError):
    return
  trained, classes = saved.get("student"), saved.get("num_classes")
  if not isinstance(trained, str) or saved.get("sweep"):
    return
  if trained != model or (isinstance(classes, int) and classes != num_classes):
    raise error(f"config.{key}={source!r} is a kd_jax workdir that trained a {trained} with "
                f"{classes} classes (its config.json), but the configured {role} is a {model} "
                f"with {num_classes} classes; set --config.{role}={trained}"
                f"{f' --config.num_classes={classes}' if classes != num_classes else ''}, or "
                f"give a workdir of a {model}")


def load_variables(source: str, model: str, num_classes: int, *, aux_head: Optional[str],
                   image_size: int, role: str, key: str, missing_error: Type[Exception],
                   default_which: str = "latest") -> tuple[PyTree, str]:
  """Variables {'params', 'batch_stats'} (numpy float32) for models.create(model, ...).

  `role` ('teacher'/'student') and `key` (the config key) go into the messages; a source that
  does not exist or does not fit raises `missing_error`. Returns (variables, where read from).
  """
  path, which = split_source(source)
  is_dir = epath.Path(path).is_dir()
  if not is_dir and not epath.Path(path).exists():
    raise missing_error(f"config.{key}={source!r} does not exist; expected a PyTorch .pth "
                        f"file, a .msgpack file or a kd_jax run workdir (WORKDIR, WORKDIR:best)")
  if which is not None and not is_dir:
    raise missing_error(f"config.{key}={source!r}: ':{which}' applies to a kd_jax run "
                        f"workdir, but {path!r} is a file")
  module = models.create(model, num_classes, aux_head=aux_head)
  abstract = abstract_variables(module, image_size)
  if is_dir:
    _check_workdir_model(path, source, model, num_classes, role=role, key=key,
                         error=missing_error)
    try:
      variables, read_from = ckpt_lib.restore_variables(path, which or default_which)
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise missing_error(f"config.{key}={source!r} could not be read: {e!r:.300}") from None
    what = f"{role} checkpoint {read_from}"
  elif is_msgpack(path):
    variables, read_from = read_msgpack(path), path
    what = f"{role} file {path}"
  else:
    variables = models.import_torch_checkpoint(path, model, num_classes, aux_head=aux_head)
    read_from, what = path, f"{role} file {path}"
  check_like(variables, abstract, what, role, missing_error)
  variables = jax.tree.map(lambda x: np.asarray(x, np.float32), variables)
  if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables)):
    raise missing_error(f"{what} holds non-finite (NaN/inf) values")
  return variables, read_from
