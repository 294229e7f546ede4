"""Pure train and eval steps: teacher forward, student forward/backward, update, in one jit.

`make_train_fn` returns a function of (state, teacher_vars, data) that runs `n` steps (one
`lax.scan` on accelerators, `n` calls of the compiled step on CPU); the batch comes from
device-resident data (data held in memory: gather + augmentation on device, one augmented copy
per view the run's methods declare, each with its own augmentation from the registry of
kd_jax/data/augmentations.py) or from host batches stacked on a leading axis (streamed data,
every view augmented by tf.data).
The step names no method: the records give the terms, views, learnable loss parameters and
gradient transform (kd_jax/methods.py). Non-finite steps are skipped. On CPU the steps compile
with `compiler_options`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax import console
from kd_jax import data as data_lib
from kd_jax import losses
from kd_jax import methods
from kd_jax.errors import ConfigError
from kd_jax.train import state as state_lib
from kd_jax.train.state import TrainState

PyTree = Any

# XLA:CPU hands convolutions to YNNPACK by default, which runs them on one thread and computes
# weight gradients 4x slower than XLA's own (Eigen) convolution, while its dots and reductions
# are faster. The "DOT" fusion type is left out: it pulls whole conv subgraphs into YNNPACK.
# Measured on jaxlib 0.10.2 (BENCHMARKS.md). Applied to the compiled train and eval steps on CPU.
_CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": ",".join(
        f"LIBRARY_FUSION_TYPE_{t}" for t in ("REDUCE", "INDIVIDUAL_DOT")),
}


@functools.cache
def _cpu_options_supported() -> bool:
  """Whether this jaxlib knows the options (an unknown option fails every compile)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_COMPILER_OPTIONS).lower(
        jax.ShapeDtypeStruct((), jnp.float32)).compile()
  except Exception as e:  # pylint: disable=broad-except
    console.warn(f"this jaxlib ({jax.__version__}) refuses the XLA:CPU options "
                 f"{_CPU_COMPILER_OPTIONS} ({str(e).splitlines()[0][:200]}); compiling without "
                 "them, so CPU convolutions may run several times slower (BENCHMARKS.md)")
    return False
  return True


