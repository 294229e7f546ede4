"""MobileNets: CIFAR MobileNetV2 (mdistiller `mobile_half`) and ImageNet MobileNetV1.

Both use ReLU (not ReLU6) and bias-free convs with explicit PyTorch padding.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers

# PyTorch head module paths -> flax head names, per model (used by the importer).
TORCH_RENAMES = {
    "MobileNetV2": {"classifier.0": "head", "classifier2": "aux_head"},
    # mdistiller names the head `fc`, DHKD `classifier`.
    "MobileNetV1": {"fc": "head", "classifier": "head", "classifier2": "aux_head"},
}

# Input height/width each model expects.
INPUT_SIZES = {"MobileNetV2": 32, "MobileNetV1": 224}

# Inverted-residual settings (expansion t or None for the model's T, channels c, repeats n,
# stride s) of MobileNetV2; t=None means "use the model's expansion T".
_V2_SETTINGS: Tuple[Tuple[Optional[int], int, int, int], ...] = (
    (1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
    (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))

# (out channels, stride) of MobileNetV1's depthwise-separable blocks model.1 .. model.13.
_V1_BLOCKS: Tuple[Tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

# Linear init of the MobileNetV2 reference: N(0, 0.01) weights, zero bias.
_LINEAR_INIT = nn.initializers.normal(0.01)


class InvertedResidual(nn.Module):
  """pw-expand 1x1 (`conv_0`, even for t=1) -> dw 3x3 (`conv_3`) -> pw-linear 1x1 (`conv_6`)."""
  in_features: int
  out_features: int
  stride: int
  expand: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    hidden = self.in_features * self.expand
    y = layers.conv(hidden, 1, name="conv_0", dtype=self.dtype)(x)
    y = nn.relu(layers.batch_norm(train, name="conv_1", dtype=self.dtype)(y))
    y = layers.conv(hidden, 3, strides=self.stride, groups=hidden, name="conv_3",
                    dtype=self.dtype)(y)
    y = nn.relu(layers.batch_norm(train, name="conv_4", dtype=self.dtype)(y))
    y = layers.conv(self.out_features, 1, name="conv_6", dtype=self.dtype)(y)
    y = layers.batch_norm(train, name="conv_7", dtype=self.dtype)(y)
    if self.stride == 1 and self.in_features == self.out_features:
      return x + y
    return y


class MobileNetV2(nn.Module):
  """CIFAR MobileNetV2 (defaults: T=6, width 0.5 = `mobile_half`); 32 px -> 2x2 final map."""
  num_classes: int
  aux_head: Optional[str] = None
  dtype: Any = jnp.float32
  expand: int = 6
  width_mult: float = 0.5

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False):
    x = x.astype(self.dtype)
    channels = int(32 * self.width_mult)
    x = layers.conv(channels, 3, strides=2, name="conv1_0", dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="conv1_1", dtype=self.dtype)(x))
    for s, (t, c, n, stride) in enumerate(_V2_SETTINGS):
      out = int(c * self.width_mult)
      for j in range(n):
        x = InvertedResidual(channels, out, stride if j == 0 else 1,
                             self.expand if t is None else t, dtype=self.dtype,
                             name=f"blocks_{s}_{j}")(x, train)
        channels = out
    last = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    x = layers.conv(last, 1, name="conv2_0", dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="conv2_1", dtype=self.dtype)(x))
    # AvgPool2d(H, ceil_mode=True) with H = input/16 covers the whole (input/32) map.
    h = jnp.mean(x, axis=(1, 2))
    # DHKD builds the aux head before _initialize_weights, so it gets the same Linear init.
    return layers.classifier_heads(h, self.num_classes, self.aux_head, train, self.dtype,
                                   kernel_init=_LINEAR_INIT, bias_init=nn.initializers.zeros,
                                   aux_kernel_init=_LINEAR_INIT,
                                   aux_bias_init=nn.initializers.zeros)


class MobileNetV1(nn.Module):
  """ImageNet MobileNetV1 (224 px, AvgPool2d(7)); layers follow the torch `model.{i}.{k}` keys."""
  num_classes: int = 1000
  aux_head: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False):
    if x.shape[1:3] != (224, 224):
      raise ValueError(f"MobileNetV1 expects 224x224 inputs (AvgPool2d(7)); got {x.shape[1:3]}")
    x = x.astype(self.dtype)
    conv = functools.partial(layers.conv, kernel_init=layers.torch_default_kernel,
                             dtype=self.dtype)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    x = nn.relu(bn(name="model_0_1")(conv(32, 3, strides=2, name="model_0_0")(x)))
    channels = 32
    for i, (out, stride) in enumerate(_V1_BLOCKS, start=1):
      x = conv(channels, 3, strides=stride, groups=channels, name=f"model_{i}_0")(x)
      x = nn.relu(bn(name=f"model_{i}_1")(x))
      x = nn.relu(bn(name=f"model_{i}_4")(conv(out, 1, name=f"model_{i}_3")(x)))
      channels = out
    h = jnp.mean(x, axis=(1, 2))
    return layers.classifier_heads(h, self.num_classes, self.aux_head, train, self.dtype)


def mobile_half(num_classes: int, aux_head: Optional[str] = None,
                dtype: Any = jnp.float32) -> MobileNetV2:
  """mdistiller's `mobile_half`: MobileNetV2(T=6, width_mult=0.5)."""
  return MobileNetV2(num_classes=num_classes, aux_head=aux_head, dtype=dtype)


def mobilenet_v1(num_classes: int = 1000, aux_head: Optional[str] = None,
                 dtype: Any = jnp.float32) -> MobileNetV1:
  """ImageNet MobileNetV1 (mdistiller `imagenet/mobilenetv1.py`)."""
  return MobileNetV1(num_classes=num_classes, aux_head=aux_head, dtype=dtype)


MODELS: Dict[str, Callable[..., nn.Module]] = {
    "MobileNetV2": mobile_half,
    "MobileNetV1": mobilenet_v1,
}
