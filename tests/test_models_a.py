"""Model zoo part A (CIFAR ResNet, resnetv2, WRN, ImageNet ResNet) and the shared registry.

Shapes, parameter counts (docs/models.md), inits, train/eval forward + backward, aux heads, bf16.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import models
from kd_jax.models import imagenet_resnet, layers, resnet, resnetv2, wrn
import yardstick  # pylint: disable=g-import-not-at-top,wrong-import-order

# The zoo table of docs/models.md: parameters at 100 classes (ImageNet models at 1000) and state_dict
# entries (params + BN buffers + num_batches_tracked) where the table gives them.
PARAM_COUNTS = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756,
    "resnet44": 667_188, "resnet56": 861_620, "resnet110": 1_736_564,
    "resnet8x4": 1_233_540, "resnet32x4": 7_433_860,
    "ResNet18": 11_220_132, "ResNet50": 23_705_252,
    "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780, "wrn_40_2": 2_255_156,
    "imagenet_resnet18": 11_689_512, "imagenet_resnet34": 21_797_672,
    "imagenet_resnet50": 25_557_032,
}
STATE_ENTRIES = {
    "resnet8": 56, "resnet14": 92, "resnet20": 128, "resnet32": 200, "resnet44": 272,
    "resnet56": 344, "resnet110": 668, "resnet8x4": 62, "resnet32x4": 206,
    "ResNet18": 122, "ResNet50": 320,
    "wrn_16_1": 82, "wrn_16_2": 83, "wrn_40_1": 226, "wrn_40_2": 227,
}
# Pooled-feature widths of each model (the width its classifier reads).
POOLED = {**{f"resnet{d}": 64 for d in (8, 14, 20, 32, 44, 56, 110)}, "resnet8x4": 256,
          "resnet32x4": 256, "ResNet18": 512, "ResNet50": 2048, "wrn_16_1": 64,
          "wrn_16_2": 128, "wrn_40_1": 64, "wrn_40_2": 128, "imagenet_resnet18": 512,
          "imagenet_resnet34": 512, "imagenet_resnet50": 2048}
NAMES = list(PARAM_COUNTS)


def _spec(name: str):
  """(num_classes, image size, batch) used for `name` in these tests."""
  return (1000, 224, 1) if name.startswith("imagenet_") else (100, 32, 2)


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _abstract(name: str, aux: Optional[str] = None, dtype=jnp.float32):
  c, s, _ = _spec(name)
  model = models.create(name, c, aux_head=aux, dtype=dtype)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, s, s, 3))))


def test_registry_lists_every_family():
  got = models.names()
  assert got == sorted(got)
  assert set(NAMES) <= set(got)
  for family in (resnet, resnetv2, wrn, imagenet_resnet):
    assert family in models.FAMILIES
    for name, factory in family.MODELS.items():
      assert type(models.create(name, 10)) is type(factory(10))
  # The VGG, MobileNet and ShuffleNet families are part of the same registry.
  assert {"vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"} <= set(got)


def test_unknown_name_and_bad_aux_head_raise_with_choices():
  with pytest.raises(ValueError, match="resnet8x4") as e:
    models.create("resnet9", 100)
  assert "resnet9" in str(e.value)
  with pytest.raises(ValueError, match="nonlinear"):
    models.create("resnet8", 100, aux_head="mlp")
  with pytest.raises(ValueError, match="num_classes"):
    models.create("resnet8", 0)
  with pytest.raises(ValueError, match="wrn_40_2"):
    models.input_size("wrn_40_3")


def test_input_sizes():
  for name in NAMES:
    assert models.input_size(name) == (224 if name.startswith("imagenet_") else 32)


@pytest.mark.parametrize("name", NAMES)
def test_param_and_state_counts_match_reference(name):
  v = _abstract(name)
  assert _count(v["params"]) == PARAM_COUNTS[name]
  if name in STATE_ENTRIES:
    n_params, n_stats = len(jax.tree.leaves(v["params"])), len(jax.tree.leaves(v["batch_stats"]))
    # torch adds num_batches_tracked once per BN, i.e. once per (mean, var) pair.
    assert n_params + n_stats + n_stats // 2 == STATE_ENTRIES[name]


def test_dhkd_aux_head_sizes_resnet8x4():
  base = _count(_abstract("resnet8x4")["params"])
  assert _count(_abstract("resnet8x4", "linear")["params"]) - base == 25_700
  assert _count(_abstract("resnet8x4", "nonlinear")["params"]) - base == 71_900


@pytest.mark.parametrize("name", NAMES)
def test_aux_heads_are_siblings_on_the_pooled_feature(name):
  c, _, _ = _spec(name)
  d = POOLED[name]
  lin, nonlin = _abstract(name, "linear"), _abstract(name, "nonlinear")
  assert lin["params"]["head"]["kernel"].shape == (d, c)
  assert lin["params"]["aux_head"]["kernel"].shape == (d, c)
  assert nonlin["params"]["aux_head"]["net_0"]["kernel"].shape == (d, 200)
  assert nonlin["params"]["aux_head"]["net_4"]["kernel"].shape == (200, c)
  assert set(nonlin["batch_stats"]["aux_head"]["net_2"]) == {"mean", "var"}


# One model per building block and stem: the other names repeat the same code with other block
# counts or widths (resnet14..110 and resnet32x4 are CifarResNet like resnet8/resnet8x4,
# wrn_16_2/40_x are WideResNet like wrn_16_1, ResNet18 and imagenet_resnet34/50 are ResNetV2 with
# the blocks and stems covered by ResNet50 and imagenet_resnet18). Every name still has its
# parameter count and PyTorch parity tested; compiling each train pass costs 5-20 s of CPU.
TRAIN_PASS_NAMES = ["resnet8", "resnet8x4", "wrn_16_1", "ResNet50", "imagenet_resnet18"]


@pytest.mark.parametrize("name", TRAIN_PASS_NAMES)
def test_train_eval_forward_and_backward(name):
  c, s, b = _spec(name)
  model = models.create(name, c)
  x = jax.random.normal(jax.random.key(1), (b, s, s, 3))
  labels = jnp.arange(b) % c
  variables = jax.jit(model.init)(jax.random.key(0), x[:1])
  params, stats = variables["params"], variables["batch_stats"]

  def loss_fn(p):
    logits, new_vars = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"])
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()
    return ce, (logits, new_vars["batch_stats"])

  # One compiled program each (op-by-op dispatch compiles every layer's ops separately).
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, (logits, new_stats)), grads = value_and_grad(params)
  assert logits.shape == (b, c) and logits.dtype == jnp.float32
  assert np.isfinite(float(loss))
  # Training mode moved the running statistics (momentum 0.9 towards the batch stats).
  assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
  assert not np.allclose(new_stats["bn1"]["mean"], stats["bn1"]["mean"])
  grad_leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grad_leaves)
  assert float(jnp.abs(grads["conv1"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["head"]["kernel"]).sum()) > 0
  eval_logits = jax.jit(lambda v: model.apply(v, x, train=False))(
      {"params": params, "batch_stats": stats})
  assert eval_logits.shape == (b, c) and bool(jnp.all(jnp.isfinite(eval_logits)))
  # Eval uses running stats (0/1 at init), training the batch statistics: they differ.
  assert not np.allclose(eval_logits, logits, atol=1e-5)


def test_aux_forward_returns_both_logits_and_dropout_only_in_training():
  model = models.create("resnet8", 10, aux_head="nonlinear")
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  v = models.init(model, jax.random.key(0), 32)
  assert set(v) == {"params", "batch_stats"}
  assert {"head", "aux_head"} <= set(v["params"])
  logits, aux = model.apply(v, x, train=False)
  assert logits.shape == aux.shape == (4, 10)
  assert not np.allclose(logits, aux)
  (t_logits, t_aux), upd = model.apply(v, x, train=True, mutable=["batch_stats"],
                                       rngs={"dropout": jax.random.key(2)})
  assert t_aux.shape == (4, 10)
  assert not np.allclose(upd["batch_stats"]["aux_head"]["net_2"]["mean"], 0.0)
  lin = models.create("resnet8", 10, aux_head="linear")
  out = lin.apply(models.init(lin, jax.random.key(0), 32), x)
  assert isinstance(out, tuple) and out[1].shape == (4, 10)


def test_init_follows_reference_rules():
  v = models.init(models.create("wrn_16_2", 100), jax.random.key(0), 32)
  p, bs = v["params"], v["batch_stats"]
  # Convs: kaiming fan-out normal, std = sqrt(2 / (k*k*out)).
  k = np.asarray(p["block3_layer_1"]["conv2"]["kernel"])  # 3x3, 128 -> 128
  assert k.shape == (3, 3, 128, 128)
  np.testing.assert_allclose(k.std(), math.sqrt(2 / (9 * 128)), rtol=0.05)
  assert abs(k.mean()) < 0.05 * k.std()
  # BN: gamma 1, beta 0, running 0/1.
  np.testing.assert_array_equal(p["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(p["bn1"]["bias"], 0.0)
  np.testing.assert_array_equal(bs["bn1"]["var"], 1.0)
  # WRN head: PyTorch default weight U(+-1/sqrt(128)), zero bias.
  w = np.asarray(p["head"]["kernel"])
  bound = 1 / math.sqrt(128)
  assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
  np.testing.assert_array_equal(p["head"]["bias"], 0.0)
  # CIFAR ResNet head bias: PyTorch default U(+-1/sqrt(fan_in)) with the real fan_in (256).
  r = models.init(models.create("resnet8x4", 1000), jax.random.key(1), 32)["params"]["head"]
  b = np.asarray(r["bias"])
  assert np.abs(b).max() <= 1 / 16 and np.abs(b).max() > 0.95 / 16
  assert abs(float(b.mean())) < 0.01


def test_linear_layer_uses_real_fan_in_for_bias():
  lin = layers.dense(7, name="x")
  v = lin.init(jax.random.key(0), jnp.zeros((1, 10_000)))
  b = np.asarray(v["params"]["bias"])
  assert np.abs(b).max() <= 0.01  # 1/sqrt(10000), not 1/sqrt(7)
  y = lin.apply(v, jnp.ones((2, 10_000)))
  # A float32 sum of 10000 terms: its round-off depends on the order. Yardstick: the same layer
  # with its inputs (the kernel's rows) in another order, against the float64 sum.
  kernel = np.asarray(v["params"]["kernel"])
  want64 = kernel.astype(np.float64).sum(0) + b.astype(np.float64)
  rows = np.random.default_rng(0).permutation(10_000)
  moved = lin.apply({"params": {"kernel": kernel[rows], "bias": b}}, jnp.ones((2, 10_000)))
  err, bound = yardstick.near_reference(y, moved, np.broadcast_to(want64, (2, 7)))
  assert err <= bound, (err, bound)
  assert np.abs(b).max() > 10 * bound   # the bias is far above it: a lost bias would show


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_1"])
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  abstract = _abstract(name, "linear", dtype=jnp.bfloat16)
  assert {a.dtype for a in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  f32 = models.create(name, 100, aux_head="linear")
  v = f32.init(jax.random.key(0), x)
  # Non-trivial running stats so that eval mode is not just a scaled identity.
  v = {"params": v["params"], "batch_stats": f32.apply(v, x, train=True,
                                                       mutable=["batch_stats"])[1]["batch_stats"]}
  bf16 = models.create(name, 100, aux_head="linear", dtype=jnp.bfloat16)
  ref, ref_aux = f32.apply(v, x)
  got, got_aux = bf16.apply(v, x)
  assert got.dtype == got_aux.dtype == jnp.float32
  scale = float(jnp.abs(ref).max())
  np.testing.assert_allclose(got, ref, atol=0.05 * scale + 1e-3)
  np.testing.assert_allclose(got_aux, ref_aux, atol=0.05 * float(jnp.abs(ref_aux).max()) + 1e-3)
  assert not np.array_equal(got, ref)  # bf16 was really used


# ------------------------------------------------- parity with the PyTorch twins (importer)
# Every part-A name once without a head of its own, and the DHKD heads on each CIFAR family.
PARITY_CASES = [(name, None, "model") for name in NAMES] + [
    ("resnet8", "linear", "model"), ("resnet8x4", "nonlinear", "model"),
    ("ResNet18", "nonlinear", "model"), ("wrn_16_2", "linear", "model"),
    ("wrn_40_1", "nonlinear", "model"),
    # The other file layouts: a bare state_dict, DataParallel's `module.` prefix.
    ("resnet20", None, "bare"), ("wrn_16_1", None, "data_parallel"),
    ("imagenet_resnet18", None, "bare"),
]


@pytest.fixture(scope="module")
def twins():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  import torch_twins_a  # pylint: disable=import-outside-toplevel
  return torch_twins_a


@pytest.mark.parametrize("name", NAMES)
def test_torch_twin_param_count_matches_reference_table(twins, name):
  model = twins.build(name, _spec(name)[0])
  assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]
  assert len(model.state_dict()) == STATE_ENTRIES.get(name, len(model.state_dict()))


@pytest.mark.parametrize("name,aux,layout", PARITY_CASES)
def test_imported_torch_weights_give_torch_logits(twins, tmp_path, name, aux, layout):
  """Eval-mode logits of the converted weights equal the PyTorch model's (1e-4 relative)."""
  import torch  # pylint: disable=import-outside-toplevel
  c, s, _ = _spec(name)
  b = 2 if s == 224 else 4
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(b, 3, s, s, generator=gen)
  calib = torch.randn(8 if s == 32 else 2, 3, s, s, generator=gen)
  tmodel = twins.randomize_(twins.build(name, c, aux), calib, seed=5)
  with torch.no_grad():
    want = tmodel(x)
    want64 = copy.deepcopy(tmodel).double()(x.double())
  state = tmodel.state_dict()
  if layout == "data_parallel":
    state = {"module." + k: v for k, v in state.items()}
  path = tmp_path / "ckpt.pth"
  torch.save(state if layout in ("bare", "data_parallel") else
             {"model": state, "epoch": 240, "accuracy": 79.4}, path)

  variables = models.import_torch_checkpoint(str(path), name, c, aux_head=aux)
  assert set(variables) == {"params", "batch_stats"}
  model = models.create(name, c, aux_head=aux)
  apply = jax.jit(model.apply)
  nhwc = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  got = apply(variables, nhwc)
  want, want64, got = (v if isinstance(v, tuple) else (v,) for v in (want, want64, got))
  assert len(got) == len(want) == (1 if aux is None else 2)
  # Yardstick: PyTorch's own float32 error against its float64 run of the same weights;
  # kd_jax's logits stay within yardstick.FACTOR of it (float32 convolutions in another order).
  bounds = []
  for g, w, w64 in zip(got, want, want64):
    assert g.dtype == jnp.float32 and g.shape == w.shape
    assert np.std(w.numpy()) > 1e-2  # the logits are not trivially constant
    err, bound = yardstick.near_reference(g, w.numpy(), w64.numpy())
    assert err <= bound, (err, bound)
    bounds.append(bound)
  # A defect is far outside it: the stem's kernel imported with its colour channels reversed
  # (BGR for RGB).
  conv = _first_conv_path(variables["params"])
  flipped = dict(variables, params=jax.tree_util.tree_map_with_path(
      lambda p, v: v[:, :, ::-1] if p == conv else v, variables["params"]))
  bad = apply(flipped, nhwc)
  bad = bad if isinstance(bad, tuple) else (bad,)
  assert float(np.max(np.abs(np.asarray(bad[0], np.float64) - want64[0].numpy()))) > 100 * bounds[0]


def _first_conv_path(params):
  """The key path of the stem's convolution kernel (HWIO with 3 input channels)."""
  return next(p for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
              if v.ndim == 4 and v.shape[2] == 3)


def test_import_names_the_first_mismatch(twins, tmp_path):
  """Wrong architecture / class count / missing aux head: one error naming file and keys."""
  import torch  # pylint: disable=import-outside-toplevel
  path = tmp_path / "r8.pth"
  torch.save({"model": twins.build("resnet8", 100, "linear").state_dict()}, path)
  with pytest.raises(ValueError, match=r"fc.weight.*\(100, 64\)") as e:
    models.import_torch_checkpoint(str(path), "resnet8", 10, aux_head="linear")
  assert str(path) in str(e.value) and "num_classes" in str(e.value)
  with pytest.raises(ValueError, match=r"fc2\.weight") as e:
    models.import_torch_checkpoint(str(path), "resnet8", 100)
  assert "aux_head" in str(e.value)
  with pytest.raises(ValueError, match=r"layer1_1") as e:
    models.import_torch_checkpoint(str(path), "resnet14", 100, aux_head="linear")
  assert "missing" in str(e.value)
