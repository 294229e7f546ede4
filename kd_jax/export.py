"""Export a kd_jax-trained student back to PyTorch (or to a flax .msgpack).

    python -m kd_jax.export WORKDIR --out student.pth [--best] [--format pth|msgpack]

The .pth holds {'model': state_dict} with the reference implementation's key names (mdistiller /
CRD CIFAR models, DHKD's auxiliary heads, torchvision's ImageNet ResNets), so the authors' model
class accepts it with load_state_dict(strict=True). The state_dict is checked against the
importer before it is written: importing the file gives back exactly the exported variables.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Mapping, Optional

from etils import epath
import flax
import jax
import numpy as np

from kd_jax import models
from kd_jax.errors import USER_ERRORS, ConfigError, WeightsFileError

PyTree = Any
FORMATS = ("pth", "msgpack")
# flax leaf -> torch attribute, per collection.
_PARAM_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_LEAVES = {"mean": "running_mean", "var": "running_var"}


def _head_prefixes(name: str) -> Dict[str, str]:
  """flax head name ('head', 'aux_head') -> torch module path (the first, mdistiller's, name)."""
  out: Dict[str, str] = {}
  for src, dst in models.torch_renames(name).items():
    out.setdefault(dst, src)
  return out


def _torch_module_path(flax_path: tuple, heads: Mapping[str, str]) -> str:
  """('layer1_0', 'conv1') -> 'layer1.0.conv1'; head modules take their torch name.

  Flax submodules are named after the torch attribute path with '.' -> '_', and no torch
  module name in the zoo contains '_', so the mapping inverts by replacing '_' with '.'.
  """
  first, rest = flax_path[0], flax_path[1:]
  parts = [heads[first]] if first in heads else [first.replace("_", ".")]
  parts += [p.replace("_", ".") for p in rest]
  return ".".join(parts)


def _to_torch(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:  # kh, kw, I/g, O -> O, I/g, kh, kw
    return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
  if leaf == "kernel" and value.ndim == 2:  # in, out -> out, in
    return np.ascontiguousarray(value.T)
  return np.ascontiguousarray(value)


def to_state_dict(variables: PyTree, name: str, *,
                  num_batches_tracked: Optional[int] = None) -> Dict[str, np.ndarray]:
  """Flax variables of models.create(name, ...) -> a torch-layout state_dict of numpy arrays.

  With num_batches_tracked set, every BatchNorm also gets that `num_batches_tracked` entry
  (int64), as torch writes it. Raises WeightsFileError if the result does not import back
  exactly (a safety net: the importer and the exporter must agree).
  """
  heads = _head_prefixes(name)
  out: Dict[str, np.ndarray] = {}
  flat_params = flax.traverse_util.flatten_dict(dict(variables.get("params", {})))
  flat_stats = flax.traverse_util.flatten_dict(dict(variables.get("batch_stats", {})))
  for path, value in flat_params.items():
    module = _torch_module_path(path[:-1], heads)
    out[f"{module}.{_PARAM_LEAVES[path[-1]]}"] = _to_torch(np.asarray(value), path[-1])
  bn_modules: List[str] = []
  for path, value in flat_stats.items():
    module = _torch_module_path(path[:-1], heads)
    out[f"{module}.{_STAT_LEAVES[path[-1]]}"] = np.ascontiguousarray(np.asarray(value))
    if module not in bn_modules:
      bn_modules.append(module)
  _check_round_trip(out, variables, name)
  if num_batches_tracked is not None:
    for module in bn_modules:
      out[f"{module}.num_batches_tracked"] = np.asarray(int(num_batches_tracked), np.int64)
  return out


def _check_round_trip(state_dict: Mapping[str, np.ndarray], variables: PyTree, name: str):
  from kd_jax.models import torch_import  # pylint: disable=import-outside-toplevel
  back = torch_import.convert_state_dict(state_dict, variables, models.torch_renames(name),
                                         source="<export>", model=name)
  want = flax.traverse_util.flatten_dict(dict(variables))
  got = flax.traverse_util.flatten_dict(dict(back))
  if set(want) != set(got) or any(
      not np.array_equal(np.asarray(want[k], np.float32), got[k]) for k in want):
    raise WeightsFileError(f"internal error: the exported {name} state_dict does not import "
                           f"back to the same variables")


def _run_config(workdir: str) -> dict:
  path = epath.Path(workdir) / "config.json"
  if not path.is_file():
    raise ConfigError(f"{workdir!r} is not a kd_jax run workdir: no config.json in it")
  return json.loads(path.read_text())


def export(workdir: str, out: str, *, best: bool = False, fmt: str = "pth") -> str:
  """Writes the run's last (or best) student to `out`; returns a one-line summary."""
  from kd_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  if fmt not in FORMATS:
    raise ConfigError(f"--format={fmt!r}; accepted: {', '.join(FORMATS)}")
  if not epath.Path(workdir).is_dir():
    raise ConfigError(f"workdir {workdir!r} does not exist (expected a kd_jax run workdir)")
  config = _run_config(workdir)
  name, aux = config["student"], config.get("aux_head") or None
  variables, read_from = ckpt_lib.restore_variables(workdir, "best" if best else "latest")
  variables = jax.tree.map(lambda x: np.asarray(x, np.float32), variables)
  step = os.path.basename(read_from)
  out_dir = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(out_dir):
    raise OSError(f"--out {out!r}: directory {out_dir!r} does not exist")
  if fmt == "msgpack":
    with open(out, "wb") as f:
      f.write(flax.serialization.msgpack_serialize(
          {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}))
  else:
    state_dict = to_state_dict(variables, name,
                               num_batches_tracked=int(step) if step.isdigit() else 0)
    from kd_jax.models import torch_import  # pylint: disable=import-outside-toplevel
    torch = torch_import._require_torch()  # pylint: disable=protected-access
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}}, out)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  return (f"{name} (num_classes={config.get('num_classes')}, aux_head={aux!r}): {n:,} params "
          f"from {read_from} -> {out}")


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit code 2
    self.exit(2, f"error: {message} (see python -m kd_jax.export --help)\n")


def main(argv: Optional[List[str]] = None) -> int:
  parser = _Parser(prog="python -m kd_jax.export",
                   description="Export a kd_jax student to a PyTorch .pth ({'model': "
                               "state_dict}, reference key names) or a flax .msgpack.")
  parser.add_argument("workdir", help="a kd_jax run workdir")
  parser.add_argument("--out", required=True, help="output file (.pth or .msgpack)")
  parser.add_argument("--best", action="store_true",
                      help="export the best-eval student instead of the last state")
  parser.add_argument("--format", default="pth", choices=FORMATS, help="pth (default) or msgpack")
  args = parser.parse_args(argv)
  try:
    print(export(args.workdir, args.out, best=args.best, fmt=args.format))
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
