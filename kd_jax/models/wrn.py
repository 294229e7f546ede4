"""Wide ResNets of mdistiller/CRD (`wrn.py`): wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation blocks `block{1,2,3}.layer.{i}`, final `bn1`+ReLU, global pool, `fc` head.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import layers

# Torch head module paths -> flax head names (used by the importer).
TORCH_RENAMES = {"fc": "head", "fc2": "aux_head"}


class BasicBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3 (dropRate 0), no activation after the add.

  When the widths differ, relu(bn1(x)) replaces x and feeds both the branch and the
  1x1 `convShortcut`; otherwise the raw x is the shortcut.
  """
  out_planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    equal_in_out = x.shape[-1] == self.out_planes
    act = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    y = layers.conv(self.out_planes, 3, strides=self.stride, name="conv1", dtype=self.dtype)(act)
    y = nn.relu(layers.batch_norm(train, name="bn2", dtype=self.dtype)(y))
    y = layers.conv(self.out_planes, 3, name="conv2", dtype=self.dtype)(y)
    if equal_in_out:
      shortcut = x
    else:
      shortcut = layers.conv(self.out_planes, 1, strides=self.stride, name="convShortcut",
                             dtype=self.dtype)(act)
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-depth-k for 32 px: stem `conv1`, `block{1,2,3}` of (depth-4)/6 blocks, `bn1`, `fc`."""
  num_classes: int
  aux_head: Optional[str] = None
  dtype: Any = jnp.float32
  depth: int = 16
  widen_factor: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if (self.depth - 4) % 6:
      raise ValueError(f"WRN depth must be 6n+4; got depth={self.depth}")
    n = (self.depth - 4) // 6
    k = self.widen_factor
    x = x.astype(self.dtype)
    x = layers.conv(16, 3, name="conv1", dtype=self.dtype)(x)
    for b, (planes, stride) in enumerate(zip((16 * k, 32 * k, 64 * k), (1, 2, 2)), start=1):
      for i in range(n):
        x = BasicBlock(planes, stride if i == 0 else 1, dtype=self.dtype,
                       name=f"block{b}_layer_{i}")(x, train)
    x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    h = layers.global_avg_pool(x)
    # The reference zeroes every Linear bias, the DHKD aux head's too (weights keep
    # PyTorch's default).
    return layers.classifier_heads(h, self.num_classes, self.aux_head, train, self.dtype,
                                   bias_init=nn.initializers.zeros,
                                   aux_bias_init=nn.initializers.zeros)


def _factory(depth: int, k: int) -> Callable[..., WideResNet]:
  def build(num_classes: int, aux_head: Optional[str] = None,
            dtype: Any = jnp.float32) -> WideResNet:
    return WideResNet(num_classes=num_classes, aux_head=aux_head, dtype=dtype, depth=depth,
                      widen_factor=k)
  build.__name__ = f"wrn_{depth}_{k}"
  build.__doc__ = f"CIFAR WRN-{depth}-{k}."
  return build


MODELS: Dict[str, Callable[..., nn.Module]] = {
    f"wrn_{d}_{k}": _factory(d, k) for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))}

INPUT_SIZES: Dict[str, int] = {name: 32 for name in MODELS}
