"""CIFAR inputs: whole splits in memory, batch selection and augmentation in JAX.

Batches are a pure function of (seed, step), so training resumes exactly; no host work per step.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.data import common
from kd_jax.data.common import DataError, InMemoryData

CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)

# name -> label key, for the TFDS datasets loaded whole into memory.
_TFDS_IN_MEMORY = {"cifar100": "label", "cifar10": "label"}
ACCEPTED_NAMES = ("cifar100", "cifar10", "synthetic")

# Synthetic stand-in: split -> (default size, seed); 100 classes of 32x32x3.
_SYNTH_SPLITS = {"train": (50_000, 1), "test": (10_000, 2)}
_SYNTH_CLASSES = 100
_SYNTH_CHUNK = 1000
# Folded into the seed so the epoch permutation stream differs from any
# augmentation stream the trainer derives from the same seed.
_PERMUTATION_STREAM = 0x0DA7A


def load_in_memory(name: str, split: str, *, data_dir: str | None = None,
                   num_examples: int | None = None,
                   download: bool = True) -> InMemoryData:
  """Loads a whole split as uint8 images [N,H,W,3] and int32 labels [N].

  name: 'cifar100' or 'cifar10' (TFDS, prepared in data_dir or downloaded) or
  'synthetic' (offline, deterministic per split). num_examples caps N.
  """
  if num_examples is not None and num_examples <= 0:
    raise DataError(f"num_examples={num_examples}; accepted: None or a positive integer.")
  if name == "synthetic":
    images, labels, num_classes = _synthetic(split, num_examples)
  elif name in _TFDS_IN_MEMORY:
    images, labels, num_classes = _load_tfds(name, split, data_dir=data_dir,
                                             num_examples=num_examples,
                                             download=download)
  else:
    raise DataError(f"unknown in-memory dataset {name!r}; accepted: {list(ACCEPTED_NAMES)}.")
  common.check_arrays(name, split, images, labels, num_classes)
  return InMemoryData(images=images, labels=labels.astype(np.int32),
                      num_classes=num_classes)


def _synthetic_prototypes() -> np.ndarray:
  """One smooth random pattern per class, float32 [100, 32, 32, 3] in about [-1, 1]."""
  rng = np.random.default_rng(0)
  coarse = rng.uniform(-1.0, 1.0, size=(_SYNTH_CLASSES, 4, 4, 3)).astype(np.float32)
  return np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)


def _synthetic(split: str, num_examples: int | None):
  """CIFAR-shaped data: class pattern + Gaussian noise; prefix-stable in num_examples."""
  if split not in _SYNTH_SPLITS:
    raise DataError(f"dataset 'synthetic': unknown split {split!r}; accepted: "
                    f"{list(_SYNTH_SPLITS)}.")
  default_n, split_seed = _SYNTH_SPLITS[split]
  n = default_n if num_examples is None else min(num_examples, default_n)
  protos = _synthetic_prototypes()
  images, labels = [], []
  for chunk, start in enumerate(range(0, n, _SYNTH_CHUNK)):
    m = min(_SYNTH_CHUNK, n - start)
    rng = np.random.default_rng([split_seed, chunk])
    lab = (rng.permutation(_SYNTH_CHUNK) % _SYNTH_CLASSES)[:m]
    noise = rng.standard_normal((m, 32, 32, 3), dtype=np.float32)
    img = 128.0 + 56.0 * protos[lab] + 48.0 * noise
    images.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    labels.append(lab.astype(np.int32))
  return np.concatenate(images), np.concatenate(labels), _SYNTH_CLASSES


def _load_tfds(name: str, split: str, *, data_dir: str | None,
               num_examples: int | None, download: bool):
  """Reads a TFDS image-classification split fully into numpy arrays."""
  tfds = common.import_tfds()
  builder = common.tfds_builder(name, data_dir)
  ds = common.open_split(builder, split)
  if ds is None:
    _prepare(builder, name, data_dir=data_dir, download=download)
    ds = common.open_split(builder, split)
    if ds is None:
      raise DataError(_not_prepared_message(
          name, data_dir, builder, "download_and_prepare() left no data behind"))
  label_key = _TFDS_IN_MEMORY[name]
  ds = ds.map(lambda ex: (ex["image"], ex[label_key]))
  if num_examples is not None:
    ds = ds.take(num_examples)
  images, labels = [], []
  for im, lb in tfds.as_numpy(ds.batch(5000)):
    images.append(im)
    labels.append(lb)
  if not images:
    raise DataError(f"dataset {name!r} split {split!r} is empty; accepted: a "
                    "split with at least one example.")
  num_classes = int(builder.info.features[label_key].num_classes)
  return np.concatenate(images), np.concatenate(labels), num_classes


def _prepare(builder, name: str, *, data_dir: str | None, download: bool) -> None:
  """Downloads and prepares a missing dataset, or raises DataError quickly."""
  if not download:
    raise DataError(_not_prepared_message(name, data_dir, builder, "download=False"))
  ok, probed = common.network_reachable(getattr(builder, "url_infos", None) or {})
  if not ok:
    raise DataError(_not_prepared_message(
        name, data_dir, builder, f"it cannot be downloaded: {probed}"))
  try:
    builder.download_and_prepare()
  except Exception as e:  # Network, disk, checksum: one message, no traceback wall.
    raise DataError(_not_prepared_message(
        name, data_dir, builder, f"the download failed: {type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}")) from None


def _not_prepared_message(name: str, data_dir: str | None, builder, reason: str) -> str:
  root = common.resolved_data_dir(data_dir)
  return (
      f"TFDS dataset {name!r} is not prepared in data_dir {root!r} (looked for "
      f"{builder.data_dir}) and {reason}. Prepare it once on a machine with "
      f"network access:\n{common.prepare_commands(name, root)}"
      f"(or run once with download=True and network), then copy {root}/{name} "
      "here. For an offline smoke test use name='synthetic'.")


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Training steps per epoch with the remainder dropped (N // batch_size)."""
  if batch_size <= 0 or num_examples < batch_size:
    raise DataError(f"batch_size={batch_size} with {num_examples} examples; accepted: "
                    f"1 <= batch_size <= {num_examples}.")
  return num_examples // batch_size


