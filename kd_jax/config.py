"""Run configuration: the schema every `configs/*.py` fills, the presets as layers, validation.

A config is data (an ml_collections ConfigDict). `base_config()` holds every key, with a
one-line description each (`key_descriptions()`), and the CIFAR-100 protocol of the papers; its
`loss` block is derived from the hyperparameters the method records declare
(kd_jax/methods.py). `method_defaults()` applies a method's record, `apply_pair()` a
teacher/student pair's preset (the ImageNet protocol for ImageNet pairs) and, on request,
logit standardization. Each preset is a named layer computed from the values beneath it, so
re-applying one replaces it instead of compounding; `sources()` says where each value comes
from (SOURCES). `validate()` rejects bad values before anything is compiled. This module names
no method: what is specific to one lives in its record. The recipes and their sources are in
docs/recipes.md.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections

from kd_jax import methods
from kd_jax import models
from kd_jax import data as data_lib
from kd_jax import errors
from kd_jax.errors import ConfigError, DataError
from kd_jax.methods import Choice, Flag, Range

# Datasets with presets (more: 'imagefolder:PATH' and TFDS names, kd_jax/data/sources.py).
DATASETS = tuple(data_lib.KNOWN_DATASETS)
IN_MEMORY_DATASETS = data_lib.IN_MEMORY_PRESETS
NUM_CLASSES = {name: preset.num_classes for name, preset in data_lib.KNOWN_DATASETS.items()}
SCHEDULES = ("multistep", "cosine")
OPTIMIZERS = ("sgd",)

# Students trained with base LR 0.01 instead of 0.05 on CIFAR (docs/recipes.md §1.1).
SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")

# The teacher -> student pairs of the papers' CIFAR-100 grid and ImageNet. Per-pair values of a
# method are in its record (methods.Method.cifar_pairs / imagenet_pairs / ls).
CIFAR_PAIRS: tuple[tuple[str, str], ...] = (
    ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("wrn_40_2", "wrn_40_1"),
    ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("resnet110", "resnet32"),
    ("resnet110", "resnet20"), ("resnet32x4", "ShuffleV2"), ("resnet32x4", "wrn_16_2"),
    ("resnet32x4", "wrn_40_2"), ("wrn_40_2", "resnet8x4"), ("wrn_40_2", "MobileNetV2"),
    ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("resnet32x4", "ShuffleV1"),
    ("wrn_40_2", "ShuffleV1"), ("ResNet50", "vgg8"),
)
IMAGENET_PAIRS: tuple[tuple[str, str], ...] = (
    ("imagenet_resnet34", "imagenet_resnet18"), ("imagenet_resnet50", "MobileNetV1"),
)

# The ImageNet protocol shared by every method (docs/recipes.md §2): these keys plus each loss
# hyperparameter's declared ImageNet value (`imagenet_protocol()`); a method's record adds its
# own `imagenet` overrides on top.
IMAGENET_PROTOCOL: dict[str, Any] = {
    "dataset": "imagenet2012", "num_classes": 1000, "eval_split": "validation",
    "batch_size": 512, "eval_batch_size": 512, "learning_rate": 0.2, "weight_decay": 1e-4,
    "num_epochs": 100, "lr_milestones": (30, 60, 90), "log_every_steps": 100,
    "checkpoint_every_steps": 2000,
}


def imagenet_protocol() -> dict[str, Any]:
  """The ImageNet protocol's values, the loss keys' from their declarations."""
  return {**IMAGENET_PROTOCOL, **methods.imagenet_protocol_values()}

# Seeds go through jax.random.key (32 bits without x64) and a sweep holds them as int32.
SEED_RANGE = (0, 2 ** 31 - 1)

_POSITIVE, _NON_NEGATIVE = Range(0.0, lo_open=True), Range(0.0)
_COUNT, _COUNT_OR_0 = Range(1, integer=True), Range(0, integer=True)

# Every key but the loss block: (dotted name, default, description, accepted values or None).
# The defaults are the CIFAR-100 protocol of mdistiller. `validate()` checks every key that
# declares its accepted values here (and the loss keys against their records' declarations);
# the keys without (None) take checks across keys or the data, further down.
_SCHEMA: tuple[tuple[str, Any, str, Optional[methods.Check]], ...] = (
    ("method", "kd", "the method (kd_jax.methods.names())", None),
    ("base_method", "", "for a plug-in method (rkkd): the method its term is added to", None),
    # Data.
    ("dataset", "cifar100", "a preset (" + ", ".join(DATASETS) + "), 'imagefolder:PATH' or a "
     "TFDS image dataset name (docs/data.md)", None),
    ("data_dir", "", "TFDS data_dir ('' = TFDS default, ~/tensorflow_datasets)", None),
    ("num_classes", 100, "number of classes (a preset's; other datasets: the dataset's own "
     "unless set in the config file or on the command line, when it must match)", _COUNT),
    ("train_examples", 0, "use the first N training examples (0 = the whole split)",
     _COUNT_OR_0),
    ("eval_examples", 0, "use the first N eval examples (0 = the whole split)", _COUNT_OR_0),
    ("eval_split", "test", "the split evaluated after each epoch", None),
    ("image_size", 0, "input height/width (0 = the dataset's: 32 CIFAR, 224 streamed, else the "
     "images' own)", _COUNT_OR_0),
    ("tfds_name", "", "TFDS name read instead of `dataset` (not for CIFAR/synthetic)", None),
    ("crop_area", data_lib.CROP_AREA,
     "augment='random_resized_crop': area fraction range (lo, hi)", None),
    ("crop_aspect", data_lib.CROP_ASPECT,
     "augment='random_resized_crop': width/height range (lo, hi)", None),
    ("augment", "auto", "training augmentation: " + " | ".join(data_lib.AUGMENTATIONS),
     Choice(tuple(data_lib.AUGMENTATIONS))),
    ("mean", (), "per-channel mean in [0, 1] pixel units; () = the dataset's default", None),
    ("std", (), "per-channel std in [0, 1] pixel units; () = the dataset's default", None),
    ("skip_unreadable_images", False, "image folders: leave out files that cannot be decoded "
     "(one line says how many) instead of stopping", Flag()),
    ("in_memory_budget_mb", 4096.0,
     "MB: TFDS data whose uint8 training split fits is held in device memory", _NON_NEGATIVE),
    # Models.
    ("student", "resnet8x4", "student model (kd_jax.models.names())", None),
    ("aux_head", "", "student auxiliary head: '' | 'linear' | 'nonlinear' (DHKD)",
     Choice(("",) + tuple(models.AUX_HEADS))),
    ("teacher", "resnet32x4", "teacher model ('' for methods without a teacher)", None),
    ("teacher_checkpoint", "",
     "teacher weights: .pth, .msgpack, kd_jax workdir (WORKDIR[:best|:latest]) or 'random:SEED'",
     None),
    ("student_init", "",
     "student start: '' (random init) | .pth | .msgpack | kd_jax workdir (last state; WORKDIR:best)",
     None),
    ("dtype", "float32", "student compute dtype (parameters stay float32)",
     Choice(tuple(models.DTYPES))),
    ("teacher_dtype", "float32", "teacher compute dtype (bfloat16 only within tolerance)",
     Choice(tuple(models.DTYPES))),
    ("teacher_cache", "",
     "dir of exact teacher-logit tables for every augmented view (in-memory data); '' = off",
     None),
    # The loss block, loss.*, is derived from the method records (_loss_schema).
    # Optimisation.
    ("optimizer", "sgd", "optimizer: " + ", ".join(OPTIMIZERS), Choice(OPTIMIZERS)),
    ("learning_rate", 0.05, "base learning rate", _POSITIVE),
    ("momentum", 0.9, "SGD momentum", Range(0.0, 1.0, hi_open=True)),
    ("nesterov", False, "Nesterov momentum", Flag()),
    ("weight_decay", 5e-4, "coupled L2 weight decay on every parameter (torch SGD)",
     _NON_NEGATIVE),
    ("schedule", "multistep", "LR schedule: " + ", ".join(SCHEDULES), Choice(SCHEDULES)),
    ("lr_milestones", (150, 180, 210), "epochs after which the LR is multiplied by lr_decay",
     None),
    ("lr_decay", 0.1, "multistep LR factor", _POSITIVE),
    ("lr_warmup_epochs", 0, "linear LR warm-up epochs", _NON_NEGATIVE),
    ("num_epochs", 240, "training epochs", None),
    ("num_train_steps", -1, "training steps (-1: num_epochs * steps per epoch)", None),
    ("batch_size", 64, "global batch size for training", _COUNT),
    ("eval_batch_size", 64, "global eval batch", _COUNT),
    ("seed", 0, "seed of initialisation, data order and augmentation",
     Range(*SEED_RANGE, integer=True)),
    # Loop.
    ("steps_per_dispatch", 1, "training steps per dispatch (one lax.scan on accelerators)",
     _COUNT),
    ("log_every_steps", 100, "train metrics every N steps (unless set in the config file or on "
     "the command line, a run under 1000 steps logs every tenth of the run)", _COUNT),
    ("eval_every_epochs", 1, "evaluate every N epochs (may be a fraction; unless set, a run "
     "shorter than an epoch evaluates about 5 times)", _POSITIVE),
    ("checkpoint_every_steps", 1000, "checkpoint every N steps", _COUNT),
    ("keep_checkpoints", 3, "checkpoints kept", _COUNT),
    ("max_bad_steps", 20, "consecutive non-finite steps before the run stops", _COUNT),
    ("num_devices", 0, "devices used (0 = all local devices of every host)", _COUNT_OR_0),
    ("sweep", "", "'KEY=V1,V2;KEY2=V3' trains the product as runs of one program ('' = one run)",
     None),
    ("runs_per_device", 0, "a sweep's runs held by each device, the rest of the mesh splitting "
     "the batch (0 = as many devices per run as the runs and devices allow)", None),
    ("wandb_project", "", "Weights & Biases project to log to ('' = off; needs wandb)", None),
    ("allow_changed", "", "resume: identity keys allowed to differ from the checkpoint's, "
     "comma-separated (e.g. 'num_epochs' to extend a run); '' = refuse any change", None),
)


def _loss_schema() -> tuple[tuple[str, Any, str, methods.Check], ...]:
  """The loss block: every hyperparameter the registered methods declare."""
  return tuple((f"loss.{h.key}", h.default, h.doc, h.accepts) for h in methods.hyperparameters())


def schema() -> tuple[tuple[str, Any, str, Optional[methods.Check]], ...]:
  """Every key of a run: (dotted name, default, one-line description, accepted values or None
  where a check across keys or the data decides)."""
  method = (("method", "kd", "the method: " + ", ".join(methods.names()), None),)
  return method + _SCHEMA[1:] + _loss_schema()


def base_config() -> ml_collections.ConfigDict:
  """Every key of a run, with the CIFAR-100 protocol of mdistiller (docs/recipes.md)."""
  c = ml_collections.ConfigDict()
  for key, default, _, _ in schema():
    _set(c, key, default, create=True)
  return c


def key_descriptions() -> dict[str, str]:
  """Dotted key -> one-line description, for every key of the schema."""
  return {key: doc for key, _, doc, _ in schema()}


def _set(config, key: str, value: Any, create: bool = False) -> None:
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    if create and part not in node:
      node[part] = ml_collections.ConfigDict()
    node = node[part]
  node[leaf] = value


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def flat_items(config, prefix: str = "") -> dict[str, Any]:
  """{'loss': {'beta': 8}} -> {'loss.beta': 8}, in the config's key order."""
  out = {}
  for name, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flat_items(value, f"{prefix}{name}."))
    else:
      out[f"{prefix}{name}"] = value
  return out


