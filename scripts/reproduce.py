r"""Commands that reproduce the papers' tables, one per cell and seed, with the published number.

  python scripts/reproduce.py --table cifar_same --seeds 0,1,2            # print the commands
  python scripts/reproduce.py --table cifar_same --seeds 0,1,2 --run      # run them one by one
  python scripts/reproduce.py --table cifar_same --run -- --config.num_epochs=1   # overrides
  python scripts/reproduce.py --markdown                                  # docs/reproduce.md's table
Then: python -m kd_jax.report workdirs/cifar_same/* --out reports/cifar_same

--run uses this interpreter (sys.executable) and this repository's launch.py, from any working
directory (--workroot and --teachers-dir are taken relative to the working directory). Arguments
after `--` are added to every cell's command. A failing cell is one line (its command and its
last error line) and the next cell starts, unless --stop-on-error; a summary line ends the run
(done / failed / skipped) and the exit code is 1 when a cell failed.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kd_jax import config as kdc  # pylint: disable=wrong-import-position
from kd_jax import methods as methods_lib  # pylint: disable=wrong-import-position
from kd_jax import published  # pylint: disable=wrong-import-position

# The bases of the RKKD table, each run alone and with the ranking term.
_RKKD_BASES = ("kd", "dkd", "rld", "dhkd", "ctkd", "mlkd", "dist")

# The papers' tables (docs/results.md): pairs and the methods of each table.
TABLES: dict[str, dict] = {
    "cifar_same": {
        "pairs": [("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("wrn_40_2", "wrn_40_1"),
                  ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"),
                  ("resnet110", "resnet32"), ("resnet110", "resnet20")],
        "methods": ["kd", "dkd", "rld", "rkkd", "dhkd"]},
    "cifar_cross": {
        "pairs": [("resnet32x4", "ShuffleV2"), ("resnet32x4", "wrn_16_2"),
                  ("resnet32x4", "wrn_40_2"), ("wrn_40_2", "resnet8x4"),
                  ("wrn_40_2", "MobileNetV2"), ("vgg13", "MobileNetV2"),
                  ("ResNet50", "MobileNetV2"), ("resnet32x4", "ShuffleV1"),
                  ("wrn_40_2", "ShuffleV1"), ("ResNet50", "vgg8")],
        "methods": ["kd", "dkd", "rld", "rkkd", "dhkd"],
        # No reference config (docs/recipes.md): these cells would be guesses.
        "skip": {("dkd", "ResNet50", "vgg8"), ("rld", "ResNet50", "vgg8"),
                 ("rld", "resnet32x4", "ShuffleV1"), ("rld", "wrn_40_2", "ShuffleV1")}},
    "cifar_ls": {
        "pairs": list(methods_lib.get("kd").ls.cifar),
        "methods": ["kd+ls", "dkd+ls"]},
    # docs/results.md §4: the LS README's grid, KD, CTKD, DKD and MLKD each with and without LS.
    "cifar_ls_grid": {
        "pairs": list(methods_lib.get("kd").ls.cifar),
        "methods": ["kd", "kd+ls", "ctkd", "ctkd+ls", "dkd", "dkd+ls", "mlkd", "mlkd+ls"]},
    # Each base with and without the RKKD term ('rkkd(BASE)': configs/rkkd.py:TEACHER,STUDENT,
    # BASE; 'rkkd' on KD as in the tables above), on the CIFAR pairs of the tables above.
    "rkkd": {
        "pairs": list(kdc.CIFAR_PAIRS),
        "methods": [m for base in _RKKD_BASES
                    for m in (base, "rkkd" if base == "kd" else f"rkkd({base})")],
        "skip": {(m, "ResNet50", "vgg8") for base in ("dkd", "rld")
                 for m in (base, f"rkkd({base})")}
                | {(m, t, "ShuffleV1") for m in ("rld", "rkkd(rld)")
                   for t in ("resnet32x4", "wrn_40_2")}},
    "imagenet": {
        "pairs": list(kdc.IMAGENET_PAIRS),
        "methods": ["kd", "dkd", "rld", "rkkd", "dhkd"]},
    "imagenet_ls": {
        "pairs": list(methods_lib.get("kd").ls.imagenet),
        "methods": ["kd+ls"]},
}

# Where the public teachers are, once downloaded (docs/getting_started.md, step 2).
CIFAR_TEACHER = "{dir}/{t}_vanilla/ckpt_epoch_240.pth"     # mdistiller cifar_teachers.tar
# torchvision IMAGENET1K_V1 files, as mdistiller loads them.
IMAGENET_TEACHER = {"imagenet_resnet34": "{dir}/imagenet/resnet34-333f7ec4.pth",
                    "imagenet_resnet50": "{dir}/imagenet/resnet50-19c8e357.pth"}


def cells(table: str):
  """(method, teacher, student) of every cell of `table`."""
  spec = TABLES[table]
  for method in spec["methods"]:
    for teacher, student in spec["pairs"]:
      if (method, teacher, student) not in spec.get("skip", ()):
        yield method, teacher, student


def command(table: str, method: str, teacher: str, student: str, seed: int,
            teachers_dir: str, workroot: str) -> list[str]:
  base, ls = method.split("+")[0], method.endswith("+ls")
  arg = f"{teacher},{student}" + (",ls" if ls else "")
  if base.startswith("rkkd("):   # 'rkkd(BASE)': the ranking term on BASE
    base, arg = "rkkd", f"{teacher},{student},{base[len('rkkd('):-1]}" + (",ls" if ls else "")
  if table.startswith("imagenet"):
    ckpt = IMAGENET_TEACHER[teacher].format(dir=teachers_dir)
  else:
    ckpt = CIFAR_TEACHER.format(dir=teachers_dir, t=teacher)
  tag = method.replace("+", "_").replace("(", "_").replace(")", "")
  name = f"{tag}_{teacher}_{student}_s{seed}"
  return ["python", "launch.py", f"--config=configs/{base}.py:{arg}",
          f"--workdir={workroot}/{table}/{name}", f"--config.teacher_checkpoint={ckpt}",
          f"--config.seed={seed}"]


def expected(table: str, method: str, teacher: str, student: str) -> str:
  dataset = "imagenet2012" if table.startswith("imagenet") else "cifar100"
  found = published.lookup(dataset, method, teacher, student)
  if not found:
    return "–"
  return "; ".join(f"{p.top1:.2f} ({p.source}, {p.convention})" for p in found)


def markdown() -> str:
  """The docs/reproduce.md table: one command per cell, with $T (teachers), $W (workdirs), $SEED."""
  lines = []
  for table in TABLES:
    lines += [f"\n**{table}**\n", "| method | teacher → student | published top-1 | command |",
              "|---|---|---|---|"]
    for method, teacher, student in cells(table):
      cmd = command(table, method, teacher, student, 0, "$T", "$W")
      cmd = " ".join(cmd[:-1] + ["--config.seed=$SEED"]).replace("_s0 ", "_s$SEED ")
      lines.append(f"| {method} | {teacher} → {student} | "
                   f"{expected(table, method, teacher, student)} | `{cmd}` |")
  return "\n".join(lines)


def runnable(cmd: list[str], overrides: list[str]) -> list[str]:
  """A cell's command as --run starts it: this interpreter, this repository's launch.py and
  config files, absolute workdir and teacher paths, then `overrides`."""
  out = [sys.executable, os.path.join(REPO, "launch.py")]
  for a in cmd[2:]:
    if a.startswith("--config=configs/"):
      a = "--config=" + os.path.join(REPO, a[len("--config="):])
    elif a.startswith(("--workdir=", "--config.teacher_checkpoint=")):
      key, value = a.split("=", 1)
      a = f"{key}={os.path.abspath(value)}"
    out.append(a)
  return out + list(overrides)


def _last_error_line(stderr: str) -> str:
  lines = [l.strip() for l in stderr.splitlines() if l.strip()]
  return lines[-1] if lines else "(no error output)"


def run_cell(cmd: list[str]) -> tuple[int, str]:
  """Runs one cell; (exit code, its last stderr line). Its stdout (progress) goes to the
  terminal as it comes; of its stderr, kd_jax's `warning:` lines are passed on once it ends."""
  proc = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True, check=False)
  if proc.returncode == 0:
    for line in (proc.stderr or "").splitlines():
      if line.startswith("warning: "):
        print(line, file=sys.stderr, flush=True)
  return proc.returncode, _last_error_line(proc.stderr or "")


