"""Streamed inputs (ImageNet, large TFDS datasets): tf.data pipelines over TFDS, one shard per
process. Training batches are deterministic in (seed, step) and resumable; eval batches are padded.

The per-example training transforms are the `streamed` functions of the augmentation registry
(kd_jax/data/augmentations.py); `train_stream` takes one per view.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Callable, Iterator, Sequence

import numpy as np

from kd_jax.data import common
from kd_jax.data import sources
from kd_jax.data.common import CROP_AREA, CROP_ASPECT, DataError, IMAGENET_MEAN, IMAGENET_STD

_ATTEMPTS = 10
_CROP_FRACTION = 0.875     # Resize(256) + CenterCrop(224).
_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def train_stream(data_dir: str | None, *, transforms: Sequence[tuple[str, Callable]],
                 batch_size: int, seed: int, start_step: int = 0, image_size: int = 224,
                 process_index: int = 0, process_count: int = 1,
                 name: str = "imagenet2012", split: str = "train",
                 shuffle_buffer: int = 10_000,
                 crop_area: Sequence[float] = CROP_AREA,
                 crop_aspect: Sequence[float] = CROP_ASPECT,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> Iterator[dict]:
  """Endless per-process stream {'image': float32 [b,s,s,3] normalised, 'label': int32 [b]}.

  transforms: (view name, fn) per view, fn(image_bytes, seed, *, image_size, crop_area,
  crop_aspect) -> float32 pixels [s,s,3] in [0, 255] (the registry's `streamed` functions,
  kd_jax/data/augmentations.py). With one view 'image' is its array; with several it is
  {view name: array}, every view of the same examples, each with its own transform and seeds.
  Each epoch reads this process's shard (tfds.split_for_jax_process, remainder dropped) with a
  (seed, epoch)-seeded file and buffer shuffle and keeps N // batch_size full batches;
  per-example transforms use stateless seeds (seed, epoch, process, position[, view]). So the
  stream from start_step equals the unbroken stream with start_step batches skipped. Pixels are
  normalised as (x / 255 - mean) / std.
  """
  _check_positive(batch_size=batch_size, image_size=image_size,
                  process_count=process_count, shuffle_buffer=shuffle_buffer)
  if not transforms:
    raise DataError("transforms=(); accepted: one (view name, transform) per view.")
  crop_area, crop_aspect = common.check_crop_ranges(crop_area, crop_aspect)
  if start_step < 0:
    raise DataError(f"start_step={start_step}; accepted: a non-negative integer.")
  tfds = common.import_tfds()
  builder = _open_builder(name, data_dir, process_index, process_count)
  # Equal shares (remainder dropped) keep the processes' step counts in lockstep.
  subsplit = tfds.split_for_jax_process(split, process_index=process_index,
                                        process_count=process_count,
                                        drop_remainder=True)
  ds = _read(builder, subsplit, data_dir=data_dir, shuffle_seed=None)
  n = common.split_size(ds, f"dataset {name!r} split {subsplit}")
  spe = n // batch_size
  if spe == 0:
    raise DataError(f"batch_size={batch_size} exceeds the {n} examples of process "
                    f"{process_index}'s shard of {name!r} {split!r}; accepted: "
                    f"batch_size <= {n}.")

  def stream():
    epoch, skip_batches = divmod(start_step, spe)
    while True:
      epoch_ds = _train_epoch(builder, subsplit, data_dir=data_dir, seed=seed,
                              epoch=epoch, process_index=process_index,
                              steps=spe, skip_batches=skip_batches,
                              batch_size=batch_size, image_size=image_size,
                              shuffle_buffer=shuffle_buffer, crop_area=crop_area,
                              crop_aspect=crop_aspect, transforms=tuple(transforms),
                              mean=tuple(mean), std=tuple(std))
      yield from epoch_ds.as_numpy_iterator()
      epoch, skip_batches = epoch + 1, 0

  return stream()


def eval_stream(data_dir: str | None, *, batch_size: int, image_size: int = 224,
                  process_index: int = 0, process_count: int = 1,
                  name: str = "imagenet2012",
                  split: str = "validation",
                  mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD) -> Iterator[dict]:
  """This process's share of the split, each example once, in file order.

  Resize the shorter side to round(image_size / 0.875) (256 for 224), centre
  crop image_size, normalise. Yields {'image', 'label', 'mask'}; the last batch
  is padded (mask False), and every process yields the same number of batches
  (extra all-masked batches where its shard is shorter) so hosts stay in step.
  """
  _check_positive(batch_size=batch_size, image_size=image_size,
                  process_count=process_count)
  tf = common.import_tf()
  tfds = common.import_tfds()
  builder = _open_builder(name, data_dir, process_index, process_count)
  subsplit = tfds.even_splits(split, n=process_count)[process_index]  # Keeps remainder.
  full = _read(builder, split, data_dir=data_dir, shuffle_seed=None)
  total = common.split_size(full, f"dataset {name!r} split {split!r}")
  num_batches = math.ceil(math.ceil(total / process_count) / batch_size)
  ds = _read(builder, subsplit, data_dir=data_dir, shuffle_seed=None)
  resize = int(round(image_size / _CROP_FRACTION))

  def preprocess(ex):
    image = _decode_full(ex["image"])
    image = resize_shorter_center_crop(image, resize_size=resize, crop_size=image_size)
    return {"image": _normalize_tf(image, mean, std),
            "label": tf.cast(ex["label"], tf.int32)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
  shape = (batch_size, image_size, image_size, 3)

  def stream():
    emitted = 0
    for batch in ds.as_numpy_iterator():
      yield common.pad_batch(batch, batch_size)
      emitted += 1
    for _ in range(num_batches - emitted):
      yield {"image": np.zeros(shape, np.float32),
             "label": np.zeros((batch_size,), np.int32),
             "mask": np.zeros((batch_size,), bool)}

  return stream()


# ----------------------------------------------------------------------------- reading


def _check_positive(**values: int) -> None:
  for key, value in values.items():
    if not isinstance(value, (int, np.integer)) or value <= 0:
      raise DataError(f"{key}={value!r}; accepted: a positive integer.")


def _open_builder(name: str, data_dir: str | None, process_index: int,
                  process_count: int):
  """The TFDS builder, after checking that process_index is in range."""
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index={process_index} with process_count="
                    f"{process_count}; accepted: 0 <= process_index < process_count.")
  return sources.tfds_builder(name, data_dir)


def _read(builder, split, *, data_dir: str | None, shuffle_seed: int | None):
  """Raw records (image bytes undecoded), optionally file-shuffled with a seed."""
  tfds = common.import_tfds()
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
  # Ordered datasets (disable_shuffling) refuse file shuffling; the buffer shuffle remains.
  ordered = bool(getattr(builder.info, "disable_shuffling", False))
  ds = common.open_split(builder, split, shuffle_files=shuffle_seed is not None and not ordered,
                         read_config=read_config,
                         decoders={"image": tfds.decode.SkipDecoding()})
  if ds is None:
    raise DataError(_not_prepared_message(builder, data_dir))
  return ds


def _not_prepared_message(builder, data_dir: str | None) -> str:
  root = common.resolved_data_dir(data_dir)
  name = builder.name
  if name != "imagenet2012":
    return (f"TFDS dataset {name!r} is not prepared in data_dir {root!r} (looked for "
            f"{builder.data_dir}). Build it with\n"
            f"{common.prepare_commands(name, root)}A prepared copy elsewhere: "
            f"--config.data_dir=DIR.")
  manual = os.path.join(root, "downloads", "manual")
  present = [f for f in _MANUAL_FILES if os.path.exists(os.path.join(manual, f))]
  state = (f"found {present} there, so only the build step is missing" if present
           else "neither archive is there yet")
  return (
      f"ImageNet ('imagenet2012') is not prepared in data_dir {root!r} (looked for "
      f"{builder.data_dir}). It cannot be downloaded automatically: get "
      f"{' and '.join(_MANUAL_FILES)} from https://image-net.org (login required) "
      f"into the TFDS manual_dir {manual} ({state}), then run once (about 150 GB "
      "for the archives plus as much for the records; hours of CPU):\n"
      f"{common.prepare_commands(name, root, manual)}A prepared copy elsewhere: "
      f"--config.data_dir=DIR. See docs/data.md.")


def _seed_int(*parts: int) -> int:
  """A deterministic non-negative int63 from integer parts."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(
      1, np.uint64)[0] >> np.uint64(1))


