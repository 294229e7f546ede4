"""The training augmentations: one record per name, read by every part that needs to know one.

Config validation, the in-memory step (JAX, on device), the streamed pipeline (tf.data) and the
teacher-logit table all read `REGISTRY`; no other list of augmentation names exists. A record
says what the augmentation does, how it runs on each pipeline, and how many distinct views it
makes of one image (finite: the teacher table can hold the teacher's logits on every one).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from kd_jax.data import common
from kd_jax.data import in_memory
from kd_jax.data import randaugment
from kd_jax.data import streamed
from kd_jax.data.common import DataError

AUTO = "auto"   # config.augment: the pipeline's own default (Augmentation.default_for)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """One training augmentation.

  in_memory(rng, uint8 [B,H,W,3], *, crop_area, crop_aspect) -> (pixels [B,H,W,3] in [0, 255],
      view number int32 [B] in [0, num_views) or None): the JAX transform of data held in memory.
  streamed(image_bytes, seed int64 [2], *, image_size, crop_area, crop_aspect) -> float32
      pixels [S,S,3] in [0, 255]: the tf.data transform of streamed data (None: not offered).
  num_views: the number of distinct views of one image, or None when it is not finite.
  view(uint8 [B,H,W,3], v) -> pixels [B,H,W,3]: view number v (traced) of every image, the
      inverse of in_memory's view numbers (finite augmentations; the teacher table's build).
  """
  name: str
  description: str
  in_memory: Callable[..., tuple[Any, Optional[Any]]]
  streamed: Optional[Callable[..., Any]]
  num_views: Optional[int]
  view: Optional[Callable[[Any, Any], Any]] = None
  # '' when the streamed transform can run here, else why not (checked before a batch is read)
  streamed_missing: Callable[[], str] = lambda: ""


def _pad_crop_flip(rng, images, *, crop_area, crop_aspect):
  del crop_area, crop_aspect
  offsets, flips = in_memory.cifar_augment_params(rng, images.shape[0])
  return (in_memory.crop_and_flip(images, offsets, flips),
          in_memory.cifar_view_index(offsets, flips))


def _pad_crop_flip_view(images, view):
  side = 2 * in_memory.PAD + 1
  crop, flip = view // 2, view % 2
  b = images.shape[0]
  offsets = jnp.broadcast_to(jnp.stack([crop // side, crop % side]).astype(jnp.int32), (b, 2))
  return in_memory.crop_and_flip(images, offsets, jnp.broadcast_to(flip == 1, (b,)))


def _random_resized_crop(rng, images, *, crop_area, crop_aspect):
  return in_memory.random_resized_crop_flip(rng, images, crop_area=crop_area,
                                            crop_aspect=crop_aspect), None


def _none(rng, images, *, crop_area, crop_aspect):
  del rng, crop_area, crop_aspect
  return images, jnp.zeros((images.shape[0],), jnp.int32)


def _randaugment(rng, images, *, crop_area, crop_aspect):
  del crop_area, crop_aspect
  k_crop, k_policy = jax.random.split(rng)
  offsets, flips = in_memory.cifar_augment_params(k_crop, images.shape[0])
  cropped = in_memory.crop_and_flip(images, offsets, flips)
  return randaugment.rand_augment_batch(k_policy, cropped), None


def _streamed_randaugment(image_bytes, seed, *, image_size, crop_area, crop_aspect):
  """Streamed pad-crop-flip, then RandAugment(2, 10) and Cutout on its uint8 pixels."""
  tf = common.import_tf()
  missing = _no_tf_strong_view()
  if missing:
    raise DataError(missing)
  crop_seed, policy_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  image = streamed.pad_crop_flip(image_bytes, crop_seed, image_size=image_size,
                                 crop_area=crop_area, crop_aspect=crop_aspect)
  image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
  out = randaugment.tf_strong_view(image, policy_seed)
  out.set_shape([image_size, image_size, 3])
  return tf.cast(out, tf.float32)


def _no_tf_strong_view() -> str:
  if getattr(randaugment, "tf_strong_view", None) is not None:
    return ""
  return ("augment='randaugment' for streamed data needs kd_jax.data.randaugment.tf_strong_view, "
          "which this version lacks; accepted: a dataset held in memory (docs/data.md)")


REGISTRY: dict[str, Augmentation] = {a.name: a for a in (
    Augmentation(
        "pad_crop_flip", "zero-pad 4 black pixels, random crop back to the size, horizontal "
        "flip p=0.5 (CIFAR's RandomCrop(32, padding=4) + RandomHorizontalFlip)",
        _pad_crop_flip, streamed.pad_crop_flip, (2 * in_memory.PAD + 1) ** 2 * 2,
        _pad_crop_flip_view),
    Augmentation(
        "random_resized_crop", "torchvision RandomResizedCrop (config.crop_area, "
        "config.crop_aspect) back to the size + horizontal flip p=0.5",
        _random_resized_crop, streamed.random_resized_crop, None),
    Augmentation(
        "none", "no crop and no flip, only normalisation (streamed: the eval transform, "
        "resize the shorter side and centre crop)",
        _none, streamed.plain, 1, lambda images, view: images),
    Augmentation(
        "randaugment", "pad_crop_flip, then MLKD's RandAugment(2, 10) with random magnitudes "
        "and Cutout (kd_jax.data.randaugment)",
        _randaugment, _streamed_randaugment, None, streamed_missing=_no_tf_strong_view),
)}

# What config.augment accepts: 'auto' (pad_crop_flip in memory, random_resized_crop streamed),
# then every registered augmentation.
AUGMENTATIONS = (AUTO,) + tuple(REGISTRY)


def resolve_augment(augment: str, in_memory_data: bool) -> str:
  """The augmentation that runs: 'auto' becomes pad_crop_flip in memory, else random_resized_crop.

  Every other name runs as given, in memory (JAX) and streamed (tf.data) alike.
  """
  if augment not in AUGMENTATIONS:
    raise DataError(f"augment={augment!r}; accepted: {', '.join(AUGMENTATIONS)}.")
  if augment == AUTO:
    return "pad_crop_flip" if in_memory_data else "random_resized_crop"
  return augment


def get(name: str, *, streamed_data: bool = False) -> Augmentation:
  """The record of a resolved augmentation name, or DataError naming the accepted ones."""
  record = REGISTRY.get(name)
  if record is None or (streamed_data and record.streamed is None):
    where = "streamed data" if streamed_data else "data held in memory"
    accepted = [n for n, a in REGISTRY.items() if not streamed_data or a.streamed is not None]
    raise DataError(f"augment={name!r} for {where}; accepted: {', '.join(accepted)}.")
  if streamed_data and record.streamed_missing():
    raise DataError(record.streamed_missing())
  return record


def num_views(name: str) -> Optional[int]:
  """How many distinct views augmentation `name` makes of one image (None: not finite)."""
  return get(name).num_views


def finite_names() -> tuple[str, ...]:
  """The augmentations with a finite set of views (the teacher table can serve them)."""
  return tuple(n for n, a in REGISTRY.items() if a.num_views is not None)


def view_augments(run_augment: str, own: Sequence[str], in_memory_data: bool) -> tuple[str, ...]:
  """The resolved augmentation of each view: its own (`own[i]`, '' = the run's), the run's
  resolved `run_augment` otherwise, and 'none' for every view when the run's is 'none'."""
  run = resolve_augment(run_augment, in_memory_data)
  if run == "none":
    return ("none",) * len(own)
  return tuple(resolve_augment(a, in_memory_data) if a else run for a in own)


def augment_batch(rng: Any, images_uint8: Any, *, augment: str,
                  mean: Sequence[float] = common.CIFAR_MEAN,
                  std: Sequence[float] = common.CIFAR_STD,
                  crop_area: Sequence[float] = common.CROP_AREA,
                  crop_aspect: Sequence[float] = common.CROP_ASPECT) -> jnp.ndarray:
  """The in-memory training transform `augment`, then (x / 255 - mean) / std; float32 [B,H,W,3].

  See REGISTRY for what each name does; 'none' leaves rng unused.
  """
  return augment_with_views(rng, images_uint8, augment=augment, mean=mean, std=std,
                            crop_area=crop_area, crop_aspect=crop_aspect)[0]


def augment_with_views(rng: Any, images_uint8: Any, *, augment: str, mean: Sequence[float],
                       std: Sequence[float], crop_area: Sequence[float] = common.CROP_AREA,
                       crop_aspect: Sequence[float] = common.CROP_ASPECT):
  """(augment_batch's images, each image's view number int32 [B] or None when not finite)."""
  pixels, view = get(augment).in_memory(rng, images_uint8, crop_area=tuple(crop_area),
                                        crop_aspect=tuple(crop_aspect))
  return common.normalize(pixels, mean, std), view
