"""CTKD, MLKD and DIST as records: their terms against hand computations, their views, their
config files and sources, and CTKD's learned temperature through training, logging and resume."""
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kd_jax import config as kdc
from kd_jax import errors
from kd_jax import losses
from kd_jax import methods
from kd_jax import models
from kd_jax.train import step as step_lib

import view_batches
import yardstick

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, C = 6, 10
S = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (B, C))) * 2
T = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (B, C))) * 2
S2 = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (B, C))) * 2
T2 = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (B, C))) * 2
Y = np.array([0, 3, 5, 9, 1, 1])


def config_file(name, arg=None):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}",
                                                os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _softmax(z, t):
  z = np.asarray(z, np.float64) / t
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _kl_t2(s, t, temp):
  """T^2 KL(softmax(t/T) || softmax(s/T)) per row, float64."""
  p, q = _softmax(t, temp), _softmax(s, temp)
  return temp ** 2 * np.sum(p * (np.log(p) - np.log(q)), -1)


def _pearson(a, b, axis):
  a = a - a.mean(axis, keepdims=True)
  b = b - b.mean(axis, keepdims=True)
  return (a * b).sum(axis) / (np.sqrt((a * a).sum(axis)) * np.sqrt((b * b).sum(axis)) + 1e-8)


def test_dist_terms_by_hand():
  """kd_weight * beta * mean_i tau^2 (1 - rho_i) and kd_weight * gamma * tau^2 (1 - mean_c rho_c),
  with the record's defaults (CE 1, weight 2, tau 4) and beta/gamma set apart."""
  config = config_file("dist")
  config.loss.dist_beta, config.loss.dist_gamma = 0.5, 3.0
  spec = methods.LossSpec.from_config(config)
  terms = methods.loss_terms(spec, jnp.asarray(S), jnp.asarray(Y), jnp.asarray(T), None,
                             jnp.array(1))
  ys, yt = _softmax(S, 4.0), _softmax(T, 4.0)
  inter = 16.0 * (1 - _pearson(ys, yt, 1))
  intra = 16.0 * (1 - _pearson(ys, yt, 0).mean())
  np.testing.assert_allclose(terms["dist_inter"], 2.0 * 0.5 * inter.mean(), rtol=1e-5)
  np.testing.assert_allclose(terms["dist_intra"], 2.0 * 3.0 * intra, rtol=1e-5)
  ce = -np.log(_softmax(S, 1.0)[np.arange(B), Y])
  np.testing.assert_allclose(terms["ce"], ce.mean(), rtol=1e-5)   # CE weight 1
  assert spec.term_names == ("ce", "dist_inter", "dist_intra")


def _ctkd_loss(spec, raw, epoch, s=S, t=T):
  terms = methods.loss_terms(spec, jnp.asarray(s), jnp.asarray(Y), jnp.asarray(t), None,
                             jnp.array(epoch), loss_params={"ctkd": {"raw": raw}})
  return methods.total_loss(spec, terms), terms


