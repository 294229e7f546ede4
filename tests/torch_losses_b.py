"""Independent PyTorch transcriptions of CTKD, MLKD and DIST, written the way their reference
code computes them (batch means, numpy percentiles, torch autograd), not kd_jax's forms.

CTKD: zhengli97/CTKD (temperature module with a gradient-reversal Function, cosine decay,
batchmean KL times T*T). MLKD: Jin-Ying/Multi-Level-Logit-Distillation `KD_ours`. DIST:
hunto/image_classification_sota `dist_kd.py`. docs/methods.md §9-§11 describe them.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def standardize(x):
  return (x - x.mean(dim=-1, keepdim=True)) / (1e-7 + x.std(dim=-1, keepdim=True))


# ----------------------------------------------------------------------------- CTKD


class _Reverse(torch.autograd.Function):
  """Identity forward; backward multiplies by the (negative) decay value, as the authors."""

  @staticmethod
  def forward(ctx, x, value):  # pylint: disable=arguments-differ
    ctx.value = value
    return x.clone()

  @staticmethod
  def backward(ctx, g):  # pylint: disable=arguments-differ
    return g.new_tensor(ctx.value) * g, None


def cosine_decay_value(epoch, max_value=0.0, min_value=-1.0, num_loops=10):
  """The authors' CosineDecay.get_value: a value in [min_value, max_value]."""
  i = min(max(epoch, 0), num_loops)
  v = (math.cos(i * math.pi / num_loops) + 1.0) * 0.5
  return v * (max_value - min_value) + min_value


def global_temperature(raw, decay_value, t_start=1.0, t_end=20.0):
  return t_start + t_end * torch.sigmoid(_Reverse.apply(raw, decay_value))


def distill_kl(s, t, temp, use_ls=False):
  """DistillKL (or DistillKL_logit_stand): batchmean KL of softmaxes at T, times T*T."""
  if use_ls:
    s, t = standardize(s), standardize(t)
  return torch.nn.KLDivLoss(reduction="batchmean")(
      F.log_softmax(s / temp, dim=1), F.softmax(t / temp, dim=1)) * temp * temp


def instance_kl(s, t, temps):
  """README's instance-wise loss: a loop over samples, teacher probs + 1e-7, then the mean."""
  total = 0
  for i in range(temps.shape[0]):
    q = F.log_softmax(s[i].unsqueeze(0) / temps[i], dim=1)
    p = F.softmax(t[i].unsqueeze(0) / temps[i], dim=1) + 10 ** (-7)
    total = total + temps[i] * temps[i] * torch.sum(p * (torch.log(p) - q))
  return total / temps.shape[0]


def _kl_div_v1(log_q, p):
  """F.kl_div(reduction='none') as torch 1.x computes it: zero where the target is 0, in value
  and gradient. (torch 2's xlogy form gives a NaN gradient to a target that underflows to 0,
  which CTKD's DKD meets: its masked teacher entry is exp(t/T - 1000) = 0.)"""
  pos = p > 0
  safe = torch.where(pos, p, torch.ones_like(p))
  return torch.where(pos, p * (torch.log(safe) - log_q), torch.zeros_like(p))


def ctkd_dkd(s, t, y, alpha, beta, temp):
  """CTKD's DKDloss: TCKD + NCKD with the learned temperature, summed then divided by B."""
  gt = torch.zeros_like(s).scatter_(1, y.unsqueeze(1), 1).bool()
  def cat(p):
    return torch.cat([(p * gt).sum(1, keepdim=True), (p * ~gt).sum(1, keepdim=True)], 1)
  b_s = cat(F.softmax(s / temp, dim=1))
  b_t = cat(F.softmax(t / temp, dim=1))
  tckd = _kl_div_v1(torch.log(b_s), b_t).sum() * temp ** 2 / y.shape[0]
  p2 = F.softmax(t / temp - 1000.0 * gt, dim=1)
  lq2 = F.log_softmax(s / temp - 1000.0 * gt, dim=1)
  nckd = _kl_div_v1(lq2, p2).sum() * temp ** 2 / y.shape[0]
  return alpha * tckd + beta * nckd


