"""Resume always converges: kills between a best save and its checkpoint, before any
checkpoint, during writes; metrics.jsonl and TensorBoard hold each step once."""
import glob
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testenv  # pylint: disable=g-import-not-at-top

from kd_jax import errors
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from test_robustness import saved_steps, tiny  # pylint: disable=g-import-not-at-top,wrong-import-position


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def steps_with(records, key):
  return [r["step"] for r in records if key in r]


def last_value(records, key):
  return [r for r in records if key in r][-1][key]


def best_steps(workdir):
  d = os.path.join(workdir, "best")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def tensorboard_steps(workdir, tag):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"),
                                           size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return [e.step for e in acc.Tensors(tag)]


def assert_same_run(unbroken, broken):
  a, b = read_metrics(unbroken), read_metrics(broken)
  for key in ("train/loss", "eval/top1", "teacher/top1"):
    assert steps_with(b, key) == steps_with(a, key), key      # each step once, none missing
    assert last_value(b, key) == last_value(a, key), key
  assert [r["step"] for r in b] == [r["step"] for r in a]


def dead_lock(workdir):
  """What a SIGKILL leaves: the lock of a process that no longer exists."""
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  with open(os.path.join(workdir, "lock"), "w") as f:
    json.dump({"host": socket.gethostname(), "pid": proc.pid, "since": "x"}, f)


# 128 examples / batch 16 = 8 steps per epoch: evals (and best saves) at 8 and 16.
def config(**kw):
  return tiny("kd", steps=16, checkpoint_every_steps=4, keep_checkpoints=10, **kw)


@pytest.mark.slow
def test_kill_after_best_save_or_before_any_checkpoint_resumes_to_the_unbroken_run(tmp_path,
                                                                                  capsys):
  """Every case ends with the unbroken run's metrics: a kill between a best save and its
  checkpoint, before any checkpoint, a flipped bit in the newest checkpoint, and a checkpoint
  that passes its checksum but diverges at once after the restore (set aside once)."""
  unbroken = str(tmp_path / "unbroken")
  loop.train_and_evaluate(config(), unbroken)
  assert len(read_metrics(unbroken)) > 0

  # (a) Killed after the best model of step 8 was saved, before checkpoint 8 (a relaunch must
  # not stop on StepAlreadyExistsError): best/ and metrics.jsonl are ahead of the newest
  # checkpoint (4).
  a = str(tmp_path / "a")
  shutil.copytree(unbroken, a)
  for s in saved_steps(a):
    if s > 4:
      shutil.rmtree(os.path.join(a, "checkpoints", str(s)))
  assert best_steps(a) and max(best_steps(a)) > 4
  dead_lock(a)
  result = loop.train_and_evaluate(config(), a)
  assert result.step == 16
  assert_same_run(unbroken, a)
  meta = ckpt_lib.Checkpointer(a, 10).latest_meta()[1]
  assert best_steps(a) == [meta["best_step"]]           # best/ agrees with the checkpoint
  assert tensorboard_steps(a, "train/loss") == steps_with(read_metrics(a), "train/loss")

  # (b) Killed before the first checkpoint, or the user deleted checkpoints/: the run starts
  # from scratch and metrics.jsonl/TensorBoard still hold each step once.
  b = str(tmp_path / "b")
  shutil.copytree(unbroken, b)
  shutil.rmtree(os.path.join(b, "checkpoints"))
  loop.train_and_evaluate(config(), b)
  assert_same_run(unbroken, b)
  assert tensorboard_steps(b, "eval/top1") == steps_with(read_metrics(b), "eval/top1")
  assert tensorboard_steps(b, "teacher/top1") == [0]

  # (c) One bit flipped in the newest checkpoint's largest array file: detected by its
  # checksum, set aside, and the run resumes from the previous checkpoint.
  capsys.readouterr()
  flipped = str(tmp_path / "flipped")
  shutil.copytree(unbroken, flipped)
  flip_one_bit(_largest_file(os.path.join(flipped, "checkpoints", "16", "state")))
  result = loop.train_and_evaluate(config(), flipped)
  err = capsys.readouterr().err
  assert result.step == 16 and not result.already_finished
  damaged = [l for l in err.splitlines() if "is damaged" in l]
  assert len(damaged) == 1 and "step 16" in damaged[0] and "checksum" in damaged[0]
  assert_same_run(unbroken, flipped)

  # (d) Killed before checkpoint 16; checkpoint 12 rewritten (valid checksums) with a classifier
  # whose logits overflow: every step after the restore is non-finite.
  diverging = str(tmp_path / "diverging")
  shutil.copytree(unbroken, diverging)
  shutil.rmtree(os.path.join(diverging, "checkpoints", "16"))
  cfg = config()
  trainer = loop.build_trainer(cfg, loop.make_mesh(cfg), steps_per_epoch=8, total_steps=16,
                               in_memory=True, mean=(0.0,) * 3, std=(1.0,) * 3)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          trainer.init_state())
  ck = ckpt_lib.Checkpointer(diverging, 10)
  state, meta = ck.restore_latest(abstract)
  assert meta["step"] == 12
  params = dict(state.params)
  params["head"] = {**params["head"], "kernel": jnp.full_like(params["head"]["kernel"], 3e38)}
  ck.latest.delete(12)
  ck.save(12, state.replace(params=params), {k: v for k, v in meta.items() if k != "checksums"})
  ck.wait()
  ck.close()
  dead_lock(diverging)
  result = loop.train_and_evaluate(config(max_bad_steps=2), diverging)
  err = capsys.readouterr().err
  assert result.step == 16
  assert "right after resuming from checkpoint 12" in err and "step 8" in err
  assert len(glob.glob(os.path.join(diverging, "unreadable_checkpoints", "12-diverged-*"))) == 1
  assert_same_run(unbroken, diverging)


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


