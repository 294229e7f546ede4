"""The method registry: one record per method holds everything that is specific to it.

A record (`Method`) declares the method's hyperparameters (`Hyper`: key, default, doc, accepted
values, whether a sweep may vary it, its ImageNet-protocol value), its loss terms and their
names, the views of each example it reads, its learnable loss parameters and gradient
transform, whether it needs a teacher or an auxiliary head, its CIFAR-100 defaults, ImageNet
overrides, per-pair settings and logit-standardization (LS) recipe. Everything else is derived
from the records: the `loss` block of the config schema, validation, the sweepable keys, the
static loss settings the step sees (`LossSpec`) and the metric names. `kd_jax/config.py` and
the training step name no method. Adding a method = one `register(Method(...))` plus its loss
function (and a `configs/` file). The equations are in docs/methods.md, the recipes and their
sources in docs/recipes.md.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from kd_jax import losses
from kd_jax.errors import ConfigError, suggest
from kd_jax.losses import kendall

Pair = tuple[str, str]
Overrides = Mapping[str, Any]   # dotted config key -> value, e.g. {'loss.beta': 6.0}
PyTree = Any


# ---------------------------------------------------------------------------------------
# Hyperparameters: what a record declares per loss key.


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(x: float) -> str:
  """A bound as written: 0, 0.5, 2147483647 (never 2.14748e+09)."""
  return str(int(x)) if float(x).is_integer() and abs(x) < 2 ** 53 else f"{x:g}"


@dataclasses.dataclass(frozen=True)
class Range:
  """A finite number in [lo, hi] (either end open on request); `integer` asks for an int."""
  lo: float = -math.inf
  hi: float = math.inf
  lo_open: bool = False
  hi_open: bool = False
  integer: bool = False

  def accepts(self, value: Any) -> bool:
    if not _is_number(value) or not math.isfinite(value):
      return False
    if self.integer and not isinstance(value, int):
      return False
    above = value > self.lo if self.lo_open else value >= self.lo
    below = value < self.hi if self.hi_open else value <= self.hi
    return above and below

  def bounds(self) -> str:
    """'> 0', '>= 0', 'in [0, 1)' or '' (any finite number)."""
    if math.isinf(self.hi):
      return "" if math.isinf(self.lo) else f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
    return (f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}"
            f"{')' if self.hi_open else ']'}")

  def describe(self) -> str:
    """'a finite number > 0', 'a number in [0, 1)', 'an integer in [0, 9]', ..."""
    bounded = not (math.isinf(self.lo) or math.isinf(self.hi))
    what = "an integer" if self.integer else "a number" if bounded else "a finite number"
    return f"{what} {self.bounds()}".rstrip()

  def expected(self, value: Any) -> Optional[str]:
    return None if self.accepts(value) else f"expected {self.describe()}"


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `options` (strings or other scalars)."""
  options: tuple[Any, ...]

  def expected(self, value: Any) -> Optional[str]:
    if value in self.options and type(value) in {type(o) for o in self.options}:
      return None
    close = suggest(str(value), [str(o) for o in self.options])
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}accepted: " + ", ".join(repr(o) for o in self.options)


@dataclasses.dataclass(frozen=True)
class Flag:
  """True or False."""

  def expected(self, value: Any) -> Optional[str]:
    return None if isinstance(value, bool) else "expected True or False"


@dataclasses.dataclass(frozen=True)
class Numbers:
  """A list of numbers, each accepted by `each`, of min_len..max_len entries."""
  each: Range
  min_len: int = 1
  max_len: Optional[int] = None

  def expected(self, value: Any) -> Optional[str]:
    ok = (isinstance(value, (list, tuple)) and len(value) >= self.min_len
          and (self.max_len is None or len(value) <= self.max_len)
          and all(self.each.accepts(v) for v in value))
    if ok:
      return None
    size = (f"{self.min_len}" if self.max_len == self.min_len else
            f"at least {self.min_len}" if self.max_len is None else
            f"{self.min_len} to {self.max_len}")
    each = f", each {self.each.bounds()}" if self.each.bounds() else ""
    kind = "integers" if self.each.integer else "finite numbers"
    return f"expected a list of {size} {kind}{each}, e.g. (1.0, 2.0)"


Check = Union[Range, Choice, Flag, Numbers]


@dataclasses.dataclass(frozen=True)
class Hyper:
  """One loss hyperparameter: `config.loss.<key>`.

  imagenet: its value under the ImageNet protocol for every method (None: the default);
  sweepable: a float a sweep may vary (it enters the step as a traced number);
  exclusive: a method that does not declare it must leave it at its default (it turns on
  behaviour of its own method, such as a term or a gradient transform).
  """
  key: str
  default: Any
  doc: str
  accepts: Check
  sweepable: bool = False
  exclusive: bool = False
  imagenet: Any = None

  def __post_init__(self):
    if self.accepts.expected(self.default) is not None:
      raise ValueError(f"hyperparameter {self.key!r}: its default {self.default!r} is not "
                       f"accepted by its own check ({self.accepts})")
    if self.sweepable and not (isinstance(self.default, float) and
                               isinstance(self.accepts, Range)):
      raise ValueError(f"hyperparameter {self.key!r}: only a float with a Range can be swept")

  def expected(self, value: Any) -> Optional[str]:
    """None if `value` is accepted, else what is (for the one-line error)."""
    return self.accepts.expected(value)