@pytest.mark.parametrize("base", ["kd", "dkd"])
def test_ctkd_temperature_term_and_reversed_gradient(base):
  """tau = 1 + 20 sigmoid(r); the term at that tau; d loss / d r = -lambda(e) d term / d r
  (finite differences of the hand-computed term), lambda(5) = 0.5 by the cosine curriculum."""
  config = config_file("ctkd", "dkd" if base == "dkd" else None)
  spec = methods.LossSpec.from_config(config)
  raw = 0.3
  (_, terms), g = jax.value_and_grad(lambda r: _ctkd_loss(spec, r, 5), has_aux=True)(
      jnp.float32(raw))
  tau = lambda r: 1.0 + 20.0 / (1.0 + math.exp(-r))
  assert float(terms["temperature"]) == pytest.approx(tau(raw), rel=1e-6)

  def by_hand(r):
    if base == "kd":   # 0.9 KD(tau)
      return 0.9 * _kl_t2(S, T, tau(r)).mean()
    # 1 * TCKD + 2 * NCKD at tau (DKD: binary target/other split, then the other classes)
    p, q = _softmax(T, tau(r)), _softmax(S, tau(r))
    pt, qt = p[np.arange(B), Y], q[np.arange(B), Y]
    tckd = pt * np.log(pt / qt) + (1 - pt) * np.log((1 - pt) / (1 - qt))
    mask = np.ones_like(p, bool)
    mask[np.arange(B), Y] = False
    pn = np.where(mask, p, 0) / (1 - pt)[:, None]
    qn = np.where(mask, q, 0) / (1 - qt)[:, None]
    nckd = np.sum(np.where(mask, pn * np.log(np.where(mask, pn, 1) / np.where(mask, qn, 1)), 0),
                  -1)
    return tau(r) ** 2 * (1.0 * tckd + 2.0 * nckd).mean()

  distill = float(terms["kd"] + terms["tckd"] + terms["nckd"])
  np.testing.assert_allclose(distill, by_hand(raw), rtol=1e-5)
  if base == "kd":
    assert float(terms["tckd"]) == float(terms["nckd"]) == 0.0
  else:
    assert float(terms["kd"]) == 0.0   # the DKD line's -a 0
  h = 1e-3
  fd = (by_hand(raw + h) - by_hand(raw - h)) / (2 * h)
  assert abs(fd) > 1e-3
  np.testing.assert_allclose(float(g), -0.5 * fd, rtol=2e-3)


def test_ctkd_curriculum_by_epoch_and_record_values():
  """lambda(1) = (1 - cos(pi/10)) / 2, lambda from epoch 10 on = 1; tau0 = 15.6212; the CIFAR
  script's weights."""
  spec = methods.LossSpec.from_config(config_file("ctkd"))
  grads = {e: float(jax.grad(lambda r: _ctkd_loss(spec, r, e)[0])(jnp.float32(1.0)))
           for e in (1, 10, 30)}
  plain = float(jax.grad(lambda r: 0.9 * jnp.mean(losses.kd(
      jnp.asarray(S), jnp.asarray(T), temperature=1.0 + 20.0 * jax.nn.sigmoid(r))))(
          jnp.float32(1.0)))
  np.testing.assert_allclose(grads[1], -(1 - math.cos(math.pi / 10)) / 2 * plain, rtol=1e-4)
  np.testing.assert_allclose([grads[10], grads[30]], [-plain, -plain], rtol=1e-4)
  init = methods.init_loss_params(spec)["ctkd"]
  assert 1.0 + 20.0 / (1.0 + math.exp(-float(init["raw"]))) == pytest.approx(15.6212, abs=1e-4)
  assert (spec.ce_weight, spec.kd_weight, spec.warmup_epochs) == (0.1, 0.9, 0)


def test_ctkd_instance_module_and_its_checks():
  """The instance module is sized by the run's classes; train/temperature is its batch mean;
  it refuses the DKD base in one line."""
  config = config_file("ctkd")
  config.loss.ctkd_module = "instance"
  config.dataset, config.num_classes = "cifar10", C
  config.teacher_checkpoint = "random:0"
  kdc.validate(config, model_names=models.names(), num_devices=1)
  spec = methods.LossSpec.from_config(config)
  params = methods.init_loss_params(spec, jax.random.PRNGKey(0), C)["ctkd"]
  assert params["w1"].shape == (2 * C, 128)
  terms = methods.loss_terms(spec, jnp.asarray(S), jnp.asarray(Y), jnp.asarray(T), None,
                             jnp.array(3), loss_params={"ctkd": params})
  tau = losses.instance_temperature(params, jnp.asarray(S), jnp.asarray(T), 0.0)
  assert float(jnp.std(tau)) > 0   # one temperature per example
  assert float(terms["temperature"]) == pytest.approx(float(jnp.mean(tau)), rel=1e-6)
  col = np.asarray(tau)[:, None]
  kd = np.asarray(tau) ** 2 * np.sum((_softmax(T * 1.0 / col, 1.0) + 1e-7) * (
      np.log(_softmax(T / col, 1.0) + 1e-7) - np.log(_softmax(S / col, 1.0))), -1)
  np.testing.assert_allclose(terms["kd"], 0.9 * kd.mean(), rtol=1e-5)
  config.loss.ctkd_base = "dkd"
  with pytest.raises(errors.ConfigError, match=r"ctkd_module='instance' takes the KD base "
                     r"only") as e:
    kdc.validate(config, model_names=models.names(), num_devices=1)
  assert "\n" not in str(e.value)


