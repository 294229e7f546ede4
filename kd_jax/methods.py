"""The method registry: one record per method holds everything that is specific to it.

A record (`Method`) says which loss terms the method adds and on which head, whether it needs a
teacher or an auxiliary head, its CIFAR-100 defaults, its ImageNet overrides, its per-pair
settings and its logit-standardization (LS) recipe. `kd_jax/config.py` applies records
generically and names no method; the training step calls `loss_terms`, which adds the terms of
the run's records. Adding a method = one `register(Method(...))` plus its loss function (and a
`configs/` file). The equations are in docs/methods.md, the recipes and their sources in
docs/recipes.md.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from kd_jax import losses
from kd_jax.errors import ConfigError

Pair = tuple[str, str]
Overrides = Mapping[str, Any]   # dotted config key -> value, e.g. {'loss.beta': 6.0}


# ---------------------------------------------------------------------------------------
# The static loss settings of a run and the inputs of a method's terms.


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Static (hashable) loss settings of a run: the methods that run and `config.loss`.

  Build it with `LossSpec.from_config(config)`: the hyperparameters have one source, the
  `loss` block of `config.base_config()` as the run's config resolved it.
  """
  method: str                       # the base method whose terms run (never a plug-in)
  plugins: tuple[str, ...]          # plug-in methods adding their terms (('rkkd',) or ())
  ce_weight: float
  kd_weight: float
  temperature: float
  alpha: float
  beta: float
  alpha_temperature: float
  standardize: bool
  warmup_epochs: float
  label_smoothing: float
  bkln_weight: float
  bkln_temperature: float
  bkln_until_epoch: int
  grad_align: bool
  rank_weight: float
  rank_steepness: float
  rank_form: str
  rank_top_k: int

  @classmethod
  def from_config(cls, config) -> "LossSpec":
    hyper = {f.name for f in dataclasses.fields(cls)} - {"method", "plugins"}
    base, plugins = methods_of(config)
    return cls(method=base, plugins=plugins, **{k: config.loss[k] for k in hyper})

  @property
  def records(self) -> tuple["Method", ...]:
    return (get(self.method),) + tuple(get(p) for p in self.plugins)

  @property
  def needs_teacher(self) -> bool:
    return any(r.needs_teacher for r in self.records)

  @property
  def uses_aux_head(self) -> bool:
    return any(r.aux_head for r in self.records)


@dataclasses.dataclass(frozen=True)
class TermInputs:
  """What a method's terms see in one step (teacher logits already under stop_gradient)."""
  logits: jax.Array                 # student main head [B, C]
  labels: jax.Array                 # [B] int
  teacher: Optional[jax.Array]      # [B, C] or None without a teacher
  aux: Optional[jax.Array]          # student auxiliary head [B, C] or None
  epoch: jax.Array                  # 1-based epoch, traced int scalar
  warmup: jax.Array                 # distillation warm-up factor w(epoch)


TermsFn = Callable[[LossSpec, TermInputs], dict[str, jax.Array]]


# ---------------------------------------------------------------------------------------
# Records.


@dataclasses.dataclass(frozen=True)
class LSSetting:
  """One logit-standardization setting: the LS code's `--base-temp` and `--kd-weight`.

  beta: DKD's beta before the weight multiplication (None: the pair's own beta);
  ce_weight: a CE weight the setting prescribes (None: the method's own).
  """
  temperature: float
  weight: float
  beta: Optional[float] = None
  ce_weight: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class LSRecipe:
  """How a method takes logit standardization: default and per-pair settings, and how to apply."""
  default: Optional[LSSetting]                        # CIFAR pairs without published settings
  cifar: Mapping[Pair, LSSetting]
  imagenet: Mapping[Pair, LSSetting]                  # pairs absent here are refused
  apply: Callable[[Any, LSSetting], None]             # (config, setting) -> sets config.loss


