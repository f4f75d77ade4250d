"""The embedded "digit scenes" dataset: detection / segmentation scenes and iconic images
built from scikit-learn's bundled handwritten digits (1,797 real 8x8 images; no download).

It is the miniature stand-in for the paper's data: scenes of 1-6 digits for COCO / PASCAL
(boxes, instance masks, semantic masks) and one-digit "iconic" images for ImageNet
(image-level labels, used for pre-training, joint training and as an unlabeled source).

The 1,797 digits are split once (stratified, fixed seed) into disjoint pools `train`,
`unlabeled` and `val`; each split draws only from its pool, so no validation digit is ever
seen in training:

    split          kind    pool        what it stands for
    train          scenes  train       COCO train (human labels)
    unlabeled      scenes  unlabeled   unlabeled images (labels written too, held back for
                                       measuring pseudo-label precision / recall)
    val            scenes  val         COCO val
    iconic_train   iconic  train       ImageNet train
    iconic_val     iconic  val         ImageNet val

Generation (numpy) is kept apart from serialization: `generate_scene` and `generate_iconic`
are pure functions of a `np.random.Generator`, returning dicts keyed by
`rethink_st.data.features` (instance masks as uint8 0/1 [N, H, W], semantic mask uint8
[H, W, 1]). `make_digit_scenes` writes a directory:

    {data_dir}/meta.json                              written last: the directory is complete
    {data_dir}/{split}.tfrecord-00000-of-00004 ...    Model Garden tf.Examples
    {data_dir}/annotations/{split}.json               COCO instances JSON (RLE masks)
    {data_dir}/images/{split}/{image_id:06d}.jpg      the images (JPEG q92; or .png)
    {data_dir}/masks/{split}/{image_id:06d}.png       semantic masks (0, 1..10, 255 ignore)

Image ids (COCO `image_id`, tf.Example `image/source_id`) are 1..N within each split;
example i goes to shard i % shards. Every image is generated from its own
`np.random.default_rng([seed, split_number, index])` (split_number = SPLITS.index(split)),
so the same seed gives byte-identical files and a bigger set starts with the smaller one.

Labels: boxes enclose exactly the visible mask pixels of each digit (after occlusion by later
digits and by occluding shapes); a digit left with too little visible is dropped and its
pixels become IGNORE_LABEL in the semantic mask, as does the thin anti-aliased rim just
outside each mask (about 7% as many pixels as the digits themselves, at 128x128).
"""
import functools
import json
import os
import shutil
import sys
import tempfile
from typing import Dict, List, NamedTuple, Optional, Sequence

import gin
import numpy as np
from scipy import ndimage

from rethink_st import features as F
from rethink_st.errors import UserError

NUM_CLASSES = 10                                     # digits 0..9 -> class ids 1..10
CLASS_NAMES = tuple(str(d) for d in range(NUM_CLASSES))
SCENE_SPLITS = ('train', 'unlabeled', 'val')
ICONIC_SPLITS = ('iconic_train', 'iconic_val')
SPLITS = SCENE_SPLITS + ICONIC_SPLITS
POOL_OF_SPLIT = {'train': 'train', 'unlabeled': 'unlabeled', 'val': 'val',
                 'iconic_train': 'train', 'iconic_val': 'val'}
META_FILE = 'meta.json'
DATA_DIR_ENV = 'RETHINK_ST_DATA_DIR'
FORMAT_VERSION = 1
IMAGE_FORMATS = ('jpeg', 'png')
JPEG_QUALITY = 92     # JPEG images are 4:4:4 at this quality; masks are always PNG

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
  parts = {name: [] for name in SCENE_SPLITS}
  for digit in range(NUM_CLASSES):
    idx = rng.permutation(np.flatnonzero(labels == digit))
    cuts = np.floor(np.cumsum(fractions) * len(idx) + 1e-9).astype(int)
    for name, lo, hi in zip(SCENE_SPLITS, (0, cuts[0], cuts[1]), cuts):
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


# --------------------------------------------------------------------------- the directory


def default_data_dir() -> str:
  """`$RETHINK_ST_DATA_DIR` if set, else `<repo>/data/digit_scenes`."""
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    return env
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(repo, 'data', 'digit_scenes')


