"""ImageNet ResNet18/34/50 in the torchvision layout (mdistiller `imagenet/resnet.py`), 224 px.

7x7/2 stem + 3x3/2 max-pool, `layer1..4` with `downsample_{0,1}`, stride on the 3x3 (V1.5), `fc`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import resnetv2

# Torch head module paths -> flax head names (used by the importer).
TORCH_RENAMES = {"fc": "head"}


# The blocks of resnetv2 with torchvision's name for the projection.
BasicBlock = functools.partial(resnetv2.BasicBlock, projection="downsample")
Bottleneck = functools.partial(resnetv2.Bottleneck, projection="downsample")


def _factory(name: str, block: Any,
             stage_sizes: Sequence[int]) -> Callable[..., resnetv2.ResNetV2]:
  def build(num_classes: int = 1000, aux_head: Optional[str] = None,
            dtype: Any = jnp.float32) -> resnetv2.ResNetV2:
    return resnetv2.ResNetV2(num_classes=num_classes, aux_head=aux_head, dtype=dtype,
                             block=block, stage_sizes=tuple(stage_sizes), imagenet_stem=True)
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
