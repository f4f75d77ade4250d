"""Model Garden's augmentation ops with masks that move with the image.

Every op comes from `official.vision.ops.augment` (AutoAugment / RandAugment), with its own
argument sampling; this module adds what Model Garden lacks: masks that move with the image.
Model Garden's segmentation parser ignores augmentation policies; here every geometric op
moves the masks exactly as it moves the image:

  * Whole-image geometric ops (Translate*, Shear*, Rotate*) run Model Garden's op on the
    image (and its per-box function on the boxes, vectorized) and the same projective
    transform (`augment.translate` / `augment.transform`, built from the same sampled
    arguments) on the masks with nearest sampling and constant fill, so a mask pixel
    comes from the very source pixel its image pixel comes from.
    Model Garden 2.20 fills the new image area by reflection; the masks fill it with
    "nothing": 0 for instance masks, IGNORE_LABEL for the semantic mask.
  * The bbox-only op of `detection_v0` (TranslateY_Only_BBoxes: the content of some boxes
    slides up or down) runs Model Garden's `_apply_bbox_augmentation` on the image and on
    the masks with the same random choices, so the mask pixels inside those boxes move too.
  * Colour ops (Equalize, Color, Cutout, Solarize, ...) leave masks bit-identical.
  * With instance masks, boxes after every geometric op are the tight boxes of the moved
    masks (exact); without them Model Garden's box functions move them.

Instance masks and the semantic mask travel packed in one uint8 tensor [H, W, N + 1]
(`MaskLayout`: one channel per instance, then `(semantic + 1) mod 256`, so 0 is both
"outside" and ignore).

    apply_op(name, image, boxes, masks, layout, level=...)   one op, as a policy applies it
    make_op(name, layout)      the op as Model Garden's policy code calls it
                               (`rethink_st/augment_policies.py`)
"""
import math
from typing import Optional, Tuple

import tensorflow as tf

from official.vision.ops import augment as mg_augment

from rethink_st.errors import UserError

REPLACE_VALUE = [128] * 3        # Model Garden's fill colour for AutoAugment/RandAugment


# ------------------------------------------------------------------------------ the op table
#
# Every op of Model Garden's policies falls in one of three kinds. Whole-image geometric ops
# name the Model Garden box-aware function that moves image and boxes (the plain 'Rotate'
# etc. move the image identically, so they use the box-aware one too) and how to build the
# mask transform from the same arguments.

PIXEL_OPS = frozenset({
    'AutoContrast', 'Equalize', 'Invert', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
    'Contrast', 'Brightness', 'Sharpness', 'Cutout', 'Grayscale', 'Gaussian_Noise'})

# name -> geometry. The image moves by Model Garden's image op of that geometry (what its
# box-aware op calls), each box by its per-box function (what the box-aware op maps over
# the boxes); the masks by the same transform with nearest sampling (`_move_masks`).
GEOMETRIC_OPS = {
    'TranslateX_BBox': 'translate_x', 'TranslateY_BBox': 'translate_y',
    'ShearX_BBox': 'shear_x', 'ShearY_BBox': 'shear_y', 'Rotate_BBox': 'rotate',
    'TranslateX': 'translate_x', 'TranslateY': 'translate_y',
    'ShearX': 'shear_x', 'ShearY': 'shear_y', 'Rotate': 'rotate',
}

# geometry -> (Model Garden image op, Model Garden per-box op (bbox, height, width, arg)).
# pylint: disable=protected-access
_GEOMETRY = {
    'translate_x': (mg_augment.translate_x, lambda b, h, w, a: mg_augment._shift_bbox(
        b, h, w, a, shift_horizontal=True)),
    'translate_y': (mg_augment.translate_y, lambda b, h, w, a: mg_augment._shift_bbox(
        b, h, w, a, shift_horizontal=False)),
    'shear_x': (mg_augment.shear_x, lambda b, h, w, a: mg_augment._shear_bbox(
        b, h, w, a, shear_horizontal=True)),
    'shear_y': (mg_augment.shear_y, lambda b, h, w, a: mg_augment._shear_bbox(
        b, h, w, a, shear_horizontal=False)),
    'rotate': (mg_augment.wrapped_rotate, mg_augment._rotate_bbox),
}
# pylint: enable=protected-access