def test_mlkd_terms_route_each_view():
  """The record's terms are losses.mlkd of (weak, strong) in that order: CE on both views,
  T0 = loss.temperature, the extra temperatures from loss.mlkd_temperatures; swapping the
  views changes the terms."""
  config = config_file("mlkd")
  config.loss.mlkd_temperatures = (3.0, 5.0, 2.5, 6.0)
  spec = methods.LossSpec.from_config(config)
  views = {"weak": methods.ViewLogits(jnp.asarray(S), jnp.asarray(T), None),
           "strong": methods.ViewLogits(jnp.asarray(S2), jnp.asarray(T2), None)}
  terms = methods.loss_terms(spec, jnp.asarray(S), jnp.asarray(Y), jnp.asarray(T), None,
                             jnp.array(1), views=views)
  ce = lambda s: -np.log(_softmax(s, 1.0)[np.arange(B), Y]).mean()
  np.testing.assert_allclose([terms["ce"], terms["ce_strong"]], [0.1 * ce(S), 0.1 * ce(S2)],
                             rtol=1e-5)
  # The instance term by hand (docs/methods.md §10.2), masks from the teacher's weak view.
  conf = _softmax(T, 1.0).max(-1)
  f_s = np.mean(conf <= np.median(conf))
  temps = (4.0, 3.0, 5.0, 2.5, 6.0)
  kd = (f_s * sum(_kl_t2(S, T, t) for t in temps) + sum(_kl_t2(S2, T2, t) for t in temps[:3])
        + sum(_kl_t2(S, T, t) for t in temps[3:]))
  np.testing.assert_allclose(terms["kd"], 0.9 * kd.mean(), rtol=1e-5)
  pt, ps = (_softmax(T, t) for t in temps), (_softmax(S, t) for t in temps)
  bc = sum(np.sum((a @ a.T - b @ b.T) ** 2) / B for a, b in zip(pt, ps))
  np.testing.assert_allclose(terms["bc"], 0.9 * f_s * bc, rtol=1e-4)
  assert spec.term_names == ("ce", "ce_strong", "kd", "cc", "bc")
  swapped = methods.loss_terms(spec, jnp.asarray(S), jnp.asarray(Y), jnp.asarray(T), None,
                               jnp.array(1), views={"weak": views["strong"],
                                                    "strong": views["weak"]})
  assert abs(float(swapped["kd"] - terms["kd"])) > 1e-3


def test_mlkd_views_strong_is_its_own_and_none_is_identical():
  """Weak = the run's pad-crop-flip batch; strong = its own crop and flip plus RandAugment;
  with augment='none' both are the un-augmented image."""
  spec, data = view_batches.spec_of(config_file("mlkd")), view_batches.split()
  images = view_batches.batch(spec, data)
  assert set(images) == {"weak", "strong"}
  kd_only = view_batches.batch(dataclasses.replace(spec, loss=methods.LossSpec.from_config(
      config_file("kd"))), data)
  np.testing.assert_array_equal(images["weak"], kd_only)
  assert float(jnp.max(jnp.abs(images["strong"] - images["weak"]))) > 0.5
  none = view_batches.batch(dataclasses.replace(spec, augment="none"), data)
  np.testing.assert_array_equal(none["strong"], none["weak"])
  idx = step_lib.data_lib.cifar_batch_indices(16, seed=0, step=3, batch_size=8)
  plain = jax.jit(lambda x: step_lib.data_lib.normalize(x, view_batches.MEAN, view_batches.STD))(
      jnp.take(data[0], idx, axis=0))
  np.testing.assert_array_equal(none["weak"], plain)


