"""Where kd_jax and the PyTorch reference trainers could differ, checked to agree.

BatchNorm running variance (unbiased, as torch), DHKD auxiliary-head init per family, and an LR
that follows the run's step even when a non-finite step was skipped.
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yardstick  # pylint: disable=g-import-not-at-top

from kd_jax import methods
from kd_jax import models
from kd_jax.models import layers
from kd_jax.train import loop
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import smoke  # pylint: disable=g-import-not-at-top,wrong-import-position


# ------------------------------------------------------------------ (a) BatchNorm statistics


def test_batch_norm_running_variance_is_unbiased_like_torch():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=(3, 2, 2, 5)).astype(np.float32)  # n = 12 per channel
  bn = layers.batch_norm(True, name="bn")
  v = bn.init(jax.random.key(0), jnp.zeros((1, 2, 2, 5)))
  y, upd = bn.apply(v, jnp.asarray(x), mutable=["batch_stats"])
  flat = x.reshape(-1, 5)
  # Hand computation of torch.nn.BatchNorm2d(momentum=0.1) on a fresh layer.
  want_mean = 0.1 * flat.mean(0)
  want_var = 0.9 * 1.0 + 0.1 * flat.var(0, ddof=1)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], want_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(upd["batch_stats"]["var"], want_var, rtol=1e-5)
  # Normalisation itself uses the biased variance (both frameworks).
  want_y = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 5), want_y, rtol=1e-4, atol=1e-5)
  # Eval mode uses the running statistics.
  y_eval = layers.batch_norm(False, name="bn").apply(
      {"params": v["params"], "batch_stats": upd["batch_stats"]}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y_eval).reshape(-1, 5),
                             (flat - want_mean) / np.sqrt(want_var + 1e-5), rtol=1e-4, atol=1e-5)


def test_batch_norm_matches_torch_module():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).normal(size=(4, 3, 3, 6)).astype(np.float32)
  tbn = torch.nn.BatchNorm2d(6).train()
  with torch.no_grad():
    ty = tbn(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  bn = layers.batch_norm(True, name="bn")
  v = bn.init(jax.random.key(0), jnp.zeros((1, 3, 3, 6)))
  y, upd = bn.apply(v, jnp.asarray(x), mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(y), ty.numpy().transpose(0, 2, 3, 1), rtol=1e-4,
                             atol=1e-5)
  # Written bound: the running mean is 0.1 x a float32 mean of 36 values on each side
  # (yardstick.gamma(36) of the mean |x|), plus a rounding of the blend.
  mean_abs = float(np.abs(x).reshape(-1, 6).mean(0).max())
  np.testing.assert_allclose(upd["batch_stats"]["mean"], tbn.running_mean.numpy(), rtol=0,
                             atol=2 * 0.1 * (yardstick.gamma(36) + yardstick.ulps(2)) * mean_abs)
  np.testing.assert_allclose(upd["batch_stats"]["var"], tbn.running_var.numpy(), rtol=1e-5)


# ------------------------------------------------------------------ (b) DHKD aux-head init


def _aux_params(name: str, aux: str):
  model = models.create(name, 100, aux_head=aux)
  return models.init(model, jax.random.key(3), 32)["params"]["aux_head"]


@pytest.mark.parametrize("name", ["vgg8", "MobileNetV2"])
def test_aux_head_of_vgg_and_mobilenetv2_gets_their_linear_init(name):
  lin = _aux_params(name, "linear")
  np.testing.assert_allclose(float(np.std(lin["kernel"])), 0.01, rtol=0.1)
  np.testing.assert_array_equal(lin["bias"], 0.0)
  nonlin = _aux_params(name, "nonlinear")
  for layer in ("net_0", "net_4"):
    np.testing.assert_allclose(float(np.std(nonlin[layer]["kernel"])), 0.01, rtol=0.15)
    np.testing.assert_array_equal(nonlin[layer]["bias"], 0.0)


def test_aux_head_of_wrn_has_zero_biases_and_default_weights():
  lin = _aux_params("wrn_16_1", "linear")  # pooled width 64
  bound = 1 / math.sqrt(64)
  w = np.abs(np.asarray(lin["kernel"]))
  assert w.max() <= bound and w.max() > 0.9 * bound  # U(+-1/sqrt(fan_in)), not N(0, 0.01)
  np.testing.assert_array_equal(lin["bias"], 0.0)
  nonlin = _aux_params("wrn_16_1", "nonlinear")
  np.testing.assert_array_equal(nonlin["net_0"]["bias"], 0.0)
  np.testing.assert_array_equal(nonlin["net_4"]["bias"], 0.0)


@pytest.mark.parametrize("name", ["resnet8", "ShuffleV2"])
def test_aux_head_of_resnet_and_shufflenet_keeps_torch_default(name):
  lin = _aux_params(name, "linear")
  fan_in = lin["kernel"].shape[0]
  bound = 1 / math.sqrt(fan_in)
  b = np.abs(np.asarray(lin["bias"]))
  assert b.max() <= bound and b.max() > 0.5 * bound
  w = np.abs(np.asarray(lin["kernel"]))
  assert w.max() <= bound and w.max() > 0.9 * bound


# ------------------------------------------------------------------ (d) LR vs skipped steps


def _spec(steps_per_epoch: int):
  config = smoke.get_config("ce")
  config.num_devices = 1
  config.student = "resnet8"
  config.num_classes = 10
  config.learning_rate = 0.1
  config.lr_decay = 0.1
  config.lr_milestones = (1,)
  config.schedule = "multistep"
  config.lr_warmup_epochs = 0
  config.momentum = 0.9
  config.weight_decay = 5e-4
  mesh = loop.make_mesh(config)
  student = models.create("resnet8", 10)
  schedule = state_lib.learning_rate_schedule(config, steps_per_epoch, 4 * steps_per_epoch)
  tx = state_lib.make_optimizer(config)
  loss = methods.LossSpec.from_config(config)
  spec = step_lib.StepSpec(student=student, teacher=None, tx=tx, schedule=schedule, loss=loss,
                           steps_per_epoch=steps_per_epoch, batch_size=4, seed=0,
                           in_memory=False, mean=(0.5,) * 3, std=(0.25,) * 3, max_bad_steps=3,
                           mesh=mesh)
  v = student.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  state = state_lib.create_state(v["params"], v["batch_stats"], tx, jax.random.PRNGKey(2),
                                 step_lib.metric_names(loss))
  return spec, state


def test_skipped_step_does_not_shift_the_lr_schedule():
  """Epoch 1 = step 0 at LR 0.1, epoch 2 = step 1 at 0.01 (one step per epoch).

  A NaN batch at step 0 is skipped; the next step is still the epoch-2 step and must use 0.01,
  so from the same params and momentum its update is exactly a tenth of an epoch-1 update.
  """
  spec, state = _spec(1)
  fn = step_lib.make_train_fn(spec, 1)
  rng = np.random.default_rng(0)
  good = {"image": rng.normal(size=(1, 4, 16, 16, 3)).astype(np.float32),
          "label": np.array([[1, 2, 3, 4]], np.int32)}
  bad = {"image": good["image"].copy(), "label": good["label"]}
  bad["image"][0, 0, 0, 0, 0] = np.nan
  p0 = jax.device_get(state.params)
  fresh = jax.tree.map(jnp.array, state)
  skipped = fn(state, {}, bad)
  assert int(skipped.step) == 1 and int(skipped.skipped) == 1
  after_skip = jax.device_get(fn(skipped, {}, good).params)
  first = jax.device_get(fn(fresh, {}, good).params)
  d_skip = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(after_skip),
                                                           jax.tree.leaves(p0))])
  d_first = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(first),
                                                            jax.tree.leaves(p0))])
  assert np.abs(d_first).max() > 0
  # Without the fix the ratio is 1 (optax's count froze at the skipped step).
  ratio = np.linalg.norm(d_skip) / np.linalg.norm(d_first)
  np.testing.assert_allclose(ratio, 0.1, rtol=1e-4)
  np.testing.assert_allclose(d_skip, 0.1 * d_first, atol=3e-7)  # float32 round-off of p + d
