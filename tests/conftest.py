"""Test set-up: 8 simulated CPU devices (for the sharding tests), fast XLA compilation
(testenv.py), a per-session compilation cache, the import paths.

The cache lets the launcher subprocesses of the resume tests reuse each other's compiled steps.
"""
import os
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
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="kd_jax_jit_cache_"))
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