@pytest.mark.parametrize("name,arg,expect", [
    ("mlkd", "vgg13,MobileNetV2", {"num_epochs": 480, "learning_rate": 0.01}),
    ("mlkd", "resnet32x4,ShuffleV1", {"num_epochs": 960, "learning_rate": 0.01}),
    ("mlkd", "resnet56,resnet20", {"num_epochs": 240, "learning_rate": 0.025}),
    ("mlkd", "vgg13,vgg8,ls", {"num_epochs": 480, "learning_rate": 0.01,
                               "loss.kd_weight": 6.0, "loss.temperature": 2.0,
                               "loss.standardize": True}),
    ("mlkd", "wrn_40_2,MobileNetV2,ls", {"learning_rate": 0.005, "loss.kd_weight": 9.0}),
    ("ctkd", "resnet32x4,ShuffleV2", {"learning_rate": 0.01, "loss.ce_weight": 0.1}),
    ("ctkd", "resnet56,resnet20,ls", {"loss.kd_weight": 9.0, "loss.standardize": True,
                                      "loss.ce_weight": 0.1}),
    ("ctkd", "dkd", {"loss.ctkd_base": "dkd", "loss.ce_weight": 1.0, "loss.beta": 2.0,
                     "loss.kd_weight": 0.0}),
    ("dist", "ResNet50,MobileNetV2", {"learning_rate": 0.01, "loss.kd_weight": 2.0,
                                      "loss.ce_weight": 1.0, "loss.temperature": 4.0}),
    ("rkkd", "dist", {"base_method": "dist", "loss.rank_weight": 2.0}),
    ("rkkd", "resnet32x4,resnet8x4,mlkd", {"base_method": "mlkd", "loss.rank_weight": 0.9,
                                           "learning_rate": 0.025}),
    ("rkkd", "ctkd", {"base_method": "ctkd", "loss.rank_weight": 0.9}),
])
def test_config_files_per_pair(name, arg, expect):
  config = config_file(name, arg)
  config.teacher_checkpoint = "random:0"
  kdc.validate(config, model_names=models.names(), num_devices=1)
  flat = kdc.flat_items(config)
  assert {k: flat[k] for k in expect} == expect


def test_ls_on_mlkd_applied_twice_is_once():
  config = config_file("mlkd", "vgg13,vgg8,ls")
  kdc.apply_pair(config, "vgg13", "vgg8", ls=True)
  assert (config.loss.kd_weight, config.learning_rate) == (6.0, 0.01)


