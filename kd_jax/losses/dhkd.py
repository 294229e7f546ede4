"""DHKD's BinaryKL-Norm loss on the auxiliary head, in its closed log-cosh form.

Spec: methods.md §6 (penghui-yang/DHKD `BinaryKLNorm.py`); per-example outputs, caller averages.
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


def logcosh(u: Array) -> Array:
  """Stable log(cosh(u)) = |u| + log1p(exp(-2|u|)) - log 2; derivative tanh(u), 0 at u = 0."""
  a = jnp.abs(u)
  return a + jnp.log1p(jnp.exp(-2.0 * a)) - _LOG2


def binary_kl_norm(student_logits: Array, teacher_logits: Array, *,
                   temperature: float = 2.0) -> Array:
  """BinaryKL-Norm: bkln_i = T^2 * sum_c logcosh(clip((a_ic - t_ic) / T, -L, L) / 2).

  Per element this is KL(Bern(1/2) || Bern(sigmoid(x))) with x = (a - t) / T, the DHKD reference
  (Yang et al., arXiv 2411.08937, penghui-yang/DHKD `distiller_zoo/BinaryKLNorm.py`, methods.md
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
  a, t = common.check_pair(student_logits, teacher_logits)
  common.check_positive(temperature, "temperature")
  a, t = common.prepare_pair(a, t, False)
  x = jnp.clip((a - t) / temperature, -CLIP, CLIP)
  return temperature ** 2 * jnp.sum(logcosh(0.5 * x), axis=-1)
