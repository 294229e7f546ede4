"""What a new user meets first: the launcher's help and errors, progress, the summary, the smoke
run, quiet logs, optional Weights & Biases logging, packaging and the README's commands."""
import glob
import importlib.util
import io
import json
import os
import re
import struct
import subprocess
import sys
import tomllib

import ml_collections
import pytest

import testenv  # pylint: disable=g-import-not-at-top

from kd_jax import config as kdc
from kd_jax import errors
from kd_jax.train import progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import smoke  # pylint: disable=g-import-not-at-top,wrong-import-position

LAUNCH = os.path.join(REPO, "launch.py")


def _run(*args, timeout=600, cwd=REPO):
  env = testenv.subprocess_env(1, PYTHONUNBUFFERED="1")
  return subprocess.run([sys.executable, LAUNCH, *args], capture_output=True, text=True,
                        env=env, timeout=timeout, cwd=cwd)


# ---------------------------------------------------------------------------------------
# launch.py: --help, --print_config, one-line errors.


def test_help_exits_0_and_says_how_to_list_keys():
  res = _run("--help")
  assert res.returncode == 0, res.stderr
  assert "--print_config" in res.stdout and "--config.KEY=VALUE" in res.stdout
  assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args,needles", [
    # A typo one level down and one at the top: the closest key is suggested.
    (["--config.loss.temprature=2"], ["`loss.temprature`", "did you mean `loss.temperature`"]),
    (["--config.temprature=2"], ["`temprature`", "did you mean `loss.temperature`"]),
    (["--config.lerning_rate=0.1"], ["did you mean `learning_rate`"]),
    # A value of the wrong type.
    (["--config.loss.temperature=abc"], ["--config.loss.temperature=abc", "a number"]),
    (["--config.batch_size=2.5"], ["--config.batch_size=2.5", "an integer"]),
])
def test_config_errors_are_one_line_with_a_suggestion(args, needles, tmp_path):
  res = _run("--config=configs/kd.py", f"--workdir={tmp_path / 'run'}", *args)
  assert res.returncode == 2, res.stdout + res.stderr
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
  for needle in needles:
    assert needle in lines[0]
  assert not os.path.exists(tmp_path / "run")


def test_unknown_pair_says_to_set_teacher_and_student(tmp_path):
  res = _run("--config=configs/kd.py:resnet56,resnet8", f"--workdir={tmp_path / 'run'}")
  assert res.returncode == 2
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1, res.stderr
  assert "resnet56,resnet8" in lines[0]
  assert "--config.teacher=resnet56 --config.student=resnet8" in lines[0]


def test_print_config_resolves_the_pair_and_overrides_with_descriptions():
  res = _run("--config=configs/dkd.py:resnet56,resnet20", "--print_config",
             "--config.loss.temperature=2")
  assert res.returncode == 0, res.stderr
  lines = {line.split(" = ")[0]: line for line in res.stdout.splitlines()}
  # The pair's values (DKD beta 2 for resnet56 -> resnet20) and the override are applied.
  assert lines["teacher"].startswith("teacher = 'resnet56'")
  assert lines["student"].startswith("student = 'resnet20'")
  assert lines["loss.beta"].startswith("loss.beta = 2.0")
  assert lines["loss.temperature"].startswith("loss.temperature = 2.0")
  assert "# global batch" in lines["batch_size"]
  assert set(lines) == set(kdc.key_descriptions())


