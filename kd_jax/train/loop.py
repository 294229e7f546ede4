"""The training loop: set up data, models, state and checkpoints, then step, log, evaluate, save.

`train_and_evaluate(config, workdir)` is the whole run; starting it again with the same workdir
resumes from the newest readable checkpoint (or, for a finished run, returns at once). SIGTERM
saves a checkpoint and returns. One loop, `train_runs`, trains one run or the N runs of a sweep
(train/sweep.py); `Runs` holds the few places where they differ.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax import config as config_lib
from kd_jax import console
from kd_jax import data as data_lib
from kd_jax import errors
from kd_jax import methods
from kd_jax import models
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import metrics as metrics_lib
from kd_jax.train import progress as progress_lib
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib
from kd_jax.train import teacher_cache
from kd_jax.train import weights as weights_lib
from kd_jax.train import workdir as workdir_lib
from kd_jax.errors import ConfigError, TeacherError

PyTree = Any


@dataclasses.dataclass
class RunResult:
  step: int
  final: dict[str, float]          # the last evaluation of this launch ({} if none ran)
  best_top1: float
  preempted: bool
  already_finished: bool = False   # the workdir held a finished run
  name: str = ""                   # the run's name in a sweep ('' for a run alone)
  workdir: str = ""                # where its metrics.jsonl and config.json are


# ---------------------------------------------------------------------------------------
# Set-up helpers.


def make_mesh(config, num_runs: int = 1) -> jax.sharding.Mesh:
  """The devices of a run: one `data` axis splitting each batch; for a sweep of `num_runs` runs
  on one host, a `runs` axis before it, each device holding num_runs / |runs| of the runs.

  |runs| is num_runs / config.runs_per_device, or by default the largest number of device
  groups that the runs and the devices both divide into (gcd(num_runs, devices)).
  """
  n = config.num_devices or jax.device_count()
  if n > jax.device_count():
    raise ConfigError(f"config.num_devices={n} but only {jax.device_count()} "
                                 f"devices are available")
  per_device = config.get("runs_per_device", 0)
  if num_runs == 1 or jax.process_count() > 1:
    groups = 1   # (a runs axis over several hosts is not implemented)
  elif not per_device:
    groups = math.gcd(num_runs, n)
  else:
    groups = num_runs // per_device if per_device > 0 else 0
    if groups * per_device != num_runs or not groups or n % groups:
      raise ConfigError(
          f"config.runs_per_device={per_device}: the {num_runs} runs of the sweep in groups of "
          f"{per_device} must be a divisor of the {n} devices; accepted: "
          f"{[num_runs // g for g in range(1, n + 1) if n % g == 0 and num_runs % g == 0]} "
          f"(or 0: chosen for you)")
  if groups == 1:
    return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n],
                         axis_types=(jax.sharding.AxisType.Auto,))
  return jax.make_mesh((groups, n // groups), ("runs", "data"), devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _image_size(config) -> int:
  """config.image_size, else the preset's (224 ImageNet / streamed, 32 otherwise).

  train_and_evaluate resolves image_size from the data first (resolved_config)."""
  return data_lib.default_image_size(config)


def load_teacher(config) -> tuple[Any, PyTree]:
  """The frozen teacher module and its variables, from config.teacher_checkpoint."""
  dtype = models.DTYPES[config.teacher_dtype]
  module = models.create(config.teacher, config.num_classes, dtype=dtype)
  source = config.teacher_checkpoint
  if source.startswith("random:"):
    seed = int(source.split(":", 1)[1] or 0)
    variables = models.init(module, {"params": jax.random.PRNGKey(seed)}, _image_size(config))
    return module, jax.tree.map(np.asarray, variables)
  variables, _ = weights_lib.load_variables(
      source, config.teacher, config.num_classes, aux_head=None,
      image_size=_image_size(config), role="teacher", key="teacher_checkpoint",
      missing_error=TeacherError, default_which="auto")
  return module, variables


def load_student_init(config) -> PyTree:
  """The student's starting variables from config.student_init (a .pth, .msgpack or workdir)."""
  variables, read_from = weights_lib.load_variables(
      config.student_init, config.student, config.num_classes,
      aux_head=config.aux_head or None, image_size=_image_size(config), role="student",
      key="student_init", missing_error=ConfigError, default_which="latest")
  console.info(f"student {config.student} starts from {read_from}")
  return variables


