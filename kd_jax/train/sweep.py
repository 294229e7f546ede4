"""Many runs in one program: `--config.sweep="KEY=V1,V2;KEY2=V3,V4"`.

The product of the listed values is N runs of the same model, data and method. Their states are
stacked on a leading axis and one jitted step advances all of them (`jax.vmap` over the runs),
sharing the compiled program, the device-resident training split and the teacher (or its
logit table). Each run keeps its own parameters, BatchNorm statistics, optimizer state, RNG
stream and data order (a swept `seed=s` run is the run launched alone with `--config.seed=s`),
and its own metrics in WORKDIR/runs/NAME/ (metrics.jsonl, config.json, TensorBoard events),
NAME being its swept `key=value` pairs joined by commas. Checkpoints hold all runs' states.

Sweepable: `seed` and the float hyperparameters of `sweepable()`; keys that change shapes or
code (models, method, batch size, dtypes, dataset, schedules' step counts) are refused.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import time
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
from kd_jax import models
from kd_jax.errors import ConfigError, TrainingError, suggest
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import loop
from kd_jax.train import metrics as metrics_lib
from kd_jax.train import workdir as workdir_lib
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
    run = ml_collections.ConfigDict(config.to_dict())
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
    images, labels, teacher_logits = step_lib._in_memory_batch(  # pylint: disable=protected-access
        rs, state, *data, table=teacher if spec.teacher_table else None)
    stopped = state.bad_streak >= spec.max_bad_steps
    new = step_lib._one_step(rs, state, teacher, images, labels, teacher_logits)  # pylint: disable=protected-access
    return step_lib._tree_where(stopped, state, new)  # pylint: disable=protected-access

  def run(states, hp, teacher, data):
    body = jax.vmap(per_run, in_axes=(0, 0, None, None))
    if num_steps == 1:
      return body(states, hp, teacher, data)
    return jax.lax.scan(lambda s, _: (body(s, hp, teacher, data), None), states, None,
                        length=num_steps)[0]

  repl = NamedSharding(spec.mesh, P())
  return jax.jit(run, in_shardings=(repl, repl, repl, repl), out_shardings=repl,
                 donate_argnums=(0,), compiler_options=step_lib.compiler_options(spec.mesh))


def _index(tree: PyTree, i: int) -> PyTree:
  return jax.tree.map(lambda x: x[i], tree)


def train_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[loop.RunResult]:
  """Trains every run of config.sweep in one program; resumes from `workdir` like a run."""
  t_start = time.time()
  named = expand(config)
  mesh = loop.make_mesh(config)
  for _, c in named:
    config_lib.validate(c, model_names=models.names(), num_devices=mesh.devices.size)
  if config.dataset not in config_lib.IN_MEMORY_DATASETS:
    raise ConfigError(f"config.sweep needs an in-memory dataset "
                      f"{list(config_lib.IN_MEMORY_DATASETS)}; got {config.dataset!r}")
  names = [n for n, _ in named]
  runs = [c for _, c in named]
  keys = [k for k, _ in parse_sweep(config.sweep)]
  workdir_lib.probe_writable([workdir])
  run_dirs = [os.path.join(workdir, "runs", n) for n in names]
  if jax.process_index() == 0:
    workdir_lib.write_config_json(workdir, config)
    workdir_lib.probe_writable(run_dirs)
    for d, c in zip(run_dirs, runs):
      workdir_lib.write_config_json(d, c)
  console.info(f"sweep: {len(runs)} runs in one program: {', '.join(names)}")

  data = loop._setup_data(config, mesh)  # pylint: disable=protected-access
  spe = data.steps_per_epoch
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * spe)
  trainers = [loop.build_trainer(c, mesh, steps_per_epoch=spe, total_steps=total_steps,
                                 in_memory=True, mean=data.mean, std=data.std) for c in runs]
  spec, teacher_vars = trainers[0].spec, trainers[0].teacher_vars
  repl = NamedSharding(mesh, P())
  states = jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s), out_shardings=repl)(
      *[t.init_state() for t in trainers])
  hp = jax.device_put(hyperparameters(runs, keys), repl)
  checkpointer = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints)
  writers = [metrics_lib.MetricWriter(d, total_steps=total_steps) for d in run_dirs]
  best = [(-1.0, 0)] * len(runs)
  elapsed_before = 0.0
  restored = checkpointer.restore_latest(jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), states))
  if restored is not None:
    states, meta = restored
    best = [tuple(b) for b in meta.get("best", best)]
    elapsed_before = meta.get("elapsed_s", 0.0)
    console.info(f"Resuming the sweep from step {int(jax.device_get(states.step[0]))}")
  step = int(jax.device_get(states.step[0]))
  for w in writers:   # each run's metrics.jsonl and events cut back to the restored step
    w.start(step)

  teacher = spec.teacher
  if teacher is not None and config.teacher_dtype != "float32":
    spec, _ = loop._checked_low_precision_teacher(  # pylint: disable=protected-access
        config, spec, teacher_vars, data, mesh)
    teacher = spec.teacher
  if step == 0 and teacher is not None:
    t_eval = loop.evaluate(step_lib.make_eval_fn(teacher, spec.mean, spec.std, mesh, True),
                           teacher_vars, data, mesh, config.num_classes)
    for w in writers:
      w.write(0, {"teacher/top1": t_eval["top1"], "teacher/top5": t_eval["top5"]})
  step_teacher = teacher_vars
  if teacher is not None and config.teacher_cache:
    step_teacher = loop._teacher_table(config, spec, teacher_vars, data, mesh)  # pylint: disable=protected-access
    spec = dataclasses.replace(spec, teacher_table=True)

  eval_fn = step_lib.make_eval_fn(spec.student, spec.mean, spec.std, mesh, True)
  train_fns = step_lib.TrainFns(spec, lambda n, one_step: make_sweep_train_fn(
      spec, config, total_steps, n, one_step=one_step))
  window_start, window_step = time.time(), step
  eval_every = config.eval_every_epochs * spe
  last_eval: list[dict] = [{} for _ in runs]
  preempted = False

  def elapsed():
    return elapsed_before + time.time() - t_start

  def boundary(s: int, every: int) -> int:
    return (s // every + 1) * every

  with loop._Preemption() as preemption:  # pylint: disable=protected-access
    while step < total_steps:
      target = min(total_steps, boundary(step, config.log_every_steps),
                   boundary(step, config.checkpoint_every_steps), boundary(step, eval_every))
      n = min(config.steps_per_dispatch, target - step)
      states = train_fns.get(n)[0](states, hp, step_teacher, data.train)
      step += n

      if step % config.log_every_steps == 0 or step == total_steps:
        sums, count, bad, skipped = jax.device_get(
            (states.metric_sums, states.metric_count, states.bad_streak, states.skipped))
        now = time.time()
        ips = (step - window_step) * config.batch_size / max(now - window_start, 1e-9)
        for i, (w, t) in enumerate(zip(writers, trainers)):
          c = max(int(count[i]), 1)
          scalars = {f"train/{k}" if k != "loss" else "train/loss": float(v[i]) / c
                     for k, v in sums.items()}
          scalars.update({"epoch": step / spe, "lr": float(t.schedule(step - 1)),
                          "images_per_sec": ips, "sweep_images_per_sec": ips * len(runs),
                          "elapsed_s": elapsed(), "skipped_steps": int(skipped[i])})
          if int(count[i]) > 0:
            w.write(step, scalars)
        writers[0].print_progress(step, {"epoch": step / spe, "images_per_sec": ips * len(runs)},
                                  None)
        states = states.replace(metric_sums=jax.tree.map(jnp.zeros_like, states.metric_sums),
                                metric_count=jnp.zeros_like(states.metric_count))
        window_start, window_step = time.time(), step
        worst = int(np.max(bad))
        if worst >= config.max_bad_steps:
          checkpointer.wait()
          raise TrainingError(
              f"sweep run {names[int(np.argmax(bad))]}: {worst} consecutive non-finite training "
              f"steps at step {step} (config.max_bad_steps={config.max_bad_steps}); the last "
              f"good checkpoint is kept. Lower its learning rate or drop it from config.sweep.")

      if step % eval_every == 0 or step == total_steps:
        epoch = math.ceil(step / spe)
        for i, w in enumerate(writers):
          variables = {"params": _index(states.params, i),
                       "batch_stats": _index(states.batch_stats, i)}
          last_eval[i] = loop.evaluate(eval_fn, variables, data, mesh, config.num_classes)
          w.write(step, {"epoch": step / spe, "eval/top1": last_eval[i]["top1"],
                         "eval/top5": last_eval[i]["top5"], "eval/loss": last_eval[i]["loss"],
                         "elapsed_s": elapsed()})
          if last_eval[i]["top1"] > best[i][0]:
            best[i] = (last_eval[i]["top1"], epoch)
        console.info(f"step {step}/{total_steps} | eval/top1 " + ", ".join(
            f"{n}: {e['top1']:.4f}" for n, e in zip(names, last_eval)))

      if (step % config.checkpoint_every_steps == 0 or step == total_steps
          or preemption.requested):
        checkpointer.save(step, states, {"step": step, "best": best, "elapsed_s": elapsed(),
                                         "runs": names, "student": config.student,
                                         "method": config.method})
      if preemption.requested and step < total_steps:
        preempted = True
        console.info(f"{preemption.signal_name} received: checkpoint saved at step {step}; run "
                     f"the same command again to resume")
        break

  checkpointer.wait()
  checkpointer.close()
  for w in writers:
    w.close()
  return [loop.RunResult(step=step, final=e, best_top1=b[0], preempted=preempted)
          for e, b in zip(last_eval, best)]
