r"""RKKD (Guan et al. 2024): a Kendall's-tau ranking term on the logits added to a base method.

Default: KD base, 0.1*CE + 0.9*KD(T=4) + 0.9*(1 - tau_k), k = 100.
  python launch.py --config=configs/rkkd.py --workdir=workdirs/rkkd_r32x4_r8x4 \
    --config.teacher_checkpoint=teachers/resnet32x4.pth
Another pair: `configs/rkkd.py:TEACHER,STUDENT`; another base: `--config.base_method=dkd` (the
ranking weight then follows `--config.loss.rank_weight`).
"""
from kd_jax import config as kdc


def get_config(arg=None):
  config = kdc.method_defaults(kdc.base_config(), "rkkd", base_method="kd")
  return kdc.from_arg(config, arg)
