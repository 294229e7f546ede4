"""Launches one kd_jax run: `python launch.py --config=configs/rkkd.py --workdir=DIR`.

Flags:
  --config=configs/X.py[:ARG]   an ml_collections config file; ARG picks a teacher/student pair
                                of the papers' grid (e.g. configs/kd.py:resnet32x4,resnet8x4)
  --config.KEY=VALUE            overrides any key (e.g. --config.loss.temperature=2)
  --workdir=DIR                 outputs; running the same command again resumes (or, for a
                                finished run, prints its summary)
  --print_config                prints the fully resolved config, one key a line with its
                                source and a short description, and exits (no --workdir needed)

Several hosts: each runs the same command. On a Cloud TPU pod or under Slurm, JAX finds its
peers by itself; elsewhere give each process --coordinator_address=HOST:PORT (process 0's),
--num_processes=N and its own --process_id=I. Preemption (SIGTERM) is agreed across hosts:
every host saves the same step.

Exit codes: 0 done; 2 bad input (one `error:` line); 75 stopped by SIGTERM or Ctrl-C with
nothing lost (a checkpoint saved, or stopped before training began): run the same command
again to resume; 130 a second Ctrl-C (stopped at once; saved checkpoints are intact).

List every key and its value:  python launch.py --config=configs/kd.py --print_config
"""
import difflib
import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False,
                                  "Print the resolved config with a description per key, exit.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Multi-process runs: HOST:PORT of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Multi-process runs: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "Multi-process runs: this process's index in [0, N).")

_LIST_KEYS = "python launch.py --config=configs/kd.py --print_config"


class _UsageError(Exception):
  """A bad command line: printed as one line, exit code 2."""


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


# The launcher's exit codes (kd_jax.errors defines them; repeated so that --help and command-line
# errors need no kd_jax import).
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130


