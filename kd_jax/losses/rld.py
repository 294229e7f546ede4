"""Refined Logit Distillation: sample confidence (SCD) and masked correlation (MCD) parts.

Spec: docs/methods.md §5 (zju-SWJ/RLD `RLD.py`, mask `>=`); per-example outputs, the caller averages.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from kd_jax.losses import common

Array = jax.Array


def _check_inputs(student_logits: Array, teacher_logits: Array, labels: Array,
                  temperature: float) -> tuple[Array, Array, Array]:
  """Shared validation of the RLD family; returns the arrays."""
  s, t = common.check_pair(student_logits, teacher_logits)
  labels = common.check_labels(labels, s.shape[0])
  common.check_positive(temperature, "temperature")
  return s, t, labels


def _teacher_top1(t: Array) -> Array:
  """Teacher top-1, first maximal index on ties (as torch.argmax)."""
  return jnp.argmax(lax.stop_gradient(t), axis=-1)


def _teacher_mask(t: Array, labels: Array) -> Array:
  """M = {c : t[c] >= t[y]}: y and every class ranked at or above it, ties included.

  y is added explicitly: under jit, XLA may evaluate t[y] and t in different fusions, and a
  last-bit difference must never leave y unmasked.
  """
  t = lax.stop_gradient(t)
  return (t >= common.take_class(t, labels)[:, None]) | common.class_mask(labels, t.shape[-1])


def _scd(s: Array, t: Array, labels: Array, top1: Array, temperature: float) -> Array:
  """tau^2 KL(teacher split around its top-1 || student split around y), prepared logits."""
  log_bs = common.binary_log_split(s / temperature, labels)
  log_bt = common.binary_log_split(t / temperature, top1)
  return temperature ** 2 * common.kl_log_space(log_bt, log_bs)


def _mcd(s: Array, t: Array, masked: Array, temperature: float) -> Array:
  """T^2 KL of the softmaxes with the classes in `masked` set to -1e9, prepared logits."""
  log_qs = jax.nn.log_softmax(jnp.where(masked, common.NEG_MASK, s / temperature), axis=-1)
  log_qt = jax.nn.log_softmax(jnp.where(masked, common.NEG_MASK, t / temperature), axis=-1)
  return temperature ** 2 * common.kl_log_space(log_qt, log_qs)


def scd(student_logits: Array, teacher_logits: Array, labels: Array, *,
        temperature: float = 4.0, standardize: bool = False) -> Array:
  """Sample confidence distillation: scd_i = tau^2 * KL(b_t || b_s).

  b_s = [p_s[y], sum_{c != y} p_s[c]] (student around the ground truth y) and
  b_t = [p_t[k], sum_{c != k} p_t[c]] (teacher around its own top-1 k = argmax t, first index on
  ties; taken on the raw teacher logits, which LS does not reorder), p = softmax(z / tau).
  `temperature` is RLD's tau_a (config `RLD.ALPHA_T`). Log-space binary split as for TCKD
  (docs/methods.md §3, §5); teacher under stop_gradient.

  Args:
    student_logits: [B, C] floating logits, C >= 2.
    teacher_logits: [B, C] floating logits.
    labels: [B] integer class indices.
    temperature: tau_a > 0.
    standardize: z-score both sides per row first (LS).

  Returns:
    [B] per-example losses; the caller takes the mean.
  """
  s, t, labels = _check_inputs(student_logits, teacher_logits, labels, temperature)
  top1 = _teacher_top1(t)
  s, t = common.prepare_pair(s, t, standardize)
  return _scd(s, t, labels, top1, temperature)


def mcd(student_logits: Array, teacher_logits: Array, labels: Array, *,
        temperature: float = 4.0, standardize: bool = False) -> Array:
  """Masked correlation distillation: mcd_i = T^2 * KL(q_t || q_s).

  M = {c : t[c] >= t[y]}, always containing y;
  q = softmax(where(M, -1e9, z / T)) on both sides (zju-SWJ/RLD `RLD.py`, docs/methods.md §5). When
  every class is masked (y is the teacher's lowest logit, or all logits tie with t[y]) both
  masked vectors are constant and mcd is exactly 0, never NaN. Masked student entries get no
  gradient; the teacher gets none at all. M is taken on the raw teacher logits: LS preserves
  the order, so the set is the reference's (which masks after LS) without LS's rounding, which
  could split exact ties.

  Args:
    student_logits: [B, C] floating logits, C >= 2.
    teacher_logits: [B, C] floating logits.
    labels: [B] integer class indices.
    temperature: T > 0.
    standardize: z-score both sides per row first (LS).

  Returns:
    [B] per-example losses; the caller takes the mean.
  """
  s, t, labels = _check_inputs(student_logits, teacher_logits, labels, temperature)
  masked = _teacher_mask(t, labels)
  s, t = common.prepare_pair(s, t, standardize)
  return common.nan_for_bad_labels(_mcd(s, t, masked, temperature), labels, s.shape[-1])


def rld(student_logits: Array, teacher_logits: Array, labels: Array, *, alpha: float = 1.0,
        beta: float = 8.0, temperature: float = 4.0, alpha_temperature: Optional[float] = None,
        standardize: bool = False) -> Array:
  """Refined Logit Distillation: rld_i = alpha * scd_i(tau_a) + beta * mcd_i(T).

  Sun et al., arXiv 2408.07703, zju-SWJ/RLD `RLD.py` (docs/methods.md §5), without CE and warm-up.
  tau_a = alpha_temperature defaults to T (the README's `--same-t`); then, for a correct untied
  teacher, rld equals dkd exactly. Rows whose mask covers every class have mcd = 0 exactly, so
  they contribute alpha * scd only (0 with alpha = 0), never NaN.

  Args:
    student_logits: [B, C] floating logits, C >= 2.
    teacher_logits: [B, C] floating logits.
    labels: [B] integer class indices.
    alpha: SCD weight (scalar, may be traced).
    beta: MCD weight (scalar, may be traced).
    temperature: MCD temperature T > 0.
    alpha_temperature: SCD temperature tau_a > 0; None means T.
    standardize: z-score both sides per row first (LS).

  Returns:
    [B] per-example losses; the caller takes the mean.
  """
  s, t, labels = _check_inputs(student_logits, teacher_logits, labels, temperature)
  tau_a = temperature if alpha_temperature is None else alpha_temperature
  common.check_positive(tau_a, "alpha_temperature")
  common.check_scalar(alpha, "alpha")
  common.check_scalar(beta, "beta")
  top1, masked = _teacher_top1(t), _teacher_mask(t, labels)
  s, t = common.prepare_pair(s, t, standardize)
  return alpha * _scd(s, t, labels, top1, tau_a) + beta * _mcd(s, t, masked, temperature)
