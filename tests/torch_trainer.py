"""A PyTorch transcription of the reference training loops, for the trajectory tests.

mdistiller's trainer: SGD(momentum, weight_decay) over every student parameter (coupled L2),
the LR set at the start of each 1-based epoch from the milestones (lr * decay^#{m: epoch > m}),
the teacher in eval mode under no_grad, the student in train mode, loss = sum of the method's
weighted terms, distillation terms scaled by min(epoch / warmup, 1). DHKD's loop adds an
auxiliary head (BinaryKL-Norm against the teacher) and, with gradient alignment, projects the
distillation gradient off the task (CE) gradient when they conflict, over all parameters at once.

Written from the reference code's description, independently of kd_jax's implementation; the
loss formulas come from torch_losses.py.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

import torch_losses as L


def epoch_lr(base: float, epoch: int, milestones, decay: float) -> float:
  """mdistiller's adjust_learning_rate: base * decay^#{m : epoch > m}, epoch 1-based."""
  return base * decay ** sum(1 for m in milestones if epoch > m)


def loss_terms(method: str, base: str, loss: Dict[str, Any], logits, aux, t_logits, labels,
               epoch: int) -> Dict[str, torch.Tensor]:
  """The weighted batch-mean terms of one step (method = config.method, base = its base)."""
  ls = bool(loss["standardize"])
  temp = loss["temperature"]
  w = min(epoch / loss["warmup_epochs"], 1.0) if loss["warmup_epochs"] else 1.0
  terms = {"ce": loss["ce_weight"] * L.cross_entropy(
      logits, labels, loss["label_smoothing"]).mean()}
  if base == "kd":
    terms["kd"] = w * loss["kd_weight"] * L.kd(logits, t_logits, temp, ls).mean()
  elif base == "dkd":
    terms["tckd"] = w * loss["alpha"] * L.tckd(logits, t_logits, labels, temp, ls).mean()
    terms["nckd"] = w * loss["beta"] * L.nckd(logits, t_logits, labels, temp, ls).mean()
  elif base == "rld":
    ta = loss["alpha_temperature"] or temp
    terms["scd"] = w * loss["alpha"] * L.scd(logits, t_logits, labels, ta, ls).mean()
    terms["mcd"] = w * loss["beta"] * L.mcd(logits, t_logits, labels, temp, ls).mean()
  elif base == "dhkd":
    on = 1.0 if not loss["bkln_until_epoch"] or epoch < loss["bkln_until_epoch"] else 0.0
    terms["bkln"] = on * loss["bkln_weight"] * L.binary_kl_norm(
        aux, t_logits, loss["bkln_temperature"]).mean()
  if method == "rkkd":
    terms["rank"] = w * loss["rank_weight"] * L.rank_kendall(
        logits, t_logits, loss["rank_steepness"], loss["rank_form"],
        loss["rank_top_k"] or None).mean()
  return terms


def _aligned_grads(params: List[torch.nn.Parameter], task, distill) -> List[torch.Tensor]:
  """DHKD: g1 = d task, g2 = d distill; if <g2, g1> < 0, g2 -= <g2, g1>/|g1|^2 g1; g1 + g2."""
  def flat(loss):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params)])
  g1, g2 = flat(task), flat(distill)
  dot = torch.dot(g2, g1)
  if dot < 0:
    g2 = g2 - dot / torch.dot(g1, g1) * g1
  g = g1 + g2
  out, i = [], 0
  for p in params:
    out.append(g[i:i + p.numel()].view_as(p))
    i += p.numel()
  return out


def train(student: torch.nn.Module, teacher: torch.nn.Module, images: torch.Tensor,
          labels: torch.Tensor, config: Dict[str, Any]) -> List[float]:
  """Trains `student` in place, one full-batch step per epoch; returns the per-step losses.

  `config` is a kd_jax config.json (dict): method, base_method, loss.*, learning_rate,
  lr_milestones, lr_decay, momentum, weight_decay, nesterov, num_epochs.
  """
  method = config["method"]
  base = (config.get("base_method") or "kd") if method == "rkkd" else method
  loss_cfg = config["loss"]
  params = list(student.parameters())
  opt = torch.optim.SGD(params, lr=config["learning_rate"], momentum=config["momentum"],
                        weight_decay=config["weight_decay"], nesterov=config["nesterov"])
  teacher.eval()
  history = []
  for epoch in range(1, config["num_epochs"] + 1):
    for group in opt.param_groups:
      group["lr"] = epoch_lr(config["learning_rate"], epoch, config["lr_milestones"],
                             config["lr_decay"])
    student.train()
    with torch.no_grad():
      t_logits = teacher(images)
    out = student(images)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    terms = loss_terms(method, base, loss_cfg, logits, aux, t_logits, labels, epoch)
    loss = sum(terms.values())
    opt.zero_grad()
    if loss_cfg["grad_align"]:
      distill = sum(v for k, v in terms.items() if k != "ce")
      for p, g in zip(params, _aligned_grads(params, terms["ce"], distill)):
        p.grad = g.detach().clone()
    else:
      loss.backward()
    opt.step()
    history.append(float(loss.detach()))
  return history
