"""Which data a run reads: the known presets, any TFDS image dataset, or a folder of images.

`config.dataset` is one of
- a known name (KNOWN_DATASETS), with the presets of the papers;
- `imagefolder:PATH`: PATH/<split>/<class>/*.png|jpg|jpeg, listed by `list_imagefolder` (in
  TFDS ImageFolder's order) and decoded by TensorFlow; class ids are the sorted class-folder
  names;
- any other TFDS name whose examples have an `image` and a `label` (ClassLabel) feature.

This module also owns the presets (`Preset`) and the rules that resolve `mean` and `std` (see
docs/data.md "Bring your own data"); the augmentations are kd_jax/data/augmentations.py's.
TensorFlow is imported lazily.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Sequence

import numpy as np

from kd_jax import console
from kd_jax.data import common
from kd_jax.data.common import DataError, InMemoryData

IMAGEFOLDER_PREFIX = "imagefolder:"


@dataclasses.dataclass(frozen=True)
class Preset:
  """What a known dataset name decides."""
  in_memory: bool                 # held in device memory (else streamed)
  image_size: int                 # the default config.image_size
  num_classes: int
  mean: tuple                     # the default normalisation, [0, 1] pixel units
  std: tuple


_CIFAR = (common.CIFAR_MEAN, common.CIFAR_STD)
# The names with presets; 'synthetic' is generated offline (kd_jax/data/in_memory.py).
KNOWN_DATASETS: dict[str, Preset] = {
    "cifar100": Preset(True, 32, 100, *_CIFAR), "cifar10": Preset(True, 32, 10, *_CIFAR),
    "synthetic": Preset(True, 32, 100, *_CIFAR),
    "imagenet2012": Preset(False, 224, 1000, common.IMAGENET_MEAN, common.IMAGENET_STD)}
# The presets held in memory (config.IN_MEMORY_DATASETS; other data: decided by its size).
IN_MEMORY_PRESETS = tuple(n for n, p in KNOWN_DATASETS.items() if p.in_memory)
STREAMED_IMAGE_SIZE = 224     # image_size=0 for a streamed dataset without a preset
IN_MEMORY_IMAGE_SIZE = 32     # the models' input size when neither the config nor a preset says
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

  Defaults: a preset's (KNOWN_DATASETS: CIFAR's constants for cifar10/cifar100/synthetic,
  ImageNet's for imagenet2012), ImageNet's for any other streamed dataset (train_images None),
  the training split's own statistics (channel_stats) for other data held in memory. mean and
  std resolve independently.
  """
  mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
  if mean and std:
    return mean, std
  if dataset in KNOWN_DATASETS:
    default = (KNOWN_DATASETS[dataset].mean, KNOWN_DATASETS[dataset].std)
  elif train_images is None:
    default = (common.IMAGENET_MEAN, common.IMAGENET_STD)
  else:
    default = channel_stats(train_images)
  return mean or tuple(default[0]), std or tuple(default[1])


# ----------------------------------------------------------------------------- image folders

# The files an image folder reads (any case), as torchvision's and TFDS's ImageFolder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LAYOUT = "PATH/train/<class>/*.png|jpg and PATH/test/<class>/*.png|jpg"


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """What an image folder holds, before any image is decoded."""
  root: str
  classes: tuple                 # sorted class-folder names over every split
  files: dict                    # split -> [(path, class index)] in reading order
  sizes: dict                    # path -> size in bytes
  nested: dict                   # split -> images found in sub-folders of class folders
  ignored: dict                  # split -> files that are not images (not read)


def _walk_images(directory: str) -> tuple[list[str], int, int]:
  """(image paths under `directory`, sorted; how many in sub-folders; non-image files)."""
  paths, nested, ignored = [], 0, 0
  for here, dirs, names in os.walk(directory, followlinks=True):
    dirs.sort()
    for n in names:
      if n.startswith("."):
        continue
      if n.lower().endswith(IMAGE_SUFFIXES):
        paths.append(os.path.join(here, n))
        nested += here != directory
      else:
        ignored += 1
  return sorted(paths), nested, ignored


