"""Inputs that look valid but are not: out-of-range labels (every loss, the data checks) and a
teacher whose logits are non-finite."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import errors
from kd_jax import losses
from kd_jax.data import common as data_common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Label -1 would wrap to the last class with a plain gather, C would read past the end.
BAD = np.array([-1, 5, -5, 2], np.int32)   # C = 5: only the last is valid


def _logits():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(4, 5)).astype(np.float32)
  t = rng.normal(size=(4, 5)).astype(np.float32)
  return jnp.asarray(s), jnp.asarray(t)


@pytest.mark.parametrize("name", ["cross_entropy", "tckd", "nckd", "dkd", "scd", "mcd", "rld"])
def test_out_of_range_labels_give_nan_never_a_plausible_value(name):
  s, t = _logits()
  fn = getattr(losses, name)
  out = np.asarray(fn(s, jnp.asarray(BAD)) if name == "cross_entropy"
                   else fn(s, t, jnp.asarray(BAD)))
  assert np.all(np.isnan(out[:3])), out     # -1, C and -5
  assert np.isfinite(out[3]), out            # the valid example is unaffected


def test_cross_entropy_of_a_valid_label_matches_numpy():
  s, _ = _logits()
  z = np.asarray(s, np.float64)
  lsm = z - z.max(1, keepdims=True)
  lsm = lsm - np.log(np.exp(lsm).sum(1, keepdims=True))
  out = np.asarray(losses.cross_entropy(s, jnp.asarray(BAD)))
  np.testing.assert_allclose(out[3], -lsm[3, 2], rtol=1e-5)


def test_check_labels_names_the_bad_label_negative_included():
  with pytest.raises(errors.DataError, match=r"label -1 at index 2 is outside \[0, 10\)"):
    data_common.check_labels(np.array([0, 9, -1, 3]), 10, where="training batch of step 7")
  with pytest.raises(errors.DataError, match="training batch of step 7: label 10"):
    data_common.check_labels(np.array([10]), 10, where="training batch of step 7")
  data_common.check_labels(np.array([0, 9]), 10, where="ok")  # in range: no error


def test_in_memory_split_is_checked_for_every_example():
  images = np.zeros((300, 4, 4, 3), np.uint8)
  labels = np.zeros(300, np.int64)
  labels[257] = -3  # far past any first batch
  with pytest.raises(errors.DataError, match="label -3 at index 257"):
    data_common.check_arrays("cifar100", "train", images, labels, 100)


def test_teacher_with_non_finite_eval_logits_is_refused_at_load(tmp_path):
  """A file that loads (right keys and shapes, every value finite) but whose classifier weights
  are so large that the logits overflow to inf. (A NaN in the file itself is refused earlier,
  when the weights are read; a negative BatchNorm variance is not a reliable trigger: XLA's CPU
  rsqrt may return a finite value for it.)"""
  torch = pytest.importorskip("torch")
  import torch_twins_a  # pylint: disable=g-import-not-at-top
  from kd_jax.train import loop  # pylint: disable=g-import-not-at-top
  from test_robustness import saved_steps, tiny  # pylint: disable=g-import-not-at-top
  net = torch_twins_a.build("resnet8", 100)
  state = net.state_dict()
  key = [k for k in state if k.endswith("weight")][-1]   # the final linear layer
  state[key][:] = 3e38
  path = str(tmp_path / "overflowing_teacher.pth")
  torch.save({"model": state}, path)
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.TeacherError, match="non-finite logits") as e:
    loop.train_and_evaluate(tiny("kd", teacher_checkpoint=path), workdir)
  assert "config.teacher_checkpoint" in str(e.value)
  assert not saved_steps(workdir)
  # A NaN stored in the file is refused when it is read, naming the file.
  state[key][:] = float("nan")
  torch.save({"model": state}, path)
  with pytest.raises(errors.TeacherError, match="holds non-finite"):
    loop.train_and_evaluate(tiny("kd", teacher_checkpoint=path), str(tmp_path / "run2"))


# --- Image folders: bad files, empty and nested class folders, one class ------------------


def _folder(tmp_path, layout, **kwargs):
  from test_data_sources import _write_folder  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "folder")
  _write_folder(root, layout, **kwargs)
  return root


def test_unreadable_images_are_named_or_skipped_and_counted(tmp_path, capsys):
  pytest.importorskip("PIL.Image")
  from kd_jax import data  # pylint: disable=g-import-not-at-top
  root = _folder(tmp_path, {"train": {"a": 2, "b": 2}})
  good = os.path.join(root, "train", "a", "000.png")
  with open(good, "rb") as f:
    png = f.read()
  bad = {os.path.join(root, "train", "a", "cut.png"): png[:40],          # truncated PNG
         os.path.join(root, "train", "b", "empty.png"): b"",             # 0 bytes
         os.path.join(root, "train", "b", "text.png"): b"not an image"}  # garbage
  for path, content in bad.items():
    with open(path, "wb") as f:
      f.write(content)
  with pytest.raises(errors.DataError) as info:
    data.load_in_memory(f"imagefolder:{root}", "train")
  message = str(info.value)
  named = [p for p in bad if p in message]
  assert len(named) == 1 and "and 2 more unreadable files" in message, message
  assert "--config.skip_unreadable_images=true" in message and "\n" not in message
  if named[0].endswith("empty.png"):
    assert "0 bytes" in message
  capsys.readouterr()
  loaded = data.load_in_memory(f"imagefolder:{root}", "train", skip_unreadable=True)
  assert len(loaded) == 4 and sorted(loaded.labels.tolist()) == [0, 0, 1, 1]
  assert "skipped 3 unreadable of 7 files" in capsys.readouterr().err


def test_empty_class_folder_is_refused_naming_it(tmp_path):
  from kd_jax import data  # pylint: disable=g-import-not-at-top
  root = _folder(tmp_path, {"train": {"a": 1, "b": 1}})
  os.makedirs(os.path.join(root, "train", "c"))
  with pytest.raises(errors.DataError, match=r"class folder .*train/c holds no image"):
    data.load_in_memory(f"imagefolder:{root}", "train")


def test_images_in_nested_folders_count_for_their_class_and_are_said(tmp_path, capsys):
  from kd_jax import data  # pylint: disable=g-import-not-at-top
  root = _folder(tmp_path, {"train": {"a": 1, "b": 1}})
  from test_data_sources import _write_folder  # pylint: disable=g-import-not-at-top
  _write_folder(os.path.join(root, "train", "b"), {"deeper": {"x": 2}}, seed=3)  # b/deeper/x/
  loaded = data.load_in_memory(f"imagefolder:{root}", "train")
  assert sorted(loaded.labels.tolist()) == [0, 1, 1, 1]
  assert "2 images in sub-folders of class folders are read as that class's" in (
      capsys.readouterr().out)


def test_one_class_folder_is_refused_before_training(tmp_path):
  from test_data_sources import _config, _mesh  # pylint: disable=g-import-not-at-top
  from kd_jax.train import loop  # pylint: disable=g-import-not-at-top
  root = _folder(tmp_path, {"train": {"only": 4}, "test": {"only": 2}})
  with pytest.raises(errors.ConfigError, match=r"has 1 class .*at least 2 classes"):
    loop.setup_data(_config(dataset=f"imagefolder:{root}", batch_size=2), _mesh())


# --- Values the schema can range-check, before anything heavy ------------------------------


@pytest.mark.parametrize("key,value,needle", [
    ("lr_decay", -1.0, "config.lr_decay=-1.0 is not accepted; expected a finite number > 0"),
    ("lr_decay", 0.0, "config.lr_decay=0.0"),
    ("momentum", 5.0, "config.momentum=5.0 is not accepted; expected a number in [0, 1)"),
    ("momentum", 1.0, "config.momentum=1.0"),
    ("seed", 99999999999, "config.seed=99999999999 is not accepted; expected an integer in "
                          "[0, 2147483647]"),
    ("seed", -1, "config.seed=-1"),
    ("teacher_checkpoint", "random:abc", "config.teacher_checkpoint='random:abc': the seed "
                                         "'abc' is not accepted; expected 'random:SEED'"),
    ("teacher_checkpoint", "random:2147483648", "the seed '2147483648' is not accepted"),
])
def test_out_of_range_values_are_one_line(key, value, needle):
  import smoke  # pylint: disable=g-import-not-at-top
  from kd_jax import config as kdc  # pylint: disable=g-import-not-at-top
  config = smoke.get_config("kd")
  kdc.validate(config, model_names=["resnet8"], num_devices=1)   # the unchanged config passes
  config[key] = value
  with pytest.raises(errors.ConfigError) as info:
    kdc.validate(config, model_names=["resnet8"], num_devices=1)
  assert needle in str(info.value) and "\n" not in str(info.value)


def test_random_teacher_seed_at_the_range_ends_is_accepted():
  import smoke  # pylint: disable=g-import-not-at-top
  from kd_jax import config as kdc  # pylint: disable=g-import-not-at-top
  for source in ("random:0", "random:", "random:2147483647"):
    config = smoke.get_config("kd")
    config.teacher_checkpoint = source
    kdc.validate(config, model_names=["resnet8"], num_devices=1)


def test_every_seed_of_a_sweep_is_range_checked_before_any_work(tmp_path):
  import smoke  # pylint: disable=g-import-not-at-top
  from kd_jax.train import sweep  # pylint: disable=g-import-not-at-top
  config = smoke.get_config("kd")
  config.num_devices = 1
  config.sweep = "seed=1,99999999999"
  workdir = tmp_path / "sweep"
  with pytest.raises(errors.ConfigError, match=r"config.seed=99999999999 is not accepted"):
    sweep.train_sweep(config, str(workdir))
  assert not workdir.exists()
