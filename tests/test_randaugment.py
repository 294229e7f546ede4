"""kd_jax.data.randaugment against PIL, the library MLKD's reference augmentation calls: the JAX
ops and their TensorFlow twins (tf_strong_view, the streamed pipeline's) alike.

Bounds, derived rather than measured:
- LUT ops (autocontrast, equalize, posterize, solarize, identity) are integer functions of the
  pixel: exact, except that PIL's autocontrast evaluates int(ix * 255/(hi-lo) - lo * 255/(hi-lo))
  in float64, which can land just below an exact integer: at most 1 grey level.
- Blends (brightness, color, contrast, sharpness) are trunc(d + f (i - d)) in float32 on both
  sides, with d computed exactly in integers; XLA may fuse the multiply-add (one rounding instead
  of two), which moves the value by at most one float32 ulp (< 2^-16 below 256) and so changes
  the truncation by at most 1 grey level. TF runs the multiply and the add as two ops.
- Geometric ops take the pixel containing a source point. PIL computes that point in 16.16 fixed
  point (coefficients rounded to 2^-17, accumulated over x + y steps) or in float64; kd_jax in
  float32 (about 1e-5 here; JAX through dm-pix's index-space matrix, TF from PIL's formula). A
  pixel may therefore differ only where its exact source point lies within
  delta = 2^-17 (1 + x + y) + 1e-4 of a pixel boundary; every other pixel must be equal.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from kd_jax.data import common
from kd_jax.data import randaugment as ra

H, W = 32, 40  # not square, so that a swapped width/height shows


def _sample_images():
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:H, 0:W]
  smooth = np.stack([xx * 6, yy * 7, (xx + yy) * 3], -1) + rng.integers(0, 30, (H, W, 3))
  low_contrast = rng.integers(100, 141, (H, W, 3))
  two_values = np.where(rng.random((H, W, 1)) < 0.3, 200, 10).repeat(3, 2)
  one_channel_flat = rng.integers(0, 256, (H, W, 3))
  one_channel_flat[..., 1] = 77
  images = [rng.integers(0, 256, (H, W, 3)), smooth, low_contrast, two_values, one_channel_flat]
  return np.clip(np.stack(images), 0, 255).astype(np.uint8)


IMAGES = _sample_images()

# The reference's calls, one per op, on PIL images.
PIL_OPS = {
    "auto_contrast": lambda im, v: ImageOps.autocontrast(im),
    "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "equalize": lambda im, v: ImageOps.equalize(im),
    "identity": lambda im, v: im,
    "posterize": lambda im, v: ImageOps.posterize(im, max(1, int(v))),
    "rotate": lambda im, v: im.rotate(v),
    "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
    "shear_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "shear_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "solarize": lambda im, v: ImageOps.solarize(im, v),
    "translate_x": lambda im, v: im.transform(im.size, Image.AFFINE,
                                              (1, 0, v * im.size[0], 0, 1, 0)),
    "translate_y": lambda im, v: im.transform(im.size, Image.AFFINE,
                                              (1, 0, 0, 0, 1, v * im.size[1])),
}
EXACT = {"equalize": 0, "identity": 0, "posterize": 0, "solarize": 0, "auto_contrast": 1,
         "brightness": 1, "color": 1, "contrast": 1, "sharpness": 1}
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
OP_BY_NAME = {op.name: op for op in ra.OPS}


def test_op_table_is_the_references():
  assert [op.name for op in ra.OPS] == [
      "auto_contrast", "brightness", "color", "contrast", "equalize", "identity", "posterize",
      "rotate", "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y"]
  ranges = {op.name: (op.low, op.high) for op in ra.OPS}
  assert ranges["brightness"] == (0.05, 0.95) and ranges["posterize"] == (4.0, 8.0)
  assert ranges["rotate"] == (-30.0, 30.0) and ranges["solarize"] == (0.0, 256.0)
  assert ranges["translate_x"] == (-0.3, 0.3) and ranges["shear_y"] == (-0.3, 0.3)


def _magnitudes(op, n=4, seed=1):
  """The range's ends, then n uniform draws in it (float32, the dtype both backends draw)."""
  rng = np.random.default_rng(seed)
  draws = op.low + (op.high - op.low) * rng.random(n)
  return [float(np.float32(v)) for v in [op.low, op.high, *draws]]


