"""Run configuration: the one schema every `configs/*.py` fills, pair presets, and validation.

A config is data (an ml_collections ConfigDict). `base_config()` holds every key with the
CIFAR-100 protocol of the papers; `apply_pair()` sets a teacher/student pair's published
hyperparameters; `validate()` rejects bad values before anything is compiled.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import ml_collections

from kd_jax.data import imagenet as imagenet_data
from kd_jax.errors import ConfigError

METHODS = ("ce", "teacher", "kd", "dkd", "rld", "dhkd", "rkkd")
# Methods RKKD's ranking term can be added to.
RKKD_BASES = ("ce", "kd", "dkd", "rld", "dhkd")
DATASETS = ("cifar100", "cifar10", "synthetic", "imagenet2012")
IN_MEMORY_DATASETS = ("cifar100", "cifar10", "synthetic")
NUM_CLASSES = {"cifar100": 100, "cifar10": 10, "synthetic": 100, "imagenet2012": 1000}
SCHEDULES = ("multistep", "cosine")
DTYPES = ("float32", "bfloat16")
AUX_HEADS = ("", "linear", "nonlinear")
RANK_FORMS = ("tanh", "sigmoid", "sign_teacher")

# Students trained with base LR 0.01 instead of 0.05 on CIFAR (recipes.md section 1.1).
SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")

# CIFAR-100 teacher -> student pairs of the papers' grid with their DKD beta
# (configs/cifar100/dkd/*.yaml in mdistiller and the RLD fork; recipes.md section 3.2).
CIFAR_PAIRS: dict[tuple[str, str], dict[str, float]] = {
    ("resnet32x4", "resnet8x4"): {"dkd_beta": 8.0},
    ("vgg13", "vgg8"): {"dkd_beta": 6.0},
    ("wrn_40_2", "wrn_40_1"): {"dkd_beta": 6.0},
    ("wrn_40_2", "wrn_16_2"): {"dkd_beta": 6.0},
    ("resnet56", "resnet20"): {"dkd_beta": 2.0},
    ("resnet110", "resnet32"): {"dkd_beta": 2.0},
    ("resnet110", "resnet20"): {"dkd_beta": 2.0},
    ("resnet32x4", "ShuffleV2"): {"dkd_beta": 8.0},
    ("resnet32x4", "wrn_16_2"): {"dkd_beta": 8.0},
    ("resnet32x4", "wrn_40_2"): {"dkd_beta": 8.0},
    ("wrn_40_2", "resnet8x4"): {"dkd_beta": 6.0},
    ("wrn_40_2", "MobileNetV2"): {"dkd_beta": 6.0},
    ("vgg13", "MobileNetV2"): {"dkd_beta": 6.0},
    ("ResNet50", "MobileNetV2"): {"dkd_beta": 8.0},
    ("resnet32x4", "ShuffleV1"): {"dkd_beta": 8.0},
    ("wrn_40_2", "ShuffleV1"): {"dkd_beta": 8.0},
    ("ResNet50", "vgg8"): {"dkd_beta": 8.0},   # no reference DKD config: the yaml default
}

# ImageNet pairs (recipes.md section 2 and 3): DKD/RLD beta per pair.
IMAGENET_PAIRS: dict[tuple[str, str], dict[str, float]] = {
    ("imagenet_resnet34", "imagenet_resnet18"): {"dkd_beta": 0.5},
    ("imagenet_resnet50", "MobileNetV1"): {"dkd_beta": 2.0},
}

# Logit-standardization settings per pair (recipes.md section 3.4): KD (T, kd_weight) and
# DKD (T, kd_weight, beta before the kd_weight multiplication).
LS_SETTINGS: dict[tuple[str, str], dict[str, tuple[float, ...]]] = {
    ("resnet32x4", "resnet8x4"): {"kd": (2, 9), "dkd": (2, 9, 8)},
    ("vgg13", "vgg8"): {"kd": (3, 9), "dkd": (2, 15, 2)},
    ("wrn_40_2", "wrn_40_1"): {"kd": (2, 9), "dkd": (2, 12, 2)},
    ("wrn_40_2", "wrn_16_2"): {"kd": (2, 9), "dkd": (2, 12, 2)},
    ("resnet56", "resnet20"): {"kd": (2, 9), "dkd": (3, 18, 2)},
    ("resnet110", "resnet32"): {"kd": (2, 9), "dkd": (2, 15, 2)},
    ("resnet110", "resnet20"): {"kd": (4, 12), "dkd": (2, 15, 2)},
    ("resnet32x4", "ShuffleV2"): {"kd": (2, 9), "dkd": (2, 9, 8)},
    ("resnet32x4", "wrn_16_2"): {"kd": (3, 9), "dkd": (2, 9, 2)},
    ("resnet32x4", "wrn_40_2"): {"kd": (3, 9), "dkd": (2, 9, 8)},
    ("wrn_40_2", "resnet8x4"): {"kd": (2, 9), "dkd": (2, 18, 2)},
    ("wrn_40_2", "MobileNetV2"): {"kd": (3, 9), "dkd": (2, 15, 2)},
    ("vgg13", "MobileNetV2"): {"kd": (3, 9), "dkd": (3, 9, 2)},
    ("ResNet50", "MobileNetV2"): {"kd": (3, 1), "dkd": (2, 15, 2)},
}


def base_config() -> ml_collections.ConfigDict:
  """Every key of a run, with the CIFAR-100 protocol of mdistiller (recipes.md section 1)."""
  c = ml_collections.ConfigDict()
  c.method = "kd"
  c.base_method = ""            # only for method='rkkd': the method the ranking term is added to
  # Set by method_defaults(): the 'method[/base]' whose defaults the loss keys hold, so that a
  # later `--config.method=` / `--config.base_method=` override is caught ('' = not checked).
  c.defaults_for = ""
  # Data.
  c.dataset = "cifar100"
  c.data_dir = ""               # TFDS data_dir ('' = TFDS default, ~/tensorflow_datasets)
  c.num_classes = 100
  c.train_examples = 0          # 0 = the whole split (smaller values for smoke runs)
  c.eval_examples = 0
  c.eval_split = "test"
  c.image_size = 0              # 0 = the dataset's (32 CIFAR, 224 ImageNet)
  c.tfds_name = ""              # streamed datasets: TFDS name if not `dataset` (e.g. a subset)
  # Streamed (ImageNet) training crop: area fraction and width/height ranges of the random
  # resized crop (torchvision defaults; DHKD's DALI loader uses (0.1, 1) and (0.8, 1.25)).
  c.crop_area = (0.08, 1.0)
  c.crop_aspect = (3.0 / 4.0, 4.0 / 3.0)
  # Models.
  c.student = "resnet8x4"
  c.aux_head = ""               # '' | 'linear' | 'nonlinear' (DHKD)
  c.teacher = "resnet32x4"
  c.teacher_checkpoint = ""     # .pth file, kd_jax run workdir / Orbax dir, or 'random:SEED' (tests)
  c.dtype = "float32"           # student compute dtype (params stay float32)
  c.teacher_dtype = "float32"
  # Loss hyperparameters (methods.md). Unused keys are ignored by a method.
  c.loss = ml_collections.ConfigDict()
  c.loss.ce_weight = 0.1
  c.loss.kd_weight = 0.9
  c.loss.temperature = 4.0
  c.loss.alpha = 1.0
  c.loss.beta = 8.0
  c.loss.alpha_temperature = 0.0   # RLD SCD temperature; 0 = same as temperature
  c.loss.standardize = False       # logit standardization (LS) for kd/dkd/rld
  c.loss.warmup_epochs = 0         # distillation weight warm-up min(epoch / W, 1); 0 = off
  c.loss.label_smoothing = 0.0
  c.loss.bkln_weight = 1.0         # DHKD alpha
  c.loss.bkln_temperature = 2.0
  c.loss.bkln_until_epoch = 0      # DHKD: aux loss off from this 1-based epoch on; 0 = never
  c.loss.grad_align = False        # DHKD gradient alignment (--ga)
  c.loss.rank_weight = 0.0         # RKKD gamma
  c.loss.rank_steepness = 100.0
  c.loss.rank_form = "tanh"
  c.loss.rank_top_k = 0            # 0 = all channels
  # Optimisation.
  c.optimizer = "sgd"
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 5e-4
  c.schedule = "multistep"
  c.lr_milestones = (150, 180, 210)   # epochs after which the LR is multiplied by lr_decay
  c.lr_decay = 0.1
  c.lr_warmup_epochs = 0
  c.num_epochs = 240
  c.num_train_steps = -1        # -1: num_epochs * steps_per_epoch
  c.batch_size = 64             # global batch
  c.eval_batch_size = 64
  c.seed = 0
  # Loop.
  c.steps_per_dispatch = 1      # training steps per dispatch (one lax.scan on accelerators)
  c.log_every_steps = 100
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.max_bad_steps = 20          # consecutive non-finite steps before the run stops
  c.num_devices = 0             # 0 = all local devices of every host
  # Identity keys allowed to differ from the checkpoint's when resuming a workdir, comma-separated
  # (e.g. 'num_epochs' to extend a run); '' = a changed identity key is refused (workdir.py).
  c.allow_changed = ""
  return c


def method_defaults(config: ml_collections.ConfigDict, method: str,
                    base_method: str = "kd") -> ml_collections.ConfigDict:
  """Sets the method and its CIFAR defaults (methods.md / recipes.md section 3)."""
  config.method = method
  config.defaults_for = method
  loss = config.loss
  if method in ("ce", "teacher"):
    loss.ce_weight = 1.0
    config.teacher = ""
  elif method == "kd":
    loss.ce_weight, loss.kd_weight, loss.temperature, loss.warmup_epochs = 0.1, 0.9, 4.0, 0
  elif method in ("dkd", "rld"):
    loss.ce_weight, loss.alpha, loss.beta, loss.temperature = 1.0, 1.0, 8.0, 4.0
    loss.warmup_epochs = 20
    loss.alpha_temperature = 0.0   # RLD: tau_a = T (the README's --same-t)
  elif method == "dhkd":
    loss.ce_weight, loss.bkln_weight, loss.bkln_temperature = 1.0, 1.0, 2.0
    config.aux_head = "nonlinear"
    loss.grad_align = True
  elif method == "rkkd":
    if base_method not in RKKD_BASES:
      raise ValueError(f"RKKD base method {base_method!r} is not supported; accepted: "
                       f"{list(RKKD_BASES)}")
    method_defaults(config, base_method)
    config.method = "rkkd"
    config.base_method = base_method
    config.defaults_for = f"rkkd/{base_method}"
    # gamma = the base method's KD weight (methods.md section 7, secondary source).
    loss.rank_weight = {"kd": loss.kd_weight, "dkd": loss.alpha, "rld": loss.alpha,
                        "dhkd": loss.bkln_weight, "ce": 1.0}[base_method]
  return config


def parse_arg(arg: Optional[str]) -> dict[str, Any]:
  """Parses the `configs/x.py:ARG` suffix: '[TEACHER,STUDENT][,BASE][,ls]'.

  BASE (one of RKKD_BASES) is the base method of configs/rkkd.py; 'ls' asks for logit
  standardization with the pair's published settings.
  """
  out: dict[str, Any] = {"pair": None, "ls": False, "base": None}
  if not arg:
    return out
  parts = [p.strip() for p in arg.split(",") if p.strip()]
  bases = [p for p in parts if p in RKKD_BASES]
  names = [p for p in parts if p != "ls" and p not in bases]
  if len(names) not in (0, 2) or len(bases) > 1:
    raise ValueError(
        f"config argument {arg!r}: expected 'TEACHER,STUDENT', optionally followed by ',ls' "
        f"(and for configs/rkkd.py by a base method in {list(RKKD_BASES)}); "
        f"known pairs: {sorted(known_pairs())}")
  out["pair"] = tuple(names) if names else None
  out["ls"] = "ls" in parts
  out["base"] = bases[0] if bases else None
  return out


def known_pairs() -> list[str]:
  return [f"{t},{s}" for t, s in list(CIFAR_PAIRS) + list(IMAGENET_PAIRS)]


def apply_pair(config: ml_collections.ConfigDict, teacher: str, student: str,
               ls: bool = False) -> ml_collections.ConfigDict:
  """Sets teacher, student and the pair's published hyperparameters for config.method."""
  pair = (teacher, student)
  method = config.base_method if config.method == "rkkd" else config.method
  if pair in IMAGENET_PAIRS:
    _imagenet_protocol(config, IMAGENET_PAIRS[pair], method)
  elif pair in CIFAR_PAIRS:
    if student in SMALL_LR_STUDENTS:
      config.learning_rate = 0.01
    if method in ("dkd", "rld"):
      config.loss.beta = CIFAR_PAIRS[pair]["dkd_beta"] if method == "dkd" else 8.0
  else:
    raise ValueError(f"unknown teacher/student pair {teacher},{student}; "
                     f"accepted: {', '.join(known_pairs())}")
  config.teacher, config.student = teacher, student
  if ls:
    _apply_ls(config, pair, method)
  if config.method == "rkkd":
    loss = config.loss
    loss.rank_weight = {"kd": loss.kd_weight, "dkd": loss.alpha, "rld": loss.alpha,
                        "dhkd": loss.bkln_weight, "ce": 1.0}[method]
  return config


