r"""A student trained alone with cross-entropy (the "vanilla" baseline of the tables).

  python launch.py --config=configs/ce.py --workdir=workdirs/ce_resnet8x4 --config.student=resnet8x4
"""
from kd_jax import config as kdc


def get_config(arg=None):
  config = kdc.method_defaults(kdc.base_config(), "ce")
  if arg:
    config.student = arg
    if arg in kdc.SMALL_LR_STUDENTS:
      config.learning_rate = 0.01
  return config