def test_key_descriptions_cover_every_key():
  def flat(c, prefix=""):
    out = []
    for k, v in c.items():
      out += flat(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [
          prefix + k]
    return out
  descriptions = kdc.key_descriptions()
  assert sorted(descriptions) == sorted(flat(kdc.base_config()))
  assert "loss.rank_top_k" in descriptions and descriptions["loss.rank_top_k"]
  assert "TFDS" in descriptions["data_dir"]


# ---------------------------------------------------------------------------------------
# Progress and the summary.


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_progress_prints_periodic_lines_when_not_a_terminal():
  out, clock = io.StringIO(), _Clock()
  p = progress.Progress(out, live=False, interval_s=30, enabled=True, clock=clock)
  p.start("training", 100, "steps")
  assert out.getvalue().count("\n") == 1 and "training:" in out.getvalue()
  clock.t = 10
  p.update(5)          # compilation done at t=10 after 5 steps
  assert out.getvalue().count("\n") == 1   # within the interval: nothing printed
  p.restart_rate(5)
  clock.t = 20
  p.update(15)         # 10 steps in 10 s after compilation -> 85 steps left = 85 s
  assert p.eta_s() == pytest.approx(85.0)
  clock.t = 40
  p.update(35)         # 30 s since the last line: a periodic line; ETA 65 steps at 1/s
  last = out.getvalue().splitlines()[-1]
  assert "35/100" in last and "ETA 1:05" in last
  p.finish()
  assert out.getvalue().splitlines()[-1].startswith("training: done in 0:40")


def test_progress_redraws_one_line_on_a_terminal():
  out, clock = io.StringIO(), _Clock()
  p = progress.Progress(out, live=True, enabled=True, clock=clock)
  p.start("evaluation", 4, "batches")
  for i in range(1, 5):
    p.update(i)
  p.finish(silent=True)
  text = out.getvalue()
  assert text.count("\r") >= 5 and "\n" not in text and "4/4 batches" in text


def test_summary_is_readable_and_in_percent(tmp_path):
  records = [
      {"step": 0, "teacher/top1": 0.7512},
      {"step": 10, "epoch": 1.0, "train/loss": 2.0, "elapsed_s": 100.0},
      {"step": 10, "epoch": 1.0, "eval/top1": 0.5, "eval/top5": 0.8, "elapsed_s": 110.0},
      {"step": 20, "epoch": 2.0, "eval/top1": 0.625, "eval/top5": 0.9, "elapsed_s": 2000.0},
      {"step": 30, "epoch": 3.0, "eval/top1": 0.6, "eval/top5": 0.95, "elapsed_s": 3665.0},
  ]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))
  text = progress.run_summary(str(tmp_path))
  assert "30 steps (3 epochs) in 1:01:05 wall time" in text
  assert "best eval top-1  62.50% at epoch 2 (step 20); checkpoint: " in text
  assert "last eval top-1  60.00% at epoch 3 (step 30), top-5 95.00%" in text
  assert "teacher top-1    75.12%" in text


@pytest.mark.slow
def test_smoke_run_learns_shows_progress_first_and_rerun_prints_the_same_summary(tmp_path):
  workdir = str(tmp_path / "smoke")
  res = _run("--config=configs/smoke.py", f"--workdir={workdir}")
  assert res.returncode == 0, res.stderr[-3000:]
  out = res.stdout
  # Progress before the first step line: loading, the teacher's evaluation, compilation.
  first_step = out.index("step 10/60")
  for phase in ("loading data", "teacher evaluation", "compiling the train step"):
    assert out.index(phase) < first_step, out
  # Quiet logs: no TensorFlow/absl C++ start-up lines.
  assert "oneDNN" not in res.stderr and "absl::InitializeLog" not in res.stderr, res.stderr
  # The student learns: best eval top-1 at least 3x chance (1% on 100 classes).
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    best = max(r["eval/top1"] for r in map(json.loads, f) if "eval/top1" in r)
  assert best >= 0.03, best
  summary = out[out.index("Done: "):].strip()
  assert f"best eval top-1  {100 * best:.2f}%" in summary
  assert "{'top1'" not in out
  # Running the finished run again says so and prints the same summary.
  again = _run("--config=configs/smoke.py", f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "already finished" in again.stdout
  assert again.stdout[again.stdout.index("Done: "):].strip() == summary


def test_synthetic_runs_do_not_import_tensorflow(tmp_path):
  code = ("import sys; from kd_jax import data; from kd_jax.train import loop, metrics; "
          "data.load_in_memory('synthetic', 'train', num_examples=8); "
          f"w = metrics.MetricWriter({str(tmp_path)!r}, total_steps=1); w.write(1, {{'a': 1.0}}); "
          "w.close(); print('tensorflow' in sys.modules)")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
  assert res.returncode == 0, res.stderr
  assert res.stdout.strip().splitlines()[-1] == "False"
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))


