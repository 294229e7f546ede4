"""The augmentation registry, named views and the teacher table's views: what each view of a batch
is, in memory and streamed, and which views the teacher table serves."""
import dataclasses
import importlib.util
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import view_batches
from kd_jax import config as kdc
from kd_jax import data
from kd_jax import errors
from kd_jax import methods
from kd_jax import models
from kd_jax.data import randaugment
from kd_jax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_file(name: str, arg=None):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# ----------------------------------------------------------------------------- the registry


def test_every_accepted_name_but_auto_has_one_record():
  assert data.AUGMENTATIONS[0] == "auto"
  assert set(data.AUGMENTATIONS[1:]) == set(data.AUGMENTATION_REGISTRY)
  for name, record in data.AUGMENTATION_REGISTRY.items():
    assert record.name == name and record.description
    assert (record.view is None) == (record.num_views is None), name


@pytest.mark.parametrize("name", ["pad_crop_flip", "none"])
def test_finite_view_numbers_are_the_drawn_views_and_count_the_distinct_ones(name):
  """For a finite augmentation, the view number the in-memory transform reports reproduces its
  image through `view`, and `num_views` is the number of distinct images `view` makes."""
  record = data.AUGMENTATION_REGISTRY[name]
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(1, 256, (64, 6, 6, 3), np.uint8))   # no black pixel
  pixels, index = record.in_memory(jax.random.key(3), images, crop_area=data.CROP_AREA,
                                   crop_aspect=data.CROP_ASPECT)
  for i in range(images.shape[0]):
    again = record.view(images[i:i + 1], jnp.int32(index[i]))
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(pixels[i]))
  distinct = {np.asarray(record.view(images[:1], jnp.int32(v))).tobytes()
              for v in range(record.num_views)}
  assert len(distinct) == record.num_views
  if name == "pad_crop_flip":   # (2 * 4 + 1)^2 crops x 2 flips, drawn at random
    assert record.num_views == 162 and len(set(np.asarray(index).tolist())) > 40


def test_view_augments_follow_their_own_and_none_overrides_all():
  assert data.view_augments("pad_crop_flip", ["", "randaugment"], True) == (
      "pad_crop_flip", "randaugment")
  assert data.view_augments("auto", ["", "none"], False) == ("random_resized_crop", "none")
  assert data.view_augments("none", ["", "randaugment"], True) == ("none", "none")
  with pytest.raises(data.DataError, match="augment='crop'; accepted: auto, pad_crop_flip"):
    data.view_augments("pad_crop_flip", ["crop"], True)


# ----------------------------------------------------------------------------- teacher table


def test_teacher_table_problem_names_what_is_refused():
  assert data.teacher_table_problem("cifar100", ("pad_crop_flip", "randaugment")) == ""
  assert data.teacher_table_problem("imagefolder:/x", ("none",)) == ""
  assert "'imagenet2012' is streamed" in data.teacher_table_problem("imagenet2012", ("none",))
  problem = data.teacher_table_problem("cifar100", ("random_resized_crop", "randaugment"))
  assert "finite set of views" in problem and "pad_crop_flip, none" in problem


def test_mlkd_validates_with_a_teacher_table_and_refuses_one_without_finite_views():
  config = _config_file("mlkd")
  config.teacher_checkpoint = "random:0"
  config.teacher_cache = "/tmp/table"
  kdc.validate(config, model_names=models.names(), num_devices=1)   # weak: table; strong: online
  config.augment = "random_resized_crop"
  with pytest.raises(errors.ConfigError) as e:
    kdc.validate(config, model_names=models.names(), num_devices=1)
  assert "finite set of views" in str(e.value) and "teacher_cache=''" in str(e.value)
  assert "\n" not in str(e.value)


