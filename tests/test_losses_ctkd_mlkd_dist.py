"""Tests of the CTKD, MLKD and DIST losses (docs/methods.md §9-§11): hand-checked cases, finite
differences, and value and gradient against the PyTorch transcriptions in tests/torch_losses_b.py.

Float64 comparisons with PyTorch use a derived bound: every compared quantity is a sum of at most
N float64 terms, each a few correctly rounded operations away from its inputs, so both sides are
within ~N * eps (relative to the magnitudes involved) of the exact value; `_bound(N)` allows
8 * N * eps on top of |value| + 1. A test beside each comparison shows that a real defect (one
quirk of the reference dropped) moves the result by many orders of magnitude more.
"""
import math

import chex
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from kd_jax import losses as L
from kd_jax.losses.ctkd import INSTANCE_TEACHER_EPS
from kd_jax.losses.dist import pearson

EPS64 = float(np.finfo(np.float64).eps)


def _bound(n_terms: int) -> float:
  return 8.0 * n_terms * EPS64


def _close(ours, ref, n_terms, what):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  np.testing.assert_allclose(ours, ref, rtol=_bound(n_terms),
                             atol=_bound(n_terms) * (1.0 + np.max(np.abs(ref))), err_msg=what)


def _inputs(seed, batch, classes, scale=2.0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  s = (scale * rng.standard_normal((batch, classes))).astype(dtype)
  t = (scale * rng.standard_normal((batch, classes))).astype(dtype)
  y = rng.integers(0, classes, size=batch).astype(np.int32)
  return s, t, y


# docs/methods.md §8 inputs and the golden values of §9-§11 listed there (6 decimals, from the
# float64 PyTorch transcriptions). Evaluated in float64, so the bound is the 6-decimal rounding:
# float32 at CTKD's tau = 15.6 loses ~tau^2 C eps32 ~ 1e-4 to cancellation in the KL.
S8 = np.array([[1.0, 2.0, 0.5, -1.0, 0.0], [0.2, -0.3, 1.5, 0.7, 2.2],
               [0.3, 1.2, -0.4, 0.9, 0.1]], np.float32)
T8 = np.array([[0.5, 3.0, 1.0, -2.0, 0.1], [1.0, 0.0, 2.5, 2.5, -1.0],
               [2.0, 1.0, 0.0, -1.0, 3.0]], np.float32)
Y8 = np.array([1, 3, 1], np.int32)


def test_golden_values_of_methods_md():
  def golden(s, t, y):
    tau0 = L.global_temperature(L.global_temperature_init(), 0.0)
    perm = jnp.array([1, 2, 0])
    return {"tau0": tau0, "ctkd": L.ctkd_kd(s, t, tau0),
            "inter4": L.dist_inter(s, t, tau=4.0), "intra4": L.dist_intra(s, t, tau=4.0),
            "dist4": L.dist(s, t, tau=4.0), "inter1": L.dist_inter(s, t, tau=1.0),
            "intra1": L.dist_intra(s, t, tau=1.0), "dist1": L.dist(s, t, tau=1.0),
            "masks": L.mlkd_confidence_masks(t),
            "mlkd": L.mlkd(s, s[perm], t, t[perm], y),
            "mlkd_ls": L.mlkd(s, s[perm], t, t[perm], y, temperature=2.0, kd_weight=9.0,
                              standardize=True)}
  with jax.enable_x64(True):
    g = jax.jit(golden)(S8.astype(np.float64), T8.astype(np.float64), Y8)
    g = jax.tree.map(np.asarray, g)
  close = lambda got, want: np.testing.assert_allclose(got, want, rtol=0, atol=5.1e-7)
  close(g["tau0"], 15.621172)
  close(g["ctkd"], [0.249591, 1.467218, 1.342068])
  close(g["inter4"], [0.729879, 17.871500, 20.252701])
  close([g["intra4"], g["dist4"]], [11.724176, 24.675536])
  close(g["inter1"], [0.033138, 1.158779, 1.378872])
  close([g["intra1"], g["dist1"]], [0.772005, 1.628935])
  np.testing.assert_array_equal(g["masks"][0], [False, True, True])
  np.testing.assert_array_equal(g["masks"][1], [True, False, True, True, False])
  m = {k: np.mean(v) for k, v in g["mlkd"].items()}
  close([m["ce"], m["kd"], m["cc"], m["bc"]], [0.291485, 7.027350, 0.006046, 0.005067])
  m = {k: np.mean(v) for k, v in g["mlkd_ls"].items()}
  close([m["kd"], m["cc"], m["bc"]], [45.254823, 0.090391, 0.085343])


# ============================================================================ CTKD


def test_gradient_reversal_forward_identity_backward_negated():
  x = {"a": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
  w = jnp.array([0.3, 1.0, -2.0])
  def f(p, lam):
    y = L.gradient_reversal(p, lam)
    return jnp.sum(w * y["a"] ** 2) + 4.0 * y["b"]
  out = L.gradient_reversal(x, 0.7)
  chex.assert_trees_all_equal(out, x)
  for lam in (0.0, 0.25, 1.0):
    g = jax.jit(jax.grad(f))(x, lam)
    # by hand: d/da sum(w a^2) = 2 w a and d/db 4 b = 4, each times -lambda
    np.testing.assert_allclose(g["a"], -lam * 2.0 * w * x["a"], rtol=1e-6)
    np.testing.assert_allclose(g["b"], -lam * 4.0, rtol=1e-6)
  # lambda itself receives no gradient
  assert float(jax.grad(f, argnums=1)(x, 0.5)) == 0.0


def test_ctkd_lambda_curriculum_at_chosen_epochs():
  # (1 - cos(pi e / 10)) / 2 by hand; epochs 1, 2, 4, 7 also appear, negated, as `decay_value`
  # in the logit-standardization repository's CTKD logs (-0.02447174..., -0.09549150...,
  # -0.34549150..., -0.79389262...).
  expected = {0: 0.0, 1: 0.0244717418524232, 2: 0.0954915028125263, 4: 0.3454915028125263,
              5: 0.5, 7: 0.7938926261462365, 10: 1.0, 11: 1.0, 240: 1.0, -3: 0.0}
  epochs = list(expected)
  np.testing.assert_allclose(jax.jit(L.ctkd_lambda)(jnp.asarray(epochs)), list(expected.values()),
                             atol=2e-7)
  np.testing.assert_allclose(L.ctkd_lambda(5), 0.5, atol=2e-7)  # a Python int, eagerly
  # other ranges are affine in the same cosine
  np.testing.assert_allclose(L.ctkd_lambda(5, lambda_min=0.2, lambda_max=0.6, num_loops=20),
                             0.6 - 0.4 * (1 + math.cos(math.pi / 4)) / 2, atol=2e-7)
  with pytest.raises(ValueError, match=r"num_loops.*0"):
    L.ctkd_lambda(3, num_loops=0)


def test_ctkd_lambda_matches_authors_cosine_decay():
  tl = pytest.importorskip("torch_losses_b")
  ref = [-tl.cosine_decay_value(epoch) for epoch in range(14)]
  np.testing.assert_allclose(jax.jit(L.ctkd_lambda)(jnp.arange(14)), ref, atol=2e-7)


def test_global_temperature_init_and_range():
  params = L.global_temperature_init()
  np.testing.assert_allclose(L.global_temperature(params, 0.3), 1 + 20 / (1 + math.exp(-1)),
                             rtol=1e-6)  # 15.6212, the authors' starting temperature
  lo = L.global_temperature({"raw": jnp.asarray(-40.0)}, 0.0)
  hi = L.global_temperature({"raw": jnp.asarray(40.0)}, 0.0)
  np.testing.assert_allclose([lo, hi], [1.0, 21.0], rtol=1e-6)


def _torch_global(tl, torch, s, t, raw, decay, use_ls=False, dkd=None):
  ts = torch.tensor(s, requires_grad=True)
  traw = torch.tensor([raw], dtype=torch.float64, requires_grad=True)
  temp = tl.global_temperature(traw, decay)
  if dkd is None:
    loss = tl.distill_kl(ts, torch.tensor(t), temp, use_ls)
  else:
    labels, alpha, beta = dkd
    loss = tl.ctkd_dkd(ts, torch.tensor(t), torch.tensor(labels, dtype=torch.long), alpha, beta,
                       temp)
  loss.backward()
  return loss.item(), temp.item(), ts.grad.numpy(), traw.grad.numpy()[0]


def _ours_global(s, t, raw, lam, standardize=False, dkd=None):
  def loss(sv, params):
    temp = L.global_temperature(params, lam)
    if dkd is None:
      return jnp.mean(L.ctkd_kd(sv, t, temp, standardize=standardize)), temp
    labels, alpha, beta = dkd
    return jnp.mean(L.dkd(sv, t, labels, alpha=alpha, beta=beta, temperature=temp)), temp
  (v, temp), (gs, gp) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      jnp.asarray(s), {"raw": jnp.asarray(raw)})
  return float(v), float(temp), np.asarray(gs), float(gp["raw"])


@pytest.mark.parametrize("case", ["kd", "kd_ls", "dkd"])
def test_ctkd_global_matches_torch_float64(case):
  torch = pytest.importorskip("torch")
  import torch_losses_b as tl  # pylint: disable=import-outside-toplevel
  s, t, y = _inputs(1, 4, 6, scale=3.0)
  epoch, raw = 3, -0.4
  lam = float(L.ctkd_lambda(epoch))
  dkd = (y, 1.0, 2.0) if case == "dkd" else None
  with jax.enable_x64(True):
    lam64 = jnp.asarray(-tl.cosine_decay_value(epoch), jnp.float64)
    np.testing.assert_allclose(lam, lam64, atol=2e-7)
    ours = _ours_global(s, t, raw, lam64, case == "kd_ls", dkd)
  ref = _torch_global(tl, torch, s, t, raw, tl.cosine_decay_value(epoch), case == "kd_ls", dkd)
  n = 4 * 6 * 4  # batch x classes x (softmax, log, product, sum) per element
  for o, r, what in zip(ours, ref, ("loss", "temperature", "grad student", "grad raw")):
    _close(o, r, n, f"{case}: {what}")
  assert abs(ref[3]) > 1e-4  # the temperature's gradient is a real, non-zero number


def test_ctkd_global_comparison_catches_unreversed_gradient():
  torch = pytest.importorskip("torch")
  import torch_losses_b as tl  # pylint: disable=import-outside-toplevel
  s, t, _ = _inputs(1, 4, 6, scale=3.0)
  with jax.enable_x64(True):
    ours = _ours_global(s, t, -0.4, jnp.asarray(0.5, jnp.float64))
  wrong = _torch_global(tl, torch, s, t, -0.4, +0.5)  # defect: gradient not reversed
  assert abs(ours[3] - wrong[3]) > 1e6 * _bound(96) * (1 + abs(wrong[3]))


def test_ctkd_instance_matches_torch_float64():
  torch = pytest.importorskip("torch")
  import torch_losses_b as tl  # pylint: disable=import-outside-toplevel
  s, t, _ = _inputs(2, 5, 4, scale=2.0)
  decay = tl.cosine_decay_value(6)
  with jax.enable_x64(True):
    params = L.instance_temperature_init(jax.random.key(0), 4, hidden=8, dtype=jnp.float64)
    for detach in (True, False):
      def loss(sv, p, detach=detach):
        temps = L.instance_temperature(p, sv, t, -decay, detach_inputs=detach)
        return jnp.mean(L.ctkd_kd(sv, t, temps, teacher_eps=INSTANCE_TEACHER_EPS)), temps
      (v, temps), (gs, gp) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
          jnp.asarray(s), params)
      module = tl.InstanceT(params["w1"], params["b1"], params["w2"], params["b2"])
      ts = torch.tensor(s, requires_grad=True)
      tt = torch.tensor(t)
      ref_temps = module(tt, ts.detach() if detach else ts, decay)
      ref = tl.instance_kl(ts, tt, ref_temps)
      ref.backward()
      n = 5 * 4 * 8 * 4
      _close(v, ref.item(), n, f"detach={detach}: loss")
      _close(temps, ref_temps.detach().numpy(), n, f"detach={detach}: temperatures")
      _close(gs, ts.grad.numpy(), n, f"detach={detach}: grad student")
      _close(gp["w1"], module.l1.weight.grad.numpy().T, n, f"detach={detach}: grad w1")
      _close(gp["b2"], module.l2.bias.grad.numpy(), n, f"detach={detach}: grad b2")
      assert np.all((np.asarray(temps) > 1.0) & (np.asarray(temps) < 21.0))