# ---------------------------------------------------------------------------------------
# Weights & Biases (offline).


def _wandb_records(path):
  """Records of a .wandb file: a 7-byte header, then a LevelDB-style log of 32 KiB blocks."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  data = open(path, "rb").read()
  pos, block, buf = 7, 32768, b""
  while pos + 7 <= len(data):
    left = block - pos % block
    if left < 7:
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if kind == 0 and length == 0:
      pos += left
      continue
    chunk = data[pos + 7:pos + 7 + length]
    pos += 7 + length
    buf = chunk if kind in (1, 2) else buf + chunk
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(buf)
      yield record


@pytest.mark.slow
def test_wandb_offline_logs_the_metrics_and_the_config(tmp_path, monkeypatch):
  pytest.importorskip("wandb", reason="wandb is pinned in requirements-dev.txt")
  from kd_jax.train import loop  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  config = smoke.get_config("ce")
  config.train_examples, config.eval_examples = 64, 16
  config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 4, 2, 4
  config.steps_per_dispatch, config.eval_batch_size, config.num_devices = 2, 16, 1
  config.wandb_project = "kd_jax_test"
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  files = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "*.wandb"))
  assert len(files) == 1
  history, logged_config = {}, {}
  for record in _wandb_records(files[0]):
    kind = record.WhichOneof("record_type")
    if kind == "history":
      row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
             for i in record.history.item}
      history[record.history.step.num] = {k: v for k, v in row.items()
                                          if not k.startswith("_")}
    elif kind in ("config", "run"):
      updates = record.config.update if kind == "config" else record.run.config.update
      logged_config.update({i.key: json.loads(i.value_json) for i in updates})
  # metrics.jsonl, merged per step as W&B merges rows logged at one step.
  want = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for r in map(json.loads, f):
      want.setdefault(r["step"], {}).update({k: v for k, v in r.items() if k != "step"})
  assert sorted(history) == sorted(want) == [2, 4]
  for step, scalars in want.items():
    assert set(history[step]) == set(scalars)
    for k, v in scalars.items():
      assert history[step][k] == pytest.approx(v, rel=1e-9), (step, k)
  assert logged_config["wandb_project"] == "kd_jax_test"
  assert logged_config["student"] == "resnet8" and logged_config["loss"]["ce_weight"] == 1.0


def test_wandb_missing_is_one_clear_config_error(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a, **k: None if name == "wandb" else real(name, *a, **k))
  config = smoke.get_config("kd")
  config.wandb_project = "p"
  with pytest.raises(errors.ConfigError, match=r"config.wandb_project='p'.*pip install wandb"):
    kdc.validate(config, model_names=["resnet8"], num_devices=1)


# ---------------------------------------------------------------------------------------
# Packaging, README and CI agree.


def _requirement_names(path):
  names = []
  with open(os.path.join(REPO, path)) as f:
    for line in f:
      line = line.split("#")[0].strip()
      if line and not line.startswith("-"):
        names.append(re.split(r"[=<>\[ ;]", line)[0].lower().replace("_", "-"))
  return names


def test_pyproject_declares_the_pinned_runtime_dependencies_and_extras():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  def names(specs):
    return {re.split(r"[=<>\[ ;~!]", s)[0].lower().replace("_", "-") for s in specs}
  assert set(_requirement_names("requirements.txt")) <= names(project["dependencies"])
  extras = project["optional-dependencies"]
  assert "torch" in names(extras["torch"])
  dev_only = set(_requirement_names("requirements-dev.txt")) - {"torch"}
  assert dev_only <= names(extras["dev"])


def test_readme_test_command_is_what_ci_runs_and_installs_the_package():
  readme = open(os.path.join(REPO, "README.md")).read()
  ci = open(os.path.join(REPO, ".ci", "run")).read()
  install = re.search(r"^(python3 -m venv .*)# install$", readme, re.M).group(1).strip()
  test = re.search(r"^(python -m pytest .*?)\s+# run the tests", readme, re.M).group(1).strip()
  assert "-e ." in install and "requirements-dev.txt" in install
  assert test in ci.splitlines()
  assert "-m \"not slow\"" in readme or "-m 'not slow'" in readme
  assert "-e ." in ci


def test_every_kd_jax_package_is_packaged():
  """pyproject's package discovery (kd_jax*) finds every folder of Python files."""
  import setuptools  # pylint: disable=g-import-not-at-top
  found = set(setuptools.find_packages(REPO, include=["kd_jax*"]))
  folders = {os.path.relpath(d, REPO).replace(os.sep, ".")
             for d, _, files in os.walk(os.path.join(REPO, "kd_jax"))
             if any(f.endswith(".py") for f in files)}
  assert folders == found


