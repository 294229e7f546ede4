r"""MLKD (Jin et al. 2023): instance-, batch- and class-level KD over a weak (pad-crop-flip) and a
strong (pad-crop-flip + RandAugment(2, 10) + Cutout) view of each image.

Default: 0.1*(CE(weak) + CE(strong)) + 0.9*(KD at T = 4, 3, 5, 2, 6 + batch and class terms);
epochs and LR per pair from the authors' yamls (240 epochs, LR 0.025 for same-family pairs).
  python launch.py --config=configs/mlkd.py:resnet32x4,resnet8x4 --workdir=workdirs/mlkd_r32x4_r8x4 \
    --config.teacher_checkpoint=teachers/resnet32x4.pth
Logit standardization (the LS repository's MLKD runs): add `,ls`. The teacher runs online on
both views (a teacher table holds one view: keep config.teacher_cache='').
"""
from kd_jax import config as kdc


def get_config(arg=None):
  config = kdc.method_defaults(kdc.base_config(), "mlkd")
  return kdc.from_arg(config, arg)
