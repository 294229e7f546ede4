r"""DKD (Zhao et al. 2022): CE + w(e)*(alpha*TCKD + beta*NCKD), T=4, 20-epoch warm-up; beta per pair.

  python launch.py --config=configs/dkd.py:resnet32x4,resnet8x4 --workdir=workdirs/dkd_r32x4_r8x4 \
    --config.teacher_checkpoint=teachers/resnet32x4.pth
"""
from kd_jax import config as kdc


def get_config(arg=None):
  config = kdc.method_defaults(kdc.base_config(), "dkd")
  return kdc.from_arg(config, arg)
