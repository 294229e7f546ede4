"""Tests of kd_jax.losses against docs/methods.md: golden values, identities, gradients, edge cases.

PyTorch comparisons use tests/torch_losses.py and are skipped cleanly when torch is absent.
One style throughout: module-level pytest functions, `pytest.mark.parametrize` for cases (running
with and without `jax.jit` included), numpy.testing for values, chex or plain `assert` otherwise.
"""
import functools
import math

import chex
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from kd_jax import losses as L
import yardstick  # pylint: disable=g-import-not-at-top,wrong-import-order

# docs/methods.md §8 inputs (B = 3, C = 5).
S = np.array([[1.0, 2.0, 0.5, -1.0, 0.0], [0.2, -0.3, 1.5, 0.7, 2.2],
              [0.3, 1.2, -0.4, 0.9, 0.1]], np.float32)
T = np.array([[0.5, 3.0, 1.0, -2.0, 0.1], [1.0, 0.0, 2.5, 2.5, -1.0],
              [2.0, 1.0, 0.0, -1.0, 3.0]], np.float32)
Y = np.array([1, 3, 1], np.int32)

# docs/methods.md §8 table: per-row values (independent float64 transcription, 6 decimals).
GOLDEN_ROWS = {
    "ce": [0.574438, 2.161210, 0.986621],
    "kd": [0.239016, 1.319627, 1.310821],
    "tckd": [0.142458, 0.362988, 0.127884],
    "nckd": [0.147041, 1.319083, 1.456886],
    "scd": [0.142458, 0.362988, 0.199083],
    "mcd": [0.147041, 1.555482, 0.657675],
    "scd_tau1": [0.105065, 0.312587, 0.142069],
    "kd_ls": [0.031530, 0.764249, 0.954344],
    "bkln": [0.311026, 1.769472, 1.781376],
    "rk_k1": [0.342513, 0.995176, 1.129659],
    "rk_k100": [0.2, 0.9, 1.2],
    "rk_k100_sign": [0.2, 0.9, 1.2],
}
GOLDEN_BATCH = {
    "ce": 1.240756, "kd": 0.956488, "ce_kd": 0.984915, "tckd": 0.211110, "nckd": 0.974337,
    "dkd": 8.005804, "scd": 0.234843, "mcd": 0.786733, "rld": 6.528705, "scd_tau1": 0.186574,
    "kd_ls": 0.583374, "bkln": 1.287291, "rk_k1": 0.822449, "rk_k100": 0.766667,
}
GOLDEN_PT_Y = [0.343333, 0.274770, 0.188038]
GOLDEN_Z_ROW0 = [0.447214, 1.341641, 0.0, -1.341641, -0.447214]
ATOL6 = 1.5e-6  # 6-decimal rounding of the table plus float32 error
# Written bound of the float32 hand cases in this file (at most 9 classes, values of order 1,
# no cancellation): each side is a chain of a few dozen roundings, exp/log/tanh counted twice,
# and a sum over at most 9 classes in any order adds yardstick.gamma(9) = 5.4e-7, so its
# relative round-off stays below ~5e-6 on any IEEE machine and summation order; rtol 1e-5
# bounds it, rtol 1e-6 is used where both sides share all but one or two operations, and the
# 6-decimal table's atol adds its own rounding (5e-7). Larger inputs take their bounds from a
# float64 reference (near_reference) or PyTorch in float64.