# The LS code's command-line defaults (methods.md section 4): base_temp, kd_weight.
LS_CLI_DEFAULTS = (2.0, 9.0)


def _apply_ls(config, pair, method):
  """Logit standardization settings (methods.md section 4, recipes.md section 3.4).

  KD and DKD take the pair's published (T, kd_weight[, beta]) where the LS logs give them,
  else the LS code's defaults (T = 2, kd_weight = 9) on the pair's own DKD beta; RLD+LS has
  no per-pair settings anywhere and always takes those defaults. ImageNet has none: refused.
  """
  if method not in ("kd", "dkd", "rld"):
    raise ValueError(f"',ls' applies to kd, dkd and rld; got method {method!r}")
  if pair in IMAGENET_PAIRS:
    raise ValueError(f"',ls' has no published ImageNet settings for {pair[0]},{pair[1]}; set "
                     f"--config.loss.standardize=True and the temperature/weights yourself")
  t, w = LS_CLI_DEFAULTS
  beta = config.loss.beta
  published = LS_SETTINGS.get(pair, {}) if method != "rld" else {}
  if method in published:
    t, w, *rest = map(float, published[method])
    beta = rest[0] if rest else beta
  loss = config.loss
  loss.standardize = True
  loss.temperature = t
  if method == "kd":
    loss.kd_weight = w
  else:
    loss.alpha_temperature = t
    loss.alpha = loss.alpha * w
    loss.beta = beta * w


