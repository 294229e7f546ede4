"""Orbax checkpoints of a run: the latest few under WORKDIR/checkpoints, the best student under WORKDIR/best.

Orbax writes each step to a temporary directory and renames it when complete, so a checkpoint is
complete or absent. Restoring walks back from the latest step past unreadable ones, saying so.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from kd_jax import console
from kd_jax.errors import CheckpointError

PyTree = Any


def _manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _is_finite(tree: PyTree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


class Checkpointer:
  """Saves/restores the full TrainState plus JSON metadata; keeps the best student apart."""

  def __init__(self, workdir: str, keep: int):
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep)
    self.best = _manager(os.path.join(workdir, "best"), 1)

  def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
    """Saves `state` at `step`; refuses a non-finite state (never stores NaN)."""
    if not _is_finite(state.params) or not _is_finite(state.batch_stats):
      raise CheckpointError(f"refusing to save a non-finite state at step {step}")
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def save_best(self, step: int, variables: PyTree, meta: dict[str, Any]) -> None:
    """Student variables {'params','batch_stats'} of the best eval top-1 so far."""
    if not _is_finite(variables):
      raise CheckpointError(f"refusing to save a non-finite best model at step {step}")
    self.best.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, abstract_state: PyTree) -> Optional[tuple[PyTree, dict]]:
    """The newest readable checkpoint (state, meta), or None when there is none at all."""
    steps = sorted(self.latest.all_steps(), reverse=True)
    errors = []
    for step in steps:
      try:
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        msg = f"checkpoint at step {step} in {self.latest.directory} is unreadable ({e!r:.300})"
        logging.warning("%s; trying the previous one", msg)
        console.warn(f"{msg}; trying the previous one")
        errors.append(msg)
        continue
      return restored["state"], dict(restored["meta"])
    if errors:
      raise CheckpointError("no readable checkpoint: " + "; ".join(errors))
    return None

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_variables(directory: str, which: str = "auto") -> tuple[PyTree, str]:
  """Student variables {'params', 'batch_stats'} of a kd_jax run, as numpy arrays.

  `directory` is a run's workdir, or its `best/` or `checkpoints/` subdirectory. For a workdir,
  `which` picks 'latest' (the last saved state), 'best' (the best-eval student), or 'auto'
  (best if there is one, else latest). Returns the variables and the path they came from.
  """
  if which not in ("auto", "latest", "best"):
    raise ValueError(f"which={which!r}; accepted: 'auto', 'latest', 'best'")
  directory = os.path.abspath(directory)
  best = (os.path.join(directory, "best"), "variables")
  latest = (os.path.join(directory, "checkpoints"), "state")
  order = {"auto": [best, latest], "latest": [latest], "best": [best]}[which]
  candidates = [c for c in order if os.path.isdir(c[0])]
  if not os.path.isdir(best[0]) and not os.path.isdir(latest[0]):
    kind = "variables" if os.path.basename(directory.rstrip("/")) == "best" else "state"
    candidates.append((directory, kind))
  for path, item in candidates:
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
    return variables, os.path.join(path, str(step))
  looked = {"auto": "best/ and checkpoints/", "latest": "checkpoints/", "best": "best/"}[which]
  raise CheckpointError(
      f"no kd_jax checkpoint found under {directory} (looked for {looked} step directories); "
      f"pass a kd_jax run workdir (WORKDIR for its last state, WORKDIR:best for its best), a "
      f"PyTorch .pth file or a .msgpack file")
