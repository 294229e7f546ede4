"""Input pipelines: small data in memory with JAX augmentation, large data streamed with tf.data.

TensorFlow / TFDS are imported lazily, only by the functions that read TFDS datasets.
"""

from kd_jax.data.cifar import ACCEPTED_NAMES
from kd_jax.data.cifar import augment_batch
from kd_jax.data.cifar import augment_cifar
from kd_jax.data.cifar import cifar_augment_params
from kd_jax.data.cifar import cifar_batch_indices
from kd_jax.data.cifar import cifar_num_views
from kd_jax.data.cifar import cifar_view_index
from kd_jax.data.cifar import cifar_view_params
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
from kd_jax.data.sources import dataset_fingerprint
from kd_jax.data.sources import imagefolder_root
from kd_jax.data.sources import in_memory_bytes
from kd_jax.data.sources import KNOWN_DATASETS
from kd_jax.data.sources import load_imagefolder
from kd_jax.data.sources import resolve_augment
from kd_jax.data.sources import resolve_mean_std
from kd_jax.data.sources import STREAMED_IMAGE_SIZE
from kd_jax.data.sources import tfds_layout

__all__ = [
    "ACCEPTED_NAMES", "augment_batch", "augment_cifar", "AUGMENTATIONS", "build_fake_imagenet",
    "channel_stats", "cifar_augment_params", "dataset_fingerprint", "cifar_batch_indices", "CIFAR_MEAN",
    "cifar_num_views", "CIFAR_STD", "cifar_train_batch", "cifar_view_index",
    "cifar_view_params", "crop_and_flip", "DataError", "eval_batches", "imagefolder_root",
    "imagenet_eval", "IMAGENET_MEAN", "IMAGENET_STD", "imagenet_steps_per_epoch",
    "imagenet_train", "in_memory_bytes", "InMemoryData", "KNOWN_DATASETS", "load_imagefolder",
    "load_in_memory", "normalize", "prepare_tfds", "random_resized_crop_boxes", "resized_crop",
    "resolve_augment", "resolve_mean_std", "RRC_AREA", "RRC_ASPECT", "steps_per_epoch",
    "STREAMED_IMAGE_SIZE", "tfds_layout", "validate_batch",
]
