"""Methods as loss composition: weights, warm-up, schedules and DHKD gradient alignment."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config as kdc
from kd_jax import losses
from kd_jax import methods
from kd_jax import models
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib

B, C = 4, 10
S = jax.random.normal(jax.random.PRNGKey(0), (B, C)) * 2
T = jax.random.normal(jax.random.PRNGKey(1), (B, C)) * 2
A = jax.random.normal(jax.random.PRNGKey(2), (B, C))
Y = jnp.array([0, 3, 5, 9])


def spec_for(method, base="kd", **loss):
  config = kdc.method_defaults(kdc.base_config(), method, base_method=base)
  for k, v in loss.items():
    config.loss[k] = v
  return methods.LossSpec.from_config(config)


def test_warmup_factor_is_per_epoch_and_capped():
  f = [float(methods.warmup_factor(jnp.array(e), 20)) for e in (1, 5, 20, 40)]
  np.testing.assert_allclose(f, [0.05, 0.25, 1.0, 1.0])
  assert float(methods.warmup_factor(jnp.array(1), 0)) == 1.0


def test_kd_terms():
  terms = methods.loss_terms(spec_for("kd"), S, Y, T, None, jnp.array(1))
  np.testing.assert_allclose(terms["ce"], 0.1 * np.mean(losses.cross_entropy(S, Y)), rtol=1e-6)
  np.testing.assert_allclose(terms["kd"], 0.9 * np.mean(losses.kd(S, T, temperature=4.0)),
                             rtol=1e-6)


def test_dkd_terms_with_warmup():
  terms = methods.loss_terms(spec_for("dkd", beta=6.0), S, Y, T, None, jnp.array(5))
  full = np.mean(losses.dkd(S, T, Y, alpha=1.0, beta=6.0, temperature=4.0))
  np.testing.assert_allclose(terms["tckd"] + terms["nckd"], 0.25 * full, rtol=1e-5)
  np.testing.assert_allclose(terms["ce"], np.mean(losses.cross_entropy(S, Y)), rtol=1e-6)


def test_rld_with_logit_standardization():
  spec = spec_for("rld", standardize=True, temperature=2.0, alpha=9.0, beta=72.0)
  terms = methods.loss_terms(spec, S, Y, T, None, jnp.array(30))
  expected = np.mean(losses.rld(S, T, Y, alpha=9.0, beta=72.0, temperature=2.0,
                                standardize=True))
  np.testing.assert_allclose(terms["scd"] + terms["mcd"], expected, rtol=1e-5)


def test_dhkd_uses_aux_head_and_turns_off():
  spec = dataclasses.replace(spec_for("dhkd"), bkln_until_epoch=50, bkln_weight=0.1)
  on = methods.loss_terms(spec, S, Y, T, A, jnp.array(49))
  off = methods.loss_terms(spec, S, Y, T, A, jnp.array(50))
  np.testing.assert_allclose(on["bkln"], 0.1 * np.mean(losses.binary_kl_norm(A, T)), rtol=1e-6)
  assert float(off["bkln"]) == 0.0
  # CE stays on the main head.
  np.testing.assert_allclose(on["ce"], np.mean(losses.cross_entropy(S, Y)), rtol=1e-6)


@pytest.mark.parametrize("base", ["kd", "dkd", "rld"])
def test_rkkd_adds_rank_term_to_any_base(base):
  spec = spec_for("rkkd", base=base)
  terms = methods.loss_terms(spec, S, Y, T, None, jnp.array(40))
  base_terms = methods.loss_terms(spec_for(base), S, Y, T, None, jnp.array(40))
  assert set(terms) == set(base_terms) | {"rank"}
  for k in base_terms:
    np.testing.assert_allclose(terms[k], base_terms[k], rtol=1e-6)
  np.testing.assert_allclose(terms["rank"], spec.rank_weight * np.mean(
      losses.rank_kendall(S, T, steepness=100.0)), rtol=1e-5)
  assert spec.rank_weight == {"kd": 0.9, "dkd": 1.0, "rld": 1.0}[base]


def test_teacher_gets_no_gradient():
  def total(t):
    return sum(methods.loss_terms(spec_for("rkkd", base="dkd"), S, Y, t, None,
                                  jnp.array(30)).values())
  g = jax.grad(total)(T)
  assert float(jnp.abs(g).max()) == 0.0


def test_gradient_alignment_matches_hand_projection():
  g1 = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([[0.0]])}
  g2 = {"a": jnp.array([-1.0, 1.0]), "b": jnp.array([[2.0]])}
  out = step_lib._project_conflict(g1, g2)  # pylint: disable=protected-access
  # <g2,g1> = -1 < 0, ||g1||^2 = 1: g2' = g2 + g1 = [0, 1, 2]; result g1 + g2' = [1, 1, 2].
  np.testing.assert_allclose(out["a"], [1.0, 1.0])
  np.testing.assert_allclose(out["b"], [[2.0]])
  # No conflict: plain sum.
  out = step_lib._project_conflict(g1, {"a": jnp.array([1.0, 1.0]), "b": jnp.array([[0.0]])})
  np.testing.assert_allclose(out["a"], [2.0, 1.0])
  # g1 = 0: no projection, no NaN.
  zero = jax.tree.map(jnp.zeros_like, g1)
  out = step_lib._project_conflict(zero, g2)
  np.testing.assert_allclose(out["a"], g2["a"])


def test_multistep_schedule_matches_per_epoch_rule():
  config = kdc.base_config()
  spe = 10
  sched = state_lib.learning_rate_schedule(config, spe, 240 * spe)
  # lr(e) = 0.05 * 0.1^#{m in (150,180,210): e > m}, epoch e = step // spe + 1.
  for step in (0, 1499, 1500, 1799, 1800, 2100, 2399):
    e = step // spe + 1
    want = 0.05 * 0.1 ** sum(e > m for m in (150, 180, 210))
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-6)


def test_sgd_matches_torch_semantics():
  # torch.optim.SGD(lr, momentum, weight_decay): g += wd*p; buf = m*buf + g; p -= lr*buf.
  config = kdc.base_config()
  tx = state_lib.make_optimizer(config, lambda _: 0.1)
  p = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(p)
  buf = np.zeros(2)
  ref = np.array([1.0, -2.0])
  for g in ([0.5, 0.1], [-0.3, 0.2]):
    upd, state = tx.update({"w": jnp.array(g)}, state, p)
    p = jax.tree.map(lambda a, b: a + b, p, upd)
    gg = np.array(g) + 5e-4 * ref
    buf = 0.9 * buf + gg
    ref = ref - 0.1 * buf
  np.testing.assert_allclose(p["w"], ref, rtol=1e-6)


@pytest.fixture
def toy_method():
  """A test-local method: CE + weight * mean squared logit difference, registered for one test."""
  def terms(spec, x):
    return {"mse": x.warmup * spec.kd_weight * jnp.mean((x.logits - x.teacher) ** 2)}
  methods.register(methods.Method(
      name="toy_mse", summary="CE + kd_weight * mean (z_s - z_t)^2", terms=terms,
      needs_teacher=True, cifar={"loss.ce_weight": 0.5, "loss.kd_weight": 0.25},
      distill_weight="kd_weight"))
  yield "toy_mse"
  methods.unregister("toy_mse")


def test_a_new_method_is_one_record(toy_method, tmp_path):
  """Registered without touching config.py: defaults, validation, plug-in, training all work."""
  from kd_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = kdc.method_defaults(kdc.base_config(), toy_method)
  assert (config.method, config.loss.ce_weight, config.loss.kd_weight) == (toy_method, 0.5, 0.25)
  # The plug-in takes it as a base, with the ranking weight = its distillation weight.
  rk = kdc.method_defaults(kdc.base_config(), "rkkd", base_method=toy_method)
  assert (rk.base_method, rk.loss.rank_weight) == (toy_method, 0.25)
  spec = methods.LossSpec.from_config(config)
  terms = methods.loss_terms(spec, S, Y, T, None, jnp.array(1))
  np.testing.assert_allclose(terms["mse"], 0.25 * np.mean((np.asarray(S) - np.asarray(T)) ** 2),
                             rtol=1e-6)
  np.testing.assert_allclose(terms["ce"], 0.5 * np.mean(losses.cross_entropy(S, Y)), rtol=1e-6)
  # End to end on synthetic data: the step logs the new term and the loss is their sum.
  config.update(dict(dataset="synthetic", num_classes=100, train_examples=64, eval_examples=16,
                     student="resnet8", teacher="resnet8", teacher_checkpoint="random:0",
                     batch_size=16, eval_batch_size=16, num_train_steps=4, log_every_steps=2,
                     checkpoint_every_steps=4, num_devices=1))
  kdc.validate(config, model_names=models.names(), num_devices=1)
  result = loop.train_and_evaluate(config, str(tmp_path))
  assert result.step == 4
  with open(tmp_path / "metrics.jsonl") as f:
    lines = [json.loads(l) for l in f]
  logged = [l for l in lines if "train/mse" in l]
  assert [l["step"] for l in logged] == [2, 4]
  for l in logged:
    assert l["train/loss"] == pytest.approx(l["train/ce"] + l["train/mse"], rel=1e-5)


def test_unknown_method_lists_the_registered_ones():
  with pytest.raises(ValueError, match=r"config.method='nope'.*'kd', 'dkd'"):
    kdc.method_defaults(kdc.base_config(), "nope")
