"""Tests of rank_kendall: exactness against the naive [B, C, C] formula, gradients, scaling.

Also smoke-runs benchmarks/rank_kendall.py and its PyTorch baseline at tiny sizes.
One style throughout: module-level pytest functions, `pytest.mark.parametrize` for cases (running
with and without `jax.jit` included), numpy.testing for values, chex or plain `assert` otherwise.
"""
import functools
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from kd_jax import losses as L
from kd_jax.losses import kendall
import yardstick  # pylint: disable=g-import-not-at-top,wrong-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def naive_rank_kendall(s, t, steepness, form="tanh", top_k=None):
  """The textbook broadcast form over [B, C, C] (docs/methods.md §7), teacher under stop_gradient."""
  t = jax.lax.stop_gradient(t)
  if top_k is not None:
    idx = jnp.argsort(-t, axis=1)[:, :top_k]
    s, t = jnp.take_along_axis(s, idx, 1), jnp.take_along_axis(t, idx, 1)
  c = s.shape[1]
  ds = s[:, :, None] - s[:, None, :]
  dt = t[:, :, None] - t[:, None, :]
  if form == "tanh":
    prod = jnp.tanh(steepness * ds) * jnp.tanh(steepness * dt)
  elif form == "sigmoid":
    prod = ((2 * jax.nn.sigmoid(steepness * ds) - 1) * (2 * jax.nn.sigmoid(steepness * dt) - 1))
  else:
    prod = jnp.tanh(steepness * ds) * jnp.sign(dt)
  return 1 - jnp.sum(prod, axis=(1, 2)) / (c * (c - 1))


def _inputs(seed, batch, classes, scale=0.05):
  """Logits with many pairs inside the |ds| < 3/k band at k = 100, so gradients are non-trivial."""
  rng = np.random.default_rng(seed)
  s = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
  t = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
  return s, t


# (steepness, form, top_k) configurations compared against the naive formula.
CONFIGS = [(100.0, "tanh", None), (5.0, "tanh", None), (30.0, "sigmoid", None),
           (100.0, "sign_teacher", None), (20.0, "tanh", 4), (50.0, "sign_teacher", 3)]


def _values_and_grads(s, t, naive):
  """[(value, grad of the row-weighted sum)] for every configuration in CONFIGS."""
  out = []
  weights = jnp.arange(1.0, s.shape[0] + 1)  # a different cotangent per row
  for k, form, top_k in CONFIGS:
    fn = functools.partial(naive_rank_kendall if naive else L.rank_kendall, steepness=k,
                           form=form, top_k=top_k)
    out.append((fn(s, t), jax.grad(lambda v, fn=fn: jnp.sum(fn(v, t) * weights))(s)))
  return out


_naive_values_and_grads = jax.jit(functools.partial(_values_and_grads, naive=True))


# A test marked with_and_without_jit runs twice: its function under jax.jit, and called as is.
with_and_without_jit = pytest.mark.parametrize(
    "variant", [jax.jit, lambda fn: fn], ids=["with_jit", "without_jit"])


# ----------------------------------------------------------------------------- exactness


def _pair_sum_bound(classes: int) -> float:
  """Written bound on two float32 forms of one value: each is 1 - (a weighted mean over the
  C(C-1)/2 class pairs of tanh-products of magnitude <= 1), so each is within gamma(pairs) (the
  sum, any order) plus a few ulps (tanh, the products, the division) of the exact value."""
  pairs = classes * (classes - 1) // 2
  return 2 * (yardstick.gamma(pairs) + yardstick.ulps(4))


@with_and_without_jit
def test_matches_naive_value_and_gradient(variant):
  for batch, classes in ((3, 7), (2, 8)):  # odd C, and even C (the half-weighted shift)
    s, t = _inputs(batch * classes, batch, classes)
    ours = variant(functools.partial(_values_and_grads, naive=False))(s, t)
    naive = _naive_values_and_grads(s, t)
    for cfg, (v, g), (vn, gn) in zip(CONFIGS, ours, naive):
      chex.assert_shape(v, (batch,))
      np.testing.assert_allclose(v, vn, atol=_pair_sum_bound(classes), err_msg=str(cfg))
      np.testing.assert_allclose(g, gn, atol=2e-6 * cfg[0], rtol=1e-5, err_msg=str(cfg))
      assert float(jnp.max(jnp.abs(g))) > 0.0


