r"""KD (Hinton et al. 2015): 0.1*CE + 0.9*T^2*KL at T=4 on CIFAR-100 (mdistiller defaults).

  python launch.py --config=configs/kd.py:resnet32x4,resnet8x4 --workdir=workdirs/kd_r32x4_r8x4 \
    --config.teacher_checkpoint=teachers/resnet32x4.pth
Any pair of the papers' grid: `configs/kd.py:TEACHER,STUDENT`; logit standardization: add `,ls`.
ImageNet: `configs/kd.py:imagenet_resnet34,imagenet_resnet18`.
"""
from kd_jax import config as kdc


def get_config(arg=None):
  config = kdc.method_defaults(kdc.base_config(), "kd")
  return kdc.from_arg(config, arg)