def test_missing_dataset_hints_in_launcher_terms(tmp_path, monkeypatch):
  import socket  # pylint: disable=g-import-not-at-top
  from kd_jax import data  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise OSError("network disabled by test")
  monkeypatch.setattr(socket, "create_connection", refuse)
  with pytest.raises(data.DataError) as info:
    data.load_in_memory("cifar100", "train", data_dir=str(tmp_path / "tfds"))
  message = str(info.value)
  assert "--config.data_dir=" in message and "--config.dataset=synthetic" in message
  assert "docs/data.md" in message and "name='synthetic'" not in message


# ---------------------------------------------------------------------------------------
# README: "Your own data in five minutes", run as written on a generated folder.


def _readme_section(title):
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", readme, re.M | re.S)
  assert match, f"README.md has no section '## {title}'"
  return match.group(1)


def _bash_commands(text):
  """The commands of the ```bash blocks of `text`, backslash continuations joined."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split(" #")[0].strip()
      if line and not line.startswith("#"):
        commands.append(line)
  return commands


@pytest.mark.slow
def test_readme_own_data_section(tmp_path):
  """The section's commands, as written, on a 4-class folder of mixed image sizes: the only
  additions are a small step count and batch size (the folder has 16 training images)."""
  import shlex  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "photos"
  rng = np.random.default_rng(0)
  for split, count in (("train", 4), ("test", 1)):
    for c in range(4):
      os.makedirs(folder / split / f"class_{c}")
      for i in range(count):
        side = 16 if (c + i) % 3 == 2 else 12       # most files 12x12, some 16x16
        colour = np.array([60 * c, 255 - 60 * c, 128], np.uint8)
        pixels = np.clip(colour + rng.integers(-20, 20, (side, side, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / split / f"class_{c}" / f"{i}.png")
  commands = _bash_commands(_readme_section("Your own data in five minutes"))
  kinds = [next((k for k in ("launch.py", "kd_jax.export", "kd_jax.report") if k in c), c)
           for c in commands if not re.match(r"^\w+=", c)]
  assert kinds == ["launch.py", "launch.py", "kd_jax.export", "kd_jax.report"], commands
  small = ["--config.num_train_steps=10", "--config.batch_size=8",
           "--config.eval_batch_size=4", "--config.steps_per_dispatch=1"]
  env = testenv.subprocess_env(1, PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
  for name in ("launch.py", "configs"):   # the commands run from a checkout's root
    os.symlink(os.path.join(REPO, name), tmp_path / name)
  outputs = []
  for command in commands:
    assignment = re.match(r"^(\w+)=(.*)$", command)
    if assignment:
      env[assignment.group(1)] = str(folder)   # DATA=/path/to/folder: the generated folder
      continue
    args = shlex.split(re.sub(r"\$(\w+)", lambda m: env[m.group(1)], command))
    assert args[0] == "python", command
    args[0] = sys.executable
    if args[1] == "launch.py":
      args += small
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600,
                         cwd=tmp_path)
    assert res.returncode == 0, (command, res.stdout[-2000:], res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr
    outputs.append(res.stdout)
  # The teacher run took the class count and a size from the folder and said so.
  assert "num_classes=4: the number of classes of dataset" in outputs[0]
  assert "all resized to 12x12, the most common" in outputs[0]
  for name in ("own_teacher", "own_kd"):
    with open(tmp_path / "workdirs" / name / "config.json") as f:
      saved = json.load(f)
    assert (saved["num_classes"], saved["image_size"]) == (4, 12), name
    assert saved["log_every_steps"] == 1    # a 10-step run logs every step
  with open(tmp_path / "workdirs" / "own_kd" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 11))
  assert any("teacher/top1" in r for r in records)
  torch = pytest.importorskip("torch")
  state = torch.load(tmp_path / "own_student.pth", weights_only=True)["model"]
  assert any(tuple(v.shape) == (4, 64) for v in state.values())   # resnet8's 4-class head
  assert (tmp_path / "own_report" / "report.md").is_file()


# ---------------------------------------------------------------------------------------
# Mistakes with a suggestion: one line, exit 2.


def test_print_config_validates_and_suggests_the_model(tmp_path):
  res = _run("--config=configs/teacher.py:resnt8", "--print_config")
  assert res.returncode == 2, res.stdout[-2000:]
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: config.student='resnt8'"), res.stderr
  assert "did you mean 'resnet8'?" in lines[0]
  assert res.stdout == ""


def test_a_bare_config_key_flag_suggests_the_config_flag(tmp_path):
  res = _run("--config=configs/kd.py", f"--workdir={tmp_path / 'run'}", "--batch_size=32")
  assert res.returncode == 2
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and "did you mean `--config.batch_size=32`?" in lines[0], res.stderr
  res = _run("--config=configs/kd.py", f"--workdir={tmp_path / 'run'}", "--temperature=2")
  assert "`--config.loss.temperature=2`" in res.stderr and res.returncode == 2
  assert not os.path.exists(tmp_path / "run")


def test_a_misspelled_swept_key_gets_did_you_mean():
  from kd_jax.train import sweep  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError, match=r"'loss.temprature' cannot be swept .*did you "
                     r"mean 'loss.temperature'\?"):
    sweep.parse_sweep("loss.temprature=1,2")
  with pytest.raises(errors.ConfigError) as info:
    sweep.parse_sweep("student=resnet8")
  assert "did you mean" not in str(info.value)


def test_a_wrong_model_name_gets_did_you_mean():
  config = smoke.get_config("kd")
  config.student = "resnet8x"
  with pytest.raises(errors.ConfigError, match=r"config.student='resnet8x' is not accepted; did "
                     r"you mean 'resnet8x4'"):
    kdc.validate(config, model_names=["resnet8", "resnet8x4", "resnet32x4"], num_devices=1)


def test_a_short_run_logs_about_ten_times_and_evaluates_about_five_unless_set():
  config = kdc.base_config()
  assert kdc.short_run_log_every(config, 150) == 15          # default 100: a tenth of the run
  assert kdc.short_run_log_every(config, 5) == 1
  assert kdc.short_run_log_every(config, 1000) == 100        # long enough: the default
  config.log_every_steps = 50                                # set: kept
  assert kdc.short_run_log_every(config, 150) == 50
  # Shorter than an epoch: a fraction of an epoch that the loop rounds to whole steps.
  spe = 1000
  frac = kdc.short_run_eval_every(config, 150, spe)
  assert round(frac * spe) == 30 and 150 // round(frac * spe) == 5
  assert kdc.short_run_eval_every(config, 2000, spe) == 1    # a whole epoch or more: default
  config.eval_every_epochs = 2                               # set: kept
  assert kdc.short_run_eval_every(config, 150, spe) == 2
