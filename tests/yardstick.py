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

Where a float64 run of a reference implementation is cheap (PyTorch, a naive JAX form under
x64), the yardstick is that reference's own float32 error instead (`near_reference`).

Written bounds, for small computations where a yardstick would cost more than the test: a
float32 sum of n terms, in any order and with any blocking, is within gamma(n) x sum |terms| of
the exact sum (`gamma`: Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed.,
eq. 4.4 and Lemma 3.1, u = EPS32 / 2), on every IEEE machine; `ulps(n)` is n float32 ulps
relative, for a chain of n operations each within one ulp (elementwise exp/log/tanh of XLA and
PyTorch are within 1-2 ulps: count them twice).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)   # 2**-23, the spacing of float32 numbers at 1.0
U32 = EPS32 / 2                            # float32 unit round-off: one rounding's relative error
# Relative size of the yardstick's perturbation: 4 ulps, each element up or down at random.
REL = 4 * EPS32
# Two correct paths may differ by this many yardsticks. Their round-off enters every operation
# of every step, the yardstick's only the start, so the paths' difference is the larger; the
# measured ratios are given where each test uses it.
FACTOR = 30.0


def gamma(n: int, u: float = U32) -> float:
  """Relative bound (to sum |terms|) on the round-off of a sum of n terms in any order:
  n u / (1 - n u)."""
  assert n * u < 1, n
  return n * u / (1 - n * u)


def ulps(n: float) -> float:
  """n float32 ulps as a relative tolerance (n x EPS32)."""
  return n * EPS32


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
      if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):  # (eval_shape: as is)
        factor = jax.device_put(factor, x.sharding)
      x = x * factor
    out.append(x)
  return jax.tree.unflatten(treedef, out)


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


COUNTS = ("top1", "top5")   # metric names that count argmax hits


def logged(records: list[dict]) -> dict[tuple[int, str], float]:
  """{(step, key): value} of every train/* and eval/* value in metrics.jsonl records."""
  return {(r["step"], k): float(v) for r in records for k, v in r.items()
          if k.startswith(("train/", "eval/"))}


def logged_bounds(reference: dict, yard: dict, flip: float, factor: float = FACTOR,
                  floor: float = 64 * EPS32, values: dict | None = None) -> dict:
  """Absolute bounds for the logged values of a run, from its yardstick run (`logged` dicts).

  Values logged at one step by one pass (train or eval) share one yardstick: the largest
  |reference - yardstick run| among them (a loss term's round-off is a part of the loss's, so
  a small term is not held to a tighter bound than the loss it adds to). A value's bound is
  factor x that, at least `floor` x |value| (64 ulps: the round-off of a logged mean itself).
  Accuracies count argmax hits; round-off may flip the argmax of a near-tie, so they may also
  move by one flip (`flip`: 1 / the fewest examples behind one value). `values`: the values
  (of another run of the same problem) to bound, instead of `reference`'s."""
  assert reference.keys() == yard.keys(), sorted(set(reference) ^ set(yard))
  group = lambda key: (key[0], key[1].split("/")[0])
  measured = {}
  for key, v in reference.items():
    if not key[1].endswith(COUNTS):
      measured[group(key)] = max(measured.get(group(key), 0.0), abs(v - yard[key]))
  bounds = {}
  for key, v in (reference if values is None else values).items():
    b = max(factor * measured.get(group(key), 0.0), floor * abs(v))
    bounds[key] = max(b, flip) if key[1].endswith(COUNTS) else b
  return bounds


def assert_logged_within(reference: dict, other: dict, bounds: dict, what: str = "") -> float:
  """Every logged value of `other` within its bound of `reference`; returns the largest
  |difference| / bound."""
  assert sorted(other) == sorted(reference), what
  over = {k: (reference[k], other[k], bounds[k]) for k in reference
          if not abs(reference[k] - other[k]) <= bounds[k]}
  assert not over, f"{what}: (reference, value, bound) beyond the measured bound: {over}"
  return max((abs(reference[k] - other[k]) / bounds[k] for k in reference if bounds[k]),
             default=0.0)


def perturbed_init(build: Callable) -> Callable:
  """Wraps loop.build_trainer so that the trainer's fresh state has perturbed parameters and
  BatchNorm statistics (for monkeypatching a whole training run into a yardstick run)."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  def wrapped(*args, **kwargs):
    trainer = build(*args, **kwargs)
    init = trainer.init_state

    def init_state(*args, **kwargs):   # (seed=...: a sweep's runs)
      s = init(*args, **kwargs)
      return s.replace(params=perturb(s.params), batch_stats=perturb(s.batch_stats, seed=1))
    return dataclasses.replace(trainer, init_state=init_state)
  return wrapped


def near_reference(got: Any, want: Any, want64: Any, factor: float = FACTOR,
                   floor_ulps: float = 64.0) -> tuple[float, float]:
  """(max |got - want64|, its bound) for `got`, a float32 computation of what a reference
  implementation computes as `want` in float32 and `want64` in float64. The yardstick is the
  reference's own float32 error max |want - want64|, measured on this machine; got may be
  `factor` of it away from want64, at least floor_ulps float32 ulps of max |want64|."""
  got, want, want64 = (np.asarray(v, np.float64) for v in (got, want, want64))
  err = float(np.max(np.abs(got - want64)))
  own = float(np.max(np.abs(want - want64)))
  return err, max(factor * own, floor_ulps * EPS32 * float(np.max(np.abs(want64))))

