"""One workdir = one run: the lock, the run-identity check, write probes, failed saves on real
full/immutable filesystems, a removed best model and failed launches."""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import flax
import jax.numpy as jnp
import numpy as np
import pytest

import testenv  # pylint: disable=g-import-not-at-top

from kd_jax import errors
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import loop
from kd_jax.train import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from test_robustness import tiny  # pylint: disable=g-import-not-at-top,wrong-import-position


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


# --- Lock ----------------------------------------------------------------------------------


def test_lock_refuses_a_live_holder_naming_it(tmp_path):
  lock_file = tmp_path / "lock"
  holder = {"host": socket.gethostname(), "pid": os.getppid(), "since": "2026-12-01 10:00:00 UTC"}
  lock_file.write_text(json.dumps(holder))
  with pytest.raises(errors.WorkdirError) as e:
    workdir_lib.WorkdirLock(tmp_path).acquire()
  msg = str(e.value)
  assert f"pid {os.getppid()}" in msg and socket.gethostname() in msg
  assert "2026-12-01 10:00:00 UTC" in msg
  assert json.loads(lock_file.read_text()) == holder  # untouched


def test_lock_of_another_host_is_refused_even_if_the_pid_is_free_here(tmp_path):
  (tmp_path / "lock").write_text(json.dumps({"host": "elsewhere", "pid": _dead_pid(),
                                             "since": "x"}))
  with pytest.raises(errors.WorkdirError, match="on host elsewhere"):
    workdir_lib.WorkdirLock(tmp_path).acquire()


def test_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
  dead = _dead_pid()
  (tmp_path / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead,
                                             "since": "x"}))
  lock = workdir_lib.WorkdirLock(tmp_path).acquire()
  assert lock.took_over["pid"] == dead
  assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / "lock").exists()


def test_lock_is_not_taken_by_other_processes_of_a_multi_host_run(tmp_path):
  lock = workdir_lib.WorkdirLock(tmp_path, enabled=False).acquire()
  assert not (tmp_path / "lock").exists()
  lock.release()


# --- Run identity ----------------------------------------------------------------------------


def test_changed_identity_keys_are_listed_with_old_and_new_values():
  old = {"batch_size": 16, "seed": 0, "loss": {"temperature": 4.0}, "log_every_steps": 10,
         "allow_changed": ""}
  new = {"batch_size": 32, "seed": 1, "loss": {"temperature": 2.0}, "log_every_steps": 50,
         "allow_changed": ""}
  assert workdir_lib.changed_identity_keys(old, new) == [
      ("batch_size", 16, 32), ("loss.temperature", 4.0, 2.0), ("seed", 0, 1)]
  with pytest.raises(errors.ConfigError) as e:
    workdir_lib.check_identity(old, new, workdir="W", step=40)
  msg = str(e.value)
  assert "batch_size 16 -> 32" in msg and "seed 0 -> 1" in msg and "loss.temperature" in msg
  assert "log_every_steps" not in msg  # a non-identity key may change
  assert "--config.allow_changed=batch_size,loss.temperature,seed" in msg
  # The explicit override accepts exactly the keys it names.
  new["allow_changed"] = "batch_size,seed,loss.temperature"
  workdir_lib.check_identity(old, new, workdir="W", step=40)
  new["allow_changed"] = "bogus_key"
  with pytest.raises(errors.ConfigError, match="bogus_key"):
    workdir_lib.check_identity(old, new, workdir="W", step=40)


def test_keys_unknown_to_the_classification_count_as_identity():
  # A key added by another part of kd_jax (not in NON_IDENTITY_KEYS) is refused when changed;
  # a key the old run did not have is not compared.
  assert workdir_lib.changed_identity_keys({"student_init": "a"}, {"student_init": "b"}) == [
      ("student_init", "a", "b")]
  assert workdir_lib.changed_identity_keys({}, {"student_init": "b"}) == []


