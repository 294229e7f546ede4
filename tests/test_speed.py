"""The accelerator path on CPU (forced lax.scan), the exact teacher-logit table, sweeps."""
import os
import sys

import jax
import numpy as np
import pytest

import testenv  # pylint: disable=g-import-not-at-top
import yardstick  # pylint: disable=g-import-not-at-top

from kd_jax.train import loop
from kd_jax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import smoke  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_config(method: str = "kd", num_devices: int = 1, steps: int = 8):
  config = smoke.get_config(method)
  config.train_examples = 64
  config.eval_examples = 32
  config.num_train_steps = steps
  config.log_every_steps = 4
  config.checkpoint_every_steps = 4
  config.steps_per_dispatch = 4
  config.eval_batch_size = 16
  config.num_devices = num_devices
  return config


def _setup(config):
  mesh = loop.make_mesh(config)
  data = loop.setup_data(config, mesh)  # pylint: disable=protected-access
  trainer = loop.build_trainer(config, mesh, steps_per_epoch=data.steps_per_epoch,
                               total_steps=config.num_train_steps, in_memory=True,
                               mean=data.mean, std=data.std)
  return mesh, data, trainer


def _assert_states_equal(a, b):
  a, b = jax.device_get((a, b))
  np.testing.assert_array_equal(a.step, b.step)
  paths_a = jax.tree_util.tree_flatten_with_path((a.params, a.batch_stats, a.metric_sums))[0]
  leaves_b = jax.tree.leaves((b.params, b.batch_stats, b.metric_sums))
  assert len(paths_a) == len(leaves_b)
  for (path, x), y in zip(paths_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("method", ["kd"])
def test_forced_scan_equals_per_step_calls(method):
  """The multi-step lax.scan (the GPU/TPU path) on CPU gives the per-step path's state."""
  config = tiny_config(method)
  mesh, data, trainer = _setup(config)
  one_step = step_lib.make_train_fn(trainer.spec, 1)
  per_step = step_lib.make_train_fn(trainer.spec, 4, one_step=one_step)
  scanned = step_lib.make_train_fn(trainer.spec, 4, force_scan=True)
  s1 = per_step(trainer.init_state(), trainer.teacher_vars, data.train)
  s2 = testenv.run_optimized(scanned, mesh, trainer.init_state(), trainer.teacher_vars,
                             data.train)
  assert int(jax.device_get(s1.metric_count)) == 4
  np.testing.assert_array_equal(jax.device_get(s1.step), jax.device_get(s2.step))
  # The two are compiled at different XLA optimization levels (the suite's 0 for the calls,
  # the default for the scan), and the scan is one loop: they round differently. Bound: the
  # yardstick (the per-step path once more from parameters 4 ulps away) x yardstick.FACTOR.
  # Measured: scan vs calls <= 2.2 yardsticks (on the summed KD term), 0.07 of the bound.
  bounds = _state_bounds(s1, per_step(_wobbled(trainer.init_state()), trainer.teacher_vars,
                                      data.train), config.batch_size)
  yardstick.assert_within(_compared(s1), _compared(s2), bounds, "scan vs per-step calls")
  # Defects land far outside the bound (measured: > 1000 x): the 4 steps on another random
  # stream (other crops and flips), and one step fewer.
  other = trainer.init_state()
  other = other.replace(rng=jax.random.fold_in(other.rng, 1))
  yardstick.assert_beyond(_compared(s1), _compared(per_step(other, trainer.teacher_vars,
                                                            data.train)),
                          bounds, what="another random stream")
  three = step_lib.make_train_fn(trainer.spec, 3, one_step=one_step)(
      trainer.init_state(), trainer.teacher_vars, data.train)
  yardstick.assert_beyond(_compared(s1)[:2], _compared(three)[:2], bounds, what="a step skipped")


def _wobbled(state):
  """`state` with its parameters a few float32 ulps away (yardstick.perturb)."""
  return state.replace(params=yardstick.perturb(state.params))


def _state_bounds(reference, wobbled_run, batch_size: int,
                  factor: float = yardstick.FACTOR) -> dict:
  """Per-leaf bounds of _compared(state) from a yardstick run. top1 counts argmax hits, and
  round-off may flip the argmax of a near-tie: one flip (1 / batch_size) is allowed."""
  bounds = yardstick.leaf_bounds(_compared(reference), _compared(wobbled_run), factor)
  key = "[2]['top1']"
  bounds[key] = max(bounds[key], 1.0 / batch_size)
  return bounds


def _compared(state):
  """The parts of a train state two paths must agree on."""
  return (state.params, state.batch_stats, state.metric_sums)


def test_cpu_step_counts_share_one_compiled_step():
  """On CPU, 5 and 3 steps per dispatch are calls of the one compiled one-step function (one
  compilation, not one per count), each call on its own slice of the streamed batches."""
  from test_robustness import _step_spec, tiny  # pylint: disable=g-import-not-at-top
  spec, state0, teacher_vars = _step_spec(tiny())
  # Committed like the loop's state (trainer.init_state), so each function compiles once.
  repl = jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec())
  state0 = jax.device_put(state0, repl)
  made = []

  def make(n, one_step):
    made.append((n, one_step))
    return step_lib.make_train_fn(spec, n, one_step=one_step)

  fns = step_lib.TrainFns(spec, make)
  (f5, c5), (f3, c3), (f1, c1), (again, c_again) = (fns.get(5), fns.get(3), fns.get(1),
                                                      fns.get(5))
  assert (c5, c3, c1, c_again) == (True, False, False, False) and again is f5
  assert [n for n, _ in made] == [1, 5, 3] and made[1][1] is f1 and made[2][1] is f1
  rng = np.random.default_rng(0)
  data = {"image": rng.normal(size=(8, 4, 32, 32, 3)).astype(np.float32),
          "label": rng.integers(0, 100, size=(8, 4)).astype(np.int32)}
  chunked = f3(f5(state0, teacher_vars, {k: v[:5] for k, v in data.items()}), teacher_vars,
               {k: v[5:] for k, v in data.items()})
  state1 = jax.device_put(_step_spec(tiny())[1], repl)
  for i in range(8):
    state1 = f1(state1, teacher_vars, {k: v[i:i + 1] for k, v in data.items()})
  assert f1._cache_size() == 1  # pylint: disable=protected-access
  _assert_states_equal(chunked, state1)


