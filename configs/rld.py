r"""RLD (Sun et al. 2024): CE + w(e)*(alpha*SCD + beta*MCD), tau_a = T = 4, 20-epoch warm-up.

  python launch.py --config=configs/rld.py:resnet32x4,resnet8x4 --workdir=workdirs/rld_r32x4_r8x4 \
    --config.teacher_checkpoint=teachers/resnet32x4.pth
"""
from kd_jax import config as kdc


def get_config(arg=None):
  config = kdc.method_defaults(kdc.base_config(), "rld")
  return kdc.from_arg(config, arg)