BBOX_ONLY_OPS = frozenset({'TranslateY_Only_BBoxes'})

SUPPORTED_OPS = PIXEL_OPS | frozenset(GEOMETRIC_OPS) | BBOX_ONLY_OPS


def op_kind(name: str) -> str:
  """'pixel', 'geometric' or 'bbox_only' for a Model Garden augmentation op name."""
  if name in PIXEL_OPS:
    return 'pixel'
  if name in GEOMETRIC_OPS:
    return 'geometric'
  if name in BBOX_ONLY_OPS:
    return 'bbox_only'
  raise UserError(f'augment: op {name!r} is not supported with masks; supported ops: '
                  f'{", ".join(sorted(SUPPORTED_OPS))}')


def _transform_masks(masks, transforms):
  """Model Garden's projective transform on packed masks: nearest sampling, fill 0."""
  return mg_augment.transform(masks, transforms, interpolation='nearest',
                              fill_mode='constant', fill_value=0.0)


def _move_masks(geometry: str, masks: tf.Tensor, arg) -> tf.Tensor:
  """Moves packed masks [H, W, K] as Model Garden's op `geometry` moves the image.

  `arg` is the op's sampled argument (pixels, shear level or degrees), the very tensor the
  image op received; the transform is the one Model Garden's image op builds from it.
  """
  if geometry == 'translate_x':      # augment.translate_x: translate(image, [-pixels, 0])
    return mg_augment.translate(masks, [-arg, 0], fill_value=0.0, fill_mode='constant',
                                interpolation='nearest')
  if geometry == 'translate_y':      # augment.translate_y: translate(image, [0, -pixels])
    return mg_augment.translate(masks, [0, -arg], fill_value=0.0, fill_mode='constant',
                                interpolation='nearest')
  if geometry == 'shear_x':          # augment.shear_x
    return _transform_masks(masks, [1., arg, 0., 0., 1., 0., 0., 0.])
  if geometry == 'shear_y':          # augment.shear_y
    return _transform_masks(masks, [1., 0., 0., arg, 1., 0., 0., 0.])
  if geometry == 'rotate':           # augment.rotate: same radians, same angle transform
    radians = tf.cast(arg * (math.pi / 180.0), tf.float32)
    height = tf.cast(tf.shape(masks)[0], tf.float32)
    width = tf.cast(tf.shape(masks)[1], tf.float32)
    # pylint: disable=protected-access
    transforms = mg_augment._convert_angles_to_transform(radians, width, height)
    return _transform_masks(masks, transforms)
  raise ValueError(geometry)


def _move_boxes(geometry: str, boxes: tf.Tensor, image: tf.Tensor, arg) -> tf.Tensor:
  """Model Garden's per-box function of `geometry` on every box, vectorized.

  Model Garden's box-aware ops run the same function through `tf.map_fn` (a loop); here
  `tf.vectorized_map` runs it on all boxes at once, with the same results.
  """
  box_fn = _GEOMETRY[geometry][1]
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  return tf.cond(tf.shape(boxes)[0] > 0,
                 lambda: tf.vectorized_map(lambda b: box_fn(b, height, width, arg), boxes),
                 lambda: tf.identity(boxes))


