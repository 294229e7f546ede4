"""Given weights in, trained weights out.

`config.student_init` / `config.teacher_checkpoint` from .pth, .msgpack and workdirs;
`python -m kd_jax.export` writes state_dicts the PyTorch models (kd_jax.torch_models) load
strictly and TorchScript files that run without kd_jax; import -> export is exact.
"""
from __future__ import annotations

import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testenv  # pylint: disable=g-import-not-at-top

from kd_jax import errors
from kd_jax import export as export_lib
from kd_jax import models
from kd_jax.models import torch_import
from kd_jax.train import loop

torch = pytest.importorskip("torch")
import torch_twins_a  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_twins_b  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import smoke  # pylint: disable=g-import-not-at-top,wrong-import-position

_B_NAMES = ("vgg", "MobileNet", "Shuffle")


def twin(name: str, num_classes: int, aux=None, seed: int = 0):
  """A PyTorch twin of `name` with random weights and non-trivial BN statistics."""
  torch.manual_seed(seed)
  if name.startswith(_B_NAMES):
    return torch_twins_b.randomize_(torch_twins_b.build(name, num_classes, aux), seed).eval()
  size = 224 if name.startswith("imagenet_") else 32
  calib = torch.randn(2 if size == 224 else 8, 3, size, size,
                      generator=torch.Generator().manual_seed(seed))
  return torch_twins_a.randomize_(torch_twins_a.build(name, num_classes, aux), calib, seed)


# Every family, with and without the DHKD heads (each head name per family once).
ROUND_TRIP = [("resnet8", None), ("resnet8", "linear"), ("resnet8x4", "nonlinear"),
              ("ResNet18", "linear"), ("wrn_16_1", "nonlinear"), ("wrn_16_2", None),
              ("vgg8", "nonlinear"), ("MobileNetV2", "linear"), ("MobileNetV2", None),
              ("ShuffleV1", "linear"), ("ShuffleV2", "nonlinear"), ("MobileNetV1", None),
              ("imagenet_resnet18", None)]


@pytest.mark.parametrize("name,aux", ROUND_TRIP)
def test_import_then_export_is_exact_and_loads_strictly(tmp_path, name, aux):
  c = 10
  model = twin(name, c, aux)
  original = {k: v.clone() for k, v in model.state_dict().items()}
  path = tmp_path / "w.pth"
  torch.save({"model": original}, path)
  variables = models.import_torch_checkpoint(str(path), name, c, aux_head=aux)
  sd = export_lib.to_state_dict(variables, name, num_batches_tracked=7)
  assert set(sd) == set(original)
  fresh = twin(name, c, aux, seed=1)
  fresh.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()},
                        strict=True)
  for k, v in fresh.state_dict().items():
    if not k.endswith("num_batches_tracked"):
      assert torch.equal(v, original[k]), k


def _train(tmp_path, name="run", steps=4, **overrides):
  config = smoke.get_config("ce")
  config.train_examples, config.eval_examples = 64, 32
  config.batch_size, config.eval_batch_size = 16, 32
  config.num_train_steps, config.log_every_steps = steps, 2
  config.checkpoint_every_steps, config.steps_per_dispatch = 2, 1
  config.eval_every_epochs = 1
  config.num_devices = 1
  for k, v in overrides.items():
    config[k] = v
  workdir = str(tmp_path / name)
  loop.train_and_evaluate(config, workdir)
  return config, workdir


def _eval_logits(name, variables, x_nhwc, aux=None):
  return _eval_logits_n(name, 100, variables, x_nhwc, aux)


def _eval_logits_n(name, num_classes, variables, x_nhwc, aux=None):
  model = models.create(name, num_classes, aux_head=aux)
  out = model.apply(variables, jnp.asarray(x_nhwc), train=False)
  return np.asarray(out[0] if isinstance(out, tuple) else out)


