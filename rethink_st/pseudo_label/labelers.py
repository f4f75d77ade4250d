"""Labelers: what a teacher's output becomes per image (detection boxes with their scores and
class-agnostic suppression flags; segmentation pseudo masks).

Detection: Soft-NMS is the model's (bind build_retinanet.soft_nms_sigma). The model's NMS is
per class, so one object often gets boxes of several classes; class-agnostic suppression
(`class_agnostic_nms_iou`, 0.5; None: off) then keeps, across classes, the highest-scored box
and drops every box whose IoU with a kept, higher-scored one is >= the threshold
(tf.image.non_max_suppression_padded, the rule of Model Garden's NMS). Greedy suppression
decides each box from the higher-scored ones alone, so suppressing before or after a score
threshold gives the same boxes: it runs in the graph on all detections, and each detection
is flagged. Segmentation: probabilities averaged over `scales` (and flips) at the original
size, mapped back and thresholded in the graph; a pixel gets the argmax class when its
probability >= `mask_threshold`, else 255.
"""
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from rethink_st.data import features as F
from rethink_st.errors import UserError
from rethink_st.training import tasks as tasks_lib


def class_agnostic_suppressed(boxes, scores, num_detections, iou_threshold: float):
  """[B, N] bool: the detections that greedy class-agnostic NMS drops, among each image's
  first num_detections[i] (the rest is padding, never suppressed and never suppressing)."""
  n = boxes.shape[1]
  real = tf.range(n)[tf.newaxis] < tf.cast(num_detections, tf.int32)[:, tf.newaxis]
  index, num_kept = tf.image.non_max_suppression_padded(  # one tile: ~20x faster on CPU
      boxes, tf.where(real, scores, -1.0), n, iou_threshold=iou_threshold,
      pad_to_max_output_size=True, tile_size=n)
  chosen = tf.range(n)[tf.newaxis] < num_kept[:, tf.newaxis]            # [B, N] output slots
  kept = tf.reduce_any(tf.cast(tf.one_hot(index, n), tf.bool) & chosen[..., tf.newaxis], 1)
  return real & ~kept


class DetectionLabeler:
  """Teacher detections -> boxes per image (original-image normalized coordinates).

  The tf.Example of an image holds every box of score >= `score_floor` that class-agnostic
  suppression kept, with its score (the student applies its own threshold when it reads
  them, `pseudo_label_source.score_threshold`); `score_threshold` is the labeler's own
  threshold, at which the statistics count boxes (and the student's default). The floor is
  at most the threshold."""
  kind = 'detection'

  def __init__(self, model, score_threshold: float, class_agnostic_nms_iou: Optional[float],
               score_floor: Optional[float] = None):
    self.model, self.score_threshold = model, score_threshold
    self.score_floor = score_threshold if score_floor is None else min(score_floor,
                                                                       score_threshold)
    self.class_agnostic_nms_iou = class_agnostic_nms_iou

  def predict(self, batch):
    from official.vision.ops import anchor  # pylint: disable=g-import-not-at-top
    from rethink_st.modeling import anchors  # pylint: disable=g-import-not-at-top
    cfg = anchors.anchor_config()
    size = batch['input'].shape[1:3]
    boxes = anchor.build_anchor_generator(
        min_level=cfg.min_level, max_level=cfg.max_level, num_scales=cfg.num_scales,
        aspect_ratios=list(cfg.aspect_ratios), anchor_size=cfg.anchor_size)(size)
    n = tf.shape(batch['input'])[0]
    boxes = {k: tf.tile(v[tf.newaxis], [n, 1, 1, 1]) for k, v in boxes.items()}
    out = self.model(batch['input'], image_shape=batch['image_info'][:, 1, :],
                     anchor_boxes=boxes, training=False)
    info = tf.tile(batch['image_info'], [1, 1, 2])  # rows: original size, ..., y/x scale
    det = tf.cast(out['detection_boxes'], tf.float32) / info[:, 2:3, :]
    det = tf.clip_by_value(det, 0.0, info[:, 0:1, :])  # original pixels, inside the image
    scores = tf.cast(out['detection_scores'], tf.float32)
    pred = {'boxes': det, 'scores': scores, 'classes': out['detection_classes'],
            'num': out['num_detections']}
    if self.class_agnostic_nms_iou is not None:
      pred['suppressed'] = class_agnostic_suppressed(det, scores, out['num_detections'],
                                                     self.class_agnostic_nms_iou)
    return pred

  def to_example(self, pred, i, shape):
    """(labels for the tf.Example, all detections for the COCO JSON, with 'suppressed') of
    image i."""
    h, w = int(shape[0]), int(shape[1])
    n = int(pred['num'][i])
    scores = np.asarray(pred['scores'][i, :n], np.float32)
    all_boxes = np.clip(np.asarray(pred['boxes'][i, :n], np.float32) /
                        np.array([h, w, h, w], np.float32), 0.0, 1.0)
    all_classes = np.asarray(pred['classes'][i, :n]).astype(np.int64)
    suppressed = (np.asarray(pred['suppressed'][i, :n], bool) if 'suppressed' in pred
                  else np.zeros(n, bool))
    keep = (scores >= self.score_floor) & ~suppressed
    boxes, classes = all_boxes[keep], all_classes[keep]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * h * w
    example = {F.BOXES: boxes, F.CLASSES: classes, F.SCORES: scores[keep],
               F.IS_CROWD: np.zeros(len(classes), np.int64), F.AREA: area.astype(np.float32)}
    return example, {F.BOXES: all_boxes, F.CLASSES: all_classes, F.SCORES: scores,
                     'suppressed': suppressed}


