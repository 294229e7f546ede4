"""A run's data: `pipeline(config, mesh)` plans, loads and hands the loop everything it reads.

In memory (the presets held in memory, image folders, TFDS data within
config.in_memory_budget_mb): the uint8 training split lies replicated on the devices and the step
draws and augments its batch there (kd_jax/train/step.py). Streamed (ImageNet, larger TFDS
data): each process reads its shard through tf.data, one augmented array per view of the run.
Evaluation batches are padded and masked either way; `device_batch` is the in-memory batch
of every view that the step draws on device. See docs/data.md.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax import console
from kd_jax.data import augmentations
from kd_jax.data import common
from kd_jax.data import in_memory as in_memory_lib
from kd_jax.data import sources
from kd_jax.data import streamed
from kd_jax.errors import ConfigError


@dataclasses.dataclass
class Pipeline:
  """What the loop reads of a run's data (`pipeline`)."""
  in_memory: bool
  steps_per_epoch: int
  # In memory: (images uint8 [N,H,W,3], labels int32 [N]) replicated global arrays; streamed:
  # open(start_step) -> this process's iterator of host batches (`train_stream`).
  train: Any
  eval_iter: Callable[[], Iterator[dict]]     # a fresh iterator of padded host batches
  mean: tuple
  std: tuple
  image_size: int = 32             # the models' input height = width
  augment: str = "pad_crop_flip"   # the run's resolved augmentation (a registry name)
  eval_batches: Any = None         # batches per evaluation, if known (progress display)
  num_classes: int = 0             # the dataset's (config.num_classes follows it)
  fingerprint: str = ""            # what identifies the data (sources.dataset_fingerprint)
  views: tuple = ()                # (view name, resolved augmentation) of each view

  def train_batches(self, start_step: int, mesh) -> "TrainBatches":
    """What the train function takes for the steps from `start_step` (TrainBatches.take)."""
    return TrainBatches(self, start_step, mesh)


class TrainBatches:
  """`take(n)`: the train function's data for the next n steps. In memory: the device-resident
  split (the step draws its batch). Streamed: n host batches stacked on a leading axis, every
  label checked on the host, as global arrays sharded on the data axis."""

  def __init__(self, data: Pipeline, start_step: int, mesh):
    self._data, self._step, self._mesh = data, int(start_step), mesh
    self._iter = None if data.in_memory else data.train(start_step)

  def take(self, n: int) -> Any:
    if self._data.in_memory:
      return self._data.train
    stacked = [next(self._iter) for _ in range(n)]
    size = self._data.image_size
    if self._step == 0:
      for image in jax.tree.leaves(stacked[0]["image"]):
        common.validate_batch({"image": image, "label": stacked[0]["label"]},
                              num_classes=self._data.num_classes,
                              image_shape=(size, size, 3))
    for i, b in enumerate(stacked):  # every streamed label, before it reaches the step
      common.check_labels(b["label"], self._data.num_classes,
                          where=f"training batch of step {self._step + i + 1}")
    self._step += n
    batch = jax.tree.map(lambda *xs: np.stack(xs), *[{"image": b["image"], "label": b["label"]}
                                                     for b in stacked])
    return to_global_batch(batch, self._mesh, axis=1)