# ---------------------------------------------------------------------------------------
# The teacher-logit table.

import json  # pylint: disable=g-import-not-at-top,wrong-import-position

from kd_jax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from kd_jax.train import teacher_cache  # pylint: disable=g-import-not-at-top,wrong-import-position


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _train_and_eval_values(records):
  keys = sorted({k for r in records for k in r if k.startswith(("train/", "eval/"))})
  return {(r["step"], k): r[k] for r in records for k in keys if k in r}


def test_view_numbers_cover_every_crop_and_flip_once():
  offsets = np.array([[dy, dx] for dy in range(9) for dx in range(9) for _ in (0, 1)])
  flips = np.array([f for _ in range(81) for f in (False, True)])
  views = np.asarray(data_lib.cifar_view_index(offsets, flips))
  assert sorted(views.tolist()) == list(range(162))
  for v, o, f in zip(views, offsets, flips):
    assert data_lib.cifar_view_params(int(v)) == ((int(o[0]), int(o[1])), bool(f))
  assert data_lib.AUGMENTATION_REGISTRY["none"].num_views == 1
  assert data_lib.AUGMENTATION_REGISTRY["pad_crop_flip"].num_views == 162


def test_table_rows_are_the_teacher_on_each_augmented_view():
  """Independent check of build_table: crop/flip by numpy slicing, then the teacher."""
  config = tiny_config()
  mesh = loop.make_mesh(config)
  teacher, tvars = loop.load_teacher(config)
  images = data_lib.load_in_memory("synthetic", "train", num_examples=8).images
  table = teacher_cache.build_table(teacher, tvars, images, num_classes=100,
                                    augment="pad_crop_flip", mean=data_lib.CIFAR_MEAN,
                                    std=data_lib.CIFAR_STD, mesh=mesh, chunk=8)
  assert table.shape == (8, 162, 100)
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for view, (dy, dx, flip) in [(0, (0, 0, 0)), (1, (0, 0, 1)), (161, (8, 8, 1)),
                               (2 * (3 * 9 + 5), (3, 5, 0))]:
    crop = padded[:, dy:dy + 32, dx:dx + 32]
    if flip:
      crop = crop[:, :, ::-1]
    x = (crop / 255.0 - np.array(data_lib.CIFAR_MEAN)) / np.array(data_lib.CIFAR_STD)
    want = np.asarray(teacher.apply(tvars, x.astype(np.float32), train=False))
    # Two programs (the table's batched jit, this eager apply) round differently. Yardstick:
    # the teacher on the same images 4 ulps away; the table may be yardstick.FACTOR of it off.
    moved = np.asarray(teacher.apply(tvars, yardstick.perturb(x.astype(np.float32)),
                                     train=False))
    bound = max(yardstick.FACTOR * float(np.max(np.abs(moved - want))),
                16 * yardstick.EPS32 * float(np.max(np.abs(want))))
    assert float(np.max(np.abs(table[:, view] - want))) <= bound, view
    # A defect is far outside it: the row of another view (here: flipped or not).
    other = table[:, view ^ 1]
    assert float(np.max(np.abs(other - want))) > 100 * bound, view


