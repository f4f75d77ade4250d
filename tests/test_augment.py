"""Augment-S1..S4 (rethink_st/augment.py, augment_ops.py, augment_policies.py): masks move
exactly with the image, boxes enclose their objects, colour ops leave masks alone, eval
preprocessing is Model Garden's.

Masks and boxes are checked against the IMAGE: the test image is a flat background with four
objects, each painted in its own saturated colour, so the pixels of an object can be found in
an augmented image by their colour, independently of the masks under test."""
import glob
import os

import gin
import numpy as np
import pytest

from rethink_st import augment as A
from rethink_st import augment_ops as ops
from rethink_st import features as F
from rethink_st.errors import UserError

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order
from official.vision.ops import augment as mg_augment  # pylint: disable=wrong-import-order
from official.vision.ops import box_ops, preprocess_ops  # pylint: disable=wrong-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 72, 96
# Model Garden's fill colour: a Cutout patch (a colour op) looks like more background.
BACKGROUND = np.array(ops.REPLACE_VALUE, np.uint8)
COLOURS = np.array([(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)], np.uint8)
CLASSES = np.array([3, 5, 7, 2], np.int64)
# Pixel constants scaled to the small test image (Model Garden's 250 px would move
# everything out of a 96 px image at level 10).
CONSTS = dict(cutout_const=20.0, translate_const=40.0)
# Whole policies: Cutout (a colour op: masks untouched, see the single-op test) kept to a
# 4 x 4 patch, so it cannot hide a good part of an object from the alignment checks.
POLICY_CONSTS = dict(cutout_const=2.0, translate_const=40.0)
COLOUR_TOL = 20     # max |channel difference| of a pixel that shows an object's colour
MIN_AREA = 12       # visible parts this small, or without a core (1-2 px wide slivers at
                    # the crop edge: interpolated colours), are not compared with the image

DETECTION_V0_OPS = sorted({op for sub in mg_augment.AutoAugment.detection_policy_v0()
                           for op, _, _ in sub})
RANDAUG_OPS = mg_augment.RandAugment.build_for_detection().available_ops
ALL_OPS = sorted(set(DETECTION_V0_OPS) | set(RANDAUG_OPS))
GEOMETRIC = [op for op in ALL_OPS if ops.op_kind(op) == 'geometric']
PIXEL = [op for op in ALL_OPS if ops.op_kind(op) == 'pixel']


def make_example():
  """Four uniquely coloured objects on a flat background that never has their colours: an
  ellipse, an L whose box contains a disc, the disc, and a square on the right border;
  an IGNORE_LABEL streak in the semantic mask."""
  image = np.broadcast_to(BACKGROUND, (H, W, 3)).copy()
  yy, xx = np.mgrid[:H, :W]
  shapes = [
      ((yy - 20) / 9.0) ** 2 + ((xx - 20) / 13.0) ** 2 <= 1,
      ((xx >= 40) & (xx < 45) & (yy >= 10) & (yy < 52))
      | ((yy >= 47) & (yy < 52) & (xx >= 40) & (xx < 72)),
      (yy - 30) ** 2 + (xx - 60) ** 2 <= 36,
      (yy >= 55) & (yy < 68) & (xx >= W - 10),
  ]
  semantic = np.zeros((H, W), np.uint8)
  semantic[60:62, 5:30] = F.IGNORE_LABEL
  for shape, colour, cls in zip(shapes, COLOURS, CLASSES):
    image[shape] = colour
    semantic[shape] = cls
  masks = np.stack(shapes).astype(np.float32)
  rows, cols = masks.any(axis=2), masks.any(axis=1)     # exact boxes, written out by hand
  boxes = np.array([[r.argmax() / H, c.argmax() / W, (H - r[::-1].argmax()) / H,
                     (W - c[::-1].argmax()) / W] for r, c in zip(rows, cols)], np.float32)
  return {
      F.SOURCE_ID: tf.constant('17'),
      F.IMAGE: tf.constant(image),
      F.HEIGHT: tf.constant(H, tf.int64),
      F.WIDTH: tf.constant(W, tf.int64),
      F.BOXES: tf.constant(boxes),
      F.CLASSES: tf.constant(CLASSES),
      F.IS_CROWD: tf.constant([False, False, True, False]),
      F.AREA: tf.constant(masks.sum(axis=(1, 2))),
      F.INSTANCE_MASKS: tf.constant(masks),
      F.SEMANTIC_MASK: tf.constant(semantic[..., None]),
      F.SCORES: tf.constant([0.9, 0.8, 0.7, 0.6], tf.float32),
  }