def test_ctkd_kd_finite_differences_float64():
  with jax.enable_x64(True):
    s, t, _ = _inputs(3, 3, 5, scale=1.5)
    t = jnp.asarray(t)
    # with lambda = -1 the reversal layer passes the true gradient, so the composed global
    # module is differentiable end to end and must agree with finite differences too
    def all_cases(sv, tau, taus, raw):
      return jnp.stack([
          jnp.mean(L.ctkd_kd(sv, t, tau)),
          jnp.mean(L.ctkd_kd(sv, t, taus, teacher_eps=1e-7, standardize=True)),
          jnp.mean(L.ctkd_kd(sv, t, L.global_temperature({"raw": raw}, -1.0)))])
    check_grads(jax.jit(all_cases), (jnp.asarray(s), jnp.asarray(2.5),
                                     jnp.asarray([1.5, 3.0, 7.0]), jnp.asarray(0.3)),
                order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_ctkd_kd_scalar_temperature_equals_kd():
  s, t, _ = _inputs(4, 3, 5, dtype=np.float32)
  np.testing.assert_allclose(L.ctkd_kd(s, t, 4.0), L.kd(s, t, temperature=4.0), rtol=1e-6)
  per_row = L.ctkd_kd(s, t, jnp.array([1.0, 2.0, 4.0]))
  np.testing.assert_allclose(per_row[2], L.kd(s, t, temperature=4.0)[2], rtol=1e-6)
  np.testing.assert_allclose(per_row[0], L.kd(s, t, temperature=1.0)[0], rtol=1e-6)


def test_ctkd_bad_input():
  s, t, _ = _inputs(4, 3, 5, dtype=np.float32)
  with pytest.raises(ValueError, match=r"temperature.*\(3,\).*\(2,\)"):
    L.ctkd_kd(s, t, jnp.ones(2))
  with pytest.raises(ValueError, match=r"temperature.*> 0"):
    L.ctkd_kd(s, t, -1.0)
  with pytest.raises(ValueError, match=r"num_classes.*1"):
    L.instance_temperature_init(jax.random.key(0), 1)


# ============================================================================ MLKD


def _log(p):
  return np.log(np.asarray(p, np.float64)).astype(np.float32)


def test_confidence_masks_hand_case():
  # Rows' max probabilities 0.7, 0.4, 0.55, 0.45: median (0.45 + 0.55) / 2 = 0.5 keeps rows 1
  # and 3 (the less confident half). Class sums 1.15, 1.0, 0.95, 0.9: median 0.975 keeps
  # classes 2 and 3.
  p = [[0.7, 0.1, 0.1, 0.1], [0.2, 0.4, 0.2, 0.2], [0.05, 0.25, 0.55, 0.15],
       [0.2, 0.25, 0.1, 0.45]]
  np.testing.assert_allclose(np.sum(p, axis=0), [1.15, 1.0, 0.95, 0.9])
  sample, cls = jax.jit(L.mlkd_confidence_masks)(_log(p))
  np.testing.assert_array_equal(sample, [False, True, False, True])
  np.testing.assert_array_equal(cls, [False, False, True, True])
  # odd count: the median is the middle value (0.7), kept by `<=`: 3 of 5 rows
  t5 = _log([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.45, 0.55]])
  sample5, _ = jax.jit(L.mlkd_confidence_masks)(t5)
  np.testing.assert_array_equal(sample5, [False, True, True, False, True])
  # all tied: everything is kept
  sample_tied, cls_tied = jax.jit(L.mlkd_confidence_masks)(np.zeros((4, 3), np.float32))
  assert bool(jnp.all(sample_tied)) and bool(jnp.all(cls_tied))


