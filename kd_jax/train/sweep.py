"""Many runs in one program: `--config.sweep="KEY=V1,V2;KEY2=V3,V4"`.

The product of the listed values is N runs of the same model, data and method. Their states are
stacked on a leading axis and one jitted step advances all of them (`jax.vmap` over the runs),
sharing the compiled program, the device-resident training split and the teacher (or its
logit table). Each run keeps its own parameters, BatchNorm statistics, optimizer state, RNG
stream and data order (a swept `seed=s` run is the run launched alone with `--config.seed=s`),
and its own metrics in WORKDIR/runs/NAME/ (metrics.jsonl, config.json, TensorBoard events),
NAME being its swept `key=value` pairs joined by commas. Checkpoints hold all runs' states.
`Sweep` says where a sweep differs from a run alone; the rest is the one loop, loop.train_runs.
On a mesh with a `runs` axis (loop.make_mesh, config.runs_per_device) the stacked states are
split over it: each device group steps its own runs on its share of the devices.

Sweepable: `seed` and the float hyperparameters of `sweepable()`; keys that change shapes or
code (models, method, batch size, dtypes, dataset, schedules' step counts) are refused.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import types
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax import config as config_lib
from kd_jax import console
from kd_jax import methods
from kd_jax.errors import ConfigError, suggest
from kd_jax.train import loop
from kd_jax.train import progress as progress_lib
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib

PyTree = Any

_OPTIMIZER_KEYS = ("learning_rate", "momentum", "weight_decay")


def sweepable() -> tuple[str, ...]:
  """Keys a sweep may vary: seed, the optimizer's floats and the loss floats the method records
  declare sweepable (they enter the step as traced numbers, so N values share one program)."""
  return ("seed",) + _OPTIMIZER_KEYS + methods.sweepable_keys()


def parse_sweep(text: str) -> list[tuple[str, list[str]]]:
  """'KEY=V1,V2;KEY2=V3' -> [(KEY, ['V1', 'V2']), (KEY2, ['V3'])], or ConfigError (one line)."""
  axes, seen = [], set()
  for part in [p.strip() for p in text.split(";") if p.strip()]:
    key, eq, values = part.partition("=")
    key = key.strip()
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not eq or not vals:
      raise ConfigError(f"config.sweep={text!r}: {part!r} is not KEY=V1,V2,...; expected e.g. "
                        f"'seed=0,1;loss.beta=2,8'")
    if key not in sweepable():
      raise ConfigError(f"config.sweep: {key!r} cannot be swept in one program (it changes "
                        f"shapes or code, or is not a float hyperparameter); "
                        f"{''.join(f'did you mean {c!r}? ' for c in suggest(key, sweepable())[:1])}"
                        f"sweepable: {list(sweepable())}")
    if key in seen:
      raise ConfigError(f"config.sweep={text!r}: {key!r} is listed twice")
    seen.add(key)
    for v in vals:
      try:
        int(v) if key == "seed" else float(v)
      except ValueError:
        raise ConfigError(f"config.sweep: {key}={v!r} is not "
                          f"{'an integer' if key == 'seed' else 'a number'}") from None
    axes.append((key, vals))
  if not axes:
    raise ConfigError(f"config.sweep={text!r} lists no values; expected e.g. "
                      f"'seed=0,1;loss.beta=2,8'")
  return axes


def _set(config, key: str, value) -> None:
  node = config
  *path, leaf = key.split(".")
  for p in path:
    node = node[p]
  node[leaf] = value


def expand(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(NAME, config) of every run of config.sweep, in product order (the last key fastest)."""
  axes = parse_sweep(config.sweep)
  runs = []
  for combo in itertools.product(*[vals for _, vals in axes]):
    run = config_lib.copy(config)   # its layers too: sources() and chosen() still tell
    run.sweep = ""
    for (key, _), v in zip(axes, combo):
      _set(run, key, int(v) if key == "seed" else float(v))
    runs.append((",".join(f"{k}={v}" for (k, _), v in zip(axes, combo)), run))
  return runs