def test_resume_with_changed_batch_size_is_refused_and_files_untouched(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny("kd", steps=4), workdir)
  before = {n: open(os.path.join(workdir, n)).read() for n in ("config.json", "metrics.jsonl")}
  with pytest.raises(errors.ConfigError, match="batch_size 16 -> 32"):
    loop.train_and_evaluate(tiny("kd", steps=4, batch_size=32), workdir)
  after = {n: open(os.path.join(workdir, n)).read() for n in ("config.json", "metrics.jsonl")}
  assert before == after
  assert not os.path.exists(os.path.join(workdir, "lock"))  # released after the refusal
  # Another student, allowed as a key, does not fit the checkpoint: refused, nothing moved.
  before = _snapshot(workdir)
  with pytest.raises(ckpt_lib.CheckpointMismatchError) as e:
    loop.train_and_evaluate(tiny("kd", steps=4, student="resnet14", allow_changed="student"),
                            workdir)
  assert "student='resnet8'" in str(e.value) and "student='resnet14'" in str(e.value)
  assert _snapshot(workdir) == before            # checkpoints and config.json untouched
  # Cadence keys may change; extending the run needs the documented override.
  with pytest.raises(errors.ConfigError, match="num_train_steps 4 -> 6"):
    loop.train_and_evaluate(tiny("kd", steps=6), workdir)
  result = loop.train_and_evaluate(
      tiny("kd", steps=6, log_every_steps=3, checkpoint_every_steps=3,
           allow_changed="num_train_steps"), workdir)
  assert result.step == 6
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["num_train_steps"] == 6 and saved["log_every_steps"] == 3


# --- Write failures --------------------------------------------------------------------------


def test_probe_names_the_directory_and_errno(tmp_path):
  blocker = tmp_path / "checkpoints"
  blocker.write_text("a file where a directory must be")
  with pytest.raises(errors.WorkdirError) as e:
    workdir_lib.probe_writable([tmp_path / "best", blocker])
  assert str(blocker) in str(e.value) and "errno" in str(e.value)


def test_failed_background_save_stops_the_run_with_path_and_errno(tmp_path, monkeypatch, capfd):
  """A background write that fails (here: disk full while committing step 4) surfaces at the
  next boundary as one CheckpointError naming the directory, step and errno: no hang, no
  traceback on the terminal, the lock released, and the workdir resumes afterwards."""
  import errno  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  real = atomicity.AtomicRenameTemporaryPath.finalize

  async def disk_full(self):
    if self._final_path.parent.name == "checkpoints" and self._final_path.name == "4":
      raise OSError(errno.ENOSPC, "No space left on device")
    return await real(self)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.CheckpointError) as e:
    loop.train_and_evaluate(tiny("kd", steps=8), workdir)
  msg = str(e.value)
  assert os.path.join(workdir, "checkpoints") in msg and "errno 28 ENOSPC" in msg
  assert "checkpoint of step 4" in msg
  assert "Traceback" not in capfd.readouterr().err
  assert not os.path.exists(os.path.join(workdir, "lock"))
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", real)
  assert loop.train_and_evaluate(tiny("kd", steps=8), workdir).step == 8


def test_errors_from_the_async_write_thread_are_reported(tmp_path, monkeypatch):
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  import errno  # pylint: disable=g-import-not-at-top

  def boom():
    raise OSError(errno.EROFS, "Read-only file system")

  monkeypatch.setattr(ck.latest, "check_for_errors", boom)
  with pytest.raises(errors.CheckpointError, match="errno 30 EROFS"):
    ck.check()


# --- The launcher: one line, exit code 2, nothing touched ----------------------------------

_TINY_ARGS = ["--config.train_examples=128", "--config.eval_examples=32",
              "--config.num_train_steps=4", "--config.log_every_steps=2",
              "--config.checkpoint_every_steps=2", "--config.steps_per_dispatch=2",
              "--config.eval_batch_size=16", "--config.num_devices=1"]


def _launch(workdir, *extra):
  env = testenv.subprocess_env(1)
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "launch.py"),
       "--config=" + os.path.join(REPO, "configs", "smoke.py") + ":kd", f"--workdir={workdir}",
       *_TINY_ARGS, *extra], capture_output=True, text=True, env=env, timeout=600)


def _snapshot(workdir):
  out = {}
  for root, _, names in os.walk(workdir):
    for n in names:
      p = os.path.join(root, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, workdir)] = (f.read(), os.stat(p).st_mtime_ns)
  return out


