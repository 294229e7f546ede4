"""The errors a user can cause: bad config, missing data, a bad weights file, faults in a run.

This module imports nothing of kd_jax, so every room can raise these without import cycles.
The launcher and the CLIs print them as one line (no traceback) and exit with code 2.
"""
from __future__ import annotations

import difflib


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


class Interrupted(BaseException):
  """SIGTERM or SIGINT before the training loop: the run stops (nothing half written) and the
  launcher exits with PREEMPTED_EXIT_CODE. A BaseException, so no `except Exception` eats it."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


# Exit codes of the launcher: 0 done, 2 bad input, 75 (EX_TEMPFAIL) stopped by a signal with
# its state saved (relaunch the same command to resume), 130 a second Ctrl-C (stopped at once).
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130


def suggest(name: str, candidates) -> list[str]:
  """Up to 3 candidates closest to `name` (difflib), comparing whole dotted names and their last
  parts; [] when none is close (ratio < 0.6)."""
  candidates = list(candidates)

  def score(candidate: str) -> float:
    whole = difflib.SequenceMatcher(None, name, candidate).ratio()
    leaf = difflib.SequenceMatcher(None, name.rsplit(".", 1)[-1],
                                   candidate.rsplit(".", 1)[-1]).ratio()
    return max(whole, leaf)
  ranked = sorted(candidates, key=score, reverse=True)
  if not ranked or score(ranked[0]) < 0.6:
    return []
  top = score(ranked[0])
  return [k for k in ranked[:3] if score(k) >= max(0.6, top - 0.05)]


USER_ERRORS = (ConfigError, DataError, WeightsFileError, TeacherError, CheckpointError,
               TrainingError, WorkdirError, OSError, ImportError)

__all__ = ["ConfigError", "DataError", "WeightsFileError", "TeacherError", "CheckpointError",
           "TrainingError", "WorkdirError", "Interrupted", "suggest", "USER_ERRORS",
           "EXIT_BAD_INPUT", "EXIT_PREEMPTED", "EXIT_INTERRUPTED"]
