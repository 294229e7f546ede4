"""RKKD's differentiable Kendall's tau ranking loss, O(B*C) memory with a fused custom JVP.

Spec: docs/methods.md §7 (Guan et al., arXiv 2409.17823); per-example outputs, the caller averages.
"""
from __future__ import annotations

import functools
import numbers
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from kd_jax.losses import common

Array = jax.Array

FORMS = ("tanh", "sigmoid", "sign_teacher")
# On CPU the rows are processed in blocks of about this many elements, so that the per-shift
# working set of the inner loop (a few [rows, C] arrays) stays in the L2 cache. Accelerators
# take the whole batch per loop step. Blocking never changes the per-row arithmetic.
_CPU_BLOCK_ELEMENTS = 1 << 15


def _block_pair_sums(s: Array, t: Array, k: Array, teacher_sign: bool,
                     with_grad: bool) -> tuple[Array, Optional[Array]]:
  """Sums over the unordered pairs of one block of rows, visiting pair (i, i + d mod C) per shift d.

  Returns P[b] = sum_{i<j} f_ij g_ij and, with_grad, G[b, a] = sum_{j != a} f'_aj g_aj, where
  f_ij = tanh(k (s_i - s_j)), f' = 1 - f^2 and g_ij = tanh(k (t_i - t_j)) (or sign(t_i - t_j)).
  Every unordered pair is met once for d = 1..ceil(C/2)-1; for even C, the shift d = C/2 meets
  each pair twice and gets weight 1/2. The [rows, C] pair terms of a shift feed the value,
  the gradient at i (+H) and, via the shift, the gradient at i + d (-H, as f' is even and g odd).
  """
  rows, num = s.shape
  s_twice = jnp.concatenate([s, s], axis=1)
  t_twice = jnp.concatenate([t, t], axis=1)

  def body(carry):
    d, acc, grad_i, grad_j = carry
    weight = jnp.where(2 * d == num, 0.5, 1.0).astype(s.dtype)
    s_d = lax.dynamic_slice_in_dim(s_twice, d, num, axis=1)  # s_d[i] = s[(i + d) mod C]
    t_d = lax.dynamic_slice_in_dim(t_twice, d, num, axis=1)
    f = jnp.tanh(k * (s - s_d))
    g = (jnp.sign(t - t_d) if teacher_sign else jnp.tanh(k * (t - t_d))) * weight
    acc = acc + f * g
    if with_grad:
      h = (1.0 - f * f) * g
      grad_i = grad_i + h
      cur = lax.dynamic_slice_in_dim(grad_j, d, num, axis=1)
      grad_j = lax.dynamic_update_slice_in_dim(grad_j, cur - h, d, axis=1)
    return d + 1, acc, grad_i, grad_j

  zeros = jnp.zeros_like(s)
  grad_j0 = jnp.zeros((rows, 2 * num), s.dtype) if with_grad else zeros
  # A while_loop, not fori_loop/scan: the loop is never reverse-differentiated (custom JVP), and
  # a scan would be split by partial evaluation under jax.grad (about 10% slower on CPU).
  _, acc, grad_i, grad_j = lax.while_loop(lambda carry: carry[0] <= num // 2, body,
                                          (jnp.int32(1), zeros, zeros, grad_j0))
  if not with_grad:
    return jnp.sum(acc, axis=1), None
  # grad_j holds position p = i + d in [1, 2C); fold it back modulo C.
  return jnp.sum(acc, axis=1), grad_i + grad_j[:, :num] + grad_j[:, num:]