def is_complete(data_dir: str) -> bool:
  """True if `data_dir` holds a finished dataset (meta.json is written last)."""
  return os.path.isfile(os.path.join(data_dir, META_FILE))


def read_meta(data_dir: str) -> dict:
  path = os.path.join(data_dir, META_FILE)
  if not os.path.isfile(path):
    raise UserError(f'{path} not found: {data_dir} is not a complete digit-scenes dataset '
                    f'(make one with bin/make_digit_scenes.py)')
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise UserError(f'{path} is not valid JSON: {e}') from None


def tfrecord_files(data_dir: str, split: str) -> List[str]:
  """The TFRecord shards of `split`, in order."""
  meta = read_meta(data_dir)
  if split not in meta['splits']:
    raise UserError(f'digit-scenes split {split!r} unknown in {data_dir}; '
                    f'splits are {sorted(meta["splits"])}')
  return [os.path.join(data_dir, f) for f in meta['splits'][split]['tfrecord_files']]


def _shard_name(split: str, shard: int, shards: int) -> str:
  return f'{split}.tfrecord-{shard:05d}-of-{shards:05d}'


def _check_count(name: str, value, minimum: int = 0) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise UserError(f'make_digit_scenes.{name} must be an integer >= {minimum}, got {value!r}')
  return int(value)


def _write_split(tmp_dir, split, count, size, seed, shards, pool, image_format):
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from rethink_st.data import coco_json_writer
  from rethink_st.data import tfexample
  # pylint: enable=g-import-not-at-top
  iconic = split in ICONIC_SPLITS
  split_number = SPLITS.index(split)
  coco = coco_json_writer.CocoJsonWriter(CLASS_NAMES, supercategory='digit',
                                         info={'description': f'digit scenes {split}'})
  image_dir = os.path.join(tmp_dir, 'images', split)
  mask_dir = os.path.join(tmp_dir, 'masks', split)
  os.makedirs(image_dir)
  os.makedirs(mask_dir)
  names = [_shard_name(split, s, shards) for s in range(shards)]
  writers = [tf.io.TFRecordWriter(os.path.join(tmp_dir, n)) for n in names]
  num_instances = 0
  try:
    for i in range(count):
      rng = np.random.default_rng([seed, split_number, i])
      example = (generate_iconic if iconic else generate_scene)(rng, pool, size)
      image_id = i + 1
      example[F.SOURCE_ID] = str(image_id)
      if image_format == 'jpeg':
        file_name = f'{image_id:06d}.jpg'
        encoded = tfexample.encode_jpeg(example[F.IMAGE], JPEG_QUALITY)
      else:
        file_name = f'{image_id:06d}.png'
        encoded = tfexample.encode_png(example[F.IMAGE])
      with open(os.path.join(image_dir, file_name), 'wb') as f:
        f.write(encoded)
      semantic_png = tfexample.encode_png(example[F.SEMANTIC_MASK])
      with open(os.path.join(mask_dir, f'{image_id:06d}.png'), 'wb') as f:
        f.write(semantic_png)
      writers[i % shards].write(tfexample.encode_example(
          example, encoded_image=encoded, encoded_semantic_mask=semantic_png,
          class_names=CLASS_NAMES, filename=file_name))
      extras = {'label': int(example[F.LABEL])} if iconic else {}
      coco.add(image_id, file_name, example, **extras)
      num_instances += len(example[F.CLASSES])
  finally:
    for w in writers:
      w.close()
  coco.write(os.path.join(tmp_dir, 'annotations', f'{split}.json'))
  return {'kind': 'iconic' if iconic else 'scenes', 'pool': POOL_OF_SPLIT[split],
          'num_examples': count, 'num_instances': num_instances, 'image_size': size,
          'tfrecord_files': names, 'coco_json': f'annotations/{split}.json',
          'image_dir': f'images/{split}', 'semantic_mask_dir': f'masks/{split}'}


