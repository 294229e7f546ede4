"""The model zoo: a registry of CIFAR and ImageNet families, `create`, `init` and the importer.

`create(name, num_classes, aux_head=..., dtype=...)` builds a Flax module; see docs/models.md.
"""
from __future__ import annotations

import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import (imagenet_resnet, layers, mobilenet, resnet, resnetv2, shufflenet, vgg,
                           wrn)

# Compute dtypes a model may run in (parameters stay float32).
DTYPES: Dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
AUX_HEADS = layers.AUX_HEADS

FAMILIES: Tuple[types.ModuleType, ...] = (resnet, resnetv2, wrn, imagenet_resnet, vgg, mobilenet,
                                          shufflenet)

def _build_registry() -> Dict[str, Tuple[Callable[..., nn.Module], types.ModuleType]]:
  registry: Dict[str, Tuple[Callable[..., nn.Module], types.ModuleType]] = {}
  for family in FAMILIES:
    for model_name, factory in family.MODELS.items():
      if model_name in registry:
        raise RuntimeError(f"model {model_name!r} is registered by both "
                           f"{registry[model_name][1].__name__} and {family.__name__}")
      registry[model_name] = (factory, family)
  return registry


_REGISTRY = _build_registry()


def names() -> List[str]:
  """All registered model names, sorted."""
  return sorted(_REGISTRY)


def _lookup(name: str) -> Tuple[Callable[..., nn.Module], types.ModuleType]:
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")
  return _REGISTRY[name]


def create(name: str, num_classes: int, *, aux_head: Optional[str] = None,
           dtype: Any = jnp.float32) -> nn.Module:
  """Builds model `name`; with aux_head in {'linear', 'nonlinear'} it returns (logits, aux)."""
  factory, _ = _lookup(name)
  layers.check_aux_head(aux_head)
  if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
  return factory(num_classes, aux_head=aux_head, dtype=dtype)


def input_size(name: str) -> int:
  """The input height/width the model expects: 32 for CIFAR models, 224 for ImageNet ones."""
  _, family = _lookup(name)
  return int(family.INPUT_SIZES[name])


def torch_renames(name: str) -> Mapping[str, str]:
  """Torch head-module prefixes -> flax names for `name` (flat or per-model TORCH_RENAMES)."""
  _, family = _lookup(name)
  renames = getattr(family, "TORCH_RENAMES", {})
  if name in renames and isinstance(renames[name], Mapping):
    return dict(renames[name])
  return {k: v for k, v in renames.items() if isinstance(v, str)}


def init(module: nn.Module, rng: jax.Array, image_size: int) -> Dict[str, Any]:
  """Initialises `module` on a [1, image_size, image_size, 3] input; returns params, batch_stats."""
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = jax.jit(lambda r: module.init(r, dummy, train=False))(rng)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def import_torch_checkpoint(path: str, name: str, num_classes: int, *,
                            aux_head: Optional[str] = None) -> Dict[str, Any]:
  """Reads a mdistiller/CRD/DHKD or torchvision checkpoint into variables for create(name, ...).

  Strict: missing, unexpected or mis-shaped keys raise WeightsFileError. Needs torch.
  """
  from kd_jax.models import torch_import  # pylint: disable=import-outside-toplevel
  return torch_import.import_torch_checkpoint(path, name, num_classes, aux_head=aux_head)


__all__ = ["AUX_HEADS", "DTYPES", "FAMILIES", "create", "names", "input_size", "init", "import_torch_checkpoint",
           "torch_renames"]
