"""Augment-S1..S4 (the paper's four augmentation policies) for boxes and for masks.

    S1  FlipCrop: horizontal flip + scale jitter (0.8, 1.2) + crop to the output size.
    S2  AutoAugment (Model Garden's `detection_v0`) + S1's flip and jitter.
    S3  AutoAugment + large scale jitter (0.5, 2.0).
    S4  RandAugment (2 layers, magnitude 10, box-aware ops) + large scale jitter (0.5, 2.0).

Everything is built on `official.vision.ops`: the policy tables, their argument sampling and
every image operation come from `augment` (AutoAugment / RandAugment), the flip, resize,
crop and pad from `preprocess_ops`. This module adds what Model Garden lacks: masks that move
with the image. Model Garden's segmentation parser ignores augmentation policies; here every
geometric op moves the masks exactly as it moves the image:

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
  * With instance masks, boxes after every geometric op and at the output of training
    preprocessing are the tight boxes of the moved masks (exact); without them (and in
    eval preprocessing, which only resizes) Model Garden's box functions move them.

Instance masks and the semantic mask travel packed in one uint8 tensor [H, W, N + 1] (one
channel per instance, then `(semantic + 1) mod 256`, so 0 is both "outside" and ignore).

`Augment` is the configurable used by the input pipelines; `MaskAwareAutoAugment`,
`MaskAwareRandAugment` and `apply_op` are the pieces, usable on their own.
"""
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import gin
import tensorflow as tf

from official.vision.ops import augment as mg_augment
from official.vision.ops import box_ops
from official.vision.ops import preprocess_ops

from rethink_st import features as F
from rethink_st.errors import UserError

IMAGE_INFO = 'image_info'        # key Augment adds: Model Garden's [4, 2] image_info
REPLACE_VALUE = [128] * 3        # Model Garden's fill colour for AutoAugment/RandAugment

# Per-instance keys kept aligned when boxes are dropped.
INSTANCE_KEYS = (F.CLASSES, F.IS_CROWD, F.AREA, F.BOXES, F.INSTANCE_MASKS, F.SCORES)


# name: (paper name, policy ops, default scale jitter)
POLICIES = {
    's1': ('Augment-S1: FlipCrop', None, (0.8, 1.2)),
    's2': ('Augment-S2: AutoAugment', 'autoaugment', (0.8, 1.2)),
    's3': ('Augment-S3: AutoAugment, higher scale jitter', 'autoaugment', (0.5, 2.0)),
    's4': ('Augment-S4: RandAugment, higher scale jitter', 'randaugment', (0.5, 2.0)),
}

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


def _make_op(name: str, layout: MaskLayout):
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


def _state(boxes, masks):
  state = {'boxes': tf.convert_to_tensor(boxes, tf.float32)}
  if masks is not None:
    state['masks'] = masks
  return state


def _as_uint8(image):
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
  image, state = _make_op(name, layout)(_as_uint8(image), _state(boxes, masks), *args)
  return image, state['boxes'], state.get('masks')


# -------------------------------------------------------------------------------- policies