def boxes_from_masks(masks: tf.Tensor) -> tf.Tensor:
  """Tight normalized boxes [N, 4] of masks [H, W, N] (nonzero = inside); empty -> zeros.

  A box covers whole pixels: rows r0..r1 give ymin = r0 / H, ymax = (r1 + 1) / H.
  """
  inside = masks > 0
  shape = tf.shape(masks)

  def extent(any_along, size):   # any_along [size, N] -> lo, hi (pixel edges), 0 if empty
    idx = tf.range(size)[:, None]
    lo = tf.reduce_min(tf.where(any_along, idx, size), axis=0)
    hi = tf.reduce_max(tf.where(any_along, idx + 1, 0), axis=0)
    nonempty = lo < hi
    return (tf.cast(tf.where(nonempty, lo, 0), tf.float32) / tf.cast(size, tf.float32),
            tf.cast(tf.where(nonempty, hi, 0), tf.float32) / tf.cast(size, tf.float32))

  ymin, ymax = extent(tf.reduce_any(inside, axis=1), shape[0])
  xmin, xmax = extent(tf.reduce_any(inside, axis=0), shape[1])
  return tf.stack([ymin, xmin, ymax, xmax], axis=-1)


# ---------------------------------------------------------------------- packed mask layout


class MaskLayout:
  """Which masks a packed [H, W, N + 1] uint8 tensor holds: N instance channels, then the
  semantic channel (or, without a semantic mask, an empty one, so there always is one)."""

  def __init__(self, instance: bool, semantic: bool):
    self.instance = bool(instance)
    self.semantic = bool(semantic)

  @property
  def any(self) -> bool:
    return self.instance or self.semantic

  def pack(self, instance_masks=None, semantic_mask=None) -> Optional[tf.Tensor]:
    """[N, H, W] 0/1 masks and/or [H, W, 1] semantic mask -> [H, W, N + 1] uint8."""
    parts = []
    if self.instance:
      m = tf.convert_to_tensor(instance_masks)
      if m.dtype != tf.uint8:
        m = tf.cast(m >= tf.cast(0.5, m.dtype), tf.uint8)
      parts.append(tf.transpose(m, [1, 2, 0]))
    if self.semantic:
      s = tf.convert_to_tensor(semantic_mask)
      if s.dtype != tf.uint8:
        s = tf.cast(s, tf.uint8)
      if s.shape.rank != 3:
        s = tf.reshape(s, tf.concat([tf.shape(s)[:2], [1]], 0))
      parts.append(s + 1)   # uint8 wraps: IGNORE_LABEL 255 -> 0, the fill value
    elif parts:             # a last channel even with no instances (ops need >= 1 channel)
      parts.append(tf.zeros(tf.concat([tf.shape(parts[0])[:2], [1]], 0), tf.uint8))
    if not parts:
      return None
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)

  def instance_part(self, packed: tf.Tensor) -> tf.Tensor:
    return packed[..., :-1]

  def unpack(self, packed: tf.Tensor) -> Tuple[Optional[tf.Tensor], Optional[tf.Tensor]]:
    """-> (instance masks float32 [N, H, W] or None, semantic mask uint8 [H, W, 1] or None)."""
    instance = semantic = None
    if self.instance:
      instance = tf.cast(tf.transpose(self.instance_part(packed), [2, 0, 1]), tf.float32)
    if self.semantic:
      semantic = packed[..., -1:] - 1   # uint8 wraps: fill 0 -> 255 = IGNORE_LABEL
    return instance, semantic


# ----------------------------------------------------------------------------- single ops


def _translate_y_only_bboxes(image, boxes, masks, prob, pixels, replace):
  """Model Garden's TranslateY_Only_BBoxes, moving the masks inside the chosen boxes too.

  Same semantics as `augment.translate_y_only_bboxes` (boxes in random order, each with
  probability prob / 3 has its content shifted by `augment.translate_y`; boxes unchanged),
  with one set of random choices applied to the image and to the masks through Model
  Garden's `_apply_bbox_augmentation`.
  """
  # pylint: disable=protected-access
  prob = mg_augment._scale_bbox_only_op_probability(prob)
  num_boxes = tf.shape(boxes)[0]
  order = tf.random.shuffle(tf.range(num_boxes))

  def move_masks(content, pixels_):
    return mg_augment.translate(content, [0, -pixels_], fill_value=0.0, fill_mode='constant',
                                interpolation='nearest')

  def body(i, image_, masks_):
    box = tf.gather(boxes, order[i])
    apply = tf.random.uniform([], dtype=tf.float32) < prob
    return (i + 1,) + tuple(tf.cond(
        apply,
        lambda: (mg_augment._apply_bbox_augmentation(image_, box, mg_augment.translate_y,
                                                     pixels, replace),
                 mg_augment._apply_bbox_augmentation(masks_, box, move_masks, pixels)),
        lambda: (image_, masks_)))

  _, image, masks = tf.while_loop(lambda i, *_: i < num_boxes, body,
                                  [tf.constant(0), image, masks])
  return image, masks