@pytest.mark.slow
def test_teacher_cache_run_equals_online_run_and_is_reused(tmp_path, monkeypatch):
  online = str(tmp_path / "online")
  loop.train_and_evaluate(tiny_config("dkd"), online)
  cache = str(tmp_path / "cache")
  first = tiny_config("dkd")
  first.teacher_cache = cache
  loop.train_and_evaluate(first, str(tmp_path / "cached1"))
  tables = os.listdir(cache)
  assert len(tables) == 1 and os.path.exists(os.path.join(cache, tables[0], "logits.npy"))
  stamp = os.stat(os.path.join(cache, tables[0], "logits.npy")).st_mtime_ns

  def no_build(*args, **kwargs):
    raise AssertionError("the table was rebuilt")
  monkeypatch.setattr(teacher_cache, "build_table", no_build)
  second = tiny_config("dkd")
  second.teacher_cache = cache
  loop.train_and_evaluate(second, str(tmp_path / "cached2"))
  assert os.stat(os.path.join(cache, tables[0], "logits.npy")).st_mtime_ns == stamp
  want = _train_and_eval_values(_metrics(online))
  assert any(k[1] == "train/nckd" for k in want) and any(k[1] == "eval/top1" for k in want)
  # The table's logits come from another program than the online teacher's (other batches,
  # other fusion), so the runs agree to float32 round-off as 8 steps amplify it. Yardstick:
  # the online run once more from parameters 4 ulps away (yardstick.logged_bounds).
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(loop, "build_trainer", yardstick.perturbed_init(loop.build_trainer))
    loop.train_and_evaluate(tiny_config("dkd"), str(tmp_path / "yardstick"))
  bounds = yardstick.logged_bounds(want, _train_and_eval_values(_metrics(str(tmp_path /
                                                                             "yardstick"))),
                                   flip=1 / 16)
  for run in ("cached1", "cached2"):
    got = _train_and_eval_values(_metrics(str(tmp_path / run)))
    yardstick.assert_logged_within(want, got, bounds, run)