def test_confidence_masks_match_numpy_percentile_on_torch():
  torch = pytest.importorskip("torch")
  import torch_losses_b as tl  # pylint: disable=import-outside-toplevel
  for seed, (b, c) in enumerate([(8, 10), (7, 5), (64, 100)]):
    _, t, _ = _inputs(10 + seed, b, c, dtype=np.float32)
    ours = jax.jit(L.mlkd_confidence_masks)(t)
    ref = tl.mlkd_masks(torch.tensor(t))
    np.testing.assert_array_equal(ours[0], ref[0].numpy())
    np.testing.assert_array_equal(ours[1], ref[1].numpy())


def test_batch_and_class_level_hand_values():
  # B = 1, C = 2, T = 1: student p = (1/2, 1/2), teacher p = (3/4, 1/4). float32: p is off by
  # ~1e-7, the difference 0.125 of Gram entries by ~2e-7, its square by ~3e-6 relative: rtol 1e-5.
  s = np.zeros((1, 2), np.float32)
  t = np.array([[math.log(3.0), 0.0]], np.float32)
  s2, t2, _ = _inputs(5, 4, 6, dtype=np.float32)
  def values(s, t, s2, t2):
    return {"bc_hand": L.mlkd_batch_level(s, t, temperatures=(1.0,)),
            "cc_hand": L.mlkd_class_level(s, t, temperatures=(1.0,)),
            "bc_self": L.mlkd_batch_level(t2, t2), "cc_self": L.mlkd_class_level(t2, t2),
            "bc_25": L.mlkd_batch_level(s2, t2, temperatures=(2.0, 5.0)),
            "bc_2": L.mlkd_batch_level(s2, t2, temperatures=(2.0,)),
            "bc_5": L.mlkd_batch_level(s2, t2, temperatures=(5.0,)),
            "inst_3": L.mlkd_instance_kd(s2, t2, temperatures=(3.0,)),
            "kd_3": L.kd(s2, t2, temperature=3.0)}
  v = jax.jit(values)(s, t, s2, t2)
  # sample Gram: sum p^2 = 0.5 vs 0.625 -> (0.125)^2 / B = 0.015625
  np.testing.assert_allclose(v["bc_hand"], 0.015625, rtol=1e-5)
  # class Gram: outer(p, p); differences 0.3125, -0.0625, -0.0625, -0.1875 -> 0.140625 / C
  np.testing.assert_allclose(v["cc_hand"], 0.0703125, rtol=1e-5)
  # zero at the teacher, and summed over temperatures
  np.testing.assert_allclose([v["bc_self"], v["cc_self"]], 0.0, atol=1e-7)
  np.testing.assert_allclose(v["bc_25"], v["bc_2"] + v["bc_5"], rtol=1e-6)
  np.testing.assert_allclose(v["inst_3"], v["kd_3"], rtol=1e-6)
  assert L.mlkd_temperatures(4.0) == (4.0, 3.0, 5.0, 2.0, 6.0)


