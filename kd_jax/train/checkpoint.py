"""Orbax checkpoints of a run: the latest few under WORKDIR/checkpoints, the best student under WORKDIR/best.

One source of truth: the meta of the newest complete checkpoint. It holds the step, the best-model
record (`best_top1`, `best_epoch`, `best_step`) and the resolved config of the run. `best/` is a
cache of the student at `best_step`: a best model saved after that checkpoint (work a kill then
lost) is dropped on resume and saved again when the run re-reaches it, and older best models are
pruned only once a checkpoint naming a newer one is complete.

Orbax writes each step to a temporary directory and renames it when complete, so a checkpoint is
complete or absent. Restoring walks back from the latest step past unreadable ones, saying so and
moving them to WORKDIR/unreadable_checkpoints/ (so the run rewrites that step, never keeps it).
Saving a step that exists is a no-op when the stored one is the same step, an atomic replacement
(delete, then write-and-rename) otherwise. A failed background write raises CheckpointError naming
the path and errno at the next `check()` (the loop calls it at every log/eval/save boundary).
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from kd_jax import console
from kd_jax.errors import CheckpointError
from kd_jax.train import workdir as workdir_lib

PyTree = Any


def _path(directory: str | os.PathLike) -> epath.Path:
  path = epath.Path(directory)
  return path if "://" in os.fspath(path) else epath.Path(os.path.abspath(os.fspath(path)))


def _manager(directory: epath.Path, max_to_keep: Optional[int]) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory, options=options)


def _is_finite(tree: PyTree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def _write_error(what: str, directory: epath.Path, e: BaseException) -> CheckpointError:
  return CheckpointError(f"writing the {what} to {directory} failed "
                         f"({workdir_lib.describe_os_error(e)}); the run stops here. Free the "
                         f"disk or fix the permissions, then run the same command again to "
                         f"resume from the last complete checkpoint")


class _NoOrbaxTracebacks(logging.logging.Filter):
  """Orbax logs a failed background write with its traceback; kd_jax reports it as one line
  (CheckpointError), so the traceback is dropped from the terminal (the message is kept)."""

  def filter(self, record) -> bool:
    if record.exc_info and f"{os.sep}orbax{os.sep}" in (record.pathname or ""):
      record.exc_info = None
      record.exc_text = None
    return True


def _quiet_orbax_tracebacks() -> None:
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _NoOrbaxTracebacks) for f in logger.filters):
    logger.addFilter(_NoOrbaxTracebacks())


class Checkpointer:
  """Saves/restores the full TrainState plus JSON metadata; keeps the best student apart."""

  def __init__(self, workdir: str | os.PathLike, keep: int):
    _quiet_orbax_tracebacks()
    self.workdir = _path(workdir)
    self.latest = _manager(self.workdir / "checkpoints", keep)
    self.best = _manager(self.workdir / "best", None)   # pruned by _prune_best
    self._pending_best_step: Optional[int] = None      # best_step of the last save() issued
    self._issued = {"checkpoint": None, "best model": None}   # last step written in background

  # --- Saving ------------------------------------------------------------------------------

  def _stored_meta(self, mngr: ocp.CheckpointManager, step: int) -> Optional[dict]:
    try:
      return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                  ["meta"])
    except Exception:  # pylint: disable=broad-except  # unreadable: replace it
      return None

  def _make_room(self, mngr: ocp.CheckpointManager, step: int, meta: dict,
                 same: tuple[str, ...]) -> bool:
    """False when `step` exists with the same `same` meta values (nothing to do); else deletes
    an existing different/unreadable `step` so that it is written afresh and returns True."""
    if step not in mngr.all_steps():
      return True
    stored = self._stored_meta(mngr, step)
    if stored is not None and all(stored.get(k) == meta.get(k) for k in same):
      return False
    logging.warning("replacing checkpoint step %d in %s", step, mngr.directory)
    mngr.delete(step)
    return True

  def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
    """Saves `state` at `step` (async); refuses a non-finite state (never stores NaN).

    `meta` holds the best-model record (best_step) and the config; the best model it names is
    made durable first, so a complete checkpoint never points at a missing best model.
    """
    if not _is_finite(state.params) or not _is_finite(state.batch_stats):
      raise CheckpointError(f"refusing to save a non-finite state at step {step}")
    self.wait()  # the previous checkpoint and the best model this one names are complete
    if not self._make_room(self.latest, step, meta, ("step",)):
      return
    try:
      self.latest.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise _write_error(f"checkpoint of step {step}", self.latest.directory, e) from None
    self._issued["checkpoint"] = step
    self._pending_best_step = meta.get("best_step")

  def save_best(self, step: int, variables: PyTree, meta: dict[str, Any]) -> None:
    """Student variables {'params','batch_stats'} of the best eval top-1 so far."""
    if not _is_finite(variables):
      raise CheckpointError(f"refusing to save a non-finite best model at step {step}")
    self.check()
    if not self._make_room(self.best, step, meta, ("step", "eval_top1")):
      return
    try:
      self.best.save(step, args=ocp.args.Composite(
          variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise _write_error(f"best model of step {step}", self.best.directory, e) from None
    self._issued["best model"] = step

  def check(self) -> None:
    """Raises CheckpointError (path, errno) if a background write failed."""
    for what, mngr in (("checkpoint", self.latest), ("best model", self.best)):
      try:
        mngr.check_for_errors()
      except Exception as e:  # pylint: disable=broad-except
        raise _write_error(self._what(what), mngr.directory, e) from None

  def _prune_best(self, keep_from: int) -> None:
    for s in self.best.all_steps():
      if s < keep_from:
        self.best.delete(s)

  def wait(self) -> None:
    """Waits for the background writes (CheckpointError if one failed), then prunes `best/`
    below the best model named by the checkpoint now complete. Every process calls it at the
    same points (Orbax deletes with a barrier)."""
    for what, mngr in (("checkpoint", self.latest), ("best model", self.best)):
      try:
        mngr.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        raise _write_error(self._what(what), mngr.directory, e) from None
    self.check()
    if self._pending_best_step is not None:
      self._prune_best(keep_from=self._pending_best_step)
      self._pending_best_step = None

  def _what(self, what: str) -> str:
    step = self._issued[what]
    return what if step is None else f"{what} of step {step}"

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  # --- Restoring -----------------------------------------------------------------------------

  def _set_aside(self, step: int) -> Optional[epath.Path]:
    """Moves an unreadable step out of checkpoints/ so that the run writes it afresh (process 0
    moves it; every process calls this, so all see the same steps afterwards)."""
    src = self.latest.directory / str(step)
    dst = self.workdir / "unreadable_checkpoints" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
      try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
      except OSError:  # left in place: save() replaces an unreadable step when it gets there
        dst = None
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f"kd_jax_set_aside_{step}")
    self.latest.reload()
    return dst

  def latest_meta(self) -> Optional[tuple[int, dict]]:
    """(step, meta) of the newest checkpoint whose meta is readable, or None. Reads JSON only."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      meta = self._stored_meta(self.latest, step)
      if meta is not None:
        return step, meta
    return None

  def restore_latest(self, abstract_state: PyTree) -> Optional[tuple[PyTree, dict]]:
    """The newest readable checkpoint (state, meta), or None when there is none at all.

    Unreadable newer steps are reported and moved to WORKDIR/unreadable_checkpoints/. `best/`
    is then made to agree with the restored meta (see the module docstring).
    """
    steps = sorted(self.latest.all_steps(), reverse=True)
    errors = []
    for step in steps:
      try:
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        moved = self._set_aside(step)
        msg = (f"checkpoint at step {step} in {self.latest.directory} is unreadable "
               f"({e!r:.300})" + (f"; moved to {moved}" if moved else ""))
        logging.warning("%s; trying the previous one", msg)
        console.warn(f"{msg}; trying the previous one")
        errors.append(msg)
        continue
      meta = dict(restored["meta"])
      self.reconcile_best(meta.get("best_step"))
      return restored["state"], meta
    if errors:
      raise CheckpointError("no readable checkpoint: " + "; ".join(errors))
    self.reconcile_best(-1)
    return None

  def reconcile_best(self, best_step: Optional[int]) -> None:
    """Drops best models other than `best_step` (-1: none was recorded; None: an old run
    without a best_step record, where best models are left alone)."""
    if best_step is None:
      return
    for s in self.best.all_steps():
      if s != best_step:
        logging.info("dropping best model of step %d (not in the restored checkpoint)", s)
        self.best.delete(s)


