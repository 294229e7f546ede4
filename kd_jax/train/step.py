"""Pure train and eval steps: teacher forward, student forward/backward, update, in one jit.

`make_train_fn` returns a function of (state, teacher_vars, data) that runs `n` steps (one
`lax.scan` on accelerators, `n` calls of the compiled step on CPU); the batch comes from
device-resident data (CIFAR: gather + augmentation on device) or from host batches stacked on a
leading axis (ImageNet). Non-finite steps are skipped. On CPU the steps compile with
`compiler_options`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax import console
from kd_jax import data as data_lib
from kd_jax import losses
from kd_jax import methods
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
  augment: str = "pad_crop_flip"   # in-memory transform: pad_crop_flip | random_resized_crop | none
  crop_area: tuple[float, float] = data_lib.RRC_AREA      # random_resized_crop ranges
  crop_aspect: tuple[float, float] = data_lib.RRC_ASPECT
  # teacher_vars is a table of teacher logits float32 [N, views, classes] for every view of every
  # training image (train/teacher_cache.py), gathered instead of running the teacher.
  teacher_table: bool = False


def metric_names(loss: methods.LossSpec) -> tuple[str, ...]:
  """Names of the per-step metrics summed in the state (loss terms, loss, top1)."""
  dummy = jnp.zeros((2, 3), jnp.float32)
  labels = jnp.zeros((2,), jnp.int32)
  teacher = dummy if loss.needs_teacher else None
  aux = dummy if loss.uses_aux_head else None
  terms = jax.eval_shape(lambda: methods.loss_terms(
      dataclasses.replace(loss, rank_top_k=0), dummy, labels, teacher, aux,
      jnp.ones((), jnp.int32)))
  return tuple(sorted(terms)) + ("loss", "top1")


def _batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def _tree_where(pred, new, old):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _project_conflict(g_task: PyTree, g_distill: PyTree) -> PyTree:
  """DHKD gradient alignment: if <g2, g1> < 0, g2 <- g2 - <g2,g1>/||g1||^2 g1; returns g1 + g2'.

  One global dot product over all flattened student parameters (docs/methods.md §6).
  """
  v1, unravel = ravel_pytree(g_task)
  v2, _ = ravel_pytree(g_distill)
  dot = jnp.vdot(v2, v1)
  norm = jnp.vdot(v1, v1)
  coef = jnp.where(dot < 0, dot / jnp.where(norm > 0, norm, 1.0), 0.0)
  return unravel(v1 + v2 - coef * v1)


def _one_step(spec: StepSpec, state: TrainState, teacher_vars: PyTree, images: jax.Array,
              labels: jax.Array, teacher_logits: Optional[jax.Array] = None) -> TrainState:
  """One training step on a global batch of normalized float images [B,H,W,3] and labels [B].

  teacher_logits: the teacher's float32 logits [B, C] of these images when known (a teacher
  table), else the teacher runs here.
  """
  epoch = state.step // spec.steps_per_epoch + 1
  step_rng = jax.random.fold_in(state.rng, state.step)
  if teacher_logits is None and spec.teacher is not None and not spec.teacher_table:
    teacher_logits = jax.lax.stop_gradient(
        spec.teacher.apply(teacher_vars, images, train=False))
    teacher_logits = teacher_logits.astype(jnp.promote_types(teacher_logits.dtype, jnp.float32))

  def forward(params):
    out, new_vars = spec.student.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(step_rng, 1)})
    logits, aux = out if isinstance(out, tuple) else (out, None)
    terms = methods.loss_terms(spec.loss, logits, labels, teacher_logits, aux, epoch)
    return terms, (new_vars["batch_stats"], logits)

  if spec.loss.grad_align:
    def grouped(params):
      terms, extra = forward(params)
      return methods.split_for_grad_align(terms), (terms, extra)
    (task, distill), vjp_fn, (terms, (new_stats, logits)) = jax.vjp(
        grouped, state.params, has_aux=True)
    (g_task,) = vjp_fn((jnp.ones_like(task), jnp.zeros_like(distill)))
    (g_distill,) = vjp_fn((jnp.zeros_like(task), jnp.ones_like(distill)))
    grads = _project_conflict(g_task, g_distill)
  else:
    def total(params):
      terms, extra = forward(params)
      return sum(terms.values()), (terms, extra)
    (_, (terms, (new_stats, logits))), grads = jax.value_and_grad(total, has_aux=True)(
        state.params)

  loss = sum(terms.values())
  updates, new_opt_state = spec.tx.update(grads, state.opt_state, state.params)
  # The LR is a function of the run's step (so of its epoch), not of optax's count, which a
  # skipped step would freeze.
  updates = state_lib.apply_learning_rate(updates, spec.schedule(state.step))
  new_params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_stats)
  top1 = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  step_metrics = dict(terms, loss=loss, top1=top1)
  metric_sums = {k: v + jnp.where(finite, step_metrics[k].astype(jnp.float32), 0.0)
                 for k, v in state.metric_sums.items()}
  return state.replace(
      step=state.step + 1,
      params=_tree_where(finite, new_params, state.params),
      batch_stats=_tree_where(finite, new_stats, state.batch_stats),
      opt_state=_tree_where(finite, new_opt_state, state.opt_state),
      metric_sums=metric_sums,
      metric_count=state.metric_count + finite.astype(jnp.int32),
      bad_streak=jnp.where(finite, 0, state.bad_streak + 1),
      skipped=state.skipped + (~finite).astype(jnp.int32))


def _in_memory_batch(spec: StepSpec, state: TrainState, images_u8, labels_all, table=None):
  """In memory: the step's batch from the device-resident split, augmented on device.

  Returns (images, labels, teacher logits or None): with a teacher table [N, views, C] the
  logits of each example's drawn view (the same crop offsets and flip as its image).
  """
  idx = data_lib.cifar_batch_indices(images_u8.shape[0], seed=spec.seed, step=state.step,
                                     batch_size=spec.batch_size)
  images, labels = jnp.take(images_u8, idx, axis=0), jnp.take(labels_all, idx, axis=0)
  aug_rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 2)
  views = jnp.zeros_like(idx)   # 'none': one view per image
  if spec.augment == "pad_crop_flip":
    # = data_lib.augment_cifar(aug_rng, images), with the draws kept for the table's view index.
    offsets, flips = data_lib.cifar_augment_params(aug_rng, spec.batch_size)
    images = data_lib.normalize(data_lib.crop_and_flip(images, offsets, flips), spec.mean,
                                spec.std)
    views = data_lib.cifar_view_index(offsets, flips)
  else:
    images = data_lib.augment_batch(aug_rng, images, augment=spec.augment, mean=spec.mean,
                                    std=spec.std, crop_area=spec.crop_area,
                                    crop_aspect=spec.crop_aspect)
  sharding = _batch_sharding(spec.mesh)
  teacher_logits = None
  if table is not None:
    teacher_logits = jax.lax.with_sharding_constraint(table[idx, views], sharding)
  return (jax.lax.with_sharding_constraint(images, sharding),
          jax.lax.with_sharding_constraint(labels, sharding), teacher_logits)


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
  With `spec.teacher_table`, teacher_vars is the teacher-logit table.
  """
  if steps_as_calls(spec, num_steps, force_scan):
    return repeat_calls(one_step or make_train_fn(spec, 1), num_steps,
                        slice_data=not spec.in_memory)

  def body(carry, xs, teacher_vars, data):
    state = carry
    teacher_logits = None
    if spec.in_memory:
      images, labels, teacher_logits = _in_memory_batch(
          spec, state, *data, table=teacher_vars if spec.teacher_table else None)
    else:
      images, labels = xs["image"], xs["label"]
    stopped = state.bad_streak >= spec.max_bad_steps
    new_state = _one_step(spec, state, teacher_vars, images, labels, teacher_logits)
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