def _mlkd_inputs(seed, b=6, c=5):
  rng = np.random.default_rng(seed)
  views = [(2.0 * rng.standard_normal((b, c))) for _ in range(4)]
  y = rng.integers(0, c, size=b).astype(np.int32)
  return views, y


def _torch_mlkd(tl, torch, views, y, **kw):
  sw, ss = (torch.tensor(v, requires_grad=True) for v in views[:2])
  tw, ts = (torch.tensor(v) for v in views[2:])
  out = tl.mlkd_losses(sw, ss, tw, ts, torch.tensor(y, dtype=torch.long), **kw)
  sum(out.values()).backward()
  return {k: v.item() for k, v in out.items()}, sw.grad.numpy(), ss.grad.numpy()


def _ours_mlkd(views, y, **kw):
  def total(sw, ss):
    out = L.mlkd(sw, ss, jnp.asarray(views[2]), jnp.asarray(views[3]), y, **kw)
    means = {k: jnp.mean(v) for k, v in out.items()}
    return sum(means.values()), means
  (_, means), grads = jax.jit(jax.value_and_grad(total, (0, 1), has_aux=True))(
      jnp.asarray(views[0]), jnp.asarray(views[1]))
  return {k: float(v) for k, v in means.items()}, np.asarray(grads[0]), np.asarray(grads[1])


