"""Every paper-table cell of scripts/reproduce.py builds a valid config, docs/reproduce.md lists it,
and --run runs the cells from any directory."""
import json
import os

import pytest

from kd_jax import config as kdc
from kd_jax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import reproduce  # pylint: disable=g-import-not-at-top,wrong-import-position

CELLS = [(t, *c) for t in reproduce.TABLES for c in reproduce.cells(t)]


def _config_from_command(cmd):
  flag = next(a for a in cmd if a.startswith("--config="))
  path, arg = flag.split("=", 1)[1].split(":", 1)
  module = __import__(os.path.basename(path)[:-3])
  config = module.get_config(arg)
  for a in cmd:
    if a.startswith("--config.") and "=" in a:
      key, value = a[len("--config."):].split("=", 1)
      config[key] = type(config[key])(value)
  return config


@pytest.mark.parametrize("table,method,teacher,student", CELLS)
def test_cell_config_is_valid(table, method, teacher, student):
  cmd = reproduce.command(table, method, teacher, student, 3, "T", "W")
  config = _config_from_command(cmd)
  kdc.validate(config, model_names=models.names(), num_devices=1)
  assert (config.teacher, config.student, config.seed) == (teacher, student, 3)
  base = method.split("+")[0].split("(")[0]   # 'rkkd(dkd)': method rkkd on base dkd
  assert config.method == base
  if "(" in method:
    assert config.base_method == method.split("(")[1].split(")")[0].split("+")[0]
  assert config.loss.standardize == method.endswith("+ls")
  assert config.dataset == ("imagenet2012" if table.startswith("imagenet") else "cifar100")


def test_docs_list_one_command_per_cell():
  page = open(os.path.join(REPO, "docs", "reproduce.md")).read()
  table = reproduce.markdown()
  assert table.strip() in page, ("docs/reproduce.md is out of date: "
                                 "python scripts/reproduce.py --markdown")
  assert table.count("python launch.py") == len(CELLS)


# Cells added after the snapshot was taken (they have no "before"): one ImageNet cell and the
# cells of the tables added since (the LS grid, RKKD on every base) that no older table has.
_NEW_TABLES = ("cifar_ls_grid", "rkkd")
NEW_CELLS = {"configs/kd.py:imagenet_resnet34,imagenet_resnet18,ls"} | {
    next(a for a in reproduce.command(t, *c, 0, "T", "W") if a.startswith("--config="))[9:]
    for t in _NEW_TABLES for c in reproduce.cells(t)} - {
    next(a for a in reproduce.command(t, *c, 0, "T", "W") if a.startswith("--config="))[9:]
    for t in reproduce.TABLES if t not in _NEW_TABLES for c in reproduce.cells(t)}


def _cell_configs():
  out = {}
  for table, method, teacher, student in CELLS:
    cmd = reproduce.command(table, method, teacher, student, 0, "T", "W")
    flag = next(a for a in cmd if a.startswith("--config="))[len("--config="):]
    path, arg = flag.split(":", 1)
    out[flag] = __import__(os.path.basename(path)[:-3]).get_config(arg)
  return out


def _assert_resolves_as(config, want, flag):
  """Every snapshot key has its old value; keys added since then hold their schema default."""
  def flat(tree, prefix=""):   # the loss block key by key: new loss keys are new keys
    out = {}
    for k, v in tree.items():
      out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
  got = flat(json.loads(config.to_json(sort_keys=True)))
  default = flat(json.loads(kdc.base_config().to_json(sort_keys=True)))
  want = flat(want)
  for key, value in want.items():
    assert got[key] == value, (flag, key)
  for key in set(got) - set(want):
    assert got[key] == default[key], (flag, key, "a key added after the snapshot")