# Runs in a fresh interpreter (-I, cwd elsewhere, no PYTHONPATH). An import hook also refuses
# kd_jax, jax, flax and mdistiller, so the TorchScript file is loaded where kd_jax cannot be
# imported even when it is pip-installed; for the state_dict only kd_jax (for
# kd_jax.torch_models) is allowed back, with jax and flax still refused, so the class needs
# nothing but torch.
_LOAD_ELSEWHERE = r"""
import importlib.abc, json, sys
import numpy as np, torch
torch.set_num_threads(1)

class Refuse(importlib.abc.MetaPathFinder):
  names = {"kd_jax", "jax", "jaxlib", "flax", "mdistiller"}
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in self.names:
      raise ImportError("refused here: " + name)
sys.meta_path.insert(0, Refuse())
x = torch.from_numpy(np.load(sys.argv[1]))
out = {}
try:
  import kd_jax
  out["kd_jax_importable"] = True
except ImportError:
  out["kd_jax_importable"] = False
extra = {"kd_jax.json": ""}
ts = torch.jit.load(sys.argv[2], _extra_files=extra)
out["meta_inside"] = json.loads(extra["kd_jax.json"])
with torch.no_grad():
  out["torchscript"] = ts(x).double().tolist()

Refuse.names.discard("kd_jax")
sys.path.insert(0, sys.argv[4])
from kd_jax.torch_models import load_exported
model = load_exported(sys.argv[3])
with torch.no_grad():
  out["state_dict"] = model(x).double().tolist()
out["jax_loaded"] = [m for m in ("jax", "flax") if m in sys.modules]
print(json.dumps(out))
"""