@pytest.fixture(scope='module')
def example():
  return make_example()


def packed(example):
  layout = ops.MaskLayout(True, True)
  return layout, layout.pack(example[F.INSTANCE_MASKS], example[F.SEMANTIC_MASK])


# ------------------------------------------------------------- checks against the image


def dilate(mask, steps=1):
  """Binary dilation with a 3 x 3 square, `steps` times."""
  for _ in range(steps):
    padded = np.pad(mask, 1)
    h, w = mask.shape
    mask = np.any([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)],
                  axis=0)
  return mask


def erode(mask):
  return ~dilate(~mask)


def extent(mask):
  """(row0, col0, row1, col1) pixel edges of a non-empty boolean mask."""
  rows, cols = np.nonzero(mask)
  return np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], np.float64)


def iou(a, b):
  return (a & b).sum() / max((a | b).sum(), 1)


def colour_pixels(image, colour, valid, tol=COLOUR_TOL):
  """Pixels of the area `valid` that show `colour` (within tol per channel)."""
  diff = np.abs(image.astype(np.float32) - np.asarray(colour, np.float32)).max(axis=-1)
  return valid & (diff <= tol)


def estimated_colour(image, mask):
  """What colour the image shows under `mask`: the median over the mask's core. Colour ops
  change the objects' colours; a misplaced mask picks up the background's (or another
  object's) colour, whose pixels then do not coincide with the mask."""
  core = erode(mask)
  core = core if core.sum() >= 4 else mask
  return np.median(image[core].astype(np.float32), axis=0)


def assert_coincide(mask, pixels, what, exact, min_match=0.9):
  """`mask` covers the object's `pixels`. exact: IoU >= min_match. Otherwise (bilinear
  resizing blurs the edges of the image, not of the nearest-resized masks): at least
  min_match of the mask lies within 1 px of the pixels and of the pixels within 1 px of
  the mask."""
  if exact:
    assert iou(mask, pixels) >= min_match, f'{what}: IoU {iou(mask, pixels):.3f}'
    return
  recall = (mask & dilate(pixels)).sum() / max(mask.sum(), 1)
  precision = (pixels & dilate(mask)).sum() / max(pixels.sum(), 1)
  assert recall >= min_match and precision >= min_match, (
      f'{what}: {recall:.3f} of the mask on the object, {precision:.3f} of the object '
      f'under the mask')


def check_aligned_with_image(image, boxes, classes, instance, semantic, *, colours=None,
                             tol=COLOUR_TOL, exact=False, scale=1.0):
  """Masks and boxes agree with the IMAGE.

  For every object (found by its class; CLASSES are unique) that is visible (MIN_AREA):
    * the pixels of the image's uncovered area (semantic != IGNORE_LABEL) that show the
      object's colour coincide with its instance mask and with the semantic mask's pixels
      of its class (`assert_coincide`);
    * its box encloses its mask and those pixels (within 1 px) and, when the object is
      wholly visible (its mask touches neither the image border nor ignored area), is at
      most 1 px larger than its mask and 2 px larger than its pixels on every side.
  colours: the objects' colours in CLASSES order (no colour op ran; then an object without
  a mask must not show either), or None: estimated from the image under each mask
  (`estimated_colour`) and required to differ from the background's.
  And whatever the uncovered area shows apart from the background lies near the instance
  masks and the semantic mask's classes, the image border or ignored area (within 1 px,
  plus `scale` px for Sharpness's 1 px halo and for blending when the image was resized by
  `scale`): no object lost its mask.
  instance None: semantic mask only (segmentation), no boxes.
  Returns how many objects were compared with the image.
  """
  image = np.asarray(image)
  semantic = np.asarray(semantic)
  semantic = semantic[..., 0] if semantic.ndim == 3 else semantic
  h, w = semantic.shape
  valid = semantic != F.IGNORE_LABEL
  if instance is None:
    masks = {int(c): semantic == c for c in CLASSES if (semantic == c).any()}
  else:
    masks = dict(zip((int(c) for c in classes), np.asarray(instance) > 0))
  covered = np.any(list(masks.values()) or [valid & False], axis=0)
  background = valid & ~dilate(covered, 2)
  bg = np.median(image[background].astype(np.float32), axis=0) if background.any() else None
  compared = 0
  for i, cls in enumerate(CLASSES):
    mask = masks.get(int(cls))
    if mask is None or mask.sum() < MIN_AREA:
      if colours is not None:   # gone: its colour must not show either
        assert colour_pixels(image, colours[i], valid, tol).sum() < MIN_AREA, (
            f'class {cls}: object visible without a mask')
      if mask is None:
        continue
    pixels = None
    if mask.sum() >= MIN_AREA and erode(mask).sum() >= MIN_AREA:
      if colours is None:
        colour = estimated_colour(image, mask)
        if background.sum() >= MIN_AREA:
          assert np.abs(colour - bg).max() > tol, f'class {cls}: mask on the background'
      else:
        colour = colours[i]
      pixels = colour_pixels(image, colour, valid, tol)
      if instance is not None:
        assert_coincide(mask, pixels, f'class {cls} instance mask', exact)
      assert_coincide(semantic == cls, pixels, f'class {cls} semantic mask', exact)
      compared += 1
    if instance is None:
      continue
    box = np.asarray(boxes)[list(masks).index(int(cls))] * [h, w, h, w]
    lo, hi = box[:2], box[2:]
    for what, region in (('mask', mask), ('pixels', pixels)):
      if region is not None and region.any():
        e = extent(region)
        assert (e[:2] >= lo - 1 - 1e-4).all() and (e[2:] <= hi + 1 + 1e-4).all(), (
            f'class {cls}: box {box} does not enclose its {what} {e}')
    wholly_visible = (pixels is not None and not mask[[0, -1]].any()
                      and not mask[:, [0, -1]].any() and not (dilate(mask) & ~valid).any())
    if wholly_visible:
      for what, region, slack in (('mask', mask, 1), ('pixels', pixels, 2)):
        e = extent(region)
        assert (lo >= e[:2] - slack - 1e-4).all() and (hi <= e[2:] + slack + 1e-4).all(), (
            f'class {cls}: box {box} far larger than its {what} {e}')
  # No object without a mask.
  if background.sum() >= MIN_AREA:
    foreground = valid & (np.abs(image.astype(np.float32) - bg).max(axis=-1) > tol)
    # (what resizing blends in across the image border and the ignored area is no object)
    edges = ~valid
    edges[[0, -1]] = edges[:, [0, -1]] = True
    for what, cover in (('the masks', covered), ('the semantic mask', valid & (semantic > 0))):
      stray = (foreground & ~dilate(cover | edges, 1 + int(np.ceil(scale)))).sum()
      assert stray < MIN_AREA, f'{stray} pixels of objects outside {what}'
  return compared


