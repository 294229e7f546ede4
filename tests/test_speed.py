"""The accelerator path on CPU (forced lax.scan) and the exact teacher-logit table (issue 14)."""
import os
import sys

import jax
import numpy as np
import pytest

from kd_jax.train import loop
from kd_jax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import smoke  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_config(method: str = "kd", num_devices: int = 1, steps: int = 8):
  config = smoke.get_config(method)
  config.train_examples = 64
  config.eval_examples = 32
  config.num_train_steps = steps
  config.log_every_steps = 4
  config.checkpoint_every_steps = 4
  config.steps_per_dispatch = 4
  config.eval_batch_size = 16
  config.num_devices = num_devices
  return config


def _setup(config):
  mesh = loop.make_mesh(config)
  data = loop._setup_data(config, mesh)  # pylint: disable=protected-access
  trainer = loop.build_trainer(config, mesh, steps_per_epoch=data.steps_per_epoch,
                               total_steps=config.num_train_steps, in_memory=True,
                               mean=data.mean, std=data.std)
  return mesh, data, trainer


def _assert_states_close(a, b, rtol=2e-5, atol=1e-6):
  a, b = jax.device_get((a, b))
  assert int(a.step) == int(b.step)
  paths_a = jax.tree_util.tree_flatten_with_path((a.params, a.batch_stats, a.metric_sums))[0]
  leaves_b = jax.tree.leaves((b.params, b.batch_stats, b.metric_sums))
  assert len(paths_a) == len(leaves_b)
  for (path, x), y in zip(paths_a, leaves_b):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("method", ["kd"])
def test_forced_scan_equals_per_step_calls(method):
  """The multi-step lax.scan (the GPU/TPU path) on CPU gives the per-step path's state."""
  config = tiny_config(method)
  _, data, trainer = _setup(config)
  per_step = step_lib.make_train_fn(trainer.spec, 4)
  scanned = step_lib.make_train_fn(trainer.spec, 4, force_scan=True)
  s1 = per_step(trainer.init_state(), trainer.teacher_vars, data.train)
  s2 = scanned(trainer.init_state(), trainer.teacher_vars, data.train)
  assert int(jax.device_get(s1.metric_count)) == 4
  # The first step alone changes the parameters: the comparison is not between two no-ops.
  s0 = step_lib.make_train_fn(trainer.spec, 1)(trainer.init_state(), trainer.teacher_vars,
                                               data.train)
  first = jax.tree.leaves(jax.device_get(s0.params))[0]
  init = jax.tree.leaves(jax.device_get(trainer.init_state().params))[0]
  assert np.abs(first - init).max() > 1e-6
  _assert_states_close(s1, s2)