@with_and_without_jit
def test_two_and_three_classes(variant):
  s = np.array([[0.3, 0.31], [1.0, -2.0], [0.5, 0.5]], np.float32)
  t = np.array([[1.0, 0.0], [0.0, 0.01], [2.0, 1.0]], np.float32)
  v = variant(functools.partial(L.rank_kendall, steepness=10.0))(s, t)
  # C = 2: rk = 1 - tanh(k (s1 - s2)) tanh(k (t1 - t2)) (docs/methods.md §7)
  expected = 1 - np.tanh(10 * (s[:, 0] - s[:, 1])) * np.tanh(10 * (t[:, 0] - t[:, 1]))
  np.testing.assert_allclose(v, expected, rtol=1e-6)
  s3, t3 = _inputs(3, 4, 3)
  np.testing.assert_allclose(
      variant(functools.partial(L.rank_kendall, steepness=40.0))(s3, t3),
      naive_rank_kendall(s3, t3, 40.0), atol=1e-6)


def test_row_blocks_with_padding(monkeypatch):
  # Force several row blocks (7 rows -> blocks of 3, padded to 9) at a small size.
  s, t = _inputs(5, 7, 20)
  whole = jax.jit(lambda s, t: jax.value_and_grad(
      lambda v: jnp.sum(L.rank_kendall(v, t)))(s))(s, t)
  with monkeypatch.context() as patch:
    patch.setattr(kendall, "_CPU_BLOCK_ELEMENTS", 64)
    blocked_fn = jax.jit(lambda s, t: jax.value_and_grad(
        lambda v: jnp.sum(L.rank_kendall(v, t)))(s))
    jaxpr = str(jax.make_jaxpr(blocked_fn)(s, t))
    blocked = blocked_fn(s, t)
  if jax.default_backend() == "cpu":
    assert "f32[3,3,20]" in jaxpr  # 3 blocks of 3 rows, padded from 7
  # Written bound: the blocks compute the same pair terms and sum them in another order; a
  # float32 sum of n terms, in any order, is within n u sum|terms| of the exact sum (u = 2^-24).
  # The value sums 7 x 20 x 20 non-negative terms; a gradient entry 2 x 20 terms of both signs,
  # each at most the steepness (100) in magnitude.
  n_value, n_grad = 7 * 20 * 20, 2 * 20
  u = yardstick.EPS32 / 2
  np.testing.assert_allclose(blocked[0], whole[0], rtol=n_value * u)
  np.testing.assert_allclose(blocked[1], whole[1], rtol=0, atol=n_grad * u * n_grad * 100.0)
  np.testing.assert_allclose(whole[0], jnp.sum(naive_rank_kendall(s, t, 100.0)),
                             rtol=n_value * u)


def test_imagenet_width_matches_naive():
  """Sums over 2 x 1000 x 1000 pairs: float32 round-off depends on the summation order, so the
  naive form runs in float32 and float64; kd_jax's float32 result may be yardstick.FACTOR of
  the naive form's own float32 error away from its float64 value (measured here)."""
  s, t = _inputs(11, 2, 1000, scale=1.0)
  loss = lambda fn, s, t: jax.jit(jax.value_and_grad(lambda v: jnp.sum(fn(v, t))))(s)
  naive = functools.partial(naive_rank_kendall, steepness=100.0)
  v, g = loss(L.rank_kendall, s, t)
  vn, gn = loss(naive, s, t)
  with jax.enable_x64(True):
    v64, g64 = (np.asarray(x) for x in loss(naive, s.astype(np.float64), t.astype(np.float64)))
  for what, got, want, want64 in (("value", v, vn, v64), ("gradient", g, gn, g64)):
    err, bound = yardstick.near_reference(got, want, want64)
    assert err <= bound, (what, err, bound)


