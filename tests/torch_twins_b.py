"""The part-B PyTorch models (kd_jax.torch_models: VGG, MobileNets, ShuffleNets, DHKD heads) and
the tests' randomisation of their weights and BN statistics."""
from __future__ import annotations

import torch
from torch import nn

from kd_jax.torch_models import build  # pylint: disable=unused-import


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights of a sane scale and non-trivial BN statistics (in place)."""
  gen = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      fan_in = m.weight[0].numel()
      m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
      if m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
      c = m.num_features
      m.weight.copy_(torch.rand(c, generator=gen) * 0.8 + 0.6)
      m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
      m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
      m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
      m.num_batches_tracked.fill_(7)
  return model
