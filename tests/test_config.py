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


def test_presets_are_layers_applying_ls_twice_is_applying_it_once():
  once = dkd.get_config("vgg13,vgg8,ls")
  twice = kdc.apply_pair(dkd.get_config("vgg13,vgg8,ls"), "vgg13", "vgg8", ls=True)
  assert twice.to_json(sort_keys=True) == once.to_json(sort_keys=True)
  assert (twice.loss.alpha, twice.loss.beta) == (15.0, 30.0)   # 1 * 15 and 2 * 15, not 225
  rk = kdc.apply_pair(rkkd.get_config("vgg13,vgg8,dkd,ls"), "vgg13", "vgg8", ls=True)
  assert (rk.loss.alpha, rk.loss.rank_weight) == (15.0, 15.0)
  # Another pair replaces the pair layer, and LS is recomputed from the values beneath it.
  other = kdc.apply_pair(dkd.get_config("vgg13,vgg8,ls"), "resnet56", "resnet20", ls=True)
  assert other.to_json(sort_keys=True) == dkd.get_config("resnet56,resnet20,ls").to_json(
      sort_keys=True)
  assert [layer.source for layer in kdc.layers(twice)] == [
      "method record", "pair preset", "LS recipe"]


def test_sources_name_the_layer_each_value_comes_from():
  c = rkkd.get_config("imagenet_resnet34,imagenet_resnet18,dkd")
  c.seed = 3   # what a config file sets itself
  c.loss.beta = 0.7
  kdc.record_command_line(c.lock(), {})
  c.unlock()
  c.learning_rate = 0.3
  kdc.record_command_line(c, {"learning_rate": 0.3})
  where = kdc.sources(c)
  assert set(where) == set(kdc.key_descriptions())
  assert set(where.values()) <= set(kdc.SOURCES)
  assert where["method"] == where["base_method"] == where["loss.ce_weight"] == "method record"
  assert where["batch_size"] == where["loss.temperature"] == "protocol"   # the ImageNet protocol
  assert where["loss.warmup_epochs"] == "protocol"          # DKD's ImageNet value, 1
  assert where["teacher"] == "pair preset"
  assert where["seed"] == where["loss.beta"] == "config file"   # the pair's 0.5, changed
  assert where["learning_rate"] == "command line"
  assert where["loss.rank_form"] == "schema default"
  c2 = dkd.get_config("vgg13,vgg8,ls")
  assert kdc.sources(c2)["loss.alpha"] == kdc.sources(c2)["loss.temperature"] == "LS recipe"
  assert kdc.sources(c2)["loss.beta"] == "LS recipe" and c2.loss.beta == 30.0
  resolved = c2.copy_and_resolve_references()
  resolved.image_size = 32
  assert kdc.sources(c2, resolved)["image_size"] == "resolved from the data"


def test_print_config_lines_carry_value_source_and_description():
  c = kd.get_config("vgg13,vgg8")
  lines = {l.split(" = ")[0]: l for l in kdc.format_config(c, {"loss.temperature": 4.0}).split(
      "\n")}
  assert set(lines) == set(kdc.key_descriptions())
  assert lines["loss.temperature"].startswith("loss.temperature = 4.0 ")
  assert "  command line  " in lines["loss.temperature"]
  assert lines["student"].split("  # ")[0].rstrip().endswith("pair preset")
  assert lines["loss.kd_weight"].endswith("# KD: weight of T^2 KL")


def test_no_list_of_loss_keys_outside_the_records():
  """The schema's loss block, LossSpec and the sweepable keys are the records' declarations."""
  from kd_jax import methods  # pylint: disable=import-outside-toplevel
  from kd_jax.train import sweep  # pylint: disable=import-outside-toplevel
  declared = [h.key for h in methods.hyperparameters()]
  assert sorted(kdc.base_config().loss.keys()) == sorted(declared)
  spec = methods.LossSpec.from_config(kd.get_config())
  assert [k for k, _ in spec.hyper] == sorted(declared)
  assert set(sweep.sweepable()) - {"seed", "learning_rate", "momentum", "weight_decay"} == {
      f"loss.{h.key}" for h in methods.hyperparameters() if h.sweepable}
  assert methods.get("dhkd").own_keys == ("grad_align",)
  assert methods.get("rkkd").own_keys == ("rank_weight",)


def test_every_declared_range_and_choice_is_enforced_by_validate():
  """validate() checks each key against the accepted values of its schema entry: a value just
  outside a declared range (or not among declared choices) is refused in one line naming it."""
  from kd_jax import methods  # pylint: disable=import-outside-toplevel
  checked = []
  for key, default, _, accepts in kdc.schema():
    if isinstance(accepts, methods.Range):
      bad = (accepts.lo if accepts.lo_open else accepts.lo - 1) if accepts.lo > -float("inf") \
          else accepts.hi + 1
      bad = int(bad) if isinstance(default, int) else float(bad)
    elif isinstance(accepts, methods.Choice) and isinstance(default, str):
      bad = "no_such_value"
    else:
      continue
    c = kd.get_config()
    kdc._set(c, key, bad)  # pylint: disable=protected-access
    with pytest.raises(errors.ConfigError) as e:
      _validate(c)
    assert str(e.value).startswith(f"config.{key}={bad!r} "), (key, e.value)
    assert "\n" not in str(e.value)
    checked.append(key)
  # The optimiser, data and loop keys that have a range are among them (and the loss keys).
  assert {"momentum", "lr_decay", "seed", "batch_size", "num_classes", "log_every_steps",
          "schedule", "augment", "loss.temperature", "loss.rank_form"} <= set(checked)
  assert kdc.schema()[0][3] is None   # the method: checked against the registry at run time


