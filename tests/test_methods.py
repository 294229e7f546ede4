"""Methods as loss composition (weights, warm-up, schedules, DHKD gradient alignment) and a new
method added as one record: its own keys, a learnable loss parameter and a second view."""
import dataclasses
import json
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
from kd_jax.train import state as state_lib
from kd_jax.train import sweep

import view_batches
import yardstick

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  out = methods.project_conflict(g1, g2)
  # <g2,g1> = -1 < 0, ||g1||^2 = 1: g2' = g2 + g1 = [0, 1, 2]; result g1 + g2' = [1, 1, 2].
  np.testing.assert_allclose(out["a"], [1.0, 1.0])
  np.testing.assert_allclose(out["b"], [[2.0]])
  # No conflict: plain sum.
  out = methods.project_conflict(g1, {"a": jnp.array([1.0, 1.0]), "b": jnp.array([[0.0]])})
  np.testing.assert_allclose(out["a"], [2.0, 1.0])
  # g1 = 0: no projection, no NaN.
  zero = jax.tree.map(jnp.zeros_like, g1)
  out = methods.project_conflict(zero, g2)
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
  tx = state_lib.make_optimizer(config)  # the LR is applied by the step
  p = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(p)
  buf = np.zeros(2)
  ref = np.array([1.0, -2.0])
  for g in ([0.5, 0.1], [-0.3, 0.2]):
    upd, state = tx.update({"w": jnp.array(g)}, state, p)
    upd = state_lib.apply_learning_rate(upd, jnp.float32(0.1))
    p = jax.tree.map(lambda a, b: a + b, p, upd)
    gg = np.array(g) + 5e-4 * ref
    buf = 0.9 * buf + gg
    ref = ref - 0.1 * buf
  np.testing.assert_allclose(p["w"], ref, rtol=1e-6)


@pytest.fixture
def toy():
  """tests/toy_method.py's method (own keys, a learnable loss parameter, a second view),
  registered for one test."""
  import toy_method  # pylint: disable=import-outside-toplevel
  toy_method.register()
  yield toy_method
  methods.unregister(toy_method.NAME)


def test_a_methods_hyperparameters_are_declared_once(toy):
  """Schema, descriptions, LossSpec, sweepable set and validation all come from the record."""
  config = toy.get_config()
  assert (config.loss.toy_weight, tuple(config.loss.toy_temps), config.loss.toy_mode) == (
      0.25, (1.0, 2.0), "mean")
  base = kdc.base_config()
  assert (base.loss.toy_weight, base.loss.toy_mode) == (0.5, "mean")
  assert kdc.key_descriptions()["loss.toy_temps"] == "toy: the temperatures T_i"
  assert "loss.toy_weight" in methods.sweepable_keys()
  assert not {"loss.toy_temps", "loss.toy_mode"} & set(methods.sweepable_keys())
  config.loss.toy_temps = [1.0, 3.0]   # a list: held as a tuple, so the spec is hashable
  spec = methods.LossSpec.from_config(config)
  assert spec.toy_temps == (1.0, 3.0) and hash(spec) == hash(methods.LossSpec.from_config(config))
  assert spec.metric_names == ("ce", "toy", "toy_tau", "loss", "top1")
  assert [v.name for v in spec.views] == ["default", "strong"]
  kdc.validate(config, model_names=models.names(), num_devices=1)
  # Without the method, its keys are not config keys at all.
  methods.unregister(toy.NAME)
  assert "toy_weight" not in kdc.base_config().loss
  toy.register()