def test_saving_an_existing_step_is_a_no_op_when_identical_and_a_replacement_otherwise(
    tmp_path):
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
  ones = _State(params={"w": jnp.ones(3)}, batch_stats={})
  twos = _State(params={"w": 2 * jnp.ones(3)}, batch_stats={})
  ck.save(2, ones, {"step": 2, "best_step": -1})
  ck.wait()
  ck.save(2, twos, {"step": 2, "best_step": -1})   # same step and complete: kept as is
  ck.wait()
  abstract = _State(params={"w": jnp.zeros(3)}, batch_stats={})
  state, _ = ck.restore_latest(abstract)
  np.testing.assert_array_equal(state.params["w"], np.ones(3))
  # A damaged step (its meta unreadable) is replaced, never kept.
  meta_dir = os.path.join(str(tmp_path), "checkpoints", "2", "meta")
  for name in os.listdir(meta_dir):
    with open(os.path.join(meta_dir, name), "w") as f:
      f.write("\x00garbage")
  ck.latest.reload()
  ck.save(2, twos, {"step": 2, "best_step": -1})
  ck.wait()
  state, meta = ck.restore_latest(abstract)
  np.testing.assert_array_equal(state.params["w"], 2 * np.ones(3))
  assert meta["step"] == 2
  ck.close()


# --- Kill anywhere (subprocesses) ------------------------------------------------------------

# 256 examples / batch 16 = 16 steps per epoch: eval + best save at 16, 32, 48; checkpoints
# every 10 steps, so a best model is always saved before the checkpoint that records it.
_ARGS = ["--config.train_examples=256", "--config.eval_examples=40",
         "--config.num_train_steps=48", "--config.checkpoint_every_steps=10",
         "--config.log_every_steps=4", "--config.steps_per_dispatch=2",
         "--config.keep_checkpoints=3", "--config.num_devices=1"]


def _popen(workdir):
  cmd = [sys.executable, os.path.join(REPO, "launch.py"),
         "--config=" + os.path.join(REPO, "configs", "smoke.py") + ":kd",
         f"--workdir={workdir}", *_ARGS]
  env = testenv.subprocess_env(1, PYTHONUNBUFFERED="1")
  return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)


def _lines(proc):
  q = queue.Queue()

  def pump():
    for line in proc.stdout:
      q.put(line)
    q.put(None)

  threading.Thread(target=pump, daemon=True).start()
  return q


def _kill_when(workdir, trigger, timeout=600):
  """Launches the run and SIGKILLs it at the moment `trigger(line, workdir)` is first true
  (checked on each output line and every 5 ms); returns the output, or None if the run ended."""
  proc = _popen(workdir)
  q = _lines(proc)
  out = []
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      line = q.get(timeout=0.005)
    except queue.Empty:
      line = ""
    if line is None:
      proc.wait()
      return None
    out.append(line)
    if trigger(line, workdir):
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return "".join(out)
  proc.kill()
  raise AssertionError("".join(out)[-3000:])


