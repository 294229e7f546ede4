"""Orbax checkpoints of a run: the latest few under WORKDIR/checkpoints, the best student under WORKDIR/best.

One source of truth: the meta of the newest complete checkpoint. It holds the step, the best-model
record (`best_top1`, `best_epoch`, `best_step`), the resolved config of the run and a checksum of
every array (`checksums`: leaf name -> BLAKE2b-128 of its dtype, shape and bytes), written in the
same atomic save as the arrays. `best/` is a cache of the student at `best_step` (with its own
checksums): a best model saved after that checkpoint (work a kill then lost) is dropped on resume
and saved again when the run re-reaches it, and older best models are pruned only once a
checkpoint naming a newer one is complete.

Orbax writes each step to a temporary directory and renames it when complete, so a checkpoint is
complete or absent. Restoring tells two faults apart:
* damaged: the step's meta or array metadata cannot be read, its arrays cannot be restored, or
  they fail their checksums. Each such step is said in one line and moved to
  WORKDIR/unreadable_checkpoints/, and the run resumes from the newest intact one.
* does not fit: the step holds other arrays (another model, head or class count) than the
  configured run. That is refused with one line (`CheckpointMismatchError`, exit 2) naming what
  the checkpoint holds and what the config asks for; nothing is moved.
A resume that goes non-finite within `FALLBACK_WINDOW_STEPS` steps of the restored checkpoint
sets that checkpoint aside and runs once more from the previous one (`run_with_fallback`)
before the divergence is blamed on the settings.

Writes fail in the main thread with one line naming the path, the errno and the step (storage.py):
the target directory is probed and its free space compared with the checkpoint's size before
Orbax's background writer starts, and a background write that fails anyway is raised at the
next `check()` (the loop calls it at every log boundary). Directories are created at the first
save, so a launch that fails earlier leaves no empty checkpoints/ or best/ behind.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from kd_jax import console
from kd_jax.errors import CheckpointError, ConfigError, TrainingError
from kd_jax.train import storage

PyTree = Any

# A non-finite streak that starts this many steps or fewer after the restored checkpoint counts
# as a divergence caused by that checkpoint (run_with_fallback).
FALLBACK_WINDOW_STEPS = 10
UNREADABLE_DIR = "unreadable_checkpoints"
_DIVERGED = "diverged"


class CheckpointMismatchError(ConfigError):
  """A workdir's checkpoint holds another model (arrays, shapes) than the configured run."""


def _path(directory: str | os.PathLike) -> epath.Path:
  path = epath.Path(directory)
  return path if "://" in os.fspath(path) else epath.Path(os.path.abspath(os.fspath(path)))


def _manager(directory: epath.Path, max_to_keep: Optional[int],
             read_only: bool = False) -> ocp.CheckpointManager:
  """Creates nothing: the directory is made by the first save (Checkpointer._prepare).

  A read-only manager (a workdir read as a teacher or exported) drops Orbax's notices about the
  read-only option, which it logs from both the options and the manager."""
  def make():
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False,
                                           cleanup_tmp_directories=not read_only,
                                           read_only=read_only)
    return ocp.CheckpointManager(directory, options=options)
  if not read_only:
    return make()
  with console.without_log_records("directory is read only", "Options.read_only=True"):
    return make()