def test_export_cli_pth_and_torchscript_run_without_kd_jax_with_kd_jax_logits(tmp_path):
  config, workdir = _train(tmp_path)
  out, ts = tmp_path / "student.pth", tmp_path / "student.pt"
  assert export_lib.main([workdir, "--out", str(out)]) == 0
  assert export_lib.main([workdir, "--out", str(ts), "--format", "torchscript"]) == 0
  sd = torch.load(out, weights_only=True)["model"]
  model = torch_twins_a.build("resnet8", 100)
  model.load_state_dict(sd, strict=True)
  assert int(sd["bn1.num_batches_tracked"]) == 4  # one forward per step, as torch counts
  # The metadata: the run's resolved normalisation and image size, beside each file.
  import json  # pylint: disable=import-outside-toplevel
  run = json.loads((tmp_path / "run" / "config.json").read_text())
  meta = json.loads((tmp_path / "student.pth.json").read_text())
  assert (meta["model"], meta["num_classes"], meta["image_size"]) == ("resnet8", 100, 32)
  assert meta["mean"] == list(run["mean"]) and meta["std"] == list(run["std"])
  assert len(meta["mean"]) == 3 and meta["format"] == "pth"
  assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left beside them

  x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  variables, _ = loop.ckpt_lib.restore_variables(workdir, "latest")
  got = _eval_logits("resnet8", variables, x)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  model.eval()
  with torch.no_grad():
    want32 = model(xt).double().numpy()
    want64 = model.double()(xt.double()).numpy()
    train_mode = model.train()(xt.double()).numpy()
  # Yardstick: PyTorch's own float32 rounding on this machine (float32 vs float64 forward);
  # kd_jax's and the exported file's float32 forwards may each be a few times that, plus a
  # floor of a few float32 ulps of the largest logit.
  scale = np.abs(want64).max()
  bound = 8 * np.abs(want32 - want64).max() + 8 * np.finfo(np.float32).eps * scale
  np.testing.assert_allclose(got, want64, rtol=0, atol=bound)
  # The same weights in train mode (batch statistics: a defect a bad export would show) are
  # far outside that bound, so the bound can fail.
  assert np.abs(train_mode - want64).max() > 100 * bound

  np.save(tmp_path / "x.npy", x.transpose(0, 3, 1, 2).copy())
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in testenv.subprocess_env(1).items() if k != "PYTHONPATH"}
  res = subprocess.run([sys.executable, "-I", "-c", _LOAD_ELSEWHERE, str(tmp_path / "x.npy"),
                        str(ts), str(out), REPO], capture_output=True, text=True, env=env,
                       cwd=elsewhere, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  loaded = json.loads(res.stdout.strip().splitlines()[-1])
  assert loaded["kd_jax_importable"] is False and loaded["jax_loaded"] == []
  assert loaded["meta_inside"]["mean"] == meta["mean"]
  assert loaded["meta_inside"]["image_size"] == 32
  for fmt in ("torchscript", "state_dict"):
    np.testing.assert_allclose(np.asarray(loaded[fmt]), want64, rtol=0, atol=bound, err_msg=fmt)
    np.testing.assert_allclose(np.asarray(loaded[fmt]), got, rtol=0, atol=2 * bound,
                               err_msg=fmt)

  # The TorchScript module carries the state_dict's own keys.
  assert set(torch.jit.load(str(ts)).state_dict()) == set(sd)

  # --best and --format msgpack; the msgpack holds the best student's exact variables.
  mp = tmp_path / "best.msgpack"
  assert export_lib.main([workdir, "--out", str(mp), "--best", "--format", "msgpack"]) == 0
  with open(mp, "rb") as f:
    restored = flax.serialization.msgpack_restore(f.read())
  best, _ = loop.ckpt_lib.restore_variables(workdir, "best")
  jax.tree.map(np.testing.assert_array_equal, restored, best)


def test_export_bad_arguments_are_one_line_exit_2(tmp_path, capsys):
  env = testenv.subprocess_env(1)
  cases = [[str(tmp_path / "nope"), "--out", str(tmp_path / "x.pth")],   # no such workdir
           [str(tmp_path), "--out", str(tmp_path / "x.pth")],            # not a run workdir
           [str(tmp_path), "--out", "x.pth", "--format", "onnx"],        # bad format
           [str(tmp_path)]]                                              # --out missing
  # The command line itself, once: one line on stderr, exit code 2, the bad value named.
  res = subprocess.run([sys.executable, "-m", "kd_jax.export", *cases[0]], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=300)
  assert res.returncode == 2, res.stderr
  assert res.stderr.count("\n") == 1 and "nope" in res.stderr, res.stderr
  for args in cases:   # every case through main(), as `python -m kd_jax.export` runs it
    try:
      rc = export_lib.main(args)
    except SystemExit as e:   # argparse's usage errors exit from inside parse_args
      rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, (args, err)
    assert err.count("\n") == 1 and "Traceback" not in err, (args, err)


def _init_state_params(config):
  mesh = loop.make_mesh(config)
  trainer = loop.build_trainer(config, mesh, steps_per_epoch=1, total_steps=1, in_memory=True,
                               mean=(0.5,) * 3, std=(0.25,) * 3)
  state = trainer.init_state()
  return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def test_student_init_from_pth_msgpack_and_workdir(tmp_path):
  config = smoke.get_config("ce")
  config.num_devices = 1
  model = twin("resnet8", 100)
  pth = tmp_path / "s.pth"
  torch.save({"model": model.state_dict()}, pth)
  want = models.import_torch_checkpoint(str(pth), "resnet8", 100)
  config.student_init = str(pth)
  got = _init_state_params(config)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # The converter's .msgpack: as a student init and as a teacher.
  mp = tmp_path / "s.msgpack"
  torch_import._main([str(pth), "--model", "resnet8", "--num-classes", "100", "--out", str(mp)])
  config.student_init = str(mp)
  jax.tree.map(np.testing.assert_array_equal, _init_state_params(config), want)
  kd = smoke.get_config("kd")
  kd.teacher, kd.teacher_checkpoint = "resnet8", str(mp)
  _, teacher_vars = loop.load_teacher(kd)
  jax.tree.map(np.testing.assert_array_equal, teacher_vars, want)
  # A workdir: its last state by default, its best with ':best'.
  _, workdir = _train(tmp_path, steps=2)
  for source, which in ((workdir, "latest"), (workdir + ":best", "best")):
    config.student_init = source
    want_w, _ = loop.ckpt_lib.restore_variables(workdir, which)
    jax.tree.map(np.testing.assert_array_equal, _init_state_params(config), want_w)


def test_student_init_errors_name_the_source(tmp_path):
  config = smoke.get_config("ce")
  config.num_classes, config.num_devices = 10, 1
  config.student_init = str(tmp_path / "missing.pth")
  with pytest.raises(errors.ConfigError, match="missing.pth"):
    loop.load_student_init(config)
  pth = tmp_path / "r20.pth"
  torch.save({"model": torch_twins_a.build("resnet20", 10).state_dict()}, pth)
  config.student_init = str(pth)
  with pytest.raises(errors.WeightsFileError, match="r20.pth"):
    loop.load_student_init(config)
  bad = tmp_path / "bad.msgpack"
  bad.write_bytes(b"\x00\x01not msgpack")
  config.student_init = str(bad)
  with pytest.raises(errors.WeightsFileError, match="bad.msgpack"):
    loop.load_student_init(config)
  config.student_init = str(pth) + ":best"
  with pytest.raises(errors.ConfigError, match="is a file"):
    loop.load_student_init(config)


def test_torch_models_cover_the_zoo_and_import_without_torch_or_jax():
  from kd_jax import torch_models  # pylint: disable=import-outside-toplevel
  assert set(torch_models.NAMES) == set(models.names())
  with pytest.raises(ValueError, match="resnt8.*accepted: .*resnet8"):
    torch_models.build("resnt8", 10)
  res = subprocess.run(
      [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
       "import kd_jax.torch_models as t; print(len(t.NAMES), sorted(m for m in ('torch', 'jax', "
       "'flax') if m in sys.modules))", REPO], capture_output=True, text=True, timeout=120)
  assert res.returncode == 0 and res.stdout.split() == [str(len(models.names())), "[]"], res


@flax.struct.dataclass
class _Vars:
  params: dict
  batch_stats: dict


def _sweep_workdir(tmp_path):
  """A sweep workdir as the sweep writes it: config.json with config.sweep, runs/NAME/config.json,
  checkpoints holding both runs' variables stacked on a leading axis."""
  import json  # pylint: disable=import-outside-toplevel
  from kd_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "sweep"
  base = {"student": "resnet8", "num_classes": 10, "aux_head": "", "image_size": 32,
          "dataset": "synthetic", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
  runs = []
  for seed in (0, 1):
    (workdir / "runs" / f"seed={seed}").mkdir(parents=True)
    (workdir / "runs" / f"seed={seed}" / "config.json").write_text(
        json.dumps({**base, "seed": seed, "sweep": ""}))
    runs.append(models.init(models.create("resnet8", 10), jax.random.PRNGKey(seed), 32))
  (workdir / "config.json").write_text(json.dumps({**base, "sweep": "seed=0,1"}))
  stacked = jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *runs)
  ck = ckpt_lib.Checkpointer(str(workdir), keep=1)
  ck.save(6, _Vars(stacked["params"], stacked["batch_stats"]), {"step": 6})
  ck.wait()
  ck.close()
  return str(workdir), runs


def test_export_of_a_sweep_writes_each_run_never_stacked_tensors(tmp_path, capsys, caplog):
  workdir, runs = _sweep_workdir(tmp_path)
  caplog.clear()
  want = [export_lib.to_state_dict(jax.tree.map(np.asarray, r), "resnet8") for r in runs]
  out = tmp_path / "students"
  assert export_lib.main([workdir, "--out", str(out)]) == 0   # created: every run
  assert sorted(os.listdir(out)) == ["seed=0.pth", "seed=0.pth.json", "seed=1.pth",
                                     "seed=1.pth.json"]
  for i in (0, 1):
    sd = torch.load(out / f"seed={i}.pth", weights_only=True)["model"]
    assert tuple(sd["conv1.weight"].shape) == (16, 3, 3, 3)
    for k, v in want[i].items():
      np.testing.assert_array_equal(sd[k].numpy(), v, err_msg=k)
  one = tmp_path / "one.pth"
  assert export_lib.main([workdir, "--out", str(one), "--run", "seed=1"]) == 0
  sd = torch.load(one, weights_only=True)["model"]
  np.testing.assert_array_equal(sd["fc.weight"].numpy(), want[1]["fc.weight"])
  # Reading a workdir's checkpoints (as an export or a teacher does) logs no Orbax warning.
  assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.records
  assert not np.array_equal(want[0]["fc.weight"], want[1]["fc.weight"])
  capsys.readouterr()
  for args, needle in (([workdir, "--out", str(one)], "is a file; a sweep exports one file per run"),
                       ([workdir, "--out", str(one), "--run", "seed=7"],
                        "'seed=7' is not a run of this sweep; accepted: seed=0, seed=1"),
                       ([workdir, "--out", str(out), "--best"], "keeps no best model"),
                       ([str(tmp_path / "nope"), "--out", str(one)], "does not exist"),
                       ([os.path.join(workdir, "runs", "seed=0"), "--out", str(one), "--run",
                         "seed=0"], "is not a sweep workdir"),
                       ([workdir, "--out", str(tmp_path / "no" / "x.pth"), "--run", "seed=0"],
                        "does not exist")):
    assert export_lib.main(args) == 2, args
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, (args, err)


def test_export_is_atomic_and_out_may_be_a_directory(tmp_path, monkeypatch, capsys):
  workdir, runs = _sweep_workdir(tmp_path)
  target = tmp_path / "s.pth"
  assert export_lib.main([workdir, "--out", str(target), "--run", "seed=0"]) == 0
  before = target.read_bytes()

  def killed(obj, path):  # a write interrupted midway
    with open(path, "wb") as f:
      f.write(b"partial")
    raise KeyboardInterrupt

  monkeypatch.setattr(torch, "save", killed)
  with pytest.raises(KeyboardInterrupt):
    export_lib.main([workdir, "--out", str(target), "--run", "seed=1"])
  monkeypatch.undo()
  assert target.read_bytes() == before       # the previous file, whole
  assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []
  # --out an existing directory: the file is named after the run.
  into = tmp_path / "into"
  into.mkdir()
  assert export_lib.main([workdir, "--out", str(into), "--run", "seed=1",
                          "--format", "msgpack"]) == 0
  assert sorted(os.listdir(into)) == ["seed=1.msgpack", "seed=1.msgpack.json"]
  printed = capsys.readouterr().out
  assert "mean=(0.5000, 0.4000, 0.3000) std=(0.2000, 0.2500, 0.3000)" in printed
  assert "32x32" in printed


def test_torchscript_of_a_dhkd_student_returns_its_main_logits(tmp_path):
  """The traced module leaves the auxiliary head out; its logits are kd_jax's main head's."""
  model = models.create("resnet8", 10, aux_head="linear")
  variables = jax.tree.map(np.asarray, models.init(model, jax.random.PRNGKey(3), 32))
  config = {"student": "resnet8", "num_classes": 10, "aux_head": "linear", "image_size": 32,
            "mean": [0.5] * 3, "std": [0.25] * 3, "dataset": "synthetic"}
  out = str(tmp_path / "dhkd.pt")
  meta = export_lib.write_variables(variables, config, out, fmt="torchscript", step=3)
  assert meta["outputs"] == "logits [N, num_classes]" and meta["aux_head"] == "linear"
  ts = torch.jit.load(out)
  keys = set(export_lib.to_state_dict(variables, "resnet8", num_batches_tracked=3))
  assert set(ts.state_dict()) == {k for k in keys if not k.startswith("fc2.")}
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  got = _eval_logits_n("resnet8", 10, variables, x, aux="linear")
  twin64 = torch_twins_a.build("resnet8", 10, "linear")
  twin64.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in export_lib.to_state_dict(
      variables, "resnet8", num_batches_tracked=3).items()}, strict=True)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    ts_out = ts(xt).double().numpy()
    want32 = twin64.eval()(xt)[0].double().numpy()
    want64 = twin64.double()(xt.double())[0].numpy()
  # Yardstick as above: PyTorch's float32-vs-float64 deviation on this input, times 8, plus a
  # floor of 8 float32 ulps of the largest logit.
  bound = (8 * np.abs(want32 - want64).max()
           + 8 * np.finfo(np.float32).eps * np.abs(want64).max())
  np.testing.assert_allclose(ts_out, want64, rtol=0, atol=bound)
  np.testing.assert_allclose(got, want64, rtol=0, atol=bound)