# Keys every method reads (CE, the temperature of its distillation, LS, warm-up).
COMMON_HYPERS: tuple[Hyper, ...] = (
    Hyper("ce_weight", 0.1, "weight of the cross-entropy on the main head",
          Range(0.0), sweepable=True),
    Hyper("temperature", 4.0, "distillation temperature T", Range(0.0, lo_open=True),
          sweepable=True, imagenet=1.0),
    Hyper("standardize", False, "logit standardization (LS) of the logits before distillation "
          "(methods with an LS recipe)", Flag()),
    Hyper("warmup_epochs", 0, "distillation warm-up min(epoch / W, 1), 1-based; 0 = off",
          Range(0.0), imagenet=0),
    Hyper("label_smoothing", 0.0, "label smoothing of the cross-entropy",
          Range(0.0, 1.0, hi_open=True), sweepable=True),
)


# ---------------------------------------------------------------------------------------
# Views of an example.

DEFAULT_VIEW = "default"


@dataclasses.dataclass(frozen=True)
class View:
  """A named view of each training example. augment: '' = the run's config.augment, else an
  augmentation name (kd_jax.data.AUGMENTATIONS); with config.augment='none' every view is the
  un-augmented image. The first view of a run is the one CE, top-1 and the teacher table use."""
  name: str
  augment: str = ""


# ---------------------------------------------------------------------------------------
# The static loss settings of a run and the inputs of a method's terms.