@pytest.mark.parametrize("key,value,needle", [
    ("toy_weight", -1.0, "config.loss.toy_weight=-1.0 is not accepted; expected a finite "
     "number >= 0"),
    ("toy_temps", (1.0, 0.0), "config.loss.toy_temps=(1.0, 0.0) is not accepted; expected a "
     "list of at least 1 finite numbers, each > 0"),
    ("toy_temps", (), "config.loss.toy_temps=() is not accepted"),
    ("toy_mode", "median", "config.loss.toy_mode='median' is not accepted; did you mean "
     "'mean'? accepted: 'mean', 'max'"),
    ("label_smoothing", 1.0, "config.loss.label_smoothing=1.0 is not accepted; expected a "
     "number in [0, 1)"),
    ("toy_mode", "maxx", "config.loss.toy_mode='maxx' is not accepted; did you mean 'max'?"),
])
def test_bad_values_of_declared_keys_are_one_line(toy, key, value, needle):
  config = toy.get_config()
  config.loss[key] = value
  with pytest.raises(errors.ConfigError) as e:
    kdc.validate(config, model_names=models.names(), num_devices=1)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_sweep_of_a_declared_float(toy):
  config = toy.get_config()
  config.sweep = "loss.toy_weight=0.1,0.3"
  runs = sweep.expand(config)
  assert [(n, c.loss.toy_weight) for n, c in runs] == [
      ("loss.toy_weight=0.1", 0.1), ("loss.toy_weight=0.3", 0.3)]
  spec = methods.LossSpec.from_config(runs[0][1])
  assert dataclasses.replace(spec, toy_weight=jnp.float32(0.3)).toy_weight == 0.3
  with pytest.raises(errors.ConfigError, match="'loss.toy_mode' cannot be swept"):
    sweep.parse_sweep("loss.toy_mode=1,2")


def test_gradient_reversal_by_hand():
  x = jnp.array([1.0, -2.0, 3.0])
  w = jnp.array([0.5, 2.0, -1.0])
  f = lambda x, l: jnp.sum(w * losses.gradient_reversal(x, l) ** 2)
  # Forward: the identity. Backward: d/dx sum w x^2 = 2 w x, reversed and scaled by l.
  np.testing.assert_array_equal(losses.gradient_reversal(x, 0.3), x)
  np.testing.assert_allclose(jax.grad(f)(x, 0.3), -0.3 * 2 * w * x, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(x, jnp.float32(2.0)), -2.0 * 2 * w * x,
                             rtol=1e-6)
  assert float(jax.grad(f, argnums=1)(x, jnp.float32(0.3))) == 0.0   # l gets no gradient
  tree = {"a": x, "b": (x[:1],)}
  g = jax.grad(lambda t: jnp.sum(losses.gradient_reversal(t, 1.0)["a"]) +
               jnp.sum(losses.gradient_reversal(t, 1.0)["b"][0]))(tree)
  np.testing.assert_array_equal(g["a"], -np.ones(3))
  np.testing.assert_array_equal(g["b"][0], [-1.0])


def test_terms_read_their_view_and_their_loss_parameter(toy):
  """The toy term uses the `strong` view's logits; d loss / d tau = -d term / d tau (finite
  differences of the term at tau +- h, with the reversal taken out)."""
  config = toy.get_config()
  spec = methods.LossSpec.from_config(config)
  s2, t2 = S[::-1] * 0.7, T[::-1] + 0.3   # the strong view's logits
  views = {"default": methods.ViewLogits(S, T, None), "strong": methods.ViewLogits(s2, t2, None)}

  def loss(tau):
    terms = methods.loss_terms(spec, S, Y, T, None, jnp.array(1), views=views,
                               loss_params={toy.NAME: {"tau": tau}})
    return methods.total_loss(spec, terms), terms

  (_, terms), g = jax.value_and_grad(loss, has_aux=True)(jnp.float32(1.3))
  by_hand = lambda tau: 0.25 * np.mean([np.mean(losses.kd(s2, t2, temperature=tau * t))
                                        for t in (1.0, 2.0)])
  np.testing.assert_allclose(terms["toy"], by_hand(1.3), rtol=1e-6)
  assert float(terms["toy_tau"]) == pytest.approx(1.3)
  assert set(terms) == {"ce", "toy", "toy_tau"}
  h = 1e-2
  fd = (by_hand(1.3 + h) - by_hand(1.3 - h)) / (2 * h)
  np.testing.assert_allclose(float(g), -fd, rtol=1e-3)
  assert abs(fd) > 1e-3


def test_views_get_their_own_augmentation_and_none_means_none(toy):
  spec, data = view_batches.spec_of(toy.get_config()), view_batches.split()
  images = view_batches.batch(spec, data)
  alone = view_batches.batch(dataclasses.replace(spec, loss=spec_for("kd")), data)
  assert set(images) == {"default", "strong"}
  np.testing.assert_array_equal(images["default"], alone)   # the first view is today's batch
  assert float(jnp.max(jnp.abs(images["strong"] - images["default"]))) > 0.1
  none = view_batches.batch(dataclasses.replace(spec, augment="none"), data)
  np.testing.assert_array_equal(none["strong"], none["default"])


