"""Fault injection: bad teachers, non-finite steps, damaged checkpoints, unwritable workdirs.

Each test injects one fault and asserts the message and that nothing was lost.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import testenv  # pylint: disable=g-import-not-at-top

from kd_jax import errors
from kd_jax import methods
from kd_jax import models
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import loop
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import smoke  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny(method="kd", steps=8, **overrides):
  config = smoke.get_config(method)
  config.train_examples = 128
  config.eval_examples = 32
  config.num_train_steps = steps
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.steps_per_dispatch = 2
  config.eval_batch_size = 16
  config.num_devices = 1
  for k, v in overrides.items():
    node = config
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return config


def saved_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def restore_params(workdir, step):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return out["state"]


# --- Numerical faults --------------------------------------------------------------------


def _step_spec(config):
  mesh = loop.make_mesh(config)
  student = models.create(config.student, config.num_classes)
  teacher = models.create(config.teacher, config.num_classes)
  schedule = state_lib.learning_rate_schedule(config, 8, 8)
  tx = state_lib.make_optimizer(config)
  loss = methods.LossSpec.from_config(config)
  spec = step_lib.StepSpec(student=student, teacher=teacher, tx=tx, schedule=schedule,
                           loss=loss, steps_per_epoch=8, batch_size=4, seed=0, in_memory=False,
                           mean=(0.5,) * 3, std=(0.25,) * 3, max_bad_steps=3, mesh=mesh)
  x = jnp.zeros((1, 32, 32, 3))
  sv = student.init(jax.random.PRNGKey(0), x)
  tv = teacher.init(jax.random.PRNGKey(1), x)
  state = state_lib.create_state(sv["params"], sv["batch_stats"], tx, jax.random.PRNGKey(2),
                                 step_lib.metric_names(loss))
  return spec, state, tv


def test_non_finite_step_is_skipped_and_counted():
  spec, state, teacher_vars = _step_spec(tiny())
  fn = step_lib.make_train_fn(spec, 1)
  rng = np.random.default_rng(0)
  good = {"image": rng.normal(size=(1, 4, 32, 32, 3)).astype(np.float32),
          "label": np.array([[1, 2, 3, 4]], np.int32)}
  bad = {"image": good["image"].copy(), "label": good["label"]}
  bad["image"][0, 1, 3, 3, 0] = np.nan
  params_before = jax.device_get(state.params)
  state = fn(state, teacher_vars, bad)
  assert int(state.step) == 1 and int(state.skipped) == 1 and int(state.bad_streak) == 1
  assert int(state.metric_count) == 0
  jax.tree.map(np.testing.assert_array_equal, params_before, jax.device_get(state.params))
  state = fn(state, teacher_vars, good)
  assert int(state.step) == 2 and int(state.skipped) == 1 and int(state.bad_streak) == 0
  assert int(state.metric_count) == 1
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), params_before,
                         jax.device_get(state.params))
  assert any(jax.tree.leaves(changed))


@pytest.mark.slow
def test_consecutive_bad_steps_stop_the_run_naming_the_last_good_checkpoint(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  # 8 steps per epoch; after epoch 1 the LR is multiplied by 1e30 and the weights blow up.
  config = tiny("ce", steps=40, lr_milestones=(1,), lr_decay=1e30, max_bad_steps=3)
  with pytest.raises(errors.TrainingError) as e:
    loop.train_and_evaluate(config, workdir)
  msg = str(e.value)
  assert "consecutive non-finite training steps" in msg
  steps = saved_steps(workdir)
  assert steps and max(steps) <= 8, steps  # nothing written during the streak is kept
  assert f"last good checkpoint is step {max(steps)}" in msg
  assert os.path.join(workdir, "checkpoints", str(max(steps))) in msg
  assert "--workdir" in msg and "allow_changed=learning_rate" in msg
  for s in steps:
    restored = restore_params(workdir, s)
    for leaf in jax.tree.leaves(restored["params"]):
      assert np.all(np.isfinite(leaf)), f"non-finite state saved at step {s}"
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert max(r.get("skipped_steps", 0) for r in records) >= 3
  # A window whose steps were all skipped logs no train/loss (never a fake 0) and the
  # progress line shows the skipped count.
  all_skipped = [r for r in records if r["step"] > 8 and r.get("skipped_steps", 0) >= 2]
  assert all_skipped and all("train/loss" not in r for r in all_skipped)
  out = capsys.readouterr()
  assert "skipped 3 non-finite steps so far" in out.out or "skipped 4 non-finite" in out.out
  assert "train/loss 0 " not in out.out
  assert "no checkpoint at step" in out.err


def test_checkpointer_refuses_non_finite_state(tmp_path):
  spec, state, _ = _step_spec(tiny())
  del spec
  state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  with pytest.raises(errors.CheckpointError, match="non-finite"):
    ck.save(1, state, {})
  ck.wait()
  assert not ck.latest.all_steps()


# --- Checkpoint faults -------------------------------------------------------------------


@pytest.mark.slow
def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny("kd", steps=6), workdir)
  steps = saved_steps(workdir)
  assert steps[-2:] == [4, 6]
  # Damage every file of the newest checkpoint.
  for path in glob.glob(os.path.join(workdir, "checkpoints", "6", "**"), recursive=True):
    if os.path.isfile(path):
      with open(path, "wb") as f:
        f.write(b"\x00garbage")
  result = loop.train_and_evaluate(tiny("kd", steps=8, allow_changed="num_train_steps"),
                                   workdir)
  captured = capsys.readouterr()
  assert "step 6" in captured.err and "unreadable" in captured.err
  assert "Resuming from step 4" in captured.out
  assert result.step == 8
  # The damaged step was moved aside (kept for inspection) and written afresh, not kept.
  assert len(glob.glob(os.path.join(workdir, "unreadable_checkpoints", "6-*"))) == 1
  assert 6 in saved_steps(workdir)
  restored = restore_params(workdir, 6)
  assert int(restored["step"]) == 6


@pytest.mark.slow
def test_interrupted_save_leaves_no_partial_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny("kd", steps=4), workdir)
  # What a SIGKILL in the middle of writing step 6 leaves behind: Orbax's temporary dir.
  tmp_dir = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp-1234")
  shutil.copytree(os.path.join(workdir, "checkpoints", "4"), tmp_dir)
  result = loop.train_and_evaluate(tiny("kd", steps=6, allow_changed="num_train_steps"),
                                   workdir)
  assert result.step == 6
  assert not os.path.exists(tmp_dir)
  assert saved_steps(workdir)[-1] == 6


def test_unwritable_workdir_fails_at_start(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(errors.WorkdirError, match="run cannot be written .*errno 20 ENOTDIR"):
    loop.train_and_evaluate(tiny("kd"), str(blocker / "run"))
  assert blocker.read_text() == "not a directory"


# --- Teacher loading ---------------------------------------------------------------------


def test_missing_teacher_file_is_named(tmp_path):
  missing = str(tmp_path / "nope.pth")
  with pytest.raises(errors.TeacherError, match="nope.pth"):
    loop.train_and_evaluate(tiny("kd", teacher_checkpoint=missing), str(tmp_path / "run"))


def test_teacher_run_with_other_class_count_is_rejected(tmp_path):
  teacher_dir = str(tmp_path / "teacher")
  loop.train_and_evaluate(tiny("teacher", steps=2, student="resnet8"), teacher_dir)
  config = tiny("kd", teacher_checkpoint=teacher_dir)
  loop.train_and_evaluate(config, str(tmp_path / "ok"))  # same class count: loads
  wrong = tiny("kd", teacher_checkpoint=teacher_dir, teacher="resnet20")
  with pytest.raises(errors.TeacherError, match="configured teacher") as info:
    loop.train_and_evaluate(wrong, str(tmp_path / "wrong_arch"))
  # The message names the model that workdir trained (its config.json), not pytree paths.
  assert (f"config.teacher_checkpoint={teacher_dir!r} is a kd_jax workdir that trained a "
          f"resnet8 with 100 classes (its config.json), but the configured teacher is a "
          f"resnet20 with 100 classes; set --config.teacher=resnet8") in str(info.value)
  assert "['params']" not in str(info.value)


def test_teacher_pth_of_wrong_architecture_and_truncated_file(tmp_path):
  torch = pytest.importorskip("torch")
  import torch_twins_a  # pylint: disable=g-import-not-at-top
  # A resnet20 file offered as a resnet8 teacher: the error names the file and a key.
  good = str(tmp_path / "resnet20.pth")
  torch.save({"model": torch_twins_a.build("resnet20", 100).state_dict()}, good)
  with pytest.raises(Exception, match="resnet20.pth") as e:
    loop.train_and_evaluate(tiny("kd", teacher_checkpoint=good), str(tmp_path / "a"))
  assert "layer" in str(e.value)
  truncated = str(tmp_path / "cut.pth")
  with open(good, "rb") as src, open(truncated, "wb") as dst:
    dst.write(src.read()[:1000])
  with pytest.raises(Exception, match="cut.pth"):
    loop.train_and_evaluate(tiny("kd", teacher_checkpoint=truncated), str(tmp_path / "b"))
  # Nothing was half-initialised: no run state was written for either attempt.
  for run in ("a", "b"):
    assert not saved_steps(os.path.join(tmp_path, run))


def test_launcher_prints_one_line_for_user_errors(tmp_path):
  env = testenv.subprocess_env(1)
  res = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch.py"),
       "--config=" + os.path.join(REPO, "configs", "smoke.py") + ":kd",
       f"--workdir={tmp_path / 'run'}", f"--config.teacher_checkpoint={tmp_path / 'x.pth'}"],
      capture_output=True, text=True, env=env, timeout=300)
  assert res.returncode == 2
  assert "x.pth" in res.stderr and "Traceback" not in res.stderr


# --- Signals -----------------------------------------------------------------------------


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_sigint_saves_like_sigterm_and_the_relaunch_finishes(tmp_path, monkeypatch, capsys):
  """Ctrl-C in the training loop: the step's checkpoint is saved, the run returns preempted
  with one line naming SIGINT, and the same call resumes to the end, each step logged once."""
  import signal  # pylint: disable=g-import-not-at-top
  from kd_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  write = metrics_lib.MetricWriter.write

  def write_then_interrupt(self, step, scalars):
    write(self, step, scalars)
    if step == 4 and "train/loss" in scalars:
      os.kill(os.getpid(), signal.SIGINT)
  monkeypatch.setattr(metrics_lib.MetricWriter, "write", write_then_interrupt)
  result = loop.train_and_evaluate(tiny("ce", steps=8), workdir)
  assert result.preempted and result.step == 4
  assert saved_steps(workdir)[-1] == 4
  assert "SIGINT received: stopped at step 4" in capsys.readouterr().out
  monkeypatch.setattr(metrics_lib.MetricWriter, "write", write)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
  result = loop.train_and_evaluate(tiny("ce", steps=8), workdir)
  assert not result.preempted and result.step == 8
  logged = [r["step"] for r in _metrics(workdir) if "train/loss" in r]
  assert logged == [2, 4, 6, 8]


def test_second_sigint_exits_at_once_with_one_line():
  code = ("import os, signal, time\n"
          "from kd_jax.train import loop\n"
          "with loop._Preemption() as p:\n"
          "  os.kill(os.getpid(), signal.SIGINT)\n"
          "  assert p.requested and p.signal_name == 'SIGINT'\n"
          "  os.kill(os.getpid(), signal.SIGINT)\n"
          "  time.sleep(30)\n")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=120, env=testenv.subprocess_env(1))
  assert res.returncode == errors.EXIT_INTERRUPTED == 130, res.stderr
  assert res.stderr.strip().splitlines() == [
      "second Ctrl-C: stopped at once; the checkpoints saved before are intact (run the same "
      "command again to resume from the newest)"]


def test_signal_before_the_loop_is_one_line_and_the_preempted_exit_code(tmp_path):
  """SIGTERM while the run sets up (here: while the teacher table is built, before the first
  step): one line, exit code 75, no checkpoint, the lock released, the table's finished views
  kept for the relaunch."""
  import signal  # pylint: disable=g-import-not-at-top
  workdir, cache = tmp_path / "run", tmp_path / "cache"
  proc = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "launch.py"),
       "--config=" + os.path.join(REPO, "configs", "smoke.py") + ":kd", f"--workdir={workdir}",
       f"--config.teacher_cache={cache}"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=testenv.subprocess_env(1, PYTHONUNBUFFERED="1"))
  for line in proc.stdout:
    if line.startswith("teacher table: about"):   # printed after its second chunk
      break
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == errors.EXIT_PREEMPTED == 75, err
  assert err.strip().splitlines() == [
      "SIGTERM received before the training loop: stopped, nothing half written; run the "
      "same command again to resume"], err
  assert "compiling the train step" not in out
  assert not os.path.exists(workdir / "lock")
  assert not (workdir / "checkpoints").is_dir() or not [
      d for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  (partial,) = os.listdir(cache)
  assert partial.endswith(".partial") and os.path.exists(cache / partial / "fields.json")


# --- Files that are not checkpoints; the importer's command line ---------------------------


def test_a_pth_that_is_not_a_checkpoint_is_one_line_saying_so(tmp_path):
  torch = pytest.importorskip("torch")
  import pickle  # pylint: disable=g-import-not-at-top
  from kd_jax.models import torch_import  # pylint: disable=g-import-not-at-top
  good = tmp_path / "good.pth"
  torch.save({"model": {"w": torch.zeros(3)}}, good)
  cases = {"random.pth": (np.random.default_rng(0).bytes(2000), "is not a PyTorch checkpoint"),
           "empty.pth": (b"", "(none: it is empty)"),
           "cut.pth": (good.read_bytes()[:300], "truncated or corrupt"),
           "pickled.pth": (pickle.dumps({"a": 1}, protocol=4), "not a torch.save file, or it "
                                                               "is corrupt")}
  for name, (content, needle) in cases.items():
    (tmp_path / name).write_bytes(content)
    with pytest.raises(errors.WeightsFileError) as info:
      torch_import.load_torch_state_dict(str(tmp_path / name))
    message = str(info.value)
    assert needle in message and name in message, message
    assert "\n" not in message and "file an issue" not in message and (
        "weights_only=False" not in message), message


def test_torch_import_prints_the_files_sha256_and_parameter_count_without_out(tmp_path,
                                                                             capsys):
  torch = pytest.importorskip("torch")
  import hashlib  # pylint: disable=g-import-not-at-top
  import torch_twins_a  # pylint: disable=g-import-not-at-top
  net = torch_twins_a.build("resnet8", 10)
  path = tmp_path / "r8.pth"
  torch.save({"model": net.state_dict()}, path)
  (tmp_path / "junk.pth").write_bytes(b"junk")
  cmd = [sys.executable, "-m", "kd_jax.models.torch_import", str(path), "--model", "resnet8",
         "--num-classes", "10"]
  env = testenv.subprocess_env(1)
  res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert res.returncode == 0, res.stderr
  n = sum(p.numel() for p in net.parameters())
  assert res.stdout.strip() == (f"resnet8: {n:,} params from {path} (sha256 "
                                f"{hashlib.sha256(path.read_bytes()).hexdigest()})")
  assert not list(tmp_path.glob("*.msgpack"))
  from kd_jax.models import torch_import  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    torch_import._main([str(tmp_path / "junk.pth")] + cmd[4:])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "is not a PyTorch checkpoint" in err


# --- Run identity by content ----------------------------------------------------------------


def _write_msgpack(path, variables):
  import flax  # pylint: disable=g-import-not-at-top
  with open(path, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(variables))


def test_replaced_teacher_file_and_added_image_are_refused_on_resume(tmp_path):
  """One run on an image folder with a teacher file; then the file replaced in place with
  other weights, and (the file put back) one image added: each resume is refused in one line
  naming the old and new fingerprint and the file or folder, and nothing is rewritten."""
  from test_data_sources import _write_folder  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "folder")
  _write_folder(root, {"train": {f"c{i}": 2 for i in range(4)},
                       "test": {f"c{i}": 1 for i in range(4)}}, size=(32, 32))
  teacher_file = str(tmp_path / "teacher.msgpack")
  _, first = loop.load_teacher(tiny("kd", num_classes=4, teacher_checkpoint="random:0"))
  _, other = loop.load_teacher(tiny("kd", num_classes=4, teacher_checkpoint="random:1"))
  _write_msgpack(teacher_file, first)
  config = dict(dataset=f"imagefolder:{root}", train_examples=0, eval_examples=0,
                batch_size=4, eval_batch_size=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                teacher_checkpoint=teacher_file)
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny("kd", steps=2, **config), workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    recorded = f.read()
  old = json.loads(recorded)["teacher_fingerprint"]
  assert old == loop.weights_fingerprint(first, teacher_file)
  assert old.startswith("sha256:") and old.endswith(f"of the weights read from {teacher_file}")

  _write_msgpack(teacher_file, other)             # same path, other weights
  with pytest.raises(errors.ConfigError) as info:
    loop.train_and_evaluate(tiny("kd", steps=2, **config), workdir)
  message = str(info.value)
  new = loop.weights_fingerprint(other, teacher_file)
  assert f"teacher_fingerprint {old!r} -> {new!r}" in message and old != new
  assert "\n" not in message and "--config.allow_changed=teacher_fingerprint" in message
  assert "data_fingerprint" not in message
  result = loop.train_and_evaluate(tiny("kd", steps=2, allow_changed="teacher_fingerprint",
                                        **config), workdir)
  assert result.already_finished                  # accepted when named

  _write_msgpack(teacher_file, first)
  shutil.copy(os.path.join(root, "train", "c1", "000.png"),
              os.path.join(root, "train", "c0", "new.png"))     # one image added
  with pytest.raises(errors.ConfigError) as info:
    loop.train_and_evaluate(tiny("kd", steps=2, **config), workdir)
  message = str(info.value)
  assert "\n" not in message and "data_fingerprint" in message
  assert "teacher_fingerprint" not in message
  assert "of 12 files (names and sizes)" in message and "of 13 files" in message
  assert os.path.join(root, "{train,test}") in message
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.loads(f.read())["data_fingerprint"] == json.loads(recorded)["data_fingerprint"]
  assert saved_steps(workdir) == [2]              # nothing moved


# --- The teacher table: its directory probed, failed builds leave nothing, resumed builds -----


def _table_kwargs(augment="pad_crop_flip"):
  from kd_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  config = tiny("kd")
  teacher, tvars = loop.load_teacher(config)
  split = data_lib.load_in_memory("synthetic", "train", num_examples=8)
  return dict(teacher=teacher, teacher_vars=tvars, teacher_name="resnet8",
              teacher_dtype="float32", dataset="synthetic", split="train",
              images=split.images, labels=split.labels, augment=augment,
              mean=data_lib.CIFAR_MEAN, std=data_lib.CIFAR_STD, num_classes=100,
              mesh=loop.make_mesh(config))


def test_teacher_cache_directory_is_probed_before_the_build(tmp_path, monkeypatch):
  from kd_jax.train import teacher_cache  # pylint: disable=g-import-not-at-top
  kwargs = _table_kwargs("none")

  def no_build(*args, **kw):
    raise AssertionError("the table was built before the directory was checked")
  monkeypatch.setattr(teacher_cache, "build_table", no_build)
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(errors.ConfigError, match=r"teacher_cache=.*file.* cannot be written "
                     r"\(errno 17 EEXIST"):
    teacher_cache.load_or_build(str(a_file), **kwargs)
  usage = shutil.disk_usage(str(tmp_path))
  monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
  with pytest.raises(errors.ConfigError, match=r"needs 0.00 GiB on disk but only 0.00 GiB is "
                     r"free there") as info:
    teacher_cache.load_or_build(str(tmp_path / "cache"), **kwargs)
  assert "\n" not in str(info.value)


def test_a_failed_table_build_leaves_no_tmp_directory(tmp_path, monkeypatch):
  import errno  # pylint: disable=g-import-not-at-top
  from kd_jax.train import teacher_cache  # pylint: disable=g-import-not-at-top
  kwargs = _table_kwargs("none")
  cache = tmp_path / "cache"

  def disk_full(*args, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(teacher_cache, "_finish", disk_full)
  with pytest.raises(errors.ConfigError, match=r"errno 28 ENOSPC.*nothing is left there"):
    teacher_cache.load_or_build(str(cache), **kwargs)
  assert os.listdir(cache) == []
  monkeypatch.undo()
  broken = jax.tree.map(lambda x: x * np.nan, kwargs["teacher_vars"])
  with pytest.raises(errors.ConfigError, match="non-finite logits"):
    teacher_cache.load_or_build(str(cache), **dict(kwargs, teacher_vars=broken))
  assert os.listdir(cache) == []


def test_table_build_stopped_by_a_signal_resumes_from_its_finished_views(tmp_path,
                                                                         monkeypatch):
  from kd_jax.train import teacher_cache  # pylint: disable=g-import-not-at-top
  kwargs = _table_kwargs()
  whole = teacher_cache.build_table(
      kwargs["teacher"], kwargs["teacher_vars"], kwargs["images"], num_classes=100,
      augment="pad_crop_flip", mean=kwargs["mean"], std=kwargs["std"], mesh=kwargs["mesh"])
  make = teacher_cache._make_view_fn
  calls = []

  def counted(*args, stop_after=None):
    fn = make(*args)

    def run(*a):
      if stop_after is not None and len(calls) == stop_after:
        raise errors.Interrupted(15)   # what the launcher's SIGTERM handler raises
      calls.append(1)
      return fn(*a)
    return run
  monkeypatch.setattr(teacher_cache, "_make_view_fn", lambda *a: counted(*a, stop_after=50))
  cache = tmp_path / "cache"
  with pytest.raises(errors.Interrupted):
    teacher_cache.load_or_build(str(cache), **kwargs)
  (partial,) = os.listdir(cache)
  assert partial.endswith(".partial")
  with open(cache / partial / "views.json") as f:
    assert json.load(f)["views"] == list(range(50))   # one chunk per view: 8 images
  calls.clear()
  monkeypatch.setattr(teacher_cache, "_make_view_fn", counted)
  table, info = teacher_cache.load_or_build(str(cache), **kwargs)
  assert len(calls) == 162 - 50 and info["built"]
  np.testing.assert_array_equal(np.asarray(table), whole)
  assert os.listdir(cache) == [partial[:-len(".partial")]]
  calls.clear()
  _, again = teacher_cache.load_or_build(str(cache), **kwargs)   # complete: reused as is
  assert not again["built"] and not calls