@dataclasses.dataclass(frozen=True)
class Method:
  """Everything specific to one method (docs/methods.md, docs/recipes.md)."""
  name: str
  summary: str                      # one line: the loss
  terms: TermsFn                    # weighted batch-mean terms it adds (CE is common to all)
  needs_teacher: bool
  cifar: Overrides                  # defaults over base_config(), CIFAR-100 protocol
  imagenet: Overrides = dataclasses.field(default_factory=dict)   # over the ImageNet protocol
  cifar_pairs: Mapping[Pair, Overrides] = dataclasses.field(default_factory=dict)
  imagenet_pairs: Mapping[Pair, Overrides] = dataclasses.field(default_factory=dict)
  aux_head: bool = False            # its terms act on the student's auxiliary head
  ls: Optional[LSRecipe] = None     # None: logit standardization is not defined for it
  # As the base of a plug-in: the loss key holding its distillation weight (None: weight 1).
  distill_weight: Optional[str] = None
  can_be_base: bool = True          # a plug-in may be added to it
  # A plug-in adds its terms to a base method (config.base_method); it sets `plugin_weight`
  # to the base's distillation weight unless the user overrides it.
  plugin: bool = False
  plugin_weight: Optional[str] = None
  # Loss keys only this method uses: any other method must leave them falsy.
  own_keys: tuple[str, ...] = ()


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds `method` to the registry (a name may be registered once)."""
  if method.name in _REGISTRY:
    raise ValueError(f"method {method.name!r} is already registered")
  _REGISTRY[method.name] = method
  return method


def unregister(name: str) -> None:
  """Removes a method (tests that register toy methods clean up with this)."""
  _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  """Registered method names, in registration order."""
  return tuple(_REGISTRY)


def base_names() -> tuple[str, ...]:
  """Methods a plug-in can be added to."""
  return tuple(n for n, m in _REGISTRY.items() if m.can_be_base and not m.plugin)


def ls_names() -> tuple[str, ...]:
  """Methods that take logit standardization."""
  return tuple(n for n, m in _REGISTRY.items() if m.ls is not None)


def get(name: str) -> Method:
  """The record of `name`, or a ConfigError listing the registered methods."""
  if name not in _REGISTRY:
    raise ConfigError(f"config.method={name!r} is not accepted; accepted: "
                      f"{', '.join(repr(n) for n in _REGISTRY)}")
  return _REGISTRY[name]


def methods_of(config) -> tuple[str, tuple[str, ...]]:
  """(base method whose terms run, plug-ins) of a run's config."""
  if get(config.method).plugin:
    return config.base_method, (config.method,)
  return config.method, ()


def needs_teacher(config) -> bool:
  base, plugins = methods_of(config)
  return any(get(n).needs_teacher for n in (base,) + plugins)


# ---------------------------------------------------------------------------------------
# The loss of one step.


