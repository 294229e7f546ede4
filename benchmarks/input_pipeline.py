"""Input-pipeline throughput: CIFAR (device gather + JAX augmentation) and ImageNet (tf.data).

Prints one JSON line; compares CIFAR images/s with what the train step consumes when given it.

`--compare-torchvision` instead compares kd_jax's streamed ImageNet pipelines with the authors'
loader on one folder of photograph-like JPEGs (benchmarks/jpeg_folder.py): kd_jax's
`train_stream` (decode only the crop window + random-resized crop + flip + normalize) and
`eval_stream` (resize 256, centre crop 224) over a TFDS dataset holding the folder's JPEG
bytes as they are, against torchvision ImageFolder + DataLoader with PIL and the authors'
transforms (benchmarks/torchvision_pipeline.py, run by --torch-python). Each measurement is its
own process pinned to W cores (W = 1, 2: tf.data sizes its thread pool to them; the DataLoader
gets W worker processes), rounds interleave the two sides, and the summary line gives median
images/s per core and kd_jax over torchvision.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from kd_jax import data as data_lib  # pylint: disable=wrong-import-position
from machine import cpu_model  # pylint: disable=wrong-import-position

# The train step wants at least this many times its own images/s from the input pipeline.
HEADROOM = 5.0


def cifar_throughput(batch_size: int, num_batches: int, num_examples: int, repeats: int,
                     seed: int = 0) -> dict:
  """Images/s of the in-memory CIFAR pipeline, one jitted dispatch per batch.

  The same calls as the train step (kd_jax/train/step.py::_in_memory_batch): a
  (seed, step)-permuted gather from the device-resident uint8 split, then
  augment_cifar (pad-4 random crop, flip, normalize). Each batch is materialised.
  """
  rng = np.random.default_rng(seed)
  images = jax.device_put(rng.integers(0, 256, (num_examples, 32, 32, 3), dtype=np.uint8))
  labels = jax.device_put(rng.integers(0, 100, (num_examples,), dtype=np.int32))
  base = jax.random.PRNGKey(seed)

  @jax.jit
  def batch_fn(images_u8, labels_all, step):
    x, y = data_lib.cifar_train_batch(images_u8, labels_all, seed=seed, step=step,
                                      batch_size=batch_size)
    aug_rng = jax.random.fold_in(jax.random.fold_in(base, step), 2)
    x = data_lib.augment_cifar(aug_rng, x, mean=data_lib.CIFAR_MEAN, std=data_lib.CIFAR_STD)
    return x, y

  t0 = time.perf_counter()
  out = jax.block_until_ready(batch_fn(images, labels, jnp.int32(0)))
  compile_s = time.perf_counter() - t0
  assert out[0].shape == (batch_size, 32, 32, 3) and out[0].dtype == jnp.float32
  steps = [jnp.int32(i) for i in range(num_batches)]
  windows = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for s in steps:
      out = batch_fn(images, labels, s)
    jax.block_until_ready(out)
    windows.append(time.perf_counter() - t0)
  seconds = statistics.median(windows)
  return {"cifar_images_per_sec": batch_size * num_batches / seconds,
          "cifar_batch_ms": 1000.0 * seconds / num_batches,
          "cifar_compile_s": compile_s, "cifar_num_examples": num_examples}


@contextlib.contextmanager
def _imagenet_source(source: str, num_examples: int, min_size: int, max_size: int,
                     noise: int):
  """(data_dir, name) of a stand-in ImageNet: TFDS mock_data, or JPEG files on disk."""
  if source == "mock":
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.ERROR)  # mock_data's per-example deprecation warnings
    with tfds.testing.mock_data(num_examples=num_examples):
      yield None, "imagenet2012"
  else:
    with tempfile.TemporaryDirectory(prefix="kd_jax_bench_imagenet_") as tmp:
      data_lib.build_fake_imagenet(tmp, name="bench_fake_imagenet", num_train=num_examples,
                                   num_validation=1, num_classes=1000, min_size=min_size,
                                   max_size=max_size, noise=noise)
      yield tmp, "bench_fake_imagenet"


def imagenet_throughput(source: str, batch_size: int, num_batches: int, num_examples: int,
                        image_size: int, min_size: int, max_size: int, noise: int) -> dict:
  """Images/s of kd_jax.data.train_stream (decode, random-resized crop, flip, normalize)."""
  with _imagenet_source(source, num_examples, min_size, max_size, noise) as (data_dir, name):
    t0 = time.perf_counter()
    it = data_lib.train_stream(data_dir, batch_size=batch_size, seed=0, name=name,
                                 image_size=image_size)
    first = next(it)
    startup_s = time.perf_counter() - t0
    assert first["image"].shape == (batch_size, image_size, image_size, 3)
    next(it)  # Let prefetching fill.
    t0 = time.perf_counter()
    for _ in range(num_batches):
      batch = next(it)
    seconds = time.perf_counter() - t0
    assert np.isfinite(batch["image"]).all()
  return {"imagenet_source": source, "imagenet_images_per_sec": batch_size * num_batches / seconds,
          "imagenet_batch_ms": 1000.0 * seconds / num_batches,
          "imagenet_startup_s": startup_s, "imagenet_image_size": image_size,
          "imagenet_num_examples": num_examples,
          **({"fake_size_range": [min_size, max_size], "fake_noise": noise}
             if source == "fake" else {})}


# ----------------------------------------------------------------------- --compare-torchvision


def folder_to_tfds(root: str, data_dir: str, name: str) -> int:
  """A TFDS dataset `name` ('train' and 'validation': the same files) of ROOT's JPEG bytes.

  The images are passed as paths, so TFDS stores each file's bytes unchanged: both pipelines
  decode the very same JPEG streams.
  """
  sys.path.insert(0, _HERE)
  import jpeg_folder  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from kd_jax.data import common  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  tfds = common.import_tfds()
  entries = jpeg_folder.files(root)
  num_classes = max(label for _, label in entries) + 1

  def examples(split):
    for i, (path, label) in enumerate(entries):
      yield f"{split}_{i}", {"image": path, "label": label}

  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=num_classes)})
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version="1.0.0", features=features, data_dir=data_dir,
      split_datasets={"train": examples("train"), "validation": examples("validation")},
      disable_shuffling=False)
  return len(entries)


def _pin(cores: int) -> list[int]:
  allowed = sorted(os.sched_getaffinity(0))
  if cores > len(allowed):
    raise SystemExit(f"--workers {cores}: only {len(allowed)} CPUs are available here")
  os.sched_setaffinity(0, allowed[:cores])
  return allowed[:cores]


def streamed_throughput(data_dir: str, name: str, mode: str, workers: int, batch_size: int,
                        batches: int, warmup: int, repeats: int, image_size: int = 224) -> dict:
  """Images/s of kd_jax's train_stream or eval_stream in this process, pinned to `workers`
  cores. Must run before TensorFlow is imported (its thread pools are sized at start-up)."""
  cores = _pin(workers)
  if mode == "train":
    it = data_lib.train_stream(data_dir, batch_size=batch_size, seed=0, name=name,
                                 image_size=image_size)
  else:
    def eval_stream():
      while True:  # each pass is one epoch of the split, in file order
        yield from data_lib.eval_stream(data_dir, batch_size=batch_size, name=name,
                                          image_size=image_size)
    it = eval_stream()
  t0 = time.perf_counter()
  for _ in range(warmup):
    batch = next(it)
  startup_s = time.perf_counter() - t0
  windows = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(batches):
      batch = next(it)
    windows.append(time.perf_counter() - t0)
  assert batch["image"].shape == (batch_size, image_size, image_size, 3)
  assert np.isfinite(batch["image"]).all()
  ips = batch_size * batches / statistics.median(windows)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return {"kind": "folder_pipeline", "impl": "kd_jax", "mode": mode, "workers": workers,
          "cores": len(cores), "batch_size": batch_size, "batches": batches,
          "images_per_sec": ips, "images_per_sec_per_core": ips / len(cores),
          "windows_s": windows, "startup_s": startup_s, "tensorflow": tf.__version__}


def _last_json(stdout: str) -> dict:
  for line in reversed(stdout.splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  raise RuntimeError("no JSON line in:\n" + stdout[-2000:])


def compare_torchvision(args: argparse.Namespace) -> list[dict]:
  """Interleaved rounds of kd_jax and torchvision, each mode and worker count; one line each,
  then the summary line (medians over rounds, per core, kd_jax over torchvision)."""
  import subprocess  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  sys.path.insert(0, _HERE)
  import jpeg_folder  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  workers = [int(w) for w in args.workers.split()]
  modes = args.modes.split()
  with tempfile.TemporaryDirectory(prefix="kd_jax_bench_folder_") as tmp:
    root = args.jpeg_dir or os.path.join(tmp, "jpegs")
    folder = None
    if not os.path.isdir(os.path.join(root, "train")):
      folder = jpeg_folder.write_folder(root, images=args.jpeg_images,
                                        classes=args.jpeg_classes)
    data_dir = os.path.join(tmp, "tfds")
    n = folder_to_tfds(root, data_dir, "bench_jpeg_folder")
    sizes = [str(args.imagenet_batch_size), str(args.imagenet_batches),
             str(args.folder_warmup), str(args.repeats)]
    jax_sizes = [f"--{k}={v}" for k, v in zip(
        ("imagenet-batch-size", "imagenet-batches", "folder-warmup", "repeats"), sizes)]
    tv_sizes = [f"--{k}={v}" for k, v in zip(("batch-size", "batches", "warmup", "repeats"),
                                              sizes)]
    records = []
    for r in range(args.rounds):
      for mode in modes:
        for w in workers:
          jax_cmd = [sys.executable, os.path.abspath(__file__), "--stream-worker", mode,
                     "--stream-data-dir", data_dir, "--stream-cores", str(w), *jax_sizes]
          tv_cmd = [args.torch_python, os.path.join(_HERE, "torchvision_pipeline.py"),
                    "--root", root, "--mode", mode, "--workers", str(w), *tv_sizes]
          for cmd in ((jax_cmd, tv_cmd) if r % 2 == 0 else (tv_cmd, jax_cmd)):
            allowed = sorted(os.sched_getaffinity(0))[:w]
            # Pinned from the start, so every thread of the child (jax's, TF's) sees w cores.
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  preexec_fn=lambda a=allowed: os.sched_setaffinity(0, a))
            if proc.returncode != 0:
              raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            rec = {**_last_json(proc.stdout), "round": r}
            print(json.dumps(rec), flush=True)
            records.append(rec)
    summary: dict[str, Any] = {"kind": "folder_pipeline_summary", "rounds": args.rounds,
                               "images": n, "batch_size": args.imagenet_batch_size,
                               "cpu": cpu_model(), "nproc": os.cpu_count()}
    if folder:
      summary.update({k: folder[k] for k in ("mean_bytes", "mean_pixels", "bits_per_pixel")})
    for mode in modes:
      for w in workers:
        med = {}
        for impl in ("kd_jax", "torchvision"):
          vals = [x["images_per_sec_per_core"] for x in records
                  if x["impl"] == impl and x["mode"] == mode and x["workers"] == w]
          med[impl] = statistics.median(vals)
          summary[f"{mode}_w{w}_{impl}_images_per_sec_per_core"] = med[impl]
        summary[f"{mode}_w{w}_kd_jax_over_torchvision"] = med["kd_jax"] / med["torchvision"]
    print(json.dumps(summary), flush=True)
    return records + [summary]


def _measure_train_step(args: argparse.Namespace) -> float:
  sys.path.insert(0, _HERE)
  import train_step  # pylint: disable=g-import-not-at-top
  ts_args = train_step.parse_args([
      "--teacher", args.teacher, "--student", args.student, "--method", "kd",
      "--batch-size", str(args.batch_size), "--steps", str(args.train_steps),
      "--num-examples", str(args.num_examples)])
  result = train_step.run(ts_args)
  print(json.dumps(result), flush=True)
  return float(result["images_per_sec"])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--batches", type=int, default=200, help="timed CIFAR batches per repeat")
  p.add_argument("--repeats", type=int, default=3, help="CIFAR windows; the median is reported")
  p.add_argument("--num-examples", type=int, default=50000, help="CIFAR split size")
  p.add_argument("--imagenet", default="mock", choices=["mock", "fake", "none"],
                 help="mock: tfds.testing.mock_data (random 5-50 px images); fake: JPEG "
                      "files written by data.build_fake_imagenet; none: skip")
  p.add_argument("--imagenet-batch-size", type=int, default=64)
  p.add_argument("--imagenet-batches", type=int, default=10)
  p.add_argument("--imagenet-examples", type=int, default=1024)
  p.add_argument("--imagenet-image-size", type=int, default=224)
  p.add_argument("--fake-min-size", type=int, default=300, help="fake JPEG side, min")
  p.add_argument("--fake-max-size", type=int, default=500, help="fake JPEG side, max")
  p.add_argument("--fake-noise", type=int, default=40,
                 help="fake JPEG pixel noise amplitude (makes decoding cost realistic)")
  p.add_argument("--train-images-per-sec", type=float, default=0.0,
                 help="images/s of the train step to compare with (from train_step.py)")
  p.add_argument("--measure-train-step", action="store_true",
                 help="run train_step.py's KD step in-process at --batch-size instead")
  p.add_argument("--teacher", default="resnet32x4")
  p.add_argument("--student", default="resnet8x4")
  p.add_argument("--train-steps", type=int, default=5)
  p.add_argument("--compare-torchvision", action="store_true",
                 help="kd_jax's streamed ImageNet pipelines against torchvision ImageFolder + "
                      "DataLoader on one JPEG folder (see the module docstring); only this runs")
  p.add_argument("--torch-python", default=sys.executable,
                 help="interpreter with torch and torchvision for the torchvision side")
  p.add_argument("--jpeg-dir", default="",
                 help="folder with train/<class>/*.JPEG (default: generate one in a temp dir)")
  p.add_argument("--jpeg-images", type=int, default=512, help="images generated")
  p.add_argument("--jpeg-classes", type=int, default=8)
  p.add_argument("--workers", default="1 2", help="worker counts = cores pinned")
  p.add_argument("--modes", default="train eval", help="train: random-resized crop + flip; "
                 "eval: resize 256, centre crop 224")
  p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
  p.add_argument("--folder-warmup", type=int, default=2,
                 help="untimed batches per measurement (start-up, prefetch)")
  p.add_argument("--stream-worker", default="", choices=["", "train", "eval"],
                 help=argparse.SUPPRESS)
  p.add_argument("--stream-data-dir", default="", help=argparse.SUPPRESS)
  p.add_argument("--stream-cores", type=int, default=1, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  for name in ("batch_size", "batches", "repeats", "num_examples", "imagenet_batch_size",
               "imagenet_batches", "imagenet_examples", "imagenet_image_size"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  if args.num_examples < args.batch_size:
    p.error("--num-examples must be >= --batch-size")
  try:
    workers = [int(w) for w in args.workers.split()]
  except ValueError:
    workers = []
  if not workers or min(workers) < 1:
    p.error(f"--workers {args.workers!r}: accepted: worker counts >= 1, e.g. '1 2'")
  bad = [m for m in args.modes.split() if m not in ("train", "eval")] or (
      [] if args.modes.split() else [args.modes])
  if bad:
    p.error(f"--modes: unknown {bad}; accepted: train eval")
  if args.rounds < 1 or args.folder_warmup < 0 or args.jpeg_images < 1:
    p.error("--rounds and --jpeg-images must be >= 1, --folder-warmup >= 0")
  if args.imagenet_examples < 2 * args.imagenet_batch_size:
    p.error("--imagenet-examples must be >= 2 * --imagenet-batch-size")
  return args


def main(argv: Optional[Sequence[str]] = None) -> Any:
  args = parse_args(argv)
  if args.stream_worker:
    result = streamed_throughput(args.stream_data_dir, "bench_jpeg_folder", args.stream_worker,
                                 args.stream_cores, args.imagenet_batch_size,
                                 args.imagenet_batches, args.folder_warmup, args.repeats,
                                 args.imagenet_image_size)
    print(json.dumps(result), flush=True)
    return result
  if args.compare_torchvision:
    return compare_torchvision(args)
  dev = jax.devices()[0]
  result: dict[str, Any] = {"kind": "input_pipeline", "batch_size": args.batch_size,
                            "device": f"{dev.platform}:{dev.device_kind}",
                            "jax": jax.__version__}
  result.update(cifar_throughput(args.batch_size, args.batches, args.num_examples,
                                 args.repeats))
  train_ips = args.train_images_per_sec
  if args.measure_train_step:
    train_ips = _measure_train_step(args)
  if train_ips > 0:
    ratio = result["cifar_images_per_sec"] / train_ips
    result.update({"train_images_per_sec": train_ips, "cifar_over_train_step": ratio,
                   "cifar_headroom_ok": bool(ratio >= HEADROOM), "headroom_required": HEADROOM})
  if args.imagenet != "none":
    result.update(imagenet_throughput(
        args.imagenet, args.imagenet_batch_size, args.imagenet_batches, args.imagenet_examples,
        args.imagenet_image_size, args.fake_min_size, args.fake_max_size, args.fake_noise))
  for k, v in result.items():
    if isinstance(v, float) and not math.isfinite(v):
      print(f"warning: {k} is not finite", file=sys.stderr)
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