# ---------------------------------------------------------------------------------------
# Data.


def setup_data(config, mesh) -> data_lib.Pipeline:
  """The run's data (kd_jax.data.pipeline) for config.dataset and the views of config's methods."""
  return data_lib.pipeline(config, mesh, views=methods.LossSpec.from_config(config).views,
                           schema_num_classes=num_classes_that_follow_the_data(config))


def num_classes_that_follow_the_data(config) -> int:
  """The config.num_classes at which the run takes the dataset's class count: its own value
  unless chosen in the config file or on the command line (config.chosen), else none (0)."""
  return 0 if config_lib.chosen(config, "num_classes") else int(config.num_classes)


def resolved_config(config, data: data_lib.Pipeline) -> ml_collections.ConfigDict:
  """A copy of config with the data-dependent defaults filled in: image_size, augment, mean, std,
  num_classes, the logging cadence of a short run, and the data's fingerprint.

  This is what config.json records, so a run can be repeated exactly from it.
  """
  out = config.copy_and_resolve_references()
  out.image_size = int(data.image_size)
  out.augment = data.augment
  out.mean = tuple(float(v) for v in data.mean)
  out.std = tuple(float(v) for v in data.std)
  out.num_classes = int(data.num_classes or config.num_classes)
  total = (config.num_train_steps if config.num_train_steps > 0
           else config.num_epochs * data.steps_per_epoch)
  out.log_every_steps = config_lib.short_run_log_every(config, total)
  eval_every = config_lib.short_run_eval_every(config, total, data.steps_per_epoch)
  with out.unlocked():
    if eval_every != config.eval_every_epochs:  # a fraction: the field's type changes
      del out["eval_every_epochs"]
      out.eval_every_epochs = eval_every
    out.data_fingerprint = data.fingerprint
  return out


