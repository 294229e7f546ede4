"""Data held in memory: whole splits (CIFAR, synthetic, image folders, small TFDS datasets) as
uint8 arrays, batch selection and the augmentations' JAX transforms.

Batches are a pure function of (seed, step), so training resumes exactly; no host work per step.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.data import common
from kd_jax.data import sources
from kd_jax.data.common import CIFAR_MEAN, CIFAR_STD, CROP_AREA, CROP_ASPECT, DataError
from kd_jax.data.common import InMemoryData, PAD

# Synthetic stand-in: split -> (default size, seed); 100 classes of 32x32x3.
_SYNTH_SPLITS = {"train": (50_000, 1), "test": (10_000, 2)}
_SYNTH_CLASSES = 100
_SYNTH_CHUNK = 1000
# Folded into the seed so the epoch permutation stream differs from any
# augmentation stream the trainer derives from the same seed.
_PERMUTATION_STREAM = 0x0DA7A


def load_in_memory(name: str, split: str, *, data_dir: str | None = None,
                   num_examples: int | None = None, download: bool = True,
                   image_size: int = 0, skip_unreadable: bool = False) -> InMemoryData:
  """Loads a whole split as uint8 images [N,H,W,3] and int32 labels [N].

  name: 'synthetic' (offline, deterministic per split), 'imagefolder:PATH' (see
  sources.load_imagefolder) or a TFDS dataset with 'image' and 'label' features such as
  'cifar100' (prepared in data_dir or downloaded). num_examples caps N. image_size > 0
  resizes every image of another size to image_size x image_size (bilinear, antialiased);
  0 keeps the images' own size. skip_unreadable (image folders): leave out files that cannot
  be decoded instead of raising DataError.
  """
  if num_examples is not None and num_examples <= 0:
    raise DataError(f"num_examples={num_examples}; accepted: None or a positive integer.")
  if not isinstance(image_size, (int, np.integer)) or image_size < 0:
    raise DataError(f"image_size={image_size!r}; accepted: 0 (the images' own size) or a "
                    "positive integer.")
  root = sources.imagefolder_root(name)
  if root is not None:
    return sources.load_imagefolder(root, split, image_size=int(image_size),
                                    num_examples=num_examples, skip_unreadable=skip_unreadable)
  if name == "synthetic":
    images, labels, num_classes = _synthetic(split, num_examples)
    if image_size and images.shape[1:3] != (image_size, image_size):
      images = np.stack([sources.resize_uint8(im, int(image_size)) for im in images])
  else:
    sources.check_dataset_name(name)
    images, labels, num_classes = _load_tfds(name, split, data_dir=data_dir,
                                             num_examples=num_examples,
                                             download=download, image_size=int(image_size))
  common.check_arrays(name, split, images, labels, num_classes)
  return InMemoryData(images=images, labels=labels.astype(np.int32),
                      num_classes=num_classes)


def _synthetic_colors() -> np.ndarray:
  """One colour per class, float32 [100, 1, 1, 3] uniform in [-1, 1] per channel."""
  rng = np.random.default_rng(0)
  return rng.uniform(-1.0, 1.0, size=(_SYNTH_CLASSES, 1, 1, 3)).astype(np.float32)


def _synthetic(split: str, num_examples: int | None):
  """CIFAR-shaped data: a flat class colour + weak Gaussian noise; prefix-stable in num_examples.

  The class signal (the colour) survives the random crop and flip, so a small student learns
  it within the smoke run's 60 steps (about 9% top-1 on 100 classes against 1% chance);
  the noise keeps every image distinct.
  """
  if split not in _SYNTH_SPLITS:
    raise DataError(f"dataset 'synthetic': unknown split {split!r}; accepted: "
                    f"{list(_SYNTH_SPLITS)}.")
  default_n, split_seed = _SYNTH_SPLITS[split]
  n = default_n if num_examples is None else min(num_examples, default_n)
  colors = _synthetic_colors()
  images, labels = [], []
  for chunk, start in enumerate(range(0, n, _SYNTH_CHUNK)):
    m = min(_SYNTH_CHUNK, n - start)
    rng = np.random.default_rng([split_seed, chunk])
    lab = (rng.permutation(_SYNTH_CHUNK) % _SYNTH_CLASSES)[:m]
    noise = rng.standard_normal((m, 32, 32, 3), dtype=np.float32)
    img = 128.0 + 100.0 * colors[lab] + 8.0 * noise
    images.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    labels.append(lab.astype(np.int32))
  return np.concatenate(images), np.concatenate(labels), _SYNTH_CLASSES


def _load_tfds(name: str, split: str, *, data_dir: str | None,
               num_examples: int | None, download: bool, image_size: int = 0):
  """Reads a TFDS image-classification split fully into numpy arrays."""
  tfds = common.import_tfds()
  tf = common.import_tf()
  builder = sources.tfds_builder(name, data_dir)
  ds = common.open_split(builder, split)
  if ds is None:
    _prepare(builder, name, data_dir=data_dir, download=download)
    ds = common.open_split(builder, split)
    if ds is None:
      raise DataError(_not_prepared_message(
          name, data_dir, builder, "download_and_prepare() left no data behind"))
  layout = sources.tfds_layout(name, data_dir, split)
  if image_size:
    def resize(image):
      same = tf.reduce_all(tf.shape(image)[:2] == image_size)
      return tf.cond(same, lambda: image, lambda: tf.cast(tf.clip_by_value(tf.round(
          tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size],
                          method="bilinear", antialias=True)), 0, 255), tf.uint8))
    ds = ds.map(lambda ex: (resize(ex["image"]), ex["label"]))
  elif layout.image_shape is None:
    raise DataError(f"TFDS dataset {name!r} has images of varying size and image_size=0; "
                    "accepted: image_size > 0 (every image is resized to it).")
  else:
    ds = ds.map(lambda ex: (ex["image"], ex["label"]))
  if num_examples is not None:
    ds = ds.take(num_examples)
  images, labels = [], []
  for im, lb in tfds.as_numpy(ds.batch(5000)):
    images.append(im)
    labels.append(lb)
  if not images:
    raise DataError(f"dataset {name!r} split {split!r} is empty; accepted: a "
                    "split with at least one example.")
  return np.concatenate(images), np.concatenate(labels), layout.num_classes


def prepare_tfds(name: str, *, data_dir: str | None, download: bool = True) -> None:
  """Makes sure TFDS dataset `name` is prepared: downloads it if allowed and reachable,
  else raises DataError saying how to prepare it."""
  builder = sources.tfds_builder(name, data_dir)
  if common.open_split(builder, "train") is None:
    _prepare(builder, name, data_dir=data_dir, download=download)


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
      f"then copy {root}/{name} here, or point the run at a prepared copy with "
      f"--config.data_dir=DIR (the directory holding {name}/). Without the data, "
      f"--config.dataset=synthetic runs the pipeline offline (configs/smoke.py). "
      f"See docs/data.md.")


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


def cifar_augment_params(rng: Any, batch_size: int, *, padding: int = PAD):
  """Per-example crop offsets int32 [B, 2] in [0, 2*padding] and flips bool [B]."""
  k_off, k_flip = jax.random.split(rng)
  offsets = jax.random.randint(k_off, (batch_size, 2), 0, 2 * padding + 1, jnp.int32)
  flips = jax.random.bernoulli(k_flip, 0.5, (batch_size,))
  return offsets, flips


def cifar_view_index(offsets: Any, flips: Any, *, padding: int = PAD) -> jnp.ndarray:
  """The view number int32 [B] in [0, (2p+1)^2 * 2) of crop offsets [B, 2] and flips [B].

  view = (dy * (2p+1) + dx) * 2 + flip; `cifar_view_params` is its inverse.
  """
  offsets = jnp.asarray(offsets, jnp.int32)
  side = 2 * padding + 1
  return (offsets[:, 0] * side + offsets[:, 1]) * 2 + jnp.asarray(flips).astype(jnp.int32)


def cifar_view_params(view: int, *, padding: int = PAD) -> tuple[tuple[int, int], bool]:
  """((dy, dx), flip) of view number `view` (the inverse of `cifar_view_index`)."""
  side = 2 * padding + 1
  crop, flip = divmod(int(view), 2)
  return divmod(crop, side), bool(flip)


def crop_and_flip(images_uint8: Any, offsets: Any, flips: Any, *,
                  padding: int = PAD) -> jnp.ndarray:
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
                  std: Sequence[float] = CIFAR_STD, padding: int = PAD) -> jnp.ndarray:
  """RandomCrop(32, padding=4) + RandomHorizontalFlip(0.5) + Normalize, in JAX.

  Padding is applied to the raw uint8 image (black), before normalising, so the
  border becomes -mean/std as in torchvision. Returns float32 [B,H,W,3].
  """
  offsets, flips = cifar_augment_params(rng, images_uint8.shape[0], padding=padding)
  return common.normalize(crop_and_flip(images_uint8, offsets, flips, padding=padding),
                          mean, std)


_RRC_ATTEMPTS = 10


def random_resized_crop_boxes(rng: Any, batch_size: int, height: int, width: int, *,
                              area_range: Sequence[float] = CROP_AREA,
                              aspect_range: Sequence[float] = CROP_ASPECT) -> jnp.ndarray:
  """torchvision RandomResizedCrop boxes, float32 [B, 4] = (y, x, h, w), in JAX.

  Per example: 10 tries of area ~ U(area_range) * H * W and log(w / h) ~ U(log aspect_range);
  the first box that fits is placed uniformly; if none fits, a ratio-clamped centre crop.
  """
  lo_r, hi_r = (float(v) for v in aspect_range)
  h_img, w_img = float(height), float(width)

  def one(key):
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, (_RRC_ATTEMPTS,), minval=float(area_range[0]),
                              maxval=float(area_range[1])) * h_img * w_img
    ratio = jnp.exp(jax.random.uniform(k_ratio, (_RRC_ATTEMPTS,), minval=np.log(lo_r),
                                       maxval=np.log(hi_r)))
    ws, hs = jnp.round(jnp.sqrt(area * ratio)), jnp.round(jnp.sqrt(area / ratio))
    fits = (ws > 0) & (ws <= w_img) & (hs > 0) & (hs <= h_img)
    first = jnp.argmax(fits)
    any_fit = jnp.any(fits)
    in_ratio = w_img / h_img
    fb_w = w_img if in_ratio <= hi_r else float(round(h_img * hi_r))
    fb_h = float(round(w_img / lo_r)) if in_ratio < lo_r else h_img
    ch = jnp.where(any_fit, hs[first], fb_h)
    cw = jnp.where(any_fit, ws[first], fb_w)
    y = jnp.where(any_fit, jnp.floor(jax.random.uniform(k_y) * (h_img - ch + 1)),
                  jnp.floor((h_img - ch) / 2))
    x = jnp.where(any_fit, jnp.floor(jax.random.uniform(k_x) * (w_img - cw + 1)),
                  jnp.floor((w_img - cw) / 2))
    return jnp.stack([jnp.minimum(y, h_img - ch), jnp.minimum(x, w_img - cw), ch, cw])

  return jax.vmap(one)(jax.random.split(rng, batch_size)).astype(jnp.float32)


def resized_crop(images: Any, boxes: Any) -> jnp.ndarray:
  """Crops box (y, x, h, w) of each image and resizes it to the image's own H x W.

  Bilinear with antialiasing (jax.image.scale_and_translate); float32 pixel values.
  """
  images = jnp.asarray(images).astype(jnp.float32)
  _, h, w, c = images.shape

  def one(image, box):
    y, x, bh, bw = box[0], box[1], box[2], box[3]
    scale = jnp.stack([h / bh, w / bw])
    return jax.image.scale_and_translate(image, (h, w, c), (0, 1), scale,
                                         -jnp.stack([y, x]) * scale, method="linear",
                                         antialias=True)

  return jax.vmap(one)(images, jnp.asarray(boxes, jnp.float32))


def random_resized_crop_flip(rng: Any, images_uint8: Any, *,
                             crop_area: Sequence[float] = CROP_AREA,
                             crop_aspect: Sequence[float] = CROP_ASPECT) -> jnp.ndarray:
  """RandomResizedCrop(crop_area, crop_aspect) back to the image size + flip p=0.5, in JAX;
  float32 pixel values [B,H,W,3]."""
  images = jnp.asarray(images_uint8)
  b, h, w, _ = images.shape
  k_box, k_flip = jax.random.split(rng)
  boxes = random_resized_crop_boxes(k_box, b, h, w, area_range=crop_area,
                                    aspect_range=crop_aspect)
  out = resized_crop(images, boxes)
  flips = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)