# ---------------------------------------------------------------------------------------
# Presets as named layers, and where each value comes from.

# Where a value can come from, in the order the layers apply.
SCHEMA_DEFAULT = "schema default"
METHOD_RECORD = "method record"
PROTOCOL = "protocol"
PAIR_PRESET = "pair preset"
LS_RECIPE = "LS recipe"
CONFIG_FILE = "config file"
COMMAND_LINE = "command line"
RESOLVED = "resolved from the data"
SOURCES = (SCHEMA_DEFAULT, METHOD_RECORD, PROTOCOL, PAIR_PRESET, LS_RECIPE, CONFIG_FILE,
           COMMAND_LINE, RESOLVED)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One preset applied to a config: its source (one of SOURCES) and its dotted values."""
  source: str
  values: tuple[tuple[str, Any], ...]


# The layers a ConfigDict was built from ride on it as this attribute (not a config key, so
# config.json's fields, to_json and identity checks see the values only).
_LAYERS_ATTR = "_kd_jax_layers"


def layers(config: ml_collections.ConfigDict) -> tuple[Layer, ...]:
  """The preset layers applied to `config`, in order (() for a config built by hand)."""
  return tuple(config.__dict__.get(_LAYERS_ATTR, ()))


def _set_layers(config, stack: Sequence[Layer]) -> None:
  object.__setattr__(config, _LAYERS_ATTR, tuple(stack))


def copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` (references resolved) that keeps its layers, so `sources()` of the
  copy still tell preset values from chosen ones."""
  out = config.copy_and_resolve_references()
  _set_layers(out, layers(config))
  return out