def _after_compile(line, workdir):
  return line.startswith("step ")


def _right_after_best_save(line, workdir):
  del line
  return any(s >= 16 for s in best_steps(workdir))


def _during_checkpoint_write(line, workdir):
  del line
  d = os.path.join(workdir, "checkpoints")
  return os.path.isdir(d) and any("tmp" in n for n in os.listdir(d))


def _mid_epoch(line, workdir):
  del workdir
  if not line.startswith("step "):
    return False
  step = int(line.split()[1].split("/")[0])
  return step > 36 and step % 16


@pytest.mark.slow
def test_kill_anywhere_then_relaunch_until_done_matches_the_unbroken_run(tmp_path):
  unbroken = str(tmp_path / "unbroken")
  proc = _popen(unbroken)
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-3000:]
  broken = str(tmp_path / "broken")
  killed = []
  for trigger in (_after_compile, _right_after_best_save, _during_checkpoint_write, _mid_epoch):
    if _kill_when(broken, trigger) is not None:
      killed.append(trigger.__name__)
  assert len(killed) >= 3, killed   # a kill can miss only if the run finished first
  for _ in range(3):  # relaunch the same command until it exits 0
    proc = _popen(broken)
    out, _ = proc.communicate(timeout=900)
    if proc.returncode == 0:
      break
  assert proc.returncode == 0, out[-3000:]
  assert "Traceback" not in out
  assert_same_run(unbroken, broken)
  assert not os.path.exists(os.path.join(broken, "lock"))


# --- Several hosts -----------------------------------------------------------------------------


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_hosts(workdir, tmp_path, tag, steps):
  """Two launcher processes (one CPU device each) forming one jax.distributed run."""
  port = _free_port()
  env = testenv.subprocess_env(1)
  procs = []
  for i in range(2):
    out = open(tmp_path / f"{tag}{i}.out", "w")
    err = open(tmp_path / f"{tag}{i}.err", "w")
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(REPO, "launch.py"),
         "--config=" + os.path.join(REPO, "configs", "smoke.py") + ":kd", f"--workdir={workdir}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
         f"--config.num_train_steps={steps}", "--config.num_devices=0",
         "--config.steps_per_dispatch=1", "--config.log_every_steps=2",
         "--config.checkpoint_every_steps=1000", "--config.train_examples=128",
         "--config.eval_examples=32", "--config.eval_batch_size=16"],
        stdout=out, stderr=err, env=env, cwd=REPO))
  return procs


@pytest.mark.slow
def test_preemption_of_one_host_saves_the_same_step_on_every_host(tmp_path):
  """SIGTERM to one process of a two-process run: JAX's preemption service and Orbax's sync
  point make both stop after the same step, where the one checkpoint is saved; relaunching both
  finishes the run with each step logged once."""
  import re  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  steps = 40
  procs = _launch_hosts(workdir, tmp_path, "a", steps)
  deadline = time.time() + 400
  while time.time() < deadline:
    text = (tmp_path / "a0.out").read_text()
    done = [int(m) for m in re.findall(r"^step (\d+)/", text, re.M)]
    if done and max(done) >= 10 or any(p.poll() is not None for p in procs):
      break
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # only the second host is told
  rcs = [p.wait(timeout=300) for p in procs]
  outs = [(tmp_path / f"a{i}.out").read_text() for i in range(2)]
  errs = [(tmp_path / f"a{i}.err").read_text() for i in range(2)]
  assert rcs == [75, 75], errs[0][-2000:] + errs[1][-2000:]   # preempted, relaunch
  assert "Preempted: run the same command again to resume." in outs[0]
  synced = [set(re.findall(r"Reached preemption sync point, step=(\d+)", e)) for e in errs]
  assert len(synced[0]) == 1 and synced[0] == synced[1], synced
  stopped = int(synced[0].pop())
  assert 10 <= stopped < steps
  assert saved_steps(workdir) == [stopped]   # cadence 1000: only the preemption save
  procs = _launch_hosts(workdir, tmp_path, "b", steps)
  rcs = [p.wait(timeout=600) for p in procs]
  assert rcs == [0, 0], (tmp_path / "b0.err").read_text()[-2000:]
  assert f"Resuming from step {stopped}" in (tmp_path / "b0.out").read_text()
  assert saved_steps(workdir)[-1] == steps
  logged = [r["step"] for r in read_metrics(workdir) if "train/loss" in r]
  assert logged == list(range(2, steps + 1, 2))