def _host(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(jax.device_get(x))


def _is_finite(tree: PyTree) -> bool:
  return all(bool(np.all(np.isfinite(a))) for a in map(_host, jax.tree.leaves(tree))
             if np.issubdtype(a.dtype, np.floating))


def _key_name(key: Any) -> str:
  for attr in ("name", "key", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_name(path: tuple) -> str:
  """('params', 'conv1', 'kernel') key path -> 'params.conv1.kernel' (attributes, dict keys and
  sequence indices alike, so a state and its restored dict name each leaf the same)."""
  return ".".join(_key_name(k) for k in path)


def checksums(tree: PyTree) -> dict[str, str]:
  """{leaf name: BLAKE2b-128 hex digest of the leaf's dtype, shape and bytes}."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(_host(leaf))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    out[leaf_name(path)] = h.hexdigest()
  return out


def failed_checksums(tree: PyTree, recorded: Optional[Mapping[str, str]],
                     prefixes: tuple[str, ...] = ("",)) -> list[str]:
  """Leaf names of `tree` whose checksum differs from `recorded` (of the recorded leaves, those
  under `prefixes` are compared; nothing is checked when the meta records no checksums)."""
  if not recorded:
    return []
  got = checksums(tree)
  want = {k: v for k, v in recorded.items() if k.startswith(prefixes)}
  names = sorted(set(got) | set(want))
  return [k for k in names if got.get(k) != want.get(k)]


def _shapes(tree: PyTree) -> dict[str, tuple]:
  return {leaf_name(p): tuple(np.shape(v)) for p, v in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stored_shapes(item_dir: epath.Path) -> dict[str, tuple]:
  """{leaf name: shape} from an Orbax item's array metadata (no array data is read)."""
  metadata = ocp.StandardCheckpointHandler().metadata(item_dir)
  tree = getattr(metadata, "item_metadata", metadata)
  return {leaf_name(p): tuple(v.shape) for p, v in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def misfit(stored: Mapping[str, tuple], wanted: Mapping[str, tuple]) -> Optional[str]:
  """None when both trees have the same leaves and shapes; else a short description."""
  missing = sorted(set(wanted) - set(stored))
  extra = sorted(set(stored) - set(wanted))
  other = sorted(k for k in set(stored) & set(wanted) if tuple(stored[k]) != tuple(wanted[k]))
  if not (missing or extra or other):
    return None
  parts = []
  if other:
    k = other[0]
    parts.append(f"{len(other)} arrays of other shapes (e.g. {k}: stored {tuple(stored[k])}, "
                 f"wanted {tuple(wanted[k])})")
  if missing:
    parts.append(f"{len(missing)} arrays the config needs are absent (e.g. {missing[0]})")
  if extra:
    parts.append(f"{len(extra)} stored arrays the config has no place for (e.g. {extra[0]})")
  return "; ".join(parts)


_MODEL_KEYS = ("student", "aux_head", "num_classes")


def _model_of(config: Optional[Mapping[str, Any]]) -> str:
  if not config:
    return "?"
  return ", ".join(f"{k}={config.get(k)!r}" for k in _MODEL_KEYS if k in config) or "?"


class _NoOrbaxTracebacks(logging.logging.Filter):
  """Orbax logs a failed background write at ERROR level (one record per writer thread, with
  tracebacks); kd_jax raises that failure as one CheckpointError line, so Orbax's ERROR
  records are dropped and tracebacks are removed from its other records."""

  def filter(self, record) -> bool:
    if f"{os.sep}orbax{os.sep}" not in (record.pathname or ""):
      return True
    if record.levelno >= logging.logging.ERROR:
      return False
    record.exc_info = None
    record.exc_text = None
    return True


def _quiet_orbax_tracebacks() -> None:
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _NoOrbaxTracebacks) for f in logger.filters):
    logger.addFilter(_NoOrbaxTracebacks())


def _release_orbax_waiters() -> None:
  """After a failed write: wakes Orbax's writer threads still waiting for a signal that the
  failed step will never send (each waits up to Orbax's 300 s barrier timeout, and the process
  cannot exit before they end). Best effort: Orbax's internals may differ between versions."""
  # The woken threads drop their unstarted coroutines; Python would name each at exit.
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                          category=RuntimeWarning)
  try:
    from orbax.checkpoint._src.futures import future as orbax_future  # pylint: disable=g-import-not-at-top
    for thread in threading.enumerate():
      if isinstance(thread, orbax_future._SignalingThread) and thread.is_alive():  # pylint: disable=protected-access
        thread._cancelled = True  # pylint: disable=protected-access
        orbax_future.set_signals(thread._receive_signals,  # pylint: disable=protected-access
                                 operation_id=thread._operation_id)  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except
    pass