# ------------------------------------------------------ Model Garden's ops, by definition


def source_coords(name, arg, h, w):
  """Where Model Garden's op `name` with argument `arg` takes each output pixel from:
  (source row, source col) arrays [h, w], from the ops' definitions (PIL conventions):
  TranslateX(p): out(y, x) = in(y, x + p); ShearX(s): in(y, x + s y); Rotate(d): about the
  image centre by d degrees."""
  y, x = np.mgrid[:h, :w].astype(np.float64)
  if name.startswith('TranslateX'):
    return y, x + arg
  if name.startswith('TranslateY'):
    return y + arg, x
  if name.startswith('ShearX'):
    return y, x + arg * y
  if name.startswith('ShearY'):
    return y + arg * x, x
  assert name.startswith('Rotate'), name
  a = np.deg2rad(arg)
  cy, cx = (h - 1) / 2, (w - 1) / 2
  return (np.sin(a) * (x - cx) + np.cos(a) * (y - cy) + cy,
          np.cos(a) * (x - cx) - np.sin(a) * (y - cy) + cx)


def warp(array, sy, sx, fill):
  """Nearest sampling of `array` at (sy, sx); fill where that falls outside. Also returns
  `sure`: pixels not within rounding error of a sampling or border decision."""
  h, w = array.shape[:2]
  iy, ix = np.floor(sy + 0.5).astype(int), np.floor(sx + 0.5).astype(int)
  inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
  out = np.full(sy.shape + array.shape[2:], fill, array.dtype)
  out[inside] = array[iy[inside], ix[inside]]
  sure = (np.abs(sy - np.floor(sy) - 0.5) > 0.01) & (np.abs(sx - np.floor(sx) - 0.5) > 0.01)
  return out, inside, sure


def sampled_op(name, level, seed, example, masks, layout, prob=1.0, boxes=None):
  """ops.apply_op under `seed`, and the arguments Model Garden samples for it (same draws)."""
  tf.random.set_seed(seed)
  _, _, args = mg_augment._parse_policy_info(  # pylint: disable=protected-access
      name, prob, level, ops.REPLACE_VALUE, CONSTS['cutout_const'], CONSTS['translate_const'])
  tf.random.set_seed(seed)
  boxes = example[F.BOXES] if boxes is None else boxes
  image, boxes, new_masks = ops.apply_op(name, example[F.IMAGE], boxes, masks, layout,
                                       level=level, prob=prob, **CONSTS)
  return args, image.numpy(), boxes.numpy(), new_masks


