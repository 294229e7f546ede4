"""CIFAR ResNet18 / ResNet50 of mdistiller/CRD (`resnetv2.py`): ImageNet widths, 3x3 stem.

Four stages (64..512 planes, strides 1/2/2/2), `shortcut_{0,1}` projections, `linear` head.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import layers

# Torch head module paths -> flax head names (used by the importer).
TORCH_RENAMES = {"linear": "head", "linear2": "aux_head"}


def _projection(x: jax.Array, out: int, stride: int, train: bool, dtype: Any,
                prefix: str) -> jax.Array:
  """The 1x1 conv + BN projection (`{prefix}_0`, `{prefix}_1`) in the calling block's scope."""
  x = layers.conv(out, 1, strides=stride, name=f"{prefix}_0", dtype=dtype)(x)
  return layers.batch_norm(train, name=f"{prefix}_1", dtype=dtype)(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN, ReLU after the add; projection when stride != 1 or widths differ.

  `projection` names the projection's modules: `shortcut` (mdistiller/CRD) or `downsample`
  (torchvision, used by the ImageNet ResNets).
  """
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  projection: str = "shortcut"
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = layers.conv(self.planes, 3, strides=self.stride, name="conv1", dtype=self.dtype)(x)
    y = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(y))
    y = layers.conv(self.planes, 3, name="conv2", dtype=self.dtype)(y)
    y = layers.batch_norm(train, name="bn2", dtype=self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = _projection(x, self.planes, self.stride, train, self.dtype, self.projection)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, torchvision V1.5) -> 1x1 (x4) with BN, ReLU after the add."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  projection: str = "shortcut"
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out = self.planes * self.expansion
    y = layers.conv(self.planes, 1, name="conv1", dtype=self.dtype)(x)
    y = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(y))
    y = layers.conv(self.planes, 3, strides=self.stride, name="conv2", dtype=self.dtype)(y)
    y = nn.relu(layers.batch_norm(train, name="bn2", dtype=self.dtype)(y))
    y = layers.conv(out, 1, name="conv3", dtype=self.dtype)(y)
    y = layers.batch_norm(train, name="bn3", dtype=self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != out:
      x = _projection(x, out, self.stride, train, self.dtype, self.projection)
    return nn.relu(y + x)


class ResNetV2(nn.Module):
  """ResNet with stages `layer{1..4}`; `block` is BasicBlock or Bottleneck.

  The CIFAR stem is a 3x3 conv; `imagenet_stem` gives torchvision's 7x7/2 conv and 3x3/2
  max-pool (kd_jax.models.imagenet_resnet).
  """
  num_classes: int
  aux_head: Optional[str] = None
  dtype: Any = jnp.float32
  block: Any = BasicBlock
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  imagenet_stem: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    x = x.astype(self.dtype)
    if self.imagenet_stem:
      x = layers.conv(64, 7, strides=2, name="conv1", dtype=self.dtype)(x)
    else:
      x = layers.conv(64, 3, name="conv1", dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    if self.imagenet_stem:
      # PyTorch pads the max-pool with -inf, as does flax with explicit padding.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (n, planes, stride) in enumerate(
        zip(self.stage_sizes, (64, 128, 256, 512), (1, 2, 2, 2)), start=1):
      for i in range(n):
        x = self.block(planes, stride if i == 0 else 1, dtype=self.dtype,
                       name=f"layer{stage}_{i}")(x, train)
    h = layers.global_avg_pool(x)
    return layers.classifier_heads(h, self.num_classes, self.aux_head, train, self.dtype)


def ResNet18(num_classes: int, aux_head: Optional[str] = None,  # pylint: disable=invalid-name
             dtype: Any = jnp.float32) -> ResNetV2:
  """CIFAR ResNet18: BasicBlock x [2, 2, 2, 2]."""
  return ResNetV2(num_classes=num_classes, aux_head=aux_head, dtype=dtype, block=BasicBlock,
                  stage_sizes=(2, 2, 2, 2))


def ResNet50(num_classes: int, aux_head: Optional[str] = None,  # pylint: disable=invalid-name
             dtype: Any = jnp.float32) -> ResNetV2:
  """CIFAR ResNet50: Bottleneck x [3, 4, 6, 3]."""
  return ResNetV2(num_classes=num_classes, aux_head=aux_head, dtype=dtype, block=Bottleneck,
                  stage_sizes=(3, 4, 6, 3))


MODELS: Dict[str, Callable[..., nn.Module]] = {"ResNet18": ResNet18, "ResNet50": ResNet50}

INPUT_SIZES: Dict[str, int] = {name: 32 for name in MODELS}
