"""Training state, optimizer and learning-rate schedules.

The state is one pytree (checkpointed whole): student params and BatchNorm statistics, optimizer
state, step, the run's base RNG, metric sums since the last log, and the non-finite-step counters.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array                 # int32 scalar: steps taken (and batches consumed)
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  rng: jax.Array                  # base key; step keys are fold_in(rng, step)
  metric_sums: dict[str, jax.Array]   # sums of per-step metrics since the last log
  metric_count: jax.Array         # number of (finite) steps in metric_sums
  bad_streak: jax.Array           # consecutive non-finite steps
  skipped: jax.Array              # total skipped (non-finite) steps


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
                 rng: jax.Array, metric_names: tuple[str, ...]) -> TrainState:
  # Distinct buffers per leaf, so the state can be donated even when built outside jit.
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params), rng=rng,
      metric_sums={name: jnp.zeros((), jnp.float32) for name in metric_names},
      metric_count=jnp.zeros((), jnp.int32), bad_streak=jnp.zeros((), jnp.int32),
      skipped=jnp.zeros((), jnp.int32))