def test_table_serves_the_weak_view_and_leaves_the_strong_view_to_the_teacher():
  """MLKD in memory with a table of pad_crop_flip: the weak view's teacher logits are the table
  rows of each example's drawn view (the row encodes (example, view), and that view rebuilt from
  the raw image is the weak image); the strong view (randaugment) gets none from the table."""
  spec = dataclasses.replace(view_batches.spec_of(_config_file("mlkd")), teacher_table=True)
  images, labels = view_batches.split()
  n, views = images.shape[0], data.AUGMENTATION_REGISTRY["pad_crop_flip"].num_views
  table = np.zeros((n, views, 4), np.float32)
  table[..., 0] = np.arange(n)[:, None]
  table[..., 1] = np.arange(views)[None, :]
  state = types.SimpleNamespace(step=jnp.int32(3), rng=jax.random.PRNGKey(0))
  batch_of = step_lib._in_memory_batch  # pylint: disable=protected-access
  got_images, _, logits = jax.jit(lambda *d: batch_of(
      spec, state, *d, tables={"pad_crop_flip": jnp.asarray(table)}))(images, labels)
  assert set(logits) == {"weak"}
  idx = np.asarray(data.cifar_batch_indices(n, seed=0, step=3, batch_size=8))
  np.testing.assert_array_equal(np.asarray(logits["weak"][:, 0]), idx)
  rebuilt = data.AUGMENTATION_REGISTRY["pad_crop_flip"].view
  for i, (example, view) in enumerate(np.asarray(logits["weak"][:, :2]).astype(int)):
    x = data.normalize(rebuilt(images[example:example + 1], jnp.int32(view)), view_batches.MEAN,
                       view_batches.STD)
    np.testing.assert_array_equal(np.asarray(x[0]), np.asarray(got_images["weak"][i]))
  variables, tables = step_lib.teacher_parts(spec, {"variables": {"w": 1}, "tables": {}})
  assert variables == {"w": 1} and tables == {}
  assert step_lib.teacher_parts(spec, table)[1]["pad_crop_flip"] is table   # the run's own


# ----------------------------------------------------------------------------- streamed views


