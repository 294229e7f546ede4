"""CIFAR ResNets of mdistiller/CRD (`resnet.py`): resnet8..110, resnet8x4 and resnet32x4.

Post-activation BasicBlocks in three stages, no max-pool, global average pool, `fc` head.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import layers, resnetv2

# Torch head module paths -> flax head names (used by the importer).
TORCH_RENAMES = {"fc": "head", "fc2": "aux_head"}


# mdistiller's post-activation block is resnetv2's, with the projection named `downsample`.
BasicBlock = functools.partial(resnetv2.BasicBlock, projection="downsample")


class CifarResNet(nn.Module):
  """CIFAR ResNet: 3x3 stem `conv1`/`bn1`, stages `layer{1,2,3}` of (depth-2)/6 blocks."""
  num_classes: int
  aux_head: Optional[str] = None
  dtype: Any = jnp.float32
  depth: int = 20
  widths: Sequence[int] = (16, 16, 32, 64)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if (self.depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2; got depth={self.depth}")
    n = (self.depth - 2) // 6
    x = x.astype(self.dtype)
    x = layers.conv(self.widths[0], 3, name="conv1", dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    for stage, (planes, stride) in enumerate(zip(self.widths[1:], (1, 2, 2)), start=1):
      for i in range(n):
        s = stride if i == 0 else 1
        x = BasicBlock(planes, s, dtype=self.dtype, name=f"layer{stage}_{i}")(x, train)
    h = layers.global_avg_pool(x)
    return layers.classifier_heads(h, self.num_classes, self.aux_head, train, self.dtype)


def _factory(name: str, depth: int, widths: Sequence[int]) -> Callable[..., CifarResNet]:
  def build(num_classes: int, aux_head: Optional[str] = None,
            dtype: Any = jnp.float32) -> CifarResNet:
    return CifarResNet(num_classes=num_classes, aux_head=aux_head, dtype=dtype, depth=depth,
                       widths=tuple(widths))
  build.__name__ = name
  build.__doc__ = f"CIFAR {name}: depth {depth}, widths {tuple(widths)}."
  return build


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

MODELS: Dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": _factory(f"resnet{d}", d, _NARROW) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _factory("resnet8x4", 8, _WIDE),
    "resnet32x4": _factory("resnet32x4", 32, _WIDE),
}

INPUT_SIZES: Dict[str, int] = {name: 32 for name in MODELS}
