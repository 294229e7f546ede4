"""The one place library code writes to the terminal: process 0 only, flushed at once.

`info` goes to stdout, `warn` to stderr. On a multi-host run only the first process prints, so
a pod prints each line once. Scripts and the launcher own the terminal and may print directly.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator


def _is_main_process() -> bool:
  try:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except  # no backend yet: a single process
    return True


def info(message: str) -> None:
  """Prints `message` on process 0."""
  if _is_main_process():
    print(message, flush=True)


def warn(message: str) -> None:
  """Prints 'warning: message' to stderr on process 0."""
  if _is_main_process():
    print(f"warning: {message}", file=sys.stderr, flush=True)


class _DropRecords(logging.Filter):
  def __init__(self, fragments: tuple[str, ...]):
    super().__init__()
    self.fragments = fragments

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not any(f in text for f in self.fragments)


@contextlib.contextmanager
def without_log_records(*fragments: str, logger: str = "absl") -> Iterator[None]:
  """Inside the block, `logger`'s records containing any of `fragments` are dropped (e.g. a
  library's notice about an option kd_jax sets on purpose); every other record passes."""
  drop = _DropRecords(fragments)
  log = logging.getLogger(logger)
  log.addFilter(drop)
  try:
    yield
  finally:
    log.removeFilter(drop)
