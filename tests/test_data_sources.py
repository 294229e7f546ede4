"""Tests for "your own data": imagefolder:PATH, any TFDS image dataset, augment, mean/std.

Image folders are generated in tmp_path (tiny PNG/JPEG files, read back with PIL as the
reference); TFDS datasets are mocked (tfds.testing.mock_data) or written tiny on disk.
"""
import functools
import json
import os
import socket
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

import testenv  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from kd_jax import config as kdc
from kd_jax import data
from kd_jax import errors
from kd_jax.train import loop

tfds = pytest.importorskip("tensorflow_datasets")
Image = pytest.importorskip("PIL.Image")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import smoke  # pylint: disable=g-import-not-at-top,wrong-import-position


# ----------------------------------------------------------------------------- helpers


def _write_folder(root, layout, *, size=(8, 8), seed=0, ext=".png"):
  """root/<split>/<class>/<i>.png with random pixels; returns {path: (split, class, array)}."""
  rng = np.random.default_rng(seed)
  written = {}
  for split, classes in layout.items():
    for cls, count in classes.items():
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i in range(count):
        h, w = size(split, cls, i) if callable(size) else size
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = os.path.join(root, split, cls, f"{i:03d}{ext}")
        Image.fromarray(pixels).save(path)
        written[path] = (split, cls, pixels)
  return written


def _pil(path):
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def _offline(monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError("network disabled by test")
  monkeypatch.setattr(socket, "create_connection", refuse)


def _mesh():
  return jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,))


def _config(**overrides):
  config = smoke.get_config("ce")
  config.train_examples = 0
  config.eval_examples = 0
  for k, v in overrides.items():
    config[k] = v
  return config


# ----------------------------------------------------------------------------- image folders

# Class folders created in an order that differs from the sorted one.
LAYOUT = {"train": {"zebra": 3, "apple": 2, "mango": 4}, "test": {"mango": 1, "apple": 2}}


def test_imagefolder_class_ids_and_pixels_equal_what_pil_reads(tmp_path):
  root = str(tmp_path / "folder")
  written = _write_folder(root, LAYOUT)
  ids = {"apple": 0, "mango": 1, "zebra": 2}   # sorted folder names, over all splits
  for split in ("train", "test"):
    loaded = data.load_in_memory(f"imagefolder:{root}", split)
    expected = sorted((ids[cls], px.tobytes()) for s, cls, px in
                      (v for v in written.values()) if s == split)
    got = sorted((int(lb), im.tobytes()) for im, lb in zip(loaded.images, loaded.labels))
    assert loaded.num_classes == 3
    assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.int32
    assert loaded.images.shape == (len(expected), 8, 8, 3)
    assert got == expected  # every file once, with its class id, pixel-exact (PNG)
  # Reference read with PIL, file by file, for one image.
  path = next(p for p, v in written.items() if v[1] == "zebra")
  np.testing.assert_array_equal(_pil(path), written[path][2])
  # The order is fixed for a given folder: a second load is identical.
  a = data.load_in_memory(f"imagefolder:{root}", "train")
  b = data.load_in_memory(f"imagefolder:{root}", "train", num_examples=4)
  np.testing.assert_array_equal(a.labels[:4], b.labels)
  np.testing.assert_array_equal(a.images[:4], b.images)


def test_imagefolder_reads_jpeg_and_grayscale_as_rgb(tmp_path):
  root = tmp_path / "folder"
  os.makedirs(root / "train" / "a")
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
  Image.fromarray(gray).save(root / "train" / "a" / "g.png")
  smooth = np.broadcast_to(np.array([40, 120, 200], np.uint8), (8, 8, 3)).copy()
  Image.fromarray(smooth).save(root / "train" / "a" / "c.jpg", quality=95)
  loaded = data.load_in_memory(f"imagefolder:{root}", "train")
  by_kind = {("gray" if im[..., 0].std() > 5 else "jpeg"): im for im in loaded.images}
  np.testing.assert_array_equal(by_kind["gray"], np.repeat(gray[..., None], 3, axis=-1))
  assert np.abs(by_kind["jpeg"].astype(int) - _pil(root / "train" / "a" / "c.jpg")).max() <= 2


