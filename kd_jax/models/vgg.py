"""CIFAR VGG with BatchNorm (mdistiller `vgg*_bn`): vgg8, vgg11, vgg13, vgg16, vgg19.

Every conv is 3x3/pad 1 with bias, then BN and ReLU; pool3 runs only on 64 px inputs.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers

# Conv widths per block (block0..block4), by depth.
CFGS: Dict[int, Tuple[Tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}

# PyTorch head module paths -> flax head names (used by the importer).
TORCH_RENAMES = {"classifier": "head", "classifier2": "aux_head"}

# Linear init of the reference: N(0, 0.01) weights, zero bias.
_LINEAR_INIT = nn.initializers.normal(0.01)


class VGG(nn.Module):
  """VGG-BN; conv j of block b is `block{b}_{3j}` and its BN `block{b}_{3j+1}`."""
  num_classes: int
  aux_head: Optional[str] = None
  dtype: Any = jnp.float32
  depth: int = 8

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False):
    if self.depth not in CFGS:
      raise ValueError(f"VGG depth={self.depth!r} is not supported; accepted: {sorted(CFGS)}")
    height = x.shape[1]
    x = x.astype(self.dtype)
    for b, widths in enumerate(CFGS[self.depth]):
      # pool0..pool2 follow blocks 0..2; pool3 (after block3) only at 64 px.
      if b in (1, 2, 3) or (b == 4 and height == 64):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for j, width in enumerate(widths):
        x = layers.conv(width, 3, use_bias=True, name=f"block{b}_{3 * j}", dtype=self.dtype)(x)
        x = layers.batch_norm(train, name=f"block{b}_{3 * j + 1}", dtype=self.dtype)(x)
        x = nn.relu(x)
    h = jnp.mean(x, axis=(1, 2))
    return layers.classifier_heads(h, self.num_classes, self.aux_head, train, self.dtype,
                                   kernel_init=_LINEAR_INIT, bias_init=nn.initializers.zeros,
                                   aux_kernel_init=_LINEAR_INIT,
                                   aux_bias_init=nn.initializers.zeros)


def _factory(depth: int) -> Callable[..., VGG]:
  def build(num_classes: int, aux_head: Optional[str] = None, dtype: Any = jnp.float32) -> VGG:
    return VGG(num_classes=num_classes, aux_head=aux_head, dtype=dtype, depth=depth)
  build.__name__ = f"vgg{depth}"
  build.__doc__ = f"CIFAR vgg{depth} (BatchNorm variant)."
  return build


MODELS: Dict[str, Callable[..., nn.Module]] = {f"vgg{d}": _factory(d) for d in CFGS}

# Input height/width each model expects.
INPUT_SIZES: Dict[str, int] = {name: 32 for name in MODELS}
