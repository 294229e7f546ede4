"""Smoke tests of benchmarks/: each script runs at tiny sizes and prints well-formed JSON.

No timing assertions (speed is measured by the scripts themselves, see BENCHMARKS.md).
"""
import json
import math
import os
import subprocess
import re
import sys

import numpy as np
import pytest

import testenv  # pylint: disable=g-import-not-at-top
import yardstick  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
STEP_KEYS = ("images_per_sec", "step_ms", "compile_s", "device", "method", "teacher", "student",
             "batch_size", "dtype", "steps")


def _env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = testenv.xla_flags(devices)
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env.setdefault("PYTHON", sys.executable)
  return env


def _run(cmd, devices: int = 1, timeout: float = 300) -> list[str]:
  proc = subprocess.run(cmd, cwd=REPO, env=_env(devices), capture_output=True, text=True,
                        timeout=timeout, check=False)
  assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return [line for line in proc.stdout.splitlines() if line.strip()]


def _positive_finite(rec: dict, *keys: str) -> None:
  for k in keys:
    v = rec[k]
    assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (k, v)


def _check_step_record(rec: dict, impl: str) -> None:
  for k in STEP_KEYS:
    assert k in rec, (k, rec)
  assert rec["impl"] == impl
  _positive_finite(rec, "images_per_sec", "step_ms", "compile_s", "batch_size", "steps")
  assert math.isfinite(rec["final_loss"])
  assert isinstance(rec["device"], str) and rec["device"]


@pytest.fixture(scope="module")
def compare_lines():
  """One compare.sh run (JAX step, torch eager and compiled steps, ratio) shared below.

  torch.compile's 'eager' backend traces the whole step through Dynamo without generating
  code: the compiled path is exercised in seconds (the speed runs use inductor).
  """
  return _run(["bash", os.path.join(BENCH, "compare.sh"), "--pairs", "resnet8,resnet8",
               "--batch-sizes", "8", "--steps", "2", "--warmup", "1", "--num-examples", "64",
               "--steps-per-dispatch", "2", "--threads", "1",
               "--torch-modes", "eager compile_cl", "--compile-backend", "eager"], timeout=900)


@pytest.mark.slow
def test_compare_runs_every_step_and_prints_the_ratio_to_the_best_peer(compare_lines):
  recs = [json.loads(line) for line in compare_lines]
  assert len(recs) == 4, compare_lines
  jax_rec, eager_rec, compiled_rec, ratio = recs
  _check_step_record(jax_rec, "jax")
  assert "jax" in jax_rec and jax_rec["skipped_steps"] == 0
  assert jax_rec["steps"] == 2 and jax_rec["steps_per_dispatch"] == 2
  _check_step_record(eager_rec, "torch_eager")
  _check_step_record(compiled_rec, "torch_compile")
  assert compiled_rec["channels_last"] and not eager_rec["channels_last"]
  assert ratio["kind"] == "ratio"
  _positive_finite(ratio, "jax_over_torch", "jax_images_per_sec", "torch_images_per_sec")
  assert ratio["jax_over_torch"] == pytest.approx(
      jax_rec["images_per_sec"] / eager_rec["images_per_sec"])
  best = max(eager_rec["images_per_sec"], compiled_rec["images_per_sec"])
  assert ratio["jax_online_over_best_torch"] == pytest.approx(jax_rec["images_per_sec"] / best)
  assert ratio["best_torch_mode"] == ("torch_eager" if best == eager_rec["images_per_sec"]
                                      else "torch_compile_cl")


def _torch_setup(argv: list[str], batch_size: int, num_batches: int):
  """torch_reference.build of resnet8 -> resnet8 on 10 classes."""
  import torch_reference  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return torch_reference.build(torch_reference.parse_args(
      ["--teacher", "resnet8", "--student", "resnet8", "--batch-size", str(batch_size),
       "--num-batches", str(num_batches), "--num-classes", "10", *argv]))


