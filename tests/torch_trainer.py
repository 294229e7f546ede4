"""A PyTorch transcription of the reference training loops, for the trajectory tests.

mdistiller's trainer: SGD(momentum, weight_decay) over every student parameter (coupled L2),
the LR set at the start of each 1-based epoch from the milestones (lr * decay^#{m: epoch > m}),
the teacher in eval mode under no_grad, the student in train mode, loss = sum of the method's
weighted terms, distillation terms scaled by min(epoch / warmup, 1). DHKD's loop adds an
auxiliary head (BinaryKL-Norm against the teacher) and, with gradient alignment, projects the
distillation gradient off the task (CE) gradient when they conflict, over all parameters at once.

CTKD's, MLKD's and DIST's loops (`train_ctkd`, `train_mlkd`, `train_dist`) follow their
authors' trainers (docs/methods.md §9-§11) with the loss formulas of torch_losses_b.py; each takes
a `defect` that breaks one thing on purpose, so a test can show that its bound catches it.

Written from the reference code's description, independently of kd_jax's implementation; the
loss formulas come from torch_losses.py.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

import torch_losses as L
import torch_losses_b as LB


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


# --- CTKD, MLKD, DIST: their authors' trainers, one full-batch step per epoch ---------------


def _sgd(params, config: Dict[str, Any]) -> torch.optim.SGD:
  return torch.optim.SGD(params, lr=config["learning_rate"], momentum=config["momentum"],
                         weight_decay=config["weight_decay"], nesterov=config["nesterov"])


def _set_lr(opt: torch.optim.SGD, config: Dict[str, Any], epoch: int) -> None:
  for group in opt.param_groups:
    group["lr"] = epoch_lr(config["learning_rate"], epoch, config["lr_milestones"],
                           config["lr_decay"])


def train_ctkd(student: torch.nn.Module, teacher: torch.nn.Module, images: torch.Tensor,
               labels: torch.Tensor, config: Dict[str, Any], defect: str = ""):
  """zhengli97/CTKD's `train_student.py` + `train_distill` with the global temperature module.

  The raw temperature (`Global_T`: a 1-element parameter) is in the student's SGD (same LR,
  momentum and weight decay); before each 1-based epoch the CosineDecay value (from -lambda_min
  to -lambda_max over decay_loops epochs) is set; each step: teacher under no_grad, student in
  train mode, tau = t_start + t_end * sigmoid(GRL(raw)), loss = gamma CE + alpha DistillKL(tau).
  Returns (per-step losses, per-step temperatures before the update).

  defect: "lambda_sign" feeds the reversal layer +lambda (the temperature then descends the
  loss); "no_temperature_decay" leaves the temperature out of the weight decay.
  """
  loss_cfg = config["loss"]
  assert loss_cfg["ctkd_module"] == "global" and loss_cfg["ctkd_base"] == "kd"
  dtype = next(student.parameters()).dtype
  raw = torch.nn.Parameter(torch.full((1,), float(loss_cfg["ctkd_raw_init"]), dtype=dtype))
  if defect == "no_temperature_decay":
    opt = _sgd(list(student.parameters()), config)
    opt.add_param_group({"params": [raw], "weight_decay": 0.0})
  else:
    opt = _sgd(list(student.parameters()) + [raw], config)
  teacher.eval()
  losses, temperatures = [], []
  for epoch in range(1, config["num_epochs"] + 1):
    _set_lr(opt, config, epoch)
    decay_value = LB.cosine_decay_value(epoch, max_value=-loss_cfg["ctkd_lambda_min"],
                                        min_value=-loss_cfg["ctkd_lambda_max"],
                                        num_loops=loss_cfg["ctkd_decay_epochs"])
    if defect == "lambda_sign":
      decay_value = -decay_value
    student.train()
    with torch.no_grad():
      t_logits = teacher(images)
    logits = student(images)
    temp = LB.global_temperature(raw, decay_value, loss_cfg["ctkd_t_start"],
                                 loss_cfg["ctkd_t_end"])
    loss = (loss_cfg["ce_weight"] * torch.nn.functional.cross_entropy(logits, labels)
            + loss_cfg["kd_weight"] * LB.distill_kl(logits, t_logits, temp,
                                                    bool(loss_cfg["standardize"])))
    opt.zero_grad()
    loss.sum().backward()
    opt.step()
    losses.append(float(loss.detach().sum()))
    temperatures.append(float(temp.detach().sum()))
  return losses, temperatures


def _bn_momentum(model: torch.nn.Module, momentum) -> list:
  """Sets every BatchNorm's momentum; returns the old ones (in module order)."""
  bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
  old = [m.momentum for m in bns]
  for m, v in zip(bns, momentum if isinstance(momentum, list) else [momentum] * len(bns)):
    m.momentum = v
  return old


