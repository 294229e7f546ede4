"""The in-memory training batch of a step spec, for the tests of methods' views: a spec without
models around a record's views, a 16-image uint8 split, and its step-3 batch per view."""
import types

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import methods
from kd_jax.train import step as step_lib

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def spec_of(config, augment: str = "pad_crop_flip") -> step_lib.StepSpec:
  """A StepSpec that only batches: the config's loss records, batch 8, one device."""
  return step_lib.StepSpec(
      student=None, teacher=None, tx=None, schedule=None,
      loss=methods.LossSpec.from_config(config), steps_per_epoch=4, batch_size=8, seed=0,
      in_memory=True, mean=MEAN, std=STD, max_bad_steps=3,
      mesh=jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)),
      augment=augment)


def split(num: int = 16, size: int = 32) -> tuple[jax.Array, jax.Array]:
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.integers(0, 256, (num, size, size, 3), np.uint8)),
          jnp.asarray(rng.integers(0, 100, (num,), np.int32)))


def batch(spec: step_lib.StepSpec, data, step: int = 3):
  """The images of step `step`'s batch: an array (one view) or {view name: array}."""
  state = types.SimpleNamespace(step=jnp.int32(step), rng=jax.random.PRNGKey(0))
  return jax.jit(lambda *d: step_lib._in_memory_batch(spec, state, *d)[0])(*data)  # pylint: disable=protected-access
