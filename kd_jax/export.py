"""Export a kd_jax-trained student to PyTorch (state_dict or TorchScript) or a flax .msgpack.

    python -m kd_jax.export WORKDIR --out student.pth [--best] [--format pth|torchscript|msgpack]
    python -m kd_jax.export SWEEP_WORKDIR --out DIR [--run NAME]

pth (default): {'model': state_dict} with the reference implementation's key names (mdistiller /
CRD CIFAR models, DHKD's auxiliary heads, torchvision's ImageNet ResNets), so the PyTorch class
(`kd_jax.torch_models.build(name, num_classes)`, or the authors' own) accepts it with
load_state_dict(strict=True). The state_dict is checked against the importer before it is
written: importing the file gives back exactly the exported variables.
torchscript: the PyTorch model traced in eval mode with those weights (the same keys), returning
the main logits (a DHKD auxiliary head is left out); `torch.jit.load(path)` runs it with neither
kd_jax nor the authors' code installed.
Every file gets a metadata sidecar PATH.json (model, classes, image size, the input
normalisation); a TorchScript file also carries it inside (extra file `kd_jax.json`). Files are
written to a temporary name and renamed, so an interrupted export leaves no partial file.
A sweep workdir (WORKDIR/runs/NAME) exports one run with --run NAME, or every run into the
directory --out, one file per run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from etils import epath
import flax
import jax
import numpy as np

from kd_jax import models
from kd_jax.errors import USER_ERRORS, ConfigError, WeightsFileError

PyTree = Any
# format -> file extension of its files (the first is the default).
FORMATS = {"pth": ".pth", "torchscript": ".pt", "msgpack": ".msgpack"}
METADATA_NAME = "kd_jax.json"  # the extra file inside a TorchScript export
INPUT_SPEC = ("float32 NCHW RGB, x = (pixels / 255 - mean) / std per channel, pixels in "
              "[0, 255], image_size x image_size")
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
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ConfigError(f"{path}: not valid JSON ({e})") from None


def metadata(config: Mapping[str, Any], *, fmt: str, checkpoint: str) -> Dict[str, Any]:
  """What a user of the exported file needs besides the weights, from the run's config.json.

  mean/std are the run's resolved normalisation (an image folder's own statistics when it
  computed them); image_size the run's input size.
  """
  name = config["student"]
  size = int(config.get("image_size") or 0) or (
      224 if name.startswith("imagenet_") or name == "MobileNetV1" else 32)
  mean = [float(v) for v in config.get("mean") or ()] or None
  std = [float(v) for v in config.get("std") or ()] or None
  if mean is None or std is None:
    from kd_jax.data import sources  # pylint: disable=import-outside-toplevel
    if config.get("dataset") in sources.KNOWN_DATASETS:
      m, s = sources.resolve_mean_std(config["dataset"], mean or (), std or (),
                                      train_images=None)
      mean, std = list(m), list(s)
  from kd_jax import __version__  # pylint: disable=import-outside-toplevel
  return {"model": name, "num_classes": int(config["num_classes"]),
          "aux_head": config.get("aux_head") or None, "format": fmt,
          "outputs": ("logits [N, num_classes]" if fmt == "torchscript" or not
                      config.get("aux_head") else "(logits, aux_logits)"),
          "image_size": size, "mean": mean, "std": std, "input": INPUT_SPEC,
          "dataset": config.get("dataset"), "checkpoint": checkpoint,
          "kd_jax_version": __version__}


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
  """write(tmp) then rename tmp -> path: `path` is the old file or the whole new one."""
  tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                     f".{os.path.basename(path)}.tmp{os.getpid()}")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _main_head_module(variables: PyTree, name: str, num_classes: int, step: int):
  """kd_jax.torch_models' model without an auxiliary head, the exported weights loaded (every
  key but the auxiliary head's, strictly), in eval mode: forward returns the main logits."""
  from kd_jax.models import torch_import  # pylint: disable=import-outside-toplevel
  from kd_jax import torch_models  # pylint: disable=import-outside-toplevel
  torch = torch_import._require_torch()  # pylint: disable=protected-access
  state_dict = to_state_dict(variables, name, num_batches_tracked=step)
  aux = _head_prefixes(name).get("aux_head")
  model = torch_models.build(name, num_classes, None)
  result = model.load_state_dict(
      {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=False)
  stray = [k for k in result.unexpected_keys if not (aux and k.startswith(aux + "."))]
  if result.missing_keys or stray:
    raise WeightsFileError(f"internal error: the exported {name} state_dict does not fit "
                           f"kd_jax.torch_models.build({name!r}) (missing "
                           f"{result.missing_keys[:3]}, unexpected {stray[:3]})")
  return model.eval()


def _write_torchscript(path: str, model, image_size: int, meta: Mapping[str, Any]) -> None:
  """Traces `model` (eval mode) on a [2, 3, S, S] input and saves it with `meta` inside."""
  import warnings  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
  with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter("ignore", torch.jit.TracerWarning)
    traced = torch.jit.trace(model, example)
    want, got = model(example), traced(example)
  if not torch.equal(want, got):
    raise WeightsFileError(f"internal error: the traced {meta['model']} does not reproduce the "
                           f"eager model's logits")
  _atomic_write(path, lambda tmp: torch.jit.save(
      traced, tmp, _extra_files={METADATA_NAME: json.dumps(meta, indent=1)}))


def write_variables(variables: PyTree, config: Mapping[str, Any], out: str, *, fmt: str = "pth",
                    checkpoint: str = "", step: int = 0) -> Dict[str, Any]:
  """Writes one student (its flax variables, the run's config.json dict) to `out` in `fmt`,
  plus the metadata sidecar out.json; returns the metadata."""
  if fmt not in FORMATS:
    raise ConfigError(f"--format={fmt!r}; accepted: {', '.join(FORMATS)}")
  name, num_classes = config["student"], int(config["num_classes"])
  variables = jax.tree.map(lambda x: np.asarray(x, np.float32), dict(variables))
  meta = metadata(config, fmt=fmt, checkpoint=checkpoint)
  if fmt == "msgpack":
    blob = flax.serialization.msgpack_serialize(
        {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})})
    _atomic_write(out, lambda tmp: epath.Path(tmp).write_bytes(blob))
  elif fmt == "pth":
    state_dict = to_state_dict(variables, name, num_batches_tracked=step)
    from kd_jax.models import torch_import  # pylint: disable=import-outside-toplevel
    torch = torch_import._require_torch()  # pylint: disable=protected-access
    _atomic_write(out, lambda tmp: torch.save(
        {"model": {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}}, tmp))
  else:
    model = _main_head_module(variables, name, num_classes, step)
    _write_torchscript(out, model, meta["image_size"], meta)
  from kd_jax import torch_models  # pylint: disable=import-outside-toplevel
  text = json.dumps(meta, indent=1) + "\n"
  _atomic_write(torch_models.sidecar_path(out), lambda tmp: epath.Path(tmp).write_text(text))
  return meta


