"""ImageNet ResNet18/34/50 in the torchvision layout (mdistiller `imagenet/resnet.py`), 224 px.

7x7/2 stem + 3x3/2 max-pool, `layer1..4` with `downsample_{0,1}`, stride on the 3x3 (V1.5), `fc`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import layers, resnetv2

# Torch head module paths -> flax head names (used by the importer).
TORCH_RENAMES = {"fc": "head"}


# The blocks of resnetv2 with torchvision's name for the projection.
BasicBlock = functools.partial(resnetv2.BasicBlock, projection="downsample")
Bottleneck = functools.partial(resnetv2.Bottleneck, projection="downsample")


class ImageNetResNet(nn.Module):
  """ResNet for 224 px ImageNet; parameters and names match torchvision's state_dict."""
  num_classes: int = 1000
  aux_head: Optional[str] = None
  dtype: Any = jnp.float32
  block: Any = BasicBlock
  stage_sizes: Sequence[int] = (2, 2, 2, 2)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    x = x.astype(self.dtype)
    x = layers.conv(64, 7, strides=2, name="conv1", dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    # PyTorch pads the max-pool with -inf, as does flax with explicit padding.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (n, planes, stride) in enumerate(
        zip(self.stage_sizes, (64, 128, 256, 512), (1, 2, 2, 2)), start=1):
      for i in range(n):
        x = self.block(planes, stride if i == 0 else 1, dtype=self.dtype,
                       name=f"layer{stage}_{i}")(x, train)
    h = layers.global_avg_pool(x)
    return layers.classifier_heads(h, self.num_classes, self.aux_head, train, self.dtype)


def _factory(name: str, block: Any, stage_sizes: Sequence[int]) -> Callable[..., ImageNetResNet]:
  def build(num_classes: int = 1000, aux_head: Optional[str] = None,
            dtype: Any = jnp.float32) -> ImageNetResNet:
    return ImageNetResNet(num_classes=num_classes, aux_head=aux_head, dtype=dtype, block=block,
                          stage_sizes=tuple(stage_sizes))
  build.__name__ = name
  build.__doc__ = (f"ImageNet {name} ({block.func.__name__} x {list(stage_sizes)}), "
                   f"torchvision keys.")
  return build


MODELS: Dict[str, Callable[..., nn.Module]] = {
    "imagenet_resnet18": _factory("imagenet_resnet18", BasicBlock, (2, 2, 2, 2)),
    "imagenet_resnet34": _factory("imagenet_resnet34", BasicBlock, (3, 4, 6, 3)),
    "imagenet_resnet50": _factory("imagenet_resnet50", Bottleneck, (3, 4, 6, 3)),
}

INPUT_SIZES: Dict[str, int] = {name: 224 for name in MODELS}