def test_multi_view_teacher_table_serves_the_finite_views_only(toy):
  """With a teacher table, the first view (pad_crop_flip, finite) is served by it and the strong
  view runs the teacher online; a run where no view has a finite view set is one line."""
  config = toy.get_config()
  config.teacher_cache = "/tmp/unused_table"
  kdc.validate(config, model_names=models.names(), num_devices=1)
  config.augment = "random_resized_crop"
  with pytest.raises(errors.ConfigError, match=r"no view has an augmentation with a finite set "
                     r"of views.*\(set config.teacher_cache=''\)") as e:
    kdc.validate(config, model_names=models.names(), num_devices=1)
  assert "\n" not in str(e.value)


def test_a_state_without_loss_parameters_keeps_the_checkpoint_layout():
  """Its top-level keys are the nine of a state with no loss fields (so older checkpoints
  restore); with loss parameters, the two loss fields join them."""
  tx = state_lib.make_optimizer(kdc.base_config())
  plain = state_lib.create_state({"w": jnp.ones(2)}, {}, tx, jax.random.PRNGKey(0), ("ce",))
  top = lambda s: [jax.tree_util.keystr(p[:1]) for p, _ in
                   jax.tree_util.tree_flatten_with_path(s)[0]]
  assert sorted(set(top(plain))) == sorted(
      f".{n}" for n in ("step", "params", "opt_state", "rng", "metric_sums", "metric_count",
                        "bad_streak", "skipped"))   # batch_stats {} has no leaves
  assert jax.tree.map(lambda x: None, plain).loss_opt_state == plain.loss_opt_state
  learned = state_lib.create_state({"w": jnp.ones(2)}, {}, tx, jax.random.PRNGKey(0), ("ce",),
                                   loss_params={"toy": {"tau": jnp.ones(())}})
  assert set(top(learned)) - set(top(plain)) == {".loss_params", ".loss_opt_state"}