# ------------------------------------------------------------------------------ single ops


def test_op_table_covers_the_policies():
  assert set(DETECTION_V0_OPS) <= ops.SUPPORTED_OPS
  assert set(RANDAUG_OPS) <= ops.SUPPORTED_OPS
  assert {'TranslateY_Only_BBoxes'} <= set(DETECTION_V0_OPS)
  assert set(GEOMETRIC) == {'Rotate_BBox', 'ShearX_BBox', 'ShearY_BBox', 'TranslateX_BBox',
                            'TranslateY_BBox'}
  with pytest.raises(UserError, match='not supported'):
    ops.op_kind('Mixup')


def unpacked(layout, masks):
  instance, semantic = layout.unpack(masks)
  return instance.numpy(), semantic.numpy()[..., 0]


@pytest.mark.parametrize('name', GEOMETRIC)
@pytest.mark.parametrize('level', [10.0, 4.0])
def test_geometric_op_moves_masks_with_image(example, name, level):
  """Each geometric op of the policies alone, both signs: the masks lie exactly on the
  objects' pixels of the image and the boxes around them; the masks are the op's
  definition (`source_coords`, which the image follows too) sampled nearest, with the new
  area 0 in the instance masks and IGNORE_LABEL in the semantic mask."""
  layout, masks = packed(example)
  image_in = example[F.IMAGE].numpy()
  instance_in = example[F.INSTANCE_MASKS].numpy() > 0
  semantic_in = example[F.SEMANTIC_MASK].numpy()[..., 0]
  signs = set()
  for seed in (0, 4):            # the sign of the op's argument is random: - and + here
    (arg, _), image, boxes, new_masks = sampled_op(name, level, seed, example, masks, layout)
    arg = float(arg)
    signs.add(arg > 0)
    instance, semantic = unpacked(layout, new_masks)
    check_aligned_with_image(image, boxes, CLASSES, instance, semantic, colours=COLOURS,
                             tol=0, exact=True)
    sy, sx = source_coords(name, arg, H, W)
    expected_image, inside, sure = warp(image_in, sy, sx, 0)
    # The definition is Model Garden's image op (which fills its new area by reflection) ...
    np.testing.assert_array_equal(image[inside & sure], expected_image[inside & sure])
    # ... and the masks' transform, everywhere.
    new_area = ~inside & sure
    assert new_area.sum() > 20
    assert (semantic[new_area] == F.IGNORE_LABEL).all() and not instance[:, new_area].any()
    expected_semantic = warp(semantic_in, sy, sx, F.IGNORE_LABEL)[0]
    np.testing.assert_array_equal(semantic[sure], expected_semantic[sure])
    for got, mask in zip(instance, instance_in):
      np.testing.assert_array_equal(got[sure] > 0, warp(mask, sy, sx, False)[0][sure])
  assert signs == {True, False}


@pytest.mark.parametrize('level', [1.0, 2.0])   # 12 / 24 px: Model Garden's level / 10 * 120
def test_bbox_only_op_moves_masks_inside_boxes(example, level):
  """TranslateY_Only_BBoxes (one box at a time): the content of the box slides up or down
  in the image and in the masks alike; rows it leaves are IGNORE_LABEL; nothing else
  changes; masks and boxes lie on the objects' pixels of the image."""
  layout, masks = packed(example)
  image_in = example[F.IMAGE].numpy()
  instance_in = example[F.INSTANCE_MASKS].numpy() > 0
  semantic_in = example[F.SEMANTIC_MASK].numpy()[..., 0]
  signs = set()
  for seed in range(6):
    box = example[F.BOXES][seed % 4:seed % 4 + 1]
    # prob 3.0: Model Garden divides a bbox-only op's probability by 3 -> the box moves.
    (_, pixels, _), image, boxes, new_masks = sampled_op(
        'TranslateY_Only_BBoxes', level, seed, example, masks, layout, prob=3.0, boxes=box)
    pixels = float(pixels)
    signs.add(pixels > 0)
    instance, semantic = unpacked(layout, new_masks)
    check_aligned_with_image(image, boxes, CLASSES, instance, semantic, colours=COLOURS,
                             tol=0, exact=True)
    # Model Garden's pixel region of a box (float32 box * size, truncated, inclusive).
    y0, x0, y1, x1 = (np.float32([H, W, H, W]) * box.numpy()[0]).astype(np.int32)
    y1, x1 = min(y1, H - 1), min(x1, W - 1)
    sy, sx = np.mgrid[:H, :W].astype(np.float64)
    in_box = (sy >= y0) & (sy <= y1) & (sx >= x0) & (sx <= x1)
    sy = np.where(in_box, sy + pixels, sy)                 # translate_y of the box's content
    new_area = in_box & ((sy < y0) | (sy > y1))
    assert new_area.any() and not (new_area & ~in_box).any()
    expected_image = warp(image_in, sy, sx, 0)[0]
    np.testing.assert_array_equal(image[~new_area], expected_image[~new_area])
    expected_semantic = warp(semantic_in, sy, sx, 0)[0]
    expected_semantic[new_area] = F.IGNORE_LABEL
    np.testing.assert_array_equal(semantic, expected_semantic)
    for got, mask in zip(instance, instance_in):
      expected = warp(mask, sy, sx, False)[0] & ~new_area
      np.testing.assert_array_equal(got > 0, expected)
  assert signs == {True, False}