def list_imagefolder(root: str) -> FolderListing:
  """The layout of PATH/<split>/<class>/...: classes, files in reading order, sizes.

  Images in sub-folders of a class folder belong to that class (as with torchvision's
  ImageFolder). The reading order of a split is TFDS ImageFolder's: the sorted paths, class
  by class, shuffled by `random.Random(split)`. A class folder without any image and a folder
  without class folders are refused (DataError); training also refuses a single class.
  """
  import random  # pylint: disable=import-outside-toplevel
  name = f"imagefolder:{root}"
  if not os.path.isdir(root):
    raise DataError(f"dataset {name!r}: {root!r} is not a directory; accepted: "
                    f"imagefolder:PATH with {_LAYOUT}.")
  splits = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not splits:
    raise DataError(f"dataset {name!r}: no split folders in {root!r}; accepted: {_LAYOUT}.")
  per_split, classes, nested, ignored = {}, set(), {}, {}
  for split in splits:
    split_dir = os.path.join(root, split)
    found = {}
    nested[split] = ignored[split] = 0
    for entry in sorted(os.listdir(split_dir)):
      path = os.path.join(split_dir, entry)
      if not os.path.isdir(path):
        ignored[split] += not entry.startswith(".")
        continue
      paths, n_nested, n_ignored = _walk_images(path)
      if not paths:
        raise DataError(f"dataset {name!r}: class folder {path} holds no image (*.png, *.jpg, "
                        f"*.jpeg); accepted: at least one image in every class folder (remove "
                        f"the empty folder or add its images).")
      found[entry] = paths
      nested[split] += n_nested
      ignored[split] += n_ignored
    per_split[split] = found
    classes.update(found)
  classes = tuple(sorted(classes))
  if not classes:
    raise DataError(f"dataset {name!r}: no class folders in its splits {splits}; accepted: "
                    f"{_LAYOUT}.")
  index = {c: i for i, c in enumerate(classes)}
  files, sizes = {}, {}
  for split, found in per_split.items():
    examples = [(p, index[c]) for c in sorted(found) for p in found[c]]
    random.Random(split).shuffle(examples)
    files[split] = examples
    for p, _ in examples:
      sizes[p] = os.path.getsize(p)
  return FolderListing(root, classes, files, sizes, nested, ignored)


def folder_fingerprint(listing: FolderListing, splits: Sequence[str]) -> str:
  """'sha256:<16 hex> of N files (names and sizes) in ROOT/{splits}': sorted relative paths and
  byte sizes of every image of `splits` (what a changed, added or removed image changes)."""
  import hashlib  # pylint: disable=import-outside-toplevel
  h, n = hashlib.sha256(), 0
  used = [s for s in dict.fromkeys(splits) if s in listing.files]
  for path in sorted(p for s in used for p, _ in listing.files[s]):
    h.update(f"{os.path.relpath(path, listing.root)}\t{listing.sizes[path]}\n".encode())
    n += 1
  return (f"sha256:{h.hexdigest()[:16]} of {n} files (names and sizes) in "
          f"{os.path.join(listing.root, '{' + ','.join(used) + '}')}")


def dataset_fingerprint(name: str, splits: Sequence[str], data_dir: str | None = None) -> str:
  """What identifies the data a run reads, for the run's identity (workdir.check_identity).

  An image folder: its files' names and sizes (folder_fingerprint); 'synthetic': generated
  by this code; a TFDS dataset: its name, version and split sizes.
  """
  root = imagefolder_root(name)
  if root is not None:
    return folder_fingerprint(list_imagefolder(root), splits)
  if name == "synthetic":   # this text is part of the identity that config.json records
    return "synthetic (generated by kd_jax.data.cifar)"
  builder = tfds_builder(name, data_dir)
  info = builder.info
  sizes = ", ".join(f"{s} {int(info.splits[s].num_examples)}" for s in sorted(info.splits))
  return f"tfds {info.full_name}: {sizes}"


def _decode(paths: Sequence[str]) -> list:
  """uint8 [H, W, 3] per file, or for an unreadable file the reason (a string)."""
  tf = common.import_tf()

  def one(path):
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)

  try:  # fast path: decode in parallel; any unreadable file falls back to one file at a time
    ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return [im.numpy() for im in ds]
  except tf.errors.OpError:
    pass
  out = []
  for path in paths:
    try:
      out.append(one(path).numpy())
    except tf.errors.OpError as e:
      first = " ".join((e.message or type(e).__name__).split(";")[0].split())
      out.append(first if os.path.getsize(path) else "the file is empty (0 bytes)")
  return out