def _hashable(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


@dataclasses.dataclass(frozen=True, init=False)
class LossSpec:
  """Static loss settings of a run: the methods that run and every declared `config.loss` key.

  Build it with `LossSpec.from_config(config)`. A hyperparameter reads as an attribute
  (`spec.temperature`); `dataclasses.replace(spec, temperature=2.0)` (or `spec.replace`) sets
  some, which is how a sweep puts traced values there. Lists are held as tuples, so a spec of
  Python values is hashable.
  """
  method: str                       # the base method whose terms run (never a plug-in)
  plugins: tuple[str, ...]          # plug-in methods adding their terms (('rkkd',) or ())
  hyper: tuple[tuple[str, Any], ...]   # (key, value) of every declared loss key, sorted

  def __init__(self, method: str, plugins: Sequence[str] = (),
               hyper: Union[Mapping[str, Any], Sequence[tuple[str, Any]]] = (), **changes: Any):
    values = dict(hyper)
    unknown = sorted(set(changes) - set(values))
    if unknown:
      raise TypeError(f"LossSpec has no hyperparameters {unknown}; declared: {sorted(values)}")
    values.update(changes)
    object.__setattr__(self, "method", method)
    object.__setattr__(self, "plugins", tuple(plugins))
    object.__setattr__(self, "hyper", tuple(sorted((k, _hashable(v)) for k, v in values.items())))

  @classmethod
  def from_config(cls, config) -> "LossSpec":
    base, plugins = methods_of(config)
    return cls(base, plugins, {h.key: config.loss[h.key] for h in hyperparameters()})

  def __getattr__(self, name: str) -> Any:
    if name.startswith("__"):
      raise AttributeError(name)
    for key, value in object.__getattribute__(self, "hyper"):
      if key == name:
        return value
    raise AttributeError(f"LossSpec has no hyperparameter {name!r}")

  def replace(self, **changes: Any) -> "LossSpec":
    return dataclasses.replace(self, **changes)

  @property
  def records(self) -> tuple["Method", ...]:
    return (get(self.method),) + tuple(get(p) for p in self.plugins)

  @property
  def needs_teacher(self) -> bool:
    return any(r.needs_teacher for r in self.records)

  @property
  def uses_aux_head(self) -> bool:
    return any(r.aux_head for r in self.records)

  @property
  def views(self) -> tuple[View, ...]:
    return run_views(self.records)

  @property
  def term_names(self) -> tuple[str, ...]:
    """The loss terms of the run (CE first), whose sum is the training loss."""
    return ("ce",) + tuple(t for r in self.records for t in r.term_names)

  @property
  def metric_names(self) -> tuple[str, ...]:
    """Every per-step metric: the terms and extra metrics (sorted), then 'loss' and 'top1'."""
    extra = tuple(m for r in self.records for m in r.metric_names)
    return tuple(sorted(self.term_names + extra)) + ("loss", "top1")

  @property
  def last_metric_names(self) -> tuple[str, ...]:
    """The metrics logged as the last step's value of a log window (the others: its mean)."""
    return tuple(m for r in self.records for m in r.last_metrics)


@dataclasses.dataclass(frozen=True)
class ViewLogits:
  """The logits of one view: student main head [B, C], teacher [B, C] or None, aux or None."""
  student: jax.Array
  teacher: Optional[jax.Array]
  aux: Optional[jax.Array]


@dataclasses.dataclass(frozen=True)
class TermInputs:
  """What a method's terms see in one step (teacher logits already under stop_gradient).

  logits/teacher/aux are the first view's; `views` holds every view's by name (the first
  included); loss_params is this record's learnable loss parameters ({} without).
  """
  logits: jax.Array                 # student main head [B, C]
  labels: jax.Array                 # [B] int
  teacher: Optional[jax.Array]      # [B, C] or None without a teacher
  aux: Optional[jax.Array]          # student auxiliary head [B, C] or None
  epoch: jax.Array                  # 1-based epoch, traced int scalar
  warmup: jax.Array                 # distillation warm-up factor w(epoch)
  views: Mapping[str, ViewLogits] = dataclasses.field(default_factory=dict)
  loss_params: PyTree = dataclasses.field(default_factory=dict)


TermsFn = Callable[[LossSpec, TermInputs], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class GradTransform:
  """A method's rule for the student's gradient: `groups(terms)` -> scalars whose gradients are
  taken one by one, `combine(grads)` -> the gradient the optimizer gets (DHKD's alignment).
  The learnable loss parameters get the plain gradient of the loss."""
  groups: Callable[[Mapping[str, jax.Array]], tuple[jax.Array, ...]]
  combine: Callable[..., PyTree]


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
  """How a method takes logit standardization: default and per-pair settings, and how to apply.

  apply(loss, setting) -> overrides: `loss` reads the loss values beneath LS (a mapping
  key -> value); the result is the LS layer's dotted overrides. It never reads LS's own output,
  so applying LS twice gives what applying it once does.
  """
  default: Optional[LSSetting]                        # CIFAR pairs without published settings
  cifar: Mapping[Pair, LSSetting]
  imagenet: Mapping[Pair, LSSetting]                  # pairs absent here are refused
  apply: Callable[[Mapping[str, Any], LSSetting], Overrides]


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
  term_names: tuple[str, ...] = ()  # the keys `terms` returns (logged as train/<name>)
  hypers: tuple[Hyper, ...] = ()    # the loss keys it declares (beyond COMMON_HYPERS)
  aux_head: bool = False            # its terms act on the student's auxiliary head
  ls: Optional[LSRecipe] = None     # None: logit standardization is not defined for it
  # As the base of a plug-in: the loss key holding its distillation weight (None: weight 1).
  distill_weight: Optional[str] = None
  can_be_base: bool = True          # a plug-in may be added to it
  # A plug-in adds its terms to a base method (config.base_method); it sets `plugin_weight`
  # to the base's distillation weight unless the user overrides it.
  plugin: bool = False
  plugin_weight: Optional[str] = None
  # Views of each example its terms read (the first is the run's main view).
  views: tuple[View, ...] = (View(DEFAULT_VIEW),)
  # Learnable loss parameters: (spec, LossParamsInit) -> initial pytree, trained with the
  # student by the same optimizer and checkpointed with the state.
  loss_params: Optional[Callable[[LossSpec, "LossParamsInit"], PyTree]] = None
  # spec -> a GradTransform for the student's gradient, or None (the plain gradient).
  grad_transform: Optional[Callable[[LossSpec], Optional[GradTransform]]] = None
  # Logged per-step values that are not loss terms: (names, fn(spec, inputs) -> {name: scalar}).
  metric_names: tuple[str, ...] = ()
  metrics: Optional[TermsFn] = None
  # Metrics logged as the last (finite) step's value of each log window, not the window mean
  # (e.g. a learned temperature: the value that step's loss used).
  last_metrics: tuple[str, ...] = ()
  # Checks across keys (config -> None or ConfigError), beyond each key's own accepted values.
  check: Optional[Callable[[Any], None]] = None

  @property
  def own_keys(self) -> tuple[str, ...]:
    """Loss keys only this method uses: any other method must leave them at their default."""
    return tuple(h.key for h in self.hypers if h.exclusive)


_REGISTRY: dict[str, Method] = {}


def hyperparameters() -> tuple[Hyper, ...]:
  """Every declared loss hyperparameter: COMMON_HYPERS, then each record's, in order."""
  out: dict[str, Hyper] = {h.key: h for h in COMMON_HYPERS}
  for record in _REGISTRY.values():
    for h in record.hypers:
      out.setdefault(h.key, h)
  return tuple(out.values())


def hyper(key: str) -> Hyper:
  """The declaration of loss key `key` (KeyError if none)."""
  return {h.key: h for h in hyperparameters()}[key]


def sweepable_keys() -> tuple[str, ...]:
  """The dotted loss keys a sweep may vary: declared floats marked sweepable."""
  return tuple(f"loss.{h.key}" for h in hyperparameters() if h.sweepable)


def imagenet_protocol_values() -> dict[str, Any]:
  """The loss values of the ImageNet protocol (every method): {'loss.temperature': 1.0, ...}."""
  return {f"loss.{h.key}": h.imagenet for h in hyperparameters() if h.imagenet is not None}


def run_views(records: Sequence[Method]) -> tuple[View, ...]:
  """The views of a run: the base record's, then those a plug-in adds beyond the default."""
  out = {v.name: v for v in records[0].views}
  for record in records[1:]:
    for view in record.views:
      if view.name == DEFAULT_VIEW:
        continue   # a plug-in's default view is the base's first view
      if view.name in out and out[view.name] != view:
        raise ConfigError(f"method {record.name!r} declares view {view.name!r} as {view}, "
                          f"the base method as {out[view.name]}")
      out.setdefault(view.name, view)
  return tuple(out.values())


def _check_record(method: Method) -> None:
  """A record must declare the loss keys it sets, consistently with the other records."""
  declared = {h.key: h for h in hyperparameters()}
  for h in method.hypers:
    if h.key in declared and declared[h.key] != h:
      raise ValueError(f"method {method.name!r} declares loss.{h.key} differently from an "
                       f"earlier declaration ({declared[h.key]})")
  own = {**declared, **{h.key: h for h in method.hypers}}
  tables = [method.cifar, method.imagenet, *method.cifar_pairs.values(),
            *method.imagenet_pairs.values()]
  for table in tables:
    for key in table:
      if key.startswith("loss.") and key[5:] not in own:
        raise ValueError(f"method {method.name!r} sets {key}, which no record declares; "
                         f"declare it in the record's hypers")
  for key in (method.distill_weight, method.plugin_weight):
    if key is not None and key not in own:
      raise ValueError(f"method {method.name!r} names loss.{key} as a weight; no record "
                       f"declares it")
  if not method.views or len({v.name for v in method.views}) != len(method.views):
    raise ValueError(f"method {method.name!r}: views must be one or more distinct names")
  if not set(method.last_metrics) <= set(method.metric_names):
    raise ValueError(f"method {method.name!r}: last_metrics {method.last_metrics} must be "
                     f"among its metric_names {method.metric_names}")
  if set(method.term_names) & ({"ce", "loss", "top1"} | set(method.metric_names)):
    raise ValueError(f"method {method.name!r}: term names {method.term_names} may not be "
                     f"'ce', 'loss', 'top1' or one of its metric names")


def register(method: Method) -> Method:
  """Adds `method` to the registry (a name may be registered once)."""
  if method.name in _REGISTRY:
    raise ValueError(f"method {method.name!r} is already registered")
  _check_record(method)
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


@dataclasses.dataclass(frozen=True)
class LossParamsInit:
  """What a record's `loss_params` may use to initialise: an RNG key of its own and the
  number of classes (e.g. for an instance-wise temperature network)."""
  rng: jax.Array
  num_classes: int


def init_loss_params(spec: LossSpec, rng: Optional[jax.Array] = None,
                     num_classes: int = 0) -> dict[str, PyTree]:
  """{method name: its initial learnable loss parameters} for the records that have them;
  each record gets its own key folded from `rng` (its position in the run)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return {r.name: r.loss_params(spec, LossParamsInit(jax.random.fold_in(rng, i), num_classes))
          for i, r in enumerate(spec.records) if r.loss_params is not None}


def grad_transform(spec: LossSpec) -> Optional[GradTransform]:
  """The run's gradient transform (at most one record may set one), or None."""
  found = [(r.name, t) for r in spec.records if r.grad_transform is not None
           for t in [r.grad_transform(spec)] if t is not None]
  if len(found) > 1:
    raise ConfigError(f"methods {[n for n, _ in found]} each transform the gradient; a run "
                      f"takes one")
  return found[0][1] if found else None


def loss_terms(spec: LossSpec, logits: jax.Array, labels: jax.Array,
               teacher_logits: Optional[jax.Array], aux_logits: Optional[jax.Array],
               epoch: jax.Array, *, views: Optional[Mapping[str, ViewLogits]] = None,
               loss_params: Optional[Mapping[str, PyTree]] = None
               ) -> dict[str, jax.Array]:
  """Weighted batch-mean loss terms of one step, plus the records' extra metrics.

  logits/aux_logits: the student's main/auxiliary head [B, C] on the first view;
  teacher_logits [B, C] (taken under stop_gradient here) or None; labels [B] int; epoch: 1-based
  epoch (traced scalar); views: every view's logits by name (default: the first view only);
  loss_params: {method: its learnable loss parameters}. CE (ce_weight * mean CE, with label
  smoothing) acts on the main head of the first view for every method; each record of the
  run then adds its declared terms. The loss is the sum of `spec.term_names`' values.
  """
  terms = {"ce": spec.ce_weight * jnp.mean(losses.cross_entropy(
      logits, labels, label_smoothing=spec.label_smoothing))}
  if teacher_logits is not None:
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
  if views is None:
    views = {spec.views[0].name: ViewLogits(logits, teacher_logits, aux_logits)}
  views = {k: dataclasses.replace(v, teacher=None if v.teacher is None else
                                  jax.lax.stop_gradient(v.teacher)) for k, v in views.items()}
  base = TermInputs(logits=logits, labels=labels, teacher=teacher_logits, aux=aux_logits,
                    epoch=epoch, warmup=warmup_factor(epoch, spec.warmup_epochs, logits.dtype),
                    views=views)
  for record in spec.records:
    inputs = dataclasses.replace(base, loss_params=(loss_params or {}).get(record.name, {}))
    out = record.terms(spec, inputs)
    if set(out) != set(record.term_names):
      raise ValueError(f"method {record.name!r}: its terms returned {sorted(out)}, its record "
                       f"declares term_names {sorted(record.term_names)}")
    terms.update(out)
    if record.metrics is not None:
      extra = record.metrics(spec, inputs)
      if set(extra) != set(record.metric_names):
        raise ValueError(f"method {record.name!r}: its metrics returned {sorted(extra)}, its "
                         f"record declares metric_names {sorted(record.metric_names)}")
      terms.update({k: jax.lax.stop_gradient(v) for k, v in extra.items()})
  return terms


def total_loss(spec: LossSpec, terms: Mapping[str, jax.Array]) -> jax.Array:
  """The training loss: the sum of the run's terms (its extra metrics left out)."""
  return sum(terms[k] for k in spec.term_names)


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


def split_for_grad_align(terms: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """DHKD gradient alignment groups: (task loss = CE, distillation loss = every other term)."""
  task = terms["ce"]
  distill = sum((v for k, v in terms.items() if k != "ce"), jnp.zeros((), jnp.float32))
  return task, distill


def project_conflict(g_task: PyTree, g_distill: PyTree) -> PyTree:
  """DHKD gradient alignment: if <g2, g1> < 0, g2 <- g2 - <g2,g1>/||g1||^2 g1; returns g1 + g2'.

  One global dot product over all flattened student parameters (docs/methods.md §6).
  """
  v1, unravel = ravel_pytree(g_task)
  v2, _ = ravel_pytree(g_distill)
  dot = jnp.vdot(v2, v1)
  norm = jnp.vdot(v1, v1)
  coef = jnp.where(dot < 0, dot / jnp.where(norm > 0, norm, 1.0), 0.0)
  return unravel(v1 + v2 - coef * v1)


_GRAD_ALIGN = GradTransform(groups=split_for_grad_align, combine=project_conflict)


def _dhkd_grad_transform(spec: LossSpec) -> Optional[GradTransform]:
  return _GRAD_ALIGN if spec.grad_align else None


def _rkkd_terms(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  return {"rank": x.warmup * spec.rank_weight * jnp.mean(losses.rank_kendall(
      x.logits, x.teacher, steepness=spec.rank_steepness, form=spec.rank_form,
      top_k=spec.rank_top_k or None))}


def _rkkd_check(config) -> None:
  top_k = config.loss.rank_top_k
  if top_k and top_k < 2:
    raise ConfigError(f"config.loss.rank_top_k={top_k}: expected 0 (all classes) or at least 2")
  if top_k > config.num_classes:
    raise ConfigError(f"config.loss.rank_top_k={top_k} exceeds num_classes="
                      f"{config.num_classes}")


def _ls_on_kd(loss: Mapping[str, Any], s: LSSetting) -> Overrides:
  """KD+LS: T = base temperature, the KD weight = the LS weight (the KD term has weight 1)."""
  out = {"loss.standardize": True, "loss.temperature": s.temperature, "loss.kd_weight": s.weight}
  if s.ce_weight is not None:
    out["loss.ce_weight"] = s.ce_weight
  return out


def _ls_on_decoupled(loss: Mapping[str, Any], s: LSSetting) -> Overrides:
  """DKD/RLD+LS: both temperatures = base temperature, alpha and beta times the LS weight."""
  out = {"loss.standardize": True, "loss.temperature": s.temperature,
         "loss.alpha_temperature": s.temperature, "loss.alpha": loss["alpha"] * s.weight,
         "loss.beta": (loss["beta"] if s.beta is None else s.beta) * s.weight}
  if s.ce_weight is not None:
    out["loss.ce_weight"] = s.ce_weight
  return out


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
                    "loss.temperature": 4.0, "loss.warmup_epochs": 20}

# The distillation weight of KD (and of CTKD's KD term, MLKD's and DIST's terms, which
# declare the same key).
_KD_WEIGHT = Hyper("kd_weight", 0.9, "KD: weight of T^2 KL", Range(0.0), sweepable=True)

# Keys DKD and RLD share.
_ALPHA = Hyper("alpha", 1.0, "DKD/RLD: weight of TCKD/SCD", Range(0.0), sweepable=True)
_BETA = Hyper("beta", 8.0, "DKD/RLD: weight of NCKD/MCD", Range(0.0), sweepable=True)

register(Method(
    name="ce", summary="cross-entropy alone (the vanilla student)", terms=_no_terms,
    needs_teacher=False, cifar={"loss.ce_weight": 1.0, "teacher": ""}))
register(Method(
    name="teacher", summary="cross-entropy alone, training a teacher", terms=_no_terms,
    needs_teacher=False, cifar={"loss.ce_weight": 1.0, "teacher": ""}, can_be_base=False))
register(Method(
    name="kd", summary="ce_weight*CE + kd_weight*T^2*KL(p_t^T || p_s^T)", terms=_kd_terms,
    term_names=("kd",), needs_teacher=True,
    hypers=(_KD_WEIGHT,),
    cifar={"loss.ce_weight": 0.1, "loss.kd_weight": 0.9, "loss.temperature": 4.0,
           "loss.warmup_epochs": 0},
    imagenet={"loss.ce_weight": 0.5, "loss.kd_weight": 0.5},
    distill_weight="kd_weight",
    ls=LSRecipe(default=LS_DEFAULT, cifar=_KD_LS, imagenet=_KD_LS_IMAGENET, apply=_ls_on_kd)))
register(Method(
    name="dkd", summary="CE + w(e)*(alpha*TCKD + beta*NCKD)", terms=_dkd_terms,
    term_names=("tckd", "nckd"), needs_teacher=True, hypers=(_ALPHA, _BETA),
    cifar=_DECOUPLED_CIFAR, imagenet={"loss.warmup_epochs": 1},
    cifar_pairs={p: {"loss.beta": b} for p, b in _DKD_CIFAR_BETA.items()},
    imagenet_pairs={p: {"loss.beta": b} for p, b in _DECOUPLED_IMAGENET_BETA.items()},
    distill_weight="alpha",
    ls=LSRecipe(default=LS_DEFAULT, cifar=_DKD_LS, imagenet={}, apply=_ls_on_decoupled)))
register(Method(
    name="rld", summary="CE + w(e)*(alpha*SCD + beta*MCD)", terms=_rld_terms,
    term_names=("scd", "mcd"), needs_teacher=True,
    hypers=(_ALPHA, _BETA, Hyper("alpha_temperature", 0.0, "RLD: SCD temperature (0 = "
                                 "loss.temperature)", Range(0.0), imagenet=1.0)),
    cifar={**_DECOUPLED_CIFAR, "loss.alpha_temperature": 0.0},   # tau_a = T
    imagenet={"loss.warmup_epochs": 1},
    imagenet_pairs={p: {"loss.beta": b} for p, b in _DECOUPLED_IMAGENET_BETA.items()},
    distill_weight="alpha",
    # No per-pair LS settings are published for RLD: always the LS defaults.
    ls=LSRecipe(default=LS_DEFAULT, cifar={}, imagenet={}, apply=_ls_on_decoupled)))
register(Method(
    name="dhkd", summary="CE (main head) + alpha*BinaryKL-Norm (auxiliary head)",
    terms=_dhkd_terms, term_names=("bkln",), needs_teacher=True, aux_head=True,
    hypers=(
        Hyper("bkln_weight", 1.0, "DHKD: weight alpha of BinaryKL-Norm on the auxiliary head",
              Range(0.0), sweepable=True),
        Hyper("bkln_temperature", 2.0, "DHKD: BinaryKL-Norm temperature",
              Range(0.0, lo_open=True), sweepable=True),
        Hyper("bkln_until_epoch", 0, "DHKD: auxiliary loss off from this 1-based epoch "
              "(0 = never)", Range(0, integer=True)),
        Hyper("grad_align", False, "DHKD: gradient alignment of the distillation gradient",
              Flag(), exclusive=True),
    ),
    grad_transform=_dhkd_grad_transform,
    cifar={"loss.ce_weight": 1.0, "loss.bkln_weight": 1.0, "loss.bkln_temperature": 2.0,
           "aux_head": "nonlinear", "loss.grad_align": True},
    # ImageNet: linear head, no alignment, weight 0.1, aux loss off from epoch 50, LR 0.1 at
    # batch 128, and its DALI loader's crop ranges.
    imagenet={"aux_head": "linear", "loss.grad_align": False, "loss.bkln_weight": 0.1,
              "loss.bkln_until_epoch": 50, "learning_rate": 0.1, "batch_size": 128,
              "crop_area": (0.1, 1.0), "crop_aspect": (0.8, 1.25)},
    distill_weight="bkln_weight"))
register(Method(
    name="rkkd", summary="a base method + gamma*(1 - tau_k) (Kendall ranking term)",
    terms=_rkkd_terms, term_names=("rank",), needs_teacher=True, cifar={}, plugin=True,
    plugin_weight="rank_weight", check=_rkkd_check,
    hypers=(
        Hyper("rank_weight", 0.0, "RKKD: weight gamma of the ranking term 1 - tau_k",
              Range(0.0), sweepable=True, exclusive=True),
        Hyper("rank_steepness", 100.0, "RKKD: steepness k of the smooth sign",
              Range(0.0, lo_open=True), sweepable=True),
        Hyper("rank_form", "tanh", "RKKD: smooth sign: " + ", ".join(kendall.FORMS),
              Choice(kendall.FORMS)),
        Hyper("rank_top_k", 0, "RKKD: rank only the teacher's top k classes (0 = all)",
              Range(0, integer=True)),
    )))


# --- CTKD (docs/methods.md §9, docs/recipes.md §3.7) -----------------------------------


def _ctkd_temperature(spec: LossSpec, x: TermInputs) -> jax.Array:
  """The temperature of this step's loss: scalar (global module) or [B] (instance module),
  read through the gradient-reversal layer at the curriculum's lambda(epoch)."""
  lam = losses.ctkd_lambda(x.epoch, lambda_min=spec.ctkd_lambda_min,
                           lambda_max=spec.ctkd_lambda_max, num_loops=spec.ctkd_decay_epochs)
  kw = dict(t_start=spec.ctkd_t_start, t_end=spec.ctkd_t_end)
  if spec.ctkd_module == "instance":
    return losses.instance_temperature(x.loss_params, x.logits, x.teacher, lam, **kw)
  return losses.global_temperature(x.loss_params, lam, **kw)


def _ctkd_terms(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  """kd_weight * KD(tau) and, on the DKD base, alpha * TCKD(tau) + beta * NCKD(tau); tau is
  learned (train/tckd and train/nckd are 0 on the KD base)."""
  tau = _ctkd_temperature(spec, x)
  eps = losses.ctkd.INSTANCE_TEACHER_EPS if spec.ctkd_module == "instance" else 0.0
  kd = x.warmup * spec.kd_weight * jnp.mean(losses.ctkd_kd(
      x.logits, x.teacher, tau, teacher_eps=eps, standardize=spec.standardize))
  tckd = nckd = jnp.zeros((), kd.dtype)
  if spec.ctkd_base == "dkd":
    kw = dict(temperature=tau, standardize=spec.standardize)
    tckd = x.warmup * spec.alpha * jnp.mean(losses.tckd(x.logits, x.teacher, x.labels, **kw))
    nckd = x.warmup * spec.beta * jnp.mean(losses.nckd(x.logits, x.teacher, x.labels, **kw))
  return {"kd": kd, "tckd": tckd, "nckd": nckd}


def _ctkd_metrics(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  """train/temperature: the temperature this step's loss used (the batch mean for the
  instance module), from the loss parameters before this step's update."""
  return {"temperature": jnp.mean(_ctkd_temperature(spec, x))}


def _ctkd_loss_params(spec: LossSpec, init: "LossParamsInit") -> PyTree:
  if spec.ctkd_module == "instance":
    return losses.instance_temperature_init(init.rng, init.num_classes)
  return losses.global_temperature_init(spec.ctkd_raw_init)


def _ctkd_check(config) -> None:
  loss = config.loss
  if loss.ctkd_lambda_min > loss.ctkd_lambda_max:
    raise ConfigError(f"config.loss.ctkd_lambda_min={loss.ctkd_lambda_min} exceeds "
                      f"config.loss.ctkd_lambda_max={loss.ctkd_lambda_max}")
  if loss.ctkd_module == "instance" and loss.ctkd_base == "dkd":
    raise ConfigError("config.loss.ctkd_module='instance' takes the KD base only; with "
                      "config.loss.ctkd_base='dkd' use ctkd_module='global'")


def _ls_on_ctkd(loss: Mapping[str, Any], s: LSSetting) -> Overrides:
  """CTKD+LS: the KD (or DKD) term on standardized logits, its weight(s) times the LS weight;
  the temperature stays learned (the LS code's --kd_T is unused)."""
  if loss["ctkd_base"] == "dkd":
    return {"loss.standardize": True, "loss.alpha": loss["alpha"] * s.weight,
            "loss.beta": loss["beta"] * s.weight}
  return {"loss.standardize": True, "loss.kd_weight": s.weight}


# The KD base of the CIFAR run script; `ctkd_dkd_values()` switches to its DKD line.
_CTKD_CIFAR = {"loss.ce_weight": 0.1, "loss.kd_weight": 0.9, "loss.warmup_epochs": 0,
               "loss.ctkd_base": "kd"}
# The script's DKD line with the CTKD flags: -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2.
CTKD_DKD_VALUES = {"loss.ctkd_base": "dkd", "loss.ce_weight": 1.0, "loss.kd_weight": 0.0,
                   "loss.alpha": 1.0, "loss.beta": 2.0, "loss.warmup_epochs": 0}

register(Method(
    name="ctkd", summary="CE + kd_weight*KD(tau) [+ alpha*TCKD(tau) + beta*NCKD(tau)], "
    "tau learned through gradient reversal on a cosine curriculum",
    terms=_ctkd_terms, term_names=("kd", "tckd", "nckd"), needs_teacher=True,
    hypers=(
        _KD_WEIGHT, _ALPHA, _BETA,
        Hyper("ctkd_base", "kd", "CTKD: the loss the learned temperature enters: 'kd' or "
              "'dkd' (alpha*TCKD + beta*NCKD beside kd_weight*KD)", Choice(("kd", "dkd")),
              exclusive=True),
        Hyper("ctkd_module", "global", "CTKD: temperature module: 'global' (one learned "
              "scalar) or 'instance' (an MLP on each example's logits)",
              Choice(("global", "instance")), exclusive=True),
        Hyper("ctkd_t_start", 1.0, "CTKD: tau = t_start + t_end * sigmoid(raw)", Range(0.0)),
        Hyper("ctkd_t_end", 20.0, "CTKD: tau = t_start + t_end * sigmoid(raw)",
              Range(0.0, lo_open=True)),
        Hyper("ctkd_raw_init", 1.0, "CTKD: initial raw value of the global module "
              "(1: tau0 = 15.6212)", Range()),
        Hyper("ctkd_lambda_min", 0.0, "CTKD: reversal strength lambda at the curriculum's "
              "start", Range(0.0)),
        Hyper("ctkd_lambda_max", 1.0, "CTKD: reversal strength lambda from epoch "
              "ctkd_decay_epochs on", Range(0.0)),
        Hyper("ctkd_decay_epochs", 10, "CTKD: epochs of the cosine lambda curriculum",
              Range(1, integer=True)),
    ),
    loss_params=_ctkd_loss_params, metric_names=("temperature",), metrics=_ctkd_metrics,
    last_metrics=("temperature",), check=_ctkd_check,
    cifar=_CTKD_CIFAR, distill_weight="kd_weight",
    ls=LSRecipe(default=LS_DEFAULT, cifar={}, imagenet={}, apply=_ls_on_ctkd)))


# --- MLKD (docs/methods.md §10, docs/recipes.md §3.8) -----------------------------------


def _mlkd_terms(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  """losses.mlkd over the weak and strong views: CE of the strong view (the common CE is the
  weak view's), and the instance (kd), class (cc) and batch (bc) terms times kd_weight."""
  weak, strong = x.views["weak"], x.views["strong"]
  out = losses.mlkd(weak.student, strong.student, weak.teacher, strong.teacher, x.labels,
                    temperature=spec.temperature, ce_weight=1.0, kd_weight=1.0,
                    standardize=spec.standardize, extra_temperatures=spec.mlkd_temperatures)
  w = x.warmup * spec.kd_weight
  return {"ce_strong": spec.ce_weight * jnp.mean(losses.cross_entropy(
              strong.student, x.labels, label_smoothing=spec.label_smoothing)),
          "kd": w * jnp.mean(out["kd"]), "cc": w * out["cc"], "bc": w * out["bc"]}


@dataclasses.dataclass(frozen=True)
class MLKDLSSetting(LSSetting):
  """An MLKD+LS setting: the LS repository's yaml also sets the epochs and the LR."""
  num_epochs: Optional[int] = None
  learning_rate: Optional[float] = None


def _ls_on_mlkd(loss: Mapping[str, Any], s: LSSetting) -> Overrides:
  """MLKD+LS: T0 = base temperature, kd_weight = the LS weight, the instance terms
  standardized; the pair's yaml epochs and LR."""
  out: dict[str, Any] = {"loss.standardize": True, "loss.temperature": s.temperature,
                         "loss.kd_weight": s.weight}
  if getattr(s, "num_epochs", None) is not None:
    out["num_epochs"] = s.num_epochs
  if getattr(s, "learning_rate", None) is not None:
    out["learning_rate"] = s.learning_rate
  return out


# The MLKD repository's configs/cifar100/ours/*.yaml: (epochs, LR) per pair.
_MLKD_CIFAR_PAIRS: dict[Pair, tuple[int, float]] = {
    ("resnet32x4", "resnet8x4"): (240, 0.025), ("vgg13", "vgg8"): (240, 0.025),
    ("wrn_40_2", "wrn_40_1"): (240, 0.025), ("wrn_40_2", "wrn_16_2"): (240, 0.025),
    ("resnet56", "resnet20"): (240, 0.025), ("resnet110", "resnet32"): (240, 0.025),
    ("ResNet50", "MobileNetV2"): (480, 0.01), ("vgg13", "MobileNetV2"): (480, 0.01),
    ("wrn_40_2", "ShuffleV1"): (480, 0.01), ("resnet32x4", "ShuffleV1"): (960, 0.01),
    ("resnet32x4", "ShuffleV2"): (960, 0.01),
}
# The LS repository's configs/cifar100/mlkd/*.yaml and log names: (epochs, LR, KD weight).
_MLKD_LS: dict[Pair, MLKDLSSetting] = {
    pair: MLKDLSSetting(temperature=2.0, weight=w, num_epochs=e, learning_rate=lr)
    for pair, (e, lr, w) in {
        ("resnet32x4", "resnet8x4"): (480, 0.025, 9.0), ("resnet56", "resnet20"): (480, 0.025, 9.0),
        ("resnet110", "resnet32"): (480, 0.025, 9.0), ("resnet110", "resnet20"): (480, 0.025, 9.0),
        ("wrn_40_2", "wrn_40_1"): (480, 0.025, 9.0), ("wrn_40_2", "wrn_16_2"): (480, 0.025, 9.0),
        ("resnet32x4", "wrn_16_2"): (480, 0.025, 9.0),
        ("resnet32x4", "wrn_40_2"): (480, 0.025, 9.0),
        ("wrn_40_2", "resnet8x4"): (480, 0.025, 9.0), ("vgg13", "vgg8"): (480, 0.01, 6.0),
        ("vgg13", "MobileNetV2"): (480, 0.01, 6.0), ("ResNet50", "MobileNetV2"): (480, 0.01, 9.0),
        ("wrn_40_2", "ShuffleV1"): (480, 0.01, 9.0), ("wrn_40_2", "MobileNetV2"): (480, 0.005, 9.0),
        ("resnet32x4", "ShuffleV1"): (960, 0.01, 9.0), ("resnet32x4", "ShuffleV2"): (960, 0.01, 6.0),
    }.items()}

register(Method(
    name="mlkd", summary="CE(weak) + CE(strong) + kd_weight*(instance KD at 5 temperatures + "
    "batch- and class-level terms), weak and strong views",
    terms=_mlkd_terms, term_names=("ce_strong", "kd", "cc", "bc"), needs_teacher=True,
    hypers=(
        _KD_WEIGHT,
        Hyper("mlkd_temperatures", (3.0, 5.0, 2.0, 6.0), "MLKD: the temperatures after "
              "loss.temperature (the strong view's instance term takes the first two, the "
              "weak view's the last two)", Numbers(Range(0.0, lo_open=True), 4, 4)),
    ),
    views=(View("weak"), View("strong", "randaugment")),
    cifar={"loss.ce_weight": 0.1, "loss.kd_weight": 0.9, "loss.temperature": 4.0,
           "loss.warmup_epochs": 0, "learning_rate": 0.025},
    cifar_pairs={p: {"num_epochs": e, "learning_rate": lr}
                 for p, (e, lr) in _MLKD_CIFAR_PAIRS.items()},
    distill_weight="kd_weight",
    ls=LSRecipe(default=LS_DEFAULT, cifar=_MLKD_LS, imagenet={}, apply=_ls_on_mlkd)))


# --- DIST (docs/methods.md §11, docs/recipes.md §3.9) -----------------------------------


def _dist_terms(spec: LossSpec, x: TermInputs) -> dict[str, jax.Array]:
  """kd_weight * (beta * mean inter + gamma * intra) at tau = loss.temperature."""
  w = x.warmup * spec.kd_weight
  return {"dist_inter": w * spec.dist_beta * jnp.mean(losses.dist_inter(
              x.logits, x.teacher, tau=spec.temperature)),
          "dist_intra": w * spec.dist_gamma * losses.dist_intra(
              x.logits, x.teacher, tau=spec.temperature)}


register(Method(
    name="dist", summary="CE + kd_weight*(beta*inter + gamma*intra), Pearson relations of the "
    "softmax at T", terms=_dist_terms, term_names=("dist_inter", "dist_intra"),
    needs_teacher=True,
    hypers=(
        _KD_WEIGHT,
        Hyper("dist_beta", 1.0, "DIST: weight beta of the inter-class relation", Range(0.0),
              sweepable=True),
        Hyper("dist_gamma", 1.0, "DIST: weight gamma of the intra-class relation", Range(0.0),
              sweepable=True),
    ),
    cifar={"loss.ce_weight": 1.0, "loss.kd_weight": 2.0, "loss.temperature": 4.0,
           "loss.warmup_epochs": 0},
    distill_weight="kd_weight"))
