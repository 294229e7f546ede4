"""One workdir = one run: the lock, the run-identity check and the write probes of WORKDIR.

* `acquire_lock` makes WORKDIR/lock (JSON: host, pid, since). A second launch on a workdir in use
  is refused with one line naming the holder; a lock left by a dead process on this host is taken
  over. Only process 0 of a multi-host run takes it.
* `check_identity` compares the resolved config of a new launch with the one stored in the
  checkpoint it resumes. Keys that change what the run computes are refused, naming each key with
  its old and new value, unless listed in `config.allow_changed`. Keys in `NON_IDENTITY_KEYS`
  (logging, checkpoint cadence, eval batch size, device count, ...) may change freely. Every other
  key, including keys this module does not know, counts as identity.
* `probe_writable` writes and removes a small file in each output directory at start, so an
  unwritable directory fails in seconds instead of at the first save. `open_run` probes the
  workdir and those of its output directories that exist (the others are created by their
  first write), so a launch that fails leaves no empty folders behind.
* `check_and_record_config` writes config.json for a new run at once; for a resume, only once
  the checkpoint to resume is found to fit the configured model (Checkpointer.after_restore).

Paths go through `etils.epath`, so a `gs://` workdir works wherever Orbax supports it; the lock
is an atomic O_EXCL create on local disks and a best-effort create elsewhere.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
from typing import Any, Iterable, Mapping, Optional

from etils import epath

from kd_jax.errors import ConfigError, WorkdirError
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train.storage import describe_os_error, is_local, write_failure

LOCK_NAME = "lock"

# Keys that do not change what a run computes: they may differ between a run and its resume.
# Everything else is identity (refused when changed unless named in config.allow_changed).
NON_IDENTITY_KEYS = frozenset({
    "allow_changed",            # the override itself
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_batch_size",
    "eval_every_epochs",
    "steps_per_dispatch",
    "num_devices",              # results do not depend on the device count (tested)
    "runs_per_device",          # nor on how a sweep's runs are placed (tested)
    "max_bad_steps",
    "data_dir",                 # where the same data lives
    "wandb_project",            # where the same scalars are also sent
})


# --- The lock ----------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by someone else
    return True
  return True


def _read_lock(path: epath.Path) -> Optional[dict]:
  try:
    holder = json.loads(path.read_text())
    return holder if isinstance(holder, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # half written by a process killed while taking it


class WorkdirLock:
  """Holds WORKDIR/lock until `release()` (or the end of a `with` block)."""

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
    self.path = epath.Path(workdir) / LOCK_NAME
    self.enabled = enabled
    self.held = False
    self.took_over: Optional[dict] = None

  def acquire(self) -> "WorkdirLock":
    if not self.enabled:
      return self
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    for _ in range(3):
      if self._create(json.dumps(me)):
        self.held = True
        return self
      holder = _read_lock(self.path)
      if holder is None:
        continue  # released between our attempt and the read
      if self._stale(holder, me["host"]):
        self.took_over = holder
        try:
          self.path.unlink()
        except FileNotFoundError:
          pass
        continue
      raise WorkdirError(
          f"workdir {self.path.parent} is in use by pid {holder.get('pid', '?')} on host "
          f"{holder.get('host', '?')} since {holder.get('since', '?')}; wait for that run to "
          f"end or use another --workdir (if that process is gone, delete {self.path})")
    raise WorkdirError(f"could not take the lock {self.path}; delete it if no run uses "
                       f"this workdir")

  def _create(self, text: str) -> bool:
    if is_local(self.path):
      try:
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    if self.path.exists():  # object stores: not atomic, good enough against a second launch
      return False
    self.path.write_text(text)
    return True

  @staticmethod
  def _stale(holder: dict, host: str) -> bool:
    if not holder:  # unreadable: written by a process killed while taking it
      return True
    pid = holder.get("pid")
    return holder.get("host") == host and isinstance(pid, int) and not _pid_alive(pid)

  def release(self) -> None:
    if not self.held:
      return
    holder = _read_lock(self.path)
    if holder and holder.get("pid") == os.getpid():
      try:
        self.path.unlink()
      except FileNotFoundError:
        pass
    self.held = False

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


# --- Run identity -------------------------------------------------------------------------


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'loss': {'temperature': 4}} -> {'loss.temperature': 4}; tuples become lists (JSON)."""
  out: dict[str, Any] = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    else:
      out[name] = json.loads(json.dumps(value, default=str))
  return out


def config_dict(config: Any) -> dict[str, Any]:
  """A ConfigDict (or a dict) as plain JSON data."""
  data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(data, default=str))


def parse_allowed(value: Any) -> set[str]:
  """`config.allow_changed` ('num_epochs,loss.temperature' or a sequence) as a set of keys."""
  if isinstance(value, str):
    items: Iterable[str] = value.split(",")
  else:
    items = value or ()
  return {k.strip() for k in items if k and k.strip()}