def _stored_meta(mngr: ocp.CheckpointManager, step: int) -> Optional[dict]:
  try:
    return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                ["meta"])
  except Exception:  # pylint: disable=broad-except  # unreadable: damaged
    return None


def _newest_meta(mngr: ocp.CheckpointManager) -> Optional[tuple[int, dict]]:
  for step in sorted(mngr.all_steps(), reverse=True):
    meta = _stored_meta(mngr, step)
    if meta is not None:
      return step, meta
  return None


class Checkpointer:
  """Saves/restores the full TrainState plus JSON metadata; keeps the best student apart.

  `run_config` (the resolved config of this launch, as JSON data) and `after_restore` (called
  once the checkpoint to resume is found to fit, or none exists) are set by
  workdir.check_and_record_config: config.json is rewritten only for a run that will go on.
  """

  def __init__(self, workdir: str | os.PathLike, keep: int):
    _quiet_orbax_tracebacks()
    self.workdir = _path(workdir)
    self.latest = _manager(self.workdir / "checkpoints", keep)
    self.best = _manager(self.workdir / "best", None)   # pruned by _prune_best
    self._pending_best_step: Optional[int] = None      # best_step of the last save() issued
    self._issued = {"checkpoint": None, "best model": None}   # last step written in background
    self.run_config: Optional[dict] = None
    self.after_restore: Optional[Callable[[], None]] = None
    self.restored_step: Optional[int] = None           # the step restore_latest resumed from

  def _managers(self):
    return (("checkpoint", self.latest), ("best model", self.best))

  # --- Saving ------------------------------------------------------------------------------

  def _make_room(self, mngr: ocp.CheckpointManager, step: int, meta: dict,
                 same: tuple[str, ...]) -> bool:
    """False when `step` exists with the same `same` meta values (nothing to do); else deletes
    an existing different/unreadable `step` so that it is written afresh and returns True."""
    if step not in mngr.all_steps():
      return True
    stored = _stored_meta(mngr, step)
    if stored is not None and all(stored.get(k) == meta.get(k) for k in same):
      return False
    logging.warning("replacing checkpoint step %d in %s", step, mngr.directory)
    mngr.delete(step)
    return True

  def _prepare(self, what: str, mngr: ocp.CheckpointManager, step: int, tree: PyTree) -> None:
    """Creates the directory, probes it and checks its free space against the size of the
    newest stored step (or of the arrays): a write that cannot succeed fails here, at once."""
    directory = mngr.directory
    try:
      directory.mkdir(parents=True, exist_ok=True)
      if storage.is_local(directory):
        storage.probe_dir(directory)
        steps = mngr.all_steps()
        need = (storage.tree_bytes(directory / str(max(steps))) if steps else
                sum(_host(x).nbytes for x in jax.tree.leaves(tree)) + 2 ** 16)
        storage.check_free_space(directory, need)
    except OSError as e:
      raise storage.write_failure(what, directory, e, step=step, error=CheckpointError) from None

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
    meta = {**meta, "checksums": checksums(state)}
    self._prepare("checkpoint", self.latest, step, state)
    try:
      self.latest.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # pylint: disable=broad-except
      _release_orbax_waiters()
      raise storage.write_failure("checkpoint", self.latest.directory, e, step=step,
                                  error=CheckpointError) from None
    self._issued["checkpoint"] = step
    self._pending_best_step = meta.get("best_step")

  def save_best(self, step: int, variables: PyTree, meta: dict[str, Any]) -> None:
    """Student variables {'params','batch_stats'} of the best eval top-1 so far."""
    if not _is_finite(variables):
      raise CheckpointError(f"refusing to save a non-finite best model at step {step}")
    self.check()
    if not self._make_room(self.best, step, meta, ("step", "eval_top1")):
      return
    meta = {**meta, "checksums": checksums(variables)}
    self._prepare("best model", self.best, step, variables)
    try:
      self.best.save(step, args=ocp.args.Composite(
          variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # pylint: disable=broad-except
      _release_orbax_waiters()
      raise storage.write_failure("best model", self.best.directory, e, step=step,
                                  error=CheckpointError) from None
    self._issued["best model"] = step

  def _raise_write_error(self, what: str, mngr: ocp.CheckpointManager,
                         e: BaseException) -> None:
    _release_orbax_waiters()
    raise storage.write_failure(what, mngr.directory, e, step=self._issued[what],
                                error=CheckpointError) from None

  def check(self) -> None:
    """Raises CheckpointError (path, errno, step) if a background write failed. A finished
    write is collected here (Orbax's finalize thread keeps its error until then)."""
    for what, mngr in self._managers():
      try:
        mngr.check_for_errors()
        if self._issued[what] is not None and not mngr.is_saving_in_progress():
          mngr.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        self._raise_write_error(what, mngr, e)

  def _prune_best(self, keep_from: int) -> None:
    for s in self.best.all_steps():
      if s < keep_from:
        self.best.delete(s)

  def wait(self) -> None:
    """Waits for the background writes (CheckpointError if one failed), then prunes `best/`
    below the best model named by the checkpoint now complete. Every process calls it at the
    same points (Orbax deletes with a barrier)."""
    for what, mngr in self._managers():
      try:
        mngr.wait_until_finished()
        mngr.check_for_errors()
      except Exception as e:  # pylint: disable=broad-except
        self._raise_write_error(what, mngr, e)
    if self._pending_best_step is not None:
      self._prune_best(keep_from=self._pending_best_step)
      self._pending_best_step = None

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  # --- Restoring -----------------------------------------------------------------------------

  def _set_aside(self, step: int, label: str = "") -> Optional[epath.Path]:
    """Moves a step out of checkpoints/ so that the run writes it afresh (process 0 moves it;
    every process calls this, so all see the same steps afterwards)."""
    src = self.latest.directory / str(step)
    name = "-".join(p for p in (str(step), label, time.strftime("%Y%m%d-%H%M%S")) if p)
    dst = self.workdir / UNREADABLE_DIR / name
    if jax.process_index() == 0:
      try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
      except OSError:  # left in place: save() replaces an unreadable step when it gets there
        dst = None
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f"kd_jax_set_aside_{step}_{label}")
    self.latest.reload()
    return dst

  def latest_meta(self) -> Optional[tuple[int, dict]]:
    """(step, meta) of the newest checkpoint whose meta is readable, or None. Reads JSON only."""
    return _newest_meta(self.latest)

  def _damaged(self, step: int, why: str) -> str:
    moved = self._set_aside(step)
    msg = (f"checkpoint at step {step} in {self.latest.directory} is damaged ({why})"
           + (f"; moved to {moved}" if moved else ""))
    console.warn(f"{msg}; trying the previous one")
    return msg

  def _check_fit(self, step: int, meta: dict, abstract_state: PyTree) -> None:
    stored = _stored_shapes(self.latest.directory / str(step) / "state")
    problem = misfit(stored, _shapes(abstract_state))
    if problem is None:
      return
    holds = _model_of(meta.get("config") or meta)
    asks = _model_of(self.run_config)
    raise CheckpointMismatchError(
        f"checkpoint at step {step} in {self.latest.directory} holds another model than the "
        f"config asks for: it holds {holds}, the config asks for {asks} ({problem}). Nothing "
        f"was moved: run without the change to resume this run, or use a new --workdir")

  def restore_latest(self, abstract_state: PyTree) -> Optional[tuple[PyTree, dict]]:
    """The newest intact checkpoint (state, meta), or None when there is none at all.

    Damaged newer steps are reported and moved to WORKDIR/unreadable_checkpoints/; a step that
    does not fit `abstract_state` raises CheckpointMismatchError. `best/` is then made to agree
    with the restored meta (see the module docstring).
    """
    errors = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      meta = _stored_meta(self.latest, step)
      if meta is None:
        errors.append(self._damaged(step, "its meta cannot be read"))
        continue
      try:
        self._check_fit(step, meta, abstract_state)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        errors.append(self._damaged(step, f"its array metadata cannot be read: {e!r:.200}"))
        continue
      try:
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))["state"]
      except Exception as e:  # pylint: disable=broad-except
        errors.append(self._damaged(step, f"its arrays cannot be read: {e!r:.200}"))
        continue
      bad = failed_checksums(restored, meta.get("checksums"))
      if bad:
        errors.append(self._damaged(step, f"{len(bad)} arrays fail their checksum, e.g. "
                                          f"{bad[0]}"))
        continue
      self._reconcile_best(meta.get("best_step", -1))
      self.restored_step = step
      self._after_restore()
      return restored, meta
    if errors:
      raise CheckpointError("no intact checkpoint: " + "; ".join(errors))
    self._reconcile_best(-1)
    self._after_restore()
    return None

  def _after_restore(self) -> None:
    if self.after_restore is not None:
      self.after_restore()
      self.after_restore = None

  def _reconcile_best(self, best_step: int) -> None:
    """Drops best models other than `best_step` (-1: none was recorded); says so when best/
    holds none although one is recorded (removed by hand: the run goes on, and its next
    evaluation better than the recorded one saves a new one)."""
    steps = self.best.all_steps()
    for s in steps:
      if s != best_step:
        logging.info("dropping best model of step %d (not in the restored checkpoint)", s)
        self.best.delete(s)
    if best_step >= 0 and not steps:
      console.warn(f"the best model of step {best_step} that the checkpoint records is missing "
                   f"from {self.best.directory}; the next evaluation better than it saves a "
                   f"new one")

  # --- Divergence right after a restore ------------------------------------------------------

  def _fell_back_before(self) -> bool:
    d = self.workdir / UNREADABLE_DIR
    return d.is_dir() and any(f"-{_DIVERGED}-" in p.name for p in d.iterdir())

  def divergence_error(self, *, bad: int, step: int, max_bad_steps: int) -> TrainingError:
    """The error for a run stopped by `max_bad_steps`. A streak that began within
    FALLBACK_WINDOW_STEPS of the restored checkpoint, with a previous checkpoint to go back to
    and no such fall-back in this workdir before, sets the restored checkpoint (and any newer)
    aside and returns DivergedAfterRestore (run_with_fallback runs once more); else the
    TrainingError of divergence_message."""
    r = self.restored_step
    first_bad = step - bad + 1
    older = [s for s in self.latest.all_steps() if r is not None and s < r]
    if r is None or first_bad > r + FALLBACK_WINDOW_STEPS or not older or (
        self._fell_back_before()):
      return TrainingError(divergence_message(self, bad=bad, step=step,
                                              max_bad_steps=max_bad_steps))
    moved = [self._set_aside(s, _DIVERGED) for s in sorted(self.latest.all_steps()) if s >= r]
    where = moved[0].parent if moved and moved[0] is not None else self.workdir / UNREADABLE_DIR
    return DivergedAfterRestore(
        f"{bad} consecutive non-finite training steps from step {first_bad}, right after "
        f"resuming from checkpoint {r}, which was finite when saved: set it aside in {where}; "
        f"resuming once from the previous checkpoint, step {max(older)}, before blaming the "
        f"learning rate")