@pytest.mark.parametrize('name', PIXEL)
def test_colour_ops_leave_masks_and_boxes_identical(example, name):
  """Each colour op of the policies alone: masks bit-identical, boxes unchanged."""
  layout, masks = packed(example)
  tf.random.set_seed(0)
  image, boxes, new_masks = ops.apply_op(name, example[F.IMAGE], example[F.BOXES], masks,
                                       layout, level=10.0, **CONSTS)
  np.testing.assert_array_equal(new_masks.numpy(), masks.numpy())
  np.testing.assert_array_equal(boxes.numpy(), example[F.BOXES].numpy())
  assert image.dtype == tf.uint8 and image.shape == (H, W, 3)
  if name != 'Cutout':   # (Cutout paints a grey patch over whatever it hits)
    # The objects keep their masks under their new colours: the colour tracking the
    # whole-policy test relies on works for every colour op.
    instance, semantic = unpacked(layout, new_masks)
    check_aligned_with_image(image.numpy(), boxes.numpy(), CLASSES, instance, semantic,
                             exact=True)


@pytest.mark.parametrize('name', GEOMETRIC + ['TranslateY_Only_BBoxes'])
def test_without_masks_ops_are_model_garden_ops(example, name):
  """Without masks image and boxes come out of Model Garden's own function; with masks
  the image is still exactly Model Garden's."""
  boxes = example[F.BOXES][:1] if name == 'TranslateY_Only_BBoxes' else example[F.BOXES]
  prob = 3.0 if name == 'TranslateY_Only_BBoxes' else 1.0
  tf.random.set_seed(5)
  # pylint: disable=protected-access
  func, _, args = mg_augment._parse_policy_info(name, prob, 7.0, ops.REPLACE_VALUE,
                                                CONSTS['cutout_const'],
                                                CONSTS['translate_const'])
  mg_image, mg_boxes = func(example[F.IMAGE], boxes, *args)
  tf.random.set_seed(5)
  image, our_boxes, no_masks = ops.apply_op(name, example[F.IMAGE], boxes, level=7.0, prob=prob,
                                          **CONSTS)
  assert no_masks is None
  np.testing.assert_array_equal(image.numpy(), mg_image.numpy())
  np.testing.assert_array_equal(our_boxes.numpy(), mg_boxes.numpy())
  layout = ops.MaskLayout(True, False)
  tf.random.set_seed(5)
  image, _, _ = ops.apply_op(name, example[F.IMAGE], boxes, layout.pack(
      example[F.INSTANCE_MASKS][:boxes.shape[0]]), layout, level=7.0, prob=prob, **CONSTS)
  np.testing.assert_array_equal(image.numpy(), mg_image.numpy())


def test_semantic_only_masks_move(example):
  """Segmentation data without instance masks: the semantic mask moves with the image."""
  layout = ops.MaskLayout(False, True)
  masks = layout.pack(semantic_mask=example[F.SEMANTIC_MASK])
  for name in ('Rotate_BBox', 'ShearY_BBox', 'TranslateY_Only_BBoxes'):
    tf.random.set_seed(1)
    image, _, new_masks = ops.apply_op(name, example[F.IMAGE], example[F.BOXES], masks, layout,
                                     level=5.0, prob=3.0, **CONSTS)
    _, semantic = layout.unpack(new_masks)
    semantic = semantic.numpy()[..., 0]
    assert not np.array_equal(semantic, example[F.SEMANTIC_MASK].numpy()[..., 0])
    assert (semantic == F.IGNORE_LABEL).sum() > 50             # new area (and the streak)
    check_aligned_with_image(image.numpy(), None, CLASSES, None, semantic, colours=COLOURS,
                             tol=0, exact=True)


# -------------------------------------------------------------------------- full policies


