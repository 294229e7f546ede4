"""PyTorch CIFAR ResNets (resnet8..resnet110, resnet8x4, resnet32x4), ResNet18/50, WRNs and the
torchvision-layout ImageNet ResNets, with the reference implementations' module names.

Attribute names follow mdistiller/CRD (CIFAR models), torchvision (ImageNet ResNets) and DHKD
for the auxiliary heads (`fc2`/`linear2`: a Linear, or `net` = Linear-Dropout-BN1d-ReLU-Linear),
so `load_state_dict(strict=True)` accepts the authors' checkpoints and kd_jax's exports alike.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F


class NonlinearAux(nn.Module):
  """DHKD's nonlinear head: `net` = Linear(d, 200), Dropout, BatchNorm1d, ReLU, Linear(200, C)."""

  def __init__(self, d: int, num_classes: int):
    super().__init__()
    self.net = nn.Sequential(nn.Linear(d, 200), nn.Dropout(0.1), nn.BatchNorm1d(200), nn.ReLU(),
                             nn.Linear(200, num_classes))

  def forward(self, h):
    return self.net(h)


def aux_module(aux_head: Optional[str], d: int, num_classes: int) -> Optional[nn.Module]:
  """DHKD's auxiliary classifier on the pooled feature, or None."""
  if aux_head is None:
    return None
  if aux_head == "linear":
    return nn.Linear(d, num_classes)
  return NonlinearAux(d, num_classes)


