"""The kd_jax model zoo in PyTorch, with the reference implementations' state_dict key names.

    from kd_jax.torch_models import build
    model = build("resnet8x4", num_classes=100)          # aux_head="linear"/"nonlinear" for DHKD
    model.load_state_dict(torch.load("student.pth")["model"], strict=True)

Each class is written from the authors' architecture (mdistiller/CRD CIFAR models, torchvision's
ImageNet ResNets, DHKD's auxiliary heads), independently of the Flax modules in kd_jax.models;
the tests compare the two. torch is imported only when a model is built (`pip install
"kd_jax[torch]"`); importing this package needs neither torch nor jax.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Tuple

# Every PyTorch model this package builds, by kd_jax model name (the same names as
# kd_jax.models.names(); a test checks the two lists agree).
_RESNETS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
            "resnet8x4", "resnet32x4", "ResNet18", "ResNet50", "wrn_16_1", "wrn_16_2",
            "wrn_40_1", "wrn_40_2", "imagenet_resnet18", "imagenet_resnet34",
            "imagenet_resnet50")
_MOBILE = ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV1", "MobileNetV2",
           "ShuffleV1", "ShuffleV2")
NAMES: Tuple[str, ...] = tuple(sorted(_RESNETS + _MOBILE))
AUX_HEADS = (None, "linear", "nonlinear")


def _family(name: str):
  try:
    if name in _RESNETS:
      from kd_jax.torch_models import resnets  # pylint: disable=import-outside-toplevel
      return resnets
    from kd_jax.torch_models import mobile  # pylint: disable=import-outside-toplevel
    return mobile
  except ImportError as e:
    raise ImportError(
        "kd_jax.torch_models needs torch: pip install 'kd_jax[torch]' (on a CPU-only machine "
        "add --extra-index-url https://download.pytorch.org/whl/cpu)") from e


def build(name: str, num_classes: int, aux_head: Optional[str] = None) -> Any:
  """A torch.nn.Module for kd_jax model `name` with fresh weights (call .eval() for inference).

  With aux_head ('linear' or 'nonlinear', DHKD's auxiliary classifier) forward returns
  (logits, aux_logits); without, logits [N, num_classes]. Input: NCHW float32.
  """
  if name not in NAMES:
    raise ValueError(f"unknown model {name!r}; accepted: {', '.join(NAMES)}")
  if aux_head not in AUX_HEADS:
    raise ValueError(f"aux_head={aux_head!r}; accepted: None, 'linear', 'nonlinear'")
  return _family(name).build(name, num_classes, aux_head)


def sidecar_path(path: str) -> str:
  """Where `python -m kd_jax.export` writes the metadata of an exported file: PATH.json."""
  return os.fspath(path) + ".json"


def read_metadata(path: str) -> dict:
  """The JSON metadata written beside an exported file (model, num_classes, aux_head,
  image_size, mean, std, ...)."""
  with open(sidecar_path(path), encoding="utf-8") as f:
    return json.load(f)


def load_exported(path: str) -> Any:
  """The model of a state_dict file written by `python -m kd_jax.export` (its metadata sidecar
  names the model), with the weights loaded strictly, in eval mode."""
  import torch  # pylint: disable=import-outside-toplevel
  meta = read_metadata(path)
  model = build(meta["model"], int(meta["num_classes"]), meta.get("aux_head"))
  model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"],
                        strict=True)
  return model.eval()
