"""The errors a user can cause: bad config, missing data, a bad weights file, faults in a run.

This module imports nothing of kd_jax, so every room can raise these without import cycles.
The launcher and the CLIs print them as one line (no traceback) and exit with code 2.
"""
from __future__ import annotations


class ConfigError(ValueError):
  """A bad configuration value, detected before anything is compiled."""


class DataError(ValueError):
  """A dataset that is missing, malformed or does not fit the configuration."""


class WeightsFileError(ValueError):
  """A PyTorch/msgpack weights file that does not fit the model it is loaded into."""


class TeacherError(ValueError):
  """The teacher checkpoint is missing, non-finite, or does not fit the configured teacher."""


class CheckpointError(RuntimeError):
  """A run checkpoint could not be written, or none of the saved ones could be read."""


class WorkdirError(OSError):
  """The workdir is in use by another run, or one of its directories cannot be written."""


class TrainingError(RuntimeError):
  """The run cannot continue (e.g. too many consecutive non-finite steps)."""


USER_ERRORS = (ConfigError, DataError, WeightsFileError, TeacherError, CheckpointError,
               TrainingError, WorkdirError, OSError, ImportError)

__all__ = ["ConfigError", "DataError", "WeightsFileError", "TeacherError", "CheckpointError",
           "TrainingError", "WorkdirError", "USER_ERRORS"]
