"""Semantic segmentation: mIoU, and single/multi-scale (+ flip) inference.

All functions are array-based: images are already preprocessed by the input pipeline
(normalized, resized and padded; padding is 0 after normalization), masks hold class ids
0..num_classes-1 with `IGNORE_LABEL` (255) on unlabeled and padded pixels.

mIoU convention: a class that appears neither in the ground truth nor in the predictions of
the valid pixels has no IoU; it is reported as NaN in 'per_class_IoU' and left out of the
mean ('mIoU' is the mean over the other classes; this is also what tf_keras.metrics.MeanIoU
computes).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf, tf_keras
from official.vision.ops import spatial_transform_ops

from rethink_st.errors import UserError
from rethink_st.features import IGNORE_LABEL


def _logits_of(outputs: Any) -> tf.Tensor:
  if isinstance(outputs, dict):
    if 'logits' not in outputs:
      raise ValueError(f'predict_probabilities: the model returned keys {sorted(outputs)}, '
                       "expected 'logits'")
    outputs = outputs['logits']
  return tf.cast(outputs, tf.float32)


def _resize(x: tf.Tensor, size) -> tf.Tensor:
  return tf.image.resize(x, size, method=tf.image.ResizeMethod.BILINEAR)


def _round_up(x: tf.Tensor, multiple: int) -> tf.Tensor:
  return (x + multiple - 1) // multiple * multiple


def _call_model(model, x: tf.Tensor, scale: float):
  try:
    return model(x, training=False)
  except ValueError as e:
    if 'incompatible with the layer' not in str(e):
      raise
    raise UserError(
        f'predict_probabilities: the model does not accept a {tuple(x.shape)} input (scale '
        f'{scale}); multi-scale inference needs a model built for any input size '
        f'(e.g. its backbone built with input size (None, None)), or one built for a fixed '
        f'size and images of a static size (run as tiles)') from e


def fixed_input_size(model) -> Optional[Tuple[int, int]]:
  """(H, W) of a Keras model (or its `backbone`, as Model Garden's SegmentationModel) built
  for one input size; None for a model (or function) that takes any size."""
  for m in (model, getattr(model, 'backbone', None)):
    try:
      shape = m.input_shape
    except (AttributeError, RuntimeError):
      continue
    if isinstance(shape, tuple) and len(shape) == 4:
      if shape[1] is None or shape[2] is None:
        return None
      return int(shape[1]), int(shape[2])
  return None


def tile_starts(length: int, tile: int) -> List[int]:
  """Offsets of the tiles of size `tile` that cover `length` pixels (one tile at 0 when it
  fits), evenly spaced with neighbours overlapping by at least a third of a tile."""
  if length <= tile:
    return [0]
  stride = max(2 * tile // 3, 1)   # floor(2/3 tile): overlap at least a third
  n = -(-(length - tile) // stride) + 1
  return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _tiled_logits(model, x: tf.Tensor, tile: Tuple[int, int], scale: float) -> tf.Tensor:
  """Logits [B, h, w, C] of x [B, h, w, 3] (static h, w) from a model built for `tile`
  (H, W) inputs: x is zero-padded at the bottom/right to at least H x W and cut into H x W
  tiles (`tile_starts`), which go through the model in one call (stacked on the batch axis);
  the tiles' logits (resized bilinearly to H x W) are averaged where tiles overlap, as
  sliding-window inference does (DeepLab, mmsegmentation)."""
  th, tw = tile
  h, w = int(x.shape[1]), int(x.shape[2])
  ch, cw = max(h, th), max(w, tw)
  if (ch, cw) != (h, w):
    x = tf.image.pad_to_bounding_box(x, 0, 0, ch, cw)
  corners = [(y0, x0) for y0 in tile_starts(ch, th) for x0 in tile_starts(cw, tw)]
  tiles = [x[:, y0:y0 + th, x0:x0 + tw] for y0, x0 in corners]
  logits = _resize(_logits_of(_call_model(model, tf.concat(tiles, axis=0), scale)), [th, tw])
  total, count = None, np.zeros([1, ch, cw, 1], np.float32)
  for part, (y0, x0) in zip(tf.split(logits, len(corners), axis=0), corners):
    placed = tf.pad(part, [[0, 0], [y0, ch - y0 - th], [x0, cw - x0 - tw], [0, 0]])
    total = placed if total is None else total + placed
    count[:, y0:y0 + th, x0:x0 + tw] += 1.0
  return (total / tf.constant(count))[:, :h, :w, :]


def predict_probabilities(model: tf_keras.Model,
                          images: tf.Tensor,
                          *,
                          scales: Sequence[float] = (1.0,),
                          flip: bool = False,
                          output_size: Optional[Tuple[int, int]] = None,
                          size_divisor: int = 1) -> tf.Tensor:
  """Softmax probabilities [B, out_h, out_w, C], averaged over scales and horizontal flips.

  For each scale s the images [B, H, W, 3] are resized bilinearly to round(s*H) x round(s*W)
  (and, with flip, mirrored left-right), and the model's `{'logits': [B, h, w, C]}` for them
  is resized bilinearly to the scaled size, un-mirrored, turned into probabilities with a
  softmax, and resized bilinearly to `output_size` (default (H, W)). The result is the mean
  over all scales x flips. The paper's pseudo-labels use scales (0.5, 0.75, 1, 1.25, 1.5,
  1.75).

  A model built for one input size (`fixed_input_size`, e.g. the NAS-FPN segmenters, whose
  decoder needs a static size) sees the scaled images as tiles of that size: smaller ones
  zero-padded at the bottom/right, larger ones cut into tiles overlapping by at least a third
  (50-75% at the paper's scales on a 128 px model) whose logits are averaged
  (`_tiled_logits`; one model call per scale and flip); this needs images of static size.
  A model for any size sees each scaled image whole, padded with zeros at the bottom/right
  to a multiple of `size_divisor` (for backbones that need it, e.g. 2**max_level; 1 = no
  padding).

  Works eagerly and inside tf.function.
  """
  if not scales or any(s <= 0 for s in scales):
    raise UserError(f'predict_probabilities: scales={tuple(scales)!r} must be non-empty and '
                    'positive')
  if int(size_divisor) < 1:
    raise UserError(f'predict_probabilities: size_divisor={size_divisor!r} must be >= 1')
  images = tf.convert_to_tensor(images)
  if not images.dtype.is_floating:
    images = tf.cast(images, tf.float32)
  tile = fixed_input_size(model)
  static = images.shape[1] is not None and images.shape[2] is not None
  if tile is not None and not static and tuple(scales) != (1.0,):
    raise UserError(f'predict_probabilities: the model is built for {tile[0]} x {tile[1]} '
                    f'inputs, so scales {tuple(scales)} are run as tiles of that size, which '
                    f'needs images of a static size (got {tuple(images.shape)})')
  if static:
    height, width = int(images.shape[1]), int(images.shape[2])
  else:
    height, width = tf.shape(images)[1], tf.shape(images)[2]
  if output_size is None:
    output_size = tf.stack([height, width])
  total = None
  count = 0
  for scale in scales:
    if scale == 1.0:
      scaled = images
      sh, sw = height, width
    else:
      if static:
        sh = max(int(np.round(np.float32(height) * np.float32(scale))), 1)
        sw = max(int(np.round(np.float32(width) * np.float32(scale))), 1)
      else:
        sh = tf.cast(tf.math.round(tf.cast(height, tf.float32) * scale), tf.int32)
        sw = tf.cast(tf.math.round(tf.cast(width, tf.float32) * scale), tf.int32)
        sh, sw = tf.maximum(sh, 1), tf.maximum(sw, 1)
      scaled = tf.cast(_resize(images, tf.stack([sh, sw])), images.dtype)
    for flipped in ((False, True) if flip else (False,)):
      x = tf.reverse(scaled, axis=[2]) if flipped else scaled
      if tile is not None and static:
        logits = _tiled_logits(model, x, tile, scale)
      else:
        ph, pw = _round_up(sh, size_divisor), _round_up(sw, size_divisor)
        if size_divisor > 1:
          x = tf.image.pad_to_bounding_box(x, 0, 0, ph, pw)
        logits = _resize(_logits_of(_call_model(model, x, scale)), tf.stack([ph, pw]))
        logits = logits[:, :sh, :sw, :]
      if flipped:
        logits = tf.reverse(logits, axis=[2])
      probs = _resize(tf.nn.softmax(logits, axis=-1), output_size)
      total = probs if total is None else total + probs
      count += 1
  return total / float(count)


def restore_original_size(probs: tf.Tensor, image_info: tf.Tensor,
                          output_size: Optional[Sequence[int]] = None) -> tf.Tensor:
  """Maps per-pixel scores on the model-input canvas back to original-image pixels.

  probs: [B, h, w, C] on the whole input canvas (the resized image plus its padding, as
  `predict_probabilities` returns it with its default output_size); image_info: [B, 4, 2]
  from `resize_and_crop_image` ([original size, desired size, scale, offset]; note row 1 is
  the desired canvas size, not the resized image's size). As Model Garden's mIoU with
  rescale_predictions: the canvas is resized bilinearly by 1 / scale (to ceil(desired /
  scale)), shifted by the crop offset, and each image's original H x W top-left region kept.
  Returns [B, out_h, out_w, C] with zeros outside each image's own H x W; output_size defaults
  to the first image's original size (a batch of one size, as in serving).
  """
  probs = tf.convert_to_tensor(probs)
  image_info = tf.cast(image_info, tf.float32)
  if output_size is None:
    output_size = tf.cast(image_info[0, 0, :], tf.int32)
  rescale_size = tf.cast(tf.math.ceil(image_info[:, 1, :] / image_info[:, 2, :]), tf.int32)
  return spatial_transform_ops.bilinear_resize_with_crop_and_pad(
      probs, rescale_size, crop_offset=tf.cast(image_info[:, 3, :], tf.int32),
      crop_size=tf.cast(image_info[:, 0, :], tf.int32), output_size=output_size)


def probabilities_to_pseudo_mask(probs: tf.Tensor,
                                 threshold: float = 0.5,
                                 ignore_label: int = IGNORE_LABEL) -> tf.Tensor:
  """Hard pseudo mask uint8 [..., H, W] from probabilities [..., H, W, C]: the argmax class,
  or `ignore_label` where the top probability is below `threshold` (the paper's 0.5)."""
  probs = tf.convert_to_tensor(probs)
  labels = tf.argmax(probs, axis=-1, output_type=tf.int32)
  confident = tf.reduce_max(probs, axis=-1) >= threshold
  return tf.cast(tf.where(confident, labels, ignore_label), tf.uint8)


def _squeeze_channel(x: tf.Tensor) -> tf.Tensor:
  return x[..., 0] if x.shape.rank == 4 else x


@gin.configurable
class MeanIoUEvaluator:
  """Accumulates a confusion matrix over valid pixels; reports mIoU and per-class IoU.

  Args:
    num_classes: classes including background (21 for PASCAL VOC).
    ignore_label: ground-truth value of pixels that do not count.
  """

  def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL):
    if not isinstance(num_classes, int) or num_classes < 2:
      raise UserError(f'MeanIoUEvaluator.num_classes={num_classes!r} must be an integer >= 2')
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self._metric = tf_keras.metrics.MeanIoU(num_classes=num_classes, name='mean_iou')

  @property
  def name(self) -> str:
    return 'mean_iou'

  def reset(self) -> None:
    self._metric.reset_state()

  reset_states = reset

  def update_state(self, masks: tf.Tensor, probs_or_labels: tf.Tensor,
                   valid: Optional[tf.Tensor] = None) -> None:
    """Adds a batch.

    Args:
      masks: int ground truth [B, H, W] or [B, H, W, 1]; `ignore_label` pixels do not count.
      probs_or_labels: float scores [B, h, w, C] (probabilities or logits; resized bilinearly
        to H x W if needed, then argmax) or int labels [B, H, W] / [B, H, W, 1].
      valid: optional bool [B, H, W] or [B, H, W, 1]; False pixels do not count either.
    """
    masks = tf.cast(_squeeze_channel(tf.convert_to_tensor(masks)), tf.int32)
    preds = tf.convert_to_tensor(probs_or_labels)
    if preds.dtype.is_floating:
      if preds.shape[-1] != self.num_classes:
        raise ValueError(f'MeanIoUEvaluator: scores have {preds.shape[-1]} channels, '
                         f'num_classes is {self.num_classes}')
      preds = tf.cast(preds, tf.float32)
      mask_size = tf.shape(masks)[1:3]
      if preds.shape[1:3] != masks.shape[1:3] or not preds.shape[1:3].is_fully_defined():
        preds = _resize(preds, mask_size)
      preds = tf.argmax(preds, axis=-1, output_type=tf.int32)
    else:
      preds = tf.cast(_squeeze_channel(preds), tf.int32)
    weights = tf.not_equal(masks, self.ignore_label)
    if valid is not None:
      weights &= tf.cast(_squeeze_channel(tf.convert_to_tensor(valid)), tf.bool)
    # Ignored pixels get weight 0; their labels are set to 0 so they stay in range.
    masks = tf.where(weights, masks, 0)
    preds = tf.where(weights, preds, 0)
    with tf.control_dependencies([
        tf.debugging.assert_less(masks, self.num_classes,
                                 message='MeanIoUEvaluator: ground-truth label >= num_classes'),
        tf.debugging.assert_less(preds, self.num_classes,
                                 message='MeanIoUEvaluator: predicted label >= num_classes'),
        tf.debugging.assert_non_negative(masks, message='MeanIoUEvaluator: negative label'),
    ]):
      self._metric.update_state(tf.reshape(masks, [-1]), tf.reshape(preds, [-1]),
                                sample_weight=tf.reshape(tf.cast(weights, tf.float32), [-1]))

  def confusion_matrix(self) -> np.ndarray:
    """[num_classes, num_classes] pixel counts; rows ground truth, columns prediction."""
    return self._metric.total_cm.numpy().astype(np.float64)

  def result(self) -> Dict[str, Any]:
    """{'mIoU': float, 'per_class_IoU': [num_classes floats, NaN where undefined],
    'pixel_accuracy': float}. mIoU is NaN if no valid pixel was seen."""
    cm = self.confusion_matrix()
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid='ignore', divide='ignore'):
      iou = np.where(union > 0, tp / union, np.nan)
    defined = ~np.isnan(iou)
    total = cm.sum()
    return {
        'mIoU': float(iou[defined].mean()) if defined.any() else float('nan'),
        'per_class_IoU': [float(v) for v in iou],
        'pixel_accuracy': float(tp.sum() / total) if total > 0 else float('nan'),
    }
