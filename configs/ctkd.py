r"""CTKD (Li et al. 2023): KD with a learned temperature, trained through a gradient-reversal
layer whose strength follows a cosine curriculum (lambda 0 -> 1 over epochs 1-10).

Default (the authors' CIFAR run script): 0.1*CE + 0.9*KD(tau), tau = 1 + 20*sigmoid(r), r = 1
at start (tau0 = 15.62), r in the student's SGD.
  python launch.py --config=configs/ctkd.py:resnet56,resnet20 --workdir=workdirs/ctkd_r56_r20 \
    --config.teacher_checkpoint=teachers/resnet56.pth
The DKD base (1*CE + DKD(alpha 1, beta 2) at the learned tau): `configs/ctkd.py:dkd` or
`configs/ctkd.py:TEACHER,STUDENT,dkd`; logit standardization: add `,ls`. The instance-wise
module: `--config.loss.ctkd_module=instance`. The temperature is logged as train/temperature.
"""
from kd_jax import config as kdc
from kd_jax import methods


def get_config(arg=None):
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  dkd = "dkd" in parts
  config = kdc.method_defaults(kdc.base_config(), "ctkd")
  if dkd:
    for key, value in methods.CTKD_DKD_VALUES.items():
      kdc._set(config, key, value)  # pylint: disable=protected-access
  return kdc.from_arg(config, ",".join(p for p in parts if p != "dkd") or None)