def warmup_factor(epoch: jax.Array, warmup_epochs: float,
                  dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """w(e) = min(e / W, 1) with 1-based epochs, constant within an epoch; 1 when W = 0.

  In `dtype`, the logits' (float64 under JAX x64: a float32 w would be off by ~1e-8)."""
  if not warmup_epochs:
    return jnp.ones((), dtype)
  return jnp.minimum(epoch.astype(dtype) / warmup_epochs, 1.0)


def loss_terms(spec: LossSpec, logits: jax.Array, labels: jax.Array,
               teacher_logits: Optional[jax.Array], aux_logits: Optional[jax.Array],
               epoch: jax.Array) -> dict[str, jax.Array]:
  """Weighted batch-mean loss terms of one step; their sum is the training loss.

  logits/aux_logits: the student's main/auxiliary head [B, C]; teacher_logits [B, C] (taken
  under stop_gradient here) or None; labels [B] int; epoch: 1-based epoch (traced scalar).
  CE (ce_weight * mean CE, with label smoothing) acts on the main head for every method; each
  record of the run then adds its own terms.
  """
  terms = {"ce": spec.ce_weight * jnp.mean(losses.cross_entropy(
      logits, labels, label_smoothing=spec.label_smoothing))}
  if teacher_logits is not None:
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
  inputs = TermInputs(logits=logits, labels=labels, teacher=teacher_logits, aux=aux_logits,
                      epoch=epoch, warmup=warmup_factor(epoch, spec.warmup_epochs, logits.dtype))
  for record in spec.records:
    terms.update(record.terms(spec, inputs))
  return terms


def split_for_grad_align(terms: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """DHKD gradient alignment groups: (task loss = CE, distillation loss = every other term)."""
  task = terms["ce"]
  distill = sum((v for k, v in terms.items() if k != "ce"), jnp.zeros((), jnp.float32))
  return task, distill


# ---------------------------------------------------------------------------------------
# The methods. Terms: docs/methods.md; values and their sources: docs/recipes.md.


def _no_terms(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  del spec, x
  return {}


def _kd_terms(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  return {"kd": x.warmup * spec.kd_weight * jnp.mean(losses.kd(
      x.logits, x.teacher, temperature=spec.temperature, standardize=spec.standardize))}


def _dkd_terms(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  kw = dict(temperature=spec.temperature, standardize=spec.standardize)
  return {
      "tckd": x.warmup * spec.alpha * jnp.mean(losses.tckd(x.logits, x.teacher, x.labels, **kw)),
      "nckd": x.warmup * spec.beta * jnp.mean(losses.nckd(x.logits, x.teacher, x.labels, **kw)),
  }


def _rld_terms(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  t_alpha = spec.alpha_temperature or spec.temperature
  return {
      "scd": x.warmup * spec.alpha * jnp.mean(losses.scd(
          x.logits, x.teacher, x.labels, temperature=t_alpha, standardize=spec.standardize)),
      "mcd": x.warmup * spec.beta * jnp.mean(losses.mcd(
          x.logits, x.teacher, x.labels, temperature=spec.temperature,
          standardize=spec.standardize)),
  }


def _dhkd_terms(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  on = jnp.ones((), x.logits.dtype)
  if spec.bkln_until_epoch:
    on = (x.epoch < spec.bkln_until_epoch).astype(x.logits.dtype)
  return {"bkln": on * spec.bkln_weight * jnp.mean(losses.binary_kl_norm(
      x.aux, x.teacher, temperature=spec.bkln_temperature))}


def _rkkd_terms(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  return {"rank": x.warmup * spec.rank_weight * jnp.mean(losses.rank_kendall(
      x.logits, x.teacher, steepness=spec.rank_steepness, form=spec.rank_form,
      top_k=spec.rank_top_k or None))}


def _ls_on_kd(config, s: LSSetting) -> None:
  """KD+LS: T = base temperature, the KD weight = the LS weight (the KD term has weight 1)."""
  loss = config.loss
  loss.standardize = True
  loss.temperature = s.temperature
  loss.kd_weight = s.weight
  if s.ce_weight is not None:
    loss.ce_weight = s.ce_weight


def _ls_on_decoupled(config, s: LSSetting) -> None:
  """DKD/RLD+LS: both temperatures = base temperature, alpha and beta times the LS weight."""
  loss = config.loss
  loss.standardize = True
  loss.temperature = s.temperature
  loss.alpha_temperature = s.temperature
  loss.alpha = loss.alpha * s.weight
  loss.beta = (loss.beta if s.beta is None else s.beta) * s.weight
  if s.ce_weight is not None:
    loss.ce_weight = s.ce_weight


# The LS code's command-line defaults (--base-temp 2, --kd-weight 9).
LS_DEFAULT = LSSetting(temperature=2.0, weight=9.0)

# DKD beta per CIFAR-100 pair (mdistiller's per-pair DKD configs). ResNet50 -> vgg8 has no
# reference DKD config and keeps the default 8.
_DKD_CIFAR_BETA: dict[Pair, float] = {
    ("resnet32x4", "resnet8x4"): 8.0, ("vgg13", "vgg8"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0, ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0, ("resnet110", "resnet20"): 2.0,
    ("resnet32x4", "ShuffleV2"): 8.0, ("resnet32x4", "wrn_16_2"): 8.0,
    ("resnet32x4", "wrn_40_2"): 8.0, ("wrn_40_2", "resnet8x4"): 6.0,
    ("wrn_40_2", "MobileNetV2"): 6.0, ("vgg13", "MobileNetV2"): 6.0,
    ("ResNet50", "MobileNetV2"): 8.0, ("resnet32x4", "ShuffleV1"): 8.0,
    ("wrn_40_2", "ShuffleV1"): 8.0, ("ResNet50", "vgg8"): 8.0,
}
# DKD (and RLD) beta per ImageNet pair.
_DECOUPLED_IMAGENET_BETA: dict[Pair, float] = {
    ("imagenet_resnet34", "imagenet_resnet18"): 0.5,
    ("imagenet_resnet50", "MobileNetV1"): 2.0,
}

# Published LS settings per CIFAR-100 pair (the LS paper's logs).
_KD_LS: dict[Pair, LSSetting] = {pair: LSSetting(temperature=t, weight=w) for pair, (t, w) in {
    ("resnet32x4", "resnet8x4"): (2, 9), ("vgg13", "vgg8"): (3, 9),
    ("wrn_40_2", "wrn_40_1"): (2, 9), ("wrn_40_2", "wrn_16_2"): (2, 9),
    ("resnet56", "resnet20"): (2, 9), ("resnet110", "resnet32"): (2, 9),
    ("resnet110", "resnet20"): (4, 12), ("resnet32x4", "ShuffleV2"): (2, 9),
    ("resnet32x4", "wrn_16_2"): (3, 9), ("resnet32x4", "wrn_40_2"): (3, 9),
    ("wrn_40_2", "resnet8x4"): (2, 9), ("wrn_40_2", "MobileNetV2"): (3, 9),
    ("vgg13", "MobileNetV2"): (3, 9), ("ResNet50", "MobileNetV2"): (3, 1),
}.items()}
_DKD_LS: dict[Pair, LSSetting] = {
    pair: LSSetting(temperature=t, weight=w, beta=b) for pair, (t, w, b) in {
        ("resnet32x4", "resnet8x4"): (2, 9, 8), ("vgg13", "vgg8"): (2, 15, 2),
        ("wrn_40_2", "wrn_40_1"): (2, 12, 2), ("wrn_40_2", "wrn_16_2"): (2, 12, 2),
        ("resnet56", "resnet20"): (3, 18, 2), ("resnet110", "resnet32"): (2, 15, 2),
        ("resnet110", "resnet20"): (2, 15, 2), ("resnet32x4", "ShuffleV2"): (2, 9, 8),
        ("resnet32x4", "wrn_16_2"): (2, 9, 2), ("resnet32x4", "wrn_40_2"): (2, 9, 8),
        ("wrn_40_2", "resnet8x4"): (2, 18, 2), ("wrn_40_2", "MobileNetV2"): (2, 15, 2),
        ("vgg13", "MobileNetV2"): (3, 9, 2), ("ResNet50", "MobileNetV2"): (2, 15, 2),
    }.items()}
# KD+LS on ImageNet, ResNet34 -> ResNet18: the LS repository README's kd.yaml run with LS (T 2,
# weight 9) and that yaml's CE weight 1 (docs/recipes.md §3.4).
_KD_LS_IMAGENET: dict[Pair, LSSetting] = {
    ("imagenet_resnet34", "imagenet_resnet18"): LSSetting(temperature=2.0, weight=9.0,
                                                          ce_weight=1.0),
}

_DECOUPLED_CIFAR = {"loss.ce_weight": 1.0, "loss.alpha": 1.0, "loss.beta": 8.0,
                    "loss.temperature": 4.0, "loss.warmup_epochs": 20,
                    "loss.alpha_temperature": 0.0}   # RLD: tau_a = T

register(Method(
    name="ce", summary="cross-entropy alone (the vanilla student)", terms=_no_terms,
    needs_teacher=False, cifar={"loss.ce_weight": 1.0, "teacher": ""}))
register(Method(
    name="teacher", summary="cross-entropy alone, training a teacher", terms=_no_terms,
    needs_teacher=False, cifar={"loss.ce_weight": 1.0, "teacher": ""}, can_be_base=False))
register(Method(
    name="kd", summary="ce_weight*CE + kd_weight*T^2*KL(p_t^T || p_s^T)", terms=_kd_terms,
    needs_teacher=True,
    cifar={"loss.ce_weight": 0.1, "loss.kd_weight": 0.9, "loss.temperature": 4.0,
           "loss.warmup_epochs": 0},
    imagenet={"loss.ce_weight": 0.5, "loss.kd_weight": 0.5},
    distill_weight="kd_weight",
    ls=LSRecipe(default=LS_DEFAULT, cifar=_KD_LS, imagenet=_KD_LS_IMAGENET, apply=_ls_on_kd)))
register(Method(
    name="dkd", summary="CE + w(e)*(alpha*TCKD + beta*NCKD)", terms=_dkd_terms,
    needs_teacher=True, cifar=_DECOUPLED_CIFAR, imagenet={"loss.warmup_epochs": 1},
    cifar_pairs={p: {"loss.beta": b} for p, b in _DKD_CIFAR_BETA.items()},
    imagenet_pairs={p: {"loss.beta": b} for p, b in _DECOUPLED_IMAGENET_BETA.items()},
    distill_weight="alpha",
    ls=LSRecipe(default=LS_DEFAULT, cifar=_DKD_LS, imagenet={}, apply=_ls_on_decoupled)))
register(Method(
    name="rld", summary="CE + w(e)*(alpha*SCD + beta*MCD)", terms=_rld_terms,
    needs_teacher=True, cifar=_DECOUPLED_CIFAR, imagenet={"loss.warmup_epochs": 1},
    imagenet_pairs={p: {"loss.beta": b} for p, b in _DECOUPLED_IMAGENET_BETA.items()},
    distill_weight="alpha",
    # No per-pair LS settings are published for RLD: always the LS defaults.
    ls=LSRecipe(default=LS_DEFAULT, cifar={}, imagenet={}, apply=_ls_on_decoupled)))
register(Method(
    name="dhkd", summary="CE (main head) + alpha*BinaryKL-Norm (auxiliary head)",
    terms=_dhkd_terms, needs_teacher=True, aux_head=True,
    cifar={"loss.ce_weight": 1.0, "loss.bkln_weight": 1.0, "loss.bkln_temperature": 2.0,
           "aux_head": "nonlinear", "loss.grad_align": True},
    # ImageNet: linear head, no alignment, weight 0.1, aux loss off from epoch 50, LR 0.1 at
    # batch 128, and its DALI loader's crop ranges.
    imagenet={"aux_head": "linear", "loss.grad_align": False, "loss.bkln_weight": 0.1,
              "loss.bkln_until_epoch": 50, "learning_rate": 0.1, "batch_size": 128,
              "crop_area": (0.1, 1.0), "crop_aspect": (0.8, 1.25)},
    distill_weight="bkln_weight", own_keys=("grad_align",)))
register(Method(
    name="rkkd", summary="a base method + gamma*(1 - tau_k) (Kendall ranking term)",
    terms=_rkkd_terms, needs_teacher=True, cifar={}, plugin=True,
    plugin_weight="rank_weight", own_keys=("rank_weight",)))