@pytest.mark.slow
def test_teacher_cache_sharded_resume_and_forced_scan(tmp_path):
  """8 devices: a run interrupted and resumed with the table equals the unbroken one; the
  forced-scan path reads the table as the per-step path does."""
  cache = str(tmp_path / "cache")
  unbroken = tiny_config("kd", num_devices=8, steps=12)
  unbroken.teacher_cache = cache
  loop.train_and_evaluate(unbroken, str(tmp_path / "unbroken"))
  partial = tiny_config("kd", num_devices=8, steps=8)
  partial.teacher_cache = cache
  loop.train_and_evaluate(partial, str(tmp_path / "broken"))
  rest = tiny_config("kd", num_devices=8, steps=12)
  rest.teacher_cache = cache
  rest.allow_changed = "num_train_steps"   # extending the run is a documented override
  loop.train_and_evaluate(rest, str(tmp_path / "broken"))
  a = _metrics(str(tmp_path / "unbroken"))
  b = _metrics(str(tmp_path / "broken"))
  for key in ("train/loss", "eval/top1", "eval/loss"):
    assert [r for r in a if key in r][-1][key] == [r for r in b if key in r][-1][key], key

  config = tiny_config("kd", num_devices=8)
  mesh, data, trainer = _setup(config)
  images, labels = (np.asarray(jax.device_get(x)) for x in data.train)
  table, info = teacher_cache.load_or_build(
      cache, teacher=trainer.spec.teacher, teacher_vars=trainer.teacher_vars,
      teacher_name=config.teacher, teacher_dtype="float32", dataset="synthetic", split="train",
      images=images, labels=labels, augment="pad_crop_flip", mean=data.mean, std=data.std,
      num_classes=100, mesh=mesh)
  assert not info["built"]
  spec = trainer.spec.__class__(**{**trainer.spec.__dict__, "teacher_table": True})
  online_fn = step_lib.make_train_fn(trainer.spec, 4)
  online = online_fn(trainer.init_state(), trainer.teacher_vars, data.train)
  scanned = testenv.run_optimized(step_lib.make_train_fn(spec, 4, force_scan=True), mesh,
                                  trainer.init_state(), table, data.train)
  # The two are compiled at different XLA optimization levels (the suite's 0 for the calls,
  # the default for the scan), which round differently. Bound: the yardstick (the per-step
  # path once more from parameters 4 ulps away) x yardstick.FACTOR.
  bounds = _state_bounds(online, online_fn(_wobbled(trainer.init_state()), trainer.teacher_vars,
                                           data.train), config.batch_size)
  yardstick.assert_within(_compared(online), _compared(scanned), bounds, "table scan vs calls")
  # A defect is far outside it: the scan reading each example's logits of another view (the
  # teacher's logits of two crops of one image are close: measured 50 x the bound).
  wrong_view = testenv.run_optimized(step_lib.make_train_fn(spec, 4, force_scan=True), mesh,
                                     trainer.init_state(), table[:, ::-1], data.train)
  yardstick.assert_beyond(_compared(online), _compared(wrong_view), bounds, margin=10,
                          what="another view")


def test_stale_or_damaged_table_is_rebuilt(tmp_path, capsys):
  config = tiny_config()
  mesh = loop.make_mesh(config)
  teacher, tvars = loop.load_teacher(config)
  split = data_lib.load_in_memory("synthetic", "train", num_examples=8)
  kwargs = dict(teacher=teacher, teacher_vars=tvars, teacher_name="resnet8",
                teacher_dtype="float32", dataset="synthetic", split="train",
                images=split.images, labels=split.labels, augment="none",
                mean=data_lib.CIFAR_MEAN, std=data_lib.CIFAR_STD, num_classes=100, mesh=mesh)
  table, info = teacher_cache.load_or_build(str(tmp_path), **kwargs)
  assert info["built"] and table.shape == (8, 1, 100)
  # Damaged file: the checksum no longer matches -> one line, rebuilt, same values.
  path = os.path.join(info["dir"], "logits.npy")
  arr = np.load(path)
  arr[0, 0, 0] += 1.0
  np.save(path, arr)
  capsys.readouterr()
  table2, info2 = teacher_cache.load_or_build(str(tmp_path), **kwargs)
  assert info2["built"] and "checksum" in capsys.readouterr().out
  np.testing.assert_array_equal(np.asarray(table2), np.asarray(table))
  # Other weights: a new table in a new directory, and one line naming what differs.
  other = jax.tree.map(lambda x: x * 1.01, tvars)
  _, info3 = teacher_cache.load_or_build(str(tmp_path), **dict(kwargs, teacher_vars=other))
  assert info3["built"] and info3["dir"] != info["dir"]
  assert "teacher_weights_sha256" in capsys.readouterr().out
  # Unchanged inputs: reused.
  _, info4 = teacher_cache.load_or_build(str(tmp_path), **kwargs)
  assert not info4["built"]


