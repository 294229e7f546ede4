"""Logit-distillation losses (CE, KD, DKD, LS, RLD, DHKD, RKKD, CTKD, MLKD, DIST), plus the
gradient-reversal layer that learnable loss parameters may be read through.

Per-example [B] outputs, except the batch-level terms (MLKD's batch/class levels, DIST's
intra-class relation), which are scalars and say so.

The exact definitions, edge cases and golden values are in docs/methods.md; the caller takes the mean.
"""
from kd_jax.losses.common import gradient_reversal, standardize
from kd_jax.losses.ctkd import ctkd_kd, ctkd_lambda, global_temperature, global_temperature_init
from kd_jax.losses.ctkd import instance_temperature, instance_temperature_init
from kd_jax.losses.dhkd import binary_kl_norm
from kd_jax.losses.dist import dist, dist_inter, dist_intra
from kd_jax.losses.kd import cross_entropy, dkd, kd, nckd, tckd
from kd_jax.losses.kendall import rank_kendall
from kd_jax.losses.mlkd import mlkd, mlkd_batch_level, mlkd_class_level, mlkd_confidence_masks
from kd_jax.losses.mlkd import mlkd_instance_kd, mlkd_temperatures
from kd_jax.losses.rld import mcd, rld, scd

__all__ = [
    "binary_kl_norm",
    "cross_entropy",
    "ctkd_kd",
    "ctkd_lambda",
    "dist",
    "dist_inter",
    "dist_intra",
    "dkd",
    "global_temperature",
    "global_temperature_init",
    "gradient_reversal",
    "instance_temperature",
    "instance_temperature_init",
    "kd",
    "mcd",
    "mlkd",
    "mlkd_batch_level",
    "mlkd_class_level",
    "mlkd_confidence_masks",
    "mlkd_instance_kd",
    "mlkd_temperatures",
    "nckd",
    "rank_kendall",
    "rld",
    "scd",
    "standardize",
    "tckd",
]
