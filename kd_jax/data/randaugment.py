"""MLKD's strong augmentation on device: RandAugment(2, 10) with random magnitudes, then Cutout.

The policy of Jin-Ying/Multi-Level-Logit-Distillation `mdistiller/dataset/cifar100.py` (a
FixMatch-style RandAugment on PIL images; docs/methods.md §10.3): draw `num_ops` ops uniformly
with replacement from the 14 below, each with a magnitude drawn uniformly from its own range (the
`m` argument is ignored, as in the reference), then always apply Cutout with a square side of
U(0, 0.5) * width filled with (125, 123, 114). Each op reproduces its PIL counterpart on uint8
RGB images; tests/test_randaugment.py checks every op against PIL.

Wiring: in memory, the strong view is `rand_augment_batch(key, crop_and_flip(images, ...))` on
the uint8 batch, before `common.normalize`, i.e. pad-crop-flip (drawn independently of the weak
view's), then this, then the mean/std normalisation; pure functions with explicit keys, jit and
vmap safe. Streamed, `augmentations._streamed_randaugment` calls `tf_strong_view(image, seed)` in
the tf.data map on each pad-crop-flipped uint8 image: the same draws from a stateless seed, the
ranges read from `OPS`, and each op written again in TensorFlow (imported on first use only).

Geometric ops (rotate, shear, translate) use dm-pix's nearest-neighbour `affine_transform` with
PIL's inverse matrices and pixel-centre convention. dm-pix's colour ops are not PIL's (additive
brightness, per-channel-mean contrast, HSV saturation, other grey weights), so the blends,
autocontrast, equalize, posterize and the smoothing filter are written here after PIL's C code.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import dm_pix
import jax
import jax.numpy as jnp
from jax import lax

from kd_jax.data import common

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


# ----------------------------------------------------------------------------- TensorFlow
# The same policy for the streamed (tf.data) pipeline: each op below is the JAX op above written
# with TF ops on a float32 [H, W, 3] image holding integers (shapes may be dynamic); tensorflow
# is imported on first use only.


@functools.lru_cache(maxsize=None)
def _tf_ops() -> tuple[Callable[[Any, Any], Any], ...]:
  """The TF version of each op, in OPS order: fn(float32 [H, W, 3] image, float32 v)."""
  tf = common.import_tf()

  def blend(degenerate, image, factor):  # `Image.blend`, as _blend
    return tf.floor(degenerate + factor * (image - degenerate))

  def grey(image):  # RGB -> L, as _grey
    x = tf.cast(image, tf.int32)
    lum = x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000
    return tf.cast(tf.bitwise.right_shift(lum, 16), tf.float32)

  def affine(image, a, b, c, d, e, f):
    """PIL `transform(AFFINE, (a, b, c, d, e, f), NEAREST)`, fill 0: output pixel (x, y) takes
    the source pixel (floor(a (x+.5) + b (y+.5) + c), floor(d (x+.5) + e (y+.5) + f))."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    y, x = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
    x, y = tf.cast(x, tf.float32) + 0.5, tf.cast(y, tf.float32) + 0.5
    sx = tf.cast(tf.floor(a * x + b * y + c), tf.int32)
    sy = tf.cast(tf.floor(d * x + e * y + f), tf.int32)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    src = tf.stack([tf.clip_by_value(sy, 0, h - 1), tf.clip_by_value(sx, 0, w - 1)], -1)
    return tf.where(inside[..., None], tf.gather_nd(image, src), 0.0)

  def size(image, axis):
    return tf.cast(tf.shape(image)[axis], tf.float32)

  def auto_contrast(image, v):
    """`ImageOps.autocontrast`, as auto_contrast."""
    del v
    lo = tf.reduce_min(image, axis=(0, 1), keepdims=True)
    hi = tf.reduce_max(image, axis=(0, 1), keepdims=True)
    span = tf.cast(tf.maximum(hi - lo, 1.0), tf.int32)
    stretched = tf.cast(image - lo, tf.int32) * 255 // span
    return tf.where(hi > lo, tf.cast(tf.clip_by_value(stretched, 0, 255), tf.float32), image)

  def brightness(image, v):
    """`ImageEnhance.Brightness(v)`: blend with black."""
    return blend(tf.zeros_like(image), image, v)

  def color(image, v):
    """`ImageEnhance.Color(v)`: blend with the grey (L) image."""
    return blend(tf.broadcast_to(grey(image)[..., None], tf.shape(image)), image, v)

  def contrast(image, v):
    """`ImageEnhance.Contrast(v)`: blend with a flat image at int(mean(L) + 0.5)."""
    lum = tf.cast(grey(image), tf.int64)
    n = tf.size(lum, out_type=tf.int64)
    mean = tf.cast((2 * tf.reduce_sum(lum) + n) // (2 * n), tf.float32)
    return blend(tf.fill(tf.shape(image), mean), image, v)

  def equalize(image, v):
    """`ImageOps.equalize`: PIL's integer LUT per channel, as equalize."""
    del v
    x = tf.transpose(tf.cast(image, tf.int32), [2, 0, 1])  # [3, H, W]
    ids = tf.reshape(x + 256 * tf.range(3)[:, None, None], [-1])
    hist = tf.reshape(tf.math.unsorted_segment_sum(tf.ones_like(ids), ids, 768), [3, 256])
    bins = tf.range(256)
    last = tf.reduce_max(tf.where(hist > 0, bins, -1), axis=1)
    step = (tf.reduce_sum(hist, axis=1) - tf.gather(hist, last, batch_dims=1)) // 255
    keep = (tf.reduce_sum(tf.cast(hist > 0, tf.int32), axis=1) <= 1) | (step == 0)
    safe = tf.maximum(step, 1)[:, None]
    lut = tf.minimum((safe // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe, 255)
    lut = tf.where(keep[:, None], bins[None, :], lut)
    return tf.cast(tf.transpose(tf.gather(lut, x, batch_dims=1), [1, 2, 0]), tf.float32)

  def identity(image, v):
    """Unchanged."""
    del v
    return image

  def posterize(image, v):
    """`ImageOps.posterize(max(1, int(v)))`: keep the top bits."""
    bits = tf.maximum(1, tf.cast(v, tf.int32))  # the cast truncates toward zero, as int()
    mask = 255 - (tf.bitwise.left_shift(1, 8 - bits) - 1)
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.float32)

  def rotate(image, v):
    """`Image.rotate(v)`: v degrees counter-clockwise about the centre, nearest, fill 0."""
    angle = -(v * (math.pi / 180.0))
    a, b = tf.cos(angle), tf.sin(angle)
    d, e = -b, a
    cx, cy = size(image, 1) / 2.0, size(image, 0) / 2.0
    return affine(image, a, b, cx - (a * cx + b * cy), d, e, cy - (d * cx + e * cy))

  def sharpness(image, v):
    """`ImageEnhance.Sharpness(v)`: blend with `ImageFilter.SMOOTH` (rounded), border kept."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    x = tf.cast(image, tf.int32)
    pad = tf.pad(x, [[1, 1], [1, 1], [0, 0]])
    total = 4 * x + tf.add_n([pad[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])
    smooth = tf.cast((2 * total + 13) // 26, tf.float32)
    rows, cols = tf.range(h)[:, None, None], tf.range(w)[None, :, None]
    inner = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
    return blend(tf.where(inner, smooth, image), image, v)

  def shear_x(image, v):
    """`transform(AFFINE, (1, v, 0, 0, 1, 0))`."""
    return affine(image, 1.0, v, 0.0, 0.0, 1.0, 0.0)

  def shear_y(image, v):
    """`transform(AFFINE, (1, 0, 0, v, 1, 0))`."""
    return affine(image, 1.0, 0.0, 0.0, v, 1.0, 0.0)

  def solarize(image, v):
    """`ImageOps.solarize(v)`: invert the values >= v."""
    return tf.where(image < v, image, 255.0 - image)

  def translate_x(image, v):
    """`transform(AFFINE, (1, 0, v * W, 0, 1, 0))`."""
    return affine(image, 1.0, 0.0, v * size(image, 1), 0.0, 1.0, 0.0)

  def translate_y(image, v):
    """`transform(AFFINE, (1, 0, 0, 0, 1, v * H))`."""
    return affine(image, 1.0, 0.0, 0.0, 0.0, 1.0, v * size(image, 0))

  table = dict(auto_contrast=auto_contrast, brightness=brightness, color=color,
               contrast=contrast, equalize=equalize, identity=identity, posterize=posterize,
               rotate=rotate, sharpness=sharpness, shear_x=shear_x, shear_y=shear_y,
               solarize=solarize, translate_x=translate_x, translate_y=translate_y)
  return tuple(table[op.name] for op in OPS)


def _tf_cutout(image: Any, v: Any, centre_x: Any, centre_y: Any) -> Any:
  """`cutout` in TF: the reference's `Cutout(v)` with its centre given (float32 [H, W, 3])."""
  tf = common.import_tf()
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  side = v * tf.cast(w, tf.float32)
  x0 = tf.floor(tf.maximum(0.0, centre_x - side / 2.0))
  y0 = tf.floor(tf.maximum(0.0, centre_y - side / 2.0))
  x1 = tf.floor(tf.minimum(tf.cast(w, tf.float32), x0 + side))
  y1 = tf.floor(tf.minimum(tf.cast(h, tf.float32), y0 + side))
  rows = tf.cast(tf.range(h), tf.float32)[:, None, None]
  cols = tf.cast(tf.range(w), tf.float32)[None, :, None]
  inside = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1) & (side > 0)
  return tf.where(inside, tf.constant(CUTOUT_FILL, tf.float32), image)


def _tf_sample_policy(seed: Any, height: Any, width: Any, num_ops: int = 2) -> Policy:
  """`sample_policy` in TF from a stateless seed [2]: the same draws, as TF tensors."""
  tf = common.import_tf()
  s_ops, s_mag, s_cut, s_x, s_y = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
  uniform = lambda s, shape=(): tf.random.stateless_uniform(shape, seed=s)
  ops = tf.random.stateless_uniform([num_ops], seed=s_ops, minval=0, maxval=len(OPS),
                                    dtype=tf.int32)
  low = tf.gather(tf.constant([op.low for op in OPS], tf.float32), ops)
  high = tf.gather(tf.constant([op.high for op in OPS], tf.float32), ops)
  mags = low + (high - low) * uniform(s_mag, [num_ops])
  width, height = tf.cast(width, tf.float32), tf.cast(height, tf.float32)
  return Policy(ops, mags, CUTOUT_MAX * uniform(s_cut), width + (1.0 - width) * uniform(s_x),
                height + (1.0 - height) * uniform(s_y))


def tf_strong_view(image: Any, seed: Any) -> Any:
  """`rand_augment` (2 ops, then Cutout) in TensorFlow, for the streamed pipeline's tf.data map.

  Args:
    image: uint8 [H, W, 3] (pad-crop-flip already applied).
    seed: a stateless seed, int32 or int64 [2]; the same seed gives the same image.

  Returns:
    The augmented image, uint8 [H, W, 3].
  """
  tf = common.import_tf()
  shape = tf.shape(image)
  policy = _tf_sample_policy(seed, shape[0], shape[1])
  x = tf.cast(image, tf.float32)
  for i in range(policy.ops.shape[0]):
    x = tf.switch_case(policy.ops[i], [functools.partial(fn, x, policy.magnitudes[i])
                                       for fn in _tf_ops()])
  x = _tf_cutout(x, policy.cutout_v, policy.centre_x, policy.centre_y)
  out = tf.cast(x, tf.uint8)
  out.set_shape(image.shape)
  return out


__all__ = ["OPS", "Op", "Policy", "apply_policy", "cutout", "rand_augment",
           "rand_augment_batch", "sample_policy", "tf_strong_view"] + [op.name for op in OPS]