# --- Integrity and fit -------------------------------------------------------------------------


_W = np.random.default_rng(0).standard_normal(4096).astype(np.float32)   # incompressible


def _state(scale=1.0):
  return _State(params={"w": scale * jnp.asarray(_W), "b": jnp.ones(3)},
                batch_stats={"m": jnp.zeros(2)})


def _largest_file(directory):
  files = [os.path.join(r, n) for r, _, names in os.walk(directory) for n in names]
  return max(files, key=os.path.getsize)


def flip_one_bit(path, bit=4):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 1 << bit
    f.seek(0)
    f.write(data)


def test_a_flipped_bit_in_the_newest_checkpoint_is_damage_and_the_previous_one_resumes(
    tmp_path, capsys):
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
  ck.save(2, _state(1.0), {"step": 2, "best_step": -1})
  ck.save(4, _state(2.0), {"step": 4, "best_step": -1})
  ck.wait()
  flip_one_bit(_largest_file(os.path.join(tmp_path, "checkpoints", "4", "state")))
  state, meta = ck.restore_latest(_state(0.0))
  err = capsys.readouterr().err
  assert meta["step"] == 2 and ck.restored_step == 2
  np.testing.assert_array_equal(state.params["w"], _W)
  lines = [l for l in err.splitlines() if "step 4" in l]
  assert len(lines) == 1 and "fail their checksum" in lines[0] and "params.w" in lines[0]
  assert [n.split("-")[0] for n in os.listdir(tmp_path / "unreadable_checkpoints")] == ["4"]
  assert ck.latest.all_steps() == [2]
  ck.close()


def test_checksums_name_every_leaf_and_change_with_one_bit():
  tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.ones(2), np.int32(3)]}
  sums = ckpt_lib.checksums(tree)
  assert sorted(sums) == ["a", "b.0", "b.1"]
  flipped = {"a": tree["a"].copy(), "b": tree["b"]}
  flipped["a"].view(np.uint32)[1, 2] ^= 1
  assert ckpt_lib.failed_checksums(flipped, sums) == ["a"]
  # The same bytes under another shape or dtype are another array.
  assert ckpt_lib.failed_checksums({**tree, "a": tree["a"].reshape(3, 2)}, sums) == ["a"]
  assert ckpt_lib.failed_checksums({**tree, "a": tree["a"].view(np.int32)}, sums) == ["a"]
  assert ckpt_lib.failed_checksums(tree, None) == []   # a checkpoint without checksums


def test_a_checkpoint_of_another_model_is_refused_in_one_line_and_left_in_place(tmp_path):
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
  ck.save(2, _state(), {"step": 2, "best_step": -1, "config": {"student": "resnet8"}})
  ck.wait()
  ck.run_config = {"student": "resnet14"}
  wider = _State(params={"w": jnp.zeros(4096), "b": jnp.ones(5)}, batch_stats={"m": jnp.zeros(2)})
  other = _State(params={"w": jnp.zeros(4096), "c": jnp.ones(3)}, batch_stats={"m": jnp.zeros(2)})
  for abstract, detail in ((wider, "params.b: stored (3,), wanted (5,)"),
                           (other, "absent (e.g. params.c)")):
    with pytest.raises(ckpt_lib.CheckpointMismatchError) as e:
      ck.restore_latest(abstract)
    msg = str(e.value)
    assert "\n" not in msg and detail in msg, msg
    assert "student='resnet8'" in msg and "student='resnet14'" in msg
    assert isinstance(e.value, errors.ConfigError)       # a user error: exit code 2
  assert ck.latest.all_steps() == [2] and not os.path.exists(tmp_path / "unreadable_checkpoints")
  state, _ = ck.restore_latest(_state(0.0))              # the fitting config resumes it
  np.testing.assert_array_equal(state.params["b"], np.ones(3))
  ck.close()


