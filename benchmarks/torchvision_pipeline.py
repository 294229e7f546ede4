"""The authors' ImageNet loader: torchvision ImageFolder + DataLoader with PIL decoding.

The transforms of mdistiller's and torchdistill's ImageNet recipes: train RandomResizedCrop(224)
+ RandomHorizontalFlip + ToTensor + Normalize; eval Resize(256) + CenterCrop(224) + ToTensor +
Normalize. `--workers N` DataLoader worker processes, the whole process tree pinned to N cores,
so images/s per core is images/s / N. Prints one JSON line. Needs torch and torchvision only
(run it with the interpreter that has them: benchmarks/input_pipeline.py --torch-python).

    python benchmarks/torchvision_pipeline.py --root DIR --mode train --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pin(cores: int) -> list[int]:
  """Restricts this process (and the workers it forks) to its first `cores` allowed CPUs."""
  allowed = sorted(os.sched_getaffinity(0))
  if cores > len(allowed):
    raise SystemExit(f"--workers {cores}: only {len(allowed)} CPUs are available here")
  os.sched_setaffinity(0, allowed[:cores])
  return allowed[:cores]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", required=True, help="folder with train/<class>/*.JPEG")
  p.add_argument("--mode", default="train", choices=["train", "eval"])
  p.add_argument("--workers", type=int, default=1, help="DataLoader workers = cores pinned")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--batches", type=int, default=16, help="timed batches")
  p.add_argument("--warmup", type=int, default=2, help="untimed batches (worker start-up)")
  p.add_argument("--repeats", type=int, default=1, help="timed windows; the median is reported")
  p.add_argument("--image-size", type=int, default=224)
  args = p.parse_args()
  if min(args.workers, args.batch_size, args.batches, args.repeats) < 1 or args.warmup < 0:
    p.error("--workers, --batch-size, --batches, --repeats must be >= 1, --warmup >= 0")
  cores = pin(args.workers)

  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  from torchvision import transforms as T  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(1)
  if args.mode == "train":
    transform = T.Compose([T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(MEAN, STD)])
  else:
    transform = T.Compose([T.Resize(int(round(args.image_size / 0.875))),
                           T.CenterCrop(args.image_size), T.ToTensor(), T.Normalize(MEAN, STD)])
  dataset = torchvision.datasets.ImageFolder(os.path.join(args.root, "train"), transform)
  loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                       shuffle=args.mode == "train", drop_last=True,
                                       num_workers=args.workers, persistent_workers=True)

  def batches():
    while True:
      yield from loader

  t0 = time.perf_counter()
  it = batches()
  for _ in range(args.warmup):
    images, labels = next(it)
  startup_s = time.perf_counter() - t0
  windows = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    for _ in range(args.batches):
      images, labels = next(it)
    windows.append(time.perf_counter() - t0)
  assert tuple(images.shape) == (args.batch_size, 3, args.image_size, args.image_size)
  assert torch.isfinite(images).all() and labels.dtype == torch.int64
  seconds = statistics.median(windows)
  ips = args.batch_size * args.batches / seconds
  print(json.dumps({
      "kind": "folder_pipeline", "impl": "torchvision", "mode": args.mode,
      "workers": args.workers, "cores": len(cores), "batch_size": args.batch_size,
      "batches": args.batches, "images_per_sec": ips, "images_per_sec_per_core": ips / len(cores),
      "windows_s": windows, "startup_s": startup_s, "images_in_folder": len(dataset),
      "torch": torch.__version__, "torchvision": torchvision.__version__,
      "pil": __import__("PIL").__version__}), flush=True)


if __name__ == "__main__":
  main()