def augment_fn(policy, **kwargs):
  aug = A.Augment(policy, output_size=(64, 80), **kwargs)
  return aug, tf.function(lambda ex: aug(ex, training=True), reduce_retracing=True)


@pytest.mark.parametrize('policy', ['s1', 's2', 's3', 's4'])
def test_policies_keep_masks_and_boxes_on_their_objects(example, policy):
  """Whole policies, many draws: every output key stays aligned, and masks (instance and
  semantic) and boxes lie on the objects' pixels of the augmented image."""
  aug, fn = augment_fn(policy, **POLICY_CONSTS)
  tf.random.set_seed(0)
  images, compared = [], 0
  for _ in range(10):
    out = {k: v.numpy() for k, v in fn(example).items()}
    n = len(out[F.BOXES])
    for key in (F.CLASSES, F.IS_CROWD, F.AREA, F.SCORES, F.INSTANCE_MASKS):
      assert len(out[key]) == n, key
    assert out[F.IMAGE].shape == (64, 80, 3) and out[F.IMAGE].dtype == np.float32
    assert 0 <= out[F.IMAGE].min() and out[F.IMAGE].max() <= 255
    assert out[F.SEMANTIC_MASK].shape == (64, 80, 1)
    assert out[F.INSTANCE_MASKS].shape == (n, 64, 80)
    info = out[A.IMAGE_INFO]
    np.testing.assert_allclose(info[0], [H, W])
    np.testing.assert_allclose(info[1], [64, 80])
    jitter = info[2].min() / min(64 / H, 80 / W)    # sampled scale of the aspect-kept fit
    assert aug.scale_min - 0.02 <= jitter <= aug.scale_max + 0.02
    assert ((out[F.BOXES][:, 2:] - out[F.BOXES][:, :2]) > 0).all()
    for cls, score in zip(out[F.CLASSES], out[F.SCORES]):
      assert score == {3: 0.9, 5: 0.8, 7: 0.7, 2: 0.6}[int(cls)]
    # Against the image. S1 has no colour op: the objects keep their colours.
    compared += check_aligned_with_image(out[F.IMAGE], out[F.BOXES], out[F.CLASSES],
                                         out[F.INSTANCE_MASKS], out[F.SEMANTIC_MASK],
                                         colours=COLOURS if policy == 's1' else None,
                                         scale=info[2].max())
    images.append(out[F.IMAGE])
  assert not all(np.array_equal(images[0], im) for im in images[1:])
  assert compared >= 20     # of 40 objects: most are checked, not skipped


@pytest.mark.parametrize('policy', ['s2', 's4'])
def test_policies_move_semantic_only_masks_with_the_image(example, policy):
  """Segmentation data (a semantic mask, no instance masks) through whole policies: the
  semantic mask's classes lie on the objects' pixels of the augmented image. (Eager: a
  trace costs more than these draws; the pipeline tests run it in graph mode.)"""
  data = {k: v for k, v in example.items() if k != F.INSTANCE_MASKS}
  aug = A.Augment(policy, output_size=(64, 80), **POLICY_CONSTS)
  tf.random.set_seed(1)
  compared = 0
  for _ in range(8):
    out = aug(data)
    assert F.INSTANCE_MASKS not in out
    compared += check_aligned_with_image(out[F.IMAGE].numpy(), None, CLASSES, None,
                                         out[F.SEMANTIC_MASK].numpy(),
                                         scale=out[A.IMAGE_INFO].numpy()[2].max())
  assert compared >= 16


def test_flip_moves_masks_and_boxes(example):
  aug = A.Augment('s1', output_size=(H, W), scale_min=1.0, scale_max=1.0)
  flipped = 0
  tf.random.set_seed(0)
  for _ in range(8):
    out = aug(example)
    if np.array_equal(out[F.IMAGE].numpy(), example[F.IMAGE].numpy()[:, ::-1]):
      flipped += 1
      np.testing.assert_array_equal(out[F.INSTANCE_MASKS].numpy(),
                                    example[F.INSTANCE_MASKS].numpy()[:, :, ::-1])
      np.testing.assert_array_equal(out[F.SEMANTIC_MASK].numpy(),
                                    example[F.SEMANTIC_MASK].numpy()[:, ::-1])
      np.testing.assert_allclose(out[F.BOXES].numpy(), box_ops.horizontal_flip_boxes(
          example[F.BOXES]).numpy(), atol=1e-6)
    else:
      np.testing.assert_array_equal(out[F.IMAGE].numpy(), example[F.IMAGE].numpy())
  assert 0 < flipped < 8