def _stop_before_training(signum, frame):  # pylint: disable=unused-argument
  """Before (and around) the training loop: SIGTERM/SIGINT stop the run where it is."""
  from kd_jax import errors  # pylint: disable=g-import-not-at-top
  if getattr(_stop_before_training, "fired", False):
    print("second signal: stopped at once", file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access
  _stop_before_training.fired = True
  raise errors.Interrupted(signum)


def _install_signal_handlers(multi_host: bool) -> None:
  """SIGINT (and SIGTERM on one host; JAX's preemption service owns it on several) raise
  errors.Interrupted until the training loop takes them over (loop._Preemption)."""
  import signal  # pylint: disable=g-import-not-at-top
  for signum in (signal.SIGINT,) if multi_host else (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _stop_before_training)


# ---------------------------------------------------------------------------------------
# Command-line checks before absl/ml_collections parse it (they would print tracebacks).


def _flag_values(argv: list[str]) -> list[tuple[str, str]]:
  """(name, value) of the `--name=value` / `--name value` flags of argv[1:], in order."""
  out = []
  args = argv[1:]
  i = 0
  while i < len(args):
    arg = args[i]
    if arg == "--":
      break
    if arg.startswith("-") and arg.lstrip("-"):
      body = arg.lstrip("-")
      if "=" in body:
        name, value = body.split("=", 1)
      elif i + 1 < len(args) and not args[i + 1].startswith("--") and (
          body == "config" or body.startswith("config.") or body == "workdir"):
        name, value = body, args[i + 1]
        i += 1
      else:
        name, value = body, None
      out.append((name, value))
    i += 1
  return out


def _load_config(spec: str) -> ml_collections.ConfigDict:
  """Runs get_config() of `path[:arg]` as ml_collections would; errors become _UsageError."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise _UsageError(f"--config={spec}: no such file {path!r}; expected configs/X.py[:ARG] "
                      f"(e.g. configs/kd.py or configs/kd.py:resnet32x4,resnet8x4)")
  try:
    mod_spec = importlib.util.spec_from_file_location("_kd_jax_user_config", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise _UsageError(f"--config={spec}: cannot load {path} ({type(e).__name__}: "
                      f"{_one_line(e)})") from None
  if not hasattr(module, "get_config"):
    raise _UsageError(f"--config={spec}: {path} defines no get_config()")
  try:
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    hint = ""
    if arg and "pair" in str(e):
      names = [p.strip() for p in arg.split(",") if p.strip() and p.strip() != "ls"]
      if len(names) >= 2:
        close = difflib.get_close_matches(",".join(names[:2]), _known_pairs(), n=2,
                                          cutoff=0.8)
        if close:
          hint += f"; did you mean {' or '.join(f'`{c}`' for c in close)}?"
        if "--config.teacher=" not in str(e):
          hint += (f"; for a pair outside the grid start from {path} and set "
                   f"--config.teacher={names[0]} --config.student={names[1]} (the method's "
                   f"default hyperparameters apply)")
    raise _UsageError(f"--config={spec}: {_one_line(e)}{hint}") from None


def _known_pairs() -> list[str]:
  try:
    from kd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
    return list(config_lib.known_pairs())
  except (ImportError, AttributeError):
    return []


def _one_line(e: BaseException) -> str:
  text = str(e).strip().strip("'\"") or type(e).__name__
  return " ".join(text.split())


def _flat(config, prefix: str = "") -> dict:
  out = {}
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, f"{prefix}{name}."))
    else:
      out[f"{prefix}{name}"] = value
  return out


def suggest(key: str, keys: list[str]) -> list[str]:
  """Up to 3 keys closest to `key` (kd_jax.errors.suggest: difflib on dotted names and leaves)."""
  from kd_jax import errors  # pylint: disable=g-import-not-at-top  # imports nothing else
  return errors.suggest(key, keys)


def _known_flag(name: str) -> bool:
  """Whether absl defines --name (or --noname for a boolean flag)."""
  if name in flags.FLAGS:
    return True
  return name.startswith("no") and name[2:] in flags.FLAGS and isinstance(
      flags.FLAGS[name[2:]].value, bool)


_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _check_type(key: str, value: str, current) -> None:
  """Raises _UsageError unless `value` parses as the type of the key's current value."""
  expected = None
  if isinstance(current, bool):
    if value.lower() not in _TRUE + _FALSE:
      expected = "true or false"
  elif isinstance(current, int):
    try:
      int(value)
    except ValueError:
      expected = "an integer"
  elif isinstance(current, float):
    try:
      float(value)
    except ValueError:
      expected = "a number"
  elif isinstance(current, (tuple, list)):
    if not value.strip().startswith(("(", "[")):
      expected = f"a tuple such as {tuple(current)!r}"
  if expected:
    raise _UsageError(f"--config.{key}={value}: expected {expected} (current value "
                      f"{current!r})")


def check_command_line(argv: list[str]) -> ml_collections.ConfigDict | None:
  """The config named by --config with every --config.KEY checked; _UsageError otherwise."""
  values = _flag_values(argv)
  specs = [v for n, v in values if n == "config"]
  if not specs or not specs[-1]:
    raise _UsageError(f"--config=configs/X.py[:ARG] is required; e.g. "
                      f"`python launch.py --config=configs/smoke.py --workdir=/tmp/smoke` "
                      f"(--help for more)")
  config = _load_config(specs[-1])
  flat = _flat(config)
  for name, value in values:
    if not name.startswith("config.") and name != "config" and not _known_flag(name):
      keys = [k for k in flat if k == name or k.endswith("." + name)] or suggest(name, list(flat))
      if keys:
        value_text = f"={value}" if value is not None else "=VALUE"
        raise _UsageError(f"--{name}{value_text}: unknown flag; config keys are set as "
                          f"--config.KEY=VALUE: did you mean "
                          f"{' or '.join(f'`--config.{k}{value_text}`' for k in keys[:3])}?")
    if not name.startswith("config."):
      continue
    key = name[len("config."):]
    if key not in flat:
      close = suggest(key, list(flat))
      did_you_mean = (f"did you mean {' or '.join(f'`{c}`' for c in close)}? "
                      if close else "")
      raise _UsageError(f"--config.{key}: unknown config key `{key}`; {did_you_mean}"
                        f"(list the keys: {_LIST_KEYS})")
    if value is None and not isinstance(flat[key], bool):
      raise _UsageError(f"--config.{key}: no value given; use --config.{key}=VALUE")
    if value is not None:
      _check_type(key, value, flat[key])
  return config


def _print_help() -> None:
  print(__doc__.strip())
  print("\nOther flags: --verbosity=0 for INFO logs; --helpfull lists absl's own flags.")


def _parse(argv: list[str]) -> list[str]:
  """absl flags_parser: --help exits 0, command-line mistakes are one line with exit 2."""
  if any(a in ("-h", "--help", "-help", "--h") for a in argv[1:]):
    _print_help()
    sys.exit(0)
  if "--helpfull" in argv[1:]:
    _print_help()
    print()
    print(flags.FLAGS.main_module_help() if hasattr(flags.FLAGS, "main_module_help") else "")
    sys.exit(0)
  try:
    check_command_line(argv)
    rest = flags.FLAGS(argv)
  except _UsageError as e:
    _fail(str(e))
  except flags.Error as e:
    _fail(f"{_one_line(e)} (--help for the flags; list the keys: {_LIST_KEYS})")
  except Exception as e:  # pylint: disable=broad-except  # ml_collections override errors
    _fail(f"bad command line: {type(e).__name__}: {_one_line(e)} (list the keys: "
          f"{_LIST_KEYS})")
  if len(rest) > 1:
    _fail(f"unexpected arguments {rest[1:]}; flags are --config=, --config.KEY=VALUE, "
          f"--workdir=, --print_config, --coordinator_address=, --num_processes=, "
          f"--process_id= (--help)")
  return rest


# ---------------------------------------------------------------------------------------
# The run.


def main(argv):
  del argv  # checked by _parse
  if _PRINT_CONFIG.value:
    from kd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
    from kd_jax import errors  # pylint: disable=g-import-not-at-top
    from kd_jax import models  # pylint: disable=g-import-not-at-top
    checked = _CONFIG.value.copy_and_resolve_references()
    if not checked.teacher_checkpoint:  # given at launch; every value printed is checked
      checked.teacher_checkpoint = "random:0"
    try:  # what a launch would refuse is refused here too
      config_lib.validate(checked, model_names=models.names(), num_devices=1)
    except errors.USER_ERRORS as e:
      _fail(str(e))
    print(config_lib.format_config(
        _CONFIG.value, config_flags.get_override_values(flags.FLAGS["config"])), flush=True)
    return
  if not _WORKDIR.value:
    _fail("--workdir=DIR is required (outputs go there; the same workdir resumes)")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  multi_host = any(v is not None for v in explicit) or bool(
      os.environ.get("KD_JAX_DISTRIBUTED") or os.environ.get("TPU_WORKER_HOSTNAMES") or
      os.environ.get("SLURM_NTASKS", "1") != "1")
  _install_signal_handlers(multi_host)
  from kd_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    _run(explicit)
  except errors.Interrupted as e:
    import signal  # pylint: disable=g-import-not-at-top
    print(f"{signal.Signals(e.signum).name} received before the training loop: stopped, nothing "
          f"half written; run the same command again to resume", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # The run's files are closed and its lock released (the exception unwound through them);
    # skip the interpreter's teardown, which can crash while XLA still compiles in its threads.
    os._exit(EXIT_PREEMPTED)  # pylint: disable=protected-access


def _run(explicit) -> None:
  """The run after the command line is checked: devices, then training, then the summary."""
  import jax  # pylint: disable=g-import-not-at-top
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      _fail("a multi-process run needs all three of --coordinator_address=HOST:PORT, "
            "--num_processes=N and --process_id=I")
    if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
      _fail(f"--process_id={_PROCESS_ID.value}; accepted: 0 to {_NUM_PROCESSES.value - 1} "
            f"(--num_processes={_NUM_PROCESSES.value})")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif os.environ.get("KD_JAX_DISTRIBUTED") or os.environ.get("TPU_WORKER_HOSTNAMES") or (
      os.environ.get("SLURM_NTASKS", "1") != "1"):
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:  # a single host without a coordinator
      logging.warning("jax.distributed.initialize() skipped: %s", e)
  # TensorFlow (TFDS input only) is imported, with accelerators hidden from it, by the data
  # pipelines that need it (kd_jax.data.common.import_tf); synthetic runs never load it.
  from kd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from kd_jax import errors  # pylint: disable=g-import-not-at-top
  from kd_jax.train import loop  # pylint: disable=g-import-not-at-top
  from kd_jax.train import progress  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(f"kd_jax: process {jax.process_index()}/{jax.process_count()}, "
          f"{jax.device_count()} devices ({jax.devices()[0].platform})", flush=True)
  try:
    config_lib.check_overrides(list(config_flags.get_override_values(flags.FLAGS["config"])),
                               config_flags.get_config_filename(flags.FLAGS["config"]))
    config_lib.record_command_line(_CONFIG.value,
                                   config_flags.get_override_values(flags.FLAGS["config"]))
    if _CONFIG.value.get("sweep"):
      from kd_jax.train import sweep  # pylint: disable=g-import-not-at-top
      results = sweep.train_sweep(_CONFIG.value, _WORKDIR.value)
    else:
      results = [loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)]
  except errors.USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  result = results[0]
  if result.preempted:
    if jax.process_index() == 0:
      print("Preempted: run the same command again to resume.", flush=True)
    sys.exit(EXIT_PREEMPTED)
  if jax.process_index() != 0:
    return
  if result.already_finished:
    print(f"This {'sweep' if result.name else 'run'} is already finished (step {result.step}); "
          f"its summary:", flush=True)
  print(progress.run_summary(_WORKDIR.value), flush=True)


if __name__ == "__main__":
  try:
    app.run(main, flags_parser=_parse)
  except KeyboardInterrupt:  # Ctrl-C before the launcher's handlers are installed
    print("interrupted before the run started", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)