def test_divergence_right_after_a_restore_falls_back_once_then_blames_the_settings(tmp_path):
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep=5)
  for s in (2, 4, 6):
    ck.save(s, _state(s), {"step": s, "best_step": -1})
  ck.wait()
  # A streak that starts long after the restored step is the settings' fault.
  ck.restored_step = 2
  e = ck.divergence_error(bad=3, step=2 + ckpt_lib.FALLBACK_WINDOW_STEPS + 3, max_bad_steps=3)
  assert type(e) is errors.TrainingError and ck.latest.all_steps() == [2, 4, 6]
  # Right after restoring 6: 6 is set aside and the run goes once more from 4.
  ck.restored_step = 6
  e = ck.divergence_error(bad=3, step=9, max_bad_steps=3)
  assert isinstance(e, ckpt_lib.DivergedAfterRestore)
  assert "step 7" in str(e) and "checkpoint 6" in str(e) and "step 4" in str(e)
  assert ck.latest.all_steps() == [2, 4]
  assert [n.split("-")[:2] for n in os.listdir(tmp_path / "unreadable_checkpoints")] == [
      ["6", "diverged"]]
  # Only once: diverging again right after 4 names the settings and keeps 4.
  ck.restored_step = 4
  e = ck.divergence_error(bad=3, step=7, max_bad_steps=3)
  assert type(e) is errors.TrainingError and "last good checkpoint is step 4" in str(e)
  assert ck.latest.all_steps() == [2, 4]
  calls = []

  def run():
    calls.append(1)
    if len(calls) == 1:
      raise ckpt_lib.DivergedAfterRestore("x")
    return "done"

  assert ckpt_lib.run_with_fallback(run) == "done" and len(calls) == 2
  ck.close()


# --- metrics.jsonl and TensorBoard: each rebuilt from the other ------------------------------


def _log(workdir, steps):
  from kd_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  writer = metrics_lib.MetricWriter(workdir, total_steps=max(steps))
  writer.start(0)
  writer.write(0, {"teacher/top1": 0.25, "teacher/top5": 0.5})
  for s in steps:
    writer.write(s, {"train/loss": 1.0 / s, "epoch": s / 4, "skipped_steps": 0})
    if s % 4 == 0:
      writer.write(s, {"epoch": s / 4, "eval/top1": 0.1 * s / 3, "elapsed_s": 0.7 * s})
  writer.close()


def _restart(workdir, step):
  from kd_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  writer = metrics_lib.MetricWriter(workdir, total_steps=99)
  writer.start(step)
  writer.close()


def _tb_steps(workdir, tag):
  """The steps of `tag` in the event files, read without TensorFlow (tensorboard's protos)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from kd_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  records = metrics_lib.read_tensorboard(epath.Path(workdir) / "tensorboard")
  return [r["step"] for r in records if tag in r]


def _as_float32(records):
  return [{k: (v if k == "step" else float(np.float32(v))) for k, v in r.items()}
          for r in records]


def test_a_lost_metrics_file_is_rebuilt_from_tensorboard_and_back(tmp_path, capsys):
  workdir = str(tmp_path)
  _log(workdir, [2, 4, 6, 8, 10, 12])
  full = read_metrics(workdir)
  upto8 = [r for r in full if r["step"] <= 8]
  # metrics.jsonl deleted: rebuilt from the events, line by line, at float32 precision.
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  _restart(workdir, 8)
  rebuilt = read_metrics(workdir)
  assert rebuilt == _as_float32(upto8)
  out = capsys.readouterr().err
  assert "metrics.jsonl lacked 7 records of steps 0..8" in out and "TensorBoard" in out
  assert _tb_steps(workdir, "eval/top1") == [4, 8]
  # metrics.jsonl cut short (steps 0..4 left): only the lost steps come from the events.
  _log(workdir, [2, 4, 6, 8, 10, 12])
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in full if r["step"] <= 4)
  _restart(workdir, 8)
  rebuilt = read_metrics(workdir)
  assert rebuilt[:4] == [r for r in full if r["step"] <= 4]       # kept exactly
  assert rebuilt[4:] == _as_float32([r for r in full if 4 < r["step"] <= 8])
  assert "lacked 3 records of steps 6..8" in capsys.readouterr().err
  # tensorboard/ deleted: rebuilt from metrics.jsonl, which stays as it was.
  _log(workdir, [2, 4, 6, 8, 10, 12])
  shutil.rmtree(os.path.join(workdir, "tensorboard"))
  _restart(workdir, 8)
  assert read_metrics(workdir) == upto8
  assert _tb_steps(workdir, "train/loss") == [2, 4, 6, 8]
  assert "TensorBoard events" in capsys.readouterr().err
  # Both intact: cut back to the step in silence.
  _restart(workdir, 4)
  assert read_metrics(workdir) == [r for r in full if r["step"] <= 4]
  assert _tb_steps(workdir, "train/loss") == [2, 4]
  assert capsys.readouterr().err == ""
  assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1
