"""Which data a run reads: the known presets, any TFDS image dataset, or a folder of images.

`config.dataset` is one of
- a known name (KNOWN_DATASETS), with the presets of the papers;
- `imagefolder:PATH`: PATH/<split>/<class>/*.png|jpg|jpeg, read with
  `tfds.folder_dataset.ImageFolder`; class ids are the sorted class-folder names;
- any other TFDS name whose examples have an `image` and a `label` (ClassLabel) feature.

This module also owns the augmentation names and the rules that resolve `augment`, `mean` and
`std` (see docs/data.md "Bring your own data"). TensorFlow is imported lazily.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Sequence

import numpy as np

from kd_jax.data import common
from kd_jax.data.common import DataError, InMemoryData

# Augmentations of the training images. 'auto': pad_crop_flip for data held in memory,
# random_resized_crop for streamed data. 'none': no crop and no flip, only normalisation.
# 'randaugment': pad_crop_flip, then MLKD's RandAugment(2, 10) and Cutout (data held in memory).
AUGMENTATIONS = ("auto", "pad_crop_flip", "random_resized_crop", "none", "randaugment")
IMAGEFOLDER_PREFIX = "imagefolder:"
# Names with presets: (in memory, default image size, number of classes).
KNOWN_DATASETS = {"cifar100": (True, 32, 100), "cifar10": (True, 32, 10),
                  "synthetic": (True, 32, 100), "imagenet2012": (False, 224, 1000)}
STREAMED_IMAGE_SIZE = 224     # image_size=0 for a streamed dataset without a preset
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# A TFDS name: 'name', 'name/config', optionally ':version'.
_TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.\-]+)?(:[0-9.*]+)?$")
_ACCEPTED = (f"{', '.join(KNOWN_DATASETS)}, imagefolder:PATH (PATH/train/<class>/*.png|jpg) "
             "or the name of a TFDS dataset with 'image' and 'label' features")


def imagefolder_root(name: str) -> str | None:
  """PATH of an 'imagefolder:PATH' dataset name (user-expanded), else None."""
  if not name.startswith(IMAGEFOLDER_PREFIX):
    return None
  return os.path.expanduser(name[len(IMAGEFOLDER_PREFIX):])


def check_dataset_name(name: Any) -> None:
  """Raises DataError unless `name` is a known name, imagefolder:PATH or a TFDS-style name."""
  if not isinstance(name, str):
    raise DataError(f"dataset={name!r}; accepted: {_ACCEPTED}.")
  root = imagefolder_root(name)
  if root is not None:
    if not root:
      raise DataError(f"dataset={name!r} has an empty PATH; accepted: imagefolder:PATH with "
                      "PATH/train/<class>/*.png|jpg and PATH/test/<class>/...")
    return
  if name not in KNOWN_DATASETS and not _TFDS_NAME.match(name):
    raise DataError(f"dataset={name!r}; accepted: {_ACCEPTED}.")


def resolve_augment(augment: str, in_memory: bool) -> str:
  """The augmentation that runs: 'auto' becomes pad_crop_flip in memory, else random_resized_crop.

  Every other name runs as given, in memory (JAX) and streamed (tf.data) alike.
  """
  if augment not in AUGMENTATIONS:
    raise DataError(f"augment={augment!r}; accepted: {', '.join(AUGMENTATIONS)}.")
  if augment == "auto":
    return "pad_crop_flip" if in_memory else "random_resized_crop"
  return augment


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and (population) std of uint8 images [N,H,W,C], in [0, 1] pixel units.

  Exact: integer sums, so the result does not depend on the order or chunking.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
    raise DataError(f"channel_stats: images of dtype {images.dtype} and shape "
                    f"{images.shape}; accepted: uint8 [N, H, W, C] with N >= 1.")
  channels = images.shape[-1]
  s1 = np.zeros(channels, np.int64)
  s2 = np.zeros(channels, np.int64)
  for start in range(0, images.shape[0], 1024):
    chunk = images[start:start + 1024].reshape(-1, channels).astype(np.int64)
    s1 += chunk.sum(0)
    s2 += (chunk * chunk).sum(0)
  count = images.size // channels
  mean, std = [], []
  for a, b in zip(s1.tolist(), s2.tolist()):
    mean.append(a / (count * 255.0))
    var = (b * count - a * a) / (count * count * 255.0 * 255.0)  # exact numerator in ints
    std.append(float(np.sqrt(max(var, 0.0))))
  return tuple(mean), tuple(std)


def resolve_mean_std(dataset: str, mean: Sequence[float], std: Sequence[float], *,
                     train_images: np.ndarray | None) -> tuple[tuple, tuple]:
  """Normalisation constants: the configured ones, else the dataset's defaults.

  Defaults: CIFAR's constants for cifar10/cifar100/synthetic, ImageNet's for imagenet2012 and
  any streamed dataset (train_images None), the training split's own statistics
  (channel_stats) for other data held in memory. mean and std resolve independently.
  """
  from kd_jax.data import cifar, imagenet  # pylint: disable=import-outside-toplevel
  mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
  if mean and std:
    return mean, std
  if dataset in ("cifar100", "cifar10", "synthetic"):
    default = (cifar.CIFAR_MEAN, cifar.CIFAR_STD)
  elif dataset == "imagenet2012" or train_images is None:
    default = (imagenet.IMAGENET_MEAN, imagenet.IMAGENET_STD)
  else:
    default = channel_stats(train_images)
  return mean or tuple(default[0]), std or tuple(default[1])


# ----------------------------------------------------------------------------- image folders


def imagefolder_builder(root: str):
  """tfds ImageFolder over `root`, after checking the layout (DataError naming what is wrong)."""
  layout = "PATH/train/<class>/*.png|jpg and PATH/test/<class>/*.png|jpg"
  if not os.path.isdir(root):
    raise DataError(f"dataset 'imagefolder:{root}': {root!r} is not a directory; accepted: "
                    f"imagefolder:PATH with {layout}.")
  splits = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not splits:
    raise DataError(f"dataset 'imagefolder:{root}': no split folders in {root!r}; accepted: "
                    f"{layout}.")
  tfds = common.import_tfds()
  return tfds.folder_dataset.ImageFolder(root)


def _folder_split(builder, root: str, split: str):
  """The ImageFolder split, or a DataError listing the splits and the expected layout."""
  splits = sorted(builder.info.splits)
  if split not in splits:
    raise DataError(f"dataset 'imagefolder:{root}': no images under {os.path.join(root, split)}"
                    f"/<class>/ (*.png, *.jpg, *.jpeg); found splits {splits}. Accepted: a "
                    f"folder {split}/ with one sub-folder per class (or set the split "
                    "config key, e.g. --config.eval_split).")
  return builder.as_dataset(split=split, shuffle_files=False)


def load_imagefolder(root: str, split: str, *, image_size: int = 0,
                     num_examples: int | None = None) -> InMemoryData:
  """A split of PATH/<split>/<class>/*.png|jpg as uint8 [N, S, S, 3] and int32 labels.

  Labels are the indices of the sorted class-folder names (over all splits). The order is
  ImageFolder's: fixed for a given folder (a seeded shuffle of the sorted file names).
  image_size=0 keeps the images' own size, which they must all share (square); otherwise
  every image whose size differs is resized (bilinear, antialiased) to image_size x image_size.
  """
  tfds = common.import_tfds()
  builder = imagefolder_builder(root)
  ds = _folder_split(builder, root, split)
  if num_examples is not None:
    ds = ds.take(num_examples)
  images, labels, files = [], [], []
  for ex in tfds.as_numpy(ds):
    images.append(ex["image"])
    labels.append(int(ex["label"]))
    files.append(ex["image/filename"].decode("utf-8", "replace"))
  name = f"imagefolder:{root}"
  if not images:
    raise DataError(f"dataset {name!r} split {split!r} has no images; accepted: "
                    f"{os.path.join(root, split)}/<class>/*.png|jpg with at least one image.")
  stacked = _same_size(name, split, images, files, image_size)
  num_classes = len(builder.info.features["label"].names)
  labels_np = np.asarray(labels, np.int32)
  common.check_arrays(name, split, stacked, labels_np, num_classes)
  return InMemoryData(images=stacked, labels=labels_np, num_classes=num_classes)


def _same_size(name: str, split: str, images: list, files: Sequence[str],
               image_size: int) -> np.ndarray:
  """Stacks images of one shared square size, resizing to image_size when it is set."""
  if image_size:
    return np.stack([resize_uint8(im, image_size) for im in images])
  shapes = {}
  for im, f in zip(images, files):
    shapes.setdefault(im.shape[:2], f)
  if len(shapes) > 1:
    (a, fa), (b, fb) = list(shapes.items())[:2]
    raise DataError(f"dataset {name!r} split {split!r}: images differ in size ({a[0]}x{a[1]} "
                    f"in {fa}, {b[0]}x{b[1]} in {fb}) and config.image_size=0; accepted: "
                    "images of one size, or set --config.image_size=S to resize all to SxS.")
  (h, w), f = next(iter(shapes.items()))
  if h != w:
    raise DataError(f"dataset {name!r} split {split!r}: images are {h}x{w} (e.g. {f}) and "
                    "config.image_size=0; accepted: square images, or set "
                    "--config.image_size=S to resize all to SxS.")
  return np.stack(images)


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H,W,3] -> [size,size,3], bilinear with antialiasing, rounded; unchanged if same size."""
  if image.shape[:2] == (size, size):
    return np.asarray(image, np.uint8)
  tf = common.import_tf()
  out = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear",
                        antialias=True)
  return np.clip(np.rint(out.numpy()), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- any TFDS dataset


@dataclasses.dataclass(frozen=True)
class TfdsLayout:
  """What a TFDS image-classification dataset's metadata says."""
  num_classes: int
  image_shape: tuple | None     # (H, W) when every image has it, else None
  train_examples: int | None    # None when the metadata does not say


def tfds_layout(name: str, data_dir: str | None, split: str = "train") -> TfdsLayout:
  """Checks that `name` has 'image' and 'label' (ClassLabel) features and reads its sizes."""
  builder = common.tfds_builder(name, data_dir)
  features = builder.info.features
  keys = sorted(getattr(features, "keys", lambda: [])())
  if "image" not in keys or "label" not in keys:
    raise DataError(f"TFDS dataset {name!r} has features {keys}; accepted: a dataset with an "
                    "'image' and a 'label' feature (image classification).")
  num_classes = getattr(features["label"], "num_classes", None)
  if not num_classes:
    raise DataError(f"TFDS dataset {name!r}: its 'label' feature is {features['label']!r}; "
                    "accepted: a ClassLabel with a known number of classes.")
  shape = tuple(getattr(features["image"], "shape", ()) or ())
  hw = shape[:2] if len(shape) == 3 and None not in shape[:2] else None
  n = None
  if split in builder.info.splits:
    n = int(builder.info.splits[split].num_examples) or None
  return TfdsLayout(int(num_classes), tuple(int(v) for v in hw) if hw else None, n)


def in_memory_bytes(num_examples: int, image_size: int) -> int:
  """Device bytes of a uint8 split of num_examples images of image_size x image_size x 3."""
  return int(num_examples) * int(image_size) ** 2 * 3
