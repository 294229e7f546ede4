"""kd_jax: logit knowledge distillation in JAX/Flax (KD, DKD, RLD, DHKD, RKKD)."""

__version__ = "0.1.0"