def _imagenet_protocol(config, pair_settings, method):
  """ImageNet recipe (recipes.md section 2) for `method`."""
  config.dataset = "imagenet2012"
  config.num_classes = 1000
  config.eval_split = "validation"
  config.batch_size = 512
  config.eval_batch_size = 512
  config.learning_rate = 0.2
  config.weight_decay = 1e-4
  config.num_epochs = 100
  config.lr_milestones = (30, 60, 90)
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  loss = config.loss
  loss.temperature = 1.0
  loss.alpha_temperature = 1.0
  loss.warmup_epochs = 1 if method in ("dkd", "rld") else 0
  if method == "kd":
    loss.ce_weight, loss.kd_weight = 0.5, 0.5
  if method in ("dkd", "rld"):
    loss.beta = pair_settings["dkd_beta"]
  if method == "dhkd":
    # DHKD ImageNet: 1*CE + 0.1*BKLN(T=2), linear head, no GA, BKLN off from epoch 50.
    config.aux_head = "linear"
    loss.grad_align = False
    loss.bkln_weight = 0.1
    loss.bkln_until_epoch = 50
    config.learning_rate = 0.1
    config.batch_size = 128
    config.crop_area = (0.1, 1.0)      # its DALI random crop (recipes.md 3.5)
    config.crop_aspect = (0.8, 1.25)