def test_crop_drops_boxes_and_pads_with_ignore(example):
  """Large jitter: boxes that leave the crop are dropped with their keys; padding is
  IGNORE_LABEL in the semantic mask and 0 in the image and instance masks."""
  aug = A.Augment('s1', output_size=(64, 80), scale_min=0.5, scale_max=2.0, flip=False)
  tf.random.set_seed(1)
  saw_drop = saw_pad = False
  for _ in range(20):
    out = {k: v.numpy() for k, v in aug(example).items()}
    saw_drop |= len(out[F.BOXES]) < 4
    scaled = np.round(out[A.IMAGE_INFO][2] * [H, W]).astype(int)
    offset = out[A.IMAGE_INFO][3].astype(int)
    valid_h, valid_w = np.minimum(scaled - offset, [64, 80])
    if valid_h < 64 or valid_w < 80:
      saw_pad = True
      assert (out[F.SEMANTIC_MASK][valid_h:] == F.IGNORE_LABEL).all()
      assert (out[F.SEMANTIC_MASK][:, valid_w:] == F.IGNORE_LABEL).all()
      assert (out[F.IMAGE][valid_h:] == 0).all() and (out[F.IMAGE][:, valid_w:] == 0).all()
      assert (out[F.INSTANCE_MASKS][:, valid_h:] == 0).all()
  assert saw_drop and saw_pad


def test_no_instances_and_no_masks(example):
  empty = dict(example)
  for key in (F.BOXES, F.INSTANCE_MASKS, F.CLASSES, F.IS_CROWD, F.AREA, F.SCORES):
    empty[key] = example[key][:0]
  plain = {k: v for k, v in example.items() if k not in (F.INSTANCE_MASKS, F.SEMANTIC_MASK)}
  for policy in ('s2', 's4'):   # eager (graph mode with no instances: test_pipeline.py)
    fn = A.Augment(policy, output_size=(64, 80), **CONSTS)
    out = fn(empty)
    assert out[F.BOXES].shape == (0, 4) and out[F.INSTANCE_MASKS].shape == (0, 64, 80)
    out = fn({k: v for k, v in empty.items() if k != F.SEMANTIC_MASK})   # [H, W, 0] masks
    assert out[F.BOXES].shape == (0, 4) and out[F.INSTANCE_MASKS].shape == (0, 64, 80)
    out = fn(plain)
    assert F.INSTANCE_MASKS not in out and F.SEMANTIC_MASK not in out
    assert out[F.BOXES].shape[1:] == (4,) and len(out[F.CLASSES]) == len(out[F.BOXES])


def test_without_masks_boxes_enclose_their_objects(example):
  """No masks: Model Garden's box functions move the boxes; S1 (no colour op, no new
  area) keeps them around the objects' pixels of the image, and tight when wholly visible."""
  plain = {k: v for k, v in example.items() if k not in (F.INSTANCE_MASKS, F.SEMANTIC_MASK)}
  aug = A.Augment('s1', output_size=(64, 80))
  tf.random.set_seed(2)
  for _ in range(6):
    out = {k: v.numpy() for k, v in aug(plain).items()}
    for box, cls in zip(out[F.BOXES] * [64, 80, 64, 80], out[F.CLASSES]):
      pixels = colour_pixels(out[F.IMAGE], COLOURS[list(CLASSES).index(cls)],
                             np.ones((64, 80), bool))
      if pixels.sum() < MIN_AREA:
        continue
      e = extent(pixels)
      assert (e[:2] >= box[:2] - 1).all() and (e[2:] <= box[2:] + 1).all(), (cls, box, e)
      if not (pixels[[0, -1]].any() or pixels[:, [0, -1]].any()):
        assert (box[:2] >= e[:2] - 2).all() and (box[2:] <= e[2:] + 2).all(), (cls, box, e)


