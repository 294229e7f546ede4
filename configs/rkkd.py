r"""RKKD (Guan et al. 2024): a Kendall's-tau ranking term on the logits added to a base method.

Default: KD base, 0.1*CE + 0.9*KD(T=4) + 0.9*(1 - tau_k), k = 100.
  python launch.py --config=configs/rkkd.py --workdir=workdirs/rkkd_r32x4_r8x4 \
    --config.teacher_checkpoint=teachers/resnet32x4.pth
Another pair: `configs/rkkd.py:TEACHER,STUDENT`. Another base (its own defaults, the ranking
weight = its distillation weight): `configs/rkkd.py:dkd` or `configs/rkkd.py:TEACHER,STUDENT,dkd`
with a base in ce, kd, dkd, rld, dhkd, ctkd, mlkd, dist; `--config.loss.rank_weight=` overrides
the weight.
"""
from kd_jax import config as kdc


def get_config(arg=None):
  base = kdc.parse_arg(arg)["base"] or "kd"
  config = kdc.method_defaults(kdc.base_config(), "rkkd", base_method=base)
  return kdc.from_arg(config, arg)