class MaskAwareAutoAugment:
  """Model Garden's AutoAugment policy (`augment.AutoAugment`) with masks.

  The policy table, argument sampling, sub-policy choice and per-op probabilities are Model
  Garden's (`_parse_policy_info`, `select_and_apply_random_policy`, `_apply_func_with_prob`);
  only the ops are ours, each moving the masks with the image.
  """

  def __init__(self, augmentation_name: str = 'detection_v0', cutout_const: float = 100.0,
               translate_const: float = 250.0):
    try:
      self._mg = mg_augment.AutoAugment(augmentation_name=augmentation_name,
                                        cutout_const=cutout_const,
                                        translate_const=translate_const)
    except ValueError:
      raise UserError(f'Augment.autoaugment_policy: unknown AutoAugment policy '
                      f'{augmentation_name!r}; Model Garden has '
                      f'{", ".join(sorted(mg_augment.AutoAugment().available_policies))}'
                      ) from None
    for sub_policy in self._mg.policies:
      for op_name, _, _ in sub_policy:
        op_kind(op_name)
    self.augmentation_name = augmentation_name

  @property
  def policies(self):
    return self._mg.policies

  @property
  def needs_boxes(self) -> bool:
    """Whether some op reads the boxes to change the image (bbox-only ops)."""
    return any(op in BBOX_ONLY_OPS for sub in self._mg.policies for op, _, _ in sub)

  def distort(self, image, boxes, masks=None, layout: Optional[MaskLayout] = None):
    """(uint8 image, normalized boxes [N, 4], packed masks or None) -> the same, augmented."""
    layout = layout or MaskLayout(False, False)
    tf_policies = []
    for sub_policy in self._mg.policies:
      parsed = []
      for name, prob, level in sub_policy:
        # pylint: disable=protected-access
        _, prob, args = mg_augment._parse_policy_info(
            name, prob, level, REPLACE_VALUE, self._mg.cutout_const, self._mg.translate_const)
        parsed.append((_make_op(name, layout), prob, args))

      def final_policy(image_, bboxes, parsed_=tuple(parsed)):
        for fn, prob_, args_ in parsed_:
          # pylint: disable=protected-access
          image_, bboxes = mg_augment._apply_func_with_prob(fn, image_, bboxes, args_, prob_)
        return image_, bboxes
      tf_policies.append(final_policy)
    image, state = mg_augment.select_and_apply_random_policy(
        tf_policies, _as_uint8(image), _state(boxes, masks))
    return image, state['boxes'], state.get('masks')


class MaskAwareRandAugment:
  """Model Garden's `RandAugment.build_for_detection` with masks.

  Same op list and argument sampling as Model Garden (`_parse_policy_info` with a random
  probability in [0.2, 0.8] per op); each of `num_layers` layers picks one of the ops or
  identity uniformly, as `RandAugment._distort_common` does.
  """

  def __init__(self, num_layers: int = 2, magnitude: float = 10.0, cutout_const: float = 40.0,
               translate_const: float = 100.0, magnitude_std: float = 0.0,
               prob_to_apply: Optional[float] = None, exclude_ops=None):
    self._mg = mg_augment.RandAugment.build_for_detection(
        num_layers=num_layers, magnitude=magnitude, cutout_const=cutout_const,
        translate_const=translate_const, magnitude_std=magnitude_std,
        prob_to_apply=prob_to_apply, exclude_ops=exclude_ops)
    for op_name in self._mg.available_ops:
      op_kind(op_name)

  @property
  def available_ops(self):
    return list(self._mg.available_ops)

  @property
  def needs_boxes(self) -> bool:
    """Whether some op reads the boxes to change the image (bbox-only ops)."""
    return any(op in BBOX_ONLY_OPS for op in self._mg.available_ops)

  def distort(self, image, boxes, masks=None, layout: Optional[MaskLayout] = None):
    layout = layout or MaskLayout(False, False)
    mg = self._mg
    image = _as_uint8(image)
    state = _state(boxes, masks)
    for _ in range(mg.num_layers):
      op_to_select = tf.random.uniform([], maxval=len(mg.available_ops) + 1, dtype=tf.int32)
      branch_fns = []
      for i, name in enumerate(mg.available_ops):
        prob = tf.random.uniform([], minval=0.2, maxval=0.8, dtype=tf.float32)
        # pylint: disable=protected-access
        _, _, args = mg_augment._parse_policy_info(
            name, prob, mg.magnitude, REPLACE_VALUE, mg.cutout_const, mg.translate_const,
            mg.magnitude_std)
        branch_fns.append((i, lambda fn=_make_op(name, layout), a=args, im=image, st=state:
                           fn(im, st, *a)))
      new_image, new_state = tf.switch_case(
          op_to_select, branch_fns,
          default=lambda im=image, st=state: (tf.identity(im), tf.nest.map_structure(
              tf.identity, st)))
      if mg.prob_to_apply is not None:
        keep = tf.random.uniform([], dtype=tf.float32) < mg.prob_to_apply
        new_image, new_state = tf.cond(
            keep, lambda a=new_image, b=new_state: (a, b),
            lambda a=image, b=state: (a, b))
      image, state = new_image, new_state
    return image, state['boxes'], state.get('masks')


# --------------------------------------------------------------------------------- Augment