def _block_rows(batch: int, num: int) -> int:
  """Rows per loop block: cache-sized on CPU, the whole batch elsewhere."""
  if jax.default_backend() == "cpu":
    return max(1, min(batch, _CPU_BLOCK_ELEMENTS // num))
  return batch


# jit so that eager (un-jitted) calls reuse the compiled loop instead of re-tracing it.
@functools.partial(jax.jit, static_argnames=("teacher_sign", "with_grad", "rows"))
def _pair_sums(s: Array, t: Array, k: Array, teacher_sign: bool, with_grad: bool,
               rows: int) -> tuple[Array, Optional[Array]]:
  """_block_pair_sums over blocks of `rows` rows (lax.map, zero-padded to whole blocks)."""
  batch, num = s.shape
  blocks = -(-batch // rows)
  if blocks == 1:
    return _block_pair_sums(s, t, k, teacher_sign, with_grad)
  pad = ((0, blocks * rows - batch), (0, 0))
  sb = jnp.pad(s, pad).reshape(blocks, rows, num)
  tb = jnp.pad(t, pad).reshape(blocks, rows, num)
  value, grad = lax.map(lambda st: _block_pair_sums(st[0], st[1], k, teacher_sign, with_grad),
                        (sb, tb))
  value = value.reshape(-1)[:batch]
  if grad is not None:
    grad = grad.reshape(-1, num)[:batch]
  return value, grad


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _kendall_tau(s: Array, t: Array, k: Array, teacher_sign: bool) -> Array:
  """tau_k per row = 1/(C(C-1)) * sum_{i != j} f_ij g_ij = 2/(C(C-1)) * sum_{i<j} f_ij g_ij."""
  batch, num = s.shape
  value, _ = _pair_sums(s, t, k, teacher_sign=teacher_sign, with_grad=False,
                        rows=_block_rows(batch, num))
  return value * (2.0 / (num * (num - 1)))


@_kendall_tau.defjvp
def _kendall_tau_jvp(teacher_sign: bool, primals: tuple[Array, Array, Array],
                     tangents: tuple[Array, Array, Array]) -> tuple[Array, Array]:
  """tau and its JVP <d tau / d s, s_dot>, with the [B, C] d tau / d s from the same pass.

  d tau / d s_a = 2k / (C(C-1)) * sum_{j != a} f'_aj g_aj. The tangent is linear in s_dot, so
  reverse mode transposes it into cotangent[:, None] * d tau / d s, stored as the residual:
  nothing of size B*C*C is kept. The teacher and the steepness are constants of the loss
  (stop_gradient), so their tangents are ignored.
  """
  s, t, k = primals
  s_dot = tangents[0]
  batch, num = s.shape
  value, grad = _pair_sums(s, t, k, teacher_sign=teacher_sign, with_grad=True,
                           rows=_block_rows(batch, num))
  dtau_ds = grad * (2.0 * k / (num * (num - 1)))
  return value * (2.0 / (num * (num - 1))), jnp.sum(dtau_ds * s_dot, axis=-1)


def rank_kendall(student_logits: Array, teacher_logits: Array, *, steepness: float = 100.0,
                 form: str = "tanh", top_k: Optional[int] = None) -> Array:
  """RKKD ranking loss: rk_i = 1 - tau_k(s_i, t_i), a smooth Kendall's tau on raw logits.

  tau_k = 1/(C(C-1)) * sum_{a != b} f(k (s_a - s_b)) * g(k (t_a - t_b))   (docs/methods.md §7,
  Guan et al., arXiv 2409.17823; [secondary] facts: tanh on both sides, k = 100, no temperature).

  Forms: 'tanh' uses f = g = tanh; 'sigmoid' uses 2*sigmoid(k x) - 1 on both sides, which equals
  tanh(k x / 2) exactly and is evaluated that way; 'sign_teacher' uses f = tanh and
  g = sign(t_a - t_b) (0 on ties). `top_k=m` keeps, per row, only the teacher's top-m classes
  (lax.top_k, lower index first on ties) and normalises by m(m-1). The teacher and `steepness`
  get no gradient (stop_gradient). Tied teacher pairs contribute 0, so the loss floor is the
  fraction of tied pairs.

  Cost: O(B C^2) time, O(B C) memory. The pairs are visited once each (i < j symmetry) by a loop
  over the C/2 cyclic shifts, rows in cache-sized blocks on CPU; a custom JVP computes the [B, C]
  gradient in the same pass as the value (reverse mode transposes it into a scaling of that
  array), so nothing of size B*C*C is ever stored. It is exact (same terms as the broadcast
  formula, float32 accumulation per element). Forward and reverse mode are supported, and
  second order forward-over-forward or forward-over-reverse (jax.hessian); reverse-over-reverse
  is not (the pair loop is a while_loop).

  Args:
    student_logits: [B, C] floating logits, C >= 2.
    teacher_logits: [B, C] floating logits.
    steepness: k > 0.
    form: one of 'tanh', 'sigmoid', 'sign_teacher'.
    top_k: None (all classes) or an int m with 2 <= m <= C.

  Returns:
    [B] per-example losses in [0, 2]; the caller takes the mean.
  """
  s, t = common.check_pair(student_logits, teacher_logits)
  common.check_positive(steepness, "steepness")
  if not isinstance(form, str) or form not in FORMS:
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")
  num = s.shape[-1]
  if top_k is not None:
    if (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
        or not 2 <= top_k <= num):
      raise ValueError(f"top_k must be None or an int in [2, C={num}], got {top_k!r}")
  s, t = common.prepare_pair(s, t, False)
  if top_k is not None and int(top_k) < num:
    top_k = int(top_k)
    _, idx = lax.top_k(t, top_k)
    s = jnp.take_along_axis(s, idx, axis=-1)
    t = jnp.take_along_axis(t, idx, axis=-1)
  k = lax.stop_gradient(jnp.asarray(steepness, s.dtype))
  if form == "sigmoid":
    k = 0.5 * k  # 2 * sigmoid(k x) - 1 == tanh(k x / 2)
  return 1.0 - _kendall_tau(s, t, k, form == "sign_teacher")