def _torch_step_losses(argv: list[str], perturb: float = 0.0, steps: int = 3) -> list[float]:
  """Losses of `steps` steps of torch_reference's step (batch 8); with `perturb`, every student
  weight first moved by that relative amount, up or down at random."""
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  setup = _torch_setup(argv, 8, 2)
  if perturb:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
      for p in setup.student.parameters():
        p.mul_(1 + perturb * (2 * torch.randint(0, 2, p.shape, generator=gen) - 1))
  return [float(setup.step(*setup.batches[i % 2]).detach()) for i in range(steps)]


def test_the_compiled_channels_last_step_follows_the_eager_step():
  """torch.compile (Dynamo tracing, 'eager' backend) in channels-last computes the eager step:
  its losses over 3 steps stay within FACTOR yardsticks of the eager ones, the yardstick being
  the eager run from a start 4 ulps away (this machine's own amplification of round-off)."""
  eager = _torch_step_losses([])
  perturbed = _torch_step_losses([], perturb=yardstick.REL)
  compiled = _torch_step_losses(["--compile", "--compile-backend", "eager", "--channels-last"])
  yard = max(max(abs(a - b) for a, b in zip(eager, perturbed)),
             yardstick.ulps(4) * abs(eager[-1]))
  bound = yardstick.FACTOR * yard
  assert max(abs(a - b) for a, b in zip(eager, compiled)) <= bound, (eager, compiled, bound)
  # A skipped or repeated step would move the loss by one step's change, far beyond the bound.
  assert min(abs(eager[1] - eager[0]), abs(eager[2] - eager[1])) > 10 * bound, (eager, bound)


@pytest.mark.parametrize("method,views", [("ctkd", 1), ("mlkd", 2), ("dist", 1)])
def test_the_torch_reference_steps_each_method_its_authors_way(method, views):
  """Student and teacher run once per view (MLKD: weak then strong); CTKD's temperature is a
  parameter of the student's optimizer, so one step moves it."""
  setup = _torch_setup(["--method", method], 4, 1)
  seen = {"student": [], "teacher": []}
  for name, model in (("student", setup.student), ("teacher", setup.teacher)):
    model.register_forward_hook(lambda m, inp, out, name=name: seen[name].append(inp[0]))
  before = [p.detach().clone() for p in setup.loss.parameters()]
  assert len(before) == (1 if method == "ctkd" else 0)
  loss = setup.step(*setup.batches[0])
  assert math.isfinite(float(loss))
  images = setup.batches[0][0]
  assert len(images) == views
  for name in seen:
    assert len(seen[name]) == views and all(x is v for x, v in zip(seen[name], images)), name
  for b, p in zip(before, setup.loss.parameters()):
    assert float(b) == 1.0 and float(p) != 1.0


def test_train_step_builds_each_methods_run_with_the_loops_own_pieces():
  """CTKD's state carries its learned temperature (raw = 1 at the authors' init); MLKD with the
  table reads the weak view's logits from it and runs the teacher online on the strong view."""
  import train_step  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  base = ["--teacher", "resnet8", "--student", "resnet8", "--batch-size", "8",
          "--num-examples", "8", "--num-devices", "1"]
  setup = train_step.build(train_step.parse_args(base + ["--method", "ctkd"]))
  assert np.asarray(setup.state.loss_params["ctkd"]["raw"]) == 1.0
  setup = train_step.build(train_step.parse_args(base + ["--method", "mlkd", "--teacher-cache"]))
  assert [v.name for v in setup.spec.loss.views] == ["weak", "strong"]
  assert setup.spec.teacher_table and set(setup.teacher_vars["tables"]) == {"pad_crop_flip"}
  assert setup.teacher_vars["tables"]["pad_crop_flip"].shape[:2] == (8, 162)
  assert setup.teacher_vars["variables"], "the strong view needs the teacher's variables"


def _rec(impl, ips, **extra):
  return {"impl": impl, "images_per_sec": ips, "teacher": "t", "student": "s",
          "batch_size": 64, "dtype": "float32", **extra}


