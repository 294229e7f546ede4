"""Smoke tests of benchmarks/: each script runs at tiny sizes and prints well-formed JSON.

No timing assertions (speed is measured by the scripts themselves, see BENCHMARKS.md).
"""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
STEP_KEYS = ("images_per_sec", "step_ms", "compile_s", "device", "method", "teacher", "student",
             "batch_size", "dtype", "steps")


def _env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
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
  """One compare.sh run (JAX step, torch step, ratio) shared by the tests below."""
  return _run(["bash", os.path.join(BENCH, "compare.sh"), "--pairs", "resnet8,resnet8",
               "--batch-sizes", "8", "--steps", "2", "--warmup", "0", "--num-examples", "64",
               "--steps-per-dispatch", "2", "--threads", "1"])


def test_compare_runs_both_steps_and_prints_the_ratio(compare_lines):
  recs = [json.loads(line) for line in compare_lines]
  assert len(recs) == 3, compare_lines
  jax_rec, torch_rec, ratio = recs
  _check_step_record(jax_rec, "jax")
  assert "jax" in jax_rec and jax_rec["skipped_steps"] == 0
  assert jax_rec["steps"] == 2 and jax_rec["steps_per_dispatch"] == 2
  _check_step_record(torch_rec, "torch_eager")
  assert ratio["kind"] == "ratio"
  _positive_finite(ratio, "jax_over_torch", "jax_images_per_sec", "torch_images_per_sec")
  assert ratio["jax_over_torch"] == pytest.approx(
      jax_rec["images_per_sec"] / torch_rec["images_per_sec"])


@pytest.mark.parametrize("method", ["ce", "kd", "dkd", "rld", "dhkd", "rkkd"])
def test_train_step_builds_a_valid_config_for_every_method(method):
  """Config set-up only (no compilation): base_config + method_defaults, rkkd on base 'kd'."""
  sys.path.insert(0, BENCH)
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


def test_plot_writes_a_png(compare_lines, tmp_path):
  src = tmp_path / "results.jsonl"
  src.write_text("\n".join(compare_lines) + "\n")
  out = tmp_path / "plot.png"
  lines = _run([sys.executable, os.path.join(BENCH, "plot.py"), str(src), "--out", str(out)])
  assert json.loads(lines[-1])["records"] == 2
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