def _install(tmp_dir: str, data_dir: str, overwrite: bool) -> None:
  """Moves the finished tmp_dir to data_dir (a rename: readers never see half a dataset)."""
  if os.path.isdir(data_dir) and not os.listdir(data_dir):
    os.rmdir(data_dir)
  if not os.path.exists(data_dir):
    os.rename(tmp_dir, data_dir)
    return
  if not overwrite:
    raise UserError(f'{data_dir} already exists and is not empty; bind '
                    f'make_digit_scenes.overwrite=True to replace it')
  old = tempfile.mkdtemp(prefix=f'.{os.path.basename(data_dir)}.old-',
                         dir=os.path.dirname(data_dir))
  os.rename(data_dir, os.path.join(old, 'd'))
  os.rename(tmp_dir, data_dir)
  shutil.rmtree(old, ignore_errors=True)


@gin.configurable(denylist=['data_dir'])
def make_digit_scenes(data_dir: str, *,
                      num_train: int = 2000,
                      num_unlabeled: int = 2000,
                      num_val: int = 500,
                      num_iconic_train: int = 2000,
                      num_iconic_val: int = 500,
                      image_size: int = 128,
                      iconic_image_size: int = 64,
                      seed: int = 0,
                      shards: int = 4,
                      image_format: str = 'jpeg',
                      overwrite: bool = False) -> str:
  """Generates the digit-scenes dataset into `data_dir` (see the module docstring for the
  layout) and returns data_dir. Everything is written to a temporary sibling directory and
  renamed into place at the end, with meta.json written last. The same arguments (and gin
  bindings of digit_pools / generate_scene / generate_iconic) give byte-identical files.
  Images are JPEG (quality 92, 4:4:4; as COCO's) or PNG (`image_format='png'`: lossless,
  about 2.5x bigger and slower); masks are always PNG."""
  if not data_dir:
    raise UserError('make_digit_scenes: data_dir is empty')
  counts = {'train': _check_count('num_train', num_train),
            'unlabeled': _check_count('num_unlabeled', num_unlabeled),
            'val': _check_count('num_val', num_val),
            'iconic_train': _check_count('num_iconic_train', num_iconic_train),
            'iconic_val': _check_count('num_iconic_val', num_iconic_val)}
  image_size = _check_count('image_size', image_size, 16)
  iconic_image_size = _check_count('iconic_image_size', iconic_image_size, 16)
  seed = _check_count('seed', seed)
  shards = _check_count('shards', shards, 1)
  if image_format not in IMAGE_FORMATS:
    raise UserError(f'make_digit_scenes.image_format must be one of {IMAGE_FORMATS}, '
                    f'got {image_format!r}')
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if (os.path.isdir(data_dir) and os.listdir(data_dir)) or os.path.isfile(data_dir):
    if not overwrite or os.path.isfile(data_dir):
      raise UserError(f'{data_dir} already exists and is not empty; bind '
                      f'make_digit_scenes.overwrite=True to replace it')
  from absl import logging  # pylint: disable=g-import-not-at-top
  pools = digit_pools()
  parent = os.path.dirname(data_dir)
  os.makedirs(parent, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix=f'.{os.path.basename(data_dir)}.tmp-', dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp_dir, 0o777 & ~umask)       # mkdtemp makes it private
  try:
    splits = {}
    for split in SPLITS:
      size = iconic_image_size if split in ICONIC_SPLITS else image_size
      splits[split] = _write_split(tmp_dir, split, counts[split], size, seed, shards,
                                   pools[POOL_OF_SPLIT[split]], image_format)
      logging.info('digit scenes: wrote %d %s examples (%d instances)', counts[split], split,
                   splits[split]['num_instances'])
    meta = {'name': 'digit_scenes', 'format_version': FORMAT_VERSION, 'seed': seed,
            'image_size': image_size, 'iconic_image_size': iconic_image_size,
            'num_classes': NUM_CLASSES, 'class_names': list(CLASS_NAMES),
            'class_ids': 'digit d has class id d + 1; 0 is background',
            'ignore_label': F.IGNORE_LABEL, 'shards': shards, 'image_format': image_format,
            'pools': {name: len(pool.labels) for name, pool in pools.items()},
            'splits': splits}
    with open(os.path.join(tmp_dir, META_FILE), 'w') as f:
      json.dump(meta, f, indent=1, sort_keys=True)
    _install(tmp_dir, data_dir, overwrite)
  finally:
    if os.path.isdir(tmp_dir):
      shutil.rmtree(tmp_dir, ignore_errors=True)
  return data_dir