def test_summary_takes_medians_over_interleaved_rounds_and_the_best_peer():
  """Three rounds of (kd_jax online, table, eager, compiled): medians, best mode, round ratios."""
  import summarize_compare  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  rounds = [(10.0, 30.0, 12.0, 20.0), (14.0, 33.0, 11.0, 8.0), (11.0, 31.0, 50.0, 16.0)]
  recs = []
  for online, table, eager, compiled in rounds:
    recs += [_rec("jax", online, teacher_cache=False), _rec("jax", table, teacher_cache=True),
             _rec("torch_eager", eager), _rec("torch_compile", compiled, channels_last=True)]
  out = summarize_compare.summarize(recs)
  assert out["rounds"] == 3
  assert out["jax_online_images_per_sec"] == 11.0 and out["jax_table_images_per_sec"] == 31.0
  assert out["torch_eager_images_per_sec"] == 12.0
  assert out["torch_compile_cl_images_per_sec"] == 16.0
  assert out["best_torch_mode"] == "torch_compile_cl"
  assert out["jax_online_over_best_torch"] == pytest.approx(11.0 / 16.0)
  assert out["jax_table_over_best_torch"] == pytest.approx(31.0 / 16.0)
  assert out["jax_over_torch"] == pytest.approx(11.0 / 12.0)  # the eager-only key, kept
  # Each round against the faster peer of that same round.
  assert out["round_ratios"] == pytest.approx([10.0 / 20.0, 14.0 / 11.0, 11.0 / 50.0])


