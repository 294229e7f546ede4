"""Launches one kd_jax run: `python launch.py --config=configs/rkkd.py --workdir=DIR`.

Flags: --config (an ml_collections config file, `file.py:ARG` picks a teacher/student pair,
`--config.key=value` overrides any key) and --workdir (outputs; the same workdir resumes).
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get("KD_JAX_DISTRIBUTED") or os.environ.get("TPU_WORKER_HOSTNAMES") or (
      os.environ.get("SLURM_NTASKS", "1") != "1"):
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:  # a single host without a coordinator
      logging.warning("jax.distributed.initialize() skipped: %s", e)
  # Hide accelerators from TensorFlow (used only for TFDS input); JAX owns them.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except ImportError:
    pass
  from kd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from kd_jax import errors  # pylint: disable=g-import-not-at-top
  from kd_jax.train import loop  # pylint: disable=g-import-not-at-top
  print(f"kd_jax: process {jax.process_index()}/{jax.process_count()}, "
        f"{jax.device_count()} devices ({jax.devices()[0].platform})", flush=True)
  try:
    config_lib.check_overrides(list(config_flags.get_override_values(flags.FLAGS["config"])),
                               config_flags.get_config_filename(flags.FLAGS["config"]))
    result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except errors.USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  if result.preempted:
    print("Preempted: run the same command again to resume.", flush=True)
  else:
    print(f"Done at step {result.step}: final {result.final}, best top-1 "
          f"{result.best_top1:.4f}", flush=True)


if __name__ == "__main__":
  app.run(main)