def test_forward_only_path_matches_fused_pass():
  s, t = _inputs(2, 4, 33)
  value = jax.jit(L.rank_kendall)(s, t)
  fused, _ = jax.jit(lambda s: jax.vjp(lambda v: L.rank_kendall(v, t), s))(s)
  np.testing.assert_allclose(value, fused, rtol=0, atol=_pair_sum_bound(33))
  # The value moves far more when one logit pair is swapped (a wrong pair in either pass).
  swapped = jax.jit(L.rank_kendall)(s[:, [1, 0] + list(range(2, 33))], t)
  assert float(jnp.max(jnp.abs(swapped - value))) > 10 * _pair_sum_bound(33)


def test_check_grads_float64_steep():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    # gaps ~0.01-0.03 so that k = 100 is not saturated
    s = jnp.asarray(0.02 * rng.standard_normal((2, 9)))
    t = jnp.asarray(rng.standard_normal((2, 9)))
    for form, top_k in (("tanh", None), ("sign_teacher", 5)):
      f = jax.jit(functools.partial(lambda v, form, top_k: L.rank_kendall(
          v, t, steepness=100.0, form=form, top_k=top_k), form=form, top_k=top_k))
      chex.assert_type(f(s), jnp.float64)
      check_grads(f, (s,), order=1, modes=["fwd", "rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_second_order_float64():
  # The custom JVP is itself forward-differentiable (through the pair loop), so forward-over-
  # forward and forward-over-reverse (jax.hessian) work; reverse-over-reverse does not.
  with jax.enable_x64(True):
    rng = np.random.default_rng(4)
    s = jnp.asarray(0.3 * rng.standard_normal((2, 5)))
    t = jnp.asarray(rng.standard_normal((2, 5)))
    f = jax.jit(lambda v: L.rank_kendall(v, t, steepness=2.0))
    check_grads(f, (s,), order=2, modes=["fwd"], atol=1e-5, rtol=1e-5)
    hess = jax.hessian(lambda v: jnp.sum(L.rank_kendall(v, t, steepness=2.0)))(s)
    hess_naive = jax.hessian(lambda v: jnp.sum(naive_rank_kendall(v, t, 2.0)))(s)
    np.testing.assert_allclose(hess, hess_naive, rtol=1e-9, atol=1e-12)


def test_no_gradient_to_teacher_or_steepness():
  s, t = _inputs(4, 3, 6)
  gt, gk = jax.jit(jax.grad(lambda t, k: jnp.sum(L.rank_kendall(s, t, steepness=k)),
                            argnums=(0, 1)))(t, 100.0)
  np.testing.assert_array_equal(gt, 0.0)
  assert float(gk) == 0.0


def test_vmap():
  s, t = _inputs(6, 6, 9)
  s3, t3 = s.reshape(2, 3, 9), t.reshape(2, 3, 9)
  out = jax.jit(jax.vmap(L.rank_kendall))(s3, t3)
  np.testing.assert_allclose(out.reshape(-1), L.rank_kendall(s, t), rtol=0,
                             atol=_pair_sum_bound(9))


# ----------------------------------------------------------------------------- invariances


def test_monotone_teacher_map():
  rng = np.random.default_rng(8)
  # Well separated teacher values (gaps >= 0.5), student with small gaps.
  t = np.stack([rng.permutation(10) * 0.5 for _ in range(3)]).astype(np.float32) - 2.0
  s = (0.05 * rng.standard_normal((3, 10))).astype(np.float32)
  mono = t ** 3 + 2 * t + 5  # strictly increasing
  sign = jax.jit(functools.partial(L.rank_kendall, steepness=100.0, form="sign_teacher"))
  np.testing.assert_array_equal(sign(s, mono), sign(s, t))
  steep = jax.jit(functools.partial(L.rank_kendall, steepness=1e3))
  np.testing.assert_allclose(steep(s, mono), steep(s, t), atol=1e-6)
  steep_sign = jax.jit(functools.partial(L.rank_kendall, steepness=1e3, form="sign_teacher"))
  np.testing.assert_allclose(steep(s, t), steep_sign(s, t), atol=1e-6)
  # not invariant at small k (tanh of the teacher gaps sees the scale)
  soft = jax.jit(functools.partial(L.rank_kendall, steepness=0.5))
  assert float(jnp.max(jnp.abs(soft(s, mono) - soft(s, t)))) > 1e-3


def test_shift_invariance():
  s, t = _inputs(9, 3, 12)
  f = jax.jit(L.rank_kendall)
  c = np.array([[0.25], [-0.5], [1.0]], np.float32)  # exact in float32 at this scale
  np.testing.assert_allclose(f(s + c, t - c), f(s, t), atol=1e-5)


def test_ties_floor_is_fraction_of_tied_pairs():
  # Student = teacher, one tied teacher pair among C(5, 2) = 10: tau = 0.9, so rk = 0.1.
  t = np.array([[0.0, 1.0, 1.0, 2.0, 3.0]], np.float32)
  v = L.rank_kendall(t, t, steepness=100.0)
  np.testing.assert_allclose(v, 0.1, atol=1e-6)
  np.testing.assert_allclose(L.rank_kendall(t, t, form="sign_teacher"), 0.1, atol=1e-6)
  # reversed student: tau = -0.9, rk = 1.9
  np.testing.assert_allclose(L.rank_kendall(-t, t), 1.9, atol=1e-6)


# ----------------------------------------------------------------------------- scaling


def test_no_batch_by_classes_squared_buffer():
  batch, classes = 64, 500
  s = jnp.zeros((batch, classes), jnp.float32)
  step = jax.jit(jax.value_and_grad(lambda v, t: jnp.mean(L.rank_kendall(v, t))))
  stats = step.lower(s, s).compile().memory_analysis()
  if stats is None:
    pytest.skip("memory_analysis unavailable on this backend")
  pair_tensor = batch * classes * classes * 4  # 64 MB: one naive [B, C, C] float32 tensor
  assert stats.temp_size_in_bytes < pair_tensor / 20


# ----------------------------------------------------------------------------- benchmarks

BENCH_KEYS = {"impl", "B", "C", "fwd_bwd_ms", "peak_rss_mb", "device", "repeats", "loss"}


def _run_bench(script, extra_env=None):
  env = dict(os.environ, **(extra_env or {}))
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "benchmarks", script), "--batch-size", "3",
       "--num-classes", "17", "--repeats", "2"],
      capture_output=True, text=True, timeout=300, cwd=REPO, env=env, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  last = proc.stdout.strip().splitlines()[-1]
  result = json.loads(last)
  assert BENCH_KEYS <= set(result), sorted(result)
  assert (result["B"], result["C"], result["repeats"]) == (3, 17, 2)
  assert result["fwd_bwd_ms"] > 0 and result["peak_rss_mb"] > 0
  return result


