"""The digit scenes' generator: scenes and iconic images drawn from sklearn's digits (numpy).

    digit_pools()                            the 1,797 digits split into disjoint pools
                                             train / unlabeled / val (stratified, seeded)
    generate_scene(rng, pool, image_size)    a scene of 1-6 digits (COCO / PASCAL stand-in)
    generate_iconic(rng, pool, image_size)   one centred digit (ImageNet stand-in)

Both generators are pure functions of a `np.random.Generator`, returning dicts keyed by
`rethink_st/features.py` (instance masks as uint8 0/1 [N, H, W], semantic mask uint8
[H, W, 1]) plus DIGIT_INDICES. `rethink_st/data/digit_scenes.py` writes them to a dataset
directory.

Labels: boxes enclose exactly the visible mask pixels of each digit (after occlusion by later
digits and by occluding shapes); a digit left with too little visible is dropped and its
pixels become IGNORE_LABEL in the semantic mask, as does the thin anti-aliased rim just
outside each mask (about 7% as many pixels as the digits themselves, at 128x128).
"""
import functools
from typing import Dict, NamedTuple, Sequence

import gin
import numpy as np
from scipy import ndimage

from rethink_st import features as F
from rethink_st.errors import UserError

NUM_CLASSES = 10                                     # digits 0..9 -> class ids 1..10
POOLS = ('train', 'unlabeled', 'val')

# Extra key of generated examples (not part of the decoded-example contract, not serialized):
# indices into sklearn's `load_digits()` of every digit drawn in the image, dropped ones too.
DIGIT_INDICES = 'digit_indices'


class DigitPool(NamedTuple):
  """A pool of 8x8 digits: images in [0, 1], digit labels 0..9, indices into load_digits()."""
  name: str
  images: np.ndarray    # [N, 8, 8] float32
  labels: np.ndarray    # [N] int64, 0..9
  indices: np.ndarray   # [N] int64


@functools.lru_cache(maxsize=None)
def _load_digits():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  # (imported at first use: about 1 s)
  data = load_digits()
  return (data.images.astype(np.float32) / 16.0), data.target.astype(np.int64)


@gin.configurable
def digit_pools(fractions: Sequence[float] = (0.4, 0.4, 0.2),
                seed: int = 0) -> Dict[str, DigitPool]:
  """Splits the 1,797 sklearn digits into disjoint pools 'train', 'unlabeled', 'val'.

  Stratified by digit: each digit's images are shuffled with `seed` and cut by `fractions`
  (train, unlabeled, val; they may sum to less than 1 to leave digits unused).
  """
  fractions = tuple(float(f) for f in fractions)
  if len(fractions) != 3 or min(fractions) <= 0 or sum(fractions) > 1 + 1e-9:
    raise UserError(f'digit_pools.fractions must be 3 positive numbers (train, unlabeled, val) '
                    f'summing to at most 1, got {fractions}')
  images, labels = _load_digits()
  rng = np.random.default_rng(seed)
  parts = {name: [] for name in POOLS}
  for digit in range(NUM_CLASSES):
    idx = rng.permutation(np.flatnonzero(labels == digit))
    cuts = np.floor(np.cumsum(fractions) * len(idx) + 1e-9).astype(int)
    for name, lo, hi in zip(POOLS, (0, cuts[0], cuts[1]), cuts):
      parts[name].append(idx[lo:hi])
  pools = {}
  for name, chunks in parts.items():
    idx = np.sort(np.concatenate(chunks))
    pools[name] = DigitPool(name, images[idx], labels[idx], idx.astype(np.int64))
  return pools


# ----------------------------------------------------------------------------- drawing bits


@functools.lru_cache(maxsize=None)
def _pixel_grid(size: int):
  """Pixel-centre coordinates (y, x), each [size, size] float32."""
  c = np.arange(size, dtype=np.float32) + 0.5
  return np.meshgrid(c, c, indexing='ij')


@functools.lru_cache(maxsize=None)
def _upsample_matrix(size: int, grid: int) -> np.ndarray:
  """[size, grid] bilinear weights taking `grid` control values to `size` pixels."""
  pos = (np.arange(size) + 0.5) / size * (grid - 1)
  lo = np.minimum(np.floor(pos).astype(int), grid - 2)
  frac = (pos - lo).astype(np.float32)
  m = np.zeros((size, grid), np.float32)
  m[np.arange(size), lo] = 1 - frac
  m[np.arange(size), lo + 1] = frac
  return m


def _smooth_noise(rng, height, width, grid, channels):
  """Low-frequency noise in [-1, 1]: a random grid x grid field, bilinearly upsampled."""
  field = rng.uniform(-1, 1, (grid, grid, channels)).astype(np.float32)
  rows = np.tensordot(_upsample_matrix(height, grid), field, axes=(1, 0))     # [h, grid, c]
  return np.matmul(_upsample_matrix(width, grid)[None], rows)                  # [h, w, c]


