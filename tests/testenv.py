"""XLA settings of the test processes, for conftest.py and the tests that start subprocesses.

The suite compiles hundreds of small programs and runs each only a few times, so compilation is
most of its CPU time. XLA's backend optimization level 0 (LLVM without its expensive passes)
compiled the resnet8 KD train step in 2.7 s instead of 5.8 s, with the same step time and the
loss equal to 6 digits (2-core CPU, 2026-12-02). It changes float rounding only, never what is
computed; every comparison in the suite has a tolerance or compares programs compiled alike.
Users' runs keep XLA's defaults, and so do the tests whose time goes into running rather than
compiling (the trajectory proofs: level 0 made their float64 steps several times slower).
"""
import os

FAST_COMPILE = "--xla_backend_optimization_level=0"
# XLA's default level, for the few programs of the suite that run long rather than compile long.
DEFAULT_LEVEL = {"xla_backend_optimization_level": 2}


def xla_flags(devices: int, fast_compile: bool = True) -> str:
  """XLA_FLAGS for a test process simulating `devices` CPU devices."""
  flags = f"--xla_force_host_platform_device_count={devices}"
  return f"{flags} {FAST_COMPILE}" if fast_compile else flags


def subprocess_env(devices: int = 1, fast_compile: bool = True, **extra: str) -> dict:
  """os.environ for a launcher/script subprocess with `devices` CPU devices, plus `extra`."""
  return dict(os.environ, XLA_FLAGS=xla_flags(devices, fast_compile), **extra)


def run_optimized(fn, mesh, *args):
  """Runs the jitted `fn(*args)` compiled at XLA's default optimization level (with kd_jax's
  own CPU options for `mesh`), for lax.scan loops: at level 0 XLA:CPU ran the 4-step scan of
  the resnet8 KD step in 11 s instead of 1.5 s (2-core CPU, 2026-12-02)."""
  from kd_jax.train import step  # pylint: disable=import-outside-toplevel
  options = {**(step.compiler_options(mesh) or {}), **DEFAULT_LEVEL}
  return fn.lower(*args).compile(options)(*args)