def _sweep_names(workdir: str, config: Mapping[str, Any]) -> Optional[List[str]]:
  """The run names of a sweep workdir in the checkpoint's stacking order, or None (one run)."""
  if not config.get("sweep") or not (epath.Path(workdir) / "runs").is_dir():
    return None
  from kd_jax.train import sweep  # pylint: disable=import-outside-toplevel
  axes = sweep.parse_sweep(config["sweep"])
  names = [",".join(f"{k}={v}" for (k, _), v in zip(axes, combo))
           for combo in itertools.product(*[vals for _, vals in axes])]
  missing = [n for n in names if not (epath.Path(workdir) / "runs" / n).is_dir()]
  if missing:
    raise ConfigError(f"sweep workdir {workdir!r}: runs/{missing[0]} is missing (config.sweep="
                      f"{config['sweep']!r} names {len(names)} runs)")
  return names


def _variables_of(workdir: str, which: str, names: Optional[List[str]],
                  run: Optional[str]) -> Tuple[PyTree, str]:
  """(variables, checkpoint path) of the run, or of sweep run `run` (one slice, never stacked)."""
  from kd_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  if names is None:
    return ckpt_lib.restore_variables(workdir, which)
  run_dir = epath.Path(workdir) / "runs" / run
  if (run_dir / "checkpoints").is_dir() or (run_dir / "best").is_dir():
    return ckpt_lib.restore_variables(os.fspath(run_dir), which)
  if which == "best":
    raise ConfigError(f"sweep run {run!r} keeps no best model (a sweep checkpoints its runs' "
                      f"last states); export the last state: drop --best")
  stacked, read_from = ckpt_lib.restore_variables(workdir, "latest")
  leading = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(stacked)}
  if leading != {len(names)}:
    raise ConfigError(f"sweep workdir {workdir!r}: its checkpoint does not hold {len(names)} "
                      f"stacked runs (leading sizes {sorted(map(str, leading))})")
  i = names.index(run)
  return jax.tree.map(lambda x: np.asarray(x)[i], stacked), f"{read_from} (run {run})"