def _usage_error(message: str) -> int:
  print(f"reproduce.py: error: {message}", file=sys.stderr)
  return 2


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--table", default="all", help=f"one of: all, {', '.join(TABLES)}")
  p.add_argument("--methods", default="", help="comma list to keep, e.g. kd,dkd")
  p.add_argument("--seeds", default="0", help="comma list of seeds")
  p.add_argument("--teachers-dir", default="download_ckpts/cifar_teachers",
                 help="the untarred cifar_teachers; ImageNet files go in its imagenet/")
  p.add_argument("--workroot", default="workdirs")
  p.add_argument("--run", action="store_true", help="run the commands one after the other")
  p.add_argument("--stop-on-error", action="store_true",
                 help="with --run: stop at the first failing cell (default: go on)")
  p.add_argument("--markdown", action="store_true", help="print the docs' table")
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = argv[argv.index("--") + 1:] if "--" in argv else []
  args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
  bad = [o for o in overrides if not o.startswith("--")]
  if bad:
    return _usage_error(f"override {bad[0]!r} after '--' is not a flag; expected e.g. "
                        f"--config.num_epochs=1")
  if args.markdown:
    print(markdown())
    return 0
  if args.table != "all" and args.table not in TABLES:
    return _usage_error(f"--table={args.table!r} is not a table; accepted: all, "
                        f"{', '.join(TABLES)}")
  tables = list(TABLES) if args.table == "all" else [args.table]
  all_methods = sorted({m for t in TABLES.values() for m in t["methods"]})
  keep = set(filter(None, args.methods.split(",")))
  unknown = sorted(keep - set(all_methods))
  if unknown:
    return _usage_error(f"--methods: {', '.join(unknown)} is not a method of the tables; "
                        f"accepted: {', '.join(all_methods)}")
  try:
    seeds = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    return _usage_error(f"--seeds={args.seeds!r}: expected a comma list of integers, e.g. 0,1,2")
  selected = [(t, c) for t in tables for c in cells(t) if not keep or c[0] in keep]
  if not selected:
    in_tables = sorted({m for t in tables for m in TABLES[t]["methods"]})
    return _usage_error(f"--table={args.table} --methods={args.methods} selects no cell; the "
                        f"methods of {args.table}: {', '.join(in_tables)}")
  jobs = [(t, c, seed) for t, c in selected for seed in seeds]
  done, failed = 0, []
  for i, (table, (method, teacher, student), seed) in enumerate(jobs):
    cmd = command(table, method, teacher, student, seed, args.teachers_dir, args.workroot)
    print(f"# expected: {expected(table, method, teacher, student)}")
    if not args.run:
      print(shlex.join(cmd + overrides), flush=True)
      continue
    cmd = runnable(cmd, overrides)
    print(f"[{i + 1}/{len(jobs)}] {shlex.join(cmd)}", flush=True)
    rc, last = run_cell(cmd)
    if rc == 0:
      done += 1
      continue
    failed.append(cmd)
    print(f"FAILED (exit {rc}): {shlex.join(cmd)} -- {last}", flush=True)
    if args.stop_on_error:
      break
  if args.run:
    skipped = len(jobs) - done - len(failed)
    print(f"reproduce: {done} done, {len(failed)} failed, {skipped} skipped "
          f"(of {len(jobs)} cell{'' if len(jobs) == 1 else 's'})", flush=True)
    return 1 if failed else 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