def make_op(name: str, layout: MaskLayout):
  """The op `name` as Model Garden's policy code calls it: fn(image, bboxes, *args), where
  `bboxes` is our state {'boxes': [N, 4], 'masks': [H, W, K] uint8 (if any)}."""
  kind = op_kind(name)

  if kind == 'pixel':
    image_fn = mg_augment.NAME_TO_FUNC[name]

    def pixel_op(image, bboxes, *args):
      return image_fn(image, *args), bboxes
    return pixel_op

  if kind == 'bbox_only':

    def bbox_only_op(image, bboxes, prob, pixels, replace):
      state = dict(bboxes)
      if 'masks' not in state:
        image, state['boxes'] = mg_augment.translate_y_only_bboxes(
            image, state['boxes'], prob, pixels, replace)
        return image, state
      image, state['masks'] = _translate_y_only_bboxes(
          image, state['boxes'], state['masks'], prob, pixels, replace)
      if layout.instance:
        state['boxes'] = boxes_from_masks(layout.instance_part(state['masks']))
      return image, state
    return bbox_only_op

  geometry = GEOMETRIC_OPS[name]
  image_fn = _GEOMETRY[geometry][0]

  def geometric_op(image, bboxes, arg, replace):
    state = dict(bboxes)
    image = image_fn(image, arg, replace)
    if 'masks' in state:
      state['masks'] = _move_masks(geometry, state['masks'], arg)
    if layout.instance:     # exact, and Model Garden's (looser) box transform is not needed
      state['boxes'] = boxes_from_masks(layout.instance_part(state['masks']))
    else:
      state['boxes'] = _move_boxes(geometry, state['boxes'], image, arg)
    return image, state
  return geometric_op


def initial_state(boxes, masks):
  """The op state the policies carry: {'boxes': [N, 4], 'masks': packed (if any)}."""
  state = {'boxes': tf.convert_to_tensor(boxes, tf.float32)}
  if masks is not None:
    state['masks'] = masks
  return state


def as_uint8(image):
  """The image as uint8 (values clipped to 0..255), as Model Garden's ops want it."""
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.uint8:
    return image
  return tf.cast(tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0), tf.uint8)


def apply_op(name: str, image, boxes, masks=None, layout: Optional[MaskLayout] = None, *,
             level: float = 10.0, prob: float = 1.0, cutout_const: float = 100.0,
             translate_const: float = 250.0):
  """Applies one Model Garden op (e.g. 'Rotate_BBox') at `level` to image, boxes, masks.

  Arguments are sampled exactly as Model Garden's policies sample them (random sign for
  geometric ops). The op is always applied; `prob` matters only to TranslateY_Only_BBoxes,
  which moves each box with probability prob / 3 (so prob=3.0 moves every box). `masks`
  is packed per `layout`.
  Returns (uint8 image, boxes, masks or None).
  """
  layout = layout or MaskLayout(False, False)
  # pylint: disable=protected-access
  _, prob, args = mg_augment._parse_policy_info(name, prob, level, REPLACE_VALUE,
                                                cutout_const, translate_const)
  image, state = make_op(name, layout)(as_uint8(image), initial_state(boxes, masks), *args)
  return image, state['boxes'], state.get('masks')
