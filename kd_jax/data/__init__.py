"""Input pipelines: CIFAR in memory with JAX augmentation, ImageNet streamed with tf.data.

TensorFlow / TFDS are imported lazily, only by the functions that read TFDS datasets.
"""

from kd_jax.data.cifar import ACCEPTED_NAMES
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

__all__ = [
    "ACCEPTED_NAMES", "augment_cifar", "build_fake_imagenet", "cifar_augment_params",
    "cifar_batch_indices", "cifar_num_views", "cifar_view_index", "cifar_view_params",
    "CIFAR_MEAN", "CIFAR_STD", "cifar_train_batch", "crop_and_flip", "DataError",
    "eval_batches", "IMAGENET_MEAN", "IMAGENET_STD", "imagenet_eval", "imagenet_steps_per_epoch", "imagenet_train",
    "InMemoryData", "load_in_memory", "normalize", "steps_per_epoch", "validate_batch",
]
