"""MLKD's strong augmentation on device: RandAugment(2, 10) with random magnitudes, then Cutout.

The policy of Jin-Ying/Multi-Level-Logit-Distillation `mdistiller/dataset/cifar100.py` (a
FixMatch-style RandAugment on PIL images; docs/methods.md §10.3): draw `num_ops` ops uniformly
with replacement from the 14 below, each with a magnitude drawn uniformly from its own range (the
`m` argument is ignored, as in the reference), then always apply Cutout with a square side of
U(0, 0.5) * width filled with (125, 123, 114). Each op reproduces its PIL counterpart on uint8
RGB images; tests/test_randaugment.py checks every op against PIL.

Wiring: the strong view is `rand_augment_batch(key, crop_and_flip(images, ...))` on the uint8
batch, before `common.normalize`, i.e. pad-crop-flip (drawn independently of the weak view's),
then this, then the mean/std normalisation. Pure functions with explicit keys; jit and vmap safe.

Geometric ops (rotate, shear, translate) use dm-pix's nearest-neighbour `affine_transform` with
PIL's inverse matrices and pixel-centre convention. dm-pix's colour ops are not PIL's (additive
brightness, per-channel-mean contrast, HSV saturation, other grey weights), so the blends,
autocontrast, equalize, posterize and the smoothing filter are written here after PIL's C code.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import dm_pix
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

CUTOUT_FILL = (125.0, 123.0, 114.0)
CUTOUT_MAX = 0.5  # side as a fraction of the width


# ----------------------------------------------------------------------------- helpers


def _blend(degenerate: Array, image: Array, factor: Array) -> Array:
  """PIL `Image.blend(degenerate, image, factor)` for 0 <= factor <= 1: truncate(d + f (i - d))."""
  f = jnp.asarray(factor, jnp.float32)
  return jnp.floor(degenerate + f * (image - degenerate))


def _grey(image: Array) -> Array:
  """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 32768) >> 16, as [H, W]."""
  x = image.astype(jnp.int32)
  lum = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
  return lum.astype(jnp.float32)


def _pil_affine(image: Array, a: Any, b: Any, c: Any, d: Any, e: Any, f: Any) -> Array:
  """PIL `transform(size, AFFINE, (a, b, c, d, e, f), NEAREST)`, fill 0.

  PIL samples output pixel (x, y) at the source point (a (x+.5) + b (y+.5) + c,
  d (x+.5) + e (y+.5) + f) and takes the pixel that contains it (floor). In dm-pix's index
  space (row, col, channel), rounding to the nearest index, that is the matrix below with the
  half-pixel shifts folded into the offset.
  """
  m = jnp.array([[e, d, 0.0], [b, a, 0.0], [0.0, 0.0, 1.0]], jnp.float32)
  offset = jnp.array([0.5 * (d + e) + f - 0.5, 0.5 * (a + b) + c - 0.5, 0.0], jnp.float32)
  return dm_pix.affine_transform(image, m, offset=offset, order=0, mode="constant", cval=0.0)


# ----------------------------------------------------------------------------- the 14 ops
# Each op maps a float32 [H, W, 3] image holding integers in [0, 255] and a magnitude v to the
# same; v is the value the reference passes to its PIL call.


def auto_contrast(image: Array, v: Any) -> Array:
  """`ImageOps.autocontrast`: per channel, stretch [lo, hi] to [0, 255] (floor); flat: unchanged."""
  del v
  lo = jnp.min(image, axis=(0, 1), keepdims=True)
  hi = jnp.max(image, axis=(0, 1), keepdims=True)
  span = jnp.maximum(hi - lo, 1.0).astype(jnp.int32)
  stretched = ((image - lo).astype(jnp.int32) * 255) // span
  return jnp.where(hi > lo, jnp.clip(stretched, 0, 255).astype(jnp.float32), image)


def brightness(image: Array, v: Any) -> Array:
  """`ImageEnhance.Brightness(v)`: blend with black."""
  return _blend(jnp.zeros_like(image), image, v)


def color(image: Array, v: Any) -> Array:
  """`ImageEnhance.Color(v)`: blend with the image's grey (L) version."""
  return _blend(jnp.broadcast_to(_grey(image)[..., None], image.shape), image, v)


def contrast(image: Array, v: Any) -> Array:
  """`ImageEnhance.Contrast(v)`: blend with a flat image at int(mean(L) + 0.5)."""
  lum = _grey(image).astype(jnp.int32)
  n = lum.size
  mean = (2 * jnp.sum(lum) + n) // (2 * n)  # = int(sum / n + 0.5), exactly
  return _blend(jnp.full_like(image, mean.astype(jnp.float32)), image, v)