MLKD_CASES = {
    "mlkd": ({}, {}),
    "mlkd_ls": ({"temperature": 2.0, "kd_weight": 9.0, "standardize": True},
                {"temperature": 2.0, "kd_weight": 9.0, "logit_stand": True}),
}


@pytest.mark.parametrize("case", list(MLKD_CASES))
def test_mlkd_matches_torch_float64(case):
  torch = pytest.importorskip("torch")
  import torch_losses_b as tl  # pylint: disable=import-outside-toplevel
  ours_kw, ref_kw = MLKD_CASES[case]
  views, y = _mlkd_inputs(20)
  with jax.enable_x64(True):
    ours = _ours_mlkd(views, y, **ours_kw)
  ref = _torch_mlkd(tl, torch, views, y, **ref_kw)
  n = 6 * 6 * 5 * 5 * 4  # Gram entries x temperatures x a few operations
  names = {"ce": "loss_ce", "kd": "loss_kd", "cc": "loss_cc", "bc": "loss_bc"}
  for ours_name, ref_name in names.items():
    _close(ours[0][ours_name], ref[0][ref_name], n, f"{case}: {ours_name}")
  _close(ours[1], ref[1], n, f"{case}: grad weak")
  _close(ours[2], ref[2], n, f"{case}: grad strong")


