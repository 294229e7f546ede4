"""Cross-entropy, Hinton KD and Decoupled KD (TCKD + NCKD), per example and float32-stable.

Spec: docs/methods.md §1-§4 (mdistiller KD.py / DKD.py semantics); the caller takes the batch mean.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kd_jax.losses import common

Array = jax.Array


def cross_entropy(logits: Array, labels: Array, *, label_smoothing: float = 0.0) -> Array:
  """Per-example cross-entropy with integer labels and optional label smoothing.

  ce_i = -(1 - eps) * lsm(s_i)[y_i] - eps * mean_c lsm(s_i)[c]   (eps = label_smoothing)

  Same as PyTorch `F.cross_entropy(..., reduction='none', label_smoothing=eps)` (docs/methods.md §1).
  Computed from the max-shifted log_softmax, so huge logits are safe.

  Args:
    logits: [B, C] floating logits.
    labels: [B] integer class indices in [0, C). A label outside that range, negative
      included, gives NaN for its example (never a finite value); kd_jax checks every label
      before it reaches a step, so this is a last line of defence.
    label_smoothing: eps in [0, 1].

  Returns:
    [B] per-example losses (float32, float64 for float64 input); the caller takes the mean.
  """
  logits = common.check_logits(logits, "logits", min_classes=1)
  labels = common.check_labels(labels, logits.shape[0])
  if not common.is_tracer(label_smoothing):
    common.check_scalar(label_smoothing, "label_smoothing")
    if not 0.0 <= float(label_smoothing) <= 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
  log_probs = jax.nn.log_softmax(logits.astype(common.compute_dtype(logits)), axis=-1)
  nll = -common.take_class(log_probs, labels)
  if isinstance(label_smoothing, (int, float)) and label_smoothing == 0:
    return nll
  smooth = -jnp.mean(log_probs, axis=-1)
  return (1.0 - label_smoothing) * nll + label_smoothing * smooth


def kd(student_logits: Array, teacher_logits: Array, *, temperature: float = 4.0,
       standardize: bool = False) -> Array:
  """Hinton KD: kd_i = T^2 * KL(softmax(t_i / T) || softmax(s_i / T)).

  Follows mdistiller `KD.py` (Hinton et al., arXiv 1503.02531; docs/methods.md §2), evaluated in log
  space as T^2 * sum_c exp(lt_c) * (lt_c - ls_c) with lt, ls the log_softmax of t/T, s/T.
  The teacher gets no gradient (stop_gradient).

  Args:
    student_logits: [B, C] floating logits.
    teacher_logits: [B, C] floating logits.
    temperature: T > 0 (the T^2 factor uses the same T).
    standardize: z-score both sides per row first (LS, docs/methods.md §4).

  Returns:
    [B] per-example losses (batchmean reduction = the caller's mean over B).
  """
  s, t = common.check_pair(student_logits, teacher_logits)
  common.check_positive(temperature, "temperature")
  s, t = common.prepare_pair(s, t, standardize)
  log_q = jax.nn.log_softmax(s / temperature, axis=-1)
  log_p = jax.nn.log_softmax(t / temperature, axis=-1)
  return temperature ** 2 * common.kl_log_space(log_p, log_q)


def _check_dkd_inputs(student_logits: Array, teacher_logits: Array, labels: Array,
                      temperature: float) -> tuple[Array, Array, Array]:
  """Shared validation of the DKD family; returns the arrays."""
  s, t = common.check_pair(student_logits, teacher_logits)
  labels = common.check_labels(labels, s.shape[0])
  common.check_positive(temperature, "temperature")
  return s, t, labels


def _tckd(s: Array, t: Array, labels: Array, temperature: float) -> Array:
  """T^2 KL of the binary [p[y], rest] splits, on prepared (cast/LS) logits."""
  log_bs = common.binary_log_split(s / temperature, labels)
  log_bt = common.binary_log_split(t / temperature, labels)
  return temperature ** 2 * common.kl_log_space(log_bt, log_bs)


def _nckd(s: Array, t: Array, labels: Array, temperature: float) -> Array:
  """T^2 KL of the softmaxes with the scaled target logit set to -1e9, on prepared logits."""
  target = common.class_mask(labels, s.shape[-1])
  log_qs = jax.nn.log_softmax(jnp.where(target, common.NEG_MASK, s / temperature), axis=-1)
  log_qt = jax.nn.log_softmax(jnp.where(target, common.NEG_MASK, t / temperature), axis=-1)
  return temperature ** 2 * common.kl_log_space(log_qt, log_qs)


def tckd(student_logits: Array, teacher_logits: Array, labels: Array, *,
         temperature: float = 4.0, standardize: bool = False) -> Array:
  """DKD's target-class part: tckd_i = T^2 * KL(b_t || b_s).

  b = [p[y], sum_{c != y} p[c]] with p = softmax(z / T), on both sides around the ground-truth
  class y (mdistiller `DKD.py`, Zhao et al., arXiv 2203.08679; docs/methods.md §3). Built in log space:
  log b = [lsm[y], logsumexp_{c != y} lsm[c]], so it stays finite where the reference's
  log(masked sum) underflows to -inf. Teacher under stop_gradient.

  Args:
    student_logits: [B, C] floating logits, C >= 2.
    teacher_logits: [B, C] floating logits.
    labels: [B] integer class indices.
    temperature: T > 0.
    standardize: z-score both sides per row first (LS).

  Returns:
    [B] per-example losses; the caller takes the mean.
  """
  s, t, labels = _check_dkd_inputs(student_logits, teacher_logits, labels, temperature)
  s, t = common.prepare_pair(s, t, standardize)
  return _tckd(s, t, labels, temperature)


def nckd(student_logits: Array, teacher_logits: Array, labels: Array, *,
         temperature: float = 4.0, standardize: bool = False) -> Array:
  """DKD's non-target part: nckd_i = T^2 * KL(q_t || q_s), q = softmax over the classes != y.

  The reference's `z/T - 1000 * onehot(y)` trick is replaced by setting the scaled ground-truth
  logit to the finite -1e9 on both sides (exact for any logit range; docs/methods.md §3). With C = 2
  only one class is left and nckd = 0. Teacher under stop_gradient.

  Args:
    student_logits: [B, C] floating logits, C >= 2.
    teacher_logits: [B, C] floating logits.
    labels: [B] integer class indices.
    temperature: T > 0.
    standardize: z-score both sides per row first (LS).

  Returns:
    [B] per-example losses; the caller takes the mean.
  """
  s, t, labels = _check_dkd_inputs(student_logits, teacher_logits, labels, temperature)
  s, t = common.prepare_pair(s, t, standardize)
  return common.nan_for_bad_labels(_nckd(s, t, labels, temperature), labels, s.shape[-1])


def dkd(student_logits: Array, teacher_logits: Array, labels: Array, *, alpha: float = 1.0,
        beta: float = 8.0, temperature: float = 4.0, standardize: bool = False) -> Array:
  """Decoupled KD: dkd_i = alpha * tckd_i + beta * nckd_i (both T^2-scaled).

  mdistiller `DKD.py` (Zhao et al., arXiv 2203.08679; docs/methods.md §3), without CE and without
  the warm-up factor, which the trainer applies. Identity: kd = tckd + (1 - p_t[y]) * nckd.

  Args:
    student_logits: [B, C] floating logits, C >= 2.
    teacher_logits: [B, C] floating logits.
    labels: [B] integer class indices.
    alpha: TCKD weight (scalar, may be traced).
    beta: NCKD weight (scalar, may be traced).
    temperature: T > 0.
    standardize: z-score both sides per row first (LS).

  Returns:
    [B] per-example losses; the caller takes the mean.
  """
  s, t, labels = _check_dkd_inputs(student_logits, teacher_logits, labels, temperature)
  common.check_scalar(alpha, "alpha")
  common.check_scalar(beta, "beta")
  s, t = common.prepare_pair(s, t, standardize)
  return alpha * _tckd(s, t, labels, temperature) + beta * _nckd(s, t, labels, temperature)