def evaluate(eval_fn, variables, data: data_lib.Pipeline, mesh, num_classes: int,
             on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
  """Exact top-1/top-5/loss over every example of the eval split (padded, masked batches).

  on_batch(i) is called after the i-th batch is dispatched (progress display).
  """
  sums = None
  first = True
  for i, batch in enumerate(data.eval_iter()):
    if first and data.in_memory:
      data_lib.validate_batch(batch, num_classes=num_classes,
                              image_shape=tuple(np.shape(batch["image"])[1:]))
      first = False
    out = eval_fn(variables, data_lib.to_global_batch(batch, mesh))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if on_batch is not None:
      on_batch(i + 1)
  sums = jax.device_get(sums)
  count = max(float(sums["count"]), 1.0)
  return {"top1": float(sums["top1"]) / count, "top5": float(sums["top5"]) / count,
          "loss": float(sums["loss"]) / count, "count": int(sums["count"])}


@dataclasses.dataclass
class Trainer:
  """The pieces of a run that the loop and the benchmarks share."""
  spec: step_lib.StepSpec
  schedule: Any
  teacher_vars: PyTree            # replicated global arrays ({} without a teacher)
  # init_state(seed=config.seed): a fresh, replicated state (one compiled program for all seeds)
  init_state: Callable[..., state_lib.TrainState]
  fingerprints: dict = dataclasses.field(default_factory=dict)  # weights_fingerprint per input


def student_variables(student, rng: jax.Array, image_size: int) -> PyTree:
  """A fresh student's {'params', 'batch_stats'}, drawn from the run's base key `rng`."""
  return models.init(student, {"params": jax.random.fold_in(rng, 10 ** 6),
                               "dropout": jax.random.fold_in(rng, 10 ** 6 + 1)}, image_size)


def build_trainer(config, mesh, *, steps_per_epoch: int, total_steps: int, in_memory: bool,
                  mean: tuple, std: tuple) -> Trainer:
  """Student, teacher (loaded), optimizer, schedule and the static step spec of `config`."""
  loss_spec = methods.LossSpec.from_config(config)
  teacher, teacher_vars = None, {}
  if loss_spec.needs_teacher:
    teacher, teacher_vars = load_teacher(config)
  repl = NamedSharding(mesh, P())
  fingerprints = {"teacher_fingerprint": weights_fingerprint(teacher_vars,  # host arrays
                                                             config.teacher_checkpoint)
                  if loss_spec.needs_teacher else ""}
  teacher_vars = jax.tree.map(lambda x: data_lib.global_array(x, repl), teacher_vars)
  student = models.create(config.student, config.num_classes,
                          aux_head=config.aux_head or None, dtype=models.DTYPES[config.dtype])
  schedule = state_lib.learning_rate_schedule(config, steps_per_epoch, total_steps)
  tx = state_lib.make_optimizer(config)
  image_size = _image_size(config)
  names = step_lib.metric_names(loss_spec)

  given = load_student_init(config) if config.get("student_init") else None

  def init_fn(given, rng):
    variables = student_variables(student, rng, image_size) if given is None else given
    loss_params = methods.init_loss_params(loss_spec, jax.random.fold_in(rng, 10 ** 6 + 2),
                                           config.num_classes)
    return state_lib.create_state(variables["params"], variables.get("batch_stats", {}), tx,
                                  rng, names, loss_params=loss_params)

  init_jit = jax.jit(init_fn, out_shardings=repl)

  def init_state(seed: Optional[int] = None) -> state_lib.TrainState:
    return init_jit(given, jax.random.PRNGKey(config.seed if seed is None else seed))

  spec = step_lib.StepSpec(
      student=student, teacher=teacher, tx=tx, schedule=schedule, loss=loss_spec,
      steps_per_epoch=steps_per_epoch, batch_size=config.batch_size, seed=config.seed,
      in_memory=in_memory, mean=tuple(mean), std=tuple(std),
      max_bad_steps=config.max_bad_steps, mesh=mesh,
      augment=data_lib.resolve_augment(config.augment, in_memory),
      crop_area=tuple(config.crop_area), crop_aspect=tuple(config.crop_aspect))
  fingerprints["student_init_fingerprint"] = (
      weights_fingerprint(given, config.student_init) if given is not None else "")
  return Trainer(spec=spec, schedule=schedule, teacher_vars=teacher_vars,
                 init_state=init_state, fingerprints=fingerprints)


def weights_fingerprint(variables: PyTree, source: str) -> str:
  """'sha256:<16 hex> of the weights read from SOURCE': a hash of the loaded arrays (paths,
  dtypes, shapes, values), so a file replaced in place changes it. A 'random:SEED' teacher is
  named by its source (its bits may differ between platforms)."""
  if source.startswith("random:"):
    return f"{source} (generated)"
  return (f"sha256:{teacher_cache.weights_sha256(variables)[:16]} of the weights read from "
          f"{source}")


def with_fingerprints(config, fingerprints: dict) -> ml_collections.ConfigDict:
  """config with the inputs' fingerprints as keys (run identity: workdir.check_identity)."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    for key, value in fingerprints.items():
      out[key] = value
  return out


# ---------------------------------------------------------------------------------------
# The run.


class _Preemption:
  """SIGTERM or SIGINT (Ctrl-C) -> save a checkpoint at the next step boundary and return.

  A second SIGINT stops the process at once with one line (exit code errors.EXIT_INTERRUPTED);
  the checkpoints saved before are intact. On a multi-host run JAX's preemption service
  (started by jax.distributed) receives SIGTERM and Orbax's `reached_preemption(step)` makes
  every host agree on the same step to save; SIGINT is left to the launcher there.
  """

  def __init__(self, multi_host: bool = False):
    self.requested = False
    self.multi_host = multi_host
    self.signal_name = "SIGTERM"
    self._previous: dict = {}

  def reached(self, step: int) -> bool:
    """True from the step at which the run must save and stop (the same step on all hosts)."""
    if self.multi_host and not self.requested:
      self.requested = ckpt_lib.reached_preemption(step)
    return self.requested

  def __enter__(self):
    signums = () if self.multi_host else (signal.SIGTERM, signal.SIGINT)
    for signum in signums:  # the preemption service owns SIGTERM on several hosts
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not in the main thread
        pass
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.requested and signum == signal.SIGINT:
      import sys  # pylint: disable=import-outside-toplevel
      print("second Ctrl-C: stopped at once; the checkpoints saved before are intact (run the "
            "same command again to resume from the newest)", file=sys.stderr, flush=True)
      os._exit(errors.EXIT_INTERRUPTED)  # pylint: disable=protected-access
    self.requested = True
    self.signal_name = signal.Signals(signum).name

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      if previous is not None:
        signal.signal(signum, previous)
    self._previous = {}


def _meta(step, best, elapsed, config, runs: "Runs") -> dict:
  """Checkpoint meta: the one record of the runs' best models and of the resolved config."""
  return {"step": int(step), **runs.best_meta(best), "elapsed_s": float(elapsed),
          "student": config.student, "method": config.method,
          "config": workdir_lib.config_dict(config)}


class _RunFiles:
  """The workdir lock and checkpointer of a run, released/closed however the run ends."""
  lock = None
  checkpointer = None

  def close(self, ok: bool) -> None:
    try:
      if self.checkpointer is not None and not ok:
        try:
          self.checkpointer.close()
        except Exception:  # pylint: disable=broad-except  # the run's own error is reported
          pass
    finally:
      if self.lock is not None:
        self.lock.release()


# A low-precision teacher runs only while its logits stay this close to float32's (relative to
# the logit scale, step.make_logit_deviation_fn); otherwise the run uses the float32 teacher.
LOW_PRECISION_TEACHER_TOLERANCE = 1e-2


def _checked_low_precision_teacher(config, spec: step_lib.StepSpec, teacher_vars,
                                   data: data_lib.Pipeline,
                                   mesh) -> tuple[step_lib.StepSpec, float]:
  """(spec, dev): the teacher of config.teacher_dtype if its logits on the first eval batch
  are within LOW_PRECISION_TEACHER_TOLERANCE of float32's, else spec with a float32 teacher."""
  reference = models.create(config.teacher, config.num_classes, dtype=jnp.float32)
  dev_fn = step_lib.make_logit_deviation_fn(spec.teacher, reference, spec.mean, spec.std, mesh,
                                            data.in_memory)
  batch = next(iter(data.eval_iter()))
  dev = float(jax.device_get(dev_fn(teacher_vars, data_lib.to_global_batch(batch, mesh))))
  if dev <= LOW_PRECISION_TEACHER_TOLERANCE:
    console.info(f"teacher {config.teacher} in {config.teacher_dtype}: logits within {dev:.2g} "
                 f"of float32 (relative to their scale) on the first eval batch")
    return spec, dev
  console.info(f"teacher {config.teacher}: config.teacher_dtype={config.teacher_dtype!r} moves "
               f"its logits by {dev:.3g} of their scale on the first eval batch, more than the "
               f"{LOW_PRECISION_TEACHER_TOLERANCE:g} accepted; the teacher runs in float32 instead")
  return dataclasses.replace(spec, teacher=reference), dev


def teacher_tables(config, spec: step_lib.StepSpec, teacher_vars, train: tuple,
                   views: Sequence[tuple[str, str]], mesh) -> dict:
  """What the step reads for the teacher with config.teacher_cache: {'tables': {augmentation:
  table}} for each augmentation of the run's `views` ((name, resolved augmentation)) with a
  finite view set, and 'variables' (the teacher's, {} when every view has a table) for the views
  that run the teacher online. `train`: the in-memory (images uint8, labels) split."""
  images, labels = (np.asarray(jax.device_get(a)) for a in train)
  tables = {}
  for augment in dict.fromkeys(a for _, a in views):
    if data_lib.AUGMENTATION_REGISTRY[augment].num_views is None:
      continue
    tables[augment], _ = teacher_cache.load_or_build(
        config.teacher_cache, teacher=spec.teacher, teacher_vars=teacher_vars,
        teacher_name=config.teacher,
        teacher_dtype=str(jnp.dtype(getattr(spec.teacher, "dtype", None) or jnp.float32)),
        dataset=config.dataset, split="train", images=images, labels=labels,
        augment=augment, mean=spec.mean, std=spec.std,
        num_classes=config.num_classes, mesh=mesh)
  online = [n for n, a in views if a not in tables]
  if online:
    console.info(f"teacher table: view{'s' if len(online) > 1 else ''} {', '.join(online)} "
                 f"run{'' if len(online) > 1 else 's'} the teacher online (an augmentation "
                 f"without a finite set of views)")
  return {"variables": teacher_vars if online else {}, "tables": tables}


def check_teacher_logits(teacher_eval_fn, teacher_vars, data: data_lib.Pipeline, mesh,
                         teacher: str) -> None:
  """TeacherError unless the teacher's logits on the first eval batch are finite (its loss
  there is finite): a NaN/inf teacher would silently poison every step."""
  batch = next(iter(data.eval_iter()))
  out = jax.device_get(teacher_eval_fn(teacher_vars, data_lib.to_global_batch(batch, mesh)))
  if not np.isfinite(float(out["loss"])):
    raise TeacherError(f"teacher {teacher} gives non-finite logits on the first eval batch "
                       f"(its parameters or the checkpoint are broken); check "
                       f"config.teacher_checkpoint")


Best = tuple  # (top-1, epoch, step) of a run's best evaluation; (-1.0, 0, -1) before any


class Runs:
  """The runs one program trains, and the few places where runs differ: one run alone (the
  N = 1 case, here) or the N stacked, vmapped runs of a sweep (`sweep.Sweep`).

  Everything else (validation, the workdir lock, the identity check, config.json after it, data,
  teacher checks, restore, the loop, health checks, preemption, progress, the finished-run path)
  is `train_runs`, the same code for both.
  """
  stacked = False             # states carry a leading run axis
  keeps_best_models = True    # the best student is saved under WORKDIR/best

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config                  # the launch's config (identity, WORKDIR/config.json)
    self.configs = [config]               # each run's config
    self.names = [""]                     # each run's name
    self.dirs = [os.fspath(workdir)]      # each run's metrics.jsonl, config.json, tensorboard/

  def __len__(self) -> int:
    return len(self.configs)

  def announce(self) -> None:
    """A line saying what runs this program trains (a run alone needs none)."""

  def check_data(self, data: data_lib.Pipeline) -> None:
    """ConfigError unless these runs can train on `data`."""

  def init_state(self, trainer: Trainer, configs: Sequence[ml_collections.ConfigDict]
                 ) -> state_lib.TrainState:
    """The fresh state of the runs, laid out as `state_sharding`."""
    del configs
    return trainer.init_state()

  def state_sharding(self, mesh) -> NamedSharding:
    """How the runs' state lies on `mesh` (a run alone: replicated)."""
    return NamedSharding(mesh, P())

  def index(self, tree: PyTree, i: int) -> PyTree:
    """Run i's part of a state (replicated) or of values fetched from it."""
    del i
    return tree

  def make_train_fn(self, spec: step_lib.StepSpec, total_steps: int, num_steps: int,
                    one_step: Optional[Callable]) -> Callable:
    """`fn(state, *step_args(mesh), teacher, data) -> state`, `num_steps` steps of every run."""
    del total_steps
    return step_lib.make_train_fn(spec, num_steps, one_step=one_step)

  def step_args(self, mesh) -> tuple:
    """The train function's arguments between the state and the teacher."""
    del mesh
    return ()

  def best_meta(self, best: Sequence[Best]) -> dict:
    """The runs' best-model records as checkpoint meta."""
    (top1, epoch, step), = best
    return {"best_top1": top1, "best_epoch": epoch, "best_step": step}

  def read_best(self, meta: Optional[dict]) -> list[Best]:
    """best_meta's records back from a checkpoint's meta (None: no checkpoint)."""
    meta = meta or {}
    return [(meta.get("best_top1", -1.0), meta.get("best_epoch", 0), meta.get("best_step", -1))]

  def label(self, i: int) -> str:
    """What a message about run i starts with."""
    del i
    return ""

  def extra_scalars(self, images_per_sec: float) -> dict:
    """Scalars each run logs beside its own at a log step."""
    del images_per_sec
    return {}

  def progress_scalars(self, scalars: Sequence[dict], images_per_sec: float) -> dict:
    """What the progress line of a log step shows, from each run's logged scalars."""
    del images_per_sec
    return scalars[0]

  def print_eval(self, writer: metrics_lib.MetricWriter, step: int, epoch: float,
                 evals: Sequence[dict]) -> None:
    """The terminal line of an evaluation of every run."""
    writer.print_progress(step, {"epoch": epoch, "eval/top1": evals[0]["top1"],
                                 "eval/top5": evals[0]["top5"]}, None)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
  """Trains and evaluates the configured student; resumes from `workdir` if it holds a run.

  The workdir is locked for the run (workdir.py); a resume with changed identity keys is refused
  before anything is written.
  """
  if config.get("sweep"):
    raise ConfigError(f"config.sweep={config.sweep!r}: a sweep runs through "
                      f"kd_jax.train.sweep.train_sweep (launch.py does this), not "
                      f"train_and_evaluate")
  return train_runs(Runs(config, workdir), workdir)[0]


def train_runs(runs: Runs, workdir: str) -> list[RunResult]:
  """Trains `runs` in one program with `workdir` as their workdir; one RunResult per run.
  A divergence right after the restored checkpoint runs once more from the previous one."""
  return ckpt_lib.run_with_fallback(lambda: _run_once(runs, workdir))


def _run_once(runs: Runs, workdir: str) -> list[RunResult]:
  files = _RunFiles()
  ok = False
  try:
    results = _train_runs(runs, workdir, files)
    ok = True
    return results
  finally:
    files.close(ok)


def _train_runs(runs: Runs, workdir: str, files: _RunFiles) -> list[RunResult]:
  t_start = time.time()
  prog = progress_lib.Progress()
  config = runs.config
  mesh = make_mesh(config, num_runs=len(runs))
  num_devices = mesh.devices.size
  for c in runs.configs:
    config_lib.validate(c, model_names=models.names(), num_devices=num_devices)
  first = jax.process_index() == 0
  files.lock, files.checkpointer = workdir_lib.open_run(workdir, config.keep_checkpoints,
                                                        process_index=jax.process_index())
  if first:
    workdir_lib.probe_writable([d for d in runs.dirs if d != os.fspath(workdir)])
  runs.announce()
  prog.start(f"loading data ({config.dataset})")
  data = setup_data(config, mesh)
  prog.finish()
  runs.check_data(data)
  resolved = resolved_config(config, data)
  sources = config_lib.sources(config, resolved)
  config = resolved

  spe = data.steps_per_epoch
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * spe)
  image_size = _image_size(config)
  prog.start("building the student" + (f" and loading the teacher ({config.teacher})"
                                        if methods.needs_teacher(config) else ""))
  run_configs = [resolved_config(c, data) for c in runs.configs]
  trainer = build_trainer(run_configs[0], mesh, steps_per_epoch=spe, total_steps=total_steps,
                          in_memory=data.in_memory, mean=data.mean, std=data.std)
  spec, teacher_vars = trainer.spec, trainer.teacher_vars
  prog.finish()
  config = with_fingerprints(config, trainer.fingerprints)
  run_configs = [with_fingerprints(c, trainer.fingerprints) for c in run_configs]
  # The resolved config (the inputs' fingerprints included) is compared with the checkpoint's
  # before config.json is rewritten.
  workdir_lib.check_and_record_config(config, workdir, files.checkpointer,
                                      process_index=jax.process_index(), sources=sources)
  if first:
    for d, c in zip(runs.dirs, run_configs):
      if d != os.fspath(workdir):
        workdir_lib.write_config_json(d, c)
  checkpointer = files.checkpointer

  def restore():
    abstract = jax.eval_shape(lambda: runs.init_state(trainer, run_configs))
    return checkpointer.restore_latest(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=runs.state_sharding(mesh)),
        abstract))

  restored = unset = object()
  found = checkpointer.latest_meta()
  if found is not None and found[0] >= total_steps:
    # A finished run: its last checkpoint is read and checked; nothing is compiled.
    restored = restore()
    if restored is not None and restored[1]["step"] >= total_steps:
      checkpointer.close()
      return [RunResult(step=restored[1]["step"], final={}, best_top1=b[0], preempted=False,
                        already_finished=True, name=n, workdir=d)
              for b, n, d in zip(runs.read_best(restored[1]), runs.names, runs.dirs)]

  prog.finish()
  writers = [metrics_lib.MetricWriter(
      d, total_steps=total_steps, run_config=c,
      wandb_project=c.wandb_project if len(runs) == 1 else "")   # one wandb run per process
      for d, c in zip(runs.dirs, run_configs)]
  best = runs.read_best(None)
  elapsed_before = 0.0
  if restored is unset:
    restored = restore()
  if restored is not None:
    state, meta = restored
    best = runs.read_best(meta)
    elapsed_before = meta.get("elapsed_s", 0.0)
    console.info(f"Resuming from step {int(jax.device_get(runs.index(state.step, 0)))} "
                 f"({os.path.join(workdir, 'checkpoints')})")
  else:
    state = runs.init_state(trainer, run_configs)
  step = int(jax.device_get(runs.index(state.step, 0)))
  for writer in writers:   # each metrics.jsonl and its events cut back to the restored step
    writer.start(step)

  eval_fn = step_lib.make_eval_fn(spec.student, spec.mean, spec.std, mesh, data.in_memory)
  teacher = spec.teacher
  if teacher is not None and config.teacher_dtype != "float32":
    spec, dev = _checked_low_precision_teacher(config, spec, teacher_vars, data, mesh)
    teacher = spec.teacher
    if step == 0:
      for writer in writers:
        writer.write(0, {"teacher/low_precision_logit_dev": dev})

  if teacher is not None:
    teacher_eval_fn = step_lib.make_eval_fn(teacher, spec.mean, spec.std, mesh, data.in_memory)
    check_teacher_logits(teacher_eval_fn, teacher_vars, data, mesh, config.teacher)
  if step == 0 and teacher is not None:
    prog.start("teacher evaluation (the first batch compiles)", data.eval_batches, "batches")
    t_eval = evaluate(teacher_eval_fn, teacher_vars, data, mesh, config.num_classes,
                      on_batch=prog.update)
    prog.finish(f"top-1 {100 * t_eval['top1']:.2f}%")
    for writer in writers:
      writer.write(0, {"teacher/top1": t_eval["top1"], "teacher/top5": t_eval["top5"]})
    console.info(f"teacher {config.teacher}: eval top-1 "
                 f"{progress_lib.format_percent(t_eval['top1'])}")

  # What the train step reads for the teacher: its variables, or the teacher-logit table.
  step_teacher = teacher_vars
  if teacher is not None and config.teacher_cache:
    step_teacher = teacher_tables(config, spec, teacher_vars, data.train, data.views, mesh)
    spec = dataclasses.replace(spec, teacher_table=True)

  schedules = [state_lib.learning_rate_schedule(c, spe, total_steps) for c in run_configs]
  batches = data.train_batches(step, mesh)
  window_start, window_step = time.time(), step
  run_start, run_start_step = time.time(), step
  compile_s = 0.0                  # left out of the ETA
  last_eval: list[dict[str, float]] = [{} for _ in runs.configs]
  preempted = False
  eval_prog = progress_lib.Progress(interval_s=prog.interval_s)
  if step < total_steps:
    prog.start("training", total_steps, "steps", done=step)

  def elapsed():
    return elapsed_before + time.time() - t_start

  def boundary(s: int, every: int) -> int:
    return (s // every + 1) * every

  eval_every = max(1, round(config.eval_every_epochs * spe))
  train_fns = step_lib.TrainFns(
      spec, lambda n, one_step: runs.make_train_fn(spec, total_steps, n, one_step))
  step_args = runs.step_args(mesh)
  with _Preemption(multi_host=jax.process_count() > 1) as preemption:
    while step < total_steps:
      target = min(total_steps, boundary(step, config.log_every_steps),
                   boundary(step, config.checkpoint_every_steps), boundary(step, eval_every))
      n = min(config.steps_per_dispatch, target - step)
      train_fn, compiling = train_fns.get(n)
      if compiling:
        prog.message(f"compiling the train step ({n} step{'s' if n > 1 else ''} per "
                     f"dispatch)...")
        t_compile = time.time()
      batch_data = batches.take(n)
      state = train_fn(state, *step_args, step_teacher, batch_data)
      step += n
      if compiling:
        compile_s += time.time() - t_compile
        prog.message(f"compiled in {time.time() - t_compile:.1f} s; training")
        prog.restart_rate(step)   # the ETA leaves compilation out
        window_start, window_step = time.time(), step - n   # and so does images_per_sec
      prog.update(step)

      if step % config.log_every_steps == 0 or step == total_steps:
        sums, count, bad, skipped = jax.device_get(
            (state.metric_sums, state.metric_count, state.bad_streak, state.skipped))
        now = time.time()
        ips = (step - window_step) * config.batch_size / max(now - window_start, 1e-9)
        logged = []
        for i, writer in enumerate(writers):
          count_i = int(runs.index(count, i))
          scalars = {f"train/{k}" if k != "loss" else "train/loss":
                     float(runs.index(v, i)) / max(count_i, 1) for k, v in sums.items()}
          if count_i == 0:  # every step of the window was skipped: no train/* means
            scalars = {}
          scalars.update({"epoch": step / spe, "lr": float(schedules[i](step - 1)),
                          "images_per_sec": ips, **runs.extra_scalars(ips),
                          "elapsed_s": elapsed(), "skipped_steps": int(runs.index(skipped, i))})
          writer.write(step, scalars)
          logged.append(scalars)
        rate = (step - run_start_step) / max(now - run_start - compile_s, 1e-9)
        prog.pause()
        writers[0].print_progress(step, runs.progress_scalars(logged, ips),
                                  (total_steps - step) / rate if rate else None)
        state = state.replace(
            metric_sums=jax.tree.map(jnp.zeros_like, state.metric_sums),
            metric_count=jnp.zeros_like(state.metric_count))
        window_start, window_step = time.time(), step
        checkpointer.check()
        worst = int(np.max(bad))
        if worst >= config.max_bad_steps:
          checkpointer.wait()
          error = checkpointer.divergence_error(bad=worst, step=step,
                                                max_bad_steps=config.max_bad_steps)
          raise type(error)(runs.label(int(np.argmax(bad))) + str(error))

      if step % eval_every == 0 or step == total_steps:
        epoch = math.ceil(step / spe)
        prog.pause()
        for i, writer in enumerate(writers):
          variables = {"params": runs.index(state.params, i),
                       "batch_stats": runs.index(state.batch_stats, i)}
          eval_prog.start(f"evaluation at step {step}", data.eval_batches, "batches",
                          announce=False)
          last_eval[i] = evaluate(eval_fn, variables, data, mesh, config.num_classes,
                                  on_batch=eval_prog.update)
          eval_prog.finish(silent=True)
          writer.write(step, {"epoch": step / spe, "eval/top1": last_eval[i]["top1"],
                              "eval/top5": last_eval[i]["top5"], "eval/loss": last_eval[i]["loss"],
                              "elapsed_s": elapsed()})
          if last_eval[i]["top1"] > best[i][0]:
            best[i] = (last_eval[i]["top1"], epoch, step)
            if runs.keeps_best_models:
              checkpointer.save_best(step, jax.device_get(variables),
                                     {"step": step, "epoch": epoch, "eval_top1": best[i][0]})
        runs.print_eval(writers[0], step, step / spe, last_eval)

      stop = preemption.reached(step)  # every iteration: a multi-host sync point
      if step % config.checkpoint_every_steps == 0 or step == total_steps or stop:
        # The worst run's streak decides (a sweep's streaks are [N]).
        if ckpt_lib.healthy_for_save(state.replace(bad_streak=jnp.max(state.bad_streak)), step):
          checkpointer.save(step, state, _meta(step, best, elapsed(), config, runs))
      if preemption.requested and step < total_steps:
        preempted = True
        prog.pause()
        console.info(f"{preemption.signal_name} received: stopped at step {step} (checkpoint "
                     f"saved unless said "
                     f"otherwise above); run the same command again to resume")
        break

  prog.finish(silent=True)
  checkpointer.wait()
  checkpointer.close()
  for writer in writers:
    writer.close()
  return [RunResult(step=step, final=e, best_top1=b[0], preempted=preempted, name=n, workdir=d)
          for e, b, n, d in zip(last_eval, best, runs.names, runs.dirs)]