def ensure_digit_scenes(data_dir: Optional[str] = None, generate: bool = False,
                        what: str = 'data_dir') -> str:
  """Returns the dataset directory (default_data_dir() if None), generating the default set
  first if its meta.json is absent. Another folder without a dataset is generated only with
  `generate`; else one UserError line naming `what` (a mistyped path would otherwise start
  a new dataset, silently, instead of reading the one meant)."""
  default = os.path.abspath(os.path.expanduser(default_data_dir()))
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default))
  if is_complete(data_dir):
    return data_dir
  if data_dir != default and not generate:
    raise UserError(f'{what}={data_dir} holds no digit-scenes dataset (no {META_FILE}) and is '
                    f'not the default folder {default}; generate one there with python '
                    f'bin/make_digit_scenes.py --data_dir={data_dir}, or bind '
                    'rethink_st.data.sources.digit_scenes_source.generate = True')
  print(f'rethink_st: generating the digit-scenes dataset in {data_dir} '
        f'(first run only, about a minute)', file=sys.stderr, flush=True)
  try:
    make_digit_scenes(data_dir, overwrite=False)
  except UserError:
    if not is_complete(data_dir):   # else another process finished it first
      raise
  return data_dir


# ------------------------------------------------------------------------- reading back


def read_examples(data_dir: str, split: str, n: Optional[int] = None):
  """Yields up to n decoded examples of `split` (numpy dicts keyed by `features`), read with
  Model Garden's TfExampleDecoder(include_mask=True) plus the semantic mask and label."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from official.vision.dataloaders import tf_example_decoder
  # pylint: enable=g-import-not-at-top
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  extra = {F.TFEX_SEMANTIC_MASK: tf.io.FixedLenFeature((), tf.string, ''),
           F.TFEX_LABEL: tf.io.FixedLenFeature((), tf.int64, -1)}
  dataset = tf.data.TFRecordDataset(tfrecord_files(data_dir, split))
  if n is not None:
    dataset = dataset.take(n)
  for record in dataset:
    out = {k: v.numpy() for k, v in decoder.decode(record).items()}
    parsed = tf.io.parse_single_example(record, extra)
    if parsed[F.TFEX_SEMANTIC_MASK].numpy():
      out[F.SEMANTIC_MASK] = tf.io.decode_png(parsed[F.TFEX_SEMANTIC_MASK], channels=1).numpy()
    if parsed[F.TFEX_LABEL].numpy() >= 0:
      out[F.LABEL] = parsed[F.TFEX_LABEL].numpy()
    yield out


def write_preview(data_dir: str, split: str, path: str, n: int = 16, ncols: int = 4,
                  scale: int = 2) -> str:
  """A PNG grid of the first n examples of `split`: each as the image with its boxes and
  instance masks, next to its semantic mask (class colours on black, ignore white).
  Returns path."""
  from rethink_st import drawing  # pylint: disable=g-import-not-at-top
  panels, titles = [], []
  for ex in read_examples(data_dir, split, n):
    digits = ''.join(CLASS_NAMES[c - 1] for c in ex[F.CLASSES])
    panels.append(drawing.draw_example(ex[F.IMAGE], ex[F.BOXES], ex[F.CLASSES],
                                       instance_masks=ex[F.INSTANCE_MASKS], scale=scale))
    panels.append(drawing.draw_example(np.zeros_like(ex[F.IMAGE]),
                                       semantic_mask=ex.get(F.SEMANTIC_MASK),
                                       scale=scale, mask_alpha=1.0))
    sid = ex[F.SOURCE_ID].decode()
    label = f' label {ex[F.LABEL]}' if F.LABEL in ex else ''
    titles += [f'#{sid}: {digits}{label}', 'semantic']
  if not panels:
    raise UserError(f'digit-scenes split {split!r} in {data_dir} has no examples')
  return drawing.save_grid(panels, path, ncols=2 * ncols, titles=titles)
