"""PyTorch VGG, MobileNetV2 (mdistiller's mobile_half), MobileNetV1 and ShuffleNetV1/V2, with
the reference implementations' module names (mdistiller; DHKD for the auxiliary heads), so
`load_state_dict(strict=True)` accepts the authors' checkpoints and kd_jax's exports alike.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class NonLinearHead(nn.Module):
  """DHKD's nonlinear auxiliary head: `net` = Linear(d,200), Dropout, BN1d, ReLU, Linear(200,C)."""

  def __init__(self, dim: int, num_classes: int):
    super().__init__()
    self.net = nn.Sequential(nn.Linear(dim, 200), nn.Dropout(0.1), nn.BatchNorm1d(200),
                             nn.ReLU(), nn.Linear(200, num_classes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.net(x)


def make_aux(dim: int, num_classes: int, kind: Optional[str]) -> Optional[nn.Module]:
  """None, a Linear ('linear') or a NonLinearHead ('nonlinear')."""
  if kind is None:
    return None
  return nn.Linear(dim, num_classes) if kind == "linear" else NonLinearHead(dim, num_classes)


class _WithAux(nn.Module):
  """Adds the DHKD aux head under `aux_name` and returns (logits, aux) when it is present."""
  aux_name = "classifier2"

  def _set_aux(self, dim: int, num_classes: int, kind: Optional[str]) -> None:
    aux = make_aux(dim, num_classes, kind)
    if aux is not None:
      setattr(self, self.aux_name, aux)
    self._has_aux = aux is not None

  def _heads(self, main: nn.Module, h: torch.Tensor):
    logits = main(h)
    if self._has_aux:
      return logits, getattr(self, self.aux_name)(h)
    return logits


def conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> List[nn.Module]:
  return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias),
          nn.BatchNorm2d(cout), nn.ReLU()]


# ---------------------------------------------------------------- VGG
VGG_CFGS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class TorchVGG(_WithAux):
  """block{b} = Sequential(conv, bn, relu, ..., conv, bn) (last ReLU applied in forward)."""

  def __init__(self, depth: int, num_classes: int, aux: Optional[str] = None):
    super().__init__()
    cin = 3
    for b, widths in enumerate(VGG_CFGS[depth]):
      mods: List[nn.Module] = []
      for w in widths:
        mods += conv_bn_relu(cin, w, 3, bias=True)
        cin = w
      setattr(self, f"block{b}", nn.Sequential(*mods[:-1]))
    self.classifier = nn.Linear(512, num_classes)
    self._set_aux(512, num_classes, aux)

  def forward(self, x: torch.Tensor):
    height = x.shape[2]
    for b in range(5):
      if b in (1, 2, 3) or (b == 4 and height == 64):
        x = F.max_pool2d(x, 2, 2)
      x = F.relu(getattr(self, f"block{b}")(x))
    h = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return self._heads(self.classifier, h)