def test_imagefolder_image_size_own_mixed_and_resized(tmp_path, capsys):
  root = str(tmp_path / "mixed")
  sizes = {("a", 0): (8, 8), ("a", 1): (12, 12), ("b", 0): (8, 8)}
  rng = np.random.default_rng(1)
  colours = {}
  for (cls, i), (h, w) in sizes.items():
    os.makedirs(os.path.join(root, "train", cls), exist_ok=True)
    colour = rng.integers(0, 256, 3).astype(np.uint8)
    colours[(cls, i)] = colour
    Image.fromarray(np.broadcast_to(colour, (h, w, 3)).copy()).save(
        os.path.join(root, "train", cls, f"{i}.png"))
  # image_size=0: mixed sizes are all resized to the most common one (8x8, two of three files),
  # and one line says so; the 8x8 files are left bit for bit.
  own = data.load_in_memory(f"imagefolder:{root}", "train")
  assert own.images.shape == (3, 8, 8, 3)
  line = capsys.readouterr().out
  assert "2 sizes (8x8: 2, 12x12: 1)" in line and "resized to 8x8" in line
  assert "--config.image_size=S" in line
  assert sorted(tuple(im[0, 0]) for im in own.images) == sorted(
      tuple(int(v) for v in c) for c in colours.values())
  resized = data.load_in_memory(f"imagefolder:{root}", "train", image_size=6)
  assert resized.images.shape == (3, 6, 6, 3)
  # A constant-colour image stays that colour after any resize.
  got = sorted(tuple(im[0, 0]) for im in resized.images)
  assert got == sorted(tuple(int(v) for v in c) for c in colours.values())
  for im in resized.images:
    assert (im == im[0, 0]).all()
  # image_size equal to an image's own size leaves it bit for bit.
  noisy = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  np.testing.assert_array_equal(data.sources.resize_uint8(noisy, 8), noisy)


def test_common_size_is_the_most_frequent_shape_s_shorter_side():
  assert data.sources.common_size([(8, 8), (12, 12), (8, 8)]) == 8
  assert data.sources.common_size([(8, 12), (8, 12), (16, 16)]) == 8   # 8x12 -> 8
  assert data.sources.common_size([(8, 8), (12, 12)]) == 12            # a tie: the larger


def test_imagefolder_non_square_is_resized_to_its_shorter_side(tmp_path, capsys):
  root = str(tmp_path / "wide")
  _write_folder(root, {"train": {"a": 2}}, size=(8, 12))
  assert data.load_in_memory(f"imagefolder:{root}", "train").images.shape == (2, 8, 8, 3)
  assert "1 size (8x12: 2); all resized to 8x8" in capsys.readouterr().out
  assert data.load_in_memory(f"imagefolder:{root}", "train",
                             image_size=8).images.shape == (2, 8, 8, 3)