def test_mlkd_comparison_catches_a_dropped_quirk():
  torch = pytest.importorskip("torch")
  import torch_losses_b as tl  # pylint: disable=import-outside-toplevel
  views, y = _mlkd_inputs(20)
  with jax.enable_x64(True):
    ours = _ours_mlkd(views, y)
  ref = _torch_mlkd(tl, torch, views, y)
  # defect: the strong-view instance term takes its last two temperatures from the strong view
  sw, ss, tw, ts = (torch.tensor(v) for v in views)
  as_written = sum(0.9 * tl.mlkd_kd_loss(sw, tw, tt) for tt in (2.0, 6.0)).item()
  tidied = sum(0.9 * tl.mlkd_kd_loss(ss, ts, tt) for tt in (2.0, 6.0)).item()
  defect = ref[0]["loss_kd"] - as_written + tidied
  _close(ours[0]["kd"], ref[0]["loss_kd"], 3000, "kd")
  assert abs(defect - ours[0]["kd"]) > 1e6 * _bound(3000) * (1 + abs(defect))


def test_mlkd_strong_view_skips_class_and_batch_levels():
  views, y = _mlkd_inputs(21)
  def levels(ss):
    out = L.mlkd(views[0], ss, views[2], views[3], y)
    return out["cc"] + out["bc"]
  g = jax.jit(jax.grad(levels))(jnp.asarray(views[1], jnp.float32))
  np.testing.assert_array_equal(g, 0.0)
  # a uniform teacher keeps every sample, f_s = 1: the weak-view instance term is then the plain
  # five-temperature sum
  def parts(sw, ss, tw, ts):
    out = L.mlkd(sw, ss, tw, ts, y, kd_weight=1.0)
    expected = (L.mlkd_instance_kd(sw, tw) + L.mlkd_instance_kd(ss, ts, temperatures=(4., 3., 5.))
                + L.mlkd_instance_kd(sw, tw, temperatures=(2.0, 6.0)))
    return out["kd"], expected
  kd, expected = jax.jit(parts)(views[0], views[1], np.zeros_like(views[2]), views[3])
  np.testing.assert_allclose(kd, expected, rtol=1e-6)


def test_mlkd_finite_differences_float64():
  views, y = _mlkd_inputs(22, b=4, c=4)
  with jax.enable_x64(True):
    tw, ts = jnp.asarray(views[2]), jnp.asarray(views[3])
    def total(sw, ss):
      out = L.mlkd(sw, ss, tw, ts, y, standardize=True)
      return sum(jnp.mean(v) for v in out.values())
    check_grads(jax.jit(total), (jnp.asarray(views[0]), jnp.asarray(views[1])), order=1,
                modes=["rev"], atol=1e-6, rtol=1e-6)


def test_mlkd_bad_input():
  views, y = _mlkd_inputs(23)
  with pytest.raises(ValueError, match=r"weak and strong.*\(6, 5\).*\(5, 5\)"):
    L.mlkd(views[0], views[1][:5], views[2], views[3][:5], y)
  with pytest.raises(ValueError, match=r"temperatures.*-1"):
    L.mlkd_batch_level(views[0], views[2], temperatures=(2.0, -1.0))


# ============================================================================ DIST


def test_pearson_hand_values():
  a = jnp.array([[1.0, 2.0, 3.0, 4.0]])
  b = jnp.array([[1.0, 3.0, 2.0, 4.0]])
  # centred (-1.5, -0.5, 0.5, 1.5) and (-1.5, 0.5, -0.5, 1.5): dot 4, norms sqrt(5) -> 0.8
  np.testing.assert_allclose(pearson(a, b), 0.8, rtol=1e-6)
  np.testing.assert_allclose(pearson(a, -a), -1.0, rtol=1e-6)
  np.testing.assert_allclose(pearson(a, 3 * a + 7), 1.0, rtol=1e-6)