def changed_identity_keys(old: Mapping[str, Any], new: Mapping[str, Any],
                          allowed: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
  """(key, old, new) for each identity key whose value differs, sorted by key.

  Keys present on one side only (a key added to kd_jax after the run started) are not compared.
  """
  old_flat, new_flat = flatten(old), flatten(new)
  allowed = set(allowed)
  out = []
  for key in sorted(set(old_flat) & set(new_flat)):
    if key in NON_IDENTITY_KEYS or key in allowed or key.split(".")[0] in allowed:
      continue
    if old_flat[key] != new_flat[key]:
      out.append((key, old_flat[key], new_flat[key]))
  return out


def check_identity(old: Optional[Mapping[str, Any]], new: Mapping[str, Any], *, workdir: str,
                   step: int) -> None:
  """Raises ConfigError naming every identity key that differs from the stored run's."""
  if old is None:
    return
  allowed = parse_allowed(new.get("allow_changed", ""))
  unknown = sorted(k for k in allowed if k not in flatten(new) and k not in new)
  if unknown:
    raise ConfigError(f"config.allow_changed names {unknown}, which are not config keys; "
                      f"accepted: comma-separated keys such as 'num_epochs,learning_rate'")
  changes = changed_identity_keys(old, new, allowed)
  if not changes:
    return
  listed = ", ".join(f"{k} {o!r} -> {n!r}" for k, o, n in changes)
  keys = ",".join(k for k, _, _ in changes)
  raise ConfigError(
      f"workdir {workdir} holds a run (checkpoint at step {step}) with other settings: {listed}. "
      f"One workdir is one run: use a new --workdir, or, if continuing this run with the new "
      f"values is intended, add --config.allow_changed={keys}")


# --- Write probes --------------------------------------------------------------------------


def probe_writable(directories: Iterable[str | os.PathLike]) -> None:
  """Creates each directory and writes/removes a file in it; WorkdirError names the failure
  (path and errno)."""
  pid = os.getpid()
  for directory in directories:
    path = epath.Path(directory)
    try:
      path.mkdir(parents=True, exist_ok=True)
      probe = path / f".write_probe_{socket.gethostname()}_{pid}"
      probe.write_text("ok")
      probe.unlink()
    except OSError as e:
      raise WorkdirError(f"{os.fspath(path)} cannot be written ({describe_os_error(e)}); choose a "
                         f"writable --workdir or free the disk") from None


# --- Opening a run's workdir ---------------------------------------------------------------


def write_config_json(workdir: str | os.PathLike, config: Any,
                      sources: Optional[Mapping[str, str]] = None) -> None:
  """WORKDIR/config.json, replaced atomically (write a temporary file, then rename).

  sources: dotted key -> where its value came from (config.sources), stored as the top-level
  field `sources` beside the config's keys."""
  path = epath.Path(workdir) / "config.json"
  tmp = epath.Path(workdir) / f".config.json.tmp{os.getpid()}"
  text = config.to_json_best_effort(indent=2, sort_keys=True) if hasattr(
      config, "to_json_best_effort") else json.dumps(config, indent=2, sort_keys=True)
  if sources is not None:
    text = json.dumps({**json.loads(text), "sources": dict(sources)}, indent=2, sort_keys=True)
  try:
    if not is_local(path):  # an object store replaces an object atomically
      path.write_text(text)
      return
    tmp.write_text(text)
    os.replace(os.fspath(tmp), os.fspath(path))
  except OSError as e:
    if is_local(tmp) and os.path.exists(tmp):
      os.unlink(tmp)
    raise write_failure("config", path, e) from None


def open_run(workdir: str | os.PathLike, keep_checkpoints: int, *, process_index: int = 0):
  """Locks WORKDIR (process 0) and probes it and those of its output directories that exist
  (the others are made by their first write). Returns (lock, checkpointer); the caller releases
  the lock (also on errors) and closes the checkpointer."""
  probe_writable([workdir])  # the lock file goes there
  lock = WorkdirLock(workdir, enabled=process_index == 0).acquire()
  try:
    root = epath.Path(workdir)
    dirs = [root / "checkpoints"]
    if process_index == 0:
      dirs += [root / "best", root / "tensorboard"]
    probe_writable([d for d in dirs if d.exists()])
    return lock, ckpt_lib.Checkpointer(workdir, keep_checkpoints)
  except BaseException:
    lock.release()
    raise


def check_and_record_config(config: Any, workdir: str | os.PathLike, checkpointer, *,
                            process_index: int = 0,
                            sources: Optional[Mapping[str, str]] = None) -> None:
  """Checks the (resolved) run identity against the newest checkpoint's config, and only then
  writes config.json (process 0): at once for a new run, for a resume once the checkpoint is
  found to fit (checkpointer.restore_latest). ConfigError names every changed identity key."""
  new = config_dict(config)
  checkpointer.run_config = new
  found = checkpointer.latest_meta()
  if found is not None:
    step, meta = found
    check_identity(meta.get("config"), new, workdir=os.fspath(workdir), step=step)
  if process_index != 0:
    return
  if found is None:
    write_config_json(workdir, config, sources)
  else:
    checkpointer.after_restore = lambda: write_config_json(workdir, config, sources)