class DivergedAfterRestore(TrainingError):
  """The run diverged right after its restored checkpoint, which was set aside: run again."""


def run_with_fallback(run: Callable[[], Any]) -> Any:
  """run(); once more (saying so) if it raised DivergedAfterRestore."""
  try:
    return run()
  except DivergedAfterRestore as e:
    console.warn(str(e))
    return run()


# --- Reading a run's variables (teachers, student init, export) ------------------------------


def _is_step_dir(path: epath.Path) -> bool:
  return path.name.isdigit() and path.is_dir()


def best_model_note(workdir: str | os.PathLike) -> str:
  """WORKDIR/best when it holds a best model, else one line saying it is missing."""
  best = epath.Path(workdir) / "best"
  if best.is_dir() and any(_is_step_dir(p) for p in best.iterdir()):
    return os.fspath(best)
  return (f"missing ({os.fspath(best)} holds no best model; the last state is in "
          f"{os.fspath(epath.Path(workdir) / 'checkpoints')})")


def _restore_item(path: epath.Path, item: str) -> tuple[PyTree, str]:
  """(variables, where) of the newest step under `path`, checked against its checksums."""
  mngr = _manager(path, None, read_only=True)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(path)
  where = os.fspath(path / str(step))
  meta = _stored_meta(mngr, step) or {}
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore()}))[item]
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{where} is damaged: its arrays cannot be read ({e!r:.200})"
                          ) from None
  variables = {"params": restored["params"], "batch_stats": restored.get("batch_stats", {})}
  variables = jax.tree.map(np.asarray, variables)
  bad = failed_checksums(variables, meta.get("checksums"), ("params.", "batch_stats."))
  if bad:
    raise CheckpointError(f"{where} is damaged: {len(bad)} arrays fail their checksum, e.g. "
                          f"{bad[0]}")
  return variables, where


