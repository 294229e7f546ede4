"""kd_jax's training step in float64 (JAX x64), for the trajectory tests.

Run as a script (x64 must be enabled before JAX does anything, so not inside the pytest
process): builds the method's config from its config file plus overrides, the real StepSpec
(student, teacher, optimizer, LR schedule, loss) with float64 models and variables, and runs
one full-batch step per epoch on an image folder. Writes OUT/config.json, OUT/losses.npy (the
per-step train/loss, float32 metric sums) and OUT/student.npz (the final student as a torch-layout
state_dict, float64).

  python tests/x64_runner.py CONFIG_FILE[:ARG] OVERRIDES_JSON ROOT AUX PER_CLASS OUT

PER_CLASS > 0 keeps only the first PER_CLASS training images of each class (float64
convolutions are slow on CPU).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def read_split(root: str, split: str, per_class: int = 0):
  """(normalized NHWC float64 images, int labels) of ROOT/data/SPLIT, read with PIL; sorted
  class folders are the class ids; per_class > 0 keeps the first per_class files of each."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  xs, ys = [], []
  base = os.path.join(root, "data", split)
  for c, name in enumerate(sorted(os.listdir(base))):
    files = sorted(os.listdir(os.path.join(base, name)))
    for f in files[:per_class] if per_class else files:
      xs.append(np.asarray(Image.open(os.path.join(base, name, f)).convert("RGB")))
      ys.append(c)
  x = (np.stack(xs).astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
  return x, np.array(ys, np.int32)


def _config(spec: str, overrides: dict):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def main(argv) -> None:
  spec, overrides, root, aux, per_class, out = argv
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from kd_jax import export, methods, models  # pylint: disable=import-outside-toplevel
  from kd_jax.train import loop  # pylint: disable=import-outside-toplevel
  from kd_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from kd_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel

  aux = None if aux == "None" else aux
  config = _config(spec, json.loads(overrides))
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  x, y = read_split(root, "train", int(per_class))
  f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
  student = models.create(config.student, config.num_classes, aux_head=aux, dtype=jnp.float64)
  teacher = models.create(config.teacher, config.num_classes, dtype=jnp.float64)
  sv = f64(models.import_torch_checkpoint(os.path.join(root, f"s_{aux}.pth"), config.student,
                                          config.num_classes, aux_head=aux))
  tv = f64(models.import_torch_checkpoint(os.path.join(root, "t.pth"), config.teacher,
                                          config.num_classes))
  mesh = loop.make_mesh(config)
  total = config.num_epochs
  schedule = state_lib.learning_rate_schedule(config, 1, total)
  tx = state_lib.make_optimizer(config)
  loss = methods.LossSpec.from_config(config)
  step_spec = step_lib.StepSpec(
      student=student, teacher=teacher, tx=tx, schedule=schedule, loss=loss,
      steps_per_epoch=1, batch_size=len(y), seed=0, in_memory=False, mean=MEAN, std=STD,
      max_bad_steps=3, mesh=mesh)
  state = state_lib.create_state(sv["params"], sv["batch_stats"], tx, jax.random.PRNGKey(0),
                                 step_lib.metric_names(loss))
  fn = step_lib.make_train_fn(step_spec, 1)
  # Committed like the step's outputs, so the step compiles once.
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  data = {"image": jnp.asarray(x[None]), "label": jnp.asarray(y[None])}
  losses = []
  for _ in range(total):
    state = fn(state, tv, data)
    losses.append(float(state.metric_sums["loss"]))
    state = state.replace(metric_sums=jax.tree.map(jnp.zeros_like, state.metric_sums))
  assert int(state.skipped) == 0
  variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  assert {a.dtype for a in jax.tree.leaves(variables)} == {np.dtype(np.float64)}
  np.save(os.path.join(out, "losses.npy"), np.array(losses))
  np.savez(os.path.join(out, "student.npz"), **export.to_state_dict(variables, config.student))


if __name__ == "__main__":
  main(sys.argv[1:])