class SegmentationLabeler:
  """Multi-scale (+ flip) probabilities at the original size -> thresholded pseudo mask."""
  kind = 'segmentation'

  def __init__(self, model, scales, flip, mask_threshold, size_divisor):
    self.model, self.scales, self.flip = model, tuple(scales), flip
    self.mask_threshold, self.size_divisor = mask_threshold, size_divisor

  def predict(self, batch):
    """'mask' uint8 [B, H_max, W_max]: image i's pseudo mask in its top-left H_i x W_i."""
    from rethink_st.evaluation import segmentation  # pylint: disable=g-import-not-at-top
    probs = segmentation.predict_probabilities(self.model, batch['input'], scales=self.scales,
                                               flip=self.flip, size_divisor=self.size_divisor)
    image_info = batch['image_info']
    out_size = tf.reduce_max(tf.cast(image_info[:, 0, :], tf.int32), axis=0)
    probs = segmentation.restore_original_size(probs, image_info, output_size=out_size)
    mask = segmentation.probabilities_to_pseudo_mask(
        probs, threshold=self.mask_threshold, ignore_label=F.IGNORE_LABEL)
    return {'mask': mask}

  def to_example(self, pred, i, shape):
    h, w = int(shape[0]), int(shape[1])
    return {F.SEMANTIC_MASK: pred['mask'][i, :h, :w, None]}, None


def build_labeler(task, model, *, score_threshold: float = 0.5,
                  class_agnostic_nms_iou: Optional[float] = 0.5,
                  scales: Sequence[float] = (1.0,), flip: bool = False,
                  mask_threshold: float = 0.5, score_floor: Optional[float] = None):
  """The task's labeler. score_floor: detection boxes written (with their scores) down to
  min(score_floor, score_threshold); None: down to score_threshold only."""
  if isinstance(task, tasks_lib.DetectionTask):
    return DetectionLabeler(model, score_threshold, class_agnostic_nms_iou, score_floor)
  if isinstance(task, tasks_lib.SegmentationTask):
    return SegmentationLabeler(model, scales, flip, mask_threshold, task.size_divisor)
  raise UserError(f'run_pseudo_label.task must be a DetectionTask or SegmentationTask, '
                  f'not {type(task).__name__}')

