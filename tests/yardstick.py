"""Float32 tolerances measured on the machine the test runs on.

Two float32 computations of the same thing (per-step calls and one lax.scan, 1 and 8 devices,
vmapped and lone runs) sum in different orders, and a few training steps amplify that round-off
by a factor the problem sets (BatchNorm over small batches magnifies it most). How large the
amplified round-off is depends on the CPU's vector width, its thread count and XLA's code path,
so no constant measured on one machine bounds it on another.

The yardstick: the reference computation run once more from a start perturbed by a few float32
ulps (`perturb`), the same program, so its distance from the reference is the problem's own
amplification of float32 round-off, measured here. Two correct paths may differ by a small
multiple of it (FACTOR); a defect (a skipped step, a wrong shard, a wrong random stream) moves
the result by orders of magnitude more, which each test shows on a broken variant or states.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)   # 2**-23, the spacing of float32 numbers at 1.0
# Relative size of the yardstick's perturbation: 4 ulps, each element up or down at random.
REL = 4 * EPS32
# Two correct paths may differ by this many yardsticks. Their round-off enters every operation
# of every step, the yardstick's only the start, so the paths' difference is the larger; the
# measured ratios are given where each test uses it.
FACTOR = 30.0


def perturb(tree: Any, rel: float = REL, seed: int = 0) -> Any:
  """`tree` with every floating leaf multiplied by (1 + rel * s), s = +-1 at random per element:
  the same values to a few float32 ulps (integer leaves unchanged). Runs on the leaves' devices
  and keeps their shardings, so a compiled step takes the result without recompiling."""
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  out = []
  for x in leaves:
    if np.issubdtype(x.dtype, np.floating) and x.size:
      sign = rng.choice(np.array([-1.0, 1.0], np.float32), size=x.shape)
      factor = (1.0 + rel * sign).astype(x.dtype)
      if isinstance(x, jax.Array):
        factor = jax.device_put(factor, x.sharding)
      x = x * factor
    out.append(x)
  return jax.tree.unflatten(treedef, out)


def rel_diff(a: float, b: float, scale: float) -> float:
  """|a - b| / scale."""
  return abs(float(a) - float(b)) / scale


def leaf_diffs(a: Any, b: Any) -> dict[str, float]:
  """max |a - b| per leaf of two pytrees of one structure, keyed by the leaf's path."""
  a, b = jax.device_get((a, b))
  paths = jax.tree_util.tree_flatten_with_path(a)[0]
  leaves_b = jax.tree.leaves(b)
  assert len(paths) == len(leaves_b)
  return {jax.tree_util.keystr(p): float(np.max(np.abs(np.asarray(x, np.float64)
                                                       - np.asarray(y, np.float64)), initial=0))
          for (p, x), y in zip(paths, leaves_b)}


def leaf_scales(a: Any) -> dict[str, float]:
  """max |a| per leaf, keyed by the leaf's path."""
  a = jax.device_get(a)
  return {jax.tree_util.keystr(p): float(np.max(np.abs(np.asarray(x, np.float64)), initial=0))
          for p, x in jax.tree_util.tree_flatten_with_path(a)[0]}


def leaf_bounds(reference: Any, perturbed: Any, factor: float = FACTOR,
                floor_ulps: float = 16.0) -> dict[str, float]:
  """Per leaf: factor x (max |perturbed - reference|), at least floor_ulps float32 ulps of the
  leaf's largest value (round-off of one pass, for a leaf the perturbation leaves unmoved)."""
  scales = leaf_scales(reference)
  return {k: max(factor * d, floor_ulps * EPS32 * scales[k])
          for k, d in leaf_diffs(reference, perturbed).items()}


def assert_within(a: Any, b: Any, bounds: Mapping[str, float], what: str = "") -> dict:
  """Every leaf of a and b differs by at most its bound; returns the per-leaf differences."""
  diffs = leaf_diffs(a, b)
  assert diffs.keys() == bounds.keys()
  over = {k: (d, bounds[k]) for k, d in diffs.items() if not d <= bounds[k]}
  assert not over, f"{what}: leaves off by more than the measured bound (diff, bound): {over}"
  return diffs


def assert_beyond(a: Any, b: Any, bounds: Mapping[str, float], margin: float = 100.0,
                  what: str = "") -> float:
  """A defect check: some leaf of a and b differs by more than margin x its bound. Returns the
  largest ratio diff / bound."""
  diffs = leaf_diffs(a, b)
  ratio = max(diffs[k] / bounds[k] for k in diffs if bounds.get(k))
  assert ratio > margin, f"{what}: a broken variant stays within {ratio:.3g} x the bound"
  return ratio


def scalar_bound(pairs: list[tuple[float, float]], factor: float = FACTOR,
                 floor: float = 64 * EPS32) -> float:
  """A relative bound from (reference, yardstick run) value pairs: factor x the largest relative
  distance between them, at least `floor` (round-off of the logged sums themselves)."""
  measured = max((abs(a - b) / max(abs(a), abs(b), 1e-30) for a, b in pairs), default=0.0)
  return max(factor * measured, floor)


def perturbed_init(build: Callable) -> Callable:
  """Wraps loop.build_trainer so that the trainer's fresh state has perturbed parameters and
  BatchNorm statistics (for monkeypatching a whole training run into a yardstick run)."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  def wrapped(*args, **kwargs):
    trainer = build(*args, **kwargs)
    init = trainer.init_state

    def init_state():
      s = init()
      return s.replace(params=perturb(s.params), batch_stats=perturb(s.batch_stats, seed=1))
    return dataclasses.replace(trainer, init_state=init_state)
  return wrapped
