"""Independent PyTorch transcriptions of the reference loss formulas, written the naive way.

They follow docs/methods.md's reference semantics (mdistiller/RLD/DHKD), not kd_jax's stable forms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def standardize(x: torch.Tensor) -> torch.Tensor:
  """LS `normalize`: (x - mean) / (1e-7 + std), torch's std being unbiased."""
  return (x - x.mean(dim=1, keepdim=True)) / (1e-7 + x.std(dim=1, keepdim=True))


def cross_entropy(logits, labels, label_smoothing=0.0):
  return F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)


def kd(s, t, temperature=4.0, use_ls=False):
  if use_ls:
    s, t = standardize(s), standardize(t)
  log_q = F.log_softmax(s / temperature, dim=1)
  p = F.softmax(t / temperature, dim=1)
  return F.kl_div(log_q, p, reduction="none").sum(1) * temperature ** 2


def _gt_mask(logits, labels):
  return torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1).bool()


def _cat_mask(p, in_mask, out_mask):
  return torch.cat([(p * in_mask).sum(1, keepdim=True), (p * out_mask).sum(1, keepdim=True)], 1)


def tckd(s, t, labels, temperature=4.0, use_ls=False):
  if use_ls:
    s, t = standardize(s), standardize(t)
  gt = _gt_mask(s, labels)
  p_s = F.softmax(s / temperature, dim=1)
  p_t = F.softmax(t / temperature, dim=1)
  b_s = _cat_mask(p_s, gt, ~gt)
  b_t = _cat_mask(p_t, gt, ~gt)
  return F.kl_div(torch.log(b_s), b_t, reduction="none").sum(1) * temperature ** 2


def nckd(s, t, labels, temperature=4.0, use_ls=False):
  if use_ls:
    s, t = standardize(s), standardize(t)
  gt = _gt_mask(s, labels).float()
  log_q_s = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
  q_t = F.softmax(t / temperature - 1000.0 * gt, dim=1)
  return F.kl_div(log_q_s, q_t, reduction="none").sum(1) * temperature ** 2


def dkd(s, t, labels, alpha=1.0, beta=8.0, temperature=4.0, use_ls=False):
  return (alpha * tckd(s, t, labels, temperature, use_ls)
          + beta * nckd(s, t, labels, temperature, use_ls))


def scd(s, t, labels, temperature=4.0, use_ls=False):
  if use_ls:
    s, t = standardize(s), standardize(t)
  gt = _gt_mask(s, labels)
  top = _gt_mask(t, t.argmax(dim=1))
  p_s = F.softmax(s / temperature, dim=1)
  p_t = F.softmax(t / temperature, dim=1)
  b_s = _cat_mask(p_s, gt, ~gt)
  b_t = _cat_mask(p_t, top, ~top)
  return F.kl_div(torch.log(b_s), b_t, reduction="none").sum(1) * temperature ** 2


def mcd(s, t, labels, temperature=4.0, use_ls=False):
  if use_ls:
    s, t = standardize(s), standardize(t)
  mask = t >= t.gather(1, labels.unsqueeze(1))
  log_q_s = F.log_softmax((s / temperature).masked_fill(mask, -1e9), dim=1)
  q_t = F.softmax((t / temperature).masked_fill(mask, -1e9), dim=1)
  return F.kl_div(log_q_s, q_t, reduction="none").sum(1) * temperature ** 2


def rld(s, t, labels, alpha=1.0, beta=8.0, temperature=4.0, alpha_temperature=None,
        use_ls=False):
  tau_a = temperature if alpha_temperature is None else alpha_temperature
  return (alpha * scd(s, t, labels, tau_a, use_ls)
          + beta * mcd(s, t, labels, temperature, use_ls))


def binary_kl_norm(a, t, temperature=2.0):
  """BinaryKLNorm as written: clamp the sigmoid, then Bernoulli KL of (1/2, 1/2) from it."""
  d = torch.sigmoid((a - t) / temperature).clamp(1e-8, 1 - 1e-8)
  half = torch.full_like(d, 0.5)
  per = half * torch.log(half / d) + half * torch.log(half / (1 - d))
  return per.sum(1) * temperature ** 2


def rank_kendall(s, t, steepness=100.0, form="tanh", top_k=None):
  """1 - tau_k over the full [B, C, C] broadcast, teacher detached."""
  t = t.detach()
  if top_k is not None:
    idx = t.topk(top_k, dim=1).indices
    s, t = s.gather(1, idx), t.gather(1, idx)
  c = s.shape[1]
  ds = s[:, :, None] - s[:, None, :]
  dt = t[:, :, None] - t[:, None, :]
  if form == "tanh":
    prod = torch.tanh(steepness * ds) * torch.tanh(steepness * dt)
  elif form == "sigmoid":
    prod = (2 * torch.sigmoid(steepness * ds) - 1) * (2 * torch.sigmoid(steepness * dt) - 1)
  else:
    prod = torch.tanh(steepness * ds) * torch.sign(dt)
  return 1 - prod.sum((1, 2)) / (c * (c - 1))