def hyperparameters(runs: list[ml_collections.ConfigDict], keys: list[str]) -> dict:
  """{key: array [N]} of the swept keys (int32 seeds, float32 others)."""
  out = {}
  for key in keys:
    vals = [functools.reduce(lambda n, p: n[p], key.split("."), c) for c in runs]
    out[key] = np.asarray(vals, np.int32 if key == "seed" else np.float32)
  return out


def run_spec(spec: step_lib.StepSpec, config, hp: dict, total_steps: int) -> step_lib.StepSpec:
  """`spec` with one run's (traced) swept values: loss, optimizer, schedule and data seed."""
  loss = dataclasses.replace(spec.loss, **{k[5:]: v for k, v in hp.items()
                                           if k.startswith("loss.")})
  if any(k in hp for k in _OPTIMIZER_KEYS):
    ns = types.SimpleNamespace(**{k: config[k] for k in (
        "learning_rate", "momentum", "weight_decay", "nesterov", "schedule", "lr_milestones",
        "lr_decay", "lr_warmup_epochs")})
    for k in _OPTIMIZER_KEYS:
      if k in hp:
        setattr(ns, k, hp[k])
    schedule = state_lib.learning_rate_schedule(ns, spec.steps_per_epoch, total_steps)
    spec = dataclasses.replace(spec, schedule=schedule,
                               tx=state_lib.make_optimizer(ns))
  return dataclasses.replace(spec, loss=loss, seed=hp.get("seed", spec.seed))


def make_sweep_train_fn(spec: step_lib.StepSpec, config, total_steps: int, num_steps: int, *,
                        force_scan: bool = False,
                        one_step: Optional[Callable] = None) -> Callable[..., PyTree]:
  """`fn(states, hp, teacher, data) -> states`: `num_steps` steps of every run (vmapped).

  states: TrainStates stacked on a leading run axis; hp: {key: [N]} swept values. As
  step.make_train_fn: one lax.scan on accelerators (or with force_scan), calls on CPU.
  """
  if step_lib.steps_as_calls(spec, num_steps, force_scan):
    return step_lib.repeat_calls(one_step or make_sweep_train_fn(spec, config, total_steps, 1),
                                 num_steps, slice_data=False)

  def per_run(state, hp, teacher, data):
    rs = run_spec(spec, config, hp, total_steps)
    variables, tables = step_lib.teacher_parts(spec, teacher)
    images, labels, teacher_logits = step_lib._in_memory_batch(  # pylint: disable=protected-access
        rs, state, *data, tables=tables)
    stopped = state.bad_streak >= spec.max_bad_steps
    new = step_lib._one_step(rs, state, variables, images, labels, teacher_logits)  # pylint: disable=protected-access
    return step_lib._tree_where(stopped, state, new)  # pylint: disable=protected-access

  # On a mesh with a `runs` axis each device group steps its own runs; the batch constraints of
  # the step (`data`) then apply within each group.
  spread = runs_sharding(spec.mesh)
  runs_axis = "runs" if spread.spec else None

  def run(states, hp, teacher, data):
    body = jax.vmap(per_run, in_axes=(0, 0, None, None), spmd_axis_name=runs_axis)
    if num_steps == 1:
      return body(states, hp, teacher, data)
    return jax.lax.scan(lambda s, _: (body(s, hp, teacher, data), None), states, None,
                        length=num_steps)[0]

  repl = NamedSharding(spec.mesh, P())
  return jax.jit(run, in_shardings=(spread, spread, repl, repl), out_shardings=spread,
                 donate_argnums=(0,), compiler_options=step_lib.compiler_options(spec.mesh))


def runs_sharding(mesh) -> NamedSharding:
  """Arrays with a leading run axis: split over the mesh's `runs` axis, if it has one."""
  return NamedSharding(mesh, P("runs") if "runs" in mesh.axis_names else P())