def compiler_options(mesh: jax.sharding.Mesh) -> Optional[dict[str, str]]:
  """XLA options for the steps compiled over `mesh`: on CPU, convolutions stay in XLA."""
  if mesh.devices.flat[0].platform != "cpu" or not _cpu_options_supported():
    return None
  return dict(_CPU_COMPILER_OPTIONS)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything static a step needs."""
  student: nn.Module
  teacher: Optional[nn.Module]
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  loss: methods.LossSpec
  steps_per_epoch: int
  batch_size: int
  seed: int
  in_memory: bool
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  max_bad_steps: int
  mesh: jax.sharding.Mesh
  augment: str = "pad_crop_flip"   # the run's resolved augmentation (kd_jax.data.AUGMENTATIONS)
  crop_area: tuple[float, float] = data_lib.CROP_AREA      # random_resized_crop ranges
  crop_aspect: tuple[float, float] = data_lib.CROP_ASPECT
  # The teacher argument is {'tables': {augmentation: float32 [N, views, classes]}, 'variables':
  # the teacher's or {}}: the teacher's logits on every view of every training image for the
  # augmentations with a finite view set (train/teacher_cache.py), gathered instead of running
  # the teacher; the views of other augmentations run it online. A bare table is the table of
  # spec.augment.
  teacher_table: bool = False


def metric_names(loss: methods.LossSpec) -> tuple[str, ...]:
  """Names of the per-step metrics summed in the state: the terms and extra metrics the run's
  records declare (sorted), then 'loss' and 'top1'."""
  return loss.metric_names


def _batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def _tree_where(pred, new, old):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.ones((), bool)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _as_views(spec: StepSpec, x: Any) -> dict[str, Any]:
  """A per-view mapping of images or teacher logits (a bare array is the first view's)."""
  if isinstance(x, Mapping):
    return dict(x)
  return {} if x is None else {spec.loss.views[0].name: x}


def _gradients(spec: StepSpec, forward: Callable, state: TrainState):
  """(terms, aux, student grads, loss-param grads) of forward(params, loss_params) -> (terms,
  aux): the plain gradient of the loss, or the run's gradient transform (DHKD's alignment)."""
  transform = methods.grad_transform(spec.loss)
  if transform is None:
    def total(params, loss_params):
      terms, aux = forward(params, loss_params)
      return methods.total_loss(spec.loss, terms), (terms, aux)
    (_, (terms, aux)), (grads, loss_grads) = jax.value_and_grad(
        total, argnums=(0, 1), has_aux=True)(state.params, state.loss_params)
    return terms, aux, grads, loss_grads

  def grouped(params, loss_params):
    terms, aux = forward(params, loss_params)
    return transform.groups({k: terms[k] for k in spec.loss.term_names}), (terms, aux)
  groups, vjp_fn, (terms, aux) = jax.vjp(grouped, state.params, state.loss_params,
                                         has_aux=True)
  per_group = [vjp_fn(tuple(jnp.ones_like(g) if j == i else jnp.zeros_like(g)
                            for j, g in enumerate(groups))) for i in range(len(groups))]
  grads = transform.combine(*[g for g, _ in per_group])
  loss_grads = jax.tree.map(lambda *g: sum(g), *[lg for _, lg in per_group])
  return terms, aux, grads, loss_grads


def _one_step(spec: StepSpec, state: TrainState, teacher_vars: PyTree, images: Any,
              labels: jax.Array, teacher_logits: Any = None) -> TrainState:
  """One training step on a global batch of normalized float images [B,H,W,3] and labels [B].

  images: an array (the first view) or {view name: array} for every view of the run;
  teacher_logits: the teacher's float32 logits [B, C] of these images when known (a teacher
  table; an array or {view: array}), else the teacher runs here on each view.
  """
  views = [v.name for v in spec.loss.views]
  images = _as_views(spec, images)
  teacher_logits = _as_views(spec, teacher_logits)
  epoch = state.step // spec.steps_per_epoch + 1
  step_rng = jax.random.fold_in(state.rng, state.step)
  if spec.teacher is not None:
    for name in views:
      if teacher_logits.get(name) is None:
        if spec.teacher_table and not jax.tree.leaves(teacher_vars):
          raise ConfigError(f"the teacher table holds no logits for view {name!r} and the "
                            f"step has no teacher variables to run it online; set "
                            f"config.teacher_cache=''")
        t = jax.lax.stop_gradient(spec.teacher.apply(teacher_vars, images[name], train=False))
        teacher_logits[name] = t.astype(jnp.promote_types(t.dtype, jnp.float32))

  def forward(params, loss_params):
    # One student pass per view, in order: BatchNorm statistics move once per view.
    stats, outs = state.batch_stats, {}
    for i, name in enumerate(views):
      rng = jax.random.fold_in(step_rng, 1)
      out, new_vars = spec.student.apply(
          {"params": params, "batch_stats": stats}, images[name], train=True,
          mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(rng, i) if i else rng})
      stats = new_vars["batch_stats"]
      logits, aux = out if isinstance(out, tuple) else (out, None)
      outs[name] = methods.ViewLogits(logits, teacher_logits.get(name), aux)
    first = outs[views[0]]
    terms = methods.loss_terms(spec.loss, first.student, labels, first.teacher, first.aux, epoch,
                               views=outs, loss_params=loss_params)
    return terms, (stats, first.student)

  terms, (new_stats, logits), grads, loss_grads = _gradients(spec, forward, state)
  loss = methods.total_loss(spec.loss, terms)
  lr = spec.schedule(state.step)
  updates, new_opt_state = spec.tx.update(grads, state.opt_state, state.params)
  # The LR is a function of the run's step (so of its epoch), not of optax's count, which a
  # skipped step would freeze.
  updates = state_lib.apply_learning_rate(updates, lr)
  new_params = optax.apply_updates(state.params, updates)
  new_loss_params, new_loss_opt_state = state.loss_params, state.loss_opt_state
  if jax.tree.leaves(state.loss_params):   # the same optimizer, on the loss parameters
    loss_updates, new_loss_opt_state = spec.tx.update(loss_grads, state.loss_opt_state,
                                                      state.loss_params)
    new_loss_params = optax.apply_updates(
        state.loss_params, state_lib.apply_learning_rate(loss_updates, lr))
  finite = (jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_stats)
            & _all_finite(loss_grads))
  top1 = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  step_metrics = dict(terms, loss=loss, top1=top1)
  count = state.metric_count + finite.astype(jnp.int32)
  # The loop logs sum / count over a log window; a last-value metric is held as value * count,
  # so it reads as the last finite step's value (within one float32 rounding).
  last = set(spec.loss.last_metric_names)
  metric_sums = {k: jnp.where(finite, step_metrics[k].astype(jnp.float32) * count, v)
                 if k in last else v + jnp.where(finite, step_metrics[k].astype(jnp.float32), 0.0)
                 for k, v in state.metric_sums.items()}
  return state.replace(
      step=state.step + 1,
      params=_tree_where(finite, new_params, state.params),
      batch_stats=_tree_where(finite, new_stats, state.batch_stats),
      opt_state=_tree_where(finite, new_opt_state, state.opt_state),
      loss_params=_tree_where(finite, new_loss_params, state.loss_params),
      loss_opt_state=_tree_where(finite, new_loss_opt_state, state.loss_opt_state),
      metric_sums=metric_sums,
      metric_count=count,
      bad_streak=jnp.where(finite, 0, state.bad_streak + 1),
      skipped=state.skipped + (~finite).astype(jnp.int32))


