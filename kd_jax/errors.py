"""The errors a user can cause (bad config, missing data, bad teacher file, faults in a run).

The launcher prints these as one line instead of a traceback.
"""
from kd_jax.config import ConfigError
from kd_jax.data import DataError
from kd_jax.models.torch_import import CheckpointError as TorchCheckpointError
from kd_jax.train.checkpoint import CheckpointError
from kd_jax.train.loop import TeacherError, TrainingError

USER_ERRORS = (ConfigError, DataError, CheckpointError, TorchCheckpointError, TeacherError,
               TrainingError, OSError, ImportError)

__all__ = ["ConfigError", "DataError", "CheckpointError", "TorchCheckpointError",
           "TeacherError", "TrainingError", "USER_ERRORS"]
