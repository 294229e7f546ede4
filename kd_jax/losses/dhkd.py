"""DHKD's BinaryKL-Norm loss on the auxiliary head, in its closed log-cosh form.

Spec: docs/methods.md §6 (penghui-yang/DHKD `BinaryKLNorm.py`); per-example outputs, caller averages.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kd_jax.losses import common

Array = jax.Array

# The reference clamps sigmoid(x) to [1e-8, 1 - 1e-8]; on x that is the symmetric clip at
# +-log((1 - 1e-8) / 1e-8) ~= 18.4207 (computed in float64, then used as a float constant).
CLIP = math.log((1.0 - 1e-8) / 1e-8)
_LOG2 = math.log(2.0)


@jax.custom_jvp
def logcosh(u: Array) -> Array:
  """log(cosh(u)), accurate in float32 for every finite u, with derivative exactly tanh(u).

  |u| >= 1: |u| + log1p(exp(-2|u|)) - log 2 (docs/methods.md §6; no overflow). |u| < 1: that form
  cancels (relative error ~1e-2 at u = 2.5e-3), so use log1p(2 sinh(u/2)^2), as
  cosh(u) = 1 + 2 sinh(u/2)^2. Both branches only see arguments valid for them.
  """
  a = jnp.abs(u)
  small = a < 1.0
  h = jnp.sinh(0.5 * jnp.where(small, a, 0.0))
  large = jnp.where(small, 1.0, a)
  return jnp.where(small, jnp.log1p(2.0 * h * h),
                   large + jnp.log1p(jnp.exp(-2.0 * large)) - _LOG2)


@logcosh.defjvp
def _logcosh_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
  """d logcosh(u) = tanh(u) du."""
  (u,), (du,) = primals, tangents
  return logcosh(u), jnp.tanh(u) * du


def binary_kl_norm(student_logits: Array, teacher_logits: Array, *,
                   temperature: float = 2.0) -> Array:
  """BinaryKL-Norm: bkln_i = T^2 * sum_c logcosh(clip((a_ic - t_ic) / T, -L, L) / 2).

  Per element this is KL(Bern(1/2) || Bern(sigmoid(x))) with x = (a - t) / T, the DHKD reference
  (Yang et al., arXiv 2411.08937, penghui-yang/DHKD `distiller_zoo/BinaryKLNorm.py`, docs/methods.md
  §6), whose clamp of sigmoid(x) at [1e-8, 1 - 1e-8] is expressed as the symmetric clip of x at
  L = log((1 - 1e-8) / 1e-8): the gradient is (T / 2) * tanh((a - t) / (2T)) inside and exactly 0
  beyond it. Deliberate deviation: in float32 `1 - 1e-8` rounds to 1, so the reference's upper
  clamp never acts and it returns inf/NaN once a - t > ~16.6 T; this form is finite for every
  finite input and matches the reference wherever that is finite. Not shift-invariant: the
  auxiliary logits match the teacher's raw logits. Teacher under stop_gradient.

  Args:
    student_logits: [B, C] auxiliary-head logits a.
    teacher_logits: [B, C] teacher logits t.
    temperature: T > 0 (`--BinaryKL_T`, default 2).

  Returns:
    [B] per-example losses; the reference's reduction is their mean over the batch.
  """
  a, t = common.check_pair(student_logits, teacher_logits, min_classes=1)  # elementwise loss
  common.check_positive(temperature, "temperature")
  a, t = common.prepare_pair(a, t, False)
  x = jnp.clip((a - t) / temperature, -CLIP, CLIP)
  return temperature ** 2 * jnp.sum(logcosh(0.5 * x), axis=-1)
