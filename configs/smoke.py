r"""The whole pipeline offline in about 30 s on 2 CPU cores: synthetic data, a tiny student.

  python launch.py --config=configs/smoke.py --workdir=/tmp/kd_jax_smoke

What it runs by default: RKKD on a DKD base (cross-entropy + DKD's TCKD/NCKD terms + the
ranking term), student resnet8 (no auxiliary head) distilled from a randomly initialised
resnet8 teacher ('random:0'), 60 steps of batch 16 on 960 synthetic CIFAR-shaped images of
100 classes (each class a colour, plus noise), evaluation on 200 held-out images at the end,
checkpoints every 10 steps. The student ends well above chance (about 9% top-1 against 1%).
`configs/smoke.py:METHOD` smokes one method instead (ce, teacher, kd, dkd, rld, dhkd, rkkd,
ctkd, mlkd, dist; dhkd adds the auxiliary head).
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
