"""CTKD (curriculum temperature): gradient reversal, the cosine lambda curriculum, the global and
instance-wise temperature modules, and KD with a learned (traced) temperature.

Spec: docs/methods.md §9 (zhengli97/CTKD `models/temp_global.py`, `train_student.py`,
`helper/loops.py`, `distiller_zoo/KD.py`). Pure functions of (params, inputs); the temperature
parameters live in a pytree beside the student's and are updated by the same optimizer.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from kd_jax.losses import common
from kd_jax.losses.common import gradient_reversal

Array = jax.Array

# The authors' CIFAR run script: temperature = T_START + T_END * sigmoid(raw), raw initialised to
# 1 (so T0 = 1 + 20 * sigmoid(1) = 15.6212), lambda from 0 to 1 over DECAY_LOOPS epochs.
T_START = 1.0
T_END = 20.0
RAW_INIT = 1.0
LAMBDA_MIN = 0.0
LAMBDA_MAX = 1.0
DECAY_LOOPS = 10
# README formula of the instance-wise variant: the teacher's probabilities get +1e-7.
INSTANCE_TEACHER_EPS = 1e-7


def ctkd_lambda(epoch: Any, *, lambda_min: float = LAMBDA_MIN, lambda_max: float = LAMBDA_MAX,
                num_loops: int = DECAY_LOOPS) -> Array:
  """The authors' cosine curriculum of the reversal strength, by 1-based epoch.

  lambda(e) = lambda_max - (lambda_max - lambda_min) * (1 + cos(pi * min(max(e, 0), N) / N)) / 2

  with N = num_loops. The authors' `CosineDecay(max_value=0, min_value=-1, num_loops=10)`
  returns -lambda(e) and their reversal layer multiplies by it; kd_jax keeps lambda >= 0 and
  negates in `gradient_reversal`. e counts epochs from 1 (their loop runs `range(1, epochs + 1)`),
  so the first epoch already has lambda = (1 - cos(pi / 10)) / 2 = 0.024472.

  Args:
    epoch: 1-based epoch (int or traced scalar).
    lambda_min, lambda_max: the curriculum's start and end (0 and 1 in the run script).
    num_loops: N > 0, the epoch at which lambda reaches lambda_max (10 in the run script).

  Returns:
    float32 scalar.
  """
  if not isinstance(num_loops, int) or num_loops <= 0:
    raise ValueError(f"num_loops must be a positive int, got {num_loops!r}")
  e = jnp.clip(jnp.asarray(epoch, jnp.float32), 0.0, float(num_loops))
  half = (jnp.cos(e * (math.pi / num_loops)) + 1.0) * 0.5
  return lambda_max - (lambda_max - lambda_min) * half


def global_temperature_init(raw: float = RAW_INIT) -> dict[str, Array]:
  """Parameters of the global temperature module: one raw scalar (the authors' `ones(1)`)."""
  return {"raw": jnp.asarray(raw, jnp.float32)}


def global_temperature(params: dict[str, Array], lambda_: Any, *, t_start: float = T_START,
                       t_end: float = T_END) -> Array:
  """tau = t_start + t_end * sigmoid(GRL(raw, lambda)): a scalar in (t_start, t_start + t_end).

  The reversal sits on the raw parameter, before the sigmoid, as in `Global_T`. At the
  authors' init raw = 1 this is 15.6212 (t_start=1, t_end=20).
  """
  raw = gradient_reversal(params["raw"], lambda_)
  return t_start + t_end * jax.nn.sigmoid(raw)


def instance_temperature_init(key: Array, num_classes: int, *, hidden: int = 128,
                              dtype: Any = jnp.float32) -> dict[str, Array]:
  """Parameters of the instance-wise module: Linear(2C -> hidden), ReLU, Linear(hidden -> 1).

  PyTorch `nn.Linear` initialisation (uniform in +-1/sqrt(fan_in) for weights and biases).
  The authors publish this module outside their repository; its width and layout here follow
  the paper's "small MLP on the concatenated logits" and are not checked against their code.
  """
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
  if not isinstance(hidden, int) or hidden < 1:
    raise ValueError(f"hidden must be a positive int, got {hidden!r}")
  k1, k2, k3, k4 = jax.random.split(key, 4)
  b1 = 1.0 / math.sqrt(2 * num_classes)
  b2 = 1.0 / math.sqrt(hidden)
  u = lambda k, shape, b: jax.random.uniform(k, shape, dtype, -b, b)
  return {"w1": u(k1, (2 * num_classes, hidden), b1), "b1": u(k2, (hidden,), b1),
          "w2": u(k3, (hidden, 1), b2), "b2": u(k4, (1,), b2)}


def instance_temperature(params: dict[str, Array], student_logits: Array, teacher_logits: Array,
                         lambda_: Any, *, t_start: float = T_START, t_end: float = T_END,
                         detach_inputs: bool = True) -> Array:
  """tau_i = t_start + t_end * sigmoid(GRL(MLP([t_i, s_i]), lambda)), shape [B].

  Input order teacher-then-student, as the authors call the module (`mlp_net(logit_t, logit_s,
  lambda)`). The reversal sits on the MLP output, before the sigmoid. With detach_inputs (the
  default) the student's logits enter without gradient, so the student is trained by the KD
  loss only; the authors' loop passes them undetached, but their module's code is not public,
  so whether the reversed gradient reaches the student through it is not known.
  """
  s, t = common.check_pair(student_logits, teacher_logits)
  if not isinstance(detach_inputs, bool):
    raise ValueError(f"detach_inputs must be a Python bool, got {detach_inputs!r}")
  x = jnp.concatenate([jax.lax.stop_gradient(t), s], axis=-1).astype(params["w1"].dtype)
  if detach_inputs:
    x = jax.lax.stop_gradient(x)
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  raw = gradient_reversal((h @ params["w2"] + params["b2"])[:, 0], lambda_)
  return t_start + t_end * jax.nn.sigmoid(raw)


def ctkd_kd(student_logits: Array, teacher_logits: Array, temperature: Any, *,
            teacher_eps: float = 0.0, standardize: bool = False) -> Array:
  """KD with a learned temperature: kd_i = tau_i^2 * sum_c p'_c (log p'_c - log q_c).

  p = softmax(t / tau), p' = p + teacher_eps, q = softmax(s / tau). `temperature` is a scalar
  (global module) or [B] (instance-wise module), traced, and receives the gradient of both the
  softmaxes and the tau^2 factor, as in the authors' `DistillKL` (batchmean KL times T*T).
  teacher_eps = 0 is that loss (the global module); the instance-wise README formula adds 1e-7 to
  p without renormalising (INSTANCE_TEACHER_EPS). The teacher gets no gradient.

  Args:
    student_logits, teacher_logits: [B, C] floating logits.
    temperature: scalar or [B] positive temperature (may be traced).
    teacher_eps: >= 0, added to the teacher's probabilities.
    standardize: z-score both sides first (the LS code's `DistillKL_logit_stand`).

  Returns:
    [B] per-example losses; the caller takes the mean.
  """
  s, t = common.check_pair(student_logits, teacher_logits)
  tau = jnp.asarray(temperature)
  if tau.ndim not in (0, 1) or (tau.ndim == 1 and tau.shape[0] != s.shape[0]):
    raise ValueError(f"temperature must be a scalar or shape ({s.shape[0]},), got shape "
                     f"{tuple(tau.shape)}")
  if not common.is_tracer(temperature) and not bool(jnp.all(tau > 0)):
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  common.check_scalar(teacher_eps, "teacher_eps")
  s, t = common.prepare_pair(s, t, standardize)
  tau = tau.astype(s.dtype)
  col = tau[:, None] if tau.ndim == 1 else tau
  log_q = jax.nn.log_softmax(s / col, axis=-1)
  log_p = jax.nn.log_softmax(t / col, axis=-1)
  if isinstance(teacher_eps, (int, float)) and teacher_eps == 0:
    kl = common.kl_log_space(log_p, log_q)
  else:
    p = jnp.exp(log_p) + teacher_eps
    kl = jnp.sum(p * (jnp.log(p) - log_q), axis=-1)
  return tau ** 2 * kl
