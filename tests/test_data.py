"""Tests for kd_jax.data: in-memory CIFAR, JAX augmentation, eval padding, ImageNet streams.

TFDS datasets are mocked (tfds.testing.mock_data) or generated tiny on disk; nothing is downloaded.
"""

import functools
import io
import os
import tarfile
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import data
from kd_jax.data import common
from kd_jax.data import streamed as streamed_lib

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

MEAN = np.asarray(data.CIFAR_MEAN, np.float32)
STD = np.asarray(data.CIFAR_STD, np.float32)
IN_MEAN = np.asarray(data.IMAGENET_MEAN, np.float32)
IN_STD = np.asarray(data.IMAGENET_STD, np.float32)


# ----------------------------------------------------------------------------- load_in_memory


def test_synthetic_shapes_determinism_and_learnability():
  train = data.load_in_memory("synthetic", "train", num_examples=2000)
  again = data.load_in_memory("synthetic", "train", num_examples=2000)
  prefix = data.load_in_memory("synthetic", "train", num_examples=1500)
  test = data.load_in_memory("synthetic", "test", num_examples=500)
  assert train.images.shape == (2000, 32, 32, 3) and train.images.dtype == np.uint8
  assert train.labels.shape == (2000,) and train.labels.dtype == np.int32
  assert train.num_classes == 100 and len(train) == 2000
  assert train.labels.min() >= 0 and train.labels.max() < 100
  assert len(np.unique(train.labels)) == 100
  np.testing.assert_array_equal(train.images, again.images)
  np.testing.assert_array_equal(train.labels, again.labels)
  np.testing.assert_array_equal(prefix.images, train.images[:1500])
  assert not np.array_equal(test.images, train.images[:500])
  # Learnable a bit: nearest class mean beats chance (1%) by far.
  x = train.images.reshape(2000, -1).astype(np.float32)
  means = np.stack([x[train.labels == c].mean(0) for c in range(100)])
  xt = test.images.reshape(500, -1).astype(np.float32)
  pred = np.argmin(((xt[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
  assert (pred == test.labels).mean() > 0.3


def test_synthetic_default_size_and_bad_arguments():
  with pytest.raises(data.DataError, match=r"'validation'.*accepted.*'train', 'test'"):
    data.load_in_memory("synthetic", "validation")
  with pytest.raises(data.DataError, match=r"'imagenet'.*accepted.*cifar100"):
    data.load_in_memory("imagenet", "train")
  with pytest.raises(data.DataError, match="num_examples=0"):
    data.load_in_memory("synthetic", "train", num_examples=0)
  assert len(data.load_in_memory("synthetic", "test", num_examples=20_000)) == 10_000


def test_cifar100_mock(tmp_path):
  with tfds.testing.mock_data(num_examples=24):
    full = data.load_in_memory("cifar100", "train", data_dir=str(tmp_path))
    again = data.load_in_memory("cifar100", "train", data_dir=str(tmp_path))
    capped = data.load_in_memory("cifar100", "test", data_dir=str(tmp_path),
                                 num_examples=7)
  assert full.images.shape == (24, 32, 32, 3) and full.images.dtype == np.uint8
  assert full.labels.dtype == np.int32 and full.num_classes == 100
  assert full.labels.min() >= 0 and full.labels.max() < 100
  assert full.images.std() > 10  # Real (mock) pixels, not zeros.
  np.testing.assert_array_equal(full.images, again.images)
  np.testing.assert_array_equal(full.labels, again.labels)
  assert capped.images.shape == (7, 32, 32, 3)
  np.testing.assert_array_equal(capped.labels, full.labels[:7])  # Mock: splits alike.


def test_check_arrays_rejects_bad_data():
  images = np.zeros((4, 32, 32, 3), np.uint8)
  with pytest.raises(data.DataError, match=r"label 100 at index 2.*\[0, 100\)"):
    common.check_arrays("cifar100", "train", images, np.array([0, 1, 100, 3]), 100)
  with pytest.raises(data.DataError, match=r"label -1 .*\[0, 10\)"):
    common.check_arrays("cifar10", "test", images, np.array([0, -1, 2, 3]), 10)
  with pytest.raises(data.DataError, match=r"\(4, 32, 32, 1\).*3 channels"):
    common.check_arrays("x", "train", np.zeros((4, 32, 32, 1), np.uint8),
                        np.zeros(4, np.int64), 10)
  with pytest.raises(data.DataError, match="float32.*uint8"):
    common.check_arrays("x", "train", images.astype(np.float32),
                        np.zeros(4, np.int64), 10)


def _offline(monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError("network disabled by test")
  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("download", [False, True])
def test_not_prepared_offline_fails_fast(tmp_path, monkeypatch, download):
  _offline(monkeypatch)
  empty = str(tmp_path / "tfds")
  start = time.monotonic()
  with pytest.raises(data.DataError) as info:
    data.load_in_memory("cifar100", "train", data_dir=empty, download=download)
  assert time.monotonic() - start < 10
  message = str(info.value)
  assert empty in message and f"tfds build cifar100 --data_dir={empty}" in message
  assert f"tfds.builder('cifar100', data_dir='{empty}').download_and_prepare()" in message
  assert ("download=False" in message) == (not download)
  error = info.value  # One message, no chained traceback wall.
  assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_network_probe_is_bounded(monkeypatch):
  monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(5))
  monkeypatch.delenv("https_proxy", raising=False)
  monkeypatch.delenv("HTTPS_PROXY", raising=False)
  start = time.monotonic()
  ok, what = common.network_reachable(["https://example.org/x.tar"], timeout=0.5)
  assert not ok and "example.org:443" in what and "timed out" in what
  assert time.monotonic() - start < 3


# ----------------------------------------------------------------------------- cifar_train_batch


def _indexed(n):
  """Images whose pixel [0, 0, 0] is the example index; labels = index."""
  images = np.zeros((n, 32, 32, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(n)
  return jnp.asarray(images), jnp.arange(n, dtype=jnp.int32)


def test_cifar_train_batch_epochs_and_determinism():
  images, labels = _indexed(100)
  fn = jax.jit(functools.partial(data.cifar_train_batch, images, labels, batch_size=32))
  assert data.steps_per_epoch(100, 32) == 3
  epochs = []
  for epoch in range(3):
    got = [fn(seed=7, step=jnp.int32(3 * epoch + s)) for s in range(3)]
    for im, lb in got:
      assert im.shape == (32, 32, 32, 3) and im.dtype == jnp.uint8 and lb.shape == (32,)
      np.testing.assert_array_equal(np.asarray(im[:, 0, 0, 0]), np.asarray(lb))
    order = np.concatenate([np.asarray(lb) for _, lb in got])
    assert len(np.unique(order)) == 96  # Each example at most once; 4 dropped.
    epochs.append(order)
  assert not np.array_equal(epochs[0], epochs[1])
  assert set(epochs[0]) != set(epochs[1]) or not np.array_equal(epochs[1], epochs[2])
  np.testing.assert_array_equal(fn(seed=7, step=4)[1], epochs[1][32:64])  # Resumable.
  assert not np.array_equal(fn(seed=8, step=4)[1], epochs[1][32:64])


def test_cifar_train_batch_covers_every_example_when_divisible():
  images, labels = _indexed(96)
  seen = np.concatenate([np.asarray(data.cifar_train_batch(
      images, labels, seed=0, step=s, batch_size=32)[1]) for s in range(3, 6)])
  np.testing.assert_array_equal(np.sort(seen), np.arange(96))
  with pytest.raises(data.DataError, match="batch_size=128 with 96 examples"):
    data.cifar_train_batch(images, labels, seed=0, step=0, batch_size=128)


# ----------------------------------------------------------------------------- augment_cifar


def _random_images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_crop_and_flip_offsets_and_mirror():
  x = _random_images(2)
  n = 2

  def crop(dy, dx, flip=False):
    return np.asarray(data.crop_and_flip(x, np.tile([[dy, dx]], (n, 1)),
                                         np.full((n,), flip)))

  np.testing.assert_array_equal(crop(4, 4), x)  # Centre offset: identity.
  top_left = crop(0, 0)
  assert not top_left[:, :4].any() and not top_left[:, :, :4].any()  # Black padding.
  np.testing.assert_array_equal(top_left[:, 4:, 4:], x[:, :28, :28])
  bottom_right = crop(8, 8)
  np.testing.assert_array_equal(bottom_right[:, :28, :28], x[:, 4:, 4:])
  assert not bottom_right[:, 28:].any() and not bottom_right[:, :, 28:].any()
  np.testing.assert_array_equal(crop(4, 4, flip=True), x[:, :, ::-1])
  np.testing.assert_array_equal(crop(0, 0, flip=True), top_left[:, :, ::-1])


def test_border_is_normalised_black_not_zero():
  x = _random_images(3)
  out = np.asarray(data.normalize(
      data.crop_and_flip(x, np.zeros((3, 2), np.int32), np.zeros(3, bool)), MEAN, STD))
  np.testing.assert_allclose(out[:, :4, :, :], np.broadcast_to(-MEAN / STD, (3, 4, 32, 3)),
                             rtol=1e-6)
  assert np.all(np.abs(out[:, 0, 0]) > 1.5)  # Not 0 (the trap: pad after normalise).


def test_augment_cifar_composition_determinism_and_dtype():
  x = _random_images(16)
  rng = jax.random.key(3)
  augment = jax.jit(data.augment_cifar)
  out = augment(rng, x)
  assert out.shape == (16, 32, 32, 3) and out.dtype == jnp.float32
  offsets, flips = data.cifar_augment_params(rng, 16)
  expected = data.normalize(data.crop_and_flip(x, offsets, flips), MEAN, STD)
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(augment(rng, x)))
  assert not np.allclose(np.asarray(out), np.asarray(augment(jax.random.key(4), x)))
  # Custom mean/std reach the normalisation.
  plain = data.augment_cifar(rng, x, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  assert float(plain.min()) >= 0.0 and float(plain.max()) <= 1.0


def test_augment_cifar_statistics():
  n = 2048
  offsets, flips = data.cifar_augment_params(jax.random.key(0), n)
  offsets = np.asarray(offsets)
  assert offsets.min() == 0 and offsets.max() == 8
  assert np.all(np.bincount(offsets.ravel(), minlength=9) > 0.08 * n)  # ~1/9 * 2n each.
  assert 0.45 < np.asarray(flips).mean() < 0.55
  # Black box: white images, horizontal ramp in channel 0; read flips from the output.
  x = np.full((n, 32, 32, 3), 255, np.uint8)
  x[..., 0] = (np.arange(32) * 8)[None, None, :]
  out = np.asarray(data.augment_cifar(jax.random.key(1), x))
  row = out[:, 16, 8:24, 0]
  flipped = row[:, 0] > row[:, -1]
  assert 0.45 < flipped.mean() < 0.55
  # Channels 1-2 hold only white pixels or normalised black padding.
  values = np.unique(np.round(out[..., 1], 4))
  np.testing.assert_allclose(values, np.sort([(1 - MEAN[1]) / STD[1], -MEAN[1] / STD[1]]),
                             atol=1e-3)


# ----------------------------------------------------------------------------- eval, validate


def test_eval_batches_pad_and_mask():
  n = 70
  d = data.InMemoryData(images=_random_images(n), labels=np.arange(n, dtype=np.int32),
                        num_classes=100)
  batches = list(data.eval_batches(d, 32))
  assert len(batches) == 3
  for b in batches:
    assert b["image"].shape == (32, 32, 32, 3) and b["image"].dtype == np.uint8
    assert b["label"].shape == (32,) and b["label"].dtype == np.int32
    assert b["mask"].dtype == bool
  assert sum(int(b["mask"].sum()) for b in batches) == n
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(n))
  last = batches[-1]
  assert last["mask"][:6].all() and not last["mask"][6:].any()
  assert not last["image"][6:].any()
  np.testing.assert_array_equal(last["image"][:6], d.images[64:])
  with pytest.raises(data.DataError, match="batch_size=0"):
    next(data.eval_batches(d, 0))


def test_normalize_values():
  x = np.array([[[[0, 0, 0], [255, 255, 255]]]], np.uint8)
  out = np.asarray(jax.jit(data.normalize, static_argnums=(1, 2))(
      x, data.CIFAR_MEAN, data.CIFAR_STD))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[0, 0, 0], -MEAN / STD, rtol=1e-6)
  np.testing.assert_allclose(out[0, 0, 1], (1 - MEAN) / STD, rtol=1e-6)


def test_validate_batch():
  good = {"image": np.zeros((4, 32, 32, 3)), "label": np.array([0, 1, 2, 99])}
  data.validate_batch(good, num_classes=100, image_shape=(32, 32, 3))
  with pytest.raises(data.DataError, match=r"\(4, 28, 28, 3\).*\(batch, 32, 32, 3\)"):
    data.validate_batch({**good, "image": np.zeros((4, 28, 28, 3))}, num_classes=100,
                        image_shape=(32, 32, 3))
  with pytest.raises(data.DataError, match=r"label 100 at index 3.*\[0, 100\)"):
    data.validate_batch({**good, "label": np.array([0, 1, 2, 100])}, num_classes=100,
                        image_shape=(32, 32, 3))
  with pytest.raises(data.DataError, match=r"'label' has shape \(3,\)"):
    data.validate_batch({**good, "label": np.array([0, 1, 2])}, num_classes=100,
                        image_shape=(32, 32, 3))
  with pytest.raises(data.DataError, match="'image' and 'label'"):
    data.validate_batch({"x": 1}, num_classes=100, image_shape=(32, 32, 3))
  masked = {**good, "label": np.array([0, 1, 2, 100]), "mask": np.array([1, 1, 1, 0], bool)}
  data.validate_batch(masked, num_classes=100, image_shape=(32, 32, 3))  # Padding ignored.


# ----------------------------------------------------------------------------- ImageNet


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
  """48 train / 20 validation constant-colour JPEGs; label i <-> example i."""
  return data.build_fake_imagenet(str(tmp_path_factory.mktemp("tfds")))


def _colour(label):
  """The constant colour build_fake_imagenet gives example `label`."""
  i = np.asarray(label)[..., None]
  return np.concatenate([(37 * i + 11) % 256, (91 * i + 50) % 256, (53 * i + 200) % 256],
                        axis=-1).astype(np.float32)


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def _assert_constant_colour(batch):
  expected = (_colour(batch["label"]) / 255.0 - IN_MEAN) / IN_STD  # [b, 3]
  err = np.abs(batch["image"] - expected[:, None, None, :]).max(axis=(1, 2, 3))
  assert np.all(err < 0.08), err  # A few JPEG levels.


def test_imagenet_mock_train_and_eval():
  with tfds.testing.mock_data(num_examples=10):
    train = data.train_stream(None, batch_size=4, seed=0, image_size=48)
    batches = _take(train, 3)  # 2 per epoch: crosses an epoch boundary.
    evals = list(data.eval_stream(None, batch_size=4, image_size=48))
  for b in batches:
    assert b["image"].shape == (4, 48, 48, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and 0 <= b["label"].min() <= b["label"].max() < 1000
    assert np.all(b["image"] >= (-IN_MEAN / IN_STD).min() - 1e-4)
    assert np.all(b["image"] <= ((1 - IN_MEAN) / IN_STD).max() + 1e-4)
    assert b["image"].std() > 0.1
  assert len(evals) == 3 and sum(int(b["mask"].sum()) for b in evals) == 10
  assert evals[0]["image"].shape == (4, 48, 48, 3) and not evals[-1]["mask"][2:].any()


def test_imagenet_train_values_and_determinism(fake_imagenet):
  kw = dict(batch_size=8, image_size=32, name="fake_imagenet")
  a = _take(data.train_stream(fake_imagenet, seed=1, **kw), 6)
  b = _take(data.train_stream(fake_imagenet, seed=1, **kw), 6)
  c = _take(data.train_stream(fake_imagenet, seed=2, **kw), 6)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  labels = np.concatenate([x["label"] for x in a])
  np.testing.assert_array_equal(np.sort(labels), np.arange(48))  # One epoch, all once.
  assert not np.array_equal(labels, np.concatenate([x["label"] for x in c]))
  for x in a:
    assert x["image"].shape == (8, 32, 32, 3) and x["image"].dtype == np.float32
    _assert_constant_colour(x)


def test_imagenet_train_resumable_across_epochs(fake_imagenet):
  kw = dict(batch_size=8, image_size=32, name="fake_imagenet", seed=5)
  full = _take(data.train_stream(fake_imagenet, **kw), 10)  # 6 steps per epoch.
  for start in (4, 7):
    resumed = _take(data.train_stream(fake_imagenet, start_step=start, **kw), 3)
    for x, y in zip(resumed, full[start:start + 3]):
      np.testing.assert_array_equal(x["label"], y["label"])
      np.testing.assert_array_equal(x["image"], y["image"])
  epoch0 = np.concatenate([x["label"] for x in full[:6]])
  epoch1 = np.concatenate([x["label"] for x in full[6:10]])
  assert not np.array_equal(epoch0[:32], epoch1)  # Reshuffled per epoch.


def test_imagenet_train_process_shards_are_disjoint(fake_imagenet):
  kw = dict(batch_size=8, image_size=32, name="fake_imagenet", seed=0, process_count=2)
  shards = [np.concatenate([x["label"] for x in _take(
      data.train_stream(fake_imagenet, process_index=p, **kw), 3)]) for p in range(2)]
  assert len(set(shards[0])) == 24 and len(set(shards[1])) == 24
  assert not set(shards[0]) & set(shards[1])
  with pytest.raises(data.DataError, match="process_index=2 with process_count=2"):
    data.train_stream(fake_imagenet, process_index=2, **kw)
  with pytest.raises(data.DataError, match="batch_size=32 exceeds the 24 examples"):
    data.train_stream(fake_imagenet, **{**kw, "batch_size": 32})


def test_imagenet_eval_covers_all_once_across_processes(fake_imagenet):
  per_process = [list(data.eval_stream(fake_imagenet, batch_size=4, image_size=24,
                                         name="fake_imagenet", process_index=p,
                                         process_count=3)) for p in range(3)]
  assert {len(batches) for batches in per_process} == {2}  # ceil(ceil(20/3)/4): lockstep.
  seen = []
  for batches in per_process:
    for b in batches:
      assert b["image"].shape == (4, 24, 24, 3) and b["mask"].shape == (4,)
      real = {k: v[b["mask"]] for k, v in b.items()}
      if real["label"].size:
        _assert_constant_colour(real)
      assert not b["image"][~b["mask"]].any()
      seen.extend(real["label"].tolist())
  assert sorted(seen) == list(range(20))


def test_random_resized_crop_window_bounds():
  areas, ratios = [], []
  for i in range(150):
    y, x, h, w = streamed_lib.random_resized_crop_window(
        tf.constant([120, 200, 3]), tf.constant([3, i], tf.int64)).numpy()
    assert 0 <= y and y + h <= 120 and 0 <= x and x + w <= 200 and h > 0 and w > 0
    areas.append(h * w / (120 * 200))
    ratios.append(w / h)
  assert 0.07 <= min(areas) and max(areas) <= 1.0 and np.ptp(areas) > 0.5
  assert 0.7 <= min(ratios) and max(ratios) <= 1.4
  # No attempt can fit a 10x1000 strip: ratio-clamped centre crop 10 x round(10*4/3).
  box = streamed_lib.random_resized_crop_window(tf.constant([10, 1000, 3]),
                                                tf.constant([0, 0], tf.int64)).numpy()
  np.testing.assert_array_equal(box, [0, (1000 - 13) // 2, 10, 13])


def test_random_resized_crop_window_takes_the_configured_ranges():
  """DHKD's crop (area 0.1-1, aspect 0.8-1.25): every fitted window lies in those ranges."""
  area_range, aspect_range = (0.1, 1.0), (0.8, 1.25)
  areas, ratios = [], []
  for i in range(200):
    y, x, h, w = streamed_lib.random_resized_crop_window(
        tf.constant([300, 400, 3]), tf.constant([5, i], tf.int64), area_range=area_range,
        aspect_range=aspect_range).numpy()
    assert 0 <= y and y + h <= 300 and 0 <= x and x + w <= 400
    areas.append(h * w / (300 * 400))
    ratios.append(w / h)
  # Rounding h and w (>= 100 px here) to whole pixels moves the ratio by at most ~1%, the
  # area by at most ~2%.
  assert 0.1 / 1.02 <= min(areas) and max(areas) <= 1.0 and min(areas) < 0.2
  assert 0.8 / 1.01 <= min(ratios) and max(ratios) <= 1.25 * 1.01
  assert min(ratios) < 0.85 and max(ratios) > 1.2
  # The same seeds with the default ranges give ratios outside 0.8-1.25.
  default = [streamed_lib.random_resized_crop_window(
      tf.constant([300, 400, 3]), tf.constant([5, i], tf.int64)).numpy() for i in range(200)]
  assert any(not 0.8 <= w / h <= 1.25 for _, _, h, w in default)
  # No attempt fits a 10x1000 strip: the fallback clamps to the configured aspect (1.25).
  box = streamed_lib.random_resized_crop_window(
      tf.constant([10, 1000, 3]), tf.constant([0, 0], tf.int64), area_range=area_range,
      aspect_range=aspect_range).numpy()
  np.testing.assert_array_equal(box, [0, (1000 - 12) // 2, 10, 12])  # round(10 * 1.25) = 12


@pytest.mark.parametrize("crop_area,crop_aspect", [((0.0, 1.0), (0.8, 1.25)),
                                                   ((0.1, 1.2), (0.8, 1.25)),
                                                   ((0.1, 1.0), (1.3, 1.25)),
                                                   ((0.1, 1.0), 1.25)])
def test_imagenet_train_refuses_bad_crop_ranges(crop_area, crop_aspect, tmp_path):
  with pytest.raises(data.DataError, match="crop_a") as info:
    data.train_stream(str(tmp_path), batch_size=8, seed=0, crop_area=crop_area,
                        crop_aspect=crop_aspect)
  assert "0 < lo <= hi" in str(info.value)


def test_resize_shorter_center_crop():
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (256, 300, 3)), tf.uint8)
  out = streamed_lib.resize_shorter_center_crop(image, resize_size=256, crop_size=224)
  assert out.shape == (224, 224, 3)
  # Shorter side already 256: no resampling, centre crop at (16, 38).
  np.testing.assert_allclose(out.numpy(), image.numpy()[16:240, 38:262], atol=1e-3)
  tall = streamed_lib.resize_shorter_center_crop(tf.zeros([400, 300, 3]), resize_size=37,
                                                 crop_size=32)
  assert tall.shape == (32, 32, 3)


def test_imagenet_not_prepared_explains_manual_download(tmp_path):
  root = str(tmp_path / "tfds")
  manual = os.path.join(root, "downloads", "manual")
  for call in (lambda: data.train_stream(root, batch_size=8, seed=0),
               lambda: data.eval_stream(root, batch_size=8)):
    start = time.monotonic()
    with pytest.raises(data.DataError) as info:
      call()
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "ILSVRC2012_img_train.tar" in message and manual in message
    assert f"tfds build imagenet2012 --data_dir={root} --manual_dir={manual}" in message
    assert f"DownloadConfig(manual_dir='{manual}')" in message
    assert "neither archive" in message
  os.makedirs(manual)
  open(os.path.join(manual, "ILSVRC2012_img_val.tar"), "w").close()
  with pytest.raises(data.DataError, match="found.*ILSVRC2012_img_val.tar"):
    data.eval_stream(root, batch_size=8)
  with pytest.raises(data.DataError, match="'no_such_dataset'"):
    data.eval_stream(root, batch_size=8, name="no_such_dataset")


def _add_to_tar(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def _jpeg(value, shape=(40, 50, 3)):
  return tf.io.encode_jpeg(tf.constant(np.full(shape, value, np.uint8))).numpy()


def test_imagenet2012_built_from_manual_archives(tmp_path):
  """The real imagenet2012 builder on tiny ILSVRC-layout tars, as docs/data.md says."""
  root, manual = str(tmp_path), str(tmp_path / "downloads" / "manual")
  os.makedirs(manual)
  synsets = ["n01440764", "n01443537"]  # Labels 0 and 1 in TFDS's labels.txt.
  with tarfile.open(os.path.join(manual, "ILSVRC2012_img_train.tar"), "w") as outer:
    for synset in synsets:
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
        for i in range(4):
          _add_to_tar(inner, f"{synset}_{i}.JPEG", _jpeg(40 * i))
      _add_to_tar(outer, f"{synset}.tar", inner_bytes.getvalue())
  with tarfile.open(os.path.join(manual, "ILSVRC2012_img_val.tar"), "w") as val:
    for i in range(1, 6):
      _add_to_tar(val, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(30 * i))
  with pytest.raises(data.DataError, match="found.*ILSVRC2012_img_train.tar"):
    data.eval_stream(root, batch_size=4)
  # The command the DataError prints (without the tfds CLI, which needs apache-beam).
  tfds.builder("imagenet2012", data_dir=root).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))
  train = _take(data.train_stream(root, batch_size=4, seed=0, image_size=32), 2)
  labels = np.concatenate([b["label"] for b in train])
  np.testing.assert_array_equal(np.sort(labels), [0, 0, 0, 0, 1, 1, 1, 1])
  evals = list(data.eval_stream(root, batch_size=4, image_size=32))
  assert len(evals) == 2 and sum(int(b["mask"].sum()) for b in evals) == 5
  names = tfds.builder("imagenet2012", data_dir=root).info.features["label"].names
  with open(os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012",
                         "validation_labels.txt")) as f:
    expected = sorted(names.index(line.strip()) for line in f.readlines()[:5])
  seen = sorted(int(lab) for b in evals for lab in b["label"][b["mask"]])
  assert seen == expected
