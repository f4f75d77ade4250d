"""Augment-S1..S4 (the paper's four augmentation policies) for boxes and for masks.

    S1  FlipCrop: horizontal flip + scale jitter (0.8, 1.2) + crop to the output size.
    S2  AutoAugment (Model Garden's `detection_v0`) + S1's flip and jitter.
    S3  AutoAugment + large scale jitter (0.5, 2.0).
    S4  RandAugment (2 layers, magnitude 10, box-aware ops) + large scale jitter (0.5, 2.0).

Everything is built on `official.vision.ops`: the policy tables, their argument sampling and
every image operation come from `augment` (AutoAugment / RandAugment), the flip, resize,
crop and pad from `preprocess_ops`. What Model Garden lacks, masks that move with the image
through every op, is `rethink_st/augment_ops.py` (the ops) and
`rethink_st/augment_policies.py` (AutoAugment / RandAugment built from them). With instance
masks, the boxes at the output of training preprocessing are the tight boxes of the moved
masks (exact); without them (and in eval preprocessing, which only resizes) Model Garden's
box functions move them.

`Augment` is the configurable the input pipelines call on each decoded example
(`rethink_st/features.py`).
"""
import math
from typing import Any, Dict, Optional, Sequence

import gin
import tensorflow as tf

from official.vision.ops import box_ops
from official.vision.ops import preprocess_ops

from rethink_st import augment_ops as ops
from rethink_st import augment_policies as policies
from rethink_st import features as F
from rethink_st.errors import UserError

IMAGE_INFO = 'image_info'        # key Augment adds: Model Garden's [4, 2] image_info

# Per-instance keys kept aligned when boxes are dropped.
INSTANCE_KEYS = (F.CLASSES, F.IS_CROWD, F.AREA, F.BOXES, F.INSTANCE_MASKS, F.SCORES)


# name: (paper name, policy ops, default scale jitter)
POLICIES = {
    's1': ('Augment-S1: FlipCrop', None, (0.8, 1.2)),
    's2': ('Augment-S2: AutoAugment', 'autoaugment', (0.8, 1.2)),
    's3': ('Augment-S3: AutoAugment, higher scale jitter', 'autoaugment', (0.5, 2.0)),
    's4': ('Augment-S4: RandAugment, higher scale jitter', 'randaugment', (0.5, 2.0)),
}


def size_pair(value, what):
  """(height, width) from an int or a pair; one UserError line naming `what` otherwise."""
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

  `__call__(example, training=True)` takes a decoded example (`rethink_st.features`)
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
    self.output_size = size_pair(output_size, 'Augment.output_size')
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
      self.augmenter = policies.MaskAwareAutoAugment(autoaugment_policy, **consts)
    elif kind == 'randaugment':
      self.augmenter = policies.MaskAwareRandAugment(self.randaug_layers, self.randaug_magnitude,
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
      image = ops.as_uint8(image)
    boxes = example.get(F.BOXES)
    boxes = (tf.zeros([0, 4], tf.float32) if boxes is None
             else tf.reshape(tf.cast(tf.convert_to_tensor(boxes), tf.float32), [-1, 4]))
    layout = ops.MaskLayout(F.INSTANCE_MASKS in example, F.SEMANTIC_MASK in example)
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
      boxes = ops.boxes_from_masks(layout.instance_part(masks))
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
