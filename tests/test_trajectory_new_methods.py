"""The proof for CTKD, MLKD and DIST: a whole kd_jax run follows its authors' training loop step
for step.

The setup of tests/test_trajectory.py (its image folder of 32 training images, 10 classes, no
augmentation; its resnet8 teacher and student .pth files; one full-batch step per epoch), with
the PyTorch loops of tests/torch_trainer.py written like each authors' trainer: CTKD's global
temperature in the student's SGD, read through the gradient-reversal layer at the cosine
curriculum's lambda of the epoch; MLKD's two student passes per step (weak then strong view,
both the un-augmented image under augment=none), so BatchNorm statistics move twice per step;
DIST's teacher-then-student step with CE + kd_weight * DIST.

Yardstick (as tests/test_trajectory.py): the PyTorch loop in float64 is the reference and in
float32 its own round-off; kd_jax (float32, through launch.py) must stay within FACTOR x that
drift (+ FLOOR) in the per-step loss, CTKD's per-step temperature (`train/temperature`, the
temperature that step's loss used), every weight and buffer of the exported student and its
test-set logits. Each test also runs its PyTorch loop with one deliberate defect (CTKD: lambda
with the wrong sign; MLKD: the strong view's pass not moving the BatchNorm statistics; DIST:
the intra-class relation over the wrong axis) and shows that the defect moves the run far
beyond that bound, so the comparison would catch it in kd_jax.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import testenv  # pylint: disable=g-import-not-at-top

torch = pytest.importorskip("torch")
pytest.importorskip("PIL.Image")
from kd_jax import export  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_twins_a  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_trajectory import (  # pylint: disable=g-import-not-at-top,wrong-import-position,unused-import
    FACTOR, FLOOR, MEAN, N_TEST, N_TRAIN, NUM_CLASSES, STD, _read_split, _rel, _test_logits,
    setup)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A defect must move the run by more than this many times the bound.
DEFECT_MARGIN = 10.0

# method id -> (config file, epochs, LR milestones, extra config overrides, defects). CTKD's
# curriculum is shortened to 4 epochs so that 8 epochs see lambda rise (epochs 1-4) and stay at
# 1 (epochs 5-8); its LR is the authors' CIFAR 0.05 and its raw temperature starts at -2
# (tau0 = 3.38, where the KD loss depends on tau more than at the default 15.6), so that the
# temperature moves within a few steps.
METHODS = {
    "ctkd": ("configs/ctkd.py", 8, (3, 6),
             {"loss.ctkd_decay_epochs": 4, "loss.ctkd_raw_init": -2.0, "learning_rate": 0.05},
             ("lambda_sign", "no_temperature_decay")),
    "mlkd": ("configs/mlkd.py", 6, (2, 4), {"learning_rate": 0.025}, ("one_bn_update",)),
    "dist": ("configs/dist.py", 6, (2, 4), {"learning_rate": 0.05}, ("intra_untransposed",)),
}
COMMON = {"num_classes": NUM_CLASSES, "teacher": "resnet8", "student": "resnet8",
          "lr_warmup_epochs": 0, "num_devices": 1}


def _models(root, dtype):
  student = torch_twins_a.build("resnet8", NUM_CLASSES)
  student.load_state_dict(torch.load(root / "s_None.pth", weights_only=True)["model"])
  teacher = torch_twins_a.build("resnet8", NUM_CLASSES)
  teacher.load_state_dict(torch.load(root / "t.pth", weights_only=True)["model"])
  return student.to(dtype), teacher.to(dtype)


def _torch_run(root, method, config, dtype, defect=""):
  """(student, per-step losses, per-step temperatures or None) of the authors' loop."""
  student, teacher = _models(root, dtype)
  x, y = _read_split(root, "train", dtype)
  temps = None
  if method == "ctkd":
    losses, temps = torch_trainer.train_ctkd(student, teacher, x, y, config, defect)
  elif method == "mlkd":   # augment=none: both views are the un-augmented image
    losses = torch_trainer.train_mlkd(student, teacher, x, x.clone(), y, config, defect)
  else:
    losses = torch_trainer.train_dist(student, teacher, x, y, config, defect)
  return student, np.array(losses), None if temps is None else np.array(temps)


def _launch(root, workdir, config_file, settings):
  cmd = [sys.executable, os.path.join(REPO, "launch.py"),
         f"--config={os.path.join(REPO, config_file)}", f"--workdir={workdir}",
         f"--config.dataset=imagefolder:{root / 'data'}",
         f"--config.teacher_checkpoint={root / 't.pth'}",
         f"--config.student_init={root / 's_None.pth'}", "--config.augment=none",
         f"--config.mean={MEAN}".replace(" ", ""), f"--config.std={STD}".replace(" ", ""),
         f"--config.batch_size={N_TRAIN}", f"--config.eval_batch_size={N_TEST}",
         "--config.num_train_steps=0", "--config.log_every_steps=1",
         f"--config.eval_every_epochs={settings['num_epochs']}",
         f"--config.checkpoint_every_steps={settings['num_epochs']}",
         *(f"--config.{k}={v}".replace(" ", "") for k, v in settings.items())]
  res = subprocess.run(cmd, capture_output=True, text=True, env=testenv.subprocess_env(1),
                       cwd=REPO, timeout=1500)
  assert res.returncode == 0, res.stderr[-3000:]
  with open(workdir / "config.json") as f:
    config = json.load(f)
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return config, records