def cifar_batch_indices(num_examples: int, *, seed: Any, step: Any,
                        batch_size: int) -> jnp.ndarray:
  """Indices int32 [B] into the split of the examples of `step`'s global batch.

  A (seed, epoch)-seeded permutation, sliced; epoch = step // (N // batch_size) and the
  remainder of each epoch is dropped. jit-able with traced `step` and `seed`.
  """
  spe = steps_per_epoch(num_examples, batch_size)
  step = jnp.asarray(step, jnp.int32)
  epoch, pos = step // spe, step % spe
  key = jax.random.fold_in(jax.random.key(seed), _PERMUTATION_STREAM)
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  return jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)


def cifar_train_batch(images: Any, labels: Any, *, seed: Any, step: Any,
                      batch_size: int):
  """The global batch for `step` (examples `cifar_batch_indices`).

  jit-able with traced `step` and `seed`; returns (uint8 [B,H,W,3], labels [B]).
  """
  idx = cifar_batch_indices(images.shape[0], seed=seed, step=step, batch_size=batch_size)
  return jnp.take(images, idx, axis=0), jnp.take(labels, idx, axis=0)


def cifar_augment_params(rng: Any, batch_size: int, *, padding: int = 4):
  """Per-example crop offsets int32 [B, 2] in [0, 2*padding] and flips bool [B]."""
  k_off, k_flip = jax.random.split(rng)
  offsets = jax.random.randint(k_off, (batch_size, 2), 0, 2 * padding + 1, jnp.int32)
  flips = jax.random.bernoulli(k_flip, 0.5, (batch_size,))
  return offsets, flips


def cifar_num_views(augment: str, *, padding: int = 4) -> int:
  """How many distinct views `augment` makes of one image: (2p+1)^2 crops x 2 flips, or 1."""
  if augment == "none":
    return 1
  if augment == "pad_crop_flip":
    return (2 * padding + 1) ** 2 * 2
  raise DataError(f"augmentation {augment!r} has no finite set of views; accepted: "
                  "'pad_crop_flip', 'none'.")


def cifar_view_index(offsets: Any, flips: Any, *, padding: int = 4) -> jnp.ndarray:
  """The view number int32 [B] in [0, cifar_num_views) of crop offsets [B, 2] and flips [B].

  view = (dy * (2p+1) + dx) * 2 + flip; `cifar_view_params` is its inverse.
  """
  offsets = jnp.asarray(offsets, jnp.int32)
  side = 2 * padding + 1
  return (offsets[:, 0] * side + offsets[:, 1]) * 2 + jnp.asarray(flips).astype(jnp.int32)


def cifar_view_params(view: int, *, padding: int = 4) -> tuple[tuple[int, int], bool]:
  """((dy, dx), flip) of view number `view` (the inverse of `cifar_view_index`)."""
  side = 2 * padding + 1
  crop, flip = divmod(int(view), 2)
  return divmod(crop, side), bool(flip)


def crop_and_flip(images_uint8: Any, offsets: Any, flips: Any, *,
                  padding: int = 4) -> jnp.ndarray:
  """Zero-pads raw pixels (black), crops HxW at (dy, dx) per example, mirrors where flips."""
  images = jnp.asarray(images_uint8)
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

  cropped = jax.vmap(crop)(padded, jnp.asarray(offsets, jnp.int32))
  return jnp.where(jnp.asarray(flips)[:, None, None, None], cropped[:, :, ::-1, :],
                   cropped)


def augment_cifar(rng: Any, images_uint8: Any, *, mean: Sequence[float] = CIFAR_MEAN,
                  std: Sequence[float] = CIFAR_STD, padding: int = 4) -> jnp.ndarray:
  """RandomCrop(32, padding=4) + RandomHorizontalFlip(0.5) + Normalize, in JAX.

  Padding is applied to the raw uint8 image (black), before normalising, so the
  border becomes -mean/std as in torchvision. Returns float32 [B,H,W,3].
  """
  offsets, flips = cifar_augment_params(rng, images_uint8.shape[0], padding=padding)
  return common.normalize(crop_and_flip(images_uint8, offsets, flips, padding=padding),
                          mean, std)
