"""A folder of photograph-like JPEGs at ImageNet sizes, for input-pipeline benchmarks.

Decoding and resizing cost depends on what an image holds: pure noise compresses badly and
decodes slowly, flat colour the reverse. Photographs sit between: smooth illumination, objects
with edges, textured regions, a little sensor grain. Each image here is built that way:
a low-frequency colour field, 3-8 filled shapes (ellipses, rectangles, polygons; some blurred),
multi-octave value-noise texture over the whole frame, fine high-frequency detail over part of
it, Gaussian grain (sigma 3), then JPEG at
quality 90 with 4:2:0 chroma subsampling (what most cameras and ImageNet's files use). Sides
follow ImageNet's common shapes: the long side 400-500 px, aspect 4:3 to 3:2, landscape or
portrait.

Layout: ROOT/train/cNNN/iNNNNN.JPEG (torchvision ImageFolder's). Needs numpy and Pillow only,
so the torchvision side can import it from its own environment.

    python benchmarks/jpeg_folder.py DIR --images 512 --classes 8
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _value_noise(rng: np.random.Generator, h: int, w: int, octaves: Sequence[int]) -> np.ndarray:
  """Sum of bilinearly upsampled random grids (cells of `octave` px), amplitude ~ cell size."""
  out = np.zeros((h, w), np.float32)
  for cell in octaves:
    gh, gw = h // cell + 2, w // cell + 2
    grid = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32), mode="F")
    up = np.asarray(grid.resize((gw * cell, gh * cell), Image.BILINEAR))[:h, :w]
    out += up * (cell ** 0.5)
  return out


def photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """One uint8 [h, w, 3] photograph-like image (see the module docstring)."""
  field = rng.uniform(30, 225, size=(3, 4, 3)).astype(np.uint8)
  img = Image.fromarray(field).resize((w, h), Image.BICUBIC)
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(3, 9))):
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    rx, ry = rng.uniform(0.05, 0.35) * w, rng.uniform(0.05, 0.35) * h
    kind = rng.integers(3)
    if kind == 0:
      draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
    elif kind == 1:
      draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
    else:
      angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
      draw.polygon([(float(cx + rx * np.cos(a)), float(cy + ry * np.sin(a))) for a in angles],
                   fill=colour)
  if rng.random() < 0.5:  # out-of-focus background or motion: soft edges
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.0, 3.0))))
  x = np.asarray(img, np.float32)
  texture = _value_noise(rng, h, w, (2, 4, 8, 16, 32))
  x += (texture * rng.uniform(1.5, 4.0))[..., None] * rng.uniform(0.6, 1.0, size=3)
  # Fine detail (foliage, fur, fabric) over part of the frame, bounded by a smooth mask.
  mask = np.clip(_value_noise(rng, h, w, (64,)) / 8.0 + 0.5, 0.0, 1.0)
  fine = _value_noise(rng, h, w, (1, 2)) * rng.uniform(6.0, 12.0)
  x += (fine * mask)[..., None]
  x += rng.normal(0.0, 3.0, size=x.shape)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def image_size(rng: np.random.Generator) -> tuple[int, int]:
  """(h, w): long side 400-500, aspect 4:3 to 3:2, landscape 3 times in 4."""
  long_side = int(rng.integers(400, 501))
  short = int(round(long_side / rng.uniform(4 / 3, 3 / 2)))
  return (short, long_side) if rng.random() < 0.75 else (long_side, short)


def write_folder(root: str, *, images: int, classes: int, seed: int = 0,
                 quality: int = 90) -> dict:
  """Writes ROOT/train/cNNN/iNNNNN.JPEG (image i in class i % classes); returns a summary."""
  rng = np.random.default_rng(seed)
  total_bytes, pixels = 0, 0
  for i in range(images):
    h, w = image_size(rng)
    folder = os.path.join(root, "train", f"c{i % classes:03d}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"i{i:05d}.JPEG")
    Image.fromarray(photo_like(rng, h, w)).save(path, "JPEG", quality=quality, subsampling=2)
    total_bytes += os.path.getsize(path)
    pixels += h * w
  return {"root": root, "images": images, "classes": classes, "quality": quality,
          "mean_bytes": total_bytes / images, "mean_pixels": pixels / images,
          "bits_per_pixel": 8.0 * total_bytes / pixels}


def files(root: str) -> list[tuple[str, int]]:
  """(path, label) of ROOT/train in ImageFolder's order: sorted classes, sorted files."""
  train = os.path.join(root, "train")
  classes = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
  return [(os.path.join(train, c, f), label) for label, c in enumerate(classes)
          for f in sorted(os.listdir(os.path.join(train, c)))]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("root")
  p.add_argument("--images", type=int, default=512)
  p.add_argument("--classes", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quality", type=int, default=90)
  args = p.parse_args()
  if args.images < 1 or args.classes < 1:
    p.error("--images and --classes must be >= 1")
  print(json.dumps(write_folder(args.root, images=args.images, classes=args.classes,
                                seed=args.seed, quality=args.quality)))


if __name__ == "__main__":
  main()