def equalize(image: Array, v: Any) -> Array:
  """`ImageOps.equalize`: per-channel histogram equalisation with PIL's integer LUT.

  step = (N - h[last non-empty bin]) // 255; lut[i] = (step // 2 + sum_{j < i} h[j]) // step,
  clipped to 255; identity for a channel with one non-empty bin or step = 0.
  """
  del v
  x = image.astype(jnp.int32)
  hist = jax.vmap(lambda ch: jnp.zeros(256, jnp.int32).at[ch.reshape(-1)].add(1),
                  in_axes=2)(x)  # [3, 256]
  bins = jnp.arange(256)
  last = jnp.max(jnp.where(hist > 0, bins, -1), axis=1)
  h_last = jnp.take_along_axis(hist, last[:, None], axis=1)[:, 0]
  step = (jnp.sum(hist, axis=1) - h_last) // 255
  keep = (jnp.sum(hist > 0, axis=1) <= 1) | (step == 0)
  safe = jnp.maximum(step, 1)
  cum = jnp.cumsum(hist, axis=1) - hist
  lut = jnp.minimum((safe[:, None] // 2 + cum) // safe[:, None], 255)
  lut = jnp.where(keep[:, None], bins[None, :], lut)  # [3, 256]
  out = jax.vmap(lambda table, ch: table[ch], in_axes=(0, 2), out_axes=2)(lut, x)
  return out.astype(jnp.float32)


def identity(image: Array, v: Any) -> Array:
  """Unchanged."""
  del v
  return image


def posterize(image: Array, v: Any) -> Array:
  """`ImageOps.posterize(max(1, int(v)))`: keep the top bits (v in [4, 8) gives 4..7 bits)."""
  bits = jnp.maximum(1, jnp.asarray(v, jnp.float32).astype(jnp.int32))  # int(): toward zero
  mask = 255 - ((1 << (8 - bits)) - 1)
  return (image.astype(jnp.int32) & mask).astype(jnp.float32)


def rotate(image: Array, v: Any) -> Array:
  """`Image.rotate(v)`: v degrees counter-clockwise about the centre, nearest, fill 0."""
  angle = -jnp.deg2rad(jnp.asarray(v, jnp.float32))
  a, b = jnp.cos(angle), jnp.sin(angle)
  d, e = -b, a
  cx, cy = image.shape[1] / 2.0, image.shape[0] / 2.0
  c = cx - (a * cx + b * cy)
  f = cy - (d * cx + e * cy)
  return _pil_affine(image, a, b, c, d, e, f)


def _smooth(image: Array) -> Array:
  """`ImageFilter.SMOOTH` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, scale 13, rounded), border kept."""
  h, w = image.shape[:2]
  x = image.astype(jnp.int32)
  pad = jnp.pad(x, ((1, 1), (1, 1), (0, 0)))
  total = 4 * x
  for dy in range(3):
    for dx in range(3):
      total = total + pad[dy:dy + h, dx:dx + w]
  smooth = ((2 * total + 13) // 26).astype(jnp.float32)  # floor(total / 13 + 0.5), exactly
  rows = jnp.arange(h)[:, None, None]
  cols = jnp.arange(w)[None, :, None]
  inner = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
  return jnp.where(inner, smooth, image)


def sharpness(image: Array, v: Any) -> Array:
  """`ImageEnhance.Sharpness(v)`: blend with the SMOOTH-filtered image (v < 1 blurs)."""
  return _blend(_smooth(image), image, v)


def shear_x(image: Array, v: Any) -> Array:
  """`transform(AFFINE, (1, v, 0, 0, 1, 0))`: source x = x + v y."""
  return _pil_affine(image, 1.0, v, 0.0, 0.0, 1.0, 0.0)


def shear_y(image: Array, v: Any) -> Array:
  """`transform(AFFINE, (1, 0, 0, v, 1, 0))`: source y = v x + y."""
  return _pil_affine(image, 1.0, 0.0, 0.0, v, 1.0, 0.0)


def solarize(image: Array, v: Any) -> Array:
  """`ImageOps.solarize(v)`: invert the values >= v (dm-pix's solarize on the [0, 1] scale)."""
  out = dm_pix.solarize(image / 255.0, jnp.asarray(v, jnp.float32) / 255.0)
  return jnp.round(out * 255.0)


def translate_x(image: Array, v: Any) -> Array:
  """`transform(AFFINE, (1, 0, v * W, 0, 1, 0))`: content moves left by v * W pixels."""
  return _pil_affine(image, 1.0, 0.0, v * image.shape[1], 0.0, 1.0, 0.0)


def translate_y(image: Array, v: Any) -> Array:
  """`transform(AFFINE, (1, 0, 0, 0, 1, v * H))`: content moves up by v * H pixels."""
  return _pil_affine(image, 1.0, 0.0, 0.0, 0.0, 1.0, v * image.shape[0])


class Op(NamedTuple):
  name: str
  fn: Callable[[Array, Any], Array]
  low: float
  high: float


# The reference's `augment_list()`, in its order, with each op's magnitude range.
OPS: tuple[Op, ...] = (
    Op("auto_contrast", auto_contrast, 0.0, 1.0),
    Op("brightness", brightness, 0.05, 0.95),
    Op("color", color, 0.05, 0.95),
    Op("contrast", contrast, 0.05, 0.95),
    Op("equalize", equalize, 0.0, 1.0),
    Op("identity", identity, 0.0, 1.0),
    Op("posterize", posterize, 4.0, 8.0),
    Op("rotate", rotate, -30.0, 30.0),
    Op("sharpness", sharpness, 0.05, 0.95),
    Op("shear_x", shear_x, -0.3, 0.3),
    Op("shear_y", shear_y, -0.3, 0.3),
    Op("solarize", solarize, 0.0, 256.0),
    Op("translate_x", translate_x, -0.3, 0.3),
    Op("translate_y", translate_y, -0.3, 0.3),
)


def cutout(image: Array, v: Any, centre_x: Any, centre_y: Any) -> Array:
  """The reference's `Cutout(v)` with its centre given: a filled square of side v * W.

  x0 = int(max(0, cx - s / 2)), x1 = min(W, x0 + s) with s = v * W (and the same in y with the
  same s); PIL fills columns x0..int(x1) and rows y0..int(y1) inclusive, clipped to the image,
  with (125, 123, 114). v <= 0 leaves the image unchanged.
  """
  h, w = image.shape[:2]
  side = jnp.asarray(v, jnp.float32) * w
  x0 = jnp.floor(jnp.maximum(0.0, centre_x - side / 2.0))
  y0 = jnp.floor(jnp.maximum(0.0, centre_y - side / 2.0))
  x1 = jnp.floor(jnp.minimum(float(w), x0 + side))
  y1 = jnp.floor(jnp.minimum(float(h), y0 + side))
  rows = jnp.arange(h, dtype=jnp.float32)[:, None, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, :, None]
  inside = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1) & (side > 0)
  return jnp.where(inside, jnp.asarray(CUTOUT_FILL, jnp.float32), image)


class Policy(NamedTuple):
  """One draw of the policy: op indices into OPS [n], their magnitudes [n], Cutout's v, centre."""
  ops: Array
  magnitudes: Array
  cutout_v: Array
  centre_x: Array
  centre_y: Array


def sample_policy(key: Array, height: int, width: int, num_ops: int = 2) -> Policy:
  """Draws the reference's random choices: ops with replacement, uniform magnitudes, Cutout.

  The Cutout centre reproduces `np.random.uniform(w)` (low = w, high = 1.0): uniform in (1, w],
  so a centre never falls in the first pixel column or row.
  """
  k_ops, k_mag, k_cut, k_x, k_y = jax.random.split(key, 5)
  ops = jax.random.randint(k_ops, (num_ops,), 0, len(OPS))
  low = jnp.asarray([op.low for op in OPS], jnp.float32)[ops]
  high = jnp.asarray([op.high for op in OPS], jnp.float32)[ops]
  mags = low + (high - low) * jax.random.uniform(k_mag, (num_ops,))
  v = CUTOUT_MAX * jax.random.uniform(k_cut)
  cx = width + (1.0 - width) * jax.random.uniform(k_x)
  cy = height + (1.0 - height) * jax.random.uniform(k_y)
  return Policy(ops, mags, v, cx, cy)


def apply_policy(image: Array, policy: Policy) -> Array:
  """Applies the drawn ops in order, then Cutout; uint8 in, uint8 out (floats: same dtype)."""
  dtype = image.dtype
  x = jnp.asarray(image).astype(jnp.float32)
  branches = [op.fn for op in OPS]
  for i in range(policy.ops.shape[0]):
    x = lax.switch(policy.ops[i], branches, x, policy.magnitudes[i])
  x = cutout(x, policy.cutout_v, policy.centre_x, policy.centre_y)
  return x.astype(dtype)


def rand_augment(key: Array, image: Array, num_ops: int = 2, magnitude: int = 10) -> Array:
  """MLKD's strong-view policy on one uint8 [H, W, 3] image (pad-crop-flip already applied).

  Args:
    key: a JAX PRNG key; the same key gives the same image.
    image: uint8 [H, W, 3] (or a float array holding integers in [0, 255]).
    num_ops: ops per image (2 in the reference), drawn with replacement.
    magnitude: kept for the RandAugment(n, m) signature; as in the reference it does not scale
      the ops (each draws its magnitude uniformly from its range). Accepted: 0..30.

  Returns:
    The augmented image, same shape and dtype.
  """
  if not isinstance(num_ops, int) or num_ops < 0:
    raise ValueError(f"num_ops must be an int >= 0, got {num_ops!r}")
  if not 0 <= magnitude <= 30:
    raise ValueError(f"magnitude must be in [0, 30], got {magnitude!r}")
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be [H, W, 3] RGB, got shape {tuple(image.shape)}")
  policy = sample_policy(key, image.shape[0], image.shape[1], num_ops)
  return apply_policy(image, policy)


def rand_augment_batch(key: Array, images: Array, num_ops: int = 2,
                       magnitude: int = 10) -> Array:
  """`rand_augment` on a uint8 [B, H, W, 3] batch, one independent draw per image (vmapped)."""
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, 3], got shape {tuple(images.shape)}")
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, im: rand_augment(k, im, num_ops, magnitude))(keys, images)


__all__ = ["OPS", "Op", "Policy", "apply_policy", "cutout", "rand_augment",
           "rand_augment_batch", "sample_policy"] + [op.name for op in OPS]