# ---------------------------------------------------------------------------------------
# Sweeps: many runs in one program.

from kd_jax import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from kd_jax.train import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("text,fragment", [
    ("student=resnet8", "cannot be swept"), ("batch_size=8,16", "cannot be swept"),
    ("seed=0,x", "not an integer"), ("loss.beta", "not KEY=V1"), ("seed=0;seed=1", "twice"),
    ("", "lists no values")])
def test_bad_sweeps_are_refused_in_one_line(text, fragment):
  config = tiny_config("dkd")
  config.sweep = text
  with pytest.raises(errors.ConfigError, match=fragment) as e:
    sweep.expand(config)
  assert "\n" not in str(e.value)


def test_sweep_names_and_values():
  config = tiny_config("dkd")
  config.sweep = "seed=0,1;loss.beta=2,8"
  named = sweep.expand(config)
  assert [n for n, _ in named] == ["seed=0,loss.beta=2", "seed=0,loss.beta=8",
                                   "seed=1,loss.beta=2", "seed=1,loss.beta=8"]
  assert [(c.seed, c.loss.beta, c.sweep) for _, c in named] == [
      (0, 2.0, ""), (0, 8.0, ""), (1, 2.0, ""), (1, 8.0, "")]


def test_sweep_step_forced_scan_equals_per_step_and_lone_runs():
  """Two runs (seed, beta, learning rate) vmapped: the scan equals the per-step calls."""
  config = tiny_config("dkd")
  config.sweep = "seed=0,1;loss.beta=2;learning_rate=0.02,0.05"
  named = sweep.expand(config)[1:3]
  runs = [c for _, c in named]
  keys = ["seed", "loss.beta", "learning_rate"]
  mesh, data, trainer0 = _setup(runs[0])
  trainers = [trainer0, _setup(runs[1])[2]]
  stacked = lambda: jax.tree.map(lambda *x: np.stack(x), *[t.init_state() for t in trainers])
  hp = sweep.hyperparameters(runs, keys)
  calls_fn = sweep.make_sweep_train_fn(trainer0.spec, config, 8, 4)
  calls = calls_fn(stacked(), hp, trainer0.teacher_vars, data.train)
  scanned = testenv.run_optimized(
      sweep.make_sweep_train_fn(trainer0.spec, config, 8, 4, force_scan=True), mesh,
      stacked(), hp, trainer0.teacher_vars, data.train)
  # XLA:CPU rounds the vmapped and looped convolutions differently at every step, and the
  # BatchNorm gradients of this 16-example batch cancel to small sums that magnify it. Bound:
  # the yardstick (the calls once more from parameters 4 ulps away) x 16 yardstick.FACTOR: a
  # start 4 ulps away moves less than round-off in every convolution of every step (measured:
  # scan vs calls up to 37 yardsticks with XLA's AVX-512 code, about 200 with its AVX2 code, on
  # BatchNorm variances, 2026-12-05).
  bounds = _state_bounds(calls, calls_fn(_wobbled(stacked()), hp, trainer0.teacher_vars,
                                         data.train), config.batch_size,
                         factor=16 * yardstick.FACTOR)
  np.testing.assert_array_equal(jax.device_get(calls.step), jax.device_get(scanned.step))
  yardstick.assert_within(_compared(calls), _compared(scanned), bounds, "sweep scan vs calls")
  # A defect is far outside it: the learning rates of the two runs swapped.
  swapped = dict(hp, learning_rate=hp["learning_rate"][::-1].copy())
  yardstick.assert_beyond(_compared(calls), _compared(calls_fn(stacked(), swapped,
                                                               trainer0.teacher_vars, data.train)),
                          bounds, what="learning rates swapped")
  # Each vmapped run against the same run alone: test_sweep_equals_the_runs_launched_alone.


