"""The proof: a whole kd_jax run follows the reference PyTorch training loop step for step.

Same data (an image folder of 32 training images, 10 classes, no augmentation), same teacher
and student weights (.pth), one full-batch step per epoch (so batch order does not matter),
20 epochs with LR steps after epochs 7 and 14. kd_jax runs through launch.py and its student
comes back through kd_jax.export; tests/torch_trainer.py is the PyTorch side.

Yardstick: float32 round-off grows from step to step on such a small full-batch problem, so
the PyTorch loop runs in float64 (the reference trajectory) and in float32; kd_jax (float32)
must stay within a small multiple of PyTorch's own float32-vs-float64 drift, measured here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import testenv  # pylint: disable=g-import-not-at-top
import yardstick  # pylint: disable=g-import-not-at-top

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
from kd_jax import export  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_twins_a  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, SIZE, N_TRAIN, N_TEST, EPOCHS = 10, 32, 32, 20, 20
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# kd_jax's error may be this many times PyTorch's own float32-vs-float64 drift, plus a floor
# that matters only where that drift is near zero (a value that barely moves): the worst-case
# round-off of a float32 sum of 168 terms (yardstick.gamma(168) = 1.0e-5), about the chain a
# reported value passes through after the last update (the classifier's 64-term dot products,
# the loss's means over the 32 examples and 10 classes, the metric window's sum).
FACTOR, FLOOR = 10.0, yardstick.gamma(168)

# method id -> (config file[:arg], extra config overrides, aux head of the student)
METHODS = {
    "kd": ("configs/kd.py", {}, None),
    "kd_ls": ("configs/kd.py:resnet32x4,resnet8x4,ls", {}, None),
    "dkd": ("configs/dkd.py", {"loss.warmup_epochs": 14}, None),
    "rld": ("configs/rld.py", {}, None),
    "dhkd": ("configs/dhkd.py", {"aux_head": "linear", "loss.grad_align": True}, "linear"),
    "rkkd": ("configs/rkkd.py", {"loss.rank_top_k": 0}, None),
}
# The float64 run for the two distinct steps: DKD (the shared KD step: schedule, momentum,
# weight decay, BatchNorm, a per-example term, plus the distillation warm-up factor, whose
# dtype only float64 shows) and DHKD (the auxiliary head and the gradient transform). The other methods' terms are checked in float64 against their
# PyTorch transcriptions (tests/test_fidelity.py, tests/test_losses*.py) and their whole
# trajectories in float32 above.
X64_METHODS = ("dkd", "dhkd")
# The run settings every method shares (besides data, weights and normalization).
COMMON = {"num_classes": NUM_CLASSES, "teacher": "resnet8", "student": "resnet8",
          "num_epochs": EPOCHS, "learning_rate": 0.01, "lr_milestones": (7, 14),
          "lr_warmup_epochs": 0, "num_devices": 1}


def _class_images(rng, c: int, n: int) -> np.ndarray:
  """n SIZExSIZE RGB uint8 images of class c: a class-specific colour and stripe, plus noise."""
  base = np.zeros((SIZE, SIZE, 3))
  base[..., c % 3] = 60 + 15 * c
  base[(c * 3) % SIZE:(c * 3) % SIZE + 3, :, :] += 80
  noise = rng.normal(0, 40, size=(n, SIZE, SIZE, 3))
  return np.clip(base[None] + noise + 40, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The image folder and the teacher/student .pth files, shared by every method."""
  root = tmp_path_factory.mktemp("traj")
  rng = np.random.default_rng(0)
  counts = {"train": [N_TRAIN // NUM_CLASSES + (c < N_TRAIN % NUM_CLASSES)
                      for c in range(NUM_CLASSES)],
            "test": [N_TEST // NUM_CLASSES] * NUM_CLASSES}
  for split, per_class in counts.items():
    for c, n in enumerate(per_class):
      d = root / "data" / split / f"class{c:02d}"
      d.mkdir(parents=True)
      for i, img in enumerate(_class_images(rng, c, n)):
        Image.fromarray(img).save(d / f"{i}.png")
  torch.manual_seed(0)
  calib = torch.randn(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
  teacher = torch_twins_a.randomize_(torch_twins_a.build("resnet8", NUM_CLASSES), calib, seed=3)
  torch.save({"model": teacher.state_dict()}, root / "t.pth")
  for aux in (None, "linear"):
    torch.manual_seed(7)
    student = torch_twins_a.build("resnet8", NUM_CLASSES, aux)
    torch.save({"model": student.state_dict()}, root / f"s_{aux}.pth")
  return root


def _read_split(root, split, dtype, per_class=0):
  """(normalized NCHW images, labels) read with PIL; class ids = sorted folder names;
  per_class > 0 keeps the first per_class files of each class."""
  xs, ys = [], []
  classes = sorted(os.listdir(root / "data" / split))
  for c, name in enumerate(classes):
    files = sorted(os.listdir(root / "data" / split / name))
    for f in files[:per_class] if per_class else files:
      xs.append(np.asarray(Image.open(root / "data" / split / name / f).convert("RGB")))
      ys.append(c)
  x = (np.stack(xs).astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
  return (torch.tensor(x.transpose(0, 3, 1, 2), dtype=dtype),
          torch.tensor(ys, dtype=torch.long))


def _torch_run(root, config, aux, dtype, per_class=0, permute=False):
  """The PyTorch loop from the saved weights; permute=True feeds the full batch in a fixed
  shuffled order: the same computation with its sums in another order, which measures how much
  the problem amplifies round-off."""
  student = torch_twins_a.build("resnet8", NUM_CLASSES, aux)
  student.load_state_dict(torch.load(root / f"s_{aux}.pth", weights_only=True)["model"])
  teacher = torch_twins_a.build("resnet8", NUM_CLASSES)
  teacher.load_state_dict(torch.load(root / "t.pth", weights_only=True)["model"])
  student, teacher = student.to(dtype), teacher.to(dtype)
  x, y = _read_split(root, "train", dtype, per_class)
  if permute:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(11))
    x, y = x[order], y[order]
  losses = torch_trainer.train(student, teacher, x, y, config)
  return student, np.array(losses)


def _rel(a, b) -> float:
  """max |a - b| / max |b|."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _test_logits(model, root):
  x, _ = _read_split(root, "test", torch.float64)
  model = model.double().eval()
  with torch.no_grad():
    out = model(x)
  return (out[0] if isinstance(out, tuple) else out).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_kd_jax_run_follows_the_pytorch_loop(setup, tmp_path, method):
  root = setup
  config_file, overrides, aux = METHODS[method]
  settings = dict(COMMON, **overrides)
  workdir = tmp_path / "run"
  env = testenv.subprocess_env(1, fast_compile=False)
  cmd = [sys.executable, os.path.join(REPO, "launch.py"),
         f"--config={os.path.join(REPO, config_file)}", f"--workdir={workdir}",
         f"--config.dataset=imagefolder:{root / 'data'}",
         f"--config.teacher_checkpoint={root / 't.pth'}",
         f"--config.student_init={root / f's_{aux}.pth'}", "--config.augment=none",
         f"--config.mean={MEAN}".replace(" ", ""), f"--config.std={STD}".replace(" ", ""),
         f"--config.batch_size={N_TRAIN}",
         f"--config.eval_batch_size={N_TEST}", "--config.num_train_steps=0",
         "--config.log_every_steps=1", f"--config.eval_every_epochs={EPOCHS}",
         f"--config.checkpoint_every_steps={EPOCHS}",
         *(f"--config.{k}={v}".replace(" ", "") for k, v in settings.items())]
  res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=1500)
  assert res.returncode == 0, res.stderr[-3000:]
  with open(workdir / "config.json") as f:
    config = json.load(f)
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  jax_losses = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
  assert sorted(jax_losses) == list(range(1, EPOCHS + 1))
  jax_losses = np.array([jax_losses[s] for s in range(1, EPOCHS + 1)])

  s64, ref = _torch_run(root, config, aux, torch.float64)
  s32, l32 = _torch_run(root, config, aux, torch.float32)
  assert ref[-1] < ref[0]  # it really trains
  drift = np.abs(l32 - ref) / np.abs(ref)
  err = np.abs(jax_losses - ref) / np.abs(ref)
  # The exported student (kd_jax.export, the function behind `python -m kd_jax.export`),
  # loaded strictly into the PyTorch model.
  out = tmp_path / "s2.pth"
  export.export(str(workdir), str(out))
  exported = torch_twins_a.build("resnet8", NUM_CLASSES, aux)
  exported.load_state_dict(torch.load(out, weights_only=True)["model"], strict=True)
  sd_jax, sd64, sd32 = (m.state_dict() for m in (exported, s64, s32))
  keys = [k for k in sd64 if not k.endswith("num_batches_tracked")]
  w_err = max(_rel(sd_jax[k].numpy(), sd64[k].numpy()) for k in keys)
  w_drift = max(_rel(sd32[k].numpy(), sd64[k].numpy()) for k in keys)
  z64 = _test_logits(s64, root)
  z_err = _rel(_test_logits(exported, root), z64)
  z_drift = _rel(_test_logits(s32, root), z64)
  print(f"\n[trajectory] {method}: loss rel err kd_jax {err.max():.2e} (torch f32 "
        f"{drift.max():.2e}); weights {w_err:.2e} ({w_drift:.2e}); test logits {z_err:.2e} "
        f"({z_drift:.2e}); loss {ref[0]:.4f} -> {ref[-1]:.4f}")
  np.testing.assert_array_less(err, FACTOR * drift.max() + FLOOR)
  assert w_err <= FACTOR * w_drift + FLOOR
  assert z_err <= FACTOR * z_drift + FLOOR


@pytest.mark.slow
@pytest.mark.parametrize("method", X64_METHODS)
def test_kd_jax_step_in_float64_equals_torch_double(setup, tmp_path, method):
  """The same trajectory with kd_jax's real train step in float64 (JAX x64) against the
  PyTorch loop in float64: the weights must agree to float64 round-off."""
  root = setup
  config_file, overrides, aux = METHODS[method]
  # Float64 convolutions are slow on CPU: 2 images per class, 12 epochs, LR steps after 4 and 8.
  settings = dict(COMMON, num_epochs=12, lr_milestones=(4, 8), **overrides)
  per_class = 2
  out = tmp_path / "x64"
  env = testenv.subprocess_env(
      1, fast_compile=False, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  res = subprocess.run([sys.executable, os.path.join(REPO, "tests", "x64_runner.py"),
                        os.path.join(REPO, config_file), json.dumps(settings), str(root),
                        str(aux), str(per_class), str(out)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=1500)
  assert res.returncode == 0, res.stderr[-3000:]
  with open(out / "config.json") as f:
    config = json.load(f)
  s64, ref = _torch_run(root, config, aux, torch.float64, per_class)
  # The problem's own sensitivity to round-off: the PyTorch loop on the batch in another order.
  # Steep losses (RKKD's tanh(100 x)) amplify it, smooth ones do not.
  s_perm, l_perm = _torch_run(root, config, aux, torch.float64, per_class, permute=True)
  jax_losses = np.load(out / "losses.npy")
  loss_err = float(np.max(np.abs(jax_losses - ref) / np.abs(ref)))
  student = dict(np.load(out / "student.npz"))
  sd64 = s64.state_dict()
  keys = [k for k in sd64 if not k.endswith("num_batches_tracked")]
  assert sorted(student) == sorted(keys)
  w_err = max(_rel(student[k], sd64[k].numpy()) for k in keys)
  init = torch.load(root / f"s_{aux}.pth", weights_only=True)["model"]
  moved = max(_rel(init[k].double().numpy(), sd64[k].numpy()) for k in keys)
  loss_sens = float(np.max(np.abs(l_perm - ref) / np.abs(ref)))
  sd_perm = s_perm.state_dict()
  w_sens = max(_rel(sd_perm[k].numpy(), sd64[k].numpy()) for k in keys)
  print(f"\n[trajectory x64] {method}: loss rel err {loss_err:.2e} (float32 metric sums; "
        f"reordered batch {loss_sens:.2e}); weights {w_err:.2e} (reordered batch "
        f"{w_sens:.2e}; the weights moved by {moved:.2e})")
  assert moved > 1e-3
  # The logged loss is a float32 value (a window mean: yardstick.gamma(16), 9.5e-7, bounds its
  # round-off); the weights are float64 throughout, so they agree to float64 round-off as the
  # problem amplifies it (the reordered batch measures that), with a floor of the float64
  # round-off of a 9000-term sum (1.0e-12; the model's longest reductions are ~600 terms).
  assert loss_err < max(yardstick.gamma(16), 100 * loss_sens)
  assert w_err < max(yardstick.gamma(9000, u=2.0 ** -53), 100 * w_sens)