class InstanceT(torch.nn.Module):
  """Linear(2C, H) - ReLU - Linear(H, 1) on cat([t, s]); reversal then the sigmoid range."""

  def __init__(self, w1, b1, w2, b2):
    super().__init__()
    self.l1 = torch.nn.Linear(w1.shape[0], w1.shape[1]).double()
    self.l2 = torch.nn.Linear(w2.shape[0], 1).double()
    with torch.no_grad():
      self.l1.weight.copy_(torch.tensor(np.asarray(w1).T))
      self.l1.bias.copy_(torch.tensor(np.asarray(b1)))
      self.l2.weight.copy_(torch.tensor(np.asarray(w2).T))
      self.l2.bias.copy_(torch.tensor(np.asarray(b2)))

  def forward(self, t, s, decay_value, t_start=1.0, t_end=20.0):
    raw = self.l2(torch.relu(self.l1(torch.cat([t, s], dim=1)))).squeeze(1)
    return t_start + t_end * torch.sigmoid(_Reverse.apply(raw, decay_value))


# ----------------------------------------------------------------------------- MLKD


def mlkd_kd_loss(s, t, temperature, logit_stand=False):
  if logit_stand:
    s, t = standardize(s), standardize(t)
  log_q = F.log_softmax(s / temperature, dim=1)
  p = F.softmax(t / temperature, dim=1)
  return F.kl_div(log_q, p, reduction="none").sum(1).mean() * temperature ** 2


def mlkd_cc_loss(s, t, temperature):
  c = t.shape[1]
  ps, pt = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
  return ((torch.mm(pt.transpose(1, 0), pt) - torch.mm(ps.transpose(1, 0), ps)) ** 2).sum() / c


def mlkd_bc_loss(s, t, temperature):
  b = t.shape[0]
  ps, pt = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
  return ((torch.mm(pt, pt.transpose(1, 0)) - torch.mm(ps, ps.transpose(1, 0))) ** 2).sum() / b


def mlkd_masks(t_weak):
  p = F.softmax(t_weak.detach(), dim=1)
  conf, _ = p.max(dim=1)
  mask = conf.le(np.percentile(conf.cpu().numpy().flatten(), 50)).bool()
  cls = torch.sum(p, dim=0)
  cls_mask = cls.le(np.percentile(cls.cpu().numpy().flatten(), 50)).bool()
  return mask, cls_mask


def mlkd_losses(s_w, s_s, t_w, t_s, y, temperature=4.0, ce_weight=0.1, kd_weight=0.9,
                logit_stand=False):
  """KD_ours.forward_train's losses_dict, term by term in the reference's order."""
  mask, cls_mask = mlkd_masks(t_w)
  temps = [temperature, 3.0, 5.0, 2.0, 6.0]
  ls = logit_stand
  ce = ce_weight * (F.cross_entropy(s_w, y) + F.cross_entropy(s_s, y))
  kd_weak = sum(kd_weight * ((mlkd_kd_loss(s_w, t_w, tt, ls) * mask).mean()) for tt in temps)
  kd_strong = (sum(kd_weight * mlkd_kd_loss(s_s, t_s, tt, ls) for tt in temps[:3])
               + sum(kd_weight * mlkd_kd_loss(s_w, t_w, tt, ls) for tt in temps[3:]))
  cc_weak = sum(kd_weight * ((mlkd_cc_loss(s_w, t_w, tt) * cls_mask).mean()) for tt in temps)
  bc_weak = sum(kd_weight * ((mlkd_bc_loss(s_w, t_w, tt) * mask).mean()) for tt in temps)
  return {"loss_ce": ce, "loss_kd": kd_weak + kd_strong, "loss_cc": cc_weak, "loss_bc": bc_weak}


# ----------------------------------------------------------------------------- DIST


def _cosine(a, b, eps=1e-8):
  return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _pearson(a, b, eps=1e-8):
  return _cosine(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def dist_loss(z_s, z_t, beta=1.0, gamma=1.0, tau=1.0):
  """DIST.forward: tau^2 (beta * inter + gamma * intra)."""
  y_s, y_t = (z_s / tau).softmax(dim=1), (z_t / tau).softmax(dim=1)
  inter = 1 - _pearson(y_s, y_t).mean()
  intra = 1 - _pearson(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean()
  return beta * tau ** 2 * inter + gamma * tau ** 2 * intra