def _tf():
  pytest.importorskip("tensorflow")
  return common.import_tf()


@functools.lru_cache(maxsize=None)
def _tf_op(name):
  """The TF op as the tf.data map traces it: a graph, with the image's size unknown."""
  tf = _tf()
  fn = ra._tf_ops()[[op.name for op in ra.OPS].index(name)]  # pylint: disable=protected-access
  return tf.function(fn, input_signature=[tf.TensorSpec([None, None, 3], tf.float32),
                                          tf.TensorSpec([], tf.float32)])


def _ours(name, v, backend="jax"):
  if backend == "tf":
    fn = _tf_op(name)
    return np.stack([fn(im.astype(np.float32), v).numpy() for im in IMAGES]).astype(int)
  fn = jax.jit(jax.vmap(OP_BY_NAME[name].fn, in_axes=(0, None)))
  return np.asarray(fn(jnp.asarray(IMAGES, jnp.float32), v)).astype(int)


BACKENDS = ("jax", "tf")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(EXACT))
def test_point_op_matches_pil(name, backend):
  op = OP_BY_NAME[name]
  for v in _magnitudes(op):
    ours = _ours(name, v, backend)
    for i, img in enumerate(IMAGES):
      ref = np.asarray(PIL_OPS[name](Image.fromarray(img), float(v))).astype(int)
      diff = np.abs(ours[i] - ref)
      assert diff.max() <= EXACT[name], (name, v, i, diff.max())


def _pil_matrix(name, v):
  """PIL's (a, b, c, d, e, f) for the op at magnitude v (as Image.rotate / transform build it)."""
  if name == "rotate":
    angle = -math.radians(v % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = W / 2, H / 2
    return a, b, cx + a * -cx + b * -cy, d, e, cy + d * -cx + e * -cy
  return {"shear_x": (1, v, 0, 0, 1, 0), "shear_y": (1, 0, 0, v, 1, 0),
          "translate_x": (1, 0, v * W, 0, 1, 0), "translate_y": (1, 0, 0, 0, 1, v * H)}[name]


def _near_boundary(matrix):
  """[H, W] True where the exact source point lies within delta of a pixel boundary."""
  a, b, c, d, e, f = matrix
  y, x = np.mgrid[0:H, 0:W].astype(np.float64)
  xin = a * (x + 0.5) + b * (y + 0.5) + c
  yin = d * (x + 0.5) + e * (y + 0.5) + f
  delta = 2.0 ** -17 * (1 + x + y) + 1e-4
  dist = lambda u: np.abs(u - np.round(u))
  return (dist(xin) < delta) | (dist(yin) < delta)


def _off_boundary_mismatches(ours, name, v):
  near = _near_boundary(_pil_matrix(name, v))
  bad, checked = 0, 0
  for i, img in enumerate(IMAGES):
    ref = np.asarray(PIL_OPS[name](Image.fromarray(img), float(v))).astype(int)
    differ = np.any(ours[i] != ref, axis=-1)
    bad += int(np.sum(differ & ~near))
    checked += int(np.sum(~near))
  return bad, checked


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_op_matches_pil_off_boundary(name, backend):
  op = OP_BY_NAME[name]
  for v in _magnitudes(op, n=3, seed=2):
    bad, checked = _off_boundary_mismatches(_ours(name, v, backend), name, v)
    assert bad == 0, (name, v, bad)
    assert checked >= 0.9 * len(IMAGES) * H * W  # the criterion leaves most pixels checked


def test_geometric_criterion_catches_an_off_by_one_pixel():
  v = 0.1234
  shifted = jax.jit(jax.vmap(lambda im: ra._pil_affine(  # pylint: disable=protected-access
      im, 1.0, 0.0, v * W + 1.0, 0.0, 1.0, 0.0)))(jnp.asarray(IMAGES, jnp.float32))
  bad, _ = _off_boundary_mismatches(np.asarray(shifted).astype(int), "translate_x", v)
  assert bad > 0.2 * len(IMAGES) * H * W


def _pil_cutout(img, v, cx, cy):
  """The reference's Cutout/CutoutAbs with the random centre given."""
  im = Image.fromarray(img)
  if v <= 0:
    return np.asarray(im)
  v = v * im.size[0]
  w, h = im.size
  x0, y0 = int(max(0, cx - v / 2.0)), int(max(0, cy - v / 2.0))
  x1, y1 = min(w, x0 + v), min(h, y0 + v)
  im = im.copy()
  ImageDraw.Draw(im).rectangle((x0, y0, x1, y1), (125, 123, 114))
  return np.asarray(im)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v,cx,cy", [(0.5, 20.3, 16.7), (0.01, 1.2, 31.9), (0.3, 40.0, 32.0),
                                     (0.25, 1.0001, 1.0001), (0.49, 33.5, 2.5), (0.0, 9.0, 9.0)])
