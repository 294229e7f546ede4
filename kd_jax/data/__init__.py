"""Input pipelines: `pipeline(config, mesh)` gives a run its data, held in memory (augmented in
JAX on device, in_memory.py) or streamed (tf.data, streamed.py); the augmentations are one
registry (augmentations.py), the datasets' names and presets sources.py's.

TensorFlow / TFDS are imported lazily, only by the functions that read TFDS datasets.
"""

from kd_jax.data.augmentations import augment_batch
from kd_jax.data.augmentations import AUGMENTATIONS
from kd_jax.data.augmentations import Augmentation
from kd_jax.data.augmentations import REGISTRY as AUGMENTATION_REGISTRY
from kd_jax.data.augmentations import resolve_augment
from kd_jax.data.augmentations import view_augments
from kd_jax.data.common import check_crop_ranges
from kd_jax.data.common import CIFAR_MEAN
from kd_jax.data.common import CIFAR_STD
from kd_jax.data.common import CROP_AREA
from kd_jax.data.common import CROP_ASPECT
from kd_jax.data.common import DataError
from kd_jax.data.common import eval_batches
from kd_jax.data.common import IMAGENET_MEAN
from kd_jax.data.common import IMAGENET_STD
from kd_jax.data.common import InMemoryData
from kd_jax.data.common import normalize
from kd_jax.data.common import validate_batch
from kd_jax.data.in_memory import augment_cifar
from kd_jax.data.in_memory import cifar_augment_params
from kd_jax.data.in_memory import cifar_batch_indices
from kd_jax.data.in_memory import cifar_train_batch
from kd_jax.data.in_memory import cifar_view_index
from kd_jax.data.in_memory import cifar_view_params
from kd_jax.data.in_memory import crop_and_flip
from kd_jax.data.in_memory import load_in_memory
from kd_jax.data.in_memory import prepare_tfds
from kd_jax.data.in_memory import random_resized_crop_boxes
from kd_jax.data.in_memory import resized_crop
from kd_jax.data.in_memory import steps_per_epoch
from kd_jax.data.run_data import default_image_size
from kd_jax.data.run_data import device_batch
from kd_jax.data.run_data import global_array
from kd_jax.data.run_data import pipeline
from kd_jax.data.run_data import Pipeline
from kd_jax.data.run_data import teacher_table_problem
from kd_jax.data.run_data import to_global_batch
from kd_jax.data.run_data import train_stream
from kd_jax.data.sources import channel_stats
from kd_jax.data.sources import dataset_fingerprint
from kd_jax.data.sources import imagefolder_root
from kd_jax.data.sources import in_memory_bytes
from kd_jax.data.sources import IN_MEMORY_PRESETS
from kd_jax.data.sources import KNOWN_DATASETS
from kd_jax.data.sources import load_imagefolder
from kd_jax.data.sources import Preset
from kd_jax.data.sources import resolve_mean_std
from kd_jax.data.sources import STREAMED_IMAGE_SIZE
from kd_jax.data.sources import tfds_layout
from kd_jax.data.streamed import build_fake_imagenet
from kd_jax.data.streamed import eval_stream
from kd_jax.data.streamed import stream_steps_per_epoch

__all__ = [
    "augment_batch", "augment_cifar", "Augmentation", "AUGMENTATION_REGISTRY", "AUGMENTATIONS",
    "build_fake_imagenet", "channel_stats", "check_crop_ranges", "cifar_augment_params",
    "cifar_batch_indices", "CIFAR_MEAN", "CIFAR_STD", "cifar_train_batch", "cifar_view_index",
    "cifar_view_params", "crop_and_flip", "CROP_AREA", "CROP_ASPECT", "DataError",
    "dataset_fingerprint", "default_image_size", "device_batch",
    "eval_batches", "eval_stream", "global_array",
    "imagefolder_root", "IMAGENET_MEAN", "IMAGENET_STD", "in_memory_bytes", "IN_MEMORY_PRESETS",
    "InMemoryData", "KNOWN_DATASETS", "load_imagefolder", "load_in_memory", "normalize",
    "Pipeline", "pipeline", "prepare_tfds", "Preset", "random_resized_crop_boxes",
    "resized_crop", "resolve_augment", "resolve_mean_std", "steps_per_epoch",
    "stream_steps_per_epoch", "STREAMED_IMAGE_SIZE", "teacher_table_problem", "tfds_layout",
    "to_global_batch", "train_stream", "validate_batch", "view_augments",
]
