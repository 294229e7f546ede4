"""Input pipelines: small data in memory with JAX augmentation, large data streamed with tf.data.

TensorFlow / TFDS are imported lazily, only by the functions that read TFDS datasets.
"""

from kd_jax.data.cifar import ACCEPTED_NAMES
from kd_jax.data.cifar import augment_batch
from kd_jax.data.cifar import augment_cifar
from kd_jax.data.cifar import cifar_augment_params
from kd_jax.data.cifar import CIFAR_MEAN
from kd_jax.data.cifar import CIFAR_STD
from kd_jax.data.cifar import cifar_train_batch
from kd_jax.data.cifar import crop_and_flip
from kd_jax.data.cifar import load_in_memory
from kd_jax.data.cifar import prepare_tfds
from kd_jax.data.cifar import random_resized_crop_boxes
from kd_jax.data.cifar import resized_crop
from kd_jax.data.cifar import RRC_AREA
from kd_jax.data.cifar import RRC_ASPECT
from kd_jax.data.cifar import steps_per_epoch
from kd_jax.data.common import DataError
from kd_jax.data.common import eval_batches
from kd_jax.data.common import InMemoryData
from kd_jax.data.common import normalize
from kd_jax.data.common import validate_batch
from kd_jax.data.imagenet import build_fake_imagenet
from kd_jax.data.imagenet import IMAGENET_MEAN
from kd_jax.data.imagenet import IMAGENET_STD
from kd_jax.data.imagenet import imagenet_eval
from kd_jax.data.imagenet import imagenet_steps_per_epoch
from kd_jax.data.imagenet import imagenet_train
from kd_jax.data.sources import AUGMENTATIONS
from kd_jax.data.sources import channel_stats
from kd_jax.data.sources import imagefolder_root
from kd_jax.data.sources import in_memory_bytes
from kd_jax.data.sources import KNOWN_DATASETS
from kd_jax.data.sources import load_imagefolder
from kd_jax.data.sources import resolve_augment
from kd_jax.data.sources import resolve_mean_std
from kd_jax.data.sources import STREAMED_IMAGE_SIZE
from kd_jax.data.sources import tfds_layout

__all__ = [
    "ACCEPTED_NAMES", "AUGMENTATIONS", "augment_batch", "augment_cifar", "channel_stats",
    "imagefolder_root", "in_memory_bytes", "KNOWN_DATASETS", "load_imagefolder", "prepare_tfds",
    "random_resized_crop_boxes", "resized_crop", "RRC_AREA", "RRC_ASPECT", "resolve_augment", "resolve_mean_std", "STREAMED_IMAGE_SIZE", "tfds_layout", "build_fake_imagenet", "cifar_augment_params",
    "CIFAR_MEAN", "CIFAR_STD", "cifar_train_batch", "crop_and_flip", "DataError",
    "eval_batches", "IMAGENET_MEAN", "IMAGENET_STD", "imagenet_eval", "imagenet_steps_per_epoch", "imagenet_train",
    "InMemoryData", "load_in_memory", "normalize", "steps_per_epoch", "validate_batch",
]
