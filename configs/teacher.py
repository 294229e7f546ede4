r"""Trains a CIFAR-100 teacher from scratch (RepDistiller's train_teacher recipe: CE, 240 epochs).

  python launch.py --config=configs/teacher.py:resnet32x4 --workdir=workdirs/teacher_resnet32x4
Then distil from it with `--config.teacher_checkpoint=workdirs/teacher_resnet32x4`.
"""
from kd_jax import config as kdc


def get_config(arg=None):
  config = kdc.method_defaults(kdc.base_config(), "teacher")
  config.student = arg or "resnet32x4"
  if config.student in kdc.SMALL_LR_STUDENTS:
    config.learning_rate = 0.01
  return config
