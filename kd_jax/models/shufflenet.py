"""CIFAR ShuffleNets (mdistiller `ShuffleV1`, `ShuffleV2`), NHWC with PyTorch init.

Channel shuffle, split and concatenation orders match the NCHW reference exactly.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers

# PyTorch head module paths -> flax head names (used by the importer).
TORCH_RENAMES = {"linear": "head", "linear2": "aux_head"}

# ShuffleNets keep PyTorch's default conv init, U(+-1/sqrt(fan_in)).
_conv = functools.partial(layers.conv, kernel_init=layers.torch_default_kernel)


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
  """NHWC twin of NCHW reshape(N, g, C/g, H, W).permute(0, 2, 1, 3, 4)."""
  n, h, w, c = x.shape
  return x.reshape(n, h, w, groups, c // groups).swapaxes(-1, -2).reshape(n, h, w, c)


class ShuffleV1Bottleneck(nn.Module):
  """1x1 group conv -> shuffle -> dw 3x3 (+ReLU) -> 1x1 group conv; concat or add shortcut."""
  in_features: int
  out_features: int
  stride: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    mid = self.out_features // 4
    g1 = 1 if self.in_features == 24 else self.groups
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    y = _conv(mid, 1, groups=g1, name="conv1", dtype=self.dtype)(x)
    y = nn.relu(bn(name="bn1")(y))
    y = channel_shuffle(y, g1)
    y = _conv(mid, 3, strides=self.stride, groups=mid, name="conv2", dtype=self.dtype)(y)
    y = nn.relu(bn(name="bn2")(y))
    y = _conv(self.out_features, 1, groups=self.groups, name="conv3", dtype=self.dtype)(y)
    y = bn(name="bn3")(y)
    if self.stride == 2:
      # AvgPool2d(3, 2, padding=1), count_include_pad=True: always divides by 9.
      pooled = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                           count_include_pad=True)
      return nn.relu(jnp.concatenate([y, pooled], axis=-1))
    return nn.relu(y + x)


class ShuffleNetV1(nn.Module):
  """ShuffleNetV1 for CIFAR: 1x1 stem, stages `layer{1,2,3}`, 4x4 average pool, `head`."""
  num_classes: int
  aux_head: Optional[str] = None
  dtype: Any = jnp.float32
  out_planes: Tuple[int, ...] = (240, 480, 960)
  num_blocks: Tuple[int, ...] = (4, 8, 4)
  groups: int = 3

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False):
    x = x.astype(self.dtype)
    x = _conv(24, 1, name="conv1", dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    channels = 24
    for stage, (width, n) in enumerate(zip(self.out_planes, self.num_blocks), start=1):
      for i in range(n):
        # The first block's branch only makes up what the pooled shortcut does not carry.
        out = width - channels if i == 0 else width
        x = ShuffleV1Bottleneck(channels, out, 2 if i == 0 else 1, self.groups,
                                dtype=self.dtype, name=f"layer{stage}_{i}")(x, train)
        channels = width
    h = jnp.mean(x, axis=(1, 2))
    return layers.classifier_heads(h, self.num_classes, self.aux_head, train, self.dtype)


class ShuffleV2DownBlock(nn.Module):
  """Stride-2 block: left dw->pw and right pw->dw->pw branches, concat [left, right], shuffle."""
  in_features: int
  out_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    mid = self.out_features // 2
    c_in = self.in_features
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    left = _conv(c_in, 3, strides=2, groups=c_in, name="conv1", dtype=self.dtype)(x)
    left = bn(name="bn1")(left)
    left = nn.relu(bn(name="bn2")(_conv(mid, 1, name="conv2", dtype=self.dtype)(left)))
    right = nn.relu(bn(name="bn3")(_conv(mid, 1, name="conv3", dtype=self.dtype)(x)))
    right = _conv(mid, 3, strides=2, groups=mid, name="conv4", dtype=self.dtype)(right)
    right = bn(name="bn4")(right)
    right = nn.relu(bn(name="bn5")(_conv(mid, 1, name="conv5", dtype=self.dtype)(right)))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleV2BasicBlock(nn.Module):
  """Split [x1, x2]; x2 -> pw -> dw -> pw; concat [x1, branch], shuffle with 2 groups."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    half = self.features // 2
    x1, x2 = x[..., :half], x[..., half:]
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    y = nn.relu(bn(name="bn1")(_conv(half, 1, name="conv1", dtype=self.dtype)(x2)))
    y = bn(name="bn2")(_conv(half, 3, groups=half, name="conv2", dtype=self.dtype)(y))
    y = nn.relu(bn(name="bn3")(_conv(half, 1, name="conv3", dtype=self.dtype)(y)))
    return channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """ShuffleNetV2 (net_size 1) for CIFAR: `layer{L}_0` DownBlock then BasicBlocks, 1x1 conv2."""
  num_classes: int
  aux_head: Optional[str] = None
  dtype: Any = jnp.float32
  out_channels: Tuple[int, ...] = (116, 232, 464, 1024)
  num_blocks: Tuple[int, ...] = (3, 7, 3)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False):
    x = x.astype(self.dtype)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    x = nn.relu(bn(name="bn1")(_conv(24, 1, name="conv1", dtype=self.dtype)(x)))
    channels = 24
    for stage, (width, n) in enumerate(zip(self.out_channels[:3], self.num_blocks), start=1):
      x = ShuffleV2DownBlock(channels, width, dtype=self.dtype,
                             name=f"layer{stage}_0")(x, train)
      for i in range(1, n + 1):
        x = ShuffleV2BasicBlock(width, dtype=self.dtype, name=f"layer{stage}_{i}")(x, train)
      channels = width
    x = _conv(self.out_channels[3], 1, name="conv2", dtype=self.dtype)(x)
    x = nn.relu(bn(name="bn2")(x))
    h = jnp.mean(x, axis=(1, 2))
    return layers.classifier_heads(h, self.num_classes, self.aux_head, train, self.dtype)


def shuffle_v1(num_classes: int, aux_head: Optional[str] = None,
               dtype: Any = jnp.float32) -> ShuffleNetV1:
  """mdistiller `ShuffleV1`: out planes (240, 480, 960), blocks (4, 8, 4), 3 groups."""
  return ShuffleNetV1(num_classes=num_classes, aux_head=aux_head, dtype=dtype)


def shuffle_v2(num_classes: int, aux_head: Optional[str] = None,
               dtype: Any = jnp.float32) -> ShuffleNetV2:
  """mdistiller `ShuffleV2`: net_size 1, channels (116, 232, 464, 1024), blocks (3, 7, 3)."""
  return ShuffleNetV2(num_classes=num_classes, aux_head=aux_head, dtype=dtype)


MODELS: Dict[str, Callable[..., nn.Module]] = {
    "ShuffleV1": shuffle_v1,
    "ShuffleV2": shuffle_v2,
}

# Input height/width each model expects.
INPUT_SIZES: Dict[str, int] = {name: 32 for name in MODELS}
