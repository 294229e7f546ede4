"""Input-pipeline throughput: CIFAR (device gather + JAX augmentation) and ImageNet (tf.data).

Prints one JSON line; compares CIFAR images/s with what the train step consumes when given it.
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
  """Images/s of kd_jax.data.imagenet_train (decode, random-resized crop, flip, normalize)."""
  with _imagenet_source(source, num_examples, min_size, max_size, noise) as (data_dir, name):
    t0 = time.perf_counter()
    it = data_lib.imagenet_train(data_dir, batch_size=batch_size, seed=0, name=name,
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
  args = p.parse_args(argv)
  for name in ("batch_size", "batches", "repeats", "num_examples", "imagenet_batch_size",
               "imagenet_batches", "imagenet_examples", "imagenet_image_size"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  if args.num_examples < args.batch_size:
    p.error("--num-examples must be >= --batch-size")
  if args.imagenet_examples < 2 * args.imagenet_batch_size:
    p.error("--imagenet-examples must be >= 2 * --imagenet-batch-size")
  return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
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