def device_batch(images_u8: Any, labels_all: Any, *, seed: Any, step: Any, rng: Any,
                 batch_size: int, views: Sequence[tuple[str, str]], mean: Sequence[float],
                 std: Sequence[float], crop_area: Sequence[float] = common.CROP_AREA,
                 crop_aspect: Sequence[float] = common.CROP_ASPECT,
                 tables: Optional[Mapping[str, Any]] = None, sharding: Any = None
                 ) -> tuple[dict, Any, dict]:
  """In memory, on device: the batch of `step` from the split, once per view.

  ({view name: normalized float32 [B,H,W,3]}, labels [B], {view name: teacher logits [B, C]}).
  The examples are in_memory.cifar_batch_indices'; view i is augmented with its own
  augmentation (`views`: (name, resolved registry name)) and the RNG stream fold_in(rng, i)
  (view 0: rng itself). A view whose augmentation has a table in `tables` ({augmentation:
  float32 [N, views, C]}) gets each example's row of its drawn view. jit-able with traced
  seed, step and rng; `sharding` constrains the outputs (the batch's data axis).
  """
  tables = tables or {}
  idx = in_memory_lib.cifar_batch_indices(images_u8.shape[0], seed=seed, step=step,
                                          batch_size=batch_size)
  raw, labels = jnp.take(images_u8, idx, axis=0), jnp.take(labels_all, idx, axis=0)
  place = ((lambda x: x) if sharding is None
           else (lambda x: jax.lax.with_sharding_constraint(x, sharding)))
  images, teacher_logits = {}, {}
  for i, (name, augment) in enumerate(views):
    x, index = augmentations.augment_with_views(
        jax.random.fold_in(rng, i) if i else rng, raw, augment=augment, mean=mean, std=std,
        crop_area=crop_area, crop_aspect=crop_aspect)
    images[name] = place(x)
    if augment in tables:
      teacher_logits[name] = place(tables[augment][idx, index])
  return images, place(labels), teacher_logits


def global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host value that every process holds in full (multi-host safe)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def to_global_batch(batch: Any, mesh, axis: int = 0) -> Any:
  """Host batch (this process's part; a pytree) -> global arrays sharded on the data axis."""
  sharding = NamedSharding(mesh, P(*([None] * axis + ["data"])))
  return jax.tree.map(
      lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), batch)


def default_image_size(config) -> int:
  """config.image_size, else the preset's (224 ImageNet / streamed, 32 otherwise)."""
  if config.image_size:
    return config.image_size
  preset = sources.KNOWN_DATASETS.get(config.dataset)
  return preset.image_size if preset else sources.IN_MEMORY_IMAGE_SIZE


def resolve_num_classes(config, found: int, where: str, *, schema_default: int) -> int:
  """The run's class count: config.num_classes, or the dataset's `found` when num_classes is
  the schema's default (not chosen for this data); a chosen value that differs is refused."""
  if found < 2:
    raise ConfigError(f"dataset {config.dataset!r} has {found} class ({where}); accepted: at "
                      f"least 2 classes to train a classifier (one sub-folder per class)")
  if found == config.num_classes:
    return found
  if config.num_classes == schema_default:
    console.info(f"num_classes={found}: the number of classes of dataset {config.dataset!r} "
                 f"({where})")
    return found
  raise ConfigError(f"config.num_classes={config.num_classes} does not match dataset "
                    f"{config.dataset!r}, which has {found} classes ({where}); set "
                    f"--config.num_classes={found}")


def in_memory_plan(config, data_dir, *, schema_num_classes: int) -> tuple[bool, int]:
  """(held in memory?, image size or 0 = the images' own) for config.dataset."""
  name = config.dataset
  preset = sources.KNOWN_DATASETS.get(name)
  if preset is not None:
    return preset.in_memory, config.image_size or preset.image_size
  if sources.imagefolder_root(name) is not None:
    return True, config.image_size
  layout = sources.tfds_layout(config.tfds_name or name, data_dir)
  resolve_num_classes(config, layout.num_classes, "TFDS metadata",
                      schema_default=schema_num_classes)
  if layout.image_shape is None:
    return False, config.image_size or sources.STREAMED_IMAGE_SIZE
  if layout.train_examples is None:  # not prepared yet: download it (if possible) to know N
    in_memory_lib.prepare_tfds(config.tfds_name or name, data_dir=data_dir)
    layout = sources.tfds_layout(config.tfds_name or name, data_dir)
  size = config.image_size or layout.image_shape[0]
  need = sources.in_memory_bytes(layout.train_examples or 0, size)
  if config.train_examples:
    need = sources.in_memory_bytes(min(config.train_examples, layout.train_examples or
                                       config.train_examples), size)
  fits = need <= config.in_memory_budget_mb * 2 ** 20 and config.in_memory_budget_mb > 0
  return fits, config.image_size if fits else config.image_size or size