def _golden_quantities(s, t, y):
  out = {
      "ce": L.cross_entropy(s, y),
      "kd": L.kd(s, t, temperature=4.0),
      "tckd": L.tckd(s, t, y, temperature=4.0),
      "nckd": L.nckd(s, t, y, temperature=4.0),
      "dkd": L.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
      "scd": L.scd(s, t, y, temperature=4.0),
      "mcd": L.mcd(s, t, y, temperature=4.0),
      "rld": L.rld(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
      "scd_tau1": L.scd(s, t, y, temperature=1.0),
      "kd_ls": L.kd(s, t, temperature=2.0, standardize=True),
      "bkln": L.binary_kl_norm(s, t, temperature=2.0),
      "rk_k1": L.rank_kendall(s, t, steepness=1.0),
      "rk_k100": L.rank_kendall(s, t, steepness=100.0),
      "rk_k100_sign": L.rank_kendall(s, t, steepness=100.0, form="sign_teacher"),
      "z": L.standardize(s),
  }
  out["ce_kd"] = 0.1 * out["ce"] + 0.9 * out["kd"]
  return out


def _kd_family(s, t, y, **kw):
  """Every softmax-based distillation loss, stacked as [n_losses, B]."""
  return jnp.stack([
      L.kd(s, t, **kw), L.tckd(s, t, y, **kw), L.nckd(s, t, y, **kw), L.dkd(s, t, y, **kw),
      L.scd(s, t, y, **kw), L.mcd(s, t, y, **kw), L.rld(s, t, y, **kw),
  ])


def _random_inputs(seed, batch, classes, scale=2.0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  s = (scale * rng.standard_normal((batch, classes))).astype(dtype)
  t = (scale * rng.standard_normal((batch, classes))).astype(dtype)
  y = rng.integers(0, classes, size=batch).astype(np.int32)
  return s, t, y


# A test marked with_and_without_jit runs twice: its function under jax.jit, and called as is.
with_and_without_jit = pytest.mark.parametrize(
    "variant", [jax.jit, lambda fn: fn], ids=["with_jit", "without_jit"])


# ----------------------------------------------------------------------------- golden values


@with_and_without_jit
def test_golden_values(variant):
  out = variant(_golden_quantities)(S, T, Y)
  for name, rows in GOLDEN_ROWS.items():
    np.testing.assert_allclose(out[name], rows, atol=ATOL6, rtol=0, err_msg=name)
    assert out[name].dtype == jnp.float32, name
  for name, value in GOLDEN_BATCH.items():
    np.testing.assert_allclose(jnp.mean(out[name]), value, atol=ATOL6, rtol=1e-6, err_msg=name)
  np.testing.assert_allclose(out["z"][0], GOLDEN_Z_ROW0, atol=ATOL6, rtol=0)


@with_and_without_jit
def test_kd_decomposes_into_tckd_and_nckd(variant):
  def parts(s, t, y):
    return (L.kd(s, t, temperature=4.0), L.tckd(s, t, y, temperature=4.0),
            L.nckd(s, t, y, temperature=4.0))
  p_t_y = jax.nn.softmax(T / 4.0)[np.arange(3), Y]
  np.testing.assert_allclose(p_t_y, GOLDEN_PT_Y, atol=ATOL6)
  kd, tc, nc = variant(parts)(S, T, Y)
  np.testing.assert_allclose(kd, tc + (1 - p_t_y) * nc, rtol=1e-5, atol=1e-6)
  s, t, y = _random_inputs(0, 6, 9, scale=3.0)
  kd, tc, nc = variant(parts)(s, t, y)
  p_t_y = jax.nn.softmax(t / 4.0)[np.arange(6), y]
  np.testing.assert_allclose(kd, tc + (1 - p_t_y) * nc, rtol=1e-5, atol=1e-6)


@with_and_without_jit
def test_two_classes(variant):
  def two(s, t, y):
    return (L.kd(s, t), L.nckd(s, t, y), L.tckd(s, t, y), L.mcd(s, t, y), L.rld(s, t, y),
            L.scd(s, t, y), L.standardize(s))
  # docs/methods.md §8: s = [2, -1], t = [0.5, 1.5], y = 0, T = 4 -> NCKD = 0, KD = 1.969729.
  # Second row: teacher right (M = {y}); third: teacher wrong (both masked).
  s = np.array([[2.0, -1.0], [0.3, 4.0], [-2.0, 7.0]], np.float32)
  t = np.array([[0.5, 1.5], [3.0, -1.0], [1.0, 2.0]], np.float32)
  y = np.array([0, 0, 0], np.int32)
  kd, nc, tc, mc, rl, sc, z = variant(two)(s, t, y)
  np.testing.assert_allclose(kd[0], 1.969729, atol=ATOL6)
  np.testing.assert_array_equal(nc, 0.0)
  np.testing.assert_array_equal(mc, 0.0)
  np.testing.assert_allclose(kd, tc, rtol=1e-6)  # TCKD is ordinary binary KD when C = 2
  np.testing.assert_allclose(rl, sc, rtol=1e-6)  # alpha = 1, MCD = 0
  np.testing.assert_allclose(jnp.abs(z), 1 / math.sqrt(2), rtol=1e-6)


# ----------------------------------------------------------------------------- standardize


@with_and_without_jit
def test_moments_and_invariance(variant):
  s, _, _ = _random_inputs(1, 3, 5, scale=5.0)
  s[2] = [9.0, -1.0, -1.0, -1.0, -1.0]  # the extreme row reaching |z| = (C-1)/sqrt(C)
  z = variant(L.standardize)(s)
  np.testing.assert_allclose(jnp.mean(z, axis=1), 0.0, atol=1e-6)
  np.testing.assert_allclose(jnp.std(z, axis=1, ddof=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(z[2, 0], 4 / math.sqrt(5), rtol=1e-6)
  scale = np.array([[0.5], [3.0], [0.1]], np.float32)
  shift = np.array([[-7.0], [2.0], [4.0]], np.float32)
  np.testing.assert_allclose(variant(L.standardize)(s * scale + shift), z, atol=2e-5)


def test_constant_row_value_zero_and_finite_gradient():
  # Row 0 constant, as a zero-initialised student head; the plain formula's gradient is NaN.
  x = np.array([[3.0, 3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0, 0.0]], np.float32)
  w = np.array([[1.0, -2.0, 0.5, 0.3, 0.1], [1.0, 1.0, -1.0, 2.0, 0.0]], np.float32)
  def f(v):
    return jnp.sum(L.standardize(v) * w) + jnp.sum(L.kd(v, x[::-1], standardize=True))
  z, grad = jax.jit(lambda v: (L.standardize(v), jax.grad(f)(v)))(x)
  np.testing.assert_array_equal(z[0], 0.0)
  chex.assert_tree_all_finite(grad)
  assert np.any(grad[0] != 0)


# public loss -> function of (s, t, y) stacking its variants, for float64 gradient checks
GRAD_CASES = {
    "cross_entropy": lambda s, t, y: jnp.stack([
        L.cross_entropy(s, y), L.cross_entropy(s, y, label_smoothing=0.1)]),
    "kd": lambda s, t, y: jnp.stack([
        L.kd(s, t, temperature=3.0), L.kd(s, t, temperature=2.0, standardize=True)]),
    "tckd": lambda s, t, y: L.tckd(s, t, y, temperature=2.0),
    "nckd": lambda s, t, y: L.nckd(s, t, y, temperature=2.0),
    "dkd": lambda s, t, y: jnp.stack([
        L.dkd(s, t, y, alpha=1.0, beta=2.0, temperature=4.0),
        L.dkd(s, t, y, temperature=2.0, standardize=True)]),
    "scd": lambda s, t, y: L.scd(s, t, y, temperature=1.5),
    "mcd": lambda s, t, y: L.mcd(s, t, y, temperature=2.0),
    "rld": lambda s, t, y: jnp.stack([
        L.rld(s, t, y, alpha_temperature=1.0),
        L.rld(s, t, y, temperature=2.0, standardize=True)]),
    "binary_kl_norm": lambda s, t, y: L.binary_kl_norm(s, t, temperature=2.0),
    "rank_kendall": lambda s, t, y: jnp.stack([
        L.rank_kendall(s, t, steepness=1.0),
        L.rank_kendall(s, t, steepness=3.0, form="sigmoid"),
        L.rank_kendall(s, t, steepness=2.0, form="sign_teacher", top_k=4)]),
    "standardize": lambda s, t, y: L.standardize(s),
}


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_grad_matches_finite_differences_float64(name):
  fn = GRAD_CASES[name]
  with jax.enable_x64(True):
    s, t, y = _random_inputs(3, 3, 6, scale=1.5, dtype=np.float64)
    t[1] = 0.0  # one teacher row with every class tied
    s, t = jnp.asarray(s), jnp.asarray(t)
    chex.assert_type(s, jnp.float64)
    f = jax.jit(lambda v: fn(v, t, y))
    chex.assert_type(f(s), jnp.float64)
    check_grads(f, (s,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_teacher_receives_no_gradient():
  s, t, y = _random_inputs(4, 3, 5)
  names = [n for n in GRAD_CASES if not n.startswith(("cross_entropy", "standardize"))]
  def per_loss_teacher_grads(tt):
    return [jax.grad(lambda u, fn=GRAD_CASES[n]: jnp.sum(fn(s, u, y)))(tt) for n in names]
  for name, g in zip(names, jax.jit(per_loss_teacher_grads)(t)):
    np.testing.assert_array_equal(g, 0.0, err_msg=name)


# ----------------------------------------------------------------------------- invariances


@with_and_without_jit
def test_row_shift_invariance(variant):
  s, t, y = _random_inputs(5, 3, 5)
  c_s = np.array([[3.0], [-5.0], [8.0]], np.float32)
  c_t = np.array([[-2.0], [6.0], [-9.0]], np.float32)
  for standardize in (False, True):
    fam = variant(functools.partial(_kd_family, temperature=2.0, standardize=standardize))
    base = fam(s, t, y)
    np.testing.assert_allclose(fam(s + c_s, t, y), base, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(fam(s, t + c_t, y), base, atol=2e-5, rtol=1e-5)
  # LS also removes a positive per-row scale.
  fam = variant(functools.partial(_kd_family, temperature=2.0, standardize=True))
  np.testing.assert_allclose(fam(s * 7.0, t * 0.25, y), fam(s, t, y), atol=2e-5, rtol=1e-5)


@with_and_without_jit
def test_dkd_equals_rld_when_teacher_right(variant):
  s, t, y = _random_inputs(6, 3, 5)
  y = np.argmax(t, axis=1).astype(np.int32)  # untied teacher top-1 = label
  def both(s, t, y, standardize):
    return (L.dkd(s, t, y, alpha=0.7, beta=3.0, temperature=3.0, standardize=standardize),
            L.rld(s, t, y, alpha=0.7, beta=3.0, temperature=3.0, standardize=standardize),
            L.tckd(s, t, y, temperature=3.0), L.scd(s, t, y, temperature=3.0),
            L.nckd(s, t, y, temperature=3.0), L.mcd(s, t, y, temperature=3.0))
  for standardize in (False, True):
    d, r, tc, sc, nc, mc = variant(functools.partial(both, standardize=standardize))(
        s, t, y)
    np.testing.assert_allclose(d, r, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tc, sc, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(nc, mc, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- edge cases


@with_and_without_jit
def test_rld_all_masked_rows_are_zero(variant):
  # Row 0: y is the teacher's lowest logit; row 1: every logit ties with t[y];
  # row 2: ordinary row (teacher wrong, partly masked).
  s = np.array([[1.0, 2.0, 3.0, -4.0, 0.0], [0.5, -0.5, 2.0, 1.0, 0.0],
                [3.0, 1.0, 0.0, 2.0, 1.0]], np.float32)
  t = np.array([[2.0, 1.0, 3.0, -1.0, 0.0], [1.5, 1.5, 1.5, 1.5, 1.5],
                [0.0, 3.0, -1.0, 2.0, 2.5]], np.float32)
  y = np.array([3, 2, 3], np.int32)  # row 2: mask {1, 3, 4}, classes 0 and 2 remain
  def parts(s, t, y):
    return (L.mcd(s, t, y), L.rld(s, t, y, alpha=0.0, beta=8.0), L.rld(s, t, y),
            L.scd(s, t, y), jax.grad(lambda v: jnp.sum(L.rld(v, t, y)))(s),
            jax.grad(lambda v: jnp.sum(L.mcd(v, t, y)))(s))
  mc, rld_beta, rld_full, sc, g, g_mcd = variant(parts)(s, t, y)
  np.testing.assert_array_equal(mc[:2], 0.0)
  np.testing.assert_array_equal(rld_beta[:2], 0.0)
  np.testing.assert_array_equal(rld_full[:2], sc[:2])
  assert float(mc[2]) > 0.0
  chex.assert_tree_all_finite(g)
  # masked student entries get no MCD gradient: rows 0-1 entirely, row 2 at classes 1, 3, 4
  np.testing.assert_array_equal(g_mcd[:2], 0.0)
  np.testing.assert_array_equal(g_mcd[2, [1, 3, 4]], 0.0)
  assert np.all(g_mcd[2, [0, 2]] != 0)


def test_huge_logits_finite():
  rng = np.random.default_rng(7)
  s = rng.uniform(-1e3, 1e3, (3, 5)).astype(np.float32)
  t = rng.uniform(-1e3, 1e3, (3, 5)).astype(np.float32)
  s[0] = -1e3
  s[0, 3] = 1e3  # student gap 2000 >> 87 T: the reference's TCKD/SCD would be inf
  t[0] = [0.5, -0.2, 1.0, 0.0, 0.3]  # moderate teacher: p_t[y] ~ 0.2
  t[1] = t[1, 0]  # tied teacher row
  y = np.array([0, 1, 2], np.int32)
  def total(v):
    out = jnp.stack([L.kd(v, t), L.dkd(v, t, y), L.rld(v, t, y, alpha_temperature=1.0),
                     L.rld(v, t, y, temperature=2.0, standardize=True),
                     L.cross_entropy(v, y), L.binary_kl_norm(v, t), L.rank_kendall(v, t)])
    return jnp.sum(out), out
  (_, out), g = jax.jit(jax.value_and_grad(total, has_aux=True))(s)
  chex.assert_tree_all_finite((out, g))
  # TCKD row 0 in closed form (float64): b_s = [e^{-500}, ~1] at T = 4.
  with jax.enable_x64(True):
    lt = jax.nn.log_softmax(jnp.asarray(t[0], jnp.float64) / 4.0)
    lbt = jnp.array([lt[0], jax.nn.logsumexp(lt[1:])])
    ls0 = (-1e3 - 1e3) / 4.0 - math.log1p(4 * math.exp(-500.0))
    lbs = jnp.array([ls0, math.log1p(-math.exp(ls0))])
    expected = 16.0 * jnp.sum(jnp.exp(lbt) * (lbt - lbs))
  assert float(expected) > 1.0
  np.testing.assert_allclose(L.tckd(s, t, y)[0], expected, rtol=1e-5)


def test_batch_of_one():
  s, t, y = S[2:3], T[2:3], Y[2:3]
  names = ["kd", "tckd", "nckd", "scd", "mcd", "kd_ls", "bkln", "rk_k1"]
  out = jax.jit(lambda s, t, y: {n: v for n, v in _golden_quantities(s, t, y).items()
                                 if n in names})(s, t, y)
  chex.assert_tree_shape(out, (1,))  # names the failing loss
  for name in names:
    rows = GOLDEN_ROWS[name]
    np.testing.assert_allclose(out[name], rows[2:3], atol=ATOL6, err_msg=name)


def test_binary_kl_norm_shape_and_clip():
  temp = 2.0
  clip = math.log((1 - 1e-8) / 1e-8)
  # One element per row (C = 1), so the per-example output is the per-element loss.
  a = np.array([[0.01], [-0.3], [20.0], [-30.0], [60.0], [1e30], [-3e38], [3e38]], np.float32)
  t = np.zeros_like(a)
  t[7] = -3e38  # a - t overflows float32 to +inf
  per, grad = jax.jit(jax.vmap(jax.value_and_grad(
      lambda v, w: jnp.sum(L.binary_kl_norm(v, w, temperature=temp))), (0, 0)))(
          a[:, None], t[:, None])
  grad = grad[:, 0, 0]
  chex.assert_tree_all_finite(per)
  x = a[:, 0].astype(np.float64) - t[:, 0]
  # small differences ~ (a - t)^2 / 8, accurately (no cancellation in logcosh)
  np.testing.assert_allclose(per[:2], x[:2] ** 2 / 8, rtol=2e-3)
  # inside the clip, large |x|: T^2 logcosh(x / 2T) ~ T |a - t| / 2 - T^2 log 2
  np.testing.assert_allclose(per[2:4], temp * np.abs(x[2:4]) / 2 - temp ** 2 * math.log(2),
                             rtol=1e-4)
  # beyond the clip |x / T| > 18.42: constant T^2 logcosh(L / 2) and exactly zero gradient
  cap = temp ** 2 * (clip / 2 - math.log(2) + math.log1p(math.exp(-clip)))
  np.testing.assert_allclose(per[4:], cap, rtol=1e-6)
  np.testing.assert_allclose(grad[:4], temp / 2 * np.tanh(x[:4] / (2 * temp)), rtol=1e-5)
  np.testing.assert_array_equal(grad[4:], 0.0)


def test_label_smoothing_matches_definition():
  s, _, y = _random_inputs(8, 4, 6)
  eps = 0.2
  lsm = jax.nn.log_softmax(s)
  expected = -(1 - eps) * lsm[np.arange(4), y] - eps * jnp.mean(lsm, axis=1)
  np.testing.assert_allclose(L.cross_entropy(s, y, label_smoothing=eps), expected, rtol=1e-6)


def test_low_precision_inputs_computed_in_float32():
  s, t, y = _random_inputs(9, 3, 5)
  out = L.dkd(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16), y)
  chex.assert_type(out, jnp.float32)
  ref = L.dkd(jnp.asarray(s, jnp.bfloat16).astype(jnp.float32),
              jnp.asarray(t, jnp.bfloat16).astype(jnp.float32), y)
  np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_losses_are_nonnegative_and_zero_at_teacher():
  s, t, y = _random_inputs(10, 3, 5)
  y[0] = np.argmax(t[0])
  y[1:] = (np.argmax(t[1:], axis=1) + 1) % 5
  fam = jax.jit(_kd_family)
  assert np.all(np.asarray(fam(s, t, y)) >= -1e-6)
  at_teacher = fam(t, t, y)  # rows: kd, tckd, nckd, dkd, scd, mcd, rld
  np.testing.assert_allclose(np.asarray(at_teacher)[[0, 1, 2, 3, 5]], 0.0, atol=1e-6)
  # SCD splits the student around y and the teacher around its top-1: 0 only where they agree
  np.testing.assert_allclose(at_teacher[4, 0], 0.0, atol=1e-6)
  assert float(at_teacher[4, 1:].min()) > 1e-5
  np.testing.assert_allclose(L.binary_kl_norm(t, t), 0.0, atol=1e-7)


# ----------------------------------------------------------------------------- bad input


BAD_INPUTS = [
    ("labels_float", lambda: L.dkd(S, T, Y.astype(np.float32)), r"labels.*float32"),
    ("labels_shape", lambda: L.rld(S, T, Y[:2]), r"labels.*\(3,\).*\(2,\)"),
    ("logits_rank1", lambda: L.kd(S[0], T[0]), r"rank 2.*rank 1"),
    ("logits_rank3", lambda: L.kd(S[None], T[None]), r"rank 3"),
    ("shape_mismatch", lambda: L.kd(S, T[:, :4]), r"\(3, 5\) and \(3, 4\)"),
    ("broadcastable", lambda: L.binary_kl_norm(S, T[:1]), r"\(3, 5\) and \(1, 5\)"),
    ("int_logits", lambda: L.kd(S.astype(np.int32), T), r"floating.*int32"),
    ("temperature_neg", lambda: L.kd(S, T, temperature=-1.0), r"temperature.*-1\.0"),
    ("temperature_zero", lambda: L.tckd(S, T, Y, temperature=0.0), r"temperature.*0\.0"),
    ("alpha_temperature", lambda: L.rld(S, T, Y, alpha_temperature=-2.0),
     r"alpha_temperature.*-2\.0"),
    ("bkln_temperature", lambda: L.binary_kl_norm(S, T, temperature=float("nan")),
     r"temperature.*nan"),
    ("form", lambda: L.rank_kendall(S, T, form="cosine"),
     r"form.*'tanh', 'sigmoid', 'sign_teacher'.*'cosine'"),
    ("steepness", lambda: L.rank_kendall(S, T, steepness=0.0), r"steepness.*0\.0"),
    ("top_k_big", lambda: L.rank_kendall(S, T, top_k=6), r"top_k.*C=5.*6"),
    ("top_k_one", lambda: L.rank_kendall(S, T, top_k=1), r"top_k.*\b1\b"),
    ("top_k_float", lambda: L.rank_kendall(S, T, top_k=2.5), r"top_k.*2\.5"),
    ("label_smoothing", lambda: L.cross_entropy(S, Y, label_smoothing=1.5),
     r"label_smoothing.*1\.5"),
    ("one_class", lambda: L.kd(S[:, :1], T[:, :1]), r"at least 2 classes.*\(3, 1\)"),
    ("standardize_flag", lambda: L.kd(S, T, standardize="yes"), r"standardize.*'yes'"),
    ("alpha_vector", lambda: L.dkd(S, T, Y, alpha=np.ones(3)), r"alpha.*scalar.*\(3,\)"),
]


@pytest.mark.parametrize("name,call,pattern", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_naming_the_value(name, call, pattern):
  del name
  with pytest.raises(ValueError, match=pattern):
    call()


def test_array_likes_and_narrow_integer_labels_accepted():
  ref = L.dkd(S, T, Y)
  np.testing.assert_allclose(L.dkd(S.tolist(), T.tolist(), Y.tolist()), ref, rtol=1e-6)
  np.testing.assert_allclose(L.dkd(S, T, Y.astype(np.uint8)), ref, rtol=1e-6)
  np.testing.assert_allclose(L.rld(S, T, Y.astype(np.int8)), L.rld(S, T, Y), rtol=1e-6)


def test_bad_input_raises_at_trace_time_under_jit():
  with pytest.raises(ValueError, match=r"labels.*float32"):
    jax.jit(L.dkd)(S, T, Y.astype(np.float32))
  with pytest.raises(ValueError, match=r"\(3, 5\) and \(3, 4\)"):
    jax.jit(L.rank_kendall)(S, T[:, :4])
  with pytest.raises(ValueError, match=r"temperature.*-3"):
    jax.jit(functools.partial(L.kd, temperature=-3.0))(S, T)


# ----------------------------------------------------------------------------- PyTorch


def _torch_cases(tl):
  """name -> (kd_jax fn(s, t, y), torch fn(s, t, y)) for the same reference formulas."""
  import torch  # pylint: disable=import-outside-toplevel

  def pair(*fns):  # several losses at once, flattened, so one compile covers them
    return (lambda s, t, y: jnp.concatenate([f(s, t, y).reshape(-1) for f, _ in fns]),
            lambda s, t, y: torch.cat([g(s, t, y).reshape(-1) for _, g in fns]))
  ce = (lambda s, t, y: L.cross_entropy(s, y, label_smoothing=0.1),
        lambda s, t, y: tl.cross_entropy(s, y, label_smoothing=0.1))
  kd = (lambda s, t, y: L.kd(s, t, temperature=4.0), lambda s, t, y: tl.kd(s, t, 4.0))
  kd_ls = (lambda s, t, y: L.kd(s, t, temperature=2.0, standardize=True),
           lambda s, t, y: tl.kd(s, t, 2.0, use_ls=True))
  tckd = (lambda s, t, y: L.tckd(s, t, y, temperature=4.0),
          lambda s, t, y: tl.tckd(s, t, y, 4.0))
  nckd = (lambda s, t, y: L.nckd(s, t, y, temperature=4.0),
          lambda s, t, y: tl.nckd(s, t, y, 4.0))
  dkd_ls = (lambda s, t, y: L.dkd(s, t, y, alpha=2.0, beta=9.0, temperature=2.0,
                                  standardize=True),
            lambda s, t, y: tl.dkd(s, t, y, 2.0, 9.0, 2.0, use_ls=True))
  scd = (lambda s, t, y: L.scd(s, t, y, temperature=1.0), lambda s, t, y: tl.scd(s, t, y, 1.0))
  mcd = (lambda s, t, y: L.mcd(s, t, y, temperature=4.0), lambda s, t, y: tl.mcd(s, t, y, 4.0))
  rld = (lambda s, t, y: L.rld(s, t, y, alpha=1.0, beta=8.0, temperature=4.0,
                               alpha_temperature=2.0),
         lambda s, t, y: tl.rld(s, t, y, 1.0, 8.0, 4.0, 2.0))
  rld_ls = (lambda s, t, y: L.rld(s, t, y, temperature=2.0, standardize=True),
            lambda s, t, y: tl.rld(s, t, y, 1.0, 8.0, 2.0, None, use_ls=True))
  bkln = (lambda s, t, y: L.binary_kl_norm(s, t, temperature=2.0),
          lambda s, t, y: tl.binary_kl_norm(s, t, 2.0))
  rk = (lambda s, t, y: L.rank_kendall(s, t, steepness=2.0),
        lambda s, t, y: tl.rank_kendall(s, t, 2.0))
  rk_forms = (lambda s, t, y: jnp.stack([
      L.rank_kendall(s, t, steepness=3.0, form="sigmoid"),
      L.rank_kendall(s, t, steepness=2.0, form="sign_teacher", top_k=4)]),
              lambda s, t, y: torch.stack([
                  tl.rank_kendall(s, t, 3.0, "sigmoid"),
                  tl.rank_kendall(s, t, 2.0, "sign_teacher", top_k=4)]))
  return {
      "ce_kd_bkln": pair(ce, kd, kd_ls, bkln),
      "dkd": pair(tckd, nckd, dkd_ls),
      "rld": pair(scd, mcd, rld, rld_ls),
      "rank_kendall": pair(rk, rk_forms),
      "imagenet_width": pair(kd, dkd_ls, rld, bkln, rk),
  }


def _compare_with_torch(name, s, t, y, rtol, atol, gtol):
  torch = pytest.importorskip("torch")
  import torch_losses as tl  # pylint: disable=import-outside-toplevel
  ours, theirs = _torch_cases(tl)[name]
  v, g = jax.jit(lambda v: (ours(v, t, y), jax.grad(lambda w: jnp.sum(ours(w, t, y)))(v)))(s)
  ts = torch.tensor(np.asarray(s), requires_grad=True)
  out = theirs(ts, torch.tensor(np.asarray(t)), torch.tensor(np.asarray(y), dtype=torch.long))
  out.sum().backward()
  np.testing.assert_allclose(np.asarray(v), out.detach().numpy(), rtol=rtol, atol=atol,
                             err_msg=name)
  np.testing.assert_allclose(np.asarray(g), ts.grad.numpy(), rtol=gtol, atol=gtol,
                             err_msg=name)


TORCH_NAMES = ["ce_kd_bkln", "dkd", "rld", "rank_kendall"]


def _torch_inputs(seed, batch, classes, dtype):
  s, t, y = _random_inputs(seed, batch, classes, scale=3.0, dtype=dtype)
  t[0, 1] = t[0, 4]  # a teacher tie
  y[1] = int(np.argmin(t[1]))  # all-masked RLD row
  return s, t, y


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_matches_torch_float64(name):
  pytest.importorskip("torch")
  with jax.enable_x64(True):
    s, t, y = _torch_inputs(11, 4, 7, np.float64)
    _compare_with_torch(name, jnp.asarray(s), jnp.asarray(t), y, rtol=1e-9, atol=1e-11,
                        gtol=1e-9)


def test_matches_torch_float32_imagenet_width():
  """1000 classes in float32: kd_jax's values and gradients stay within yardstick.FACTOR of
  PyTorch's own float32 error against PyTorch in float64 on the same inputs (measured here)."""
  torch = pytest.importorskip("torch")
  import torch_losses as tl  # pylint: disable=import-outside-toplevel
  s, t, y = _torch_inputs(12, 2, 1000, np.float32)
  ours, theirs = _torch_cases(tl)[name := "imagenet_width"]
  v, g = jax.jit(lambda v: (ours(v, t, y), jax.grad(lambda w: jnp.sum(ours(w, t, y)))(v)))(s)
  runs = {}
  for dtype in (torch.float32, torch.float64):
    ts = torch.tensor(s, dtype=dtype, requires_grad=True)
    out = theirs(ts, torch.tensor(t, dtype=dtype), torch.tensor(y, dtype=torch.long))
    out.sum().backward()
    runs[dtype] = (out.detach().numpy(), ts.grad.numpy())
  # Each of the 5 losses' 2 values (a loss of ~1 and one of ~1000 get bounds of their own),
  # then the gradient of their sum.
  families = len(np.asarray(v)) // len(y)
  cases = [(f"values of loss {k}", np.asarray(v).reshape(families, -1)[k],
            *(r[0].reshape(families, -1)[k] for r in (runs[torch.float32], runs[torch.float64])))
           for k in range(families)]
  cases.append(("gradients", g, runs[torch.float32][1], runs[torch.float64][1]))
  for what, got, want, want64 in cases:
    err, bound = yardstick.near_reference(got, want, want64)
    assert err <= bound, (name, what, err, bound)