def teacher_parts(spec: StepSpec, teacher: PyTree) -> tuple[PyTree, Mapping[str, Any]]:
  """(teacher variables, {augmentation: teacher-logit table}) of the step's teacher argument."""
  if not spec.teacher_table:
    return teacher, {}
  if isinstance(teacher, Mapping) and "tables" in teacher:
    return teacher.get("variables", {}), teacher["tables"]
  return {}, {spec.augment: teacher}


def _in_memory_batch(spec: StepSpec, state: TrainState, images_u8, labels_all, tables=None):
  """In memory: the step's batch of every view (kd_jax.data.device_batch) for spec's views.

  Returns (images, labels, teacher logits or None): with one view, images is an array; with
  several, {view name: array}. `tables`: {augmentation: [N, views, C]} (a bare array is
  spec.augment's table).
  """
  if tables is not None and not isinstance(tables, Mapping):
    tables = {spec.augment: tables}
  views = spec.loss.views
  augments = data_lib.view_augments(spec.augment, [v.augment for v in views], True)
  images, labels, teacher_logits = data_lib.device_batch(
      images_u8, labels_all, seed=spec.seed, step=state.step,
      rng=jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 2),
      batch_size=spec.batch_size, views=tuple(zip([v.name for v in views], augments)),
      mean=spec.mean, std=spec.std, crop_area=spec.crop_area, crop_aspect=spec.crop_aspect,
      tables=tables, sharding=_batch_sharding(spec.mesh))
  if len(images) == 1:
    (name,) = images
    return images[name], labels, teacher_logits.get(name)
  return images, labels, teacher_logits or None


def steps_as_calls(spec: StepSpec, num_steps: int, force_scan: bool = False) -> bool:
  """True where `num_steps` steps run as that many calls of the compiled one-step function
  (CPU; see make_train_fn), False where they run in one lax.scan."""
  return num_steps > 1 and spec.mesh.devices.flat[0].platform == "cpu" and not force_scan


def repeat_calls(one_step: Callable, num_steps: int, *, slice_data: bool) -> Callable:
  """`fn(state, *rest)` calling `one_step(state, *rest)` num_steps times; with slice_data the
  last argument is a pytree of per-step stacks and call i gets its slice [i:i+1]."""
  def run_steps(state, *rest):
    for i in range(num_steps):
      args = rest
      if slice_data:
        args = (*rest[:-1], jax.tree.map(lambda a, i=i: a[i:i + 1], rest[-1]))
      state = one_step(state, *args)
    return state
  return run_steps


class TrainFns:
  """Train functions by steps per dispatch, built once each. Where steps run as calls (CPU),
  every count shares the one-step function, so it compiles once rather than once per count.

  `make(num_steps, one_step)` builds a function (one_step: the shared one-step function, or None).
  """

  def __init__(self, spec: StepSpec, make: Callable[[int, Optional[Callable]], Callable]):
    self._spec, self._make, self._fns = spec, make, {}

  def get(self, num_steps: int) -> tuple[Callable, bool]:
    """(fn, whether its first call compiles)."""
    if num_steps in self._fns:
      return self._fns[num_steps], False
    if steps_as_calls(self._spec, num_steps):
      one_step, compiles = self.get(1)
      fn = self._make(num_steps, one_step)
    else:
      fn, compiles = self._make(num_steps, None), True
    self._fns[num_steps] = fn
    return fn, compiles


