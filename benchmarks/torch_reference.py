"""PyTorch reference of one training step (KD mdistiller style; CTKD, MLKD, DIST as their authors'
code computes them), eager or torch.compile'd.

Prints one JSON line with the same keys as benchmarks/train_step.py; torch is a dev dependency.
`--compile` wraps the whole step (teacher forward, student forward, loss, backward, SGD update)
in one `torch.compile`; `--channels-last` stores the models and batches in NHWC memory format,
what a PyTorch user tuning for speed does. `impl` names the mode: torch_eager or torch_compile.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------
# Models: compact transcriptions of the mdistiller/CRD CIFAR ResNets and Wide ResNets.


class _ResBlock(nn.Module):
  """Post-activation basic block: conv-BN-ReLU-conv-BN (+ projection shortcut), ReLU."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return F.relu(y + shortcut)


class CifarResNet(nn.Module):
  """resnet{8..110} (widths 16-16-32-64) and resnet8x4/32x4 (widths 32-64-128-256)."""

  def __init__(self, depth: int, widths: Sequence[int], num_classes: int):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    blocks, cin = [], widths[0]
    for cout, stride in zip(widths[1:], (1, 2, 2)):
      for i in range(n):
        blocks.append(_ResBlock(cin, cout, stride if i == 0 else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(cin, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.blocks(F.relu(self.bn1(self.conv1(x))))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _WideBlock(nn.Module):
  """Pre-activation WRN block (dropout 0); the 1x1 shortcut sees relu(bn1(x)) when widths differ."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    act = F.relu(self.bn1(x))
    y = self.conv2(F.relu(self.bn2(self.conv1(act))))
    return y + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
  """WRN-depth-k for 32x32 inputs: stem conv, three stages, final BN-ReLU, pool, fc."""

  def __init__(self, depth: int, k: int, num_classes: int):
    super().__init__()
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    blocks, cin = [], 16
    for cout, stride in zip((16 * k, 32 * k, 64 * k), (1, 2, 2)):
      for i in range(n):
        blocks.append(_WideBlock(cin, cout, stride if i == 0 else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.bn1 = nn.BatchNorm2d(cin)
    self.fc = nn.Linear(cin, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(self.fc.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn1(self.blocks(self.conv1(x))))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


_NARROW, _WIDE = (16, 16, 32, 64), (32, 64, 128, 256)
MODELS: dict[str, Callable[[int], nn.Module]] = {
    **{f"resnet{d}": (lambda c, d=d: CifarResNet(d, _NARROW, c))
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": lambda c: CifarResNet(8, _WIDE, c),
    "resnet32x4": lambda c: CifarResNet(32, _WIDE, c),
    **{f"wrn_{d}_{k}": (lambda c, d=d, k=k: WideResNet(d, k, c))
       for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
}

# --------------------------------------------------------------------------------------
# The step.


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, ce_weight: float = 0.1,
            kd_weight: float = 0.9) -> torch.Tensor:
  """ce_weight * CE + kd_weight * T^2 * KL(p_t^T || p_s^T), KL summed over classes, batch mean."""
  log_p_s = F.log_softmax(student_logits / temperature, dim=1)
  p_t = F.softmax(teacher_logits / temperature, dim=1)
  kl = F.kl_div(log_p_s, p_t, reduction="none").sum(1).mean()
  return ce_weight * F.cross_entropy(student_logits, labels) + kd_weight * temperature ** 2 * kl


def _authors():
  """tests/torch_losses_b.py: the PyTorch transcriptions of CTKD, MLKD and DIST written the way
  their authors' code computes them, which the trajectory tests prove equal to kd_jax's steps;
  the benchmark times those same functions."""
  tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
  if tests not in sys.path:
    sys.path.insert(0, tests)
  import torch_losses_b  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return torch_losses_b


# Views per method: MLKD's step sees a weak and a strong view of each image (both prepared
# beforehand here, as the authors' DataLoader workers do), the others one.
NUM_VIEWS = {"kd": 1, "ctkd": 1, "mlkd": 2, "dist": 1}


class MethodLoss(nn.Module):
  """The loss of one step, the authors' way, at kd_jax's CIFAR defaults of each method.

  kd: `kd_loss`. ctkd: 0.1 CE + 0.9 DistillKL(tau), tau = 1 + 20 sigmoid(GRL(raw)) with the
  global temperature `raw` a parameter of this module (trained by the student's SGD) and the
  reversal at epoch 1 of the cosine curriculum. dist: CE + 2 DIST(beta=1, gamma=1, tau=4).
  mlkd: the sum of the means of KD_ours' losses over the two views (T = 4 and the four extra
  temperatures, CE weight 0.1, KD weight 0.9; the confidence masks from numpy percentiles).
  """

  def __init__(self, method: str):
    super().__init__()
    self.method = method
    self.lib = _authors() if method != "kd" else None
    self.raw = nn.Parameter(torch.ones(1)) if method == "ctkd" else None

  def forward(self, student: nn.Module, teacher: nn.Module, views: Sequence[torch.Tensor],
              labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
      teacher_logits = [teacher(v).float() for v in views]
    if self.method == "mlkd":  # student(weak), then student(strong): BN moves once per view
      s_weak, s_strong = (student(v).float() for v in views)
      terms = self.lib.mlkd_losses(s_weak, s_strong, *teacher_logits, labels)
      return sum(v.mean() for v in terms.values())
    logits, t_logits = student(views[0]).float(), teacher_logits[0]
    if self.method == "kd":
      return kd_loss(logits, t_logits, labels)
    if self.method == "ctkd":
      tau = self.lib.global_temperature(self.raw, self.lib.cosine_decay_value(1))
      return (0.1 * F.cross_entropy(logits, labels)
              + 0.9 * self.lib.distill_kl(logits, t_logits, tau)).sum()
    return F.cross_entropy(logits, labels) + 2.0 * self.lib.dist_loss(logits, t_logits,
                                                                       1.0, 1.0, 4.0)


def make_step(teacher: nn.Module, student: nn.Module, optimizer: torch.optim.Optimizer,
              autocast_dtype: torch.dtype | None = None, loss: MethodLoss | None = None,
              ) -> Callable[[Sequence[torch.Tensor], torch.Tensor], torch.Tensor]:
  """One step: frozen teacher forward under no_grad, student forward/backward, SGD.

  `views`: the step's image batches (one per view of the method). With `autocast_dtype`
  (bfloat16) the forward passes and the loss run under torch.autocast, the mixed precision a
  PyTorch user reaches for; parameters and the update stay float32.
  """
  loss_fn = loss or MethodLoss("kd")

  def step(views: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    with torch.autocast(views[0].device.type, dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None):
      value = loss_fn(student, teacher, views, labels)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return value
  return step


def _sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
  if device.type == "cuda":
    return f"cuda:{torch.cuda.get_device_name(device)}"
  return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--teacher", default="resnet32x4", choices=sorted(MODELS))
  p.add_argument("--student", default="resnet8x4", choices=sorted(MODELS))
  p.add_argument("--method", default="kd", choices=sorted(NUM_VIEWS),
                 help="the loss, written as its authors compute it (MethodLoss)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first one")
  p.add_argument("--repeats", type=int, default=1,
                 help="timed windows of --steps steps; the median is reported")
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="bfloat16: forward passes under torch.autocast (float32 parameters)")
  p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda'")
  p.add_argument("--num-classes", type=int, default=100)
  p.add_argument("--num-batches", type=int, default=4,
                 help="distinct synthetic device-resident batches cycled through")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--compile", action="store_true",
                 help="torch.compile the whole step (first call = compilation, in compile_s)")
  p.add_argument("--compile-mode", default="default",
                 choices=["default", "reduce-overhead", "max-autotune"],
                 help="torch.compile mode with --compile")
  p.add_argument("--compile-backend", default="inductor",
                 help="torch.compile backend with --compile ('eager' traces without code "
                      "generation: a fast check of the compiled path, not a speed figure)")
  p.add_argument("--channels-last", action="store_true",
                 help="models and batches in channels-last (NHWC) memory format")
  return p.parse_args(argv)


@dataclasses.dataclass
class Setup:
  """The timed step and what it closes over."""
  step: Callable[[Sequence[torch.Tensor], torch.Tensor], torch.Tensor]
  student: nn.Module
  teacher: nn.Module
  loss: MethodLoss
  batches: list
  device: torch.device


def build(args: argparse.Namespace) -> Setup:
  """Seeded models, SGD, the (compiled) step and --num-batches synthetic device batches."""
  torch.manual_seed(args.seed)
  device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                        else ("cpu" if args.device == "auto" else args.device))
  teacher = MODELS[args.teacher](args.num_classes).to(device).eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  student = MODELS[args.student](args.num_classes).to(device).train()
  memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
  teacher = teacher.to(memory_format=memory_format)
  student = student.to(memory_format=memory_format)
  loss = MethodLoss(args.method).to(device)
  # CTKD's temperature is in the student's optimizer, as its authors train it.
  optimizer = torch.optim.SGD([*student.parameters(), *loss.parameters()], lr=0.05,
                              momentum=0.9, weight_decay=5e-4)
  step = make_step(teacher, student, optimizer,
                   torch.bfloat16 if args.dtype == "bfloat16" else None, loss)
  if args.compile:
    step = torch.compile(step, backend=args.compile_backend,
                         mode=None if args.compile_mode == "default" else args.compile_mode)
  # Synthetic, already normalized batches resident on the device (no loader, no augmentation).
  gen = torch.Generator().manual_seed(args.seed)
  batches = [([torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(
                   device, memory_format=memory_format) for _ in range(NUM_VIEWS[args.method])],
              torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(device))
             for _ in range(args.num_batches)]
  return Setup(step, student, teacher, loss, batches, device)


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  for name in ("batch_size", "steps", "repeats", "num_batches"):
    if getattr(args, name) < 1:
      sys.exit(f"--{name.replace('_', '-')} must be >= 1")
  if args.threads:
    torch.set_num_threads(args.threads)
  setup = build(args)
  step, batches, device = setup.step, setup.batches, setup.device

  # "compile_s" is the first step: compilation with --compile, else allocations and kernel
  # selection.
  t0 = time.perf_counter()
  loss = step(*batches[0])
  _sync(device)
  first_s = time.perf_counter() - t0
  for i in range(args.warmup):
    loss = step(*batches[(i + 1) % args.num_batches])
  _sync(device)

  windows = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    for i in range(args.steps):
      loss = step(*batches[i % args.num_batches])
    _sync(device)
    windows.append(time.perf_counter() - t0)
  seconds = statistics.median(windows)
  result = {
      "impl": "torch_compile" if args.compile else "torch_eager",
      "channels_last": bool(args.channels_last),
      "compile_mode": args.compile_mode if args.compile else None,
      "compile_backend": args.compile_backend if args.compile else None,
      "method": args.method, "teacher": args.teacher, "student": args.student,
      "batch_size": args.batch_size, "dtype": args.dtype, "steps": args.steps,
      "repeats": args.repeats, "steps_per_dispatch": 1,
      "images_per_sec": args.batch_size * args.steps / seconds,
      "step_ms": 1000.0 * seconds / args.steps,
      "step_ms_runs": [1000.0 * w / args.steps for w in windows],
      "compile_s": first_s,
      "final_loss": float(loss.detach().cpu()),
      "device": _device_name(device),
      "threads": torch.get_num_threads(),
      "torch": torch.__version__,
  }
  if not math.isfinite(result["final_loss"]):
    print(f"warning: non-finite loss {result['final_loss']}", file=sys.stderr)
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