def train_mlkd(student: torch.nn.Module, teacher: torch.nn.Module, weak: torch.Tensor,
               strong: torch.Tensor, labels: torch.Tensor, config: Dict[str, Any],
               defect: str = "") -> List[float]:
  """Jin-Ying/Multi-Level-Logit-Distillation's AugTrainer + KD_ours.forward_train.

  Each step: student(weak), then student(strong), two train-mode passes (BatchNorm statistics
  move once per view), teacher(weak), teacher(strong) under no_grad in eval mode; the loss is
  the sum of the means of KD_ours' losses_dict. Returns the per-step losses.

  defect: "one_bn_update" runs the strong-view pass without moving the running statistics.
  """
  loss_cfg = config["loss"]
  assert tuple(loss_cfg["mlkd_temperatures"]) == (3.0, 5.0, 2.0, 6.0)
  opt = _sgd(list(student.parameters()), config)
  teacher.eval()
  losses = []
  for epoch in range(1, config["num_epochs"] + 1):
    _set_lr(opt, config, epoch)
    student.train()
    s_weak = student(weak)
    old = _bn_momentum(student, 0.0) if defect == "one_bn_update" else None
    s_strong = student(strong)
    if old is not None:
      _bn_momentum(student, old)
    with torch.no_grad():
      t_weak, t_strong = teacher(weak), teacher(strong)
    terms = LB.mlkd_losses(s_weak, s_strong, t_weak, t_strong, labels,
                           temperature=loss_cfg["temperature"], ce_weight=loss_cfg["ce_weight"],
                           kd_weight=loss_cfg["kd_weight"],
                           logit_stand=bool(loss_cfg["standardize"]))
    loss = sum(v.mean() for v in terms.values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(float(loss.detach()))
  return losses


def train_dist(student: torch.nn.Module, teacher: torch.nn.Module, images: torch.Tensor,
               labels: torch.Tensor, config: Dict[str, Any], defect: str = "") -> List[float]:
  """hunto/image_classification_sota's train_epoch with its KDLoss(kd='dist_tT') wrapper.

  Each step: teacher under no_grad (eval mode), then the student (train mode); loss =
  ori_loss_weight * CE + kd_loss_weight * DIST(beta, gamma, tau). Returns the per-step losses.

  defect: "intra_untransposed" computes the intra-class relation over each example's classes
  (the inter-class relation again) instead of over each class's examples.
  """
  loss_cfg = config["loss"]
  tau, beta, gamma = loss_cfg["temperature"], loss_cfg["dist_beta"], loss_cfg["dist_gamma"]
  opt = _sgd(list(student.parameters()), config)
  teacher.eval()
  losses = []
  for epoch in range(1, config["num_epochs"] + 1):
    _set_lr(opt, config, epoch)
    student.train()
    with torch.no_grad():
      t_logits = teacher(images)
    logits = student(images)
    if defect == "intra_untransposed":
      kd = (beta + gamma) * LB.dist_loss(logits, t_logits, 1.0, 0.0, tau)
    else:
      kd = LB.dist_loss(logits, t_logits, beta, gamma, tau)
    loss = (loss_cfg["ce_weight"] * torch.nn.functional.cross_entropy(logits, labels)
            + loss_cfg["kd_weight"] * kd)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(float(loss.detach()))
  return losses
