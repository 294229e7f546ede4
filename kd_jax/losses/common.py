"""Shared helpers of the losses: input validation, logit standardization, log-space KL pieces.

Validation runs on static shapes and dtypes only, so every check fires at trace time.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# Finite mask value (docs/methods.md §3, §5): never -inf, so that masked-vs-masked differences stay
# finite and the teacher-weighted KL term is exactly 0 * finite = 0 on masked entries.
NEG_MASK = -1e9
# LS (docs/methods.md §4): eps added to the std, and the floor on the variance that keeps the
# gradient of a constant row finite (value change <= 1e-15, negligible against STD_EPS).
STD_EPS = 1e-7
VAR_FLOOR = 1e-30


def is_tracer(value: Any) -> bool:
  """True for values traced by jit/grad/vmap, whose contents cannot be checked in Python."""
  return isinstance(value, jax.core.Tracer)


def _as_array(value: Any, name: str) -> Array:
  """Arrays (also tracers) pass through; lists/scalars are converted, their dtype checked later."""
  try:
    return jnp.asarray(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be an array, got {type(value).__name__}: {e}") from e


def compute_dtype(*arrays: Array) -> jnp.dtype:
  """float32 for float32/bfloat16/float16 inputs, float64 for float64 inputs (x64 mode)."""
  dtype = jnp.result_type(*arrays)
  return jnp.dtype(jnp.float64) if dtype == jnp.float64 else jnp.dtype(jnp.float32)


def check_logits(logits: Any, name: str, *, min_classes: int = 2) -> Array:
  """Checks that `logits` is a floating [B, C] array with C >= min_classes; returns it as an array.

  Raises:
    ValueError: naming the argument, the offending shape/rank/dtype and what is accepted.
  """
  logits = _as_array(logits, name)
  if logits.ndim != 2:
    raise ValueError(f"{name} must have rank 2 [batch, classes], got rank {logits.ndim} with "
                     f"shape {tuple(logits.shape)}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"{name} must have a floating dtype (float32, bfloat16, float16 or "
                     f"float64), got dtype {logits.dtype}")
  if logits.shape[1] < min_classes:
    raise ValueError(f"{name} must have at least {min_classes} classes, got shape "
                     f"{tuple(logits.shape)}")
  return logits


def check_pair(student_logits: Any, teacher_logits: Any, *,
               min_classes: int = 2) -> tuple[Array, Array]:
  """Validates a student/teacher logit pair: both floating [B, C] with identical shapes."""
  student_logits = check_logits(student_logits, "student_logits", min_classes=min_classes)
  teacher_logits = check_logits(teacher_logits, "teacher_logits", min_classes=min_classes)
  if student_logits.shape != teacher_logits.shape:
    raise ValueError("student_logits and teacher_logits must have the same [batch, classes] "
                     f"shape, got {tuple(student_logits.shape)} and "
                     f"{tuple(teacher_logits.shape)} (no broadcasting)")
  return student_logits, teacher_logits


def check_labels(labels: Any, batch_size: int) -> Array:
  """Validates integer class indices of shape [B]. Their range cannot be checked at trace time."""
  labels = _as_array(labels, "labels")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integer class indices (e.g. int32), got dtype "
                     f"{labels.dtype}; one-hot or soft labels are not accepted")
  if labels.shape != (batch_size,):
    raise ValueError(f"labels must have shape ({batch_size},) to match the logits' batch, got "
                     f"shape {tuple(labels.shape)}")
  return labels


def check_positive(value: Any, name: str) -> None:
  """Checks a positive finite scalar hyper-parameter when it is concrete (skipped for tracers)."""
  if jnp.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
  if is_tracer(value):
    return
  v = float(value)
  if not (math.isfinite(v) and v > 0):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_scalar(value: Any, name: str) -> None:
  """Checks that a loss weight is a scalar (it may be traced, e.g. a warm-up factor)."""
  if jnp.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")


def standardize(logits: Array) -> Array:
  """Z-scores every row: z = (v - mean_c v) / (1e-7 + std_c v), std unbiased (ddof=1).

  Logit standardization (LS) of Sun et al., arXiv 2403.01427, as in the zju-SWJ/RLD `normalize`
  and torchdistill `LogitStdKDLoss` (docs/methods.md §4). Two-pass mean/variance in (at least)
  float32. The std is computed as sqrt(max(var, 1e-30)) so that an exactly constant row gets
  output 0 and a finite gradient instead of the 0/0 NaN of the plain formula.

  Args:
    logits: [..., C] floating array, C >= 2 (the unbiased std needs two entries).

  Returns:
    Array of the same shape in float32 (float64 for float64 inputs).
  """
  if not hasattr(logits, "ndim") or logits.ndim < 1:
    raise ValueError(f"standardize needs an array of rank >= 1 [..., classes], got "
                     f"{getattr(logits, 'shape', type(logits).__name__)}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"standardize needs a floating dtype, got dtype {logits.dtype}")
  num = logits.shape[-1]
  if num < 2:
    raise ValueError(f"standardize needs at least 2 classes (ddof=1), got shape "
                     f"{tuple(logits.shape)}")
  x = logits.astype(compute_dtype(logits))
  centred = x - jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.sum(centred * centred, axis=-1, keepdims=True) / (num - 1)
  std = jnp.sqrt(jnp.maximum(var, VAR_FLOOR))
  return centred / (std + STD_EPS)


def prepare_pair(student_logits: Array, teacher_logits: Array,
                 apply_standardize: bool) -> tuple[Array, Array]:
  """Casts to the compute dtype, stops the teacher's gradient and optionally z-scores both sides."""
  dtype = compute_dtype(student_logits, teacher_logits)
  s = student_logits.astype(dtype)
  t = lax.stop_gradient(teacher_logits.astype(dtype))
  if not isinstance(apply_standardize, bool):
    raise ValueError(f"standardize must be a Python bool, got {apply_standardize!r}")
  if apply_standardize:
    s, t = standardize(s), standardize(t)
  return s, t


