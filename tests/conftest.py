"""Test set-up: 8 simulated CPU devices (for the sharding tests), fast XLA compilation
(testenv.py), a per-session compilation cache, the import paths.

The cache lets the launcher subprocesses of the resume tests reuse each other's compiled steps.
It lives in one temporary directory per session (some 50 MB after a whole suite), removed when
the session ends; one left by a session that was killed is removed by the next session.
"""
import atexit
import glob
import os
import shutil
import sys
import tempfile

_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _TESTS)
import testenv  # pylint: disable=g-import-not-at-top,wrong-import-position

# Must happen before jax is imported anywhere. Affects the host (CPU) platform only.
os.environ.setdefault("XLA_FLAGS", testenv.xla_flags(8))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# PyTorch (the twins, the reference loops) runs in the test processes: with two pytest-xdist
# workers on two cores its OpenMP threads spin against each other and against XLA. One thread:
# the trajectory test's float64 loop took 25 CPU-s instead of 30 on an idle machine, and 83 s
# of wall time instead of 16 s beside a busy worker (2-core CPU, 2026-12-02).
os.environ.setdefault("OMP_NUM_THREADS", "1")
_CACHE_PREFIX = "kd_jax_jit_cache_pid"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # alive, another user's
    return True
  return True


def _own_compilation_cache() -> str:
  """A new compilation cache directory named after this process (the session's first process;
  pytest-xdist workers and the tests' subprocesses inherit it through the environment), removed
  at exit. Directories of earlier sessions whose process is gone are removed first."""
  for old in glob.glob(os.path.join(tempfile.gettempdir(), _CACHE_PREFIX + "*_*")):
    pid = os.path.basename(old)[len(_CACHE_PREFIX):].split("_", 1)[0]
    if pid.isdigit() and not _pid_alive(int(pid)):
      shutil.rmtree(old, ignore_errors=True)
  path = tempfile.mkdtemp(prefix=f"{_CACHE_PREFIX}{os.getpid()}_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _own_compilation_cache()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The one place test imports are set up: the repository (kd_jax without an install), tests/
# (the PyTorch twins and helpers), and configs/, scripts/, benchmarks/ (imported by name, e.g.
# `import smoke`, `import reproduce`, `import train_step`).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (os.path.join(_REPO, "benchmarks"), os.path.join(_REPO, "scripts"),
              os.path.join(_REPO, "configs"), os.path.join(_REPO, "tests"), _REPO):
  if _path not in sys.path:
    sys.path.insert(0, _path)