def _pair(value, what):
  if isinstance(value, int):
    value = (value, value)
  try:
    a, b = (int(v) for v in value)
  except (TypeError, ValueError):
    raise UserError(f'{what} must be an int or a pair of ints (height, width), '
                    f'got {value!r}') from None
  if a <= 0 or b <= 0:
    raise UserError(f'{what} must be positive, got {value!r}')
  return a, b


@gin.configurable
class Augment:
  """One of the paper's policies S1..S4, for boxes and masks, ending in resize + crop.

  `__call__(example, training=True)` takes a decoded example (`rethink_st.data.features`)
  and returns it at `output_size`:

    training=True:  policy ops (S2-S4) at the input resolution -> random horizontal flip ->
                    scale jitter in [scale_min, scale_max] x output_size, random crop to
                    output_size, zero padding (Model Garden's resize_and_crop_image).
    training=False: no augmentation: aspect-preserving resize to fit output_size and
                    padding at the bottom/right (Model Garden's eval preprocessing).

  The result has the image as float32 0..255 (or, with normalize=True, normalized with
  ImageNet mean/std before the resize, exactly as Model Garden's parsers do, padding 0),
  boxes normalized to the output image, per-instance keys kept aligned and instances whose
  box left the crop dropped, instance masks [N, S, S] float32 0/1, the semantic mask
  [S, S, 1] uint8 (padding and uncovered areas IGNORE_LABEL), height/width = output size,
  areas in output pixels (mask pixel counts when masks are present) and IMAGE_INFO, Model
  Garden's [[orig_h, orig_w], [scaled_h, scaled_w], [y_scale, x_scale], [y_off, x_off]].

  Args:
    policy: 's1', 's2', 's3' or 's4'.
    output_size: (height, width) of the output image, or one int.
    scale_min, scale_max: scale jitter range; None takes the policy's (paper's) range.
    flip: random horizontal flip when training.
    autoaugment_policy: Model Garden AutoAugment policy name for S2/S3.
    randaug_layers, randaug_magnitude: RandAugment's N and M for S4.
    cutout_const, translate_const: pixel constants of the policy ops; None takes Model
      Garden's defaults (AutoAugment 100 / 250, RandAugment for detection 40 / 100).
  """

  def __init__(self, policy: str = 's1', output_size: Sequence[int] = (640, 640),
               scale_min: Optional[float] = None, scale_max: Optional[float] = None,
               flip: bool = True, autoaugment_policy: str = 'detection_v0',
               randaug_layers: int = 2, randaug_magnitude: float = 10,
               cutout_const: Optional[float] = None, translate_const: Optional[float] = None):
    policy = str(policy).lower()
    if policy not in POLICIES:
      raise UserError(f'Augment.policy: unknown policy {policy!r}; choose one of '
                      f'{", ".join(POLICIES)}')
    self.policy = policy
    self.description, kind, (default_min, default_max) = POLICIES[policy]
    self.output_size = _pair(output_size, 'Augment.output_size')
    self.scale_min = float(default_min if scale_min is None else scale_min)
    self.scale_max = float(default_max if scale_max is None else scale_max)
    if not 0 < self.scale_min <= self.scale_max:
      raise UserError(f'Augment.scale_min / scale_max: need 0 < scale_min <= scale_max, got '
                      f'{self.scale_min}, {self.scale_max}')
    self.flip = bool(flip)
    self.autoaugment_policy = autoaugment_policy
    self.randaug_layers = int(randaug_layers)
    self.randaug_magnitude = float(randaug_magnitude)
    if self.randaug_layers < 0:
      raise UserError(f'Augment.randaug_layers must be >= 0, got {randaug_layers}')
    if not 0 <= self.randaug_magnitude <= 10:
      raise UserError(f'Augment.randaug_magnitude must be in [0, 10], got {randaug_magnitude}')
    consts = {}
    if cutout_const is not None:
      consts['cutout_const'] = float(cutout_const)
    if translate_const is not None:
      consts['translate_const'] = float(translate_const)
    if kind == 'autoaugment':
      self.augmenter = MaskAwareAutoAugment(autoaugment_policy, **consts)
    elif kind == 'randaugment':
      self.augmenter = MaskAwareRandAugment(self.randaug_layers, self.randaug_magnitude,
                                            **consts)
    else:
      self.augmenter = None

  def __repr__(self):
    return (f'Augment({self.policy!r}, output_size={self.output_size}, scale=({self.scale_min}, '
            f'{self.scale_max}), flip={self.flip})')

  @property
  def needs_boxes(self) -> bool:
    """Whether the image or masks depend on the boxes (S2/S3's bbox-only op): callers that
    want only the image or the semantic mask may drop the boxes otherwise."""
    return self.augmenter is not None and self.augmenter.needs_boxes

  @property
  def jitter(self) -> bool:
    return not (math.isclose(self.scale_min, 1.0) and math.isclose(self.scale_max, 1.0))

  def __call__(self, example: Dict[str, Any], training: bool = True,
               normalize: bool = False) -> Dict[str, tf.Tensor]:
    example = dict(example)
    image = tf.convert_to_tensor(example[F.IMAGE])
    if image.dtype != tf.uint8:
      image = _as_uint8(image)
    boxes = example.get(F.BOXES)
    boxes = (tf.zeros([0, 4], tf.float32) if boxes is None
             else tf.reshape(tf.cast(tf.convert_to_tensor(boxes), tf.float32), [-1, 4]))
    layout = MaskLayout(F.INSTANCE_MASKS in example, F.SEMANTIC_MASK in example)
    masks = layout.pack(example.get(F.INSTANCE_MASKS), example.get(F.SEMANTIC_MASK))

    if training:
      if self.augmenter is not None:
        image, boxes, masks = self.augmenter.distort(image, boxes, masks, layout)
      if self.flip:
        if masks is None or masks.shape[-1] == 1:   # [H, W, 1] is a mask MG flips right
          image, boxes, masks = preprocess_ops.random_horizontal_flip(image, boxes, masks,
                                                                      seed=None)
        else:   # one flip decision for both: flip them stacked as channels of one image
          stacked, boxes, _ = preprocess_ops.random_horizontal_flip(
              tf.concat([image, masks], axis=-1), boxes, seed=None)
          image, masks = stacked[..., :3], stacked[..., 3:]
    image_shape = tf.shape(image)[:2]

    if normalize:
      image = preprocess_ops.normalize_image(image)
    jitter = training and self.jitter
    image, image_info = preprocess_ops.resize_and_crop_image(
        image, list(self.output_size), padded_size=list(self.output_size),
        aug_scale_min=self.scale_min if jitter else 1.0,
        aug_scale_max=self.scale_max if jitter else 1.0, seed=None)
    image = tf.ensure_shape(image, list(self.output_size) + [3])
    image_scale, offset = image_info[2, :], image_info[3, :]
    out_size = tf.constant(self.output_size, tf.float32)

    if masks is not None:
      masks = preprocess_ops.resize_and_crop_masks(masks[None], image_scale,
                                                   list(self.output_size), offset)[0]
    if layout.instance and training:   # exact: the tight boxes of the moved masks
      boxes = boxes_from_masks(layout.instance_part(masks))
    else:                                # Model Garden's box transform (exact for eval)
      boxes = preprocess_ops.resize_and_crop_boxes(
          box_ops.denormalize_boxes(boxes, image_shape), image_scale, out_size, offset)
      boxes = boxes / tf.tile(out_size, [2])[None]

    instance_masks, semantic_mask = layout.unpack(masks) if masks is not None else (None, None)
    example[F.BOXES] = boxes
    if layout.instance:
      example[F.INSTANCE_MASKS] = instance_masks
      example[F.AREA] = tf.reduce_sum(instance_masks, axis=[1, 2])
    elif F.AREA in example:
      example[F.AREA] = (tf.cast(example[F.AREA], tf.float32)
                         * image_scale[0] * image_scale[1])
    keep = box_ops.get_non_empty_box_indices(boxes)     # drops boxes that left the crop
    for key in INSTANCE_KEYS:
      if key in example:
        example[key] = tf.gather(example[key], keep)
    if semantic_mask is not None:
      example[F.SEMANTIC_MASK] = tf.ensure_shape(semantic_mask, list(self.output_size) + [1])
    example[F.IMAGE] = image
    example[F.HEIGHT] = tf.constant(self.output_size[0], tf.int64)
    example[F.WIDTH] = tf.constant(self.output_size[1], tf.int64)
    example[IMAGE_INFO] = image_info
    return example