# ---------------------------------------------------------------------------------------
# Validation: every check names the key, the bad value and what is accepted.


def _choice(config, key: str, accepted: Sequence[Any]) -> None:
  value = _get(config, key)
  if value not in accepted:
    raise ConfigError(f"config.{key}={value!r} is not accepted; accepted: "
                      f"{', '.join(repr(a) for a in accepted)}")


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _positive(config, key: str, allow_zero: bool = False) -> None:
  value = _get(config, key)
  ok = isinstance(value, (int, float)) and math.isfinite(value) and (
      value >= 0 if allow_zero else value > 0)
  if not ok:
    what = "a finite number >= 0" if allow_zero else "a finite number > 0"
    raise ConfigError(f"config.{key}={value!r} is not accepted; expected {what}")


def _crop_ranges(config) -> None:
  """crop_area: 0 < lo <= hi <= 1; crop_aspect: 0 < lo <= hi; only streamed datasets."""
  try:
    imagenet_data.check_crop_ranges(config.crop_area, config.crop_aspect)
  except imagenet_data.DataError as e:
    raise ConfigError(f"config.{e}") from None
  for key in ("crop_area", "crop_aspect"):
    default = tuple(base_config()[key])
    if config.dataset in IN_MEMORY_DATASETS and tuple(config[key]) != default:
      raise ConfigError(f"config.{key}={tuple(config[key])} applies to the ImageNet random "
                        f"resized crop only; dataset {config.dataset!r} uses a padded random "
                        f"crop (keep the default {default})")


