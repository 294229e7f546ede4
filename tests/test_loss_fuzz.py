"""Property-based fuzzing of every loss: random shapes and extreme, tied or dominated logits.

All outputs and student gradients must be finite (float32); each example compiles one loss.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kd_jax import losses as L

LIMIT = 1e4

# name -> (loss(s, t, y), lower bound of the per-example value, upper bound)
LOSSES = {
    "cross_entropy": (lambda s, t, y: L.cross_entropy(s, y, label_smoothing=0.1), 0.0, None),
    "kd": (lambda s, t, y: L.kd(s, t, temperature=4.0), 0.0, None),
    "kd_ls": (lambda s, t, y: L.kd(s, t, temperature=2.0, standardize=True), 0.0, None),
    "dkd": (lambda s, t, y: L.dkd(s, t, y, temperature=4.0), 0.0, None),
    "dkd_ls": (lambda s, t, y: L.dkd(s, t, y, temperature=2.0, standardize=True), 0.0, None),
    "rld": (lambda s, t, y: L.rld(s, t, y, temperature=4.0, alpha_temperature=1.0), 0.0, None),
    "rld_ls": (lambda s, t, y: L.rld(s, t, y, temperature=2.0, standardize=True), 0.0, None),
    "binary_kl_norm": (lambda s, t, y: L.binary_kl_norm(s, t, temperature=2.0), 0.0, None),
    "rank_kendall": (lambda s, t, y: L.rank_kendall(s, t), 0.0, 2.0),
    "rank_kendall_sign_topk": (lambda s, t, y: L.rank_kendall(
        s, t, form="sign_teacher", top_k=min(3, s.shape[1])), 0.0, 2.0),
}


@functools.lru_cache(maxsize=None)
def _value_and_grad(name):
  fn = LOSSES[name][0]
  def total(s, t, y):
    out = fn(s, t, y)
    return jnp.sum(out), out
  return jax.jit(jax.value_and_grad(total, has_aux=True))


def _shape_logits(draw, batch, classes):
  """Random logits in [-1e4, 1e4], optionally with ties, a dominant class or constant rows."""
  x = draw(hnp.arrays(np.float32, (batch, classes), elements=st.floats(
      -LIMIT, LIMIT, width=32, allow_nan=False, allow_infinity=False)))
  kind = draw(st.sampled_from(["raw", "ties", "dominant", "constant", "small"]))
  if kind == "ties":
    x = np.round(x / 2500.0) * 2500.0  # at most 9 distinct values per row
  elif kind == "dominant":
    x = np.clip(x * 1e-3, -10, 10)
    x[np.arange(batch), draw(st.integers(0, classes - 1))] = LIMIT
  elif kind == "constant":
    x[:] = x[:, :1]
  elif kind == "small":
    x = x * 1e-5  # gaps around 3/k at k = 100
  return x.astype(np.float32)


@st.composite
def loss_inputs(draw):
  batch = draw(st.integers(1, 8))
  classes = draw(st.integers(2, 50))
  s = _shape_logits(draw, batch, classes)
  t = _shape_logits(draw, batch, classes)
  y = np.asarray(draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch)),
                 np.int32)
  return s, t, y


# Generating 8 x 50 float arrays can trip the generation-speed health checks on a loaded
# machine; they say nothing about the code under test.
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(name=st.sampled_from(sorted(LOSSES)), inputs=loss_inputs())
def test_outputs_and_gradients_finite(name, inputs):
  s, t, y = inputs
  (_, out), grad = _value_and_grad(name)(s, t, y)
  out, grad = np.asarray(out), np.asarray(grad)
  assert out.shape == (s.shape[0],)
  assert np.all(np.isfinite(out)), (name, out)
  assert np.all(np.isfinite(grad)), (name, grad)
  _, low, high = LOSSES[name]
  # float32 rounding of O(1e4 / T) log-probabilities (ulp ~ 1e-4 x T^2) allows a tiny
  # negative KL; anything beyond that, or a NaN, is a bug
  tol = 1e-5 * (1.0 + float(np.max(np.abs(s))) + float(np.max(np.abs(t))))
  assert np.all(out >= low - tol), (name, out)
  if high is not None:
    assert np.all(out <= high + 1e-5), (name, out)
