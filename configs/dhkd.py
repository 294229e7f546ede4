r"""DHKD (Yang et al. 2024): CE on the main head + alpha*BinaryKL-Norm(T=2) on an auxiliary head.

Nonlinear auxiliary head with gradient alignment (the README's resnet32x4 -> ShuffleV2 command):
  python launch.py --config=configs/dhkd.py:resnet32x4,ShuffleV2 --workdir=workdirs/dhkd_r32x4_shv2 \
    --config.teacher_checkpoint=teachers/resnet32x4.pth
Linear head without alignment: --config.aux_head=linear --config.loss.grad_align=False
"""
from kd_jax import config as kdc


def get_config(arg=None):
  config = kdc.method_defaults(kdc.base_config(), "dhkd")
  if not arg:
    config.teacher, config.student = "resnet32x4", "ShuffleV2"
    config.learning_rate = 0.01
  return kdc.from_arg(config, arg)