def test_print_config_of_the_new_methods_shows_sources():
  """--print_config (the launcher) of CTKD on DKD with a command-line override; the same
  formatter for DIST and MLKD in-process."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/ctkd.py:resnet56,resnet20,dkd",
       "--print_config", "--config.loss.ctkd_decay_epochs=5"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  lines = {line.split(" = ")[0]: line for line in res.stdout.splitlines()}
  source = lambda k: lines[k].split("  # ")[0].rstrip().rsplit("  ", 1)[-1].strip()
  assert lines["loss.ctkd_decay_epochs"].startswith("loss.ctkd_decay_epochs = 5 ")
  assert source("loss.ctkd_decay_epochs") == "command line"
  assert source("loss.ctkd_t_end") == "schema default"
  assert source("loss.ctkd_base") == source("loss.beta") == "config file"   # the ':dkd' variant
  assert source("loss.kd_weight") == "config file" and source("student") == "pair preset"
  assert "# CTKD: epochs of the cosine lambda curriculum" in lines["loss.ctkd_decay_epochs"]
  for name, keys in (("dist", {"loss.dist_beta": "schema default",
                               "loss.kd_weight": "method record"}),
                     ("mlkd", {"loss.mlkd_temperatures": "command line",
                               "learning_rate": "pair preset"})):
    config = config_file(name, "resnet32x4,ShuffleV2")
    over = {}
    if name == "mlkd":
      config.loss.mlkd_temperatures = (3.0, 5.0, 2.0, 7.0)
      over = {"loss.mlkd_temperatures": (3.0, 5.0, 2.0, 7.0)}
    text = {l.split(" = ")[0]: l for l in kdc.format_config(config, over).split("\n")}
    for key, want in keys.items():
      assert f"  {want}  " in text[key], text[key]


def _restore(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  return {s: mngr.restore(s, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"] for s in mngr.all_steps()}


def _smoke(config, steps, **more):
  config.update(dict(dataset="synthetic", num_classes=100, train_examples=32, eval_examples=16,
                     student="resnet8", teacher="resnet8", teacher_checkpoint="random:0",
                     batch_size=16, eval_batch_size=16, num_train_steps=steps,
                     log_every_steps=2, checkpoint_every_steps=1, keep_checkpoints=8,
                     num_devices=1, **more))
  return config


def test_ctkd_temperature_trains_is_logged_and_resumes(tmp_path):
  """End to end: the global temperature moves under training; train/temperature at each log
  step is the temperature of that step's loss (from the state before its update, within one
  float32 rounding); a resume from step 2 gives the step-4 temperature bit for bit."""
  from kd_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = _smoke(config_file("ctkd"), 4, learning_rate=0.5)
  config.loss.ctkd_decay_epochs = 1   # full reversal strength from the first epoch
  first, again = str(tmp_path / "a"), str(tmp_path / "b")
  assert loop.train_and_evaluate(config, first).step == 4
  with open(os.path.join(first, "metrics.jsonl")) as f:
    logged = {l["step"]: l for l in map(json.loads, f) if "train/temperature" in l}
  assert sorted(logged) == [2, 4]
  states = _restore(first)
  raw = {s: float(st["loss_params"]["ctkd"]["raw"]) for s, st in states.items()}
  tau = lambda r: 1.0 + 20.0 / (1.0 + math.exp(-r))
  assert len(set(raw.values())) == 4 and raw[1] != 1.0     # it moves every step
  # float32: tau is a sigmoid, a product and a sum (a few ulp), the log a product by the
  # window's step count and a division (one ulp each): 16 ulp = 1e-6 bounds them.
  for step in (2, 4):   # that step's loss used the parameters after step - 1
    assert logged[step]["train/temperature"] == pytest.approx(tau(raw[step - 1]), rel=1e-6)
    window_mean = (tau(raw[step - 1]) + tau(raw[step - 2] if step > 2 else 1.0)) / 2
    assert logged[step]["train/temperature"] != pytest.approx(window_mean, rel=1e-6)
    # Written bound: each logged value a float32 mean over the window's steps x examples, the
    # loss a float32 sum of the non-negative terms: 3 values, sums of at most n terms each.
    n = config.log_every_steps * config.batch_size + 4
    assert logged[step]["train/loss"] == pytest.approx(
        logged[step]["train/ce"] + logged[step]["train/kd"], rel=3 * yardstick.gamma(n))
  shutil.copytree(first, again)
  for s in (3, 4):
    shutil.rmtree(os.path.join(again, "checkpoints", str(s)))
  assert loop.train_and_evaluate(config, again).step == 4
  resumed = _restore(again)[4]
  jax.tree.map(np.testing.assert_array_equal,
               [states[4][k] for k in ("loss_params", "loss_opt_state")],
               [resumed[k] for k in ("loss_params", "loss_opt_state")])


def test_mlkd_step_runs_the_student_once_per_view():
  """One MLKD step on a tiny BatchNorm model: the running statistics are those of two train-mode
  passes, weak then strong (momentum applied twice), and train top-1 is the weak view's."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from kd_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x.reshape(x.shape[0], -1))
      return nn.Dense(10)(x)

  model = Tiny()
  rng = np.random.default_rng(1)
  weak = jnp.asarray(rng.normal(size=(8, 2, 2, 3)), jnp.float32)
  strong = jnp.asarray(rng.normal(size=(8, 2, 2, 3)) * 3 + 1, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), weak, train=False)
  teacher_vars = model.init(jax.random.PRNGKey(1), weak, train=False)
  config = config_file("mlkd")
  loss = methods.LossSpec.from_config(config)
  tx = state_lib.make_optimizer(config)
  spec = step_lib.StepSpec(
      student=model, teacher=model, tx=tx, schedule=lambda s: 0.0, loss=loss,
      steps_per_epoch=10, batch_size=8, seed=0, in_memory=True, mean=(0.0,) * 3,
      std=(1.0,) * 3, max_bad_steps=3,
      mesh=jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)))
  state = state_lib.create_state(variables["params"], variables["batch_stats"], tx,
                                 jax.random.PRNGKey(0), loss.metric_names)
  one_step = jax.jit(lambda *a: step_lib._one_step(spec, *a))  # pylint: disable=protected-access
  new = one_step(state, teacher_vars, {"weak": weak, "strong": strong}, labels)
  stats = variables["batch_stats"]
  for x in (weak, strong):
    _, upd = model.apply({"params": variables["params"], "batch_stats": stats}, x, train=True,
                         mutable=["batch_stats"])
    stats = upd["batch_stats"]
  # Written bound: both sides take the batch moments mean(x) and mean(x^2) - mean(x)^2 over the
  # 8 examples as float32 sums of 8 terms (yardstick.gamma, relative to the sums of |x| and
  # x^2), then two momentum blends (a few ulps); twice that for the two sides.
  flat = [np.asarray(v, np.float64).reshape(8, -1) for v in (weak, strong)]
  m1 = max(float(np.max(np.mean(np.abs(v), 0))) for v in flat)
  m2 = max(float(np.max(np.mean(v ** 2, 0))) for v in flat)
  tol = {"mean": 2 * (yardstick.gamma(8) + yardstick.ulps(4)) * m1,
         "var": 2 * (3 * yardstick.gamma(8) + yardstick.ulps(8)) * m2}
  for key, want in stats["BatchNorm_0"].items():
    np.testing.assert_allclose(new.batch_stats["BatchNorm_0"][key], want, rtol=0,
                               atol=tol[key], err_msg=key)
  once = model.apply(variables, weak, train=True, mutable=["batch_stats"])[1]["batch_stats"]
  assert not np.allclose(once["BatchNorm_0"]["mean"], stats["BatchNorm_0"]["mean"])
  logits_weak = model.apply({"params": variables["params"], "batch_stats": variables[
      "batch_stats"]}, weak, train=True, mutable=["batch_stats"])[0]
  top1 = float(jnp.mean(jnp.argmax(logits_weak, -1) == labels))
  assert float(new.metric_sums["top1"]) == pytest.approx(top1)


def test_published_key_of_ctkd_on_dkd():
  """A CTKD run on the DKD base is shown beside CTKD(DKD)'s published number, not CTKD's."""
  from kd_jax import published  # pylint: disable=import-outside-toplevel
  config = json.loads(config_file("ctkd", "imagenet_resnet34,imagenet_resnet18,dkd").to_json())
  (entry,) = published.lookup_config(config)
  assert (entry.method, entry.top1) == ("ctkd(dkd)", 71.51)
  config["loss"]["ctkd_base"] = "kd"
  assert [e.top1 for e in published.lookup_config(config)] == [71.32]