def _train_epoch(builder, subsplit, *, data_dir, seed: int, epoch: int,
                 process_index: int, steps: int, skip_batches: int, batch_size: int,
                 image_size: int, shuffle_buffer: int, crop_area: Sequence[float],
                 crop_aspect: Sequence[float], transforms: Sequence[tuple[str, Callable]],
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
  """One epoch of augmented batches, with the first skip_batches skipped undecoded."""
  tf = common.import_tf()
  shuffle_seed = _seed_int(seed, epoch, 0)
  # The first view's seeds are those of a run with one view; view i > 0 has its own stream.
  view_seeds = [_seed_int(seed, epoch, process_index, 1, *([i] if i else []))
                for i in range(len(transforms))]
  ds = _read(builder, subsplit, data_dir=data_dir, shuffle_seed=shuffle_seed)
  ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
  ds = ds.take(steps * batch_size).enumerate()
  ds = ds.skip(skip_batches * batch_size)

  def preprocess(index, ex):
    images = {}
    for (view, transform), view_seed in zip(transforms, view_seeds):
      example_seed = tf.stack([tf.constant(view_seed, tf.int64), index])
      image = transform(ex["image"], example_seed, image_size=image_size,
                        crop_area=crop_area, crop_aspect=crop_aspect)
      images[view] = _normalize_tf(image, mean, std)
    (first,) = images.values() if len(images) == 1 else (images,)
    return {"image": first, "label": tf.cast(ex["label"], tf.int32)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- transforms
# fn(image_bytes, seed int64 [2], *, image_size, crop_area, crop_aspect) -> float32 [S, S, 3]
# pixels in [0, 255]: the `streamed` functions of the augmentation registry.


def plain(image_bytes, seed, *, image_size: int, crop_area, crop_aspect):
  """augment='none': the eval transform (resize the shorter side, centre crop); seed unused."""
  del seed, crop_area, crop_aspect
  return resize_shorter_center_crop(_decode_full(image_bytes),
                                    resize_size=int(round(image_size / _CROP_FRACTION)),
                                    crop_size=image_size)


def pad_crop_flip(image_bytes, seed, *, image_size: int, crop_area, crop_aspect):
  """Resize to image_size x image_size (if needed), pad PAD black pixels, random crop of
  image_size, horizontal flip p=0.5."""
  del crop_area, crop_aspect
  tf = common.import_tf()
  pad = common.PAD
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  image = tf.cast(_decode_full(image_bytes), tf.float32)
  same = tf.reduce_all(tf.shape(image)[:2] == image_size)
  image = tf.cond(same, lambda: image, lambda: tf.round(tf.image.resize(
      image, [image_size, image_size], method="bilinear", antialias=True)))
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  offset = tf.random.stateless_uniform([2], seed=crop_seed, minval=0, maxval=2 * pad + 1,
                                       dtype=tf.int32)
  image = image[offset[0]:offset[0] + image_size, offset[1]:offset[1] + image_size]
  image.set_shape([image_size, image_size, 3])
  flip = tf.random.stateless_uniform([], seed=flip_seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def random_resized_crop(image_bytes, seed, *, image_size: int, crop_area, crop_aspect):
  """RandomResizedCrop (area fraction ~ U(crop_area), log-uniform aspect ratio in crop_aspect;
  10 tries then a centre crop; only the window is decoded) to image_size, bilinear, + flip p=0.5."""
  tf = common.import_tf()
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  image = _decode_random_crop(image_bytes, crop_seed, crop_area, crop_aspect)
  image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
  flip = tf.random.stateless_uniform([], seed=flip_seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


# ----------------------------------------------------------------------------- image ops


def random_resized_crop_window(shape, seed, area_range: Sequence[float] = CROP_AREA,
                               aspect_range: Sequence[float] = CROP_ASPECT):
  """torchvision RandomResizedCrop box [y, x, h, w] (int32) for an image of `shape`.

  10 tries of area ~ U(area_range) * H * W and log-ratio ~ U(log aspect_range) (defaults
  0.08-1 and 3/4-4/3); the first that fits is placed uniformly; otherwise a ratio-clamped
  centre crop.
  """
  tf = common.import_tf()
  height = tf.cast(shape[0], tf.float32)
  width = tf.cast(shape[1], tf.float32)
  s_area, s_ratio, s_y, s_x = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=4))
  lo_ratio, hi_ratio = (float(v) for v in aspect_range)
  area = tf.random.stateless_uniform([_ATTEMPTS], seed=s_area, minval=float(area_range[0]),
                                     maxval=float(area_range[1])) * height * width
  log_ratio = tf.random.stateless_uniform([_ATTEMPTS], seed=s_ratio,
                                          minval=math.log(lo_ratio),
                                          maxval=math.log(hi_ratio))
  ratio = tf.exp(log_ratio)
  ws = tf.round(tf.sqrt(area * ratio))
  hs = tf.round(tf.sqrt(area / ratio))
  fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = tf.argmax(tf.cast(fits, tf.int32))
  # Fallback (no attempt fits): clamp the aspect ratio, centre the crop.
  in_ratio = width / height
  fb_w = tf.where(in_ratio < lo_ratio, width,
                  tf.where(in_ratio > hi_ratio, tf.round(height * hi_ratio), width))
  fb_h = tf.where(in_ratio < lo_ratio, tf.round(width / lo_ratio), height)
  any_fit = tf.reduce_any(fits)
  crop_h = tf.where(any_fit, tf.gather(hs, first), fb_h)
  crop_w = tf.where(any_fit, tf.gather(ws, first), fb_w)
  u_y = tf.random.stateless_uniform([], seed=s_y)
  u_x = tf.random.stateless_uniform([], seed=s_x)
  y = tf.where(any_fit, tf.floor(u_y * (height - crop_h + 1)),
               tf.floor((height - crop_h) / 2))
  x = tf.where(any_fit, tf.floor(u_x * (width - crop_w + 1)),
               tf.floor((width - crop_w) / 2))
  y = tf.minimum(y, height - crop_h)  # Guards u == 1.0 rounding.
  x = tf.minimum(x, width - crop_w)
  return tf.cast(tf.stack([y, x, crop_h, crop_w]), tf.int32)


def _decode_random_crop(image_bytes, seed, area_range, aspect_range):
  """Decodes only the random-resized-crop window (JPEG fast path, any format)."""
  tf = common.import_tf()
  window_of = functools.partial(random_resized_crop_window, seed=seed, area_range=area_range,
                                aspect_range=aspect_range)

  def jpeg():
    window = window_of(tf.io.extract_jpeg_shape(image_bytes))
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other():
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    y, x, h, w = tf.unstack(window_of(tf.shape(image)))
    return image[y:y + h, x:x + w]

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def _decode_full(image_bytes):
  tf = common.import_tf()
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def resize_shorter_center_crop(image, *, resize_size: int, crop_size: int):
  """torchvision Resize(resize_size) (shorter side, bilinear) + CenterCrop(crop_size)."""
  tf = common.import_tf()
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  short = tf.minimum(h, w)
  long_side = tf.cast(tf.maximum(h, w) * resize_size, tf.float32) / tf.cast(
      short, tf.float32)
  long_side = tf.cast(tf.floor(long_side + 1e-4), tf.int32)  # int() as in torchvision.
  new_h = tf.where(h <= w, resize_size, long_side)
  new_w = tf.where(h <= w, long_side, resize_size)
  image = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear",
                          antialias=True)
  top = tf.cast(tf.round(tf.cast(new_h - crop_size, tf.float32) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(new_w - crop_size, tf.float32) / 2.0), tf.int32)
  image = image[top:top + crop_size, left:left + crop_size]
  image.set_shape([crop_size, crop_size, 3])
  return image


def _normalize_tf(image, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD):
  """float pixels in [0, 255] -> (x / 255 - mean) / std, float32."""
  tf = common.import_tf()
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


# ----------------------------------------------------------------------------- test helper


def build_fake_imagenet(data_dir: str, *, name: str = "fake_imagenet",
                        num_train: int = 48, num_validation: int = 20,
                        num_classes: int | None = None, min_size: int = 20,
                        max_size: int = 64, noise: int = 0, seed: int = 0) -> str:
  """Writes a tiny ImageNet-like TFDS dataset (JPEG images, 'train'/'validation').

  Example i of a split has label i % num_classes (default: one class per train
  example, so labels identify examples) and a constant colour derived from i
  (plus uniform noise in [-noise, noise], e.g. to make JPEG decoding cost
  realistic in benchmarks), with random height/width in [min_size, max_size].
  Examples are generated lazily. Returns data_dir; read it with name=name.
  """
  tfds = common.import_tfds()
  num_classes = num_classes or max(num_train, num_validation)

  def examples(split: str, n: int, stream: int):
    rng = np.random.default_rng([seed, stream])
    for i in range(n):
      h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
      colour = np.array([(37 * i + 11) % 256, (91 * i + 50) % 256, (53 * i + 200) % 256])
      image = np.broadcast_to(colour, (h, w, 3))
      if noise:
        image = image + rng.integers(-noise, noise + 1, size=(h, w, 3))
      yield (f"{split}_{i}", {"image": np.clip(image, 0, 255).astype(np.uint8),
                              "label": i % num_classes,
                              "file_name": f"{split}_{i:05d}.JPEG"})

  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=num_classes),
      "file_name": tfds.features.Text(),
  })
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version="1.0.0", features=features, data_dir=data_dir,
      split_datasets={"train": examples("train", num_train, 0),
                      "validation": examples("validation", num_validation, 1)},
      disable_shuffling=False)
  return data_dir


def stream_steps_per_epoch(data_dir: str | None, *, global_batch_size: int,
                             process_count: int = 1, name: str = "imagenet2012",
                             split: str = "train") -> int:
  """Training steps per epoch of `train_stream` streams: shard size // per-process batch.

  Raises DataError (with the preparation instructions) when the dataset is not prepared.
  """
  tfds = common.import_tfds()
  builder = _open_builder(name, data_dir, 0, process_count)
  subsplit = tfds.split_for_jax_process(split, process_index=0, process_count=process_count,
                                        drop_remainder=True)
  ds = _read(builder, subsplit, data_dir=data_dir, shuffle_seed=None)
  n = common.split_size(ds, f"dataset {name!r} split {subsplit}")
  per_process = global_batch_size // process_count
  if n < per_process:
    raise DataError(f"batch_size={global_batch_size} exceeds the {n * process_count} "
                    f"examples of {name!r} {split!r}")
  return n // per_process