def test_benchmark_scripts_smoke():
  ours = _run_bench("rank_kendall.py")
  assert ours["impl"].startswith("kd_jax")
  pytest.importorskip("torch")
  theirs = _run_bench("torch_rank_kendall.py")
  assert theirs["impl"].startswith("torch")
  # Same inputs in both scripts (rank_kendall.make_logits): both scripts' loss and sum |grad|
  # are near the naive form's float64 values. Yardstick: the naive form's own float32 error on
  # these inputs, measured here (yardstick.near_reference).
  import rank_kendall  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  s, t = rank_kendall.make_logits(3, 17, 0)
  naive = lambda s, t, k=100.0: jax.jit(jax.value_and_grad(
      lambda v: jnp.mean(naive_rank_kendall(v, t, k))))(s)
  summary = lambda vg: (float(vg[0]), float(jnp.sum(jnp.abs(vg[1]))))
  want = summary(naive(s, t))
  with jax.enable_x64(True):
    want64 = summary(naive(s.astype(np.float64), t.astype(np.float64)))
    # Defects far outside the bounds: the teacher's classes in reverse order (the loss), a
    # steepness 10% off (the gradient; its sum of magnitudes ignores the teacher's order).
    other64 = (summary(naive(s.astype(np.float64), t[:, ::-1].astype(np.float64)))[0],
               summary(naive(s.astype(np.float64), t.astype(np.float64), 90.0))[1])
  for i, what in enumerate(("loss", "grad_abs_sum")):
    for result in (ours, theirs):
      err, bound = yardstick.near_reference(result[what], want[i], want64[i])
      assert err <= bound, (result["impl"], what, err, bound)
      assert abs(other64[i] - want64[i]) > 100 * bound, (what, other64[i], want64[i], bound)