def test_imagefolder_missing_folder_or_split_is_one_clear_error(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(data.DataError, match=r"is not a directory.*PATH/train/<class>") as info:
    data.load_in_memory(f"imagefolder:{missing}", "train")
  assert missing in str(info.value) and "\n" not in str(info.value)
  root = str(tmp_path / "only_train")
  _write_folder(root, {"train": {"a": 1}})
  with pytest.raises(data.DataError, match=r"no images under .*test.*found splits \['train'\]"):
    data.load_in_memory(f"imagefolder:{root}", "test")


# ----------------------------------------------------------------------------- any TFDS dataset


def test_any_tfds_dataset_via_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    layout = data.tfds_layout("svhn_cropped", str(tmp_path))
    train = data.load_in_memory("svhn_cropped", "train", data_dir=str(tmp_path))
    small = data.load_in_memory("svhn_cropped", "test", data_dir=str(tmp_path), image_size=16)
  assert (layout.num_classes, layout.image_shape) == (10, (32, 32))
  assert train.images.shape == (12, 32, 32, 3) and train.num_classes == 10
  assert train.labels.min() >= 0 and train.labels.max() < 10
  assert small.images.shape == (12, 16, 16, 3)


def test_tfds_without_image_label_features_is_refused(tmp_path):
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(data.DataError, match=r"'imdb_reviews' has features \['label', "
                       r"'text'\]; accepted: a dataset with an 'image' and a 'label'"):
      data.tfds_layout("imdb_reviews", str(tmp_path))


def test_num_classes_follows_the_dataset_unless_chosen(tmp_path, capsys):
  """num_classes at the schema's default (100) takes the dataset's count (one line says so);
  a chosen value that differs is one error naming the right value."""
  with tfds.testing.mock_data(num_examples=8):
    with pytest.raises(errors.ConfigError) as info:
      loop.setup_data(_config(dataset="svhn_cropped", data_dir=str(tmp_path), num_classes=7),
                       _mesh())
    followed = loop.setup_data(_config(dataset="svhn_cropped", data_dir=str(tmp_path),
                                        batch_size=8), _mesh())
  message = str(info.value)
  assert "config.num_classes=7" in message and "10 classes" in message
  assert "--config.num_classes=10" in message and "\n" not in message
  assert followed.num_classes == 10
  root = str(tmp_path / "folder")
  _write_folder(root, LAYOUT)
  with pytest.raises(errors.ConfigError, match=r"num_classes=2 .*3 classes.*"
                     r"--config.num_classes=3"):
    loop.setup_data(_config(dataset=f"imagefolder:{root}", num_classes=2), _mesh())
  capsys.readouterr()
  followed = loop.setup_data(_config(dataset=f"imagefolder:{root}", batch_size=4), _mesh())
  assert followed.num_classes == 3
  assert "num_classes=3: the number of classes of dataset" in capsys.readouterr().out


def _fixed_tfds(data_dir, n_train=40, n_test=10, size=8):
  """A prepared on-disk TFDS dataset 'tiny_fixed' of fixed-size images, 5 classes."""
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(size, size, 3)),
      "label": tfds.features.ClassLabel(num_classes=5)})
  rng = np.random.default_rng(0)

  def examples(n):
    for i in range(n):
      yield (str(i), {"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                      "label": i % 5})
  tfds.dataset_builders.store_as_tfds_dataset(
      name="tiny_fixed", version="1.0.0", features=features, data_dir=data_dir,
      split_datasets={"train": examples(n_train), "test": examples(n_test)},
      disable_shuffling=True)
  return data_dir


def test_tfds_held_in_memory_within_budget_streamed_beyond(tmp_path):
  data_dir = _fixed_tfds(str(tmp_path / "tfds"))
  need_mb = 40 * 8 * 8 * 3 / 2 ** 20   # uint8 training split
  base = dict(dataset="tiny_fixed", data_dir=data_dir, num_classes=5)
  plan = functools.partial(data.run_data.in_memory_plan, schema_num_classes=100)
  fits = plan(_config(**base, in_memory_budget_mb=need_mb * 1.01), data_dir)
  over = plan(_config(**base, in_memory_budget_mb=need_mb * 0.99), data_dir)
  assert fits == (True, 0) and over == (False, 8)
  setup = loop.setup_data(_config(**base, batch_size=8), _mesh())
  assert setup.in_memory and setup.steps_per_epoch == 5 and setup.image_size == 8
  assert setup.augment == "pad_crop_flip"
  images = np.asarray(setup.train[0])
  expected_mean = (images / 255.0).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(setup.mean, expected_mean, rtol=1e-12)
  streamed = loop.setup_data(_config(**base, batch_size=8, in_memory_budget_mb=0.0,
                                      eval_batch_size=5), _mesh())
  assert not streamed.in_memory and streamed.augment == "random_resized_crop"
  assert streamed.steps_per_epoch == 5
  assert (streamed.mean, streamed.std) == (data.IMAGENET_MEAN, data.IMAGENET_STD)
  batch = next(streamed.train(0))
  assert batch["image"].shape == (8, 8, 8, 3) and batch["image"].dtype == np.float32
  assert sum(int(b["mask"].sum()) for b in streamed.eval_iter()) == 10


def test_variable_size_tfds_dataset_is_streamed_with_its_metadata(tmp_path):
  data_dir = data.build_fake_imagenet(str(tmp_path / "tfds"), num_train=16,
                                      num_validation=4, num_classes=7)
  config = _config(dataset="fake_imagenet", data_dir=data_dir, num_classes=7, batch_size=4,
                   eval_split="validation", image_size=16, eval_batch_size=4)
  setup = loop.setup_data(config, _mesh())
  assert not setup.in_memory and setup.steps_per_epoch == 4 and setup.image_size == 16
  with pytest.raises(errors.ConfigError, match=r"num_classes=5 .*7 classes"):
    loop.setup_data(_config(dataset="fake_imagenet", data_dir=data_dir, num_classes=5),
                     _mesh())


def test_offline_missing_tfds_dataset_says_how_to_prepare(tmp_path, monkeypatch):
  _offline(monkeypatch)
  empty = str(tmp_path / "tfds")
  start = time.monotonic()
  with pytest.raises(errors.USER_ERRORS) as info:
    loop.setup_data(_config(dataset="svhn_cropped", data_dir=empty, num_classes=10),
                     _mesh())
  assert time.monotonic() - start < 30
  message = str(info.value)
  assert "'svhn_cropped' is not prepared" in message
  assert f"tfds build svhn_cropped --data_dir={empty}" in message
  assert "Traceback" not in message


# ----------------------------------------------------------------------------- augment


def test_augment_none_is_exact_normalisation_and_pad_crop_flip_is_augment_cifar():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.25)
  expected = (images.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
  for key in (0, 1):
    out = np.asarray(data.augment_batch(jax.random.key(key), images, augment="none",
                                        mean=mean, std=std))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  a = data.augment_batch(jax.random.key(3), images, augment="pad_crop_flip", mean=mean, std=std)
  b = data.augment_cifar(jax.random.key(3), images, mean=mean, std=std)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - expected).max() > 0.1  # it does crop or flip something
  with pytest.raises(data.DataError, match="augment='crop'.*accepted: pad_crop_flip, "
                     "random_resized_crop, none"):
    data.augment_batch(jax.random.key(0), images, augment="crop")


def test_in_memory_random_resized_crop_boxes_follow_torchvision_rules():
  boxes = np.asarray(data.random_resized_crop_boxes(jax.random.key(0), 4000, 24, 32))
  y, x, h, w = boxes.T
  assert np.all(boxes == np.round(boxes)) and np.all(h >= 1) and np.all(w >= 1)
  assert np.all(y >= 0) and np.all(x >= 0) and np.all(y + h <= 24) and np.all(x + w <= 32)
  area = h * w / (24 * 32)
  assert area.min() >= 0.08 * 0.8 and area.max() <= 1.0   # rounding of w and h
  assert 0.4 < np.median(area) < 0.65          # U(0.08, 1), clipped at the image bounds
  ratio = w / h
  assert np.mean((ratio > 0.7) & (ratio < 1.45)) > 0.97
  assert len(np.unique(boxes, axis=0)) > 1000  # random, not a fixed window
  # No attempt can fit -> the ratio-clamped centre crop of torchvision: a 4x40 image with
  # aspect in [3/4, 4/3] falls back to w = round(4 * 4/3) = 5, centred.
  fallback = np.asarray(data.random_resized_crop_boxes(
      jax.random.key(1), 3, 4, 40, area_range=(1.0, 1.0)))
  np.testing.assert_array_equal(fallback, [[0, 17, 4, 5]] * 3)


def test_in_memory_random_resized_crop_values():
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  norm = (images / 255.0 - 0.5) / 0.25
  # Whole-image boxes (area 1, aspect 1): the image itself or its mirror, nothing else.
  out = np.asarray(data.augment_batch(jax.random.key(2), images, augment="random_resized_crop",
                                      mean=mean, std=std, crop_area=(1.0, 1.0),
                                      crop_aspect=(1.0, 1.0)))
  same = np.abs(out - norm).max(axis=(1, 2, 3)) < 1e-4
  mirrored = np.abs(out - norm[:, :, ::-1]).max(axis=(1, 2, 3)) < 1e-4
  assert np.all(same | mirrored) and 10 < mirrored.sum() < 54
  # A crop of a constant image is that constant; the top-left 4x4 quarter scaled x2 is
  # bilinear interpolation of those pixels (hand-checked at a corner and the centre).
  flat = np.full((2, 8, 8, 3), 77, np.uint8)
  crops = np.asarray(data.augment_batch(jax.random.key(5), flat, augment="random_resized_crop",
                                        mean=mean, std=std))
  np.testing.assert_allclose(crops, (77 / 255 - 0.5) / 0.25, atol=1e-5)
  ramp = np.broadcast_to(np.arange(8, dtype=np.float32)[None, :, None] * 10, (8, 8, 3))
  zoom = np.asarray(data.resized_crop(ramp[None], np.array([[0, 0, 4, 4]], np.float32)))[0]
  # Output column j samples input x = (j + 0.5) / 2 - 0.5; values 10 * x inside the crop.
  np.testing.assert_allclose(zoom[3, 3, 0], 10 * ((3 + 0.5) / 2 - 0.5), atol=1e-4)


def test_training_batch_with_augment_none_is_the_whole_split_normalised():
  """The trainer's in-memory batch: batch = split, augment none -> the split, permuted only."""
  from kd_jax import methods  # pylint: disable=g-import-not-at-top
  from kd_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  labels = np.arange(16, dtype=np.int32)
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  spec = types.SimpleNamespace(seed=0, batch_size=16, augment="none", mean=mean, std=std,
                               crop_area=data.CROP_AREA, crop_aspect=data.CROP_ASPECT,
                               mesh=_mesh(), loss=types.SimpleNamespace(
                                   views=(methods.View(methods.DEFAULT_VIEW),)))
  expected = (images / 255.0 - np.array(mean)) / np.array(std)
  outs = []
  for step, key in ((0, 0), (1, 5)):
    state = types.SimpleNamespace(rng=jax.random.key(key), step=step)
    x, y, teacher = step_lib._in_memory_batch(spec, state, images, labels)
    assert teacher is None   # no teacher table
    x, y = np.asarray(x), np.asarray(y)
    assert sorted(y.tolist()) == list(range(16))
    np.testing.assert_allclose(x, expected[y], rtol=1e-6, atol=1e-6)
    outs.append(np.asarray(x)[np.argsort(y)])
  np.testing.assert_array_equal(outs[0], outs[1])   # same content every step, bit for bit


def test_streamed_augment_none_equals_the_eval_transform(tmp_path):
  data_dir = data.build_fake_imagenet(str(tmp_path / "tfds"), num_train=8, num_validation=4,
                                      noise=30)
  kw = dict(batch_size=8, image_size=16, name="fake_imagenet")
  mean, std = (0.3, 0.4, 0.5), (0.2, 0.2, 0.2)
  a = next(data.train_stream(data_dir, seed=0, augment="none", mean=mean, std=std, **kw))
  b = next(data.train_stream(data_dir, seed=7, augment="none", mean=mean, std=std, **kw))
  ev = next(data.eval_stream(data_dir, split="train", mean=mean, std=std, **kw))
  by_label = lambda batch: batch["image"][np.argsort(batch["label"])]  # noqa: E731
  np.testing.assert_array_equal(by_label(a), by_label(b))
  np.testing.assert_array_equal(by_label(a), by_label(ev))
  plain = next(data.eval_stream(data_dir, split="train", **kw))
  np.testing.assert_allclose(by_label(ev) * np.array(std) + np.array(mean),
                             by_label(plain) * data.IMAGENET_STD + data.IMAGENET_MEAN,
                             atol=1e-5)
  with pytest.raises(data.DataError, match="augment='auto' for streamed data; accepted: "
                     "pad_crop_flip, random_resized_crop, none, randaugment"):
    data.train_stream(data_dir, seed=0, augment="auto", **kw)


def test_streamed_pad_crop_flip_shifts_and_mirrors_the_resized_image(tmp_path):
  """Streamed pad_crop_flip: each image is its resized self, shifted by <= 4 px (black border)
  and maybe mirrored; deterministic in the seed."""
  data_dir = _fixed_tfds(str(tmp_path / "tfds"), n_train=32, n_test=4)
  kw = dict(batch_size=32, image_size=8, name="tiny_fixed", augment="pad_crop_flip",
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  a = next(data.train_stream(data_dir, seed=3, **kw))
  b = next(data.train_stream(data_dir, seed=3, **kw))
  np.testing.assert_array_equal(a["image"], b["image"])
  reference = {}
  builder = tfds.builder("tiny_fixed", data_dir=data_dir)
  for ex in tfds.as_numpy(builder.as_dataset(split="train")):
    reference.setdefault(int(ex["label"]), []).append(ex["image"])
  moved = mirrored = 0
  for image, label in zip(a["image"] * 255.0, a["label"]):
    padded = [np.pad(r.astype(np.float32), ((4, 4), (4, 4), (0, 0))) for r in reference[label]]
    matches = [(dy, dx, f) for p in padded for dy in range(9) for dx in range(9)
               for f in (False, True)
               if np.abs((p[dy:dy + 8, dx:dx + 8][:, ::-1] if f else p[dy:dy + 8, dx:dx + 8])
                         - image).max() < 1e-3]
    assert matches, "not a padded crop (or its mirror) of any training image of its class"
    moved += (matches[0][0], matches[0][1]) != (4, 4)
    mirrored += matches[0][2]
  assert moved > 16 and 4 < mirrored < 28


def test_resolve_augment():
  assert data.resolve_augment("auto", True) == "pad_crop_flip"
  assert data.resolve_augment("auto", False) == "random_resized_crop"
  assert data.resolve_augment("none", False) == "none"
  assert data.resolve_augment("pad_crop_flip", False) == "pad_crop_flip"
  assert data.resolve_augment("random_resized_crop", True) == "random_resized_crop"
  with pytest.raises(data.DataError, match="augment='crop'; accepted: auto, pad_crop_flip"):
    data.resolve_augment("crop", True)


# ----------------------------------------------------------------------------- mean / std


def test_channel_stats_match_numpy():
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (2050, 4, 3, 3), dtype=np.uint8)   # more than one chunk
  images[..., 2] //= 4
  x = images.astype(np.float64) / 255.0
  mean, std = data.channel_stats(images)
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-10)
  constant = np.full((2, 2, 2, 3), 7, np.uint8)
  assert data.channel_stats(constant) == ((7 / 255,) * 3, (0.0,) * 3)


