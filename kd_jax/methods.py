"""The one place where a method is defined: which loss terms apply to which head, with which weights.

Adding a method = a branch in `loss_terms` plus a config; the training loop never changes.
Every term is returned already weighted (batch mean times weight), so the terms add up to the loss.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from kd_jax import config as config_lib
from kd_jax import losses


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Static (hashable) loss settings of a run, read once from `config.loss`."""
  method: str                 # the effective base method: ce, kd, dkd, rld, dhkd
  rank: bool                  # RKKD: add the Kendall term
  ce_weight: float = 1.0
  kd_weight: float = 0.9
  temperature: float = 4.0
  alpha: float = 1.0
  beta: float = 8.0
  alpha_temperature: float = 0.0
  standardize: bool = False
  warmup_epochs: float = 0.0
  label_smoothing: float = 0.0
  bkln_weight: float = 1.0
  bkln_temperature: float = 2.0
  bkln_until_epoch: int = 0
  grad_align: bool = False
  rank_weight: float = 0.0
  rank_steepness: float = 100.0
  rank_form: str = "tanh"
  rank_top_k: int = 0

  @classmethod
  def from_config(cls, config) -> "LossSpec":
    fields = {f.name for f in dataclasses.fields(cls)} - {"method", "rank"}
    kwargs = {k: config.loss[k] for k in fields}
    return cls(method=config_lib.effective_method(config), rank=config.method == "rkkd",
               **kwargs)

  @property
  def needs_teacher(self) -> bool:
    return self.rank or self.method != "ce"


def warmup_factor(epoch: jax.Array, warmup_epochs: float) -> jax.Array:
  """w(e) = min(e / W, 1) with 1-based epochs, constant within an epoch; 1 when W = 0."""
  if not warmup_epochs:
    return jnp.ones((), jnp.float32)
  return jnp.minimum(epoch.astype(jnp.float32) / warmup_epochs, 1.0)


def loss_terms(spec: LossSpec, logits: jax.Array, labels: jax.Array,
               teacher_logits: Optional[jax.Array], aux_logits: Optional[jax.Array],
               epoch: jax.Array) -> dict[str, jax.Array]:
  """Weighted batch-mean loss terms of one step; their sum is the training loss.

  logits/aux_logits: the student's main/auxiliary head [B, C]; teacher_logits [B, C] under
  stop_gradient (or None for 'ce'); labels [B] int; epoch: 1-based epoch (traced scalar).
  CE always acts on the main head; distillation terms are scaled by the warm-up factor.
  """
  mean = jnp.mean
  terms = {"ce": spec.ce_weight * mean(losses.cross_entropy(
      logits, labels, label_smoothing=spec.label_smoothing))}
  if teacher_logits is not None:
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
  w = warmup_factor(epoch, spec.warmup_epochs)
  t = spec.temperature
  if spec.method == "kd":
    terms["kd"] = w * spec.kd_weight * mean(losses.kd(
        logits, teacher_logits, temperature=t, standardize=spec.standardize))
  elif spec.method == "dkd":
    terms["tckd"] = w * spec.alpha * mean(losses.tckd(
        logits, teacher_logits, labels, temperature=t, standardize=spec.standardize))
    terms["nckd"] = w * spec.beta * mean(losses.nckd(
        logits, teacher_logits, labels, temperature=t, standardize=spec.standardize))
  elif spec.method == "rld":
    ta = spec.alpha_temperature or t
    terms["scd"] = w * spec.alpha * mean(losses.scd(
        logits, teacher_logits, labels, temperature=ta, standardize=spec.standardize))
    terms["mcd"] = w * spec.beta * mean(losses.mcd(
        logits, teacher_logits, labels, temperature=t, standardize=spec.standardize))
  elif spec.method == "dhkd":
    on = jnp.ones((), jnp.float32)
    if spec.bkln_until_epoch:
      on = (epoch < spec.bkln_until_epoch).astype(jnp.float32)
    terms["bkln"] = on * spec.bkln_weight * mean(losses.binary_kl_norm(
        aux_logits, teacher_logits, temperature=spec.bkln_temperature))
  if spec.rank:
    terms["rank"] = w * spec.rank_weight * mean(losses.rank_kendall(
        logits, teacher_logits, steepness=spec.rank_steepness, form=spec.rank_form,
        top_k=spec.rank_top_k or None))
  return terms


def split_for_grad_align(terms: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """DHKD gradient alignment groups: (task loss = CE, distillation loss = every other term)."""
  task = terms["ce"]
  distill = sum((v for k, v in terms.items() if k != "ce"), jnp.zeros((), jnp.float32))
  return task, distill