def test_a_value_given_on_the_command_line_wins_even_when_it_equals_the_default():
  """num_classes follows the data and a short run logs every tenth of it, unless the value
  was chosen: a --config.KEY equal to the schema's default counts as chosen."""
  from kd_jax.train import loop  # pylint: disable=import-outside-toplevel
  left = kd.get_config()
  assert not kdc.chosen(left, "num_classes") and not kdc.chosen(left, "log_every_steps")
  from kd_jax.data import run_data  # pylint: disable=import-outside-toplevel

  def num_classes(config, found):
    return run_data.resolve_num_classes(
        config, found, "its class folders",
        schema_default=loop.num_classes_that_follow_the_data(config))
  assert num_classes(left, 4) == 4
  assert kdc.short_run_log_every(left, 150) == 15
  assert kdc.short_run_eval_every(left, 150, 300) == 30 / 300
  given = kdc.record_command_line(kd.get_config(), {"num_classes": 100, "log_every_steps": 100,
                                                    "eval_every_epochs": 1})
  assert kdc.chosen(given, "num_classes") and kdc.chosen(given, "log_every_steps")
  with pytest.raises(errors.ConfigError) as e:
    num_classes(given, 4)
  assert str(e.value).startswith("config.num_classes=100 does not match dataset 'cifar100', "
                                 "which has 4 classes") and "--config.num_classes=4" in str(e.value)
  assert kdc.short_run_log_every(given, 150) == 100
  assert kdc.short_run_eval_every(given, 150, 300) == 1
  # A config file's own value that differs from the layers' is chosen too; a sweep's runs keep
  # the layers, so they decide as the launch does.
  own = kd.get_config()
  own.log_every_steps = 5
  assert kdc.chosen(own, "log_every_steps") and kdc.short_run_log_every(own, 150) == 5
  from kd_jax.train import sweep  # pylint: disable=import-outside-toplevel
  given.sweep = "seed=0,1"
  assert [kdc.short_run_log_every(c, 150) for _, c in sweep.expand(given)] == [100, 100]


def _kd_jax_imports() -> dict:
  """{module: the kd_jax modules it imports}, read with `ast` from every file of kd_jax, the
  imports inside functions included. `from P import m` names module P.m where P.m is a module;
  an import of a package the module lies in is left out (Python initialises it first anyway)."""
  import ast  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  files = {}
  for folder, _, names in os.walk(os.path.join(root, "kd_jax")):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        files[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
  graph = {}
  for module, path in files.items():
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    with open(path) as f:
      tree = ast.parse(f.read())
    named = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        named.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parts + ([base] if base else []))
        named.update(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                     for a in node.names)
    graph[module] = {n for n in named if n in files and n != module
                     and not module.startswith(n + ".")}
  return graph


def _cycle(graph: dict) -> list:
  """An import cycle of `graph` as [a, b, ..., a], or [] if it has none (depth-first search)."""
  done, path = set(), []

  def visit(module):
    if module in path:
      return path[path.index(module):] + [module]
    if module in done:
      return []
    path.append(module)
    for dep in sorted(graph[module]):
      found = visit(dep)
      if found:
        return found
    path.pop()
    done.add(module)
    return []
  for module in sorted(graph):
    found = visit(module)
    if found:
      return found
  return []


def test_kd_jax_imports_form_no_cycle_and_point_down_the_layers():
  """docs/architecture.md "Who may import whom": no import cycle, and the lower layers never
  import the ones above them."""
  graph = _kd_jax_imports()
  assert {"kd_jax.config", "kd_jax.methods", "kd_jax.train.loop", "kd_jax.data.sources"} <= set(
      graph) and "kd_jax.methods" in graph["kd_jax.config"]   # the walk sees the imports
  assert _cycle(graph) == [], " -> ".join(_cycle(graph))
  # The check catches a cycle: methods importing config (which imports methods) makes one.
  assert "kd_jax.config" in _cycle({**graph, "kd_jax.methods": graph["kd_jax.methods"] | {
      "kd_jax.config"}})
  layer = {"kd_jax.errors": 0, "kd_jax.console": 0, "kd_jax.losses": 1, "kd_jax.models": 2,
           "kd_jax.data": 2, "kd_jax.methods": 3, "kd_jax.config": 4, "kd_jax.train": 5}

  def rank(module):
    return next((r for p, r in layer.items() if module == p or module.startswith(p + ".")), None)
  for module, deps in graph.items():
    for dep in deps:
      if rank(module) is not None and rank(dep) is not None:
        assert rank(dep) < rank(module) or module.split(".")[1] == dep.split(".")[1], (
            f"{module} imports {dep}, a layer above it")