def _fold(stack: Sequence[Layer]) -> ml_collections.ConfigDict:
  """base_config() with the layers' values applied in order."""
  c = base_config()
  for layer in stack:
    _apply(c, dict(layer.values))
  return c


def _push(config, source: str, compute: Callable[[Any], Mapping[str, Any]]) -> None:
  """Applies the `source` layer, computed from the config with any earlier `source` layer
  taken off (its keys back to the values beneath it); the new layer replaces the old."""
  stack = layers(config)
  kept = [layer for layer in stack if layer.source != source]
  if len(kept) != len(stack):
    beneath = _fold(kept)
    for layer in stack:
      if layer.source == source:
        for key, _ in layer.values:
          _set(config, key, _get(beneath, key))
  values = dict(compute(config))
  _apply(config, values)
  _set_layers(config, kept + [Layer(source, tuple(values.items()))])


def record_command_line(config: ml_collections.ConfigDict,
                        overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Records `--config.KEY=VALUE` overrides (already applied) as the command-line layer."""
  kept = [layer for layer in layers(config) if layer.source != COMMAND_LINE]
  values = tuple((k, _get(config, k)) for k in overrides)
  _set_layers(config, kept + [Layer(COMMAND_LINE, values)])
  return config


def _same(a: Any, b: Any) -> bool:
  return methods._hashable(a) == methods._hashable(b)  # pylint: disable=protected-access


def sources(config: ml_collections.ConfigDict,
            resolved: Optional[ml_collections.ConfigDict] = None) -> dict[str, str]:
  """Dotted key -> the source of its value (SOURCES), for every key of `config`.

  A value equal to what the preset layers give comes from the last layer that set it (else the
  schema); one the command-line layer set, from the command line; any other value, from the
  config file. `resolved`: the config after the run filled in data-dependent values (their
  source is then the data).
  """
  stack = layers(config)
  presets = [layer for layer in stack if layer.source != COMMAND_LINE]
  folded = flat_items(_fold(presets))
  command_line = {k: v for layer in stack if layer.source == COMMAND_LINE for k, v in layer.values}
  by_layer = {k: layer.source for layer in presets for k, _ in layer.values}
  after = flat_items(resolved) if resolved is not None else {}
  out = {}
  for key, value in flat_items(config).items():
    if key in after and not _same(after[key], value):
      out[key] = RESOLVED
    elif key in command_line and _same(command_line[key], value):
      out[key] = COMMAND_LINE
    elif key not in folded or not _same(folded[key], value):
      out[key] = CONFIG_FILE
    else:
      out[key] = by_layer.get(key, SCHEMA_DEFAULT)
  return out


def format_config(config: ml_collections.ConfigDict,
                  command_line: Optional[Mapping[str, Any]] = None) -> str:
  """One `key = value  source  # description` line per key (what --print_config prints)."""
  if command_line is not None:
    config = record_command_line(config, command_line)
  descriptions = key_descriptions()
  where = sources(config)
  flat = flat_items(config)
  width = max(len(f"{k} = {v!r}") for k, v in flat.items())
  lines = []
  for key, value in flat.items():
    text = f"{key} = {value!r}"
    line = f"{text:<{width}}  {where[key]:<{max(map(len, SOURCES))}}"
    doc = descriptions.get(key, "")
    lines.append(f"{line}  # {doc}" if doc else line.rstrip())
  return "\n".join(lines)


def _apply(config, overrides: Mapping[str, Any]) -> None:
  for key, value in overrides.items():
    _set(config, key, value)


def method_defaults(config: ml_collections.ConfigDict, method: str,
                    base_method: str = "kd") -> ml_collections.ConfigDict:
  """Sets `method` and its CIFAR defaults from its record (a plug-in: its base's, then its own)."""
  record = methods.get(method)
  values: dict[str, Any] = {}
  if record.plugin:
    if base_method not in methods.base_names():
      raise ConfigError(f"{method} base method {base_method!r} is not supported; accepted: "
                        f"{list(methods.base_names())}")
    values.update(methods.get(base_method).cifar)
    values["base_method"] = base_method
  values.update(record.cifar)
  values["method"] = method
  _push(config, METHOD_RECORD, lambda c: {**values, **_plugin_weight(c, values)})
  return config


def _plugin_weight(config, values: Mapping[str, Any]) -> dict[str, Any]:
  """A plug-in's weight = its base's distillation weight (docs/recipes.md §3.6), as the
  override the layer of `values` adds (config overlaid with `values`); {} if unchanged."""
  def value(key):
    return values[key] if key in values else _get(config, key)
  record = methods.get(value("method"))
  if not (record.plugin and record.plugin_weight):
    return {}
  base = methods.get(value("base_method"))
  weight = value(f"loss.{base.distill_weight}") if base.distill_weight else 1.0
  key = f"loss.{record.plugin_weight}"
  return {} if key in values or _same(value(key), weight) else {key: weight}


def parse_arg(arg: Optional[str]) -> dict[str, Any]:
  """Parses the `configs/x.py:ARG` suffix: '[TEACHER,STUDENT][,BASE][,ls]'.

  BASE (a method a plug-in can be added to) is the base method of a plug-in's config file
  (configs/rkkd.py); 'ls' asks for logit standardization with the pair's published settings.
  """
  out: dict[str, Any] = {"pair": None, "ls": False, "base": None}
  if not arg:
    return out
  parts = [p.strip() for p in arg.split(",") if p.strip()]
  bases = [p for p in parts if p in methods.base_names()]
  names = [p for p in parts if p != "ls" and p not in bases]
  if len(names) not in (0, 2) or len(bases) > 1:
    raise ConfigError(
        f"config argument {arg!r}: expected 'TEACHER,STUDENT', optionally followed by ',ls' "
        f"(and for {' and '.join(_plugin_files())} by a base method in "
        f"{list(methods.base_names())}); "
        f"known pairs: {', '.join(known_pairs())}")
  out["pair"] = tuple(names) if names else None
  out["ls"] = "ls" in parts
  out["base"] = bases[0] if bases else None
  return out


def known_pairs() -> list[str]:
  return [f"{t},{s}" for t, s in CIFAR_PAIRS + IMAGENET_PAIRS]


def _base_record(config) -> methods.Method:
  return methods.get(methods.methods_of(config)[0])


def apply_pair(config: ml_collections.ConfigDict, teacher: str, student: str,
               ls: bool = False) -> ml_collections.ConfigDict:
  """Sets teacher, student and the pair's published hyperparameters for config.method.

  ImageNet pairs take the ImageNet protocol layer first; `ls` adds the LS recipe's layer.
  """
  pair = (teacher, student)
  base = _base_record(config)
  values: dict[str, Any] = {}
  if pair in IMAGENET_PAIRS:
    protocol = {**imagenet_protocol(), **base.imagenet}
    _push(config, PROTOCOL, lambda c: {**protocol, **_plugin_weight(c, protocol)})
    values.update(base.imagenet_pairs.get(pair, {}))
  elif pair in CIFAR_PAIRS:
    if student in SMALL_LR_STUDENTS:
      values["learning_rate"] = 0.01
    values.update(base.cifar_pairs.get(pair, {}))
  else:
    raise ConfigError(
        f"unknown teacher/student pair {teacher},{student}; the presets cover: "
        f"{', '.join(known_pairs())}. For another pair, start from the config without an "
        f"argument and set --config.teacher={teacher} --config.student={student}")
  values.update(teacher=teacher, student=student)
  _push(config, PAIR_PRESET, lambda c: {**values, **_plugin_weight(c, values)})
  if ls:
    _push(config, LS_RECIPE, lambda c: _ls_values(c, pair, base))
  return config


def _ls_values(config, pair, base: methods.Method) -> dict[str, Any]:
  """The LS layer: the pair's published setting, else the method's default, applied to the
  loss values beneath it. ImageNet pairs take only published settings; others are refused."""
  if base.ls is None:
    raise ConfigError(f"',ls' applies to {', '.join(methods.ls_names())}; got method "
                      f"{base.name!r}")
  if pair in IMAGENET_PAIRS:
    setting = base.ls.imagenet.get(pair)
    if setting is None:
      raise ConfigError(
          f"',ls' has no published ImageNet settings for {base.name} on {pair[0]},{pair[1]}; "
          f"set --config.loss.standardize=True and the temperature/weights yourself")
  else:
    setting = base.ls.cifar.get(pair, base.ls.default)
  values = dict(base.ls.apply({k: config.loss[k] for k in config.loss.keys()}, setting))
  return {**values, **_plugin_weight(config, values)}


def from_arg(config: ml_collections.ConfigDict, arg: Optional[str]) -> ml_collections.ConfigDict:
  """Applies a `configs/x.py:TEACHER,STUDENT[,ls]` argument (the pair's published settings)."""
  parsed = parse_arg(arg)
  if parsed["base"] is not None and (not methods.get(config.method).plugin or
                                     parsed["base"] != config.base_method):
    raise ConfigError(f"config argument {arg!r}: a base method ({parsed['base']!r}) is only "
                      f"accepted by {' and '.join(_plugin_files())}")
  if parsed["pair"] is not None:
    apply_pair(config, *parsed["pair"], ls=parsed["ls"])
  elif parsed["ls"]:
    apply_pair(config, config.teacher, config.student, ls=True)
  return config


# Keys a `--config.KEY=` override may not change: they select the method whose defaults the
# config file applied, so changing them afterwards would keep the other method's settings.
METHOD_KEYS = ("method", "base_method")


def check_overrides(overrides: Sequence[str], config_file: str) -> None:
  """Refuses command-line overrides of the method keys, naming the config file to use instead."""
  changed = [k for k in overrides if k in METHOD_KEYS]
  if changed:
    raise ConfigError(
        f"--config.{changed[0]} cannot be overridden: the method's defaults (weights, "
        f"temperature, warm-up) come from the config file ({config_file}); start from "
        f"configs/METHOD.py (a plug-in's base: {' or '.join(f + ':BASE' for f in _plugin_files())}"
        f" or {_plugin_files()[0]}:TEACHER,STUDENT,BASE with BASE in "
        f"{', '.join(methods.base_names())})")


def _plugin_files() -> list[str]:
  return [f"configs/{n}.py" for n in methods.names() if methods.get(n).plugin]


# ---------------------------------------------------------------------------------------
# Validation: every check names the key, the bad value and what is accepted.


def _choice(config, key: str, accepted: Sequence[Any]) -> None:
  """A key whose accepted values are known only at run time (models, methods)."""
  _check(config, key, methods.Choice(tuple(accepted)))


def _check(config, key: str, accepts: methods.Check) -> None:
  value = _get(config, key)
  expected = accepts.expected(value)
  if expected is not None:
    raise ConfigError(f"config.{key}={value!r} is not accepted; {expected}")


def _declared_values(config) -> None:
  """Every key against the accepted values its schema entry (or loss record) declares."""
  for key, _, _, accepts in schema():
    if accepts is not None:
      _check(config, key, accepts)


def _crop_ranges(config) -> None:
  """crop_area: 0 < lo <= hi <= 1; crop_aspect: 0 < lo <= hi; only streamed datasets."""
  try:
    data_lib.check_crop_ranges(config.crop_area, config.crop_aspect)
  except DataError as e:
    raise ConfigError(f"config.{e}") from None
  for key in ("crop_area", "crop_aspect"):
    default = tuple(base_config()[key])
    if (config.dataset in IN_MEMORY_DATASETS and config.augment != "random_resized_crop"
        and tuple(config[key]) != default):
      raise ConfigError(f"config.{key}={tuple(config[key])} applies to the random resized "
                        f"crop only; dataset {config.dataset!r} uses config.augment="
                        f"{config.augment!r} (keep the default {default}, or set "
                        f"--config.augment=random_resized_crop)")


def _dataset(config) -> None:
  """A preset name, 'imagefolder:PATH' or a TFDS-style name (whether it exists is checked later)."""
  try:
    data_lib.sources.check_dataset_name(config.dataset)
  except DataError as e:
    raise ConfigError(f"config.{e}") from None


def _augment_and_normalization(config) -> None:
  """mean/std: () or 3 numbers (augment's names: its schema entry)."""
  for key, lo, what in (("mean", 0.0, "0 <= m <= 1"), ("std", None, "0 < s <= 1")):
    value = config[key]
    try:
      numbers = [float(v) for v in value]
    except (TypeError, ValueError):
      numbers = None
    ok = numbers is not None and (not numbers or (len(numbers) == 3 and all(
        math.isfinite(v) and v <= 1.0 and (v >= lo if lo is not None else v > 0.0)
        for v in numbers)))
    if not ok:
      raise ConfigError(f"config.{key}={value!r} is not accepted; accepted: () for the "
                        f"dataset's default or three per-channel numbers in [0, 1] pixel units "
                        f"with {what}, e.g. --config.{key}=(0.5071,0.4867,0.4408)")


def _views(config) -> None:
  """The run's views: known augmentations; a teacher table serves the run's own augmentation."""
  base, plugins = methods.methods_of(config)
  views = methods.run_views([methods.get(n) for n in (base,) + plugins])
  for view in views:
    if view.augment and view.augment not in data_lib.AUGMENTATIONS:
      raise ConfigError(f"method {config.method!r}: view {view.name!r} has augmentation "
                        f"{view.augment!r}; accepted: "
                        f"{', '.join(repr(a) for a in data_lib.AUGMENTATIONS)}")
  if config.teacher_cache and config.augment in data_lib.AUGMENTATIONS:
    augments = data_lib.view_augments(config.augment, [v.augment for v in views], True)
    problem = data_lib.teacher_table_problem(config.dataset, augments)
    if problem:
      raise ConfigError(f"config.teacher_cache={config.teacher_cache!r}: {problem} (set "
                        f"config.teacher_cache='')")


def _method_keys(config) -> None:
  """The method, its base, teacher, heads and the loss keys that belong to one method."""
  _choice(config, "method", methods.names())
  record = methods.get(config.method)
  if record.plugin:
    _choice(config, "base_method", methods.base_names())
  elif config.base_method not in ("", config.method):
    raise ConfigError(f"config.base_method={config.base_method!r} is only used by a plug-in "
                      f"method ({', '.join(n for n in methods.names() if methods.get(n).plugin)});"
                      f" got method={config.method!r}")
  base, plugins = methods.methods_of(config)
  run = {base, *plugins}
  if methods.needs_teacher(config):
    if not config.teacher_checkpoint:
      raise ConfigError(
          f"method {config.method!r} needs a teacher: set config.teacher_checkpoint to a "
          f"PyTorch .pth file, a kd_jax teacher workdir (Orbax), or 'random:SEED' for tests")
  elif config.teacher:
    raise ConfigError(f"config.teacher={config.teacher!r} is set but method "
                      f"{config.method!r} trains without a teacher; set config.teacher=''")
  aux = [n for n in sorted(run) if methods.get(n).aux_head]
  if aux and not config.aux_head:
    raise ConfigError(f"method {aux[0]!r} needs config.aux_head in "
                      f"{', '.join(repr(h) for h in models.AUX_HEADS)}")
  if not aux and config.aux_head:
    raise ConfigError(f"config.aux_head={config.aux_head!r} is only used by a method with an "
                      f"auxiliary head (got method {config.method!r}); set config.aux_head=''")
  for name in methods.names():
    for key in methods.get(name).own_keys:
      if name not in run and not _same(config.loss[key], methods.hyper(key).default):
        raise ConfigError(f"config.loss.{key}={config.loss[key]!r} is only used by method "
                          f"{name!r} (got method {config.method!r})")
  if config.loss.standardize and base not in methods.ls_names():
    raise ConfigError(f"config.loss.standardize=True applies to "
                      f"{', '.join(methods.ls_names())}; got {base!r}")


def chosen(config: ml_collections.ConfigDict, key: str) -> bool:
  """Whether the value of `key` was chosen for this run (in the config file or on the command
  line, even if equal to the default) rather than left to the schema or a preset layer.

  A config file's value equal to the layers' is indistinguishable from theirs (not chosen);
  a command-line value always counts (`record_command_line` keeps every override given).
  """
  return sources(config)[key] in (CONFIG_FILE, COMMAND_LINE)


def short_run_log_every(config, total_steps: int) -> int:
  """log_every_steps, or, when it is not `chosen`, on a run of fewer than 10 x it, a tenth of
  the run (>= 1): a short run logs about 10 times."""
  every = int(config.log_every_steps)
  if chosen(config, "log_every_steps") or total_steps >= 10 * every:
    return every
  return max(1, int(total_steps) // 10)


def short_run_eval_every(config, total_steps: int, steps_per_epoch: int) -> float:
  """eval_every_epochs, or, when it is not `chosen`, on a run shorter than one epoch, the
  fraction of an epoch that evaluates about 5 times in the run."""
  if chosen(config, "eval_every_epochs") or total_steps >= steps_per_epoch:
    return config.eval_every_epochs
  return math.ceil(total_steps / 5) / steps_per_epoch


def _random_teacher_seed(config) -> None:
  """teacher_checkpoint='random:SEED': SEED in the seed's range."""
  lo, hi = SEED_RANGE
  source = config.teacher_checkpoint
  if isinstance(source, str) and source.startswith("random:"):
    seed = source.split(":", 1)[1]
    try:
      value = int(seed or 0)
    except ValueError:
      value = None
    if value is None or not lo <= value <= hi:
      raise ConfigError(f"config.teacher_checkpoint={source!r}: the seed {seed!r} is not "
                        f"accepted; expected 'random:SEED' with an integer SEED in [{lo}, {hi}]"
                        f", e.g. 'random:0'")


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
  _method_keys(config)
  _views(config)
  _dataset(config)
  _choice(config, "student", sorted(model_names))
  if methods.needs_teacher(config):
    _choice(config, "teacher", sorted(model_names))
  _declared_values(config)
  if config.dataset in NUM_CLASSES and config.num_classes != NUM_CLASSES[config.dataset]:
    raise ConfigError(f"config.num_classes={config.num_classes} does not match dataset "
                      f"{config.dataset!r}, which has {NUM_CLASSES[config.dataset]} classes")
  _augment_and_normalization(config)
  _random_teacher_seed(config)
  if config.wandb_project:
    import importlib.util  # pylint: disable=g-import-not-at-top
    if importlib.util.find_spec("wandb") is None:
      raise ConfigError(f"config.wandb_project={config.wandb_project!r} needs the wandb "
                        f"package, which is not installed: pip install wandb (or leave "
                        f"config.wandb_project='')")
  _crop_ranges(config)
  if config.num_epochs <= 0 and config.num_train_steps <= 0:
    raise ConfigError(f"config.num_epochs={config.num_epochs} and config.num_train_steps="
                      f"{config.num_train_steps}: one of them must be > 0")
  for name in methods.names():
    if methods.get(name).check is not None:
      methods.get(name).check(config)
  if list(config.lr_milestones) != sorted(config.lr_milestones):
    raise ConfigError(f"config.lr_milestones={tuple(config.lr_milestones)} must be increasing")
  for key in ("batch_size", "eval_batch_size"):
    if _get(config, key) % num_devices:
      raise ConfigError(f"config.{key}={_get(config, key)} is not divisible by the "
                        f"{num_devices} devices in use; use a multiple of {num_devices} "
                        f"(or set config.num_devices)")