def stacked_states(trainer: loop.Trainer, seeds, sharding: NamedSharding) -> state_lib.TrainState:
  """The fresh states of runs with these seeds, stacked on a leading run axis."""
  return jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s), out_shardings=sharding)(
      *[trainer.init_state(seed=s) for s in seeds])


class Sweep(loop.Runs):
  """The N runs of config.sweep, stacked on a leading axis and advanced by one vmapped step;
  each writes WORKDIR/runs/NAME/. The loop itself is loop.train_runs, as for a run alone."""
  stacked = True
  keeps_best_models = False   # each run's best eval top-1 is in its metrics.jsonl

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    named = expand(config)
    self.names = [n for n, _ in named]
    self.configs = [c for _, c in named]
    self.dirs = [os.path.join(workdir, "runs", n) for n in self.names]
    self.keys = [k for k, _ in parse_sweep(config.sweep)]

  def announce(self) -> None:
    console.info(f"sweep: {len(self)} runs in one program: {', '.join(self.names)}")

  def check_data(self, data) -> None:
    if not data.in_memory:
      raise ConfigError(f"config.sweep needs an in-memory dataset (CIFAR, synthetic, an image "
                        f"folder, or a TFDS dataset within config.in_memory_budget_mb); "
                        f"{self.config.dataset!r} is streamed")

  def init_state(self, trainer: loop.Trainer, configs) -> state_lib.TrainState:
    return stacked_states(trainer, [c.seed for c in configs],
                          runs_sharding(trainer.spec.mesh))

  def state_sharding(self, mesh) -> NamedSharding:
    return runs_sharding(mesh)

  def index(self, tree: PyTree, i: int) -> PyTree:
    leaves = jax.tree.leaves(tree)
    if not leaves or not isinstance(leaves[0], jax.Array):   # fetched values
      return jax.tree.map(lambda x: x[i], tree)
    return _take_replicated(leaves[0].sharding.mesh)(tree, i)

  def make_train_fn(self, spec, total_steps, num_steps, one_step):
    return make_sweep_train_fn(spec, self.config, total_steps, num_steps, one_step=one_step)

  def step_args(self, mesh) -> tuple:
    return (jax.device_put(hyperparameters(self.configs, self.keys), runs_sharding(mesh)),)

  def best_meta(self, best) -> dict:
    # best_step -1: no best model is kept under WORKDIR/best for a sweep.
    return {"best": [list(b) for b in best], "runs": self.names, "best_step": -1}

  def read_best(self, meta) -> list:
    if meta is None:
      return [(-1.0, 0, -1)] * len(self)
    return [tuple(b) for b in meta["best"]]

  def label(self, i: int) -> str:
    return f"sweep run {self.names[i]}: "

  def extra_scalars(self, images_per_sec: float) -> dict:
    return {"sweep_images_per_sec": images_per_sec * len(self)}

  def progress_scalars(self, scalars, images_per_sec: float) -> dict:
    return {"epoch": scalars[0]["epoch"], "images_per_sec": images_per_sec * len(self)}

  def print_eval(self, writer, step: int, epoch: float, evals) -> None:
    console.info(f"step {step}/{writer.total_steps} | eval/top1 " + ", ".join(
        f"{n}: {progress_lib.format_percent(e['top1'])}" for n, e in zip(self.names, evals)))


@functools.cache
def _take_replicated(mesh) -> Callable[[PyTree, int], PyTree]:
  """jit `fn(tree, i)`: run i's slice of every leaf, replicated on `mesh` (for evaluation)."""
  return jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree),
                 out_shardings=NamedSharding(mesh, P()))


def train_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[loop.RunResult]:
  """Trains every run of config.sweep in one program; resumes from `workdir` like a run."""
  return loop.train_runs(Sweep(config, workdir), workdir)