def _per_step(records, key, steps):
  got = {r["step"]: r[key] for r in records if key in r}
  assert sorted(got) == list(range(1, steps + 1)), (key, sorted(got))
  return np.array([got[s] for s in range(1, steps + 1)])


def _weights(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}


def _weights_rel(a, b):
  return max(_rel(a[k], b[k]) for k in b)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_kd_jax_run_follows_the_authors_loop(setup, tmp_path, method):
  root = setup
  config_file, epochs, milestones, overrides, defects = METHODS[method]
  settings = dict(COMMON, num_epochs=epochs, lr_milestones=milestones, **overrides)
  workdir = tmp_path / "run"
  config, records = _launch(root, workdir, config_file, settings)
  assert config["method"] == method
  jax_losses = _per_step(records, "train/loss", epochs)

  s64, ref, t_ref = _torch_run(root, method, config, torch.float64)
  s32, l32, t32 = _torch_run(root, method, config, torch.float32)
  assert ref[-1] < ref[0]  # it really trains
  drift = np.abs(l32 - ref) / np.abs(ref)
  err = np.abs(jax_losses - ref) / np.abs(ref)
  out = tmp_path / "s.pth"
  export.export(str(workdir), str(out))
  exported = torch_twins_a.build("resnet8", NUM_CLASSES)
  exported.load_state_dict(torch.load(out, weights_only=True)["model"], strict=True)
  w64, w32, w_jax = _weights(s64), _weights(s32), _weights(exported)
  w_err, w_drift = _weights_rel(w_jax, w64), _weights_rel(w32, w64)
  z64 = _test_logits(s64, root)
  z_err, z_drift = _rel(_test_logits(exported, root), z64), _rel(_test_logits(s32, root), z64)
  loss_bound = FACTOR * drift.max() + FLOOR
  w_bound, z_bound = FACTOR * w_drift + FLOOR, FACTOR * z_drift + FLOOR
  line = (f"\n[trajectory] {method}: loss rel err kd_jax {err.max():.2e} (torch f32 "
          f"{drift.max():.2e}); weights {w_err:.2e} ({w_drift:.2e}); test logits "
          f"{z_err:.2e} ({z_drift:.2e}); loss {ref[0]:.4f} -> {ref[-1]:.4f}")

  # The same loop with each defect, against the float64 reference: far beyond the bounds.
  bad = {}
  for defect in defects:
    s_bad, l_bad, t_bad = _torch_run(root, method, config, torch.float64, defect)
    bad[defect] = {"loss": float(np.max(np.abs(l_bad - ref) / np.abs(ref))) / loss_bound,
                   "weights": _weights_rel(_weights(s_bad), w64) / w_bound,
                   "test logits": _rel(_test_logits(s_bad, root), z64) / z_bound}
    if method == "ctkd":
      bad[defect]["temperature"] = float(np.max(np.abs(t_bad - t_ref) / t_ref))
  line += "".join(f"; defect {d}: " + ", ".join(f"{k} {v:.3g}x" for k, v in r.items())
                  for d, r in bad.items())

  if method == "ctkd":
    jax_temps = _per_step(records, "train/temperature", epochs)
    raw0 = config["loss"]["ctkd_raw_init"]
    np.testing.assert_allclose(t_ref[0], 1 + 20 / (1 + np.exp(-raw0)), rtol=1e-12)
    t_err = np.abs(jax_temps - t_ref) / t_ref
    t_drift = np.abs(t32 - t_ref) / t_ref
    t_bound = FACTOR * t_drift.max() + FLOOR
    for r in bad.values():
      r["temperature"] /= t_bound
    moved = float(np.max(np.abs(t_ref - t_ref[0]) / t_ref[0]))
    print(line + f"; temperature {t_err.max():.2e} ({t_drift.max():.2e}), {t_ref[0]:.4f} -> "
          f"{t_ref[-1]:.4f} (bound {t_bound:.2e}; in units of the bound: "
          + ", ".join(f"{d} {r['temperature']:.3g}x" for d, r in bad.items()) + ")")
    assert moved > DEFECT_MARGIN * t_bound, (moved, t_bound)   # the temperature is learned
    np.testing.assert_array_less(t_err, t_bound)
  else:
    print(line)
  np.testing.assert_array_less(err, loss_bound)
  assert w_err <= w_bound
  assert z_err <= z_bound
  for defect, ratios in bad.items():
    assert max(ratios.values()) > DEFECT_MARGIN, (defect, ratios)