def check_in_memory_split(config, train, test) -> int:
  """The common square image size of the loaded splits, or a ConfigError asking to set it."""
  name = config.dataset
  shapes = {"train": train.images.shape[1:3], config.eval_split: test.images.shape[1:3]}
  if len(set(shapes.values())) > 1 or shapes["train"][0] != shapes["train"][1]:
    sizes = ", ".join(f"{k} {h}x{w}" for k, (h, w) in shapes.items())
    raise ConfigError(f"config.image_size=0 but dataset {name!r} has images of {sizes}; "
                      f"accepted: one square size in every split, or set --config.image_size=S "
                      f"to resize all images to SxS")
  budget = config.in_memory_budget_mb * 2 ** 20
  need = train.images.nbytes
  if need > budget and name not in sources.KNOWN_DATASETS:
    raise ConfigError(f"dataset {name!r}: its training split takes {need / 2 ** 20:.1f} MB "
                      f"as uint8, more than config.in_memory_budget_mb="
                      f"{config.in_memory_budget_mb}; image folders are held in memory, so "
                      f"raise the budget or set a smaller --config.image_size")
  return int(shapes["train"][0])


def teacher_table_problem(dataset: str, augments: Sequence[str]) -> str:
  """Why config.teacher_cache cannot serve a run on `dataset` whose views have the (resolved)
  `augments`, or '' when it can: it needs data held in memory and at least one view whose
  augmentation has a finite set of views (the others run the teacher online)."""
  preset = sources.KNOWN_DATASETS.get(dataset)
  if preset is not None and not preset.in_memory:
    return (f"dataset {dataset!r} is streamed; accepted: data held in memory "
            f"({', '.join(sources.IN_MEMORY_PRESETS)}, an image folder, or a TFDS dataset "
            f"within config.in_memory_budget_mb)")
  if not any(augmentations.num_views(a) is not None for a in augments):
    return (f"no view has an augmentation with a finite set of views (views: "
            f"{', '.join(augments)}); accepted: at least one view with "
            f"{', '.join(augmentations.finite_names())}")
  return ""


def view_plan(config, views: Sequence[Any], in_memory: bool) -> tuple[tuple[str, str], ...]:
  """(name, resolved augmentation) of each of the run's `views` (methods.View records)."""
  augments = augmentations.view_augments(config.augment, [v.augment for v in views], in_memory)
  return tuple(zip([v.name for v in views], augments))


def train_stream(data_dir: Optional[str], *, augment: str = "random_resized_crop",
                 views: Optional[Sequence[tuple[str, str]]] = None, **kwargs) -> Iterator[dict]:
  """streamed.train_stream with the registry's transforms: one view of `augment`, or each
  (view name, augmentation name) of `views` (then 'image' is {view name: array})."""
  views = views or (("image", augment),)
  transforms = [(name, augmentations.get(a, streamed_data=True).streamed) for name, a in views]
  return streamed.train_stream(data_dir, transforms=transforms, **kwargs)


def pipeline(config, mesh, *, views: Sequence[Any] = (), schema_num_classes: int = 0
             ) -> Pipeline:
  """The training and eval data of config.dataset, in memory or streamed (docs/data.md).

  views: the run's views (methods.View; () = one view of the run's augmentation);
  schema_num_classes: the schema's default num_classes (a config at that value follows the
  dataset's class count, resolve_num_classes).
  """
  data_dir = config.data_dir or None
  schema = schema_num_classes
  in_memory, size = in_memory_plan(config, data_dir, schema_num_classes=schema)
  augment = augmentations.resolve_augment(config.augment, in_memory)
  plan = view_plan(config, views, in_memory) if views else ()
  if config.get("teacher_cache") and not in_memory:
    raise ConfigError(f"config.teacher_cache={config.teacher_cache!r} needs data held in memory; "
                      f"dataset {config.dataset!r} is streamed (set config.teacher_cache='')")
  if in_memory:
    return _in_memory(config, mesh, data_dir, size, augment, plan, schema)
  return _streamed(config, data_dir, size, augment, plan, schema)


