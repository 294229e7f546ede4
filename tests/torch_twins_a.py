"""The part-A PyTorch models (kd_jax.torch_models: CIFAR ResNet, ResNet18/50, WRN, torchvision
ImageNet ResNet, DHKD heads) and the tests' randomisation of their weights and BN statistics."""
from __future__ import annotations

import torch
from torch import nn

from kd_jax.torch_models import build  # pylint: disable=unused-import


@torch.no_grad()
def randomize_(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
  """Gives every BN non-trivial affine params and running stats; returns the model in eval mode.

  Running stats are first set to one train-mode pass's batch statistics (keeps activations
  O(1) through deep nets), then perturbed randomly, so they are far from the 0/1 defaults.
  """
  g = torch.Generator().manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
  for bn in bns:
    bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(bn.bias.shape, generator=g) * 0.2)
    bn.momentum = 1.0
  for m in model.modules():
    if isinstance(m, nn.Linear):
      m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
  model.train()
  model(images)
  for bn in bns:
    bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=g) * 0.1)
    bn.running_var.mul_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
    bn.momentum = 0.1
  return model.eval()
