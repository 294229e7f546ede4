"""Every paper-table cell of scripts/reproduce.py builds a valid config, and the README lists it."""
import os
import sys

import pytest

from kd_jax import config as kdc
from kd_jax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, os.path.join(REPO, "configs"))
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
  base = method.split("+")[0]
  assert config.method == base
  assert config.loss.standardize == method.endswith("+ls")
  assert config.dataset == ("imagenet2012" if table == "imagenet" else "cifar100")


def test_readme_lists_one_command_per_cell():
  readme = open(os.path.join(REPO, "README.md")).read()
  table = reproduce.markdown()
  assert table.strip() in readme, "README is out of date: python scripts/reproduce.py --markdown"
  assert table.count("python launch.py") == len(CELLS)