@pytest.mark.slow
def test_launcher_refuses_a_busy_workdir_and_a_changed_seed_or_batch_size(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny("kd", steps=4), workdir)   # the same config as _TINY_ARGS
  before = _snapshot(workdir)
  assert "config.json" in before and any(k.startswith("checkpoints") for k in before)

  res = _launch(workdir, "--config.seed=1", "--config.batch_size=32")
  assert res.returncode == 2, res.stderr[-3000:]
  err = [l for l in res.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "Traceback" not in res.stderr
  assert "batch_size 16 -> 32" in err[0] and "seed 0 -> 1" in err[0]
  assert "--workdir" in err[0] and "allow_changed" in err[0]
  assert _snapshot(workdir) == before

  holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": "2026-12-02 05:00:00 UTC"}
  with open(os.path.join(workdir, "lock"), "w") as f:
    json.dump(holder, f)
  before = _snapshot(workdir)
  res = _launch(workdir)
  assert res.returncode == 2, res.stderr[-3000:]
  err = [l for l in res.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "Traceback" not in res.stderr
  assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in err[0]
  assert "2026-12-02 05:00:00 UTC" in err[0]
  assert _snapshot(workdir) == before


# --- Non-local paths ---------------------------------------------------------------------------


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """gs://BUCKET/... through etils.epath, mocked onto tmp_path/gcs/BUCKET/... with an object
  store's limits: no append. The test's working directory is tmp_path/cwd, so a gs:// path
  handed to os.* instead of epath shows up there as a 'gs:' folder."""
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  from etils.epath import testing as epath_testing  # pylint: disable=g-import-not-at-top
  # With TensorFlow installed epath would pick its gfile backend over the mocked one.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  root = tmp_path / "gcs"
  root.mkdir()

  def local(path):
    path = os.fspath(path)
    return str(root / path[len("gs://"):]) if path.startswith("gs://") else path

  def redirect(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def redirect2(fn, path, dst, *args, **kwargs):
    return fn(local(path), local(dst), *args, **kwargs)

  def no_append(fn, path, mode, *args, **kwargs):
    if "a" in mode and os.fspath(path).startswith("gs://"):
      raise OSError(f"object stores have no append: open({os.fspath(path)!r}, {mode!r})")
    return fn(local(path), mode, *args, **kwargs)

  mocks = {n: redirect for n in ("exists", "isdir", "listdir", "makedirs", "mkdir", "remove",
                                 "rmtree", "stat", "glob", "walk")}
  mocks.update(open=no_append, rename=redirect2, replace=redirect2)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with epath_testing.mock_epath(**mocks):
    yield root
  assert os.listdir(cwd) == []  # nothing went to os.* as a relative 'gs:' path


def test_lock_probe_and_config_json_work_on_a_gs_workdir(gcs):
  from etils import epath  # pylint: disable=g-import-not-at-top
  workdir = "gs://bucket/run"
  workdir_lib.probe_writable([epath.Path(workdir) / "checkpoints"])
  assert (gcs / "bucket" / "run" / "checkpoints").is_dir()
  lock = workdir_lib.WorkdirLock(workdir).acquire()
  assert json.loads((gcs / "bucket" / "run" / "lock").read_text())["pid"] == os.getpid()
  with pytest.raises(errors.WorkdirError, match="in use by pid"):
    workdir_lib.WorkdirLock(workdir).acquire()
  lock.release()
  assert not (gcs / "bucket" / "run" / "lock").exists()
  workdir_lib.write_config_json(workdir, {"seed": 3})
  assert json.loads((gcs / "bucket" / "run" / "config.json").read_text()) == {"seed": 3}


def test_metrics_and_tensorboard_on_a_gs_workdir_without_append(gcs):
  """metrics.jsonl is rewritten whole (object stores cannot append), cut back at a restart,
  and the TensorBoard events are rebuilt from it, like on a local disk."""
  from kd_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from kd_jax.train import progress  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  workdir = "gs://bucket/run"
  writer = metrics_lib.MetricWriter(workdir, total_steps=6)
  writer.start(0)
  for step in (2, 4, 6):
    writer.write(step, {"train/loss": 1.0 / step, "eval/top1": 0.1 * step, "epoch": step / 2})
  writer.close()
  # A restart from the checkpoint of step 4: step 6 is dropped, then logged again.
  writer = metrics_lib.MetricWriter(workdir, total_steps=6)
  writer.start(4)
  writer.write(6, {"train/loss": 0.5, "eval/top1": 0.7, "epoch": 3.0})
  writer.close()
  local = gcs / "bucket" / "run"
  records = [json.loads(l) for l in (local / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [2, 4, 6] and records[-1]["eval/top1"] == 0.7
  events = [p for p in (local / "tensorboard").iterdir() if p.name.startswith("events.out")]
  assert len(events) == 1
  acc = event_accumulator.EventAccumulator(str(local / "tensorboard"),
                                           size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  assert [e.step for e in acc.Tensors("eval/top1")] == [2, 4, 6]
  summary = progress.run_summary(workdir)
  assert "best eval top-1  70.00% at epoch 3 (step 6)" in summary
  assert "gs://bucket/run/best" in summary and "gs://bucket/run/metrics.jsonl" in summary


def test_a_whole_run_on_a_gs_workdir(gcs, monkeypatch):
  """train_and_evaluate on gs://bucket/run: every file kd_jax itself writes goes through
  epath. Orbax writes array data through TensorStore, whose gs:// driver needs a real bucket,
  so only the checkpoint directory is mapped to the mocked bucket's local folder here."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  real_path = ckpt_lib._path  # pylint: disable=protected-access
  monkeypatch.setattr(ckpt_lib, "_path", lambda d: real_path(
      str(gcs / os.fspath(d)[len("gs://"):]) if os.fspath(d).startswith("gs://") else d))
  config = tiny("kd", steps=4)
  result = loop.train_and_evaluate(config, "gs://bucket/run")
  assert result.step == 4 and not result.preempted
  local = gcs / "bucket" / "run"
  assert sorted(p.name for p in local.iterdir()) == [
      "best", "checkpoints", "config.json", "metrics.jsonl", "tensorboard"]
  steps = [json.loads(l)["step"] for l in (local / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(steps) and steps[-1] == 4
  assert json.loads((local / "config.json").read_text())["num_train_steps"] == 4
  # Running it again finds the finished run.
  again = loop.train_and_evaluate(tiny("kd", steps=4), "gs://bucket/run")
  assert again.already_finished and again.step == 4
  assert epath.Path("gs://bucket/run/metrics.jsonl").read_text() == (
      local / "metrics.jsonl").read_text()


# --- Storage faults on real filesystems: one line naming path, errno and step ---------------

@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


def _state(n=2 ** 16):   # 256 KiB of float32 parameters that do not compress
  w = np.random.default_rng(0).standard_normal(n).astype(np.float32)
  return _State(params={"w": jnp.asarray(w)}, batch_stats={})


@contextlib.contextmanager
def _privileged(do: list, undo: list, what: str):
  """Runs `do`, yields, then `undo`; the test is skipped (with the reason) where this machine
  refuses `do`."""
  res = subprocess.run(do, capture_output=True, text=True)
  if res.returncode != 0:
    pytest.skip(f"{what} is not permitted here: {res.stderr.strip()[:200]}")
  try:
    yield
  finally:
    subprocess.run(undo, capture_output=True)


@contextlib.contextmanager
def small_filesystem(path, size):
  """A tmpfs of `size` mounted at `path`."""
  path.mkdir(parents=True, exist_ok=True)
  with _privileged(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   ["umount", "-l", str(path)], "mounting a tmpfs"):
    yield path


@contextlib.contextmanager
def immutable(path):
  """`path` made immutable (chattr +i)."""
  with _privileged(["chattr", "+i", str(path)], ["chattr", "-i", str(path)], "chattr +i"):
    yield path


def test_a_full_disk_stops_checkpoint_and_best_saves_in_one_line(tmp_path, monkeypatch):
  from kd_jax.train import storage  # pylint: disable=g-import-not-at-top
  with small_filesystem(tmp_path / "disk", "400k") as disk:
    ck = ckpt_lib.Checkpointer(str(disk / "run"), keep=3)
    ck.save(2, _state(), {"step": 2, "best_step": -1})
    ck.wait()
    # The next one does not fit beside it: refused before Orbax starts writing.
    t = time.time()
    with pytest.raises(errors.CheckpointError) as e:
      ck.save(4, _state(), {"step": 4, "best_step": -1})
    msg = str(e.value)
    assert time.time() - t < 10 and "\n" not in msg
    assert f"checkpoint of step 4 to {disk / 'run' / 'checkpoints'}" in msg
    assert "errno 28 ENOSPC" in msg and "MB free" in msg
    with pytest.raises(errors.CheckpointError, match=r"best model of step 6 .*errno 28 ENOSPC"):
      ck.save_best(6, {"params": {"w": jnp.ones(2 ** 16)}, "batch_stats": {}}, {"step": 6})
    # A write that runs out of space in Orbax's background writer (the free-space check
    # disabled): the same line at the next check, with the errno TensorStore reports.
    monkeypatch.setattr(storage, "check_free_space", lambda *a: None)
    ck.save(4, _state(), {"step": 4, "best_step": -1})
    with pytest.raises(errors.CheckpointError) as e:
      for _ in range(200):
        ck.check()
        time.sleep(0.05)
    assert "checkpoint of step 4" in str(e.value) and "errno 28 ENOSPC" in str(e.value)
    assert ck.latest.all_steps() == [2]   # the complete checkpoint is kept
    ck.close()


def test_metrics_and_tensorboard_on_a_full_disk_name_file_errno_and_step(tmp_path):
  from kd_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  with small_filesystem(tmp_path / "disk", "64k") as disk:
    writer = metrics_lib.MetricWriter(str(disk), total_steps=10 ** 6)
    writer.start(0)
    with pytest.raises(errors.WorkdirError) as e:
      for step in range(1, 10 ** 5):
        writer.write(step, {"train/loss": 1.0, "note": "x" * 200})
    msg = str(e.value)
    assert "errno 28 ENOSPC" in msg and f"of step {step}" in msg and "\n" not in msg
    assert str(disk / "metrics.jsonl") in msg or str(disk / "tensorboard") in msg


def test_immutable_directories_stop_each_writer_in_one_line(tmp_path):
  from kd_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  ck = ckpt_lib.Checkpointer(str(run), keep=3)
  ck.save(2, _state(), {"step": 2, "best_step": -1})
  ck.save_best(2, {"params": {"w": jnp.ones(3)}, "batch_stats": {}}, {"step": 2})
  ck.wait()
  with immutable(run / "checkpoints"):
    with pytest.raises(errors.CheckpointError) as e:
      ck.save(4, _state(), {"step": 4, "best_step": 2})
    assert f"checkpoint of step 4 to {run / 'checkpoints'}" in str(e.value)
    assert "errno 1 EPERM" in str(e.value)
  with immutable(run / "best"):
    with pytest.raises(errors.CheckpointError, match=r"best model of step 6 .*errno 1 EPERM"):
      ck.save_best(6, {"params": {"w": jnp.ones(3)}, "batch_stats": {}}, {"step": 6})
  ck.close()
  writer = metrics_lib.MetricWriter(str(run), total_steps=10)
  writer.start(0)
  writer.write(2, {"train/loss": 1.0})
  with immutable(run / "metrics.jsonl"):
    with pytest.raises(errors.WorkdirError, match=r"metrics of step 4 .*metrics.jsonl.*EPERM"):
      writer.write(4, {"train/loss": 1.0})
  events = [p for p in (run / "tensorboard").iterdir() if p.name.startswith("events.out")]
  assert len(events) == 1
  with immutable(events[0]):
    with pytest.raises(errors.WorkdirError) as e:
      writer.write(6, {"train/loss": 1.0})
    assert f"TensorBoard events of step 6 to {run / 'tensorboard'}" in str(e.value)
    assert "errno 1 EPERM" in str(e.value)
  writer.close()   # nothing left to flush: no error at exit either
  with immutable(run):
    with pytest.raises(errors.WorkdirError, match=r"config .*config.json.*errno 1 EPERM"):
      workdir_lib.write_config_json(run, {"seed": 1})


def test_a_write_failing_in_orbax_background_threads_leaves_none_waiting(tmp_path, monkeypatch):
  """The folder turns immutable after the probe (the probe disabled here): Orbax's writer fails
  in its threads; the error is one line and no writer thread is left waiting for the failed
  step's signals (they would hold the process for Orbax's 300 s barrier timeout at exit)."""
  import threading  # pylint: disable=g-import-not-at-top
  from kd_jax.train import storage  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  ck = ckpt_lib.Checkpointer(str(run), keep=3)
  ck.save(2, _state(), {"step": 2, "best_step": -1})
  ck.wait()
  monkeypatch.setattr(storage, "probe_dir", lambda d: None)
  with immutable(run / "checkpoints"):
    with pytest.raises(errors.CheckpointError, match=r"checkpoint of step 4 .*errno 1 EPERM"):
      ck.save(4, _state(), {"step": 4, "best_step": -1})
      for _ in range(100):
        ck.check()
        time.sleep(0.05)
    deadline = time.time() + 10
    waiting = ["?"]
    while waiting and time.time() < deadline:
      waiting = [t.name for t in threading.enumerate()
                 if type(t).__name__ == "_SignalingThread" and t.is_alive()]
      time.sleep(0.05)
    assert not waiting, waiting
  assert ck.latest.all_steps() == [2]


@pytest.mark.slow
def test_an_immutable_checkpoint_dir_stops_the_launcher_within_seconds_in_one_line(tmp_path):
  """The checkpoints/ folder made immutable while the run trains: the launcher exits 2 within
  30 s of the next save, with one line naming the folder, the errno and the step."""
  workdir = tmp_path / "run"
  env = testenv.subprocess_env(1)
  proc = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "launch.py"),
       "--config=" + os.path.join(REPO, "configs", "smoke.py") + ":kd", f"--workdir={workdir}",
       "--config.train_examples=128", "--config.eval_examples=32",
       "--config.eval_batch_size=16", "--config.num_train_steps=40",
       "--config.checkpoint_every_steps=10", "--config.log_every_steps=5",
       "--config.num_devices=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=env)
  deadline = time.time() + 600
  while not (workdir / "checkpoints" / "10").is_dir():
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.05)
  with immutable(workdir / "checkpoints"):
    t = time.time()
    out, err = proc.communicate(timeout=600)
    took = time.time() - t
    steps = [int(l.split()[1].split("/")[0]) for l in out.splitlines() if l.startswith("step ")]
  assert proc.returncode == 2, err[-3000:]
  assert err.strip().count("\n") == 0 and "Traceback" not in err, err[-3000:]
  assert f"checkpoint of step 20 to {workdir / 'checkpoints'}" in err and "errno 1 EPERM" in err
  assert max(steps) == 20
  assert took < 30 + 10, took   # the save at step 20 is 10 steps (a few seconds) away


# --- Missing best/ and failed launches -----------------------------------------------------


def test_a_removed_best_model_is_one_line_when_asked_for(tmp_path):
  from kd_jax.train import progress  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  ck = ckpt_lib.Checkpointer(str(run), keep=3)
  best = {"params": {"w": jnp.full(3, 7.0)}, "batch_stats": {}}
  ck.save_best(2, best, {"step": 2, "eval_top1": 0.5})
  ck.save(4, _State(params={"w": jnp.ones(3)}, batch_stats={}), {"step": 4, "best_step": 2})
  ck.wait()
  ck.close()
  (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "epoch": 1, "eval/top1": 0.5}) + "\n")
  for which in ("auto", "best"):
    variables, where = ckpt_lib.restore_variables(str(run), which)
    np.testing.assert_array_equal(variables["params"]["w"], np.full(3, 7.0))
    assert where == str(run / "best" / "2")
  assert f"checkpoint: {run / 'best'}" in progress.run_summary(str(run))
  # A best model carries its own checksums: one flipped bit is one line, not other weights.
  damaged = tmp_path / "damaged"
  shutil.copytree(run, damaged)
  ck = ckpt_lib.Checkpointer(str(damaged), keep=3)
  ck.best.delete(2)
  ck.save_best(2, {"params": {"w": _state().params["w"]}, "batch_stats": {}},
               {"step": 2, "eval_top1": 0.5})
  ck.wait()
  ck.close()
  files = [os.path.join(r, n) for r, _, ns in os.walk(damaged / "best" / "2" / "variables")
           for n in ns]
  biggest = max(files, key=os.path.getsize)
  data = bytearray(open(biggest, "rb").read())
  data[len(data) // 2] ^= 1
  open(biggest, "wb").write(data)
  with pytest.raises(errors.CheckpointError, match=r"is damaged: 1 arrays fail their checksum"):
    ckpt_lib.restore_variables(str(damaged), "best")
  shutil.rmtree(run / "best")
  for which in ("auto", "best"):
    with pytest.raises(errors.CheckpointError) as e:
      ckpt_lib.restore_variables(str(run), which)
    msg = str(e.value)
    assert "\n" not in msg and "holds no best model" in msg and f"{run}:latest" in msg
    assert "records one at step 2" in msg
  variables, where = ckpt_lib.restore_variables(str(run), "latest")
  np.testing.assert_array_equal(variables["params"]["w"], np.ones(3))
  summary = progress.run_summary(str(run))
  assert f"checkpoint: missing ({run / 'best'} holds no best model" in summary


def test_a_failed_launch_leaves_no_empty_output_folders(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(errors.TeacherError):
    loop.train_and_evaluate(tiny("kd", teacher_checkpoint=str(tmp_path / "none.pth")),
                            str(workdir))
  # The resolved config is recorded only once the inputs (teacher included) have loaded.
  assert sorted(os.listdir(workdir)) == []
