r"""The whole pipeline on synthetic CIFAR-shaped data, offline, in a few minutes on 2 CPU cores.

  python launch.py --config=configs/smoke.py --workdir=/tmp/kd_jax_smoke
Teacher forward (random teacher), student with an auxiliary head, every loss term of RKKD on a
DKD base plus a standardized variant via --config.loss.standardize, eval, checkpoints every 10
steps. `configs/smoke.py:METHOD` smokes one method (ce, teacher, kd, dkd, rld, dhkd, rkkd).
"""
from kd_jax import config as kdc


def get_config(arg=None):
  method = arg or "rkkd"
  base = "dkd" if method == "rkkd" else "kd"
  config = kdc.method_defaults(kdc.base_config(), method, base_method=base)
  config.dataset = "synthetic"
  config.num_classes = 100
  config.train_examples = 960
  config.eval_examples = 200
  config.student = "resnet8"
  if method not in ("ce", "teacher"):
    config.teacher = "resnet8"
    config.teacher_checkpoint = "random:0"
  config.batch_size = 16
  config.eval_batch_size = 64
  config.num_epochs = 1
  config.num_train_steps = 60
  config.learning_rate = 0.02
  config.lr_milestones = (2, 3)
  config.loss.warmup_epochs = min(config.loss.warmup_epochs, 1)
  config.steps_per_dispatch = 5
  config.log_every_steps = 10
  config.checkpoint_every_steps = 10
  config.eval_every_epochs = 1
  config.keep_checkpoints = 2
  return config
