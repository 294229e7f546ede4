r"""DIST (Huang et al. 2022): CE + 2*(beta*inter + gamma*intra), the Pearson relations of the
softmax at tau = 4 within each example and within each class (the authors' dist_cifar.yaml).

  python launch.py --config=configs/dist.py:resnet32x4,resnet8x4 --workdir=workdirs/dist_r32x4_r8x4 \
    --config.teacher_checkpoint=teachers/resnet32x4.pth
"""
from kd_jax import config as kdc


def get_config(arg=None):
  config = kdc.method_defaults(kdc.base_config(), "dist")
  return kdc.from_arg(config, arg)
