"""Shared pieces of the input pipelines: errors, normalisation, eval padding, checks.

Also the TFDS plumbing (lazy TensorFlow import, offline detection, "not prepared" messages).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import threading
import urllib.parse
import urllib.request
from typing import Any, Iterable, Iterator, Sequence

import jax.numpy as jnp
import numpy as np

from kd_jax.errors import DataError

# CIFAR's per-channel normalisation (mdistiller's) and ImageNet's (torchvision's), in [0, 1]
# pixel units.
CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The augmentations' constants (kd_jax/data/augmentations.py). random_resized_crop: torchvision
# RandomResizedCrop's default area fraction and width / height ranges (config.crop_area and
# config.crop_aspect default to them); pad_crop_flip: RandomCrop(size, padding=PAD).
CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3.0 / 4.0, 4.0 / 3.0)
PAD = 4


@dataclasses.dataclass(frozen=True)
class InMemoryData:
  """A whole split held in host memory (the trainer puts it on device once)."""
  images: np.ndarray  # uint8 [N, H, W, 3]
  labels: np.ndarray  # int32 [N]
  num_classes: int

  def __len__(self) -> int:
    return int(self.labels.shape[0])


def normalize(images_uint8: Any, mean: Sequence[float],
              std: Sequence[float]) -> jnp.ndarray:
  """uint8 pixels -> float32: x / 255, then (x - mean) / std per channel."""
  x = jnp.asarray(images_uint8).astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def check_arrays(name: str, split: str, images: np.ndarray, labels: np.ndarray,
                 num_classes: int) -> None:
  """Raises DataError unless images are uint8 [N,H,W,3] and labels in [0, num_classes)."""
  where = f"dataset {name!r} split {split!r}"
  if images.dtype != np.uint8:
    raise DataError(f"{where}: images have dtype {images.dtype}; accepted: uint8.")
  if images.ndim != 4 or images.shape[-1] != 3:
    raise DataError(f"{where}: images have shape {images.shape}; accepted: "
                    "[N, H, W, 3] (rank 4, 3 channels).")
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise DataError(f"{where}: labels have shape {labels.shape}; accepted: "
                    f"[{images.shape[0]}] (one label per image).")
  if images.shape[0] == 0:
    raise DataError(f"{where}: no examples; accepted: at least one.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{where}: labels have dtype {labels.dtype}; accepted: integers.")
  _check_label_range(where, labels, num_classes)


def _check_label_range(where: str, labels: np.ndarray, num_classes: int) -> None:
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise DataError(f"{where}: label {int(labels[i])} at index {i} is outside "
                    f"[0, {num_classes}) ({bad.size} bad labels in total).")


def check_labels(labels: Any, num_classes: int, *, where: str) -> None:
  """DataError unless every label is an integer in [0, num_classes) (negative ones included).

  Cheap enough for every streamed batch: the losses would turn an out-of-range label into a
  silently wrong value (see kd_jax.losses.cross_entropy), so none may reach the step.
  """
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{where}: labels have dtype {labels.dtype}; accepted: integers.")
  _check_label_range(where, labels.reshape(-1), num_classes)


def validate_batch(batch: dict, *, num_classes: int, image_shape: tuple) -> None:
  """Host-side check of one batch: image shape [B, *image_shape], labels in range.

  `image_shape` is the per-example shape, e.g. (32, 32, 3). Entries whose
  'mask' is False (eval padding) are not range-checked.
  """
  for key in ("image", "label"):
    if key not in batch:
      raise DataError(f"batch has keys {sorted(batch)}; accepted: a dict with "
                      "'image' and 'label' (and optionally 'mask').")
  image_shape = tuple(int(d) for d in image_shape)
  shape = tuple(np.shape(batch["image"]))
  if len(shape) != 1 + len(image_shape) or shape[1:] != image_shape:
    raise DataError(f"batch 'image' has shape {shape}; accepted: "
                    f"(batch, {', '.join(map(str, image_shape))}).")
  labels = np.asarray(batch["label"])
  if labels.shape != shape[:1]:
    raise DataError(f"batch 'label' has shape {labels.shape}; accepted: "
                    f"({shape[0]},) (one label per image).")
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"batch 'label' has dtype {labels.dtype}; accepted: integers.")
  if "mask" in batch:
    labels = labels[np.asarray(batch["mask"]).astype(bool)]
  _check_label_range("batch 'label'", labels, num_classes)


def eval_batches(data: InMemoryData, batch_size: int) -> Iterator[dict]:
  """Every example exactly once in order; the last batch is padded with mask False."""
  if batch_size <= 0:
    raise DataError(f"batch_size={batch_size}; accepted: a positive integer.")
  n = len(data)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    yield pad_batch({"image": data.images[start:stop],
                     "label": data.labels[start:stop].astype(np.int32)}, batch_size)


def pad_batch(batch: dict, batch_size: int) -> dict:
  """Pads a (possibly short) batch to batch_size with zeros and adds 'mask'."""
  b = int(np.shape(batch["label"])[0])
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if b < batch_size:
      pad = np.zeros((batch_size - b,) + value.shape[1:], value.dtype)
      value = np.concatenate([value, pad])
    out[key] = value
  out["mask"] = np.arange(batch_size) < b
  return out


def check_crop_ranges(crop_area: Sequence[float], crop_aspect: Sequence[float]
                      ) -> tuple[tuple[float, float], tuple[float, float]]:
  """(lo, hi) pairs with 0 < area lo <= hi <= 1 and 0 < aspect lo <= hi, else DataError."""
  out = []
  for key, value, top in (("crop_area", crop_area, 1.0), ("crop_aspect", crop_aspect, None)):
    try:
      lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
      lo = hi = math.nan
    if not (0 < lo <= hi and (top is None or hi <= top) and math.isfinite(hi)):
      bound = " <= 1" if top else ""
      raise DataError(f"{key}={value!r}; accepted: two numbers (lo, hi) with 0 < lo <= hi"
                      f"{bound}.")
    out.append((lo, hi))
  return out[0], out[1]


# ----------------------------------------------------------------------------- TFDS plumbing


def import_tf():
  """Imports TensorFlow lazily and hides accelerators from it (JAX owns them).

  Its C++ start-up lines (absl's pre-init warning, oneDNN notices), which it writes straight
  to file descriptor 2 while it loads, are dropped; Python errors still propagate.
  """
  import sys  # pylint: disable=g-import-not-at-top
  if "tensorflow" in sys.modules:
    tf = sys.modules["tensorflow"]
  else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = _quiet_import_tensorflow()
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # Already initialised or no such device type.
    pass
  return tf


def _quiet_import_tensorflow():
  """`import tensorflow` with file descriptor 2 sent to /dev/null meanwhile."""
  import sys  # pylint: disable=g-import-not-at-top
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):  # no real stderr (embedded interpreters)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
  return tf


def import_tfds():
  """Imports tensorflow_datasets lazily with a DataError if it is missing."""
  try:
    import_tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
        f"TFDS datasets need tensorflow and tensorflow-datasets ({e}); install "
        "them with `pip install tensorflow-cpu tensorflow-datasets`.") from None
  return tfds


def resolved_data_dir(data_dir: str | None) -> str:
  """The TFDS data_dir that will actually be used (TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  if data_dir:
    return os.fspath(data_dir)
  return os.environ.get("TFDS_DATA_DIR",
                        os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def prepare_commands(name: str, root: str, manual_dir: str | None = None) -> str:
  """Two equivalent ways to build a TFDS dataset into `root`, indented for messages.

  The `tfds` CLI of tensorflow-datasets 4.9.10 imports apache_beam at start-up,
  which requirements.txt does not pin; the Python one-liner needs nothing more.
  """
  config = ""
  cli_manual = ""
  if manual_dir is not None:
    config = (f", download_config=tfds.download.DownloadConfig("
              f"manual_dir={manual_dir!r})")
    cli_manual = f" --manual_dir={manual_dir}"
  return (f"  python -c \"import tensorflow_datasets as tfds; tfds.builder({name!r}, "
          f"data_dir={root!r}).download_and_prepare({config.lstrip(', ')})\"\n"
          f"or, with apache-beam installed (the tfds CLI imports it):\n"
          f"  tfds build {name} --data_dir={root}{cli_manual}\n")


def open_split(builder, split, **as_dataset_kwargs):
  """builder.as_dataset, or None when the dataset is not prepared in its data_dir."""
  try:
    return builder.as_dataset(split=split, **as_dataset_kwargs)
  except AssertionError:  # TFDS: "could not find data in <data_dir>".
    return None
  except (ValueError, KeyError) as e:
    known = sorted(str(s) for s in builder.info.splits) or ["(unknown)"]
    raise DataError(f"dataset {builder.name!r}: cannot read split {split!r} ({e}); "
                    f"accepted splits: {known}, optionally sliced like 'train[:90%]'.") from None


def split_size(ds, what: str) -> int:
  """Number of examples of a finite tf.data dataset with known cardinality."""
  n = int(ds.cardinality())
  if n < 0:
    raise DataError(f"{what}: cannot tell the number of examples (cardinality {n}).")
  return n


def network_reachable(urls: Iterable[str], timeout: float = 4.0) -> tuple[bool, str]:
  """Quick TCP probe of the download hosts (or the HTTPS proxy), bounded in time.

  Returns (ok, what was probed). Runs in a daemon thread so that a hanging DNS
  lookup cannot block the caller beyond `timeout` seconds.
  """
  proxy = urllib.request.getproxies().get("https")
  if proxy:
    parsed = urllib.parse.urlparse(proxy if "//" in proxy else "//" + proxy)
    targets = [(parsed.hostname, parsed.port or 443)]
  else:
    hosts = sorted({urllib.parse.urlparse(u).hostname for u in urls} - {None})
    targets = [(h, 443) for h in hosts or ["storage.googleapis.com"]]
  result = {}

  def probe():
    try:
      for host, port in targets:
        socket.create_connection((host, port), timeout=timeout).close()
      result["ok"] = True
    except Exception as e:  # pylint: disable=broad-except  # Reported, never raised.
      result["error"] = str(e) or type(e).__name__

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout)
  described = ", ".join(f"{h}:{p}" for h, p in targets)
  if result.get("ok"):
    return True, described
  return False, f"{described} unreachable ({result.get('error', 'timed out')})"
