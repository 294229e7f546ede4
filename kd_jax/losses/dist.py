"""DIST (distillation from a stronger teacher): inter- and intra-class Pearson relations.

Spec: docs/methods.md §11 (hunto/image_classification_sota `lib/models/losses/dist_kd.py` and
`configs/strategies/distill/dist_cifar.yaml`). The Pearson correlation is the reference's:
cosine similarity of the centred vectors with eps = 1e-8 added to the product of the norms.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kd_jax.losses import common

Array = jax.Array

PEARSON_EPS = 1e-8


def _safe_norm(x: Array, axis: int) -> Array:
  """Euclidean norm with a zero (not NaN) gradient at the zero vector, like torch's norm."""
  sq = jnp.sum(x * x, axis=axis)
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def pearson(a: Array, b: Array, *, axis: int = -1) -> Array:
  """rho = <a - mean a, b - mean b> / (||a - mean a|| * ||b - mean b|| + 1e-8), along `axis`."""
  a = a - jnp.mean(a, axis=axis, keepdims=True)
  b = b - jnp.mean(b, axis=axis, keepdims=True)
  return jnp.sum(a * b, axis=axis) / (_safe_norm(a, axis) * _safe_norm(b, axis) + PEARSON_EPS)


def _probs(student_logits: Array, teacher_logits: Array, tau: float) -> tuple[Array, Array]:
  s, t = common.check_pair(student_logits, teacher_logits)
  common.check_positive(tau, "tau")
  s, t = common.prepare_pair(s, t, False)
  return jax.nn.softmax(s / tau, axis=-1), jax.nn.softmax(t / tau, axis=-1)


def dist_inter(student_logits: Array, teacher_logits: Array, *, tau: float = 4.0) -> Array:
  """Inter-class relation, per example: inter_i = tau^2 * (1 - rho(y_s_i, y_t_i)).

  y = softmax(z / tau); rho over the C classes of row i. Its batch mean is the reference's
  tau^2 * inter_class_relation(y_s, y_t).

  Returns:
    [B] per-example losses; the caller takes the mean.
  """
  ys, yt = _probs(student_logits, teacher_logits, tau)
  return tau ** 2 * (1.0 - pearson(ys, yt, axis=-1))


def dist_intra(student_logits: Array, teacher_logits: Array, *, tau: float = 4.0) -> Array:
  """Intra-class relation: intra = tau^2 * (1 - mean_c rho(y_s[:, c], y_t[:, c])).

  rho over the B examples of class column c (the reference transposes and reuses the inter
  relation). With B = 1 every centred column is zero, rho = 0 and intra = tau^2 (zero gradient).

  Returns:
    scalar (a batch-level term: the caller must not average it again).
  """
  ys, yt = _probs(student_logits, teacher_logits, tau)
  return tau ** 2 * (1.0 - jnp.mean(pearson(ys, yt, axis=0)))


def dist(student_logits: Array, teacher_logits: Array, *, beta: float = 1.0, gamma: float = 1.0,
         tau: float = 4.0) -> Array:
  """DIST term: beta * mean_i(inter_i) + gamma * intra (both tau^2-scaled), a scalar.

  The reference `DIST(beta, gamma, tau)` module; the trainer adds it to CE as
  ori_loss_weight * CE + kd_loss_weight * DIST (1 and 2 in `dist_cifar.yaml`, with tau = 4 from
  `kd: dist_t4` and beta = gamma = 1).
  """
  common.check_scalar(beta, "beta")
  common.check_scalar(gamma, "gamma")
  return (beta * jnp.mean(dist_inter(student_logits, teacher_logits, tau=tau))
          + gamma * dist_intra(student_logits, teacher_logits, tau=tau))