# ---------------------------------------------------------------- MobileNetV2 (mobile_half)
class TorchInvertedResidual(nn.Module):

  def __init__(self, cin: int, cout: int, stride: int, t: int):
    super().__init__()
    hid = cin * t
    self.use_res = stride == 1 and cin == cout
    self.conv = nn.Sequential(*conv_bn_relu(cin, hid, 1), *conv_bn_relu(hid, hid, 3, stride, hid),
                              nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + self.conv(x) if self.use_res else self.conv(x)


class TorchMobileNetV2(_WithAux):
  """mobile_half: T=6, width 0.5, head `classifier` = Sequential(Linear)."""

  def __init__(self, num_classes: int, aux: Optional[str] = None, t: int = 6,
               width: float = 0.5):
    super().__init__()
    settings = [(1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1),
                (t, 160, 3, 2), (t, 320, 1, 1)]
    cin = int(32 * width)
    self.conv1 = nn.Sequential(*conv_bn_relu(3, cin, 3, 2))
    self.blocks = nn.ModuleList()
    for e, c, n, s in settings:
      cout = int(c * width)
      stage = []
      for j in range(n):
        stage.append(TorchInvertedResidual(cin, cout, s if j == 0 else 1, e))
        cin = cout
      self.blocks.append(nn.Sequential(*stage))
    self.conv2 = nn.Sequential(*conv_bn_relu(cin, 1280, 1))
    self.avgpool = nn.AvgPool2d(2, ceil_mode=True)  # input_size // 16 at 32 px
    self.classifier = nn.Sequential(nn.Linear(1280, num_classes))
    self._set_aux(1280, num_classes, aux)

  def forward(self, x: torch.Tensor):
    x = self.conv1(x)
    for stage in self.blocks:
      x = stage(x)
    x = self.conv2(x)
    h = self.avgpool(x).flatten(1)
    return self._heads(self.classifier, h)


# ---------------------------------------------------------------- MobileNetV1 (ImageNet)
class TorchMobileNetV1(_WithAux):
  """`model` = Sequential(conv_bn, 13 x conv_dw, AvgPool2d(7)); head `fc`."""
  V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
               (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

  def __init__(self, num_classes: int = 1000, aux: Optional[str] = None):
    super().__init__()
    mods = [nn.Sequential(*conv_bn_relu(3, 32, 3, 2))]
    cin = 32
    for cout, s in self.V1_BLOCKS:
      mods.append(nn.Sequential(*conv_bn_relu(cin, cin, 3, s, cin), *conv_bn_relu(cin, cout, 1)))
      cin = cout
    mods.append(nn.AvgPool2d(7))
    self.model = nn.Sequential(*mods)
    self.fc = nn.Linear(1024, num_classes)
    self._set_aux(1024, num_classes, aux)

  def forward(self, x: torch.Tensor):
    return self._heads(self.fc, self.model(x).reshape(-1, 1024))


# ---------------------------------------------------------------- ShuffleNets
def shuffle_nchw(x: torch.Tensor, g: int) -> torch.Tensor:
  n, c, h, w = x.shape
  return x.reshape(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class TorchShuffleV1Block(nn.Module):

  def __init__(self, cin: int, cout: int, stride: int, groups: int):
    super().__init__()
    mid = cout // 4
    self.g1 = 1 if cin == 24 else groups
    self.stride = stride
    self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
    self.bn3 = nn.BatchNorm2d(cout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = shuffle_nchw(F.relu(self.bn1(self.conv1(x))), self.g1)
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.stride == 2:
      return F.relu(torch.cat([y, F.avg_pool2d(x, 3, 2, 1)], 1))
    return F.relu(y + x)


class TorchShuffleV1(_WithAux):
  aux_name = "linear2"

  def __init__(self, num_classes: int, aux: Optional[str] = None,
               out_planes: Sequence[int] = (240, 480, 960), blocks: Sequence[int] = (4, 8, 4),
               groups: int = 3):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    cin = 24
    for L, (w, n) in enumerate(zip(out_planes, blocks), start=1):
      stage = []
      for i in range(n):
        stage.append(TorchShuffleV1Block(cin, w - cin if i == 0 else w, 2 if i == 0 else 1,
                                         groups))
        cin = w
      setattr(self, f"layer{L}", nn.Sequential(*stage))
    self.linear = nn.Linear(out_planes[-1], num_classes)
    self._set_aux(out_planes[-1], num_classes, aux)

  def forward(self, x: torch.Tensor):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self._heads(self.linear, F.avg_pool2d(x, 4).flatten(1))


class TorchShuffleV2Down(nn.Module):

  def __init__(self, cin: int, cout: int):
    super().__init__()
    mid = cout // 2
    self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(mid)
    self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
    self.bn4 = nn.BatchNorm2d(mid)
    self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
    self.bn5 = nn.BatchNorm2d(mid)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    right = F.relu(self.bn3(self.conv3(x)))
    right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
    return shuffle_nchw(torch.cat([left, right], 1), 2)


class TorchShuffleV2Basic(nn.Module):

  def __init__(self, c: int):
    super().__init__()
    h = c // 2
    self.conv1 = nn.Conv2d(h, h, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(h)
    self.conv2 = nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False)
    self.bn2 = nn.BatchNorm2d(h)
    self.conv3 = nn.Conv2d(h, h, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(h)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    half = x.shape[1] // 2
    x1, x2 = x[:, :half], x[:, half:]
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
    y = F.relu(self.bn3(self.conv3(y)))
    return shuffle_nchw(torch.cat([x1, y], 1), 2)


class TorchShuffleV2(_WithAux):
  aux_name = "linear2"

  def __init__(self, num_classes: int, aux: Optional[str] = None,
               channels: Sequence[int] = (116, 232, 464, 1024), blocks: Sequence[int] = (3, 7, 3)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    cin = 24
    for L, (w, n) in enumerate(zip(channels[:3], blocks), start=1):
      stage = [TorchShuffleV2Down(cin, w)] + [TorchShuffleV2Basic(w) for _ in range(n)]
      setattr(self, f"layer{L}", nn.Sequential(*stage))
      cin = w
    self.conv2 = nn.Conv2d(channels[2], channels[3], 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels[3])
    self.linear = nn.Linear(channels[3], num_classes)
    self._set_aux(channels[3], num_classes, aux)

  def forward(self, x: torch.Tensor):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    return self._heads(self.linear, F.avg_pool2d(x, 4).flatten(1))


def build(name: str, num_classes: int, aux: Optional[str] = None) -> nn.Module:
  """The PyTorch model of kd_jax model name `name` (vgg*, MobileNetV1/V2, ShuffleV1/V2)."""
  if name.startswith("vgg"):
    return TorchVGG(int(name[3:]), num_classes, aux)
  classes = {"MobileNetV2": TorchMobileNetV2, "MobileNetV1": TorchMobileNetV1,
             "ShuffleV1": TorchShuffleV1, "ShuffleV2": TorchShuffleV2}
  return classes[name](num_classes, aux)