def test_dist_zero_at_teacher_and_batch_of_one():
  _, t, _ = _inputs(30, 5, 6, dtype=np.float32)
  np.testing.assert_allclose(jax.jit(L.dist)(t, t), 0.0, atol=1e-4)
  # B = 1: every class column is a single value, centred to 0: rho = 0, intra = tau^2,
  # and the gradient is exactly zero, not NaN
  s1, t1 = _inputs(31, 1, 6, dtype=np.float32)[:2]
  value, g = jax.jit(jax.value_and_grad(lambda v: L.dist_intra(v, t1, tau=4.0)))(s1)
  np.testing.assert_allclose(value, 16.0, rtol=1e-6)
  np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("shape,tau", [((4, 6), 4.0), ((7, 3), 1.0), ((1, 5), 4.0)])
def test_dist_matches_torch_float64(shape, tau):
  torch = pytest.importorskip("torch")
  import torch_losses_b as tl  # pylint: disable=import-outside-toplevel
  s, t, _ = _inputs(32, *shape, scale=3.0)
  with jax.enable_x64(True):
    def ours(sv):
      return L.dist(sv, jnp.asarray(t), beta=1.0, gamma=1.0, tau=tau)
    def parts(sv):
      return (jax.value_and_grad(ours)(sv), jnp.mean(L.dist_inter(sv, t, tau=tau)),
              L.dist_intra(sv, t, tau=tau))
    (v, g), inter, intra = jax.jit(parts)(jnp.asarray(s))
  ts = torch.tensor(s, requires_grad=True)
  ref = tl.dist_loss(ts, torch.tensor(t), 1.0, 1.0, tau)
  ref.backward()
  n = shape[0] * shape[1] * 6
  _close(v, ref.item(), n, "value")
  _close(g, ts.grad.numpy(), n, "grad")
  tt = torch.tensor(t)
  _close(inter, tl.dist_loss(torch.tensor(s), tt, 1.0, 0.0, tau).item(), n, "inter")
  _close(intra, tl.dist_loss(torch.tensor(s), tt, 0.0, 1.0, tau).item(), n, "intra")


def test_dist_comparison_catches_eps_placement():
  torch = pytest.importorskip("torch")
  import torch_losses_b as tl  # pylint: disable=import-outside-toplevel
  # near-uniform columns: the 1e-8 added to the product of norms matters; a defect that adds
  # it to each norm instead differs from the reference by far more than the bound
  s, t, _ = _inputs(33, 4, 6, scale=1e-3)
  ref = tl.dist_loss(torch.tensor(s), torch.tensor(t), 1.0, 1.0, 1.0).item()
  with jax.enable_x64(True):
    def both(sv, tv):
      ys, yt = jax.nn.softmax(sv), jax.nn.softmax(tv)
      def wrong_pearson(a, b, axis):
        a = a - a.mean(axis, keepdims=True)
        b = b - b.mean(axis, keepdims=True)
        na = jnp.sqrt(jnp.sum(a * a, axis)) + 1e-8
        nb = jnp.sqrt(jnp.sum(b * b, axis)) + 1e-8
        return jnp.sum(a * b, axis) / (na * nb)
      wrong = (1 - wrong_pearson(ys, yt, 1).mean()) + (1 - wrong_pearson(ys, yt, 0).mean())
      return L.dist(sv, tv, tau=1.0), wrong
    ours, wrong = (float(v) for v in jax.jit(both)(jnp.asarray(s), jnp.asarray(t)))
  _close(ours, ref, 4 * 6 * 6, "value")
  assert abs(wrong - ref) > 1e6 * _bound(144) * (1 + abs(ref))


def test_dist_finite_differences_float64():
  with jax.enable_x64(True):
    s, t, _ = _inputs(34, 5, 4, scale=2.0)
    t = jnp.asarray(t)
    check_grads(jax.jit(lambda v: jnp.stack([L.dist(v, t, beta=2.0, gamma=0.5, tau=4.0),
                                             jnp.mean(L.dist_inter(v, t, tau=1.0))])),
                (jnp.asarray(s),), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_dist_teacher_receives_no_gradient():
  s, t, _ = _inputs(35, 4, 5, dtype=np.float32)
  g = jax.jit(jax.grad(lambda u: L.dist(s, u, tau=4.0)))(t)
  np.testing.assert_array_equal(g, 0.0)