def restore_variables(directory: str, which: str = "auto") -> tuple[PyTree, str]:
  """Student variables {'params', 'batch_stats'} of a kd_jax run, as numpy arrays.

  `directory` is a run's workdir, or its `best/` or `checkpoints/` subdirectory. For a workdir,
  `which` picks 'latest' (the last saved state), 'best' (the best-eval student), or 'auto'
  (best if there is one, else latest). Returns the variables and the path they came from.
  """
  if which not in ("auto", "latest", "best"):
    raise ValueError(f"which={which!r}; accepted: 'auto', 'latest', 'best'")
  directory = _path(directory)
  best = (directory / "best", "variables")
  latest = (directory / "checkpoints", "state")
  order = {"auto": [best, latest], "latest": [latest], "best": [best]}[which]
  candidates = [c for c in order if c[0].is_dir()]
  if not best[0].is_dir() and not latest[0].is_dir():
    kind = "variables" if directory.name == "best" else "state"
    candidates.append((directory, kind))
  for path, item in candidates:
    with console.without_log_records("directory is read only", "Options.read_only=True"):
      mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
          read_only=True, create=False))
    step = mngr.latest_step()
    if step is None:
      continue
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore()}))[item]
    if item == "state":
      restored = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    variables = jax.tree.map(np.asarray, dict(restored))
    return variables, os.fspath(path / str(step))
  looked = {"auto": "best/ and checkpoints/", "latest": "checkpoints/", "best": "best/"}[which]
  raise CheckpointError(
      f"no kd_jax checkpoint found under {directory} (looked for {looked} step directories); "
      f"pass a kd_jax run workdir (WORKDIR for its last state, WORKDIR:best for its best), a "
      f"PyTorch .pth file or a .msgpack file")