def masked_logsumexp(x: Array, mask: Array) -> Array:
  """log sum_{c: mask_c} exp(x_c) over the last axis, max-shifted; NEG_MASK where mask is empty.

  Excluded entries get neither value nor gradient (they are replaced, not offset).
  """
  xm = jnp.where(mask, x, NEG_MASK)
  shift = lax.stop_gradient(jnp.max(xm, axis=-1, keepdims=True))
  total = jnp.sum(jnp.where(mask, jnp.exp(xm - shift), 0.0), axis=-1)
  return jnp.log(jnp.where(total > 0, total, 1.0)) + shift[..., 0]


def class_mask(index: Array, num_classes: int) -> Array:
  """Boolean [B, C] mask that is True at class `index[b]` of each row."""
  return index[:, None] == jnp.arange(num_classes)[None, :]  # promotes narrow int dtypes


def nan_for_bad_labels(loss: Array, labels: Array, num_classes: int) -> Array:
  """`loss` [B] with NaN where labels[b] is outside [0, num_classes), negative included."""
  return jnp.where((labels >= 0) & (labels < num_classes), loss, jnp.nan)


def take_class(x: Array, index: Array) -> Array:
  """x[b, index[b]] as [B]; an index outside [0, C), negative included, gives NaN.

  Labels cannot be range-checked when traced, so a bad one must not give a plausible finite
  value (a plain gather would wrap -1 to the last class); the train step then skips the step.
  """
  valid = (index >= 0) & (index < x.shape[-1])
  picked = jnp.take_along_axis(x, jnp.where(valid, index, 0)[:, None], axis=-1)[:, 0]
  return jnp.where(valid, picked, jnp.nan)


def binary_log_split(z: Array, index: Array) -> Array:
  """Log of [p_k, sum_{c != k} p_c] for p = softmax(z) and k = index[b]; shape [B, 2].

  The rest-mass is the masked logsumexp over the other classes (the reference's masked sum,
  never log(1 - p_k)), so it stays finite even when every other probability underflows.
  """
  mask = class_mask(index, z.shape[-1])
  z_k = take_class(z, index)
  lse_rest = masked_logsumexp(z, ~mask)
  lse_all = jnp.logaddexp(z_k, lse_rest)
  return jnp.stack([z_k - lse_all, lse_rest - lse_all], axis=-1)


def kl_log_space(log_p: Array, log_q: Array) -> Array:
  """KL(p || q) = sum_c exp(log_p_c) * (log_p_c - log_q_c) over the last axis, from log-probs.

  Entries with p_c = 0 (masked at NEG_MASK) contribute exactly 0 because every log here is finite.
  """
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


@jax.custom_vjp
def gradient_reversal(x: Any, scale: Any = 1.0) -> Any:
  """The gradient-reversal layer: R_l(x) = x forward, dR_l/dx = -l * I backward.

  x: any pytree of arrays; scale l: a scalar (a traced value such as a curriculum's is fine),
  itself given no gradient. A loss parameter theta read through R_l is moved by gradient
  descent *up* the loss, l times as fast (CTKD's adversarial temperature).
  """
  del scale
  return x


def _gradient_reversal_fwd(x: Any, scale: Any) -> tuple[Any, Any]:
  return x, scale


def _gradient_reversal_bwd(scale: Any, g: Any) -> tuple[Any, Any]:
  flipped = jax.tree.map(lambda t: (-scale * t).astype(t.dtype), g)
  return flipped, jnp.zeros_like(scale)


gradient_reversal.defvjp(_gradient_reversal_fwd, _gradient_reversal_bwd)