def make_train_fn(spec: StepSpec, num_steps: int, *, force_scan: bool = False,
                  one_step: Optional[Callable] = None) -> Callable[..., TrainState]:
  """`fn(state, teacher_vars, data) -> state` running `num_steps` steps, jit-compiled.

  data: (images_u8 [N,H,W,3], labels [N]) replicated, for in-memory datasets; or a dict with
  'image' [num_steps, B, H, W, 3] float32 and 'label' [num_steps, B] for streamed ones.
  The state is donated; stepping stops early (no-op steps) once `max_bad_steps` consecutive
  steps were non-finite, so the loop can report it at the next host sync.

  On accelerators the steps run in one `lax.scan`. On CPU they are `num_steps` calls of the
  compiled one-step function: XLA:CPU runs the convolutions of a while-loop body tens of times
  slower than outside a loop (BENCHMARKS.md), and unrolling would multiply the compile time.
  `force_scan=True` takes the accelerator path (one `lax.scan`) on CPU too, for tests;
  `one_step` is the one-step function to call there (shared, see TrainFns).
  With `spec.teacher_table`, teacher_vars holds the teacher-logit tables (StepSpec).
  With several views, a streamed 'image' is {view name: [num_steps, B, H, W, 3]}.
  """
  if steps_as_calls(spec, num_steps, force_scan):
    return repeat_calls(one_step or make_train_fn(spec, 1), num_steps,
                        slice_data=not spec.in_memory)

  def body(carry, xs, teacher_vars, data):
    state = carry
    teacher_logits = None
    variables, tables = teacher_parts(spec, teacher_vars)
    if spec.in_memory:
      images, labels, teacher_logits = _in_memory_batch(spec, state, *data, tables=tables)
    else:
      images, labels = xs["image"], xs["label"]
    stopped = state.bad_streak >= spec.max_bad_steps
    new_state = _one_step(spec, state, variables, images, labels, teacher_logits)
    return _tree_where(stopped, state, new_state), None

  def run(state, teacher_vars, data):
    step = functools.partial(body, teacher_vars=teacher_vars, data=data)
    if num_steps == 1:  # no loop at all
      xs = None if spec.in_memory else jax.tree.map(lambda a: a[0], data)
      return step(state, xs)[0]
    state, _ = jax.lax.scan(step, state, None if spec.in_memory else data, length=num_steps)
    return state

  repl = NamedSharding(spec.mesh, P())
  data_sharding = repl if spec.in_memory else NamedSharding(spec.mesh, P(None, "data"))
  return jax.jit(run, in_shardings=(repl, repl, data_sharding), out_shardings=repl,
                 donate_argnums=(0,), compiler_options=compiler_options(spec.mesh))


def _eval_logits(module: nn.Module, variables, batch, mean, std, in_memory: bool) -> jax.Array:
  """float32 main-head logits of `module` in eval mode (in-memory images are normalized here)."""
  images = batch["image"]
  if in_memory:
    images = data_lib.normalize(images, mean, std)
  out = module.apply(variables, images, train=False)
  return (out[0] if isinstance(out, tuple) else out).astype(jnp.float32)


def make_logit_deviation_fn(model: nn.Module, reference: nn.Module, spec_mean, spec_std,
                            mesh, in_memory: bool):
  """jit `fn(variables, batch) -> dev`, how far `model`'s logits are from `reference`'s.

  dev = max_{i, c} |z_ic - r_ic| / max_{i, c} |r_ic| over the unmasked examples i of the padded
  batch: the largest logit change relative to the logit scale. Used to check that a
  bfloat16 teacher stays within tolerance of the float32 one on the same variables.
  """
  def run(variables, batch):
    z, r = (_eval_logits(m, variables, batch, spec_mean, spec_std, in_memory)
            for m in (model, reference))
    mask = batch["mask"][:, None]
    return (jnp.max(jnp.where(mask, jnp.abs(z - r), 0.0)) /
            jnp.maximum(jnp.max(jnp.where(mask, jnp.abs(r), 0.0)), 1e-30))

  repl = NamedSharding(mesh, P())
  return jax.jit(run, in_shardings=(repl, _batch_sharding(mesh)), out_shardings=repl,
                 compiler_options=compiler_options(mesh))


def make_eval_fn(model: nn.Module, spec_mean, spec_std, mesh, in_memory: bool):
  """jit-compiled `fn(variables, batch) -> sums` over a padded, masked batch.

  Returns the sums (correct top-1, correct top-5, CE loss, count) over unmasked examples, so
  the caller adds them up and every example of the split counts exactly once.
  """
  def run(variables, batch):
    logits = _eval_logits(model, variables, batch, spec_mean, spec_std, in_memory)
    labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    correct5 = jnp.any(topk == labels[:, None], axis=-1).astype(jnp.float32)
    correct1 = (topk[:, 0] == labels).astype(jnp.float32)
    ce = losses.cross_entropy(logits, labels)
    return {"top1": jnp.sum(correct1 * mask), "top5": jnp.sum(correct5 * mask),
            "loss": jnp.sum(ce * mask), "count": jnp.sum(mask)}

  repl = NamedSharding(mesh, P())
  return jax.jit(run, in_shardings=(repl, _batch_sharding(mesh)), out_shardings=repl,
                 compiler_options=compiler_options(mesh))