def test_eval_is_model_garden_eval_preprocessing(example):
  aug = A.Augment('s4', output_size=(128, 128))
  out = aug(example, training=False, normalize=True)
  image, info = preprocess_ops.resize_and_crop_image(
      preprocess_ops.normalize_image(example[F.IMAGE]), [128, 128], padded_size=[128, 128])
  np.testing.assert_array_equal(out[F.IMAGE].numpy(), image.numpy())
  np.testing.assert_array_equal(out[A.IMAGE_INFO].numpy(), info.numpy())
  boxes = preprocess_ops.resize_and_crop_boxes(
      box_ops.denormalize_boxes(example[F.BOXES], [H, W]), info[2], [128.0, 128.0], info[3])
  np.testing.assert_allclose(out[F.BOXES].numpy() * 128, boxes.numpy(), atol=1e-4)
  # Deterministic, and the masks still sit inside their boxes (within a pixel: nearest).
  again = aug(example, training=False, normalize=True)
  np.testing.assert_array_equal(again[F.IMAGE].numpy(), out[F.IMAGE].numpy())
  for box, mask in zip(out[F.BOXES].numpy() * 128, out[F.INSTANCE_MASKS].numpy()):
    e = extent(mask > 0)   # Model Garden's boxes around the nearest-resized masks, within 1 px
    assert (e[:2] >= box[:2] - 1).all() and (e[2:] <= box[2:] + 1).all()
    assert (box[:2] >= e[:2] - 1).all() and (box[2:] <= e[2:] + 1).all()
  assert (out[F.SEMANTIC_MASK].numpy()[96:] == F.IGNORE_LABEL).all()   # 72 * 4/3 = 96


def test_bad_configuration_is_one_clear_line():
  for kwargs, match in [(dict(policy='s5'), 'Augment.policy'),
                        (dict(scale_min=2.0, scale_max=1.0), 'scale_min'),
                        (dict(output_size=(0, 64)), 'Augment.output_size'),
                        (dict(policy='s2', autoaugment_policy='nope'), 'autoaugment_policy'),
                        (dict(randaug_magnitude=11), 'randaug_magnitude')]:
    with pytest.raises(UserError) as info:
      A.Augment(**kwargs)
    assert match in str(info.value).splitlines()[0]   # gin appends context lines after it


def test_policy_defaults_are_the_papers():
  assert (A.Augment('s1').scale_min, A.Augment('s1').scale_max) == (0.8, 1.2)
  assert A.Augment('s1').augmenter is None
  s2 = A.Augment('s2')
  assert (s2.scale_min, s2.scale_max) == (0.8, 1.2)
  assert s2.augmenter.policies == mg_augment.AutoAugment.detection_policy_v0()
  s3 = A.Augment('s3')
  assert (s3.scale_min, s3.scale_max) == (0.5, 2.0) and s3.augmenter is not None
  s4 = A.Augment('s4')
  assert (s4.scale_min, s4.scale_max) == (0.5, 2.0)
  assert s4.augmenter.available_ops == RANDAUG_OPS
  assert s4.augmenter._mg.num_layers == 2 and s4.augmenter._mg.magnitude == 10  # pylint: disable=protected-access


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(
    REPO, 'gin_configs', 'base', 'augment_s*.gin'))))
def test_policy_gin_files(path):
  policy = os.path.basename(path)[len('augment_'):-len('.gin')]
  with open(path) as f:
    text = f.read()
  assert text.startswith('#') and 'Augment-S' in text.split('\n\n')[0]
  gin.clear_config()
  try:
    gin.parse_config_file(path)
    aug = A.Augment()
    assert aug.policy == policy
    assert (aug.scale_min, aug.scale_max) == A.POLICIES[policy][2]
  finally:
    gin.clear_config()


def test_four_policy_gin_files_exist():
  assert len(glob.glob(os.path.join(REPO, 'gin_configs', 'base', 'augment_s*.gin'))) == 4


@pytest.mark.parametrize('policy', ['s2', 's4'])
def test_policies_without_masks_are_model_garden_policies(example, policy):
  """Without masks the S2/S3 and S4 policy ops are Model Garden's distort_with_boxes: the
  same random draws in the same order give the same image and boxes."""
  aug = A.Augment(policy, **CONSTS)
  mg = aug.augmenter._mg  # pylint: disable=protected-access
  for seed in range(6):
    tf.random.set_seed(seed)
    mg_image, mg_boxes = mg.distort_with_boxes(example[F.IMAGE], example[F.BOXES])
    tf.random.set_seed(seed)
    image, boxes, masks = aug.augmenter.distort(example[F.IMAGE], example[F.BOXES])
    assert masks is None
    np.testing.assert_array_equal(image.numpy(), mg_image.numpy())
    np.testing.assert_array_equal(boxes.numpy(), mg_boxes.numpy())


def test_show_policy_grid_writes_png(example, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from rethink_st import augment_preview  # pylint: disable=g-import-not-at-top
  numpy_example = {k: v.numpy() for k, v in example.items()}
  path = augment_preview.show_policy_grid([numpy_example], 's4', str(tmp_path / 'g.png'), 2,
                                          scale=1, **CONSTS)
  with Image.open(path) as im:
    width, height = im.size
  # one example: an instance row and a semantic row, each original + 2 draws of 72 x 96
  assert width >= 3 * W and height >= 2 * H
  assert width < 3 * (W + 20) and height < 2 * (H + 30)