def _in_memory(config, mesh, data_dir, size, augment, plan, schema) -> Pipeline:
  source = config.dataset
  if source not in sources.KNOWN_DATASETS and sources.imagefolder_root(source) is None:
    source = config.tfds_name or source
  skip = bool(config.get("skip_unreadable_images", False))
  train = in_memory_lib.load_in_memory(source, "train", data_dir=data_dir,
                                       num_examples=config.train_examples or None,
                                       image_size=size, skip_unreadable=skip)
  num_classes = resolve_num_classes(
      config, train.num_classes, "its class folders" if sources.imagefolder_root(source)
      is not None else "its labels", schema_default=schema)
  test = in_memory_lib.load_in_memory(source, config.eval_split, data_dir=data_dir,
                                      num_examples=config.eval_examples or None,
                                      image_size=size or int(train.images.shape[1]),
                                      skip_unreadable=skip)
  size = check_in_memory_split(config, train, test)
  n = len(train.labels)
  if n < config.batch_size:
    raise ConfigError(f"config.batch_size={config.batch_size} exceeds the {n} training "
                      f"examples")
  mean, std = sources.resolve_mean_std(config.dataset, config.mean, config.std,
                                       train_images=train.images)
  repl = NamedSharding(mesh, P())
  arrays = (global_array(train.images, repl), global_array(train.labels, repl))
  return Pipeline(True, n // config.batch_size, arrays,
                  lambda: common.eval_batches(test, config.eval_batch_size),
                  mean, std, size, augment,
                  eval_batches=-(-len(test.labels) // config.eval_batch_size),
                  num_classes=num_classes, fingerprint=sources.dataset_fingerprint(
                      source, ("train", config.eval_split), data_dir),
                  views=plan)


def _streamed(config, data_dir, size, augment, plan, schema) -> Pipeline:
  """Each process reads its own shard (ImageNet and large TFDS datasets)."""
  pc, pi = jax.process_count(), jax.process_index()
  name = config.tfds_name or config.dataset
  mean, std = sources.resolve_mean_std(config.dataset, config.mean, config.std,
                                       train_images=None)
  for _, a in plan or (("", augment),):
    augmentations.get(a, streamed_data=True)    # refused here, before any batch is read
  spe = streamed.stream_steps_per_epoch(data_dir, global_batch_size=config.batch_size,
                                        process_count=pc, name=name)

  def open_train(start_step):
    return train_stream(
        data_dir, augment=plan[0][1] if plan else augment,
        views=plan if len(plan) > 1 else None,
        batch_size=config.batch_size // pc, seed=config.seed, start_step=start_step,
        image_size=size, process_index=pi, process_count=pc, name=name,
        crop_area=tuple(config.crop_area), crop_aspect=tuple(config.crop_aspect),
        mean=mean, std=std)

  def eval_iter():
    return streamed.eval_stream(
        data_dir, batch_size=config.eval_batch_size // pc, image_size=size, process_index=pi,
        process_count=pc, name=name, split=config.eval_split, mean=mean, std=std)

  num_classes = resolve_num_classes(config, sources.tfds_layout(name, data_dir).num_classes,
                                    "TFDS metadata", schema_default=schema)
  return Pipeline(False, spe, open_train, eval_iter, mean, std, size, augment,
                  num_classes=num_classes, fingerprint=sources.dataset_fingerprint(
                      name, ("train", config.eval_split), data_dir), views=plan)
