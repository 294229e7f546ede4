"""What the benchmarks share: the machine's name for their JSON records, and the plain KD loss
that the step benchmarks write out in JAX beside torch_reference.kd_loss."""
from __future__ import annotations

import platform


def cpu_model() -> str:
  """The /proc/cpuinfo model name, or the platform's processor string."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def kd_loss_jax(logits, teacher_logits, labels, t: float = 4.0):
  """0.1 * CE + 0.9 * T^2 * KL(p_t^T || p_s^T), batch mean (torch_reference.kd_loss in JAX)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  log_p = jax.nn.log_softmax(logits / t)
  p_t = jax.nn.softmax(teacher_logits / t)
  kl = jnp.sum(p_t * (jnp.log(jnp.clip(p_t, 1e-30)) - log_p), axis=-1).mean()
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1).mean()
  return 0.1 * ce + 0.9 * t * t * kl