def test_every_cell_resolves_as_before_the_method_registry():
  """tests/data/config_snapshot.json: resolved configs taken before the registry refactor."""
  with open(os.path.join(REPO, "tests", "data", "config_snapshot.json")) as f:
    snapshot = json.load(f)
  cells = _cell_configs()
  assert set(cells) - set(snapshot) == NEW_CELLS - set(snapshot)
  for flag, config in cells.items():
    if flag not in NEW_CELLS:
      _assert_resolves_as(config, snapshot[flag], flag)
  # The config files without an argument, and the smoke configs of every method, too.
  for flag, want in snapshot.items():
    if flag not in cells:
      path, _, arg = flag.partition(":")
      config = __import__(os.path.basename(path)[:-3]).get_config(arg or None)
      _assert_resolves_as(config, want, flag)


@pytest.mark.parametrize("argv,needle", [
    (["--methods", "rkd"], "--methods: rkd is not a method of the tables; accepted: ctkd, "
                           "ctkd+ls, dhkd, dist, dkd"),
    (["--table", "cifar_ls", "--methods", "kd"], "selects no cell; the methods of cifar_ls: "
                                                 "dkd+ls, kd+ls"),
    (["--table", "cifar"], "--table='cifar' is not a table; accepted: all, cifar_same"),
    (["--seeds", "0,x"], "--seeds='0,x': expected a comma list of integers"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, needle, capsys):
  assert reproduce.main(argv) == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  assert captured.err.count("\n") == 1 and needle in captured.err


def test_run_from_another_directory_reports_each_failing_cell_and_passes_overrides(tmp_path):
  """--run without an activated venv and outside the repo: this interpreter and the repo's
  launch.py; the override after `--` reaches the cell (which fails on it at validation): one
  line naming the command and the error, then the summary."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JAX_PLATFORMS": "cpu",
         "TF_CPP_MIN_LOG_LEVEL": "3"}
  res = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "reproduce.py"),
                        "--table", "imagenet_ls", "--seeds", "1", "--run", "--",
                        "--config.batch_size=0"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
  assert res.returncode == 1, res.stderr[-2000:]
  assert "Traceback" not in res.stdout + res.stderr
  failed = [l for l in res.stdout.splitlines() if l.startswith("FAILED")]
  assert len(failed) == 1, res.stdout
  for line in failed:
    assert "--config.seed=1 --config.batch_size=0 -- " in line, line
    assert line.split(" -- ")[-1].startswith("error: config.batch_size=0"), line
    assert os.path.join(REPO, "launch.py") in line and line.split()[3] == sys.executable
    assert f"--workdir={tmp_path}{os.sep}workdirs{os.sep}imagenet_ls{os.sep}" in line
  assert res.stdout.strip().splitlines()[-1] == "reproduce: 0 done, 1 failed, 0 skipped (of 1 cell)"


def test_run_stops_on_error_only_when_asked(monkeypatch, capsys):
  calls = []

  def fake(cmd):
    calls.append(cmd)
    return (0, "") if len(calls) == 1 else (2, "error: boom")

  monkeypatch.setattr(reproduce, "run_cell", fake)
  argv = ["--table", "cifar_ls", "--methods", "kd+ls", "--run"]
  n = len([c for c in reproduce.cells("cifar_ls") if c[0] == "kd+ls"])
  assert reproduce.main(argv + ["--stop-on-error", "--", "--config.num_epochs=1"]) == 1
  out = capsys.readouterr().out
  assert len(calls) == 2 and all(c[-1] == "--config.num_epochs=1" for c in calls)
  assert out.count("FAILED (exit 2)") == 1 and "-- error: boom" in out
  assert out.strip().splitlines()[-1] == (f"reproduce: 1 done, 1 failed, {n - 2} skipped "
                                          f"(of {n} cells)")
  calls.clear()
  assert reproduce.main(argv) == 1           # without: every cell runs
  assert len(calls) == n
  assert capsys.readouterr().out.strip().splitlines()[-1] == (
      f"reproduce: 1 done, {n - 1} failed, 0 skipped (of {n} cells)")
  assert reproduce.main(argv + ["--", "oops"]) == 2   # an override that is not a flag
  assert "override 'oops'" in capsys.readouterr().err