def test_cutout_matches_pil(v, cx, cy, backend):
  if backend == "tf":
    ours = ra._tf_cutout(  # pylint: disable=protected-access
        _tf().constant(IMAGES[0], "float32"), np.float32(v), np.float32(cx), np.float32(cy))
  else:
    ours = jax.jit(ra.cutout)(jnp.asarray(IMAGES[0], jnp.float32), v, cx, cy)
  np.testing.assert_array_equal(np.asarray(ours).astype(np.uint8),
                                _pil_cutout(IMAGES[0], v, cx, cy))


def test_policy_draws_follow_the_reference():
  keys = jax.random.split(jax.random.key(3), 512)
  pol = jax.jit(jax.vmap(lambda k: ra.sample_policy(k, H, W, 2)))(keys)
  ops, mags = np.asarray(pol.ops), np.asarray(pol.magnitudes)
  assert ops.shape == (512, 2) and set(np.unique(ops)) == set(range(len(ra.OPS)))
  assert np.any(ops[:, 0] == ops[:, 1])  # drawn with replacement
  low = np.array([op.low for op in ra.OPS])[ops]
  high = np.array([op.high for op in ra.OPS])[ops]
  assert np.all((mags >= low - 1e-6) & (mags <= high + 1e-6))
  assert np.all((pol.cutout_v >= 0) & (pol.cutout_v < 0.5))
  # np.random.uniform(w) is uniform on (1, w]: no centre in the first column or row
  assert np.all((pol.centre_x > 1) & (pol.centre_x <= W))
  assert np.all((pol.centre_y > 1) & (pol.centre_y <= H))


def test_policy_chain_matches_pil_for_exact_ops():
  img = IMAGES[1]
  names = ["equalize", "solarize"]
  policy = ra.Policy(jnp.asarray([[o.name for o in ra.OPS].index(n) for n in names]),
                     jnp.asarray([0.0, 97.3]), jnp.asarray(0.3), jnp.asarray(12.5),
                     jnp.asarray(30.2))
  ours = jax.jit(ra.apply_policy)(jnp.asarray(img), policy)
  assert ours.dtype == jnp.uint8
  ref = PIL_OPS["solarize"](PIL_OPS["equalize"](Image.fromarray(img), 0.0), 97.3)
  np.testing.assert_array_equal(ours, _pil_cutout(np.asarray(ref), 0.3, 12.5, 30.2))