def _describe(meta: Mapping[str, Any], n_params: int, out: str) -> str:
  return (f"{meta['model']} (num_classes={meta['num_classes']}, aux_head={meta['aux_head']!r}): "
          f"{n_params:,} params from {meta['checkpoint']} -> {out} ({meta['format']})")


def _input_line(meta: Mapping[str, Any]) -> str:
  fmt = lambda v: "unknown" if v is None else "(" + ", ".join(f"{x:.4f}" for x in v) + ")"
  return (f"input: {meta['image_size']}x{meta['image_size']} RGB, float32 NCHW, "
          f"x = (pixels / 255 - mean) / std with mean={fmt(meta['mean'])} "
          f"std={fmt(meta['std'])} (recorded in the .json beside each file)")


def export(workdir: str, out: str, *, best: bool = False, fmt: str = "pth",
           run: Optional[str] = None) -> str:
  """Writes the run's last (or best) student to `out`; returns the lines to print.

  `out` is a file, or an existing directory (the file is then named after the run). A sweep
  workdir exports run `run`, or every run into the directory `out`.
  """
  if fmt not in FORMATS:
    raise ConfigError(f"--format={fmt!r}; accepted: {', '.join(FORMATS)}")
  if not epath.Path(workdir).is_dir():
    raise ConfigError(f"workdir {workdir!r} does not exist (expected a kd_jax run workdir)")
  config = _run_config(workdir)
  names = _sweep_names(workdir, config)
  if names is None and run is not None:
    raise ConfigError(f"--run {run!r}: {workdir!r} is not a sweep workdir (no runs/ in it)")
  if names is not None and run is not None and run not in names:
    raise ConfigError(f"--run {run!r} is not a run of this sweep; accepted: {', '.join(names)}")
  ext = FORMATS[fmt]
  if names is not None and run is None:  # every run of the sweep, one file each
    if os.path.exists(out) and not os.path.isdir(out):
      raise ConfigError(f"--out {out!r} is a file; a sweep exports one file per run into a "
                        f"directory: pass --out DIR, or --run NAME (one of {', '.join(names)})")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
      raise ConfigError(f"--out {out!r}: directory {os.path.dirname(os.path.abspath(out))!r} "
                        f"does not exist")
    os.makedirs(out, exist_ok=True)
    targets = [(n, os.path.join(out, n + ext)) for n in names]
  else:
    if os.path.isdir(out):
      base = run or os.path.basename(os.path.normpath(os.path.abspath(workdir)))
      out = os.path.join(out, base + ext)
    elif out.endswith(os.sep):
      raise ConfigError(f"--out {out!r}: directory does not exist")
    elif not os.path.isdir(os.path.dirname(os.path.abspath(out))):
      raise ConfigError(f"--out {out!r}: directory {os.path.dirname(os.path.abspath(out))!r} "
                        f"does not exist")
    targets = [(run, out)]
  lines, meta = [], {}
  for name, path in targets:
    run_config = config if name is None else _run_config(
        os.fspath(epath.Path(workdir) / "runs" / name))
    variables, read_from = _variables_of(workdir, "best" if best else "latest", names, name)
    step = os.path.basename(read_from.split(" ")[0])
    meta = write_variables(variables, run_config, path, fmt=fmt, checkpoint=read_from,
                           step=int(step) if step.isdigit() else 0)
    n = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(variables["params"]))
    lines.append(_describe(meta, n, path))
  lines.append(_input_line(meta))
  return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit code 2
    self.exit(2, f"error: {message} (see python -m kd_jax.export --help)\n")


def main(argv: Optional[List[str]] = None) -> int:
  parser = _Parser(prog="python -m kd_jax.export",
                   description="Export a kd_jax student to a PyTorch .pth ({'model': "
                               "state_dict}, reference key names), a TorchScript file or a "
                               "flax .msgpack, with its input normalisation in OUT.json.")
  parser.add_argument("workdir", help="a kd_jax run workdir (or a sweep workdir)")
  parser.add_argument("--out", required=True,
                      help="output file, or a directory (one file per run of a sweep)")
  parser.add_argument("--best", action="store_true",
                      help="export the best-eval student instead of the last state")
  parser.add_argument("--format", default="pth", choices=list(FORMATS),
                      help="pth (default: state_dict), torchscript or msgpack")
  parser.add_argument("--run", default=None,
                      help="sweep workdirs: the run NAME to export (default: every run)")
  args = parser.parse_args(argv)
  try:
    print(export(args.workdir, args.out, best=args.best, fmt=args.format, run=args.run))
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