def test_resolve_mean_std_defaults_and_overrides():
  images = np.random.default_rng(3).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
  own = data.channel_stats(images)
  resolve = data.resolve_mean_std
  assert resolve("cifar100", (), (), train_images=images) == (data.CIFAR_MEAN, data.CIFAR_STD)
  assert resolve("synthetic", (), (), train_images=images) == (data.CIFAR_MEAN, data.CIFAR_STD)
  assert resolve("imagenet2012", (), (), train_images=None) == (data.IMAGENET_MEAN,
                                                                data.IMAGENET_STD)
  assert resolve("svhn_cropped", (), (), train_images=None) == (data.IMAGENET_MEAN,
                                                                data.IMAGENET_STD)
  assert resolve("imagefolder:/x", (), (), train_images=images) == own
  assert resolve("imagefolder:/x", (0.5, 0.5, 0.5), (), train_images=images) == (
      (0.5, 0.5, 0.5), own[1])
  assert resolve("cifar10", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), train_images=images) == (
      (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))


def test_mean_std_flag_syntax_is_accepted():
  argv = ["prog", f"--config={os.path.join(REPO, 'configs', 'smoke.py')}:ce",
          "--config.mean=(0.5071,0.4867,0.4408)", "--config.std=(0.2675,0.2565,0.2761)",
          "--config.augment=none", "--config.in_memory_budget_mb=64"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  config = fv.config
  assert tuple(config.mean) == (0.5071, 0.4867, 0.4408)
  assert tuple(config.std) == (0.2675, 0.2565, 0.2761)
  assert config.augment == "none" and config.in_memory_budget_mb == 64.0
  kdc.validate(config, model_names=["resnet8"], num_devices=1)


@pytest.mark.parametrize("override,needle", [
    ({"augment": "crop"}, "config.augment='crop' is not accepted; accepted: 'auto'"),
    ({"crop_area": (0.5, 1.0)}, "applies to the random resized crop only"),
    ({"mean": (0.5, 0.5)}, "config.mean=(0.5, 0.5) is not accepted"),
    ({"mean": (0.5, 0.5, 1.5)}, "config.mean=(0.5, 0.5, 1.5) is not accepted"),
    ({"std": (0.5, 0.0, 0.5)}, "config.std=(0.5, 0.0, 0.5) is not accepted"),
    ({"dataset": "imagefolder:"}, "config.dataset='imagefolder:' has an empty PATH"),
    ({"dataset": "My Data!"}, "config.dataset='My Data!'; accepted: cifar100"),
    ({"dataset": "svhn_cropped", "num_classes": 0}, "config.num_classes=0"),
    ({"in_memory_budget_mb": -1.0}, "config.in_memory_budget_mb=-1.0"),
])
def test_validate_names_the_bad_data_key(override, needle):
  config = _config()
  for k, v in override.items():
    config[k] = v
  with pytest.raises(errors.ConfigError) as info:
    kdc.validate(config, model_names=["resnet8"], num_devices=1)
  assert needle in str(info.value)
  assert "\n" not in str(info.value)


def test_other_datasets_pass_validation_without_touching_data():
  for name in ("svhn_cropped", "imagenette/320px", "oxford_flowers102:2.1.1",
               "imagefolder:/does/not/exist/yet"):
    kdc.validate(_config(dataset=name, num_classes=10), model_names=["resnet8"], num_devices=1)


# ----------------------------------------------------------------------------- end to end


def _small_folder(tmp_path):
  root = str(tmp_path / "folder")
  _write_folder(root, {"train": {f"c{i}": 2 for i in range(4)},
                       "test": {f"c{i}": 1 for i in range(4)}})
  return root


@pytest.mark.slow
def test_imagefolder_run_records_resolved_data_keys(tmp_path):
  """A run on an image folder: config.json holds the resolved image_size, augment, mean, std."""
  root = _small_folder(tmp_path)
  config = _config(dataset=f"imagefolder:{root}", num_classes=4, augment="none",
                   batch_size=8, eval_batch_size=4, num_train_steps=2, steps_per_dispatch=1,
                   log_every_steps=1, checkpoint_every_steps=2, num_devices=1)
  workdir = str(tmp_path / "run")
  result = loop.train_and_evaluate(config, workdir)
  assert result.step == 2 and result.final["count"] == 4
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  pixels = np.stack([_pil(os.path.join(root, "train", c, f))
                     for c in sorted(os.listdir(os.path.join(root, "train")))
                     for f in sorted(os.listdir(os.path.join(root, "train", c)))])
  x = pixels.astype(np.float64) / 255.0
  np.testing.assert_allclose(saved["mean"], x.mean(axis=(0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(saved["std"], x.std(axis=(0, 1, 2)), rtol=1e-10)
  assert (saved["image_size"], saved["augment"]) == (8, "none")
  assert config.mean == () and config.image_size == 0   # the caller's config is untouched


def test_launch_with_a_missing_image_folder_exits_2_with_one_line(tmp_path):
  cmd = [sys.executable, os.path.join(REPO, "launch.py"),
         f"--config={os.path.join(REPO, 'configs', 'smoke.py')}:ce",
         f"--workdir={tmp_path / 'run'}", f"--config.dataset=imagefolder:{tmp_path / 'nope'}",
         "--config.num_classes=10"]
  env = testenv.subprocess_env(1)
  res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert res.returncode == 2, res.stderr[-2000:]
  errors_out = [line for line in res.stderr.splitlines() if line.startswith("error:")]
  assert len(errors_out) == 1 and str(tmp_path / "nope") in errors_out[0]
  assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_launch_on_an_image_folder_with_given_mean_std(tmp_path):
  """The command line of docs/data.md: imagefolder, augment=none, --config.mean/std tuples."""
  root = _small_folder(tmp_path)
  workdir = tmp_path / "run"
  cmd = [sys.executable, os.path.join(REPO, "launch.py"),
         f"--config={os.path.join(REPO, 'configs', 'smoke.py')}:kd", f"--workdir={workdir}",
         f"--config.dataset=imagefolder:{root}", "--config.num_classes=4",
         "--config.augment=none", "--config.mean=(0.5071,0.4867,0.4408)",
         "--config.std=(0.2675,0.2565,0.2761)", "--config.batch_size=8",
         "--config.eval_batch_size=4", "--config.num_train_steps=1",
         "--config.steps_per_dispatch=1", "--config.train_examples=0",
         "--config.eval_examples=0"]
  env = testenv.subprocess_env(1)
  res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  with open(workdir / "config.json") as f:
    saved = json.load(f)
  assert saved["mean"] == [0.5071, 0.4867, 0.4408] and saved["std"] == [0.2675, 0.2565, 0.2761]
  assert (saved["dataset"], saved["image_size"], saved["augment"]) == (
      f"imagefolder:{root}", 8, "none")
  with open(workdir / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert any(r.get("eval/top1") is not None and r["step"] == 1 for r in records)


def test_dataset_fingerprints_follow_the_files_and_the_tfds_metadata(tmp_path):
  root = str(tmp_path / "folder")
  _write_folder(root, {"train": {"a": 2, "b": 1}, "test": {"a": 1}, "extra": {"a": 1}})
  name = f"imagefolder:{root}"
  first = data.dataset_fingerprint(name, ("train", "test"))
  assert first.startswith("sha256:") and "of 4 files (names and sizes)" in first
  assert data.dataset_fingerprint(name, ("train", "test")) == first
  os.utime(os.path.join(root, "train", "a", "000.png"), (0, 0))    # only the time changes
  assert data.dataset_fingerprint(name, ("train", "test")) == first
  _write_folder(root, {"extra": {"b": 1}})                         # a split the run does not read
  assert data.dataset_fingerprint(name, ("train", "test")) == first
  with open(os.path.join(root, "test", "a", "000.png"), "ab") as f:
    f.write(b"\0")                                                 # one file one byte longer
  assert data.dataset_fingerprint(name, ("train", "test")) != first
  assert data.dataset_fingerprint("synthetic", ("train", "test")).startswith("synthetic")
  data_dir = _fixed_tfds(str(tmp_path / "tfds"))
  assert data.dataset_fingerprint("tiny_fixed", ("train", "test"), data_dir) == (
      "tfds tiny_fixed/1.0.0: test 10, train 40")