@pytest.mark.slow
def test_sweep_equals_the_runs_launched_alone(tmp_path):
  """A sweep of seed=0,1 x loss.beta=2,8 on smoke dkd logs what the four runs alone log."""
  config = tiny_config("dkd")
  config.sweep = "seed=0,1;loss.beta=2,8"
  sweep.train_sweep(config, str(tmp_path / "sweep"))
  first, runs = None, {}
  for name, run in sweep.expand(config):
    alone = str(tmp_path / name)
    loop.train_and_evaluate(run, alone)
    want = _train_and_eval_values(_metrics(alone))
    got = _train_and_eval_values(_metrics(str(tmp_path / "sweep" / "runs" / name)))
    assert sorted(got) == sorted(want) and len(want) > 4, name
    if first is None:
      # vmapped convolutions sum in another order, and 8 steps amplify the round-off. Yardstick:
      # the first lone run once more from parameters 4 ulps away (yardstick.logged_bounds).
      with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "build_trainer", yardstick.perturbed_init(loop.build_trainer))
        loop.train_and_evaluate(run, str(tmp_path / "yardstick"))
      first = (want, _train_and_eval_values(_metrics(str(tmp_path / "yardstick"))))
    bounds = yardstick.logged_bounds(*first, flip=1 / 16, values=want)
    yardstick.assert_logged_within(want, got, bounds, name)
    cfg = json.load(open(str(tmp_path / "sweep" / "runs" / name / "config.json")))
    assert (cfg["seed"], cfg["loss"]["beta"]) == (run.seed, run.loss.beta)
    runs[name] = (want, got, bounds)
  # A defect is far outside the bounds: each vmapped run against the lone run of its neighbour
  # (another seed or beta: a wrong run index).
  names = list(runs)
  for name, neighbour in zip(names, names[1:] + names[:1]):
    want, _, bounds = runs[name]
    ratio = max(abs(want[k] - runs[neighbour][1][k]) / bounds[k] for k in want if bounds[k])
    assert ratio > 100, (name, neighbour, ratio)


@pytest.mark.slow
def test_train_step_benchmark_with_table_and_runs():
  import train_step  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  common = ["--teacher", "resnet8", "--student", "resnet8", "--method", "kd", "--batch-size",
            "16", "--steps", "2", "--warmup", "0", "--num-devices", "1"]
  cached = train_step.main(common + ["--teacher-cache", "--num-examples", "16"])
  assert cached["teacher_cache"] and cached["table_build_s"] > 0
  assert cached["num_examples"] == 16 and np.isfinite(cached["final_loss"])
  runs = train_step.main(common + ["--runs", "2", "--num-examples", "64"])
  assert runs["runs"] == 2 and not runs["teacher_cache"]
  np.testing.assert_allclose(runs["images_per_sec"], 2 * runs["images_per_sec_per_run"])
  assert np.isfinite(runs["final_loss"]) and runs["skipped_steps"] == 0


@pytest.mark.slow
def test_epoch_benchmark_with_table_and_runs():
  import epoch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  rec = epoch.main(["--teacher", "resnet8", "--student", "resnet8", "--batch-size", "16",
                    "--eval-batch-size", "16", "--epochs", "2", "--train-examples", "32",
                    "--eval-examples", "16", "--num-devices", "1", "--teacher-cache", "tmp",
                    "--runs", "2"])
  assert rec["runs"] == 2 and rec["teacher_cache"] and len(rec["epoch_s"]) == 2
  np.testing.assert_allclose(rec["steady_total_train_images_per_sec"],
                             2 * rec["steady_train_images_per_sec"])


