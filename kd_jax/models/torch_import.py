"""Strict PyTorch -> Flax checkpoint import for the zoo (mdistiller/CRD/DHKD teachers, torchvision).

Keys map by name (torch path with '.'->'_' == flax path joined by '_'); torch is imported lazily.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

from etils import epath
import flax
import jax
import numpy as np

from kd_jax.errors import WeightsFileError

# Torch parameter/buffer name -> (flax collection, flax leaf); 'weight' depends on the layer.
_LEAVES = {
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_MAX_LISTED = 20


def _require_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "converting a PyTorch teacher (.pth) needs the optional dependency torch, once; the "
        "CPU wheel is enough: pip install torch==2.13.0 --extra-index-url "
        "https://download.pytorch.org/whl/cpu (or pip install -e '.[torch]' with that index); "
        "the rest of kd_jax does not need it") from e
  return torch


def load_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a torch.save file -> {key: float32 array}, from {'model': sd}, {'state_dict': sd} or sd.

  Uses weights_only=True; drops `num_batches_tracked`; strips a DataParallel `module.` prefix.
  """
  path = os.fspath(path)
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"PyTorch checkpoint file not found: {path!r}")
  head = epath.Path(path).open("rb").read(4) if "://" in path else open(path, "rb").read(4)
  if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip archive or a pickle
    raise WeightsFileError(
        f"{path!r} is not a PyTorch checkpoint: torch.save writes a zip archive (or a pickle), "
        f"this file starts with the bytes {head.hex(' ') or '(none: it is empty)'}; expected a "
        f".pth/.pt file written by torch.save")
  torch = _require_torch()
  try:
    # Local files by name; object-store files (gs://...) read through epath first.
    source = path if "://" not in path else io.BytesIO(epath.Path(path).read_bytes())
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # torch's notes on pickle protocols
      obj = torch.load(source, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsFileError(f"cannot read PyTorch checkpoint {path!r}: "
                           f"{_load_failure(e)}") from None
  state_dict = _find_state_dict(obj, path)
  keys = list(state_dict)
  if keys and all(k.startswith("module.") for k in keys):
    state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
  out: Dict[str, np.ndarray] = {}
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    if not isinstance(value, torch.Tensor):
      raise WeightsFileError(f"entry {key!r} of {path!r} is a {type(value).__name__}, not a tensor")
    out[key] = value.detach().to("cpu", torch.float32).numpy()
  return out


def _load_failure(e: BaseException) -> str:
  """Why torch.load(weights_only=True) failed, in one line, without torch's advice to re-run
  with weights_only=False (which would execute the file's code)."""
  text = str(e)
  if "Unsupported global" in text:
    name = text.split("Unsupported global", 1)[1].split("\n")[0].strip(" :")
    return (f"it holds Python objects ({name[:120]}) that torch.load(weights_only=True) does not "
            f"unpickle; re-save just the state_dict with torch.save({{'model': "
            f"model.state_dict()}}, path)")
  if "WeightsUnpickler error" in text:
    why = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the")[0].split())
    return f"it is not a torch.save file, or it is corrupt (unpickling stopped: {why[:120]})"
  first = " ".join(text.split(". ")[0].split())
  return f"the file is truncated or corrupt ({type(e).__name__}: {first[:160]})"


def _find_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
  if isinstance(obj, Mapping):
    for wrapper in ("model", "state_dict"):
      if isinstance(obj.get(wrapper), Mapping):
        return obj[wrapper]
    if obj and all(isinstance(k, str) for k in obj) and not any(
        isinstance(v, Mapping) for v in obj.values()):
      return obj
    raise WeightsFileError(f"no state_dict in {path!r}: expected {{'model': state_dict}}, "
                          f"{{'state_dict': state_dict}} or a bare state_dict; top-level keys: "
                          f"{sorted(map(str, obj))[:_MAX_LISTED]}")
  raise WeightsFileError(f"no state_dict in {path!r}: it holds a {type(obj).__name__}")


def _rename(module_path: str, renames: Mapping[str, str]) -> str:
  """Applies the longest matching torch-prefix rename on '.'-component boundaries.

  A rename of a Sequential-wrapped head `X.0` also accepts the bare `X` (DHKD's MobileNetV2
  head is a bare Linear) unless `X` has a rename of its own.
  """
  table = dict(renames)
  for src, dst in renames.items():
    if src.endswith(".0") and src[:-2] not in table:
      table[src[:-2]] = dst
  best = None
  for src in table:
    if module_path == src or module_path.startswith(src + "."):
      if best is None or len(src) > len(best):
        best = src
  if best is None:
    return module_path
  return table[best] + module_path[len(best):]


def _flat_slots(target: Mapping[str, Any]) -> Dict[Tuple[str, str], Tuple[Tuple[str, ...], Any]]:
  """(flax module path joined by '_', leaf) -> (full path incl. collection, shape)."""
  slots = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in flax.traverse_util.flatten_dict(dict(target.get(collection, {}))).items():
      key = ("_".join(path[:-1]), path[-1])
      if key in slots:
        raise WeightsFileError(f"ambiguous flax names: {path} and {slots[key][0]} both map to "
                              f"{key[0]}.{key[1]}")
      slots[key] = ((collection, *path), tuple(leaf.shape))
  return slots


def _to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:  # conv O, I/g, kh, kw -> kh, kw, I/g, O
    return value.transpose(2, 3, 1, 0)
  if leaf == "kernel" and value.ndim == 2:  # linear out, in -> in, out
    return value.T
  return value


def convert_state_dict(state_dict: Mapping[str, np.ndarray], target: Mapping[str, Any],
                       renames: Mapping[str, str], *, source: str = "<state_dict>",
                       model: str = "<model>") -> Dict[str, Any]:
  """Maps a torch state_dict onto the variable structure `target` (arrays or ShapeDtypeStructs).

  Every target leaf must be filled exactly once and every source key consumed; otherwise a
  WeightsFileError lists the missing, unexpected and mis-shaped keys with source and model.
  """
  slots = _flat_slots(target)
  filled: Dict[Tuple[str, ...], np.ndarray] = {}
  origin: Dict[Tuple[str, ...], str] = {}
  unexpected: List[str] = []
  mismatched: List[str] = []
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    module_path, _, attr = key.rpartition(".")
    flat = _rename(module_path, renames).replace(".", "_")
    if attr == "weight":
      leaf = ("params", "kernel") if (flat, "kernel") in slots else ("params", "scale")
    elif attr in _LEAVES:
      leaf = _LEAVES[attr]
    else:
      unexpected.append(key)
      continue
    slot = slots.get((flat, leaf[1]))
    if slot is None or slot[0][0] != leaf[0]:
      unexpected.append(key)
      continue
    path, shape = slot
    value = _to_flax(np.asarray(value, np.float32), leaf[1])
    if path in filled:
      raise WeightsFileError(f"{source!r}: keys {origin[path]!r} and {key!r} both map to "
                            f"{'/'.join(path)} of {model}")
    if tuple(value.shape) != shape:
      mismatched.append(f"{key}: checkpoint {tuple(np.shape(state_dict[key]))} -> flax "
                        f"{tuple(value.shape)}, model {'/'.join(path)} expects {shape}")
      continue
    filled[path] = value
    origin[path] = key
  missing = sorted("/".join(p) for p, _ in slots.values() if p not in filled)
  if missing or unexpected or mismatched:
    raise WeightsFileError(_mismatch_message(source, model, missing, unexpected, mismatched,
                                            renames))
  return flax.traverse_util.unflatten_dict(filled)


def _mismatch_message(source: str, model: str, missing: List[str], unexpected: List[str],
                      mismatched: List[str], renames: Mapping[str, str]) -> str:
  def listing(items: List[str]) -> str:
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more

  lines = [f"checkpoint {source!r} does not match model {model!r}:"]
  if missing:
    lines.append(f"  missing (in the model, not in the checkpoint): {listing(missing)}")
  if unexpected:
    lines.append(f"  unexpected (in the checkpoint, not in the model): {listing(unexpected)}")
  if mismatched:
    lines.append(f"  wrong shape: {listing(mismatched)}")
  heads = [src for src, dst in renames.items() if dst == "head"]
  if any(any(m.startswith(h + ".") for h in heads) for m in mismatched):
    lines.append("  (the classifier head differs: is num_classes right?)")
  aux = [src for src, dst in renames.items() if dst == "aux_head"]
  if any(any(u.startswith(a + ".") for a in aux) for u in unexpected):
    lines.append("  (the checkpoint has a DHKD auxiliary head: pass aux_head='linear' or "
                 "'nonlinear')")
  return "\n".join(lines)


def import_torch_checkpoint(path: str, name: str, num_classes: int, *,
                            aux_head: Optional[str] = None) -> Dict[str, Any]:
  """Reads `path` into {'params', 'batch_stats'} (numpy float32) for create(name, num_classes)."""
  from kd_jax import models  # pylint: disable=import-outside-toplevel
  module = models.create(name, num_classes, aux_head=aux_head)
  size = models.input_size(name)
  target = jax.eval_shape(lambda: models.init(module, jax.random.PRNGKey(0), size))
  state_dict = load_torch_state_dict(path)
  model = f"{name}(num_classes={num_classes}, aux_head={aux_head!r})"
  variables = convert_state_dict(state_dict, target, models.torch_renames(name),
                                 source=os.fspath(path), model=model)
  return {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}


def _main(argv: Optional[List[str]] = None) -> None:
  """CLI: check a checkpoint against a model, print its sha256 and parameter count, and with
  --out save the variables with flax.serialization (msgpack). Errors: one line, exit code 2."""
  import sys  # pylint: disable=import-outside-toplevel
  from kd_jax import errors  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(
      prog="python -m kd_jax.models.torch_import",
      description="Check a PyTorch (mdistiller/CRD/DHKD/torchvision) checkpoint against a kd_jax "
                  "model: prints its sha256 and parameter count; --out also writes the Flax "
                  "variables (.msgpack).")
  parser.add_argument("checkpoint", help="the .pth file")
  parser.add_argument("--model", required=True, help="registry name, e.g. resnet32x4")
  parser.add_argument("--num-classes", type=int, required=True)
  parser.add_argument("--aux-head", choices=("linear", "nonlinear"), default=None)
  parser.add_argument("--out", default=None, help="output .msgpack file (optional)")
  args = parser.parse_args(argv)
  try:
    variables = import_torch_checkpoint(args.checkpoint, args.model, args.num_classes,
                                        aux_head=args.aux_head)
    with epath.Path(args.checkpoint).open("rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    if args.out:
      tmp = f"{args.out}.tmp{os.getpid()}"
      with open(tmp, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(variables))
      os.replace(tmp, args.out)
  except (*errors.USER_ERRORS, ValueError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(2)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  print(f"{args.model}: {n:,} params from {args.checkpoint} (sha256 {digest})"
        + (f" -> {args.out}" if args.out else ""))


if __name__ == "__main__":
  _main()
