"""Model zoo part B (VGG, MobileNets, ShuffleNets): shapes, parameter counts, training, bf16.

Parity: random PyTorch twins (kd_jax.torch_models, randomised in tests/torch_twins_b.py)
imported through kd_jax.models.
"""
from __future__ import annotations

import copy
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import models
from kd_jax.models import mobilenet, shufflenet, vgg
import yardstick  # pylint: disable=g-import-not-at-top,wrong-import-order

# docs/models.md parameter counts (100 classes; MobileNetV1 at its 1000 ImageNet classes).
PARAM_COUNTS = {
    "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436,
    "vgg19": 20_086_692, "MobileNetV2": 812_836, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528,
    "MobileNetV1": 4_231_976,
}
NAMES = list(PARAM_COUNTS)
# One model per family (vgg11..vgg19 are vgg8's code with more layers per stage).
FAMILIES = ["vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "MobileNetV1"]
# Pooled widths; DHKD aux heads add d*C+C (linear) or d*200+200+400+200*C+C.
POOLED = {"vgg8": 512, "MobileNetV2": 1280, "ShuffleV1": 960, "ShuffleV2": 1024,
          "MobileNetV1": 1024}


def _spec(name: str):
  """(num_classes, image size, batch) used for a model in these tests."""
  return (1000, 224, 1) if name == "MobileNetV1" else (100, 32, 2)


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _abstract_vars(name: str, aux: Optional[str] = None):
  c, s, _ = _spec(name)
  model = models.create(name, c, aux_head=aux)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, s, s, 3))))


def test_registry_creates_every_part_b_model():
  families = {**vgg.MODELS, **mobilenet.MODELS, **shufflenet.MODELS}
  assert set(families) == set(NAMES)
  for name, factory in families.items():
    assert type(models.create(name, 10)) is type(factory(10))


@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_reference_table(name):
  assert _count(_abstract_vars(name)["params"]) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", FAMILIES)
def test_aux_heads_are_sibling_subtrees_with_dhkd_sizes(name):
  c, _, _ = _spec(name)
  d = POOLED[name]
  base = _count(_abstract_vars(name)["params"])
  lin = _abstract_vars(name, "linear")
  nonlin = _abstract_vars(name, "nonlinear")
  assert "head" in lin["params"] and "aux_head" in lin["params"]
  assert _count(lin["params"]) - base == d * c + c
  assert _count(nonlin["params"]) - base == d * 200 + 200 + 2 * 200 + 200 * c + c
  assert set(nonlin["batch_stats"]["aux_head"]) == {"net_2"}


@functools.lru_cache(maxsize=None)
def _initialized(name: str):
  """(model, input batch, initialised variables) for `name`, shared between tests."""
  c, s, b = _spec(name)
  model = models.create(name, c)
  x = jax.random.normal(jax.random.key(1), (b, s, s, 3))
  return model, x, _run_fast(model.init, jax.random.key(0), x)


def _run_fast(fn, *args):
  """Jits and runs fn with LLVM -O0: halves XLA:CPU compile time, the dominant cost here."""
  return jax.jit(fn).lower(*args).compile(_FAST_COMPILE)(*args)


_FAST_COMPILE = {"xla_backend_optimization_level": 0}


# The deeper VGGs' parameter counts and PyTorch parity are tested like every name.
@pytest.mark.parametrize("name", FAMILIES)
def test_train_eval_forward_and_backward(name):
  model, x, variables = _initialized(name)
  b, c = x.shape[0], _spec(name)[0]
  labels = jnp.arange(b) % c
  params, stats = variables["params"], variables["batch_stats"]

  def train_and_eval(params, stats, x):
    def loss_fn(p):
      logits, new_vars = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                     mutable=["batch_stats"])
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1).mean()
      return nll, (logits, new_vars["batch_stats"])

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    eval_logits = model.apply({"params": params, "batch_stats": new_stats}, x)
    moved = jax.tree.map(lambda old, new: jnp.any(old != new), stats, new_stats)
    grad_l1 = jax.tree.map(lambda g: jnp.abs(g).sum(), grads)
    return loss, logits, eval_logits, moved, grad_l1

  loss, logits, eval_logits, moved, grad_l1 = _run_fast(train_and_eval, params, stats, x)
  assert np.isfinite(float(loss))
  for out in (logits, eval_logits):
    assert out.shape == (b, c) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
  # Train mode normalises with batch statistics, eval mode with the (updated) running ones.
  assert not np.allclose(np.asarray(logits), np.asarray(eval_logits))
  # Every running statistic moved towards its batch statistic.
  assert all(bool(m) for m in jax.tree.leaves(moved))
  # Gradients are finite everywhere and reach both ends of the network.
  assert all(np.isfinite(float(g)) for g in jax.tree.leaves(grad_l1))
  first = {"MobileNetV2": "conv1_0", "MobileNetV1": "model_0_0"}.get(
      name, "block0_0" if name.startswith("vgg") else "conv1")
  assert float(grad_l1["head"]["kernel"]) > 0
  assert float(grad_l1[first]["kernel"]) > 0


def test_nonlinear_aux_head_trains_with_dropout():
  model = models.create("vgg8", 10, aux_head="nonlinear")
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))

  def init_and_train(key, x):
    variables = model.init(key, x)
    return model.apply(variables, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(2)})

  (logits, aux), new_vars = _run_fast(init_and_train, jax.random.key(0), x)
  assert logits.shape == aux.shape == (4, 10)
  assert logits.dtype == aux.dtype == jnp.float32
  assert not np.allclose(np.asarray(logits), np.asarray(aux))
  assert bool(jnp.any(new_vars["batch_stats"]["aux_head"]["net_2"]["mean"] != 0))