def test_gpu_sh_refuses_a_missing_out_and_unknown_arguments():
  for args, needle in ((["--dry-run"], "--out DIR is required"),
                       (["--out", "/tmp/x", "--frobnicate"], "unknown argument --frobnicate"),
                       (["--out", "/tmp/x", "--budget-s", "soon"], "'soon'")):
    proc = subprocess.run(["bash", os.path.join(BENCH, "gpu.sh"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_gpu_sh_dry_run_runs_every_step_and_writes_the_json_lines(tmp_path):
  out = tmp_path / "gpu"
  proc = subprocess.run(["bash", os.path.join(BENCH, "gpu.sh"), "--dry-run", "--out", str(out),
                         "--budget-s", "1500"], cwd=REPO, env=_env(1), capture_output=True,
                        text=True, timeout=1600, check=False)
  steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
  assert proc.returncode == 0, (proc.stderr[-3000:], steps)
  by_step = {s["step"]: s for s in steps if s["kind"] == "step"}
  expected = {"environment", "smoke", "jax_online_b8", "torch_eager_b8", "torch_compile_cl_b8",
              "jax_table_b8", "epoch", "rank_kendall", "jax_online_bf16_b8",
              "torch_eager_bf16_b8", "jax_table_runs2_b8"}
  assert set(by_step) == expected, by_step  # no install in a dry run
  assert all(s["rc"] == 0 and not s["timed_out"] for s in by_step.values()), by_step
  assert steps[-1]["kind"] == "gpu_sh" and steps[-1]["dry_run"] and not steps[-1]["failed"]

  results = {}
  for line in (out / "results.jsonl").read_text().splitlines():
    rec = json.loads(line)
    results[rec["step"]] = rec
  assert set(results) == expected
  assert results["environment"]["jax_devices"] == ["cpu:cpu"]
  assert results["smoke"]["ok"] and results["smoke"]["steps"] == 4
  online, table = results["jax_online_b8"], results["jax_table_b8"]
  _check_step_record(online, "jax")
  assert not online["teacher_cache"] and table["teacher_cache"]
  _check_step_record(results["torch_eager_b8"], "torch_eager")
  _check_step_record(results["torch_compile_cl_b8"], "torch_compile")
  assert results["jax_online_bf16_b8"]["dtype"] == results["torch_eager_bf16_b8"]["dtype"] \
      == "bfloat16"
  runs = results["jax_table_runs2_b8"]
  assert runs["runs"] == 2 and runs["images_per_sec"] == pytest.approx(
      2 * runs["images_per_sec_per_run"])
  assert results["epoch"]["kind"] == "epoch" and len(results["epoch"]["epoch_s"]) == 2
  assert math.isfinite(results["rank_kendall"]["loss"])

  summary = {}
  for line in (out / "summary.jsonl").read_text().splitlines():
    rec = json.loads(line)
    summary[rec["dtype"]] = rec
  f32 = summary["float32"]
  best = max(results["torch_eager_b8"]["images_per_sec"],
             results["torch_compile_cl_b8"]["images_per_sec"])
  assert f32["jax_online_over_best_torch"] == pytest.approx(online["images_per_sec"] / best)
  assert f32["jax_table_over_best_torch"] == pytest.approx(table["images_per_sec"] / best)
  assert "jax_online_over_best_torch" in summary["bfloat16"]


@pytest.mark.parametrize("method", ["ce", "kd", "dkd", "rld", "dhkd", "rkkd"])
def test_train_step_builds_a_valid_config_for_every_method(method):
  """Config set-up only (no compilation): base_config + method_defaults, rkkd on base 'kd'."""
  import train_step  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from kd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from kd_jax import models  # pylint: disable=g-import-not-at-top
  args = train_step.parse_args(["--teacher", "resnet32x4", "--student", "resnet8x4",
                                "--method", method, "--batch-size", "64",
                                "--steps-per-dispatch", "4", "--dtype", "bfloat16"])
  config = train_step.build_config(args)
  config_lib.validate(config, model_names=models.names(), num_devices=1)
  assert config.method == method and config.batch_size == 64
  assert config.steps_per_dispatch == 4 and config.dtype == config.teacher_dtype == "bfloat16"
  if method == "rkkd":
    assert config.base_method == "kd" and config.loss.rank_weight > 0
  assert config.teacher == ("" if method == "ce" else "resnet32x4")


@pytest.mark.slow
def test_plot_writes_a_png(compare_lines, tmp_path):
  src = tmp_path / "results.jsonl"
  src.write_text("\n".join(compare_lines) + "\n")
  out = tmp_path / "plot.png"
  lines = _run([sys.executable, os.path.join(BENCH, "plot.py"), str(src), "--out", str(out)])
  assert json.loads(lines[-1])["records"] == 3  # kd_jax, PyTorch eager, compiled
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_input_pipeline_cifar_and_imagenet_mock():
  lines = _run([sys.executable, os.path.join(BENCH, "input_pipeline.py"), "--batch-size", "8",
                "--batches", "3", "--repeats", "1", "--num-examples", "64",
                "--train-images-per-sec", "10", "--imagenet", "mock",
                "--imagenet-batch-size", "4", "--imagenet-batches", "2",
                "--imagenet-examples", "16", "--imagenet-image-size", "32"])
  rec = json.loads(lines[-1])
  _positive_finite(rec, "cifar_images_per_sec", "cifar_batch_ms", "imagenet_images_per_sec",
                   "imagenet_batch_ms", "cifar_over_train_step")
  assert rec["imagenet_source"] == "mock"
  assert isinstance(rec["cifar_headroom_ok"], bool)


def _convolutions(hlo: str) -> list[tuple[str, bool]]:
  """(op_name, inside a YNNPACK fusion) of every convolution in a compiled module's text."""
  ynn_bodies = set(re.findall(r"calls=(%[\w.\-]+)[^\n]*\"kind\":\"__ynn_fusion\"", hlo))
  convs, body = [], None
  for line in hlo.splitlines():
    m = re.match(r"(?:ENTRY )?(%[\w.\-]+) .*\{$", line)
    if m:
      body = m.group(1)
    if " convolution(" in line:
      op_name = re.search(r'op_name="([^"]*)"', line)
      convs.append((op_name.group(1) if op_name else "", body in ynn_bodies))
  return convs


def test_cpu_steps_compile_the_students_convolutions_in_xla_not_ynnpack():
  """The real train and eval steps carry step.compiler_options on CPU.

  By default XLA:CPU sends convolutions to YNNPACK, which runs them on one thread and computes
  weight gradients ~4x slower (BENCHMARKS.md). With the options, no convolution of the
  student's forward or backward pass (under `jvp`/`transpose`) goes there; YNNPACK's reduce
  fusions may still absorb the last teacher-forward convolutions before a reduction.
  """
  import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import train_step  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from kd_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  args = train_step.parse_args(["--teacher", "resnet8", "--student", "resnet8", "--method",
                                "kd", "--batch-size", "8", "--num-examples", "16",
                                "--num-devices", "1"])
  setup = train_step.build(args)
  mesh = setup.spec.mesh
  assert step_lib.compiler_options(mesh) is not None, "this jaxlib refused the CPU options"
  train = _convolutions(step_lib.make_train_fn(setup.spec, 1).lower(
      setup.state, setup.teacher_vars, setup.data).compile().as_text())
  teacher_forward = [ynn for name, ynn in train if "/CifarResNet/" in name and "jvp(" not in name]
  student = [ynn for name, ynn in train if "/CifarResNet/" not in name or "jvp(" in name]
  # resnet8 has 9 convolutions: 9 forward, 9 weight gradients and 8 input gradients (no stem).
  assert len(teacher_forward) == 9 and len(student) == 26, train
  assert not any(student), f"student convolutions compiled into YNNPACK: {train}"

  eval_fn = step_lib.make_eval_fn(setup.spec.student, setup.spec.mean, setup.spec.std, mesh,
                                  in_memory=True)
  batch = {"image": np.zeros((8, 32, 32, 3), np.uint8), "label": np.zeros((8,), np.int32),
           "mask": np.ones((8,), bool)}
  variables = {"params": setup.state.params, "batch_stats": setup.state.batch_stats}
  evals = _convolutions(eval_fn.lower(variables, batch).compile().as_text())
  # Without the options every one of the 9 would be a YNNPACK fusion.
  assert len(evals) == 9 and sum(ynn for _, ynn in evals) < 9, evals

  # The parser does see YNNPACK convolutions: XLA:CPU's default puts a plain one there
  # (a cost model keeps tiny ones out: this one is a resnet8x4-sized layer at batch 8).
  x, w = np.ones((8, 32, 32, 16), np.float32), np.ones((3, 3, 16, 32), np.float32)
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  assert [ynn for _, ynn in _convolutions(conv.lower(x, w).compile().as_text())] == [True], (
      "XLA:CPU no longer sends convolutions to YNNPACK by default; re-measure whether "
      "step.compiler_options is still needed")


def test_epoch_seconds_are_differences_of_the_eval_marks():
  import epoch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  records = [{"step": 0, "teacher/top1": 0.1},
             {"step": 5, "train/loss": 1.0, "elapsed_s": 3.0},
             {"step": 10, "eval/top1": 0.2, "elapsed_s": 7.5},
             {"step": 15, "train/loss": 0.9, "elapsed_s": 8.0},
             {"step": 20, "eval/top1": 0.3, "elapsed_s": 9.25}]
  assert epoch.epoch_seconds(records) == [7.5, 1.75]


@pytest.mark.slow
def test_epoch_benchmark_runs_the_real_loop():
  lines = _run([sys.executable, os.path.join(BENCH, "epoch.py"), "--teacher", "resnet8",
                "--student", "resnet8", "--batch-size", "16", "--eval-batch-size", "16",
                "--epochs", "2", "--train-examples", "168", "--eval-examples", "40",
                "--steps-per-dispatch", "2"])
  rec = json.loads(lines[-1])
  assert rec["kind"] == "epoch" and rec["epochs"] == 2 and len(rec["epoch_s"]) == 2
  assert rec["train_images_per_epoch"] == 160  # 10 full batches of 16
  assert rec["steady_epoch_s"] == rec["epoch_s"][1]
  _positive_finite(rec, "first_epoch_s", "steady_epoch_s", "steady_train_images_per_sec")
  assert 0.0 <= rec["final_eval_top1"] <= 1.0


def test_refused_cpu_options_compile_without_them_and_say_so(monkeypatch, capsys):
  """A jaxlib without the YNNPACK option must not fail every compile: no options, one line."""
  import jax  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from kd_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  monkeypatch.setattr(step_lib, "_CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": "1"})
  step_lib._cpu_options_supported.cache_clear()  # pylint: disable=protected-access
  try:
    assert step_lib.compiler_options(mesh) is None
    assert "refuses the XLA:CPU options" in capsys.readouterr().err
  finally:
    step_lib._cpu_options_supported.cache_clear()  # pylint: disable=protected-access
  monkeypatch.undo()
  assert step_lib.compiler_options(mesh) is not None


def test_generated_jpegs_look_like_photographs_not_noise_or_flat_colour():
  """Neighbouring pixels correlate (noise: ~0) yet the frame varies and has fine detail."""
  import jpeg_folder  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  rng = np.random.default_rng(3)
  for _ in range(3):
    h, w = jpeg_folder.image_size(rng)
    assert 400 <= max(h, w) <= 500 and 4 / 3 - 0.02 <= max(h, w) / min(h, w) <= 1.5 + 0.02
    img = jpeg_folder.photo_like(rng, 96, 128).astype(np.float64).mean(axis=-1)
    a, b = img[:, :-1].ravel(), img[:, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.8          # smooth at the pixel scale, unlike noise
    assert img.std() > 15.0                        # not one flat colour
    assert np.abs(a - b).mean() > 1.0              # but with texture and grain
  noise = np.random.default_rng(0).integers(0, 256, (96, 128)).astype(np.float64)
  assert abs(np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]) < 0.1


@pytest.mark.slow
def test_the_kd_jax_side_reads_the_very_same_jpeg_bytes(tmp_path):
  """folder_to_tfds stores each file's bytes unchanged (no re-encoding), labels by folder."""
  import input_pipeline  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import jpeg_folder  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from kd_jax.data import common  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  root = tmp_path / "jpegs"
  rng = np.random.default_rng(0)
  for i, cls in enumerate(("a", "a", "b")):
    (root / "train" / cls).mkdir(parents=True, exist_ok=True)
    from PIL import Image  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    Image.fromarray(jpeg_folder.photo_like(rng, 40, 56)).save(
        root / "train" / cls / f"{i}.JPEG", quality=90)
  n = input_pipeline.folder_to_tfds(str(root), str(tmp_path / "tfds"), "bytes_check")
  assert n == 3
  tfds = common.import_tfds()
  ds = tfds.builder("bytes_check", data_dir=str(tmp_path / "tfds")).as_dataset(
      split="train", shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
  stored = sorted((bytes(ex["image"]), int(ex["label"])) for ex in tfds.as_numpy(ds))
  files = sorted((open(p, "rb").read(), label) for p, label in jpeg_folder.files(str(root)))
  assert stored == files and [label for _, label in files].count(1) == 1


def test_plot_series_against_runs_groups_by_n_and_averages_repeats():
  import plot  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  recs = [{"impl": "jax", "batch_size": 64, "runs": n, "images_per_sec": v,
           "teacher_cache": True} for n, v in ((4, 30.0), (1, 10.0), (4, 34.0))]
  (label, pts), = plot.series(recs, x="runs").items()
  assert "batch 64 table" in label and pts == [(1, 10.0), (4, 32.0)]
  assert plot.series(recs)[label.replace(" batch 64 table", "")] == [(64, 74.0 / 3)]


def test_profile_step_torch_side_times_every_part_of_the_step():
  """profile_step.py's PyTorch side (in-process, the smallest sizes): every part timed, the
  per-shape convolution times summing to the totals, the residual as documented."""
  import argparse  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import profile_step  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  rec = profile_step.run_side(argparse.Namespace(teacher="resnet8", student="resnet8",
                                                 batch_size=2, repeats=1, side="torch"))
  ms = rec["torch_ms"]
  parts = ("teacher_forward", "student_forward", "student_fwd_bwd", "loss_fwd_bwd", "optimizer",
           "full_step", "conv_forward", "conv_input_grad", "conv_weight_grad")
  _positive_finite(ms, *parts)
  assert rec["student_convolutions"] == 9   # resnet8: stem, 3 blocks of 2, 2 projections
  for k in ("conv_forward", "conv_weight_grad"):
    assert ms[k] == pytest.approx(sum(s["count"] * s["torch_ms"][k] for s in rec["conv_by_shape"]))
  assert ms["other_backward"] == pytest.approx(ms["student_fwd_bwd"] - ms["student_forward"]
                                               - ms["conv_input_grad"] - ms["conv_weight_grad"])
  assert rec["torch_profiler_self_ms_per_step"], "the torch.profiler table is empty"