def test_rand_augment_jit_batch_and_keys():
  images = jnp.asarray(IMAGES)
  key = jax.random.key(4)
  batch = jax.jit(ra.rand_augment_batch)(key, images)
  assert batch.shape == images.shape and batch.dtype == jnp.uint8
  np.testing.assert_array_equal(batch, jax.jit(ra.rand_augment_batch)(key, images))
  keys = jax.random.split(key, len(IMAGES))
  other = jax.jit(ra.rand_augment_batch)(jax.random.key(5), images)
  assert np.any(np.asarray(other) != np.asarray(batch))
  # zero ops leaves only the Cutout square changed
  cut_only = jax.jit(ra.rand_augment, static_argnums=2)(keys[0], images[0], 0)
  changed = np.any(np.asarray(cut_only) != IMAGES[0], axis=-1)
  if changed.any():
    rows, cols = np.nonzero(changed)
    assert changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_rand_augment_bad_input():
  with pytest.raises(ValueError, match=r"magnitude.*\[0, 30\].*40"):
    ra.rand_augment(jax.random.key(0), jnp.asarray(IMAGES[0]), magnitude=40)
  with pytest.raises(ValueError, match=r"\[H, W, 3\].*\(32, 40\)"):
    ra.rand_augment(jax.random.key(0), jnp.asarray(IMAGES[0][..., 0]))
  with pytest.raises(ValueError, match=r"num_ops.*-1"):
    ra.rand_augment(jax.random.key(0), jnp.asarray(IMAGES[0]), num_ops=-1)


def _tf_policy(seed, image):
  """The policy tf_strong_view(image, seed) draws."""
  shape = _tf().shape(image)
  return ra._tf_sample_policy(seed, shape[0], shape[1])  # pylint: disable=protected-access


def test_tf_policy_draws_follow_the_reference():
  tf = _tf()
  seeds = tf.random.experimental.stateless_split(tf.constant([3, 4], tf.int64), 512)
  ds = tf.data.Dataset.from_tensor_slices(tf.cast(seeds, tf.int32))  # int32 seeds too
  pol = ra.Policy(*next(ds.map(lambda s: _tf_policy(s, IMAGES[0])).batch(512)
                        .as_numpy_iterator()))
  ops, mags = pol.ops, pol.magnitudes
  assert ops.shape == (512, 2) and set(np.unique(ops)) == set(range(len(ra.OPS)))
  assert np.any(ops[:, 0] == ops[:, 1])  # drawn with replacement
  low = np.array([op.low for op in ra.OPS], np.float32)[ops]
  high = np.array([op.high for op in ra.OPS], np.float32)[ops]
  assert np.all((mags >= low) & (mags <= high))
  assert np.all((pol.cutout_v >= 0) & (pol.cutout_v < 0.5))
  assert np.all((pol.centre_x > 1) & (pol.centre_x <= W))
  assert np.all((pol.centre_y > 1) & (pol.centre_y <= H))


def test_tf_strong_view_in_tf_data_is_the_jax_policy():
  """In a tf.data map: uint8, shape kept, a function of the seed, and the image JAX's
  apply_policy makes with the policy the TF side drew (every op is PIL's on both sides, so the
  two agree unless a source point or a blend lands within float32 round-off of a pixel or
  grey-level boundary: 0 of 3000 draws here)."""
  tf = _tf()
  images = np.repeat(IMAGES, 4, axis=0)  # each image under 4 seeds
  seeds = tf.random.experimental.stateless_split(tf.constant([7, 8], tf.int64), len(images))
  ds = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
      lambda im, s: (ra.tf_strong_view(im, s), _tf_policy(s, im))).batch(len(images))
  out, pol = next(ds.as_numpy_iterator())
  assert out.dtype == np.uint8 and out.shape == images.shape
  np.testing.assert_array_equal(out, next(ds.as_numpy_iterator())[0])
  for i in range(len(IMAGES)):  # another seed, another image
    assert len({out[j].tobytes() for j in range(4 * i, 4 * i + 4)}) == 4, i
  jax_out = np.asarray(jax.jit(jax.vmap(ra.apply_policy))(jnp.asarray(images),
                                                          ra.Policy(*map(jnp.asarray, pol))))
  # Such a boundary moves single pixels (one source pixel, one grey level) and is rare; another
  # draw (op, magnitude, Cutout box) changes a large part of the image. So the bound is a
  # handful of pixels per image, not a tolerance on values.
  differ = np.any(jax_out != out, axis=-1).reshape(len(images), -1).sum(axis=1)
  assert np.all(differ <= 8), differ
  other = np.any(out[0::4] != out[1::4], axis=-1).reshape(len(IMAGES), -1).sum(axis=1)
  assert np.all(other > 10 * 8), other  # these seeds' neighbouring draws, far outside it