def test_launch_on_a_busy_sweep_workdir_is_refused_in_one_line(tmp_path):
  """A sweep launched on a workdir that another live process holds: one line naming the holder,
  exit 2, and nothing written (the lock comes before any output)."""
  import subprocess  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from kd_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  workdir = tmp_path / "w"
  workdir.mkdir()
  with workdir_lib.WorkdirLock(workdir):   # held by this (live) test process
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch.py"),
         f"--config={os.path.join(REPO, 'configs', 'smoke.py')}:dkd",
         f"--workdir={workdir}", "--config.sweep=seed=0,1"],
        capture_output=True, text=True, timeout=600, env=testenv.subprocess_env(1))
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors_ = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors_) == 1 and f"is in use by pid {os.getpid()}" in errors_[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert sorted(p.name for p in workdir.iterdir()) == []


class _Killed(Exception):
  """Stands for a kill: the run stops between writing its metrics and its checkpoint."""


@pytest.mark.slow
def test_sweep_with_table_on_8_devices_resumes_exactly(tmp_path, monkeypatch):
  """A sweep reading the teacher table, sharded over 8 devices, killed after logging and
  evaluating step 12 but before its checkpoint, resumes from step 8 and logs what the unbroken
  sweep logs. Launched again when finished it builds no train step and says it is finished;
  launched
  with another batch size it is refused in one line, before anything is written."""
  from kd_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  cache = str(tmp_path / "cache")

  def cfg():
    c = tiny_config("kd", num_devices=8, steps=12)
    c.sweep = "seed=0,1;loss.kd_weight=0.5"
    c.teacher_cache = cache
    c.checkpoint_every_steps = 8
    return c
  sweep.train_sweep(cfg(), str(tmp_path / "unbroken"))
  broken = str(tmp_path / "broken")
  save = ckpt_lib.Checkpointer.save

  def killed_at_12(self, step, state, meta):
    if step == 12:
      raise _Killed()
    return save(self, step, state, meta)
  with monkeypatch.context() as m:
    m.setattr(ckpt_lib.Checkpointer, "save", killed_at_12)
    with pytest.raises(_Killed):
      sweep.train_sweep(cfg(), broken)
  names = [n for n, _ in sweep.expand(cfg())]
  assert max(r["step"] for r in _metrics(os.path.join(broken, "runs", names[0]))) == 12
  results = sweep.train_sweep(cfg(), broken)
  assert [(r.step, r.name, r.already_finished) for r in results] == [
      (12, n, False) for n in names]
  for name in names:
    a = _train_and_eval_values(_metrics(str(tmp_path / "unbroken" / "runs" / name)))
    b = _train_and_eval_values(_metrics(os.path.join(broken, "runs", name)))
    assert a == b and (12, "eval/top1") in a, name
  kept = {n: _metrics(os.path.join(broken, "runs", n)) for n in names}

  def nothing_to_compile(*args, **kwargs):
    raise AssertionError("a finished sweep builds no train step")
  monkeypatch.setattr(sweep, "make_sweep_train_fn", nothing_to_compile)
  again = sweep.train_sweep(cfg(), broken)
  assert all(r.already_finished and r.step == 12 for r in again)
  assert [r.best_top1 for r in again] == [r.best_top1 for r in results]
  assert {n: _metrics(os.path.join(broken, "runs", n)) for n in names} == kept
  other = cfg()
  other.batch_size = 32
  with pytest.raises(errors.ConfigError, match=r"batch_size 16 -> 32") as e:
    sweep.train_sweep(other, broken)
  assert "\n" not in str(e.value)
  assert json.load(open(os.path.join(broken, "config.json")))["batch_size"] == 16
  # A sweep equals its runs alone (test_sweep_equals_the_runs_launched_alone), a table run its
  # online run (test_teacher_cache_run_equals_online_run_and_is_reused).


# ---------------------------------------------------------------------------------------
# Sweeps spread over devices: the `runs` mesh axis.

_SPREAD_SWEEP = "seed=0,1,2,3;learning_rate=0.02,0.05"   # 8 runs


def _spread_sweep_step(num_devices: int, runs_per_device: int):
  """(mesh shape, initial params, state after 2 steps) of _SPREAD_SWEEP's runs, placed as
  `runs_per_device` says on `num_devices` devices."""
  config = tiny_config("ce", num_devices=num_devices)
  config.sweep = _SPREAD_SWEEP
  config.runs_per_device = runs_per_device
  config.image_size = 8   # the placement is under test, not the model: small, fast programs
  runs = sweep.Sweep(config, "unused")
  mesh = loop.make_mesh(config, num_runs=len(runs))
  data = loop.setup_data(config, mesh)  # pylint: disable=protected-access
  trainer = loop.build_trainer(runs.configs[0], mesh, steps_per_epoch=data.steps_per_epoch,
                               total_steps=8, in_memory=True, mean=data.mean, std=data.std)
  state = runs.init_state(trainer, runs.configs)
  init = jax.device_get(state.params)
  fn = runs.make_train_fn(trainer.spec, 8, 2, None)
  out = fn(state, *runs.step_args(mesh), trainer.teacher_vars, data.train)
  leaf = jax.tree.leaves(out.params)[0]
  per_device = {s.data.shape[0] for s in leaf.addressable_shards}
  return dict(mesh.shape), per_device, init, jax.device_get(out)


def _update_distance(init, a, b, run_a, run_b) -> float:
  """max |update_a - update_b| / max |update_a| over the parameters of run_a (of a) and run_b
  (of b), the update being the parameters' change over the 2 steps."""
  num = den = 0.0
  for x0, xa, xb in zip(jax.tree.leaves(init), jax.tree.leaves(a.params),
                        jax.tree.leaves(b.params)):
    ua, ub = xa[run_a] - x0[run_a], xb[run_b] - x0[run_b]
    num, den = max(num, float(np.abs(ua - ub).max())), max(den, float(np.abs(ua).max()))
  return num / den


@pytest.mark.slow
def test_sweep_spread_over_a_runs_axis_equals_the_sweep_on_one_device():
  """8 runs on 8 devices as 4 runs x 2 data shards, 2 x 4 and 8 x 1 take the steps of the same
  sweep on one device, to within float rounding: the yardstick is the same sweep with every run
  on all 8 devices (only the batch split), and a swapped run is far outside it."""
  _, _, init, one = _spread_sweep_step(1, 0)
  shape, _, _, split = _spread_sweep_step(8, 8)
  assert shape == {"data": 8}
  yard = max(_update_distance(init, one, split, r, r) for r in range(8))
  # A relative update distance: at least 16 float32 ulps (one pass's round-off).
  bound = 10 * yard + yardstick.ulps(16)
  loss_one = np.asarray(one.metric_sums["loss"], np.float64)
  loss_yard = float(np.max(np.abs(np.asarray(split.metric_sums["loss"]) - loss_one)))
  loss_bound = 10 * loss_yard + yardstick.ulps(64) * float(np.max(np.abs(loss_one)))
  for per_device, want in ((2, {"runs": 4, "data": 2}), (4, {"runs": 2, "data": 4}),
                           (1, {"runs": 8, "data": 1})):
    shape, held, _, spread = _spread_sweep_step(8, per_device)
    assert shape == want and held == {per_device}, (shape, held)
    for r in range(8):
      assert _update_distance(init, one, spread, r, r) <= bound, (per_device, r, yard)
    np.testing.assert_allclose(spread.metric_sums["loss"], loss_one, rtol=0, atol=loss_bound)
  # A run paired with its neighbour (another seed or learning rate) is far outside the bound.
  assert min(_update_distance(init, one, spread, r, r ^ 1) for r in range(8)) > 10 * bound


def test_runs_per_device_that_does_not_fit_is_refused_in_one_line():
  config = tiny_config("ce", num_devices=8)
  config.runs_per_device = 3
  with pytest.raises(errors.ConfigError, match=r"runs_per_device=3.*accepted: \[8, 4, 2, 1\]") as e:
    loop.make_mesh(config, num_runs=8)
  assert "\n" not in str(e.value)
  config.runs_per_device = 0
  assert dict(loop.make_mesh(config, num_runs=2).shape) == {"runs": 2, "data": 4}
  assert dict(loop.make_mesh(config, num_runs=25).shape) == {"data": 8}
  assert dict(loop.make_mesh(config, num_runs=1).shape) == {"data": 8}