def _heads(model: nn.Module, main: str, aux: str, h: torch.Tensor):
  logits = getattr(model, main)(h)
  if getattr(model, aux, None) is None:
    return logits
  return logits, getattr(model, aux)(h)


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _proj(cin: int, cout: int, stride: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


# ---------------------------------------------------------------- CIFAR ResNet (resnet.py)
class CifarBasic(nn.Module):
  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = _conv3(cin, planes, stride), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = _conv3(planes, planes), nn.BatchNorm2d(planes)
    self.downsample = _proj(cin, planes, stride) if stride != 1 or cin != planes else None

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
  def __init__(self, depth: int, widths: Sequence[int], num_classes: int,
               aux_head: Optional[str] = None):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1, self.bn1 = _conv3(3, widths[0]), nn.BatchNorm2d(widths[0])
    cin = widths[0]
    for stage, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
      blocks = []
      for i in range(n):
        blocks.append(CifarBasic(cin, planes, stride if i == 0 else 1))
        cin = planes
      setattr(self, f"layer{stage}", nn.Sequential(*blocks))
    self.avgpool = nn.AvgPool2d(8)
    self.fc = nn.Linear(cin, num_classes)
    self.fc2 = aux_module(aux_head, cin, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return _heads(self, "fc", "fc2", self.avgpool(x).flatten(1))


def cifar_resnet(name: str, num_classes: int, aux_head: Optional[str] = None) -> CifarResNet:
  if name.endswith("x4"):
    return CifarResNet(int(name[6:-2]), (32, 64, 128, 256), num_classes, aux_head)
  return CifarResNet(int(name[6:]), (16, 16, 32, 64), num_classes, aux_head)


# ---------------------------------------------------------------- CIFAR ResNet18/50 (resnetv2.py)
class V2Basic(nn.Module):
  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = _conv3(cin, planes, stride), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = _conv3(planes, planes), nn.BatchNorm2d(planes)
    self.shortcut = _proj(cin, planes, stride) if stride != 1 or cin != planes else nn.Sequential()

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + self.shortcut(x))


class V2Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    out = 4 * planes
    self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = _conv3(planes, planes, stride), nn.BatchNorm2d(planes)
    self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
    self.shortcut = _proj(cin, out, stride) if stride != 1 or cin != out else nn.Sequential()

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


class ResNetV2(nn.Module):
  def __init__(self, block, sizes: Sequence[int], num_classes: int,
               aux_head: Optional[str] = None):
    super().__init__()
    self.conv1, self.bn1 = _conv3(3, 64), nn.BatchNorm2d(64)
    cin = 64
    for stage, (n, planes, stride) in enumerate(zip(sizes, (64, 128, 256, 512), (1, 2, 2, 2)),
                                                start=1):
      blocks = []
      for i in range(n):
        blocks.append(block(cin, planes, stride if i == 0 else 1))
        cin = planes * block.expansion
      setattr(self, f"layer{stage}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.linear = nn.Linear(cin, num_classes)
    self.linear2 = aux_module(aux_head, cin, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return _heads(self, "linear", "linear2", self.avgpool(x).flatten(1))


def resnetv2(name: str, num_classes: int, aux_head: Optional[str] = None) -> ResNetV2:
  if name == "ResNet18":
    return ResNetV2(V2Basic, (2, 2, 2, 2), num_classes, aux_head)
  return ResNetV2(V2Bottleneck, (3, 4, 6, 3), num_classes, aux_head)


# ---------------------------------------------------------------- Wide ResNet (wrn.py)
class WrnBlock(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3(cin, cout, stride)
    self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3(cout, cout)
    self.equal = cin == cout
    self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

  def forward(self, x):
    if self.equal:
      out = F.relu(self.bn1(x))
    else:
      x = F.relu(self.bn1(x))
      out = x
    out = self.conv2(F.relu(self.bn2(self.conv1(out))))
    return (x if self.equal else self.convShortcut(x)) + out


class WrnStage(nn.Module):
  def __init__(self, n: int, cin: int, cout: int, stride: int):
    super().__init__()
    self.layer = nn.Sequential(*[WrnBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                 for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  def __init__(self, depth: int, k: int, num_classes: int, aux_head: Optional[str] = None):
    super().__init__()
    n = (depth - 4) // 6
    ch = (16, 16 * k, 32 * k, 64 * k)
    self.conv1 = _conv3(3, 16)
    self.block1 = WrnStage(n, ch[0], ch[1], 1)
    self.block2 = WrnStage(n, ch[1], ch[2], 2)
    self.block3 = WrnStage(n, ch[2], ch[3], 2)
    self.bn1 = nn.BatchNorm2d(ch[3])
    self.fc = nn.Linear(ch[3], num_classes)
    self.fc2 = aux_module(aux_head, ch[3], num_classes)

  def forward(self, x):
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    x = F.relu(self.bn1(x))
    return _heads(self, "fc", "fc2", F.avg_pool2d(x, 8).flatten(1))


def wrn(name: str, num_classes: int, aux_head: Optional[str] = None) -> WideResNet:
  _, depth, k = name.split("_")
  return WideResNet(int(depth), int(k), num_classes, aux_head)


# ---------------------------------------------------------------- torchvision ResNet
class TvBasic(nn.Module):
  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = _conv3(cin, planes, stride), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = _conv3(planes, planes), nn.BatchNorm2d(planes)
    self.downsample = _proj(cin, planes, stride) if stride != 1 or cin != planes else None

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TvBottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    out = 4 * planes
    self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = _conv3(planes, planes, stride), nn.BatchNorm2d(planes)
    self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
    self.downsample = _proj(cin, out, stride) if stride != 1 or cin != out else None

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TvResNet(nn.Module):
  def __init__(self, block, sizes: Sequence[int], num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for stage, (n, planes, stride) in enumerate(zip(sizes, (64, 128, 256, 512), (1, 2, 2, 2)),
                                                start=1):
      blocks = []
      for i in range(n):
        blocks.append(block(cin, planes, stride if i == 0 else 1))
        cin = planes * block.expansion
      setattr(self, f"layer{stage}", nn.Sequential(*blocks))
    self.avgpool = nn.AvgPool2d(7, stride=1)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(self.avgpool(x).flatten(1))


def imagenet_resnet(name: str, num_classes: int = 1000) -> TvResNet:
  block, stages = {"imagenet_resnet18": (TvBasic, (2, 2, 2, 2)),
                   "imagenet_resnet34": (TvBasic, (3, 4, 6, 3)),
                   "imagenet_resnet50": (TvBottleneck, (3, 4, 6, 3))}[name]
  return TvResNet(block, stages, num_classes)


def build(name: str, num_classes: int, aux_head: Optional[str] = None) -> nn.Module:
  """The PyTorch model of kd_jax model name `name` (resnet*, ResNet18/50, wrn_*, imagenet_*)."""
  if name.startswith("imagenet_"):
    if aux_head is not None:
      raise ValueError(f"{name} has no auxiliary head; got aux_head={aux_head!r}")
    return imagenet_resnet(name, num_classes)
  if name.startswith("resnet"):
    return cifar_resnet(name, num_classes, aux_head)
  if name.startswith("ResNet"):
    return resnetv2(name, num_classes, aux_head)
  if name.startswith("wrn_"):
    return wrn(name, num_classes, aux_head)
  raise ValueError(f"no PyTorch model {name!r} in this module")