@pytest.mark.parametrize("name", ["vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"])
def test_bfloat16_compute_keeps_float32_logits(name):
  model, x, variables = _initialized(name)
  ref = np.asarray(jax.jit(model.apply)(variables, x))
  bf16 = models.create(name, _spec(name)[0], dtype=jnp.bfloat16)
  out = jax.jit(bf16.apply)(variables, x)
  assert out.dtype == jnp.float32
  # Params stay float32 whatever the compute dtype.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  err = np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref)
  assert 0 < err < 0.05, err


def test_channel_shuffle_matches_nchw_permute():
  x = np.arange(2 * 3 * 2 * 12, dtype=np.float32).reshape(2, 3, 2, 12)  # NHWC
  n, h, w, c = x.shape
  g = 3
  nchw = x.transpose(0, 3, 1, 2)
  want = nchw.reshape(n, g, c // g, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
  got = np.asarray(shufflenet.channel_shuffle(jnp.asarray(x), g))
  np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="aux_head"):
    models.create("vgg8", 10, aux_head="mlp").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="224"):
    models.create("MobileNetV1", 10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


# ------------------------------------------------------------------ PyTorch parity
# (name, aux head, checkpoint naming). 'dhkd' renames the main head the way DHKD's model files
# do (MobileNetV2: bare `classifier` Linear; MobileNetV1: `classifier` instead of `fc`).
PARITY_CASES = [
    ("vgg8", None, "mdistiller"), ("vgg13", None, "mdistiller"),
    ("MobileNetV2", None, "mdistiller"), ("ShuffleV1", None, "mdistiller"),
    ("ShuffleV2", None, "mdistiller"), ("MobileNetV1", None, "mdistiller"),
    ("vgg8", "linear", "dhkd"), ("vgg8", "nonlinear", "dhkd"),
    ("ShuffleV2", "linear", "dhkd"), ("ShuffleV2", "nonlinear", "dhkd"),
    ("MobileNetV2", "nonlinear", "dhkd"), ("MobileNetV1", "linear", "dhkd"),
]
_DHKD_HEAD_KEYS = {"MobileNetV2": ("classifier.0.", "classifier."),
                   "MobileNetV1": ("fc.", "classifier.")}


@pytest.fixture(scope="module")
def twins():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  import torch_twins_b  # pylint: disable=import-outside-toplevel
  return torch_twins_b


@pytest.mark.parametrize("name", NAMES)
def test_torch_twin_param_count_matches_reference_table(twins, name):
  model = twins.build(name, _spec(name)[0])
  assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name,aux,naming", PARITY_CASES)
def test_imported_torch_weights_give_torch_logits(twins, tmp_path, name, aux, naming):
  import torch  # pylint: disable=import-outside-toplevel
  c, s, _ = _spec(name)
  b = 1 if name == "MobileNetV1" else 3
  tmodel = twins.randomize_(twins.build(name, c, aux), seed=3).eval()
  x = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    want = tmodel(x)
    want64 = copy.deepcopy(tmodel).double()(x.double())
  state = tmodel.state_dict()
  if naming == "dhkd" and name in _DHKD_HEAD_KEYS:
    old, new = _DHKD_HEAD_KEYS[name]
    state = {new + k[len(old):] if k.startswith(old) else k: v for k, v in state.items()}
    assert any(k.startswith(new) for k in state) and not any(k.startswith(old) for k in state)
  path = tmp_path / "ckpt.pth"
  torch.save({"model": state}, path)

  variables = models.import_torch_checkpoint(str(path), name, c, aux_head=aux)
  assert set(variables) == {"params", "batch_stats"}
  model = models.create(name, c, aux_head=aux)
  apply = jax.jit(model.apply)
  nhwc = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  got = apply(variables, nhwc)

  want, want64, got = (v if isinstance(v, tuple) else (v,) for v in (want, want64, got))
  assert len(got) == len(want)
  # Yardstick: PyTorch's own float32 error against its float64 run of the same weights;
  # kd_jax's logits stay within yardstick.FACTOR of it (float32 convolutions in another order).
  bounds = []
  for g, w, w64 in zip(got, want, want64):
    assert g.dtype == jnp.float32 and g.shape == w.shape
    err, bound = yardstick.near_reference(g, w.numpy(), w64.numpy())
    assert err <= bound, (err, bound)
    bounds.append(bound)
  # A defect is far outside it: the stem's kernel imported with its colour channels reversed
  # (BGR for RGB).
  conv = next(p for p, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
              if v.ndim == 4 and v.shape[2] == 3)
  flipped = dict(variables, params=jax.tree_util.tree_map_with_path(
      lambda p, v: v[:, :, ::-1] if p == conv else v, variables["params"]))
  bad = apply(flipped, nhwc)
  bad = bad if isinstance(bad, tuple) else (bad,)
  moved = float(np.max(np.abs(np.asarray(bad[0], np.float64) - want64[0].numpy())))
  # MobileNetV1's random twin barely reads its one input image (reversing the stem's channels
  # moved its logits by 2.2e-5, 2.4 x the bound; 2026-12-04): there the check is weaker.
  assert moved > (2 if name == "MobileNetV1" else 100) * bounds[0], (moved, bounds[0])
