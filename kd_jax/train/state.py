"""Training state, optimizer and learning-rate schedules.

The state is one pytree (checkpointed whole): student params and BatchNorm statistics, optimizer
state, step, the run's base RNG, metric sums since the last log, the non-finite-step counters,
and the learnable loss parameters of the run's methods with their optimizer state (empty for a
method without any).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


@dataclasses.dataclass(frozen=True)
class TrainState:
  """The whole training state (a pytree: see `_flatten_with_keys` for its checkpoint layout)."""
  step: jax.Array                 # int32 scalar: steps taken (and batches consumed)
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  rng: jax.Array                  # base key; step keys are fold_in(rng, step)
  metric_sums: dict[str, jax.Array]   # sums of per-step metrics since the last log
  metric_count: jax.Array         # number of (finite) steps in metric_sums
  bad_streak: jax.Array           # consecutive non-finite steps
  skipped: jax.Array              # total skipped (non-finite) steps
  loss_params: PyTree = None      # {method: learnable loss parameters} ({} for most methods)
  loss_opt_state: PyTree = None   # the same optimizer's state for loss_params

  def replace(self, **changes: Any) -> "TrainState":
    return dataclasses.replace(self, **changes)


_STUDENT_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng", "metric_sums",
                   "metric_count", "bad_streak", "skipped")
_LOSS_FIELDS = ("loss_params", "loss_opt_state")


def _flatten_with_keys(state: TrainState):
  """Children by field name. Without learnable loss parameters (loss_params == {}), the loss
  fields are static (kept in the treedef), so such a state, and its checkpoints, have exactly
  the layout of a state that has no loss fields at all."""
  fields = _STUDENT_FIELDS
  loss = tuple(getattr(state, n) for n in _LOSS_FIELDS)
  aux = jax.tree.structure(loss)
  if state.loss_params:
    fields, aux = fields + _LOSS_FIELDS, None
  return [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in fields], aux


def _unflatten(aux, children) -> TrainState:
  if aux is None:
    return TrainState(*children)
  return TrainState(*children, *jax.tree.unflatten(aux, []))


jax.tree_util.register_pytree_with_keys(
    TrainState, _flatten_with_keys, _unflatten,
    flatten_func=lambda s: (lambda c, a: ([v for _, v in c], a))(*_flatten_with_keys(s)))


def learning_rate_schedule(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Per-epoch multi-step decay (lr(e) = base * decay^#{m : e > m}) or cosine, in steps.

  Boundaries fall on the first step of epoch m + 1, as the references apply the LR per epoch.
  An optional linear warm-up over `lr_warmup_epochs` precedes either.
  """
  base = config.learning_rate
  if config.schedule == "multistep":
    boundaries = {int(m) * steps_per_epoch: config.lr_decay for m in config.lr_milestones}
    main = optax.piecewise_constant_schedule(base, boundaries)
  else:
    main = optax.cosine_decay_schedule(base, max(total_steps, 1))
  warm = int(config.lr_warmup_epochs * steps_per_epoch)
  if not warm:
    return main
  ramp = optax.linear_schedule(0.0, base, warm)
  return optax.join_schedules([ramp, lambda s: main(s + warm)], [warm])


def make_optimizer(config) -> optax.GradientTransformation:
  """torch.optim.SGD semantics without the LR: coupled L2 decay on all params, then momentum.

  The step multiplies the result by -schedule(state.step) (`apply_learning_rate`), so the LR
  is a function of the run's step (hence of its epoch) as in the reference trainers, and a
  skipped non-finite step does not shift the milestones (optax's own count would freeze).
  """
  parts = [optax.add_decayed_weights(config.weight_decay)]
  # A swept momentum is a traced value (train/sweep.py): always keep the trace then.
  if not isinstance(config.momentum, (int, float)) or config.momentum:
    parts.append(optax.trace(decay=config.momentum, nesterov=config.nesterov))
  return optax.chain(*parts)


def apply_learning_rate(updates: PyTree, lr: jax.Array) -> PyTree:
  """Descent direction -> parameter deltas: -lr * updates, in each leaf's dtype."""
  return jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)


def create_state(params: PyTree, batch_stats: PyTree, tx: optax.GradientTransformation,
                 rng: jax.Array, metric_names: tuple[str, ...],
                 loss_params: PyTree = None) -> TrainState:
  """A fresh state; loss_params: the run's learnable loss parameters
  (`methods.init_loss_params(spec)`; None: none), optimized by `tx` like the student's."""
  loss_params = {} if loss_params is None else loss_params
  # Distinct buffers per leaf, so the state can be donated even when built outside jit.
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params), rng=rng,
      metric_sums={name: jnp.zeros((), jnp.float32) for name in metric_names},
      metric_count=jnp.zeros((), jnp.int32), bad_streak=jnp.zeros((), jnp.int32),
      skipped=jnp.zeros((), jnp.int32), loss_params=loss_params,
      loss_opt_state=tx.init(loss_params))
