"""Config presets against docs/recipes.md: RKKD on any base, logit standardization, overrides."""

import pytest

from kd_jax import errors
from kd_jax import config as kdc

import dkd  # pylint: disable=g-import-not-at-top,wrong-import-position
import kd  # pylint: disable=g-import-not-at-top,wrong-import-position
import rkkd  # pylint: disable=g-import-not-at-top,wrong-import-position
import rld  # pylint: disable=g-import-not-at-top,wrong-import-position

NAMES = ["resnet8x4", "resnet32x4", "vgg8", "vgg13", "ShuffleV1", "imagenet_resnet18",
         "imagenet_resnet34"]


def _validate(config):
  config.teacher_checkpoint = config.teacher_checkpoint or "random:0"
  kdc.validate(config, model_names=NAMES, num_devices=1)


def test_rkkd_default_base_is_kd_with_gamma_09():
  c = rkkd.get_config()
  assert (c.method, c.base_method) == ("rkkd", "kd")
  assert (c.loss.ce_weight, c.loss.kd_weight, c.loss.temperature) == (0.1, 0.9, 4.0)
  assert (c.loss.rank_weight, c.loss.rank_steepness, c.loss.warmup_epochs) == (0.9, 100.0, 0)
  _validate(c)


def test_rkkd_on_dkd_takes_the_dkd_defaults_and_the_pair_beta():
  c = rkkd.get_config("dkd")
  assert (c.base_method, c.loss.ce_weight, c.loss.warmup_epochs, c.loss.rank_weight) == (
      "dkd", 1.0, 20, 1.0)
  c = rkkd.get_config("vgg13,vgg8,dkd")
  assert (c.teacher, c.student, c.loss.beta, c.loss.alpha) == ("vgg13", "vgg8", 6.0, 1.0)
  # The KD-base defaults are not what a DKD base gets (0.1 CE, no warm-up, beta 8).
  assert (c.loss.ce_weight, c.loss.warmup_epochs) == (1.0, 20)
  _validate(c)


def test_overriding_the_method_keys_on_the_command_line_is_refused():
  # What --config.base_method=dkd / --config.method=dkd would do: keep the KD base's weights.
  with pytest.raises(errors.ConfigError) as e:
    kdc.check_overrides(["loss.beta", "base_method"], "configs/rkkd.py:resnet32x4,resnet8x4")
  assert "--config.base_method cannot be overridden" in str(e.value)
  assert "configs/rkkd.py:BASE" in str(e.value) and "dkd" in str(e.value)
  with pytest.raises(errors.ConfigError, match=r"--config.method .*configs/METHOD\.py"):
    kdc.check_overrides(["method"], "configs/kd.py")
  kdc.check_overrides(["loss.beta", "seed"], "configs/kd.py")  # other keys are fine


def test_base_argument_is_only_for_rkkd():
  with pytest.raises(ValueError, match="only accepted by configs/rkkd.py"):
    dkd.get_config("vgg13,vgg8,kd")
  with pytest.raises(ValueError, match="expected 'TEACHER,STUDENT'"):
    rkkd.get_config("vgg13,vgg8,dkd,rld")