def _luma(rgb):
  return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _background(rng, size: int) -> np.ndarray:
  """A textured background, float32 [size, size, 3] in [0, 1]."""
  yy, xx = _pixel_grid(size)
  base = rng.uniform(0.1, 0.9, 3).astype(np.float32)
  img = base + rng.uniform(0.1, 0.35) * _smooth_noise(rng, size, size, int(rng.integers(2, 6)), 3)
  if rng.random() < 0.6:   # stripes / waves of a random orientation and period
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(0.05, 0.4) * size
    wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period
                  + rng.uniform(0, 2 * np.pi))
    img += rng.uniform(0.03, 0.12) * wave[..., None] * rng.uniform(-1, 1, 3).astype(np.float32)
  img += rng.uniform(0.0, 0.06) * _smooth_noise(rng, size, size, max(4, size // 4), 3)
  return img


def _clutter_shape(rng, size: int) -> np.ndarray:
  """A boolean [size, size] distractor: a long thin line, a box, a disc or a wide arc."""
  yy, xx = _pixel_grid(size)
  kind = rng.integers(4)
  if kind == 0:    # long thin line (longer and thinner than any digit stroke)
    p0 = rng.uniform(0, size, 2)
    theta = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.5, 1.2) * size
    d = np.array([np.sin(theta), np.cos(theta)])
    t = np.clip((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1], 0, length)
    dist2 = (yy - p0[0] - t * d[0]) ** 2 + (xx - p0[1] - t * d[1]) ** 2
    return dist2 <= (rng.uniform(0.5, 1.6)) ** 2
  if kind == 1:    # axis-aligned box
    h, w = rng.uniform(0.05, 0.35, 2) * size
    y0, x0 = rng.uniform(-0.1, 1.0, 2) * size
    return (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
  if kind == 2:    # disc
    r = rng.uniform(0.03, 0.15) * size
    cy, cx = rng.uniform(0, size, 2)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
  # wide, thin arc of a big circle
  r = rng.uniform(0.3, 0.8) * size
  cy, cx = rng.uniform(0, size, 2)
  dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
  ang = np.arctan2(yy - cy, xx - cx)
  a0 = rng.uniform(-np.pi, np.pi)
  in_arc = np.mod(ang - a0, 2 * np.pi) < rng.uniform(0.3, 1.5)
  return (np.abs(dist - r) <= rng.uniform(0.5, 1.5)) & in_arc


def _paint(img, shape, colour, opacity=1.0):
  """Blends `colour` into `img` in place where the boolean `shape` is set."""
  img[shape] = (1 - opacity) * img[shape] + opacity * colour


def _add_clutter(rng, img, count):
  size = img.shape[0]
  for _ in range(count):
    shape = _clutter_shape(rng, size)
    opacity = np.float32(rng.uniform(0.35, 0.9))
    _paint(img, shape, rng.uniform(0, 1, 3).astype(np.float32), opacity)


def _render_digit(digit8: np.ndarray, size: float, angle: float, aspect: float) -> np.ndarray:
  """The 8x8 digit drawn at `size` pixels tall, rotated by `angle` (radians), widened by
  `aspect`: bicubic interpolation, float32 [P, P] (P fits any rotation), values ~[0, 1]."""
  scale_y = size / 8.0
  scale_x = size * aspect / 8.0
  patch = int(np.ceil(max(scale_y, scale_x) * 8 * 1.45)) + 2
  c = (patch - 1) / 2.0
  cos, sin = np.cos(angle), np.sin(angle)
  # output (row, col) -> source (row, col): o = c + R @ S @ (s - 3.5 - pad)
  # so s = S^-1 R^T (o - c) + src_centre
  matrix = np.array([[cos / scale_y, sin / scale_y],
                     [-sin / scale_x, cos / scale_x]])
  src = np.pad(digit8, 2)
  src_centre = np.array([5.5, 5.5])
  offset = src_centre - matrix @ np.array([c, c])
  out = ndimage.affine_transform(src, matrix, offset=offset, output_shape=(patch, patch),
                                 order=3, mode='constant', cval=0.0, prefilter=True)
  return np.clip(out, 0.0, 1.0)


def _contrasting_colour(rng, background_luma: float) -> np.ndarray:
  for _ in range(20):
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    if abs(float(_luma(colour)) - background_luma) >= 0.3:
      return colour
  return np.full(3, 0.0 if background_luma > 0.5 else 1.0, np.float32)


def _box_iou(a, b):
  y0, x0 = max(a[0], b[0]), max(a[1], b[1])
  y1, x1 = min(a[2], b[2]), min(a[3], b[3])
  inter = max(0.0, y1 - y0) * max(0.0, x1 - x0)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


# -------------------------------------------------------------------------------- the scene


def _compose(rng, pool: DigitPool, size: int, placements, num_clutter: int,
             occlusion_prob: float, mask_threshold: float, min_visible_frac: float,
             min_visible_pixels: int):
  """Draws digits at `placements` [(pool index, centre y, centre x, height, angle, aspect)]
  on a cluttered background; returns the example dict (without source id)."""
  img = _background(rng, size)
  _add_clutter(rng, img, num_clutter)
  owner = np.full((size, size), -1, np.int32)           # -1 background, -2 ignore, i digit i
  full_counts = []
  # The alpha ramp: mask pixels (v >= t) are drawn at alpha >= 0.5; the few pixels just
  # below the threshold that are still clearly tinted (alpha >= 0.3) are labelled ignore.
  ramp_lo, ramp_hi = mask_threshold - 0.125, mask_threshold + 0.125
  for i, (k, cy, cx, height, angle, aspect) in enumerate(placements):
    v = _render_digit(pool.images[k], height, angle, aspect)
    p = v.shape[0]
    y0, x0 = int(round(cy - p / 2)), int(round(cx - p / 2))
    iy0, ix0 = max(y0, 0), max(x0, 0)
    iy1, ix1 = min(y0 + p, size), min(x0 + p, size)
    mask_full = v >= mask_threshold
    full_counts.append(int(mask_full.sum()))
    if iy1 <= iy0 or ix1 <= ix0:
      continue
    v = v[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    mask = mask_full[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    alpha = np.clip((v - ramp_lo) / (ramp_hi - ramp_lo), 0.0, 1.0)
    region = img[iy0:iy1, ix0:ix1]
    bg_luma = float(_luma(region[mask].mean(axis=0))) if mask.any() else 0.5
    colour = _contrasting_colour(rng, bg_luma)
    shade = 1 + 0.15 * _smooth_noise(rng, iy1 - iy0, ix1 - ix0, 3, 1)
    a = alpha[..., None]
    region *= 1 - a
    region += a * np.clip(colour * shade, 0, 1)
    own = owner[iy0:iy1, ix0:ix1]
    own[(alpha >= 0.3) & ~mask] = -2
    own[mask] = i
  if placements and rng.random() < occlusion_prob:     # occluders in front of the digits
    for _ in range(int(rng.integers(1, 3))):
      shape = _clutter_shape(rng, size)
      if not shape.any():
        continue
      # Occluders are opaque and hard-edged: their pixels are background.
      _paint(img, shape, rng.uniform(0, 1, 3).astype(np.float32))
      owner[shape] = -1
      if rng.random() < 0.5:   # and a thick bar, which can cut a digit
        yy, xx = _pixel_grid(size)
        k, cy, cx, height = placements[int(rng.integers(len(placements)))][:4]
        theta = rng.uniform(0, np.pi)
        dist = np.abs((yy - cy) * np.cos(theta) - (xx - cx) * np.sin(theta)
                      + rng.uniform(-0.3, 0.3) * height)
        bar = dist <= rng.uniform(0.06, 0.15) * height
        _paint(img, bar, rng.uniform(0, 1, 3).astype(np.float32))
        owner[bar] = -1

  img += rng.normal(0, rng.uniform(0.0, 0.03), img.shape).astype(np.float32)
  image = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)

  kept, classes, masks, boxes, areas = [], [], [], [], []
  for i, (k, *_rest) in enumerate(placements):
    visible = owner == i
    count = int(visible.sum())
    if count < min_visible_pixels or count < min_visible_frac * max(full_counts[i], 1):
      owner[visible] = -2        # too occluded to label: its leftover pixels are ignored
      continue
    rows = np.flatnonzero(visible.any(axis=1))
    cols = np.flatnonzero(visible.any(axis=0))
    boxes.append([rows[0] / size, cols[0] / size, (rows[-1] + 1) / size, (cols[-1] + 1) / size])
    classes.append(int(pool.labels[k]) + 1)
    masks.append(visible.astype(np.uint8))
    areas.append(count)
    kept.append(i)
  semantic = np.zeros((size, size), np.uint8)
  semantic[owner == -2] = F.IGNORE_LABEL
  for i, cls in zip(kept, classes):
    semantic[owner == i] = cls
  n = len(classes)
  return {
      F.IMAGE: image,
      F.HEIGHT: size,
      F.WIDTH: size,
      F.BOXES: np.asarray(boxes, np.float32).reshape(n, 4),
      F.CLASSES: np.asarray(classes, np.int64),
      F.IS_CROWD: np.zeros(n, bool),
      F.AREA: np.asarray(areas, np.float32),
      F.INSTANCE_MASKS: (np.stack(masks) if masks else np.zeros((0, size, size), np.uint8)),
      F.SEMANTIC_MASK: semantic[..., None],
      DIGIT_INDICES: pool.indices[[p[0] for p in placements]].astype(np.int64),
  }


@gin.configurable(denylist=['rng', 'digit_pool', 'image_size'])
def generate_scene(rng: np.random.Generator, digit_pool: DigitPool, image_size: int = 128, *,
                   max_digits: int = 6,
                   digit_size_range: Sequence[float] = (12 / 128, 56 / 128),
                   max_rotation_degrees: float = 15.0,
                   clutter_range: Sequence[int] = (2, 8),
                   occlusion_prob: float = 0.35,
                   max_overlap_iou: float = 0.25,
                   mask_threshold: float = 0.45,
                   min_visible_frac: float = 0.35,
                   min_visible_pixels: int = 12) -> Dict[str, np.ndarray]:
  """One scene of 1..max_digits digits on a textured, cluttered background.

  Digit heights are log-uniform in `digit_size_range` (fractions of image_size; 12-56 px at
  128), with a slight rotation and aspect jitter; later digits and occluders hide earlier
  ones. Instances left with fewer than `min_visible_pixels` or `min_visible_frac` of their
  mask visible are dropped (their pixels become IGNORE_LABEL in the semantic mask). Boxes
  enclose the visible mask pixels exactly. Returns a dict keyed by `features` constants plus
  DIGIT_INDICES; instance masks are uint8 0/1 [N, H, W], the semantic mask uint8 [H, W, 1].
  """
  for _ in range(10):   # redraw the rare scene whose every digit ends up hidden
    example = _scene(rng, digit_pool, int(image_size), max_digits, digit_size_range,
                     max_rotation_degrees, clutter_range, occlusion_prob, max_overlap_iou,
                     mask_threshold, min_visible_frac, min_visible_pixels)
    if len(example[F.CLASSES]):
      break
  return example


def _scene(rng, digit_pool, size, max_digits, digit_size_range, max_rotation_degrees,
           clutter_range, occlusion_prob, max_overlap_iou, mask_threshold, min_visible_frac,
           min_visible_pixels):
  lo, hi = digit_size_range
  num = int(rng.integers(1, max_digits + 1))
  placements, taken = [], []
  for _ in range(num):
    k = int(rng.integers(len(digit_pool.labels)))
    height = float(np.exp(rng.uniform(np.log(lo * size), np.log(hi * size))))
    angle = float(np.deg2rad(rng.uniform(-max_rotation_degrees, max_rotation_degrees)))
    aspect = float(rng.uniform(0.8, 1.1))
    half = 0.5 * height
    for _ in range(10):   # a few tries to keep overlaps moderate
      cy = float(rng.uniform(0.3 * height, size - 0.3 * height))
      cx = float(rng.uniform(0.3 * height, size - 0.3 * height))
      box = (cy - half, cx - half * aspect, cy + half, cx + half * aspect)
      if all(_box_iou(box, t) <= max_overlap_iou for t in taken):
        break
    taken.append(box)
    placements.append((k, cy, cx, height, angle, aspect))
  return _compose(rng, digit_pool, size, placements,
                  int(rng.integers(clutter_range[0], clutter_range[1] + 1)),
                  occlusion_prob, mask_threshold, min_visible_frac, min_visible_pixels)


@gin.configurable(denylist=['rng', 'digit_pool', 'image_size'])
def generate_iconic(rng: np.random.Generator, digit_pool: DigitPool, image_size: int = 64, *,
                    digit_size_range: Sequence[float] = (0.55, 0.85),
                    max_rotation_degrees: float = 12.0,
                    clutter_range: Sequence[int] = (0, 3),
                    mask_threshold: float = 0.45) -> Dict[str, np.ndarray]:
  """One centred digit (ImageNet stand-in): the scene dict of `generate_scene` with one
  instance, plus LABEL, the image-level class 0..9 (= class id - 1)."""
  size = int(image_size)
  k = int(rng.integers(len(digit_pool.labels)))
  height = float(rng.uniform(*digit_size_range) * size)
  jitter = 0.05 * size
  placement = (k, size / 2 + float(rng.uniform(-jitter, jitter)),
               size / 2 + float(rng.uniform(-jitter, jitter)), height,
               float(np.deg2rad(rng.uniform(-max_rotation_degrees, max_rotation_degrees))),
               float(rng.uniform(0.8, 1.1)))
  example = _compose(rng, digit_pool, size, [placement],
                     int(rng.integers(clutter_range[0], clutter_range[1] + 1)),
                     occlusion_prob=0.0, mask_threshold=mask_threshold,
                     min_visible_frac=0.0, min_visible_pixels=1)
  example[F.LABEL] = np.int64(digit_pool.labels[k])
  return example