def restore_variables(directory: str, which: str = "auto") -> tuple[PyTree, str]:
  """Student variables {'params', 'batch_stats'} of a kd_jax run, as numpy arrays.

  `directory` is a run's workdir, or its `best/` or `checkpoints/` subdirectory. For a workdir,
  `which` picks 'latest' (the last saved state), 'best' (the best-eval student), or 'auto'
  (the best model when the run recorded one, else latest). A best model asked for (or recorded
  for 'auto') that is missing from best/ is a CheckpointError, never silently the last state.
  Returns the variables and the path they came from.
  """
  if which not in ("auto", "latest", "best"):
    raise ValueError(f"which={which!r}; accepted: 'auto', 'latest', 'best'")
  directory = _path(directory)
  best_dir, latest_dir = directory / "best", directory / "checkpoints"
  if not best_dir.is_dir() and not latest_dir.is_dir():  # a best/ or checkpoints/ itself
    if directory.is_dir() and any(_is_step_dir(p) for p in directory.iterdir()):
      return _restore_item(directory, "variables" if directory.name == "best" else "state")
    raise CheckpointError(
        f"no kd_jax checkpoint found under {directory} (looked for best/ and checkpoints/ "
        f"step directories); pass a kd_jax run workdir (WORKDIR for its last state, "
        f"WORKDIR:best for its best), a PyTorch .pth file or a .msgpack file")
  has_best = best_dir.is_dir() and any(_is_step_dir(p) for p in best_dir.iterdir())
  has_latest = latest_dir.is_dir() and any(_is_step_dir(p) for p in latest_dir.iterdir())
  if which in ("auto", "best"):
    if has_best:
      return _restore_item(best_dir, "variables")
    newest = _newest_meta(_manager(latest_dir, None, read_only=True)) if has_latest else None
    recorded = newest[1].get("best_step", -1) if newest else -1
    if which == "best" or (recorded is not None and recorded >= 0):
      record = (f"; its checkpoint of step {newest[0]} records one at step {recorded}"
                if recorded is not None and recorded >= 0 else "")
      raise CheckpointError(
          f"{directory} holds no best model ({best_dir} is missing or empty{record}); pass "
          f"{directory}:latest to use its last state")
  if has_latest:
    return _restore_item(latest_dir, "state")
  raise CheckpointError(f"no kd_jax checkpoint found under {directory}: {latest_dir} holds no "
                        f"step directories")


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