def load_imagefolder(root: str, split: str, *, image_size: int = 0,
                     num_examples: int | None = None,
                     skip_unreadable: bool = False) -> InMemoryData:
  """A split of PATH/<split>/<class>/*.png|jpg as uint8 [N, S, S, 3] and int32 labels.

  Labels are the indices of the sorted class-folder names (over all splits). The order is
  fixed for a given folder (list_imagefolder). image_size=S resizes every image of another
  size to SxS (bilinear, antialiased); image_size=0 keeps the images' own size when they all
  share one square size, else resizes all to the most common size (common_size, one line
  says so). An unreadable file is a DataError naming it and why, or, with skip_unreadable,
  left out (one line says how many).
  """
  listing = list_imagefolder(root)
  name = f"imagefolder:{root}"
  if split not in listing.files:
    raise DataError(f"dataset {name!r}: no images under {os.path.join(root, split)}"
                    f"/<class>/ (*.png, *.jpg, *.jpeg); found splits {sorted(listing.files)}. "
                    f"Accepted: a folder {split}/ with one sub-folder per class (or set the "
                    "split config key, e.g. --config.eval_split).")
  examples = listing.files[split]
  if listing.nested[split]:
    console.info(f"dataset {name!r} split {split!r}: {listing.nested[split]} images in "
                 f"sub-folders of class folders are read as that class's (as torchvision's "
                 f"ImageFolder does)")
  if num_examples is not None:
    examples = examples[:num_examples]
  decoded = _decode([p for p, _ in examples])
  bad = [(p, why) for (p, _), why in zip(examples, decoded) if isinstance(why, str)]
  if bad and not skip_unreadable:
    (path, why), more = bad[0], len(bad) - 1
    raise DataError(f"dataset {name!r} split {split!r}: cannot read image {path} ({why})"
                    f"{f' and {more} more unreadable files' if more else ''}; accepted: PNG "
                    f"or JPEG files (fix or remove it, or set "
                    f"--config.skip_unreadable_images=true to leave unreadable files out).")
  if bad:
    console.warn(f"dataset {name!r} split {split!r}: skipped {len(bad)} unreadable of "
                 f"{len(examples)} files (e.g. {bad[0][0]}: {bad[0][1]}); "
                 f"config.skip_unreadable_images=true")
  kept = [(p, lb, im) for (p, lb), im in zip(examples, decoded) if not isinstance(im, str)]
  if not kept:
    raise DataError(f"dataset {name!r} split {split!r} has no readable images; accepted: "
                    f"{os.path.join(root, split)}/<class>/*.png|jpg with at least one image.")
  images = [im for _, _, im in kept]
  stacked = _same_size(name, split, images, [p for p, _, _ in kept], image_size)
  labels_np = np.asarray([lb for _, lb, _ in kept], np.int32)
  num_classes = len(listing.classes)
  common.check_arrays(name, split, stacked, labels_np, num_classes)
  return InMemoryData(images=stacked, labels=labels_np, num_classes=num_classes)


def common_size(shapes: Sequence[tuple]) -> int:
  """The side S that images of these (H, W) shapes are resized to when image_size=0: the most
  common shape's shorter side (ties: the more frequent, then the larger shape)."""
  counts: dict = {}
  for hw in shapes:
    counts[tuple(hw)] = counts.get(tuple(hw), 0) + 1
  (h, w), _ = max(counts.items(), key=lambda kv: (kv[1], kv[0][0] * kv[0][1], kv[0]))
  return int(min(h, w))


def _same_size(name: str, split: str, images: list, files: Sequence[str],
               image_size: int) -> np.ndarray:
  """Stacks the images at image_size, or at their one square size, or at common_size."""
  if not image_size:
    shapes = [im.shape[:2] for im in images]
    kinds = sorted(set(shapes), key=lambda hw: -shapes.count(hw))
    if len(kinds) == 1 and kinds[0][0] == kinds[0][1]:
      return np.stack(images)
    image_size = common_size(shapes)
    listed = ", ".join(f"{h}x{w}: {shapes.count((h, w))}" for h, w in kinds[:3])
    console.info(f"dataset {name!r} split {split!r}: images of {len(kinds)} size"
                 f"{'s' if len(kinds) > 1 else ''} ({listed}{', ...' if len(kinds) > 3 else ''}"
                 f"); all resized to {image_size}x{image_size}, the most common (e.g. "
                 f"{files[shapes.index(kinds[0])]}); --config.image_size=S sets another size")
  return np.stack([resize_uint8(im, image_size) for im in images])


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H,W,3] -> [size,size,3], bilinear with antialiasing, rounded; unchanged if same size."""
  if image.shape[:2] == (size, size):
    return np.asarray(image, np.uint8)
  tf = common.import_tf()
  out = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear",
                        antialias=True)
  return np.clip(np.rint(out.numpy()), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- any TFDS dataset


def tfds_builder(name: str, data_dir: str | None):
  """tfds.builder with unknown names turned into a DataError."""
  tfds = common.import_tfds()
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends.
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(
        f"No TFDS dataset named {name!r} is registered or found in data_dir "
        f"{common.resolved_data_dir(data_dir)!r} ({first_line}); accepted: "
        f"{', '.join(KNOWN_DATASETS)}, "
        "imagefolder:PATH or a registered TFDS dataset name (see docs/data.md).") from None


@dataclasses.dataclass(frozen=True)
class TfdsLayout:
  """What a TFDS image-classification dataset's metadata says."""
  num_classes: int
  image_shape: tuple | None     # (H, W) when every image has it, else None
  train_examples: int | None    # None when the metadata does not say


def tfds_layout(name: str, data_dir: str | None, split: str = "train") -> TfdsLayout:
  """Checks that `name` has 'image' and 'label' (ClassLabel) features and reads its sizes."""
  builder = tfds_builder(name, data_dir)
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