def _restore(workdir):
  """{step: the checkpointed state as nested dicts}, read without the training code."""
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  return {s: mngr.restore(s, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"] for s in mngr.all_steps()}


def test_a_new_method_trains_checkpoints_and_resumes(toy, tmp_path):
  """End to end: its term is logged and summed, its loss parameter is trained by the optimizer
  (through the reversal: up the term) and checkpointed, and a resume from step 2 reaches the
  same step-4 state bit for bit; config.json records each value's source."""
  from kd_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = toy.get_config()
  first, again = str(tmp_path / "a"), str(tmp_path / "b")
  assert loop.train_and_evaluate(config, first).step == 4
  with open(os.path.join(first, "metrics.jsonl")) as f:
    lines = [json.loads(l) for l in f]
  logged = [l for l in lines if "train/toy" in l]
  assert [l["step"] for l in logged] == [2, 4]
  # The loss is CE + the term (the logged tau is no term). Written bound: each logged value is
  # a float32 mean over the window (2 steps x 16 examples) and the loss a float32 sum of the
  # non-negative terms: sums of at most 32 + 2 + 2 terms on each of the 3 values.
  rtol = 3 * yardstick.gamma(config.log_every_steps * config.batch_size + 4)
  for l in logged:
    assert l["train/loss"] == pytest.approx(l["train/ce"] + l["train/toy"], rel=rtol)
  with open(os.path.join(first, "config.json")) as f:
    recorded = json.load(f)
  assert recorded["loss"]["toy_weight"] == 0.25 and recorded["sources"]["loss.toy_weight"] == (
      "method record")
  assert recorded["sources"]["dataset"] == "config file"
  assert recorded["sources"]["loss.toy_mode"] == "schema default"
  assert recorded["sources"]["image_size"] == "resolved from the data"

  states = _restore(first)
  tau = {s: float(st["loss_params"][toy.NAME]["tau"]) for s, st in states.items()}
  assert tau[2] != 1.0 and tau[4] != tau[2]   # from its initial 1.0
  # The student's optimizer (SGD with momentum) moves tau: its momentum trace holds it.
  assert float(states[4]["loss_opt_state"][1]["trace"][toy.NAME]["tau"]) != 0.0
  assert toy.NAME not in states[4]["opt_state"][1]["trace"]

  shutil.copytree(first, again)
  shutil.rmtree(os.path.join(again, "checkpoints", "4"))
  assert loop.train_and_evaluate(config, again).step == 4
  resumed = _restore(again)[4]
  keys = ("loss_params", "loss_opt_state", "params", "opt_state", "batch_stats")
  jax.tree.map(np.testing.assert_array_equal, [states[4][k] for k in keys],
               [resumed[k] for k in keys])


def _launch_toy(workdir, *flags):
  import testenv  # pylint: disable=import-outside-toplevel
  return subprocess.run(
      [sys.executable, os.path.join(_ROOT, "launch.py"), "--config=tests/toy_method.py",
       f"--workdir={workdir}", *flags],
      cwd=_ROOT, env=testenv.subprocess_env(1), capture_output=True, text=True, timeout=600)


def test_a_new_method_sweeps_through_the_launcher(tmp_path):
  """`--config.sweep=loss.toy_weight=0.1,0.3`: two runs of the toy in one program, each with
  its own weight and its own learned tau (in its metrics, config.json and the checkpoint's
  stacked loss parameters); the same sweep relaunched with another batch size is refused in
  one line, exit 2, before anything is written."""
  workdir = tmp_path / "sweep"
  sweep_flag = "--config.sweep=loss.toy_weight=0.1,0.3"
  res = _launch_toy(workdir, sweep_flag, "--config.log_every_steps=1")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "Done: a sweep of 2 runs" in res.stdout, res.stdout[-2000:]
  names = ["loss.toy_weight=0.1", "loss.toy_weight=0.3"]
  logged = {}
  for name, weight in zip(names, (0.1, 0.3)):
    with open(workdir / "runs" / name / "config.json") as f:
      assert json.load(f)["loss"]["toy_weight"] == weight
    with open(workdir / "runs" / name / "metrics.jsonl") as f:
      logged[name] = {l["step"]: l for l in map(json.loads, f) if "train/toy" in l}
    assert sorted(logged[name]) == [1, 2, 3, 4]
  first = [logged[n][1] for n in names]
  # Step 1: both runs start from the same parameters, data and tau = 1, so their terms are
  # weight * the same KD: a ratio of 3 up to float32 rounding (a few 2^-24 relative).
  assert [f["train/toy_tau"] for f in first] == [1.0, 1.0]
  assert first[1]["train/toy"] / first[0]["train/toy"] == pytest.approx(3.0, rel=1e-5)
  # Then each run's tau follows its own gradient.
  taus = [[logged[n][s]["train/toy_tau"] for s in (2, 3, 4)] for n in names]
  assert taus[0] != taus[1] and all(t != 1.0 for t in taus[0] + taus[1])
  stacked = _restore(str(workdir))[4]["loss_params"]["toy"]["tau"]
  assert stacked.shape == (2,) and stacked[0] != stacked[1]

  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
  res = _launch_toy(workdir, sweep_flag, "--config.log_every_steps=1",
                    "--config.batch_size=8")
  assert res.returncode == 2, res.stderr[-3000:]
  err = [l for l in res.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "batch_size 16 -> 8" in err[0] and "Traceback" not in res.stderr
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()} == before


def test_print_config_shows_each_values_source(toy):
  """--print_config of the toy's config file with list and string overrides."""
  del toy
  env = dict(os.environ, PYTHONPATH=os.path.join(_ROOT, "tests"), JAX_PLATFORMS="cpu")
  res = subprocess.run(
      [sys.executable, "launch.py", "--config=tests/toy_method.py", "--print_config",
       "--config.loss.toy_temps=(1.5,3.0)", "--config.loss.toy_mode=max"],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  lines = {line.split(" = ")[0]: line for line in res.stdout.splitlines()}
  source = {k: line.split("  # ")[0].rstrip().rsplit("  ", 1)[-1].strip()
            for k, line in lines.items()}
  assert lines["loss.toy_temps"].startswith("loss.toy_temps = (1.5, 3.0)")
  assert lines["loss.toy_mode"].startswith("loss.toy_mode = 'max'")
  assert "# toy: the temperatures T_i" in lines["loss.toy_temps"]
  assert (source["loss.toy_temps"], source["loss.toy_mode"]) == ("command line",) * 2
  assert source["loss.toy_weight"] == "method record"
  assert source["dataset"] == "config file"
  assert source["loss.rank_weight"] == "schema default"


def test_unknown_method_lists_the_registered_ones():
  with pytest.raises(ValueError, match=r"config.method='nope'.*'kd', 'dkd'"):
    kdc.method_defaults(kdc.base_config(), "nope")