def _stand_in_strong_view(image, seed):
  """Stand-in for randaugment.tf_strong_view (uint8 HxWx3 in and out): the negative image,
  rolled down by a seed-drawn number of rows in [0, 3)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shift = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=3, dtype=tf.int32)
  return tf.roll(255 - image, shift, axis=0)


def _tiny_tfds(data_dir, n=16, size=8):
  tfds = pytest.importorskip("tensorflow_datasets")
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(size, size, 3)),
      "label": tfds.features.ClassLabel(num_classes=n)})
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (n, size, size, 3), dtype=np.uint8)
  tfds.dataset_builders.store_as_tfds_dataset(
      name="tiny_views", version="1.0.0", features=features, data_dir=data_dir,
      split_datasets={s: ((str(i), {"image": images[i], "label": i}) for i in range(n))
                      for s in ("train", "test")}, disable_shuffling=True)
  return images


def _is_padded_crop(image, reference):
  padded = np.pad(reference.astype(np.float32), ((4, 4), (4, 4), (0, 0)))
  s = image.shape[0]
  return any(np.abs((c[:, ::-1] if f else c) - image).max() < 1e-3
             for dy in range(9) for dx in range(9) for f in (False, True)
             for c in [padded[dy:dy + s, dx:dx + s]])


def test_streamed_views_each_have_their_own_augmentation(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow")
  monkeypatch.setattr(randaugment, "tf_strong_view", _stand_in_strong_view, raising=False)
  data_dir = str(tmp_path / "tfds")
  images = _tiny_tfds(data_dir)
  kw = dict(batch_size=16, image_size=8, name="tiny_views", seed=4, mean=(0.0,) * 3,
            std=(1 / 255,) * 3)
  views = (("weak", "pad_crop_flip"), ("strong", "randaugment"))
  both = next(data.train_stream(data_dir, views=views, **kw))
  weak_only = next(data.train_stream(data_dir, augment="pad_crop_flip", **kw))
  assert set(both["image"]) == {"weak", "strong"}
  # The first view is the stream of a run with that one view, bit for bit.
  np.testing.assert_array_equal(both["image"]["weak"], weak_only["image"])
  np.testing.assert_array_equal(both["label"], weak_only["label"])
  strong = both["image"]["strong"]
  rows_rolled = 0
  for i, label in enumerate(both["label"]):
    ref = images[label]
    assert _is_padded_crop(both["image"]["weak"][i], ref)
    # Undo the stand-in (negate, roll back): a padded crop of the same example, its own draw.
    undone = [np.roll(255.0 - strong[i], -k, axis=0) for k in range(3)]
    matches = [k for k, u in enumerate(undone) if _is_padded_crop(u, ref)]
    assert matches, i
    rows_rolled += matches[0] > 0
  assert 0 < rows_rolled < 16                     # the strong view's seed is drawn per example
  assert not np.array_equal(255.0 - strong, both["image"]["weak"])
  # augment='none' for the run: every view is the un-augmented image.
  none = data.view_augments("none", ["", "randaugment"], False)
  plain = next(data.train_stream(data_dir, views=tuple(zip(("weak", "strong"), none)), **kw))
  np.testing.assert_array_equal(plain["image"]["weak"], plain["image"]["strong"])


def test_streamed_strong_view_runs_and_without_its_tf_function_is_one_line(tmp_path,
                                                                           monkeypatch):
  """The real tf_strong_view in the stream: its images, pixel values unchanged by a unit
  normalisation, are whole grey levels; a version without it is refused in one line."""
  pytest.importorskip("tensorflow")
  data_dir = str(tmp_path / "tfds")
  _tiny_tfds(data_dir, n=8)
  kw = dict(augment="randaugment", batch_size=8, image_size=8, name="tiny_views", seed=0)
  pixels = next(data.train_stream(data_dir, mean=(0.0,) * 3, std=(1 / 255,) * 3, **kw))["image"]
  assert pixels.shape == (8, 8, 8, 3)
  assert np.abs(pixels - np.round(pixels)).max() < 1e-3 and 0 <= pixels.min() <= pixels.max() <= 255
  monkeypatch.delattr(randaugment, "tf_strong_view")
  with pytest.raises(data.DataError) as e:
    next(data.train_stream(data_dir, **kw))
  assert "tf_strong_view" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- image folders


@pytest.mark.slow
def test_image_folder_sweeps_with_the_teacher_table(tmp_path, capsys):
  """An image folder is data held in memory like any other: a sweep of two MLKD seeds runs on
  it with the teacher table of the weak view (pad_crop_flip), built once for the folder's
  training split, and the teacher online on the strong view."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from kd_jax.train import sweep  # pylint: disable=g-import-not-at-top
  root = tmp_path / "folder"
  rng = np.random.default_rng(0)
  for split, count in (("train", 2), ("test", 1)):
    for c in range(4):
      os.makedirs(root / split / f"c{c}")
      for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(
            root / split / f"c{c}" / f"{i}.png")
  config = _config_file("smoke", "mlkd")
  for key, value in dict(dataset=f"imagefolder:{root}", num_classes=4, train_examples=0,
                         eval_examples=0, batch_size=8, eval_batch_size=4, num_train_steps=2,
                         steps_per_dispatch=1, log_every_steps=1, checkpoint_every_steps=2,
                         num_devices=1, teacher_cache=str(tmp_path / "cache"),
                         sweep="seed=0,1").items():
    config[key] = value
  results = sweep.train_sweep(config, str(tmp_path / "run"))
  assert [r.step for r in results] == [2, 2] and all(r.final["count"] == 4 for r in results)
  (table_dir,) = os.listdir(tmp_path / "cache")
  with open(tmp_path / "cache" / table_dir / "manifest.json") as f:
    manifest = json.load(f)
  assert (manifest["dataset"], manifest["num_examples"], manifest["num_views"]) == (
      config.dataset, 8, 162)
  assert "teacher table: view strong runs the teacher online" in capsys.readouterr().out
  for r in results:
    with open(os.path.join(r.workdir, "metrics.jsonl")) as f:
      logged = [json.loads(line) for line in f]
    assert all(np.isfinite(v) for rec in logged for k, v in rec.items() if k.startswith("train/"))
    assert any("train/kd" in rec for rec in logged)


@pytest.mark.slow
def test_mlkd_trains_on_streamed_data_with_both_views(tmp_path, monkeypatch):
  """A streamed dataset (in_memory_budget_mb=0) gives MLKD its weak and strong views through
  tf.data; the run trains and its loss terms are finite."""
  pytest.importorskip("tensorflow")
  from kd_jax.train import loop  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(randaugment, "tf_strong_view", _stand_in_strong_view, raising=False)
  data_dir = str(tmp_path / "tfds")
  _tiny_tfds(data_dir)
  config = _config_file("smoke", "mlkd")
  for key, value in dict(dataset="tiny_views", data_dir=data_dir, num_classes=16,
                         in_memory_budget_mb=0.0, train_examples=0, eval_examples=0,
                         eval_split="test", batch_size=8, eval_batch_size=8, num_train_steps=2,
                         steps_per_dispatch=2, log_every_steps=2, checkpoint_every_steps=2,
                         num_devices=1).items():
    config[key] = value
  workdir = str(tmp_path / "run")
  result = loop.train_and_evaluate(config, workdir)
  assert result.step == 2 and result.final["count"] == 16
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  terms = {k: v for r in logged for k, v in r.items() if k.startswith("train/")}
  assert "train/loss" in terms and all(np.isfinite(v) for v in terms.values())