def validate(config: ml_collections.ConfigDict, *, model_names: Sequence[str],
             num_devices: int) -> None:
  """Raises ConfigError naming the first bad key; cheap (no JAX compile, no data access)."""
  unknown = sorted(set(config.keys()) - set(base_config().keys()))
  if unknown:
    raise ConfigError(f"unknown config keys {unknown}; accepted keys: "
                      f"{sorted(base_config().keys())}")
  unknown_loss = sorted(set(config.loss.keys()) - set(base_config().loss.keys()))
  if unknown_loss:
    raise ConfigError(f"unknown config.loss keys {unknown_loss}; accepted: "
                      f"{sorted(base_config().loss.keys())}")
  _choice(config, "method", METHODS)
  if config.method == "rkkd":
    _choice(config, "base_method", RKKD_BASES)
  elif config.base_method not in ("", config.method):
    raise ConfigError(f"config.base_method={config.base_method!r} is only used with "
                      f"method='rkkd'; got method={config.method!r}")
  actual = config.method + (f"/{config.base_method}" if config.method == "rkkd" else "")
  if config.defaults_for and config.defaults_for != actual:
    hint = (f"configs/rkkd.py:{config.base_method} (or configs/rkkd.py:TEACHER,STUDENT,"
            f"{config.base_method})" if config.method == "rkkd" else
            f"configs/{config.method}.py")
    raise ConfigError(
        f"config.method={config.method!r}, config.base_method={config.base_method!r}: the loss "
        f"settings are the defaults of {config.defaults_for!r}, which a command-line override "
        f"does not change; start from {hint} so that its defaults (weights, temperature, "
        f"warm-up) apply")
  _choice(config, "dataset", DATASETS)
  _choice(config, "student", sorted(model_names))
  _choice(config, "aux_head", AUX_HEADS)
  _choice(config, "dtype", DTYPES)
  _choice(config, "teacher_dtype", DTYPES)
  _choice(config, "schedule", SCHEDULES)
  _choice(config, "optimizer", ("sgd",))
  _choice(config, "loss.rank_form", RANK_FORMS)
  if config.num_classes != NUM_CLASSES[config.dataset]:
    raise ConfigError(f"config.num_classes={config.num_classes} does not match dataset "
                      f"{config.dataset!r}, which has {NUM_CLASSES[config.dataset]} classes")
  base = effective_method(config)
  if needs_teacher(config):
    _choice(config, "teacher", sorted(model_names))
    if not config.teacher_checkpoint:
      raise ConfigError(
          f"method {config.method!r} needs a teacher: set config.teacher_checkpoint to a "
          f"PyTorch .pth file, a kd_jax teacher workdir (Orbax), or 'random:SEED' for tests")
  elif config.teacher:
    if config.method in ("ce", "teacher"):
      raise ConfigError(f"config.teacher={config.teacher!r} is set but method "
                        f"{config.method!r} trains without a teacher; set config.teacher=''")
  if base == "dhkd" and not config.aux_head:
    raise ConfigError("method 'dhkd' needs config.aux_head in ('linear', 'nonlinear')")
  if base != "dhkd" and config.aux_head:
    raise ConfigError(f"config.aux_head={config.aux_head!r} is only used by method 'dhkd' "
                      f"(got method {config.method!r}); set config.aux_head=''")
  if config.loss.grad_align and base != "dhkd":
    raise ConfigError("config.loss.grad_align=True is only used by method 'dhkd'")
  if config.loss.rank_weight and config.method != "rkkd":
    raise ConfigError(f"config.loss.rank_weight={config.loss.rank_weight} is only used by "
                      f"method 'rkkd' (got {config.method!r}); use method='rkkd' with "
                      f"base_method={config.method!r}")
  if config.loss.standardize and base not in ("kd", "dkd", "rld"):
    raise ConfigError(f"config.loss.standardize=True applies to kd, dkd and rld; got "
                      f"{base!r}")
  for key in ("learning_rate", "batch_size", "eval_batch_size", "loss.temperature",
              "loss.bkln_temperature", "loss.rank_steepness", "steps_per_dispatch",
              "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
              "max_bad_steps", "eval_every_epochs"):
    _positive(config, key)
  for key in ("image_size", "weight_decay", "momentum", "loss.ce_weight", "loss.kd_weight", "loss.alpha",
              "loss.beta", "loss.alpha_temperature", "loss.warmup_epochs",
              "loss.label_smoothing", "loss.bkln_weight", "loss.bkln_until_epoch",
              "loss.rank_weight", "loss.rank_top_k", "lr_warmup_epochs",
              "train_examples", "eval_examples", "num_devices"):
    _positive(config, key, allow_zero=True)
  _crop_ranges(config)
  if config.num_epochs <= 0 and config.num_train_steps <= 0:
    raise ConfigError(f"config.num_epochs={config.num_epochs} and config.num_train_steps="
                      f"{config.num_train_steps}: one of them must be > 0")
  if config.loss.rank_top_k and config.loss.rank_top_k < 2:
    raise ConfigError(f"config.loss.rank_top_k={config.loss.rank_top_k}: expected 0 (all "
                      f"classes) or at least 2")
  if config.loss.rank_top_k > config.num_classes:
    raise ConfigError(f"config.loss.rank_top_k={config.loss.rank_top_k} exceeds "
                      f"num_classes={config.num_classes}")
  if list(config.lr_milestones) != sorted(config.lr_milestones):
    raise ConfigError(f"config.lr_milestones={tuple(config.lr_milestones)} must be increasing")
  for key in ("batch_size", "eval_batch_size"):
    if _get(config, key) % num_devices:
      raise ConfigError(f"config.{key}={_get(config, key)} is not divisible by the "
                        f"{num_devices} devices in use; use a multiple of {num_devices} "
                        f"(or set config.num_devices)")


def effective_method(config) -> str:
  """The method whose losses run: the base for 'rkkd', 'ce' for 'teacher'."""
  if config.method == "rkkd":
    return config.base_method
  return "ce" if config.method == "teacher" else config.method


def needs_teacher(config) -> bool:
  return config.method == "rkkd" or effective_method(config) != "ce"


def from_arg(config: ml_collections.ConfigDict, arg: Optional[str]) -> ml_collections.ConfigDict:
  """Applies a `configs/x.py:TEACHER,STUDENT[,ls]` argument (the pair's published settings)."""
  parsed = parse_arg(arg)
  if parsed["base"] is not None and (config.method != "rkkd" or
                                     parsed["base"] != config.base_method):
    raise ValueError(f"config argument {arg!r}: a base method ({parsed['base']!r}) is only "
                     f"accepted by configs/rkkd.py")
  if parsed["pair"] is not None:
    apply_pair(config, *parsed["pair"], ls=parsed["ls"])
  elif parsed["ls"]:
    apply_pair(config, config.teacher, config.student, ls=True)
  return config