def test_ls_uses_published_settings_then_the_ls_defaults():
  # Published per-pair: docs/recipes.md §3.4, vgg13 -> vgg8 KD+LS (3, 9), DKD+LS (2, 15, beta 2).
  c = kd.get_config("vgg13,vgg8,ls")
  assert (c.loss.standardize, c.loss.temperature, c.loss.kd_weight, c.loss.ce_weight) == (
      True, 3.0, 9.0, 0.1)
  c = dkd.get_config("vgg13,vgg8,ls")
  assert (c.loss.temperature, c.loss.alpha, c.loss.beta, c.loss.ce_weight) == (
      2.0, 15.0, 30.0, 1.0)
  # A CIFAR pair without LS logs: the LS code's defaults T=2, kd_weight=9 on the pair's beta.
  c = dkd.get_config("resnet32x4,ShuffleV1,ls")
  assert (c.loss.temperature, c.loss.alpha, c.loss.beta) == (2.0, 9.0, 72.0)
  # RLD+LS has no per-pair settings: always T = tau_a = 2, alpha and beta times 9.
  c = rld.get_config("vgg13,vgg8,ls")
  assert (c.loss.temperature, c.loss.alpha_temperature, c.loss.alpha, c.loss.beta) == (
      2.0, 2.0, 9.0, 72.0)
  # RKKD on an LS base: the ranking weight follows the base's scaled distillation weight.
  c = rkkd.get_config("vgg13,vgg8,dkd,ls")
  assert (c.loss.alpha, c.loss.rank_weight) == (15.0, 15.0)


def test_ls_on_imagenet_is_refused_not_guessed():
  with pytest.raises(ValueError, match="no published ImageNet settings"):
    dkd.get_config("imagenet_resnet34,imagenet_resnet18,ls")
  with pytest.raises(ValueError, match="no published ImageNet settings"):
    kd.get_config("imagenet_resnet50,MobileNetV1,ls")


def test_kd_ls_on_imagenet_is_the_ls_readme_command():
  """The LS README runs r34_r18/kd.yaml (CE weight 1.0) with --logit-stand --base-temp 2
  --kd-weight 9, on the ImageNet protocol (docs/recipes.md §3.4)."""
  c = kd.get_config("imagenet_resnet34,imagenet_resnet18,ls")
  assert (c.loss.standardize, c.loss.temperature, c.loss.kd_weight, c.loss.ce_weight) == (
      True, 2.0, 9.0, 1.0)
  assert (c.dataset, c.batch_size, c.learning_rate, c.num_epochs) == (
      "imagenet2012", 512, 0.2, 100)
  assert tuple(c.lr_milestones) == (30, 60, 90) and c.loss.warmup_epochs == 0
  _validate(c)


def test_dhkd_imagenet_uses_its_dali_crop_others_torchvisions():
  """docs/recipes.md §3.5: DHKD's ImageNet crop is area 0.1-1, aspect 0.8-1.25; section 2: 0.08-1."""
  import dhkd  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  c = dhkd.get_config("imagenet_resnet34,imagenet_resnet18")
  assert (tuple(c.crop_area), tuple(c.crop_aspect)) == ((0.1, 1.0), (0.8, 1.25))
  _validate(c)
  c = kd.get_config("imagenet_resnet34,imagenet_resnet18")
  assert tuple(c.crop_area) == (0.08, 1.0)
  assert c.crop_aspect[0] == pytest.approx(3 / 4) and c.crop_aspect[1] == pytest.approx(4 / 3)
  _validate(c)


@pytest.mark.parametrize("key,value,needle", [
    ("crop_area", (0.0, 1.0), "0 < lo <= hi <= 1"),
    ("crop_area", (0.5, 1.5), "0 < lo <= hi <= 1"),
    ("crop_area", (0.9, 0.2), "0 < lo <= hi <= 1"),
    ("crop_aspect", (1.25,), "0 < lo <= hi"),
    ("crop_aspect", (-1.0, 2.0), "0 < lo <= hi"),
])
def test_bad_crop_range_is_refused_naming_it(key, value, needle):
  c = kd.get_config("imagenet_resnet34,imagenet_resnet18")
  c[key] = value
  with pytest.raises(errors.ConfigError, match=f"config.{key}=") as info:
    _validate(c)
  assert needle in str(info.value)


def test_crop_range_on_cifar_is_refused():
  c = kd.get_config()
  c.crop_area = (0.1, 1.0)
  with pytest.raises(errors.ConfigError, match="random resized crop only"):
    _validate(c)
  c.augment = "random_resized_crop"   # held in memory, cropped in JAX with these ranges
  _validate(c)