def healthy_for_save(state: PyTree, step: int) -> bool:
  """False (saying so) while the run is in a streak of skipped non-finite steps: such a state is
  finite but is not kept as the resume point; the previous checkpoint stays the newest."""
  bad = int(jax.device_get(state.bad_streak))
  if bad == 0:
    return True
  console.warn(f"no checkpoint at step {step}: the last {bad} steps were non-finite and "
               f"skipped; the newest checkpoint stays the resume point")
  return False


def divergence_message(checkpointer: Checkpointer, *, bad: int, step: int,
                       max_bad_steps: int) -> str:
  """The one line for a run stopped by `max_bad_steps`, naming the checkpoint it resumes from."""
  steps = checkpointer.latest.all_steps()
  head = (f"{bad} consecutive non-finite training steps up to step {step} "
          f"(config.max_bad_steps={max_bad_steps}); the run stopped. ")
  if not steps:
    return head + ("No checkpoint was written before it: start again with a lower "
                   "config.learning_rate (or check the data/teacher).")
  last = max(steps)
  return head + (
      f"The last good checkpoint is step {last} ({checkpointer.latest.directory / str(last)}); "
      f"running the same command again resumes there and replays the same steps, so it "
      f"diverges again. Use a new --workdir with a lower config.learning_rate (or check the "
      f"data/teacher), or continue this one from step {last} with "
      f"--config.allow_changed=learning_rate --config.learning_rate=<lower>.")


def reached_preemption(step: int) -> bool:
  """Orbax's multi-host preemption sync point: True on every host at the same step once any
  host was told to stop (needs jax.distributed; False when the service is off)."""
  try:
    return bool(ocp.multihost.reached_preemption(step))
  except Exception:  # pylint: disable=broad-except
    return False
