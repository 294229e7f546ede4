"""Logit-distillation losses (CE, KD, DKD, LS, RLD, DHKD, RKKD), each returning per-example [B];
plus the gradient-reversal layer that learnable loss parameters may be read through.

The exact definitions, edge cases and golden values are in docs/methods.md; the caller takes the mean.
"""
from kd_jax.losses.common import gradient_reversal, standardize
from kd_jax.losses.dhkd import binary_kl_norm
from kd_jax.losses.kd import cross_entropy, dkd, kd, nckd, tckd
from kd_jax.losses.kendall import rank_kendall
from kd_jax.losses.rld import mcd, rld, scd

__all__ = [
    "binary_kl_norm",
    "cross_entropy",
    "dkd",
    "gradient_reversal",
    "kd",
    "mcd",
    "nckd",
    "rank_kendall",
    "rld",
    "scd",
    "standardize",
    "tckd",
]
