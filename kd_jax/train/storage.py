"""Storage faults of a run's outputs as one line: the path, the errno and the step being written.

Every writer of a workdir (checkpoints, the best model, metrics.jsonl, TensorBoard events, the
lock and config.json) reports a failed write through `write_failure`, so a read-only or
immutable directory, a full disk or an exhausted quota reads the same everywhere. `probe_dir`
and `check_free_space` run before a checkpoint is handed to Orbax's background writer: a write
that cannot succeed fails in the main thread at once, before any background thread waits on it.
"""
from __future__ import annotations

import errno as errno_lib
import os
import re
import shutil
import socket
from typing import Optional

from etils import epath

from kd_jax.errors import WorkdirError


def is_local(path: str | os.PathLike) -> bool:
  """False for object-store paths (gs://, s3://, ...): no O_EXCL create, append or rename."""
  return "://" not in os.fspath(path)


def os_error_of(e: BaseException) -> Optional[OSError]:
  """The first OSError with an errno in `e`'s chain of causes, or None."""
  cause: Optional[BaseException] = e
  seen = set()
  while cause is not None and id(cause) not in seen:
    seen.add(id(cause))
    if isinstance(cause, OSError) and cause.errno:
      return cause
    cause = cause.__cause__ or cause.__context__
  return None


# TensorStore (Orbax's array writer) reports an OS error inside its message text.
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")


def error_number(e: BaseException) -> Optional[int]:
  """The errno of `e`: of an OSError in its chain, or named in a TensorStore message."""
  found = os_error_of(e)
  if found is not None:
    return found.errno
  cause: Optional[BaseException] = e
  while cause is not None:
    match = _TENSORSTORE_ERRNO.search(str(cause))
    if match:
      return int(match.group(1))
    cause = cause.__cause__ or cause.__context__
  return None


def describe_os_error(e: BaseException) -> str:
  """'errno 13 EACCES: Permission denied' for an OSError (or a TensorStore error naming its
  OS error), else the exception's text."""
  found = os_error_of(e)
  if found is not None:
    name = errno_lib.errorcode.get(found.errno, "")
    return f"errno {found.errno} {name}: {found.strerror or os.strerror(found.errno)}"
  number = error_number(e)
  if number is not None:
    return f"errno {number} {errno_lib.errorcode.get(number, '')}: {os.strerror(number)}"
  return f"{e!r:.200}"


def write_failure(what: str, path: str | os.PathLike, e: BaseException, *,
                  step: Optional[int] = None, error: type = WorkdirError) -> Exception:
  """The one-line error for a failed write of `what` (at `step`) to `path`."""
  at = f" of step {step}" if step is not None else ""
  return error(f"writing the {what}{at} to {os.fspath(path)} failed ({describe_os_error(e)}); "
               f"the run stops here. Free the disk or fix the permissions, then run the same "
               f"command again to resume from the last complete checkpoint")


def _existing_ancestor(path: epath.Path) -> epath.Path:
  while not path.exists() and path.parent != path:
    path = path.parent
  return path


def probe_dir(directory: str | os.PathLike) -> None:
  """Writes and removes a small file in `directory` (or, while it does not exist yet, in its
  nearest existing parent, creating nothing); raises the OSError of a failed write."""
  path = _existing_ancestor(epath.Path(directory))
  probe = path / f".write_probe_{socket.gethostname()}_{os.getpid()}"
  probe.write_text("ok")
  probe.unlink()


def free_bytes(directory: str | os.PathLike) -> Optional[int]:
  """Bytes available to this user on the filesystem of `directory` (None: unknown)."""
  if not is_local(directory):
    return None
  try:
    return shutil.disk_usage(os.fspath(_existing_ancestor(epath.Path(directory)))).free
  except OSError:
    return None


def tree_bytes(directory: str | os.PathLike) -> int:
  """The total size of the files under `directory` (0 if it does not exist)."""
  total = 0
  for root, _, names in os.walk(os.fspath(directory)):
    for n in names:
      try:
        total += os.lstat(os.path.join(root, n)).st_size
      except OSError:
        pass
  return total


def check_free_space(directory: str | os.PathLike, need: int) -> None:
  """Raises OSError(ENOSPC) naming both sizes when fewer than `need` bytes are free there."""
  free = free_bytes(directory)
  if free is not None and free < need:
    raise OSError(errno_lib.ENOSPC, f"{os.strerror(errno_lib.ENOSPC)}: about "
                  f"{need / 2 ** 20:.2f} MB needed, {free / 2 ** 20:.2f} MB free")
