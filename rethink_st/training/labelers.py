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

A labeler class also says what its kind's pseudo-label folder holds, for the modules that
read one back (pseudo_label/: the chunk counters, the merged stats, the student's threshold,
the report): its `Task` names it (`Task.labeler_class`), and `tasks.labeler_class(kind)`
finds it from the kind a folder's meta.json records. Those modules call its methods and
never compare kind names. (In the training room so that a Task can name it;
rethink_st/pseudo_label/labelers.py re-exports it.)
"""
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf

from official.vision.ops import anchor
from rethink_st.data import features as F
from rethink_st.evaluation import segmentation
from rethink_st.modeling import anchors
from rethink_st.training import label_reports

# The written boxes' scores, in 0.001-wide bins: boxes per image at any student threshold
# that is a multiple of 0.001 (`written_boxes_at`).
WRITTEN_SCORE_BINS = 1000


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


class Labeler:
  """Base: a kind's predictions -> labels per image, and what its folder's files hold.

  `scored`: the labels carry scores, so a student reads them at a score threshold.
  `writes_coco_json`: each chunk also gets a COCO JSON of all the teacher's detections.
  `report`: the class of its part of the pseudo-label report (label_reports.py)."""
  kind = ''
  scored = False
  writes_coco_json = False
  report = label_reports.ReportPart

  def predict(self, batch) -> Dict[str, tf.Tensor]:
    raise NotImplementedError

  def to_example(self, pred, i, shape):
    """(labels of image i for its tf.Example, extra per-image data for `count`)."""
    raise NotImplementedError

  def meta_fields(self) -> Dict[str, Any]:
    """The kind's settings meta.json records (None where they do not apply)."""
    return {'score_floor': None, 'class_agnostic_nms_iou': None, 'scales': None}

  def count(self, counters, writer, labels, extra, source_id, shape) -> None:
    """Counts image's labels in the chunk's `counters` (shards.Counters), and writes what
    else the chunk holds of it through `writer` (shards.ChunkWriter)."""
    raise NotImplementedError

  @classmethod
  def counter_fields(cls, counters) -> Dict[str, Any]:
    """The kind's part of a chunk's stats.json, from its shards.Counters."""
    return {}

  @classmethod
  def add_derived(cls, merged: Dict[str, Any]) -> None:
    """Means and fractions of merged counters (merged in place)."""

  @classmethod
  def density(cls, stats: Dict[str, Any], score_threshold: Optional[float],
              meta: Optional[Dict[str, Any]]) -> Dict[str, float]:
    """How densely a folder labels its images, from its merged counters (images, and
    the kind's measure)."""
    return {'images': int(stats.get('images', 0))}


def written_boxes_at(stats: Dict[str, Any], threshold: float) -> Optional[int]:
  """Boxes of score >= threshold among those written, from merged counters (exact for a
  multiple of 0.001: a score s is in bin floor(1000 s)); None for a folder written before
  the counters had them."""
  hist = stats.get('written_score_hist')
  if hist is None:
    return None
  first = int(np.ceil(round(float(threshold) * WRITTEN_SCORE_BINS, 6)))
  return int(np.sum(hist[min(max(first, 0), WRITTEN_SCORE_BINS):]))


class DetectionLabeler(Labeler):
  """Teacher detections -> boxes per image (original-image normalized coordinates).

  The tf.Example of an image holds every box of score >= `score_floor` that class-agnostic
  suppression kept, with its score (the student applies its own threshold when it reads
  them, `pseudo_label_source.score_threshold`); `score_threshold` is the labeler's own
  threshold, at which the statistics count boxes (and the student's default). The floor is
  at most the threshold."""
  kind = 'detection'
  scored = True
  writes_coco_json = True
  report = label_reports.DetectionReport

  def __init__(self, model, score_threshold: float, class_agnostic_nms_iou: Optional[float],
               score_floor: Optional[float] = None):
    self.model, self.score_threshold = model, score_threshold
    self.score_floor = score_threshold if score_floor is None else min(score_floor,
                                                                       score_threshold)
    self.class_agnostic_nms_iou = class_agnostic_nms_iou

  def predict(self, batch):
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

  def meta_fields(self):
    return {'score_floor': self.score_floor,
            'class_agnostic_nms_iou': self.class_agnostic_nms_iou, 'scales': None}

  def count(self, counters, writer, labels, extra, source_id, shape):
    scores, suppressed = extra[F.SCORES], extra['suppressed']
    written = labels[F.SCORES]   # >= the floor, not suppressed
    counters.add_detection(
        labels[F.CLASSES][written >= self.score_threshold], scores,
        suppressed=np.count_nonzero(suppressed & (scores >= self.score_threshold)),
        written_scores=written)
    writer.add_coco_image(source_id, int(shape[0]), int(shape[1]), extra[F.BOXES],
                          extra[F.CLASSES], scores, suppressed)

  @classmethod
  def counter_fields(cls, counters):
    return dict(boxes=counters.boxes, suppressed=counters.suppressed,
                class_agnostic_nms_iou=counters.class_agnostic_nms_iou,
                boxes_per_image_hist=counters.boxes_per_image_hist.tolist(),
                score_hist=counters.score_hist.tolist(),
                score_bins=counters.score_bins.tolist(), written=counters.written,
                written_score_hist=counters.written_score_hist.tolist())

  @classmethod
  def add_derived(cls, merged):
    merged['boxes_per_image'] = merged.get('boxes', 0) / max(merged.get('images', 0), 1)

  @classmethod
  def density(cls, stats, score_threshold, meta):
    """boxes_per_image at `score_threshold`: the labeler's own count at its threshold, else
    from the written boxes' score histogram."""
    images = int(stats.get('images', 0))
    boxes = stats.get('boxes', 0)
    labeler = (meta or {}).get('score_threshold')
    if score_threshold is not None and (labeler is None or
                                        abs(score_threshold - float(labeler)) > 1e-9):
      written = written_boxes_at(stats, score_threshold)
      boxes = boxes if written is None else written
    return {'images': images, 'boxes_per_image': boxes / images if images else 0.0}


class SegmentationLabeler(Labeler):
  """Multi-scale (+ flip) probabilities at the original size -> thresholded pseudo mask."""
  kind = 'segmentation'
  report = label_reports.SegmentationReport

  def __init__(self, model, scales, flip, mask_threshold, size_divisor):
    self.model, self.scales, self.flip = model, tuple(scales), flip
    self.mask_threshold, self.size_divisor = mask_threshold, size_divisor

  def predict(self, batch):
    """'mask' uint8 [B, H_max, W_max]: image i's pseudo mask in its top-left H_i x W_i."""
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

  def meta_fields(self):
    return {'score_floor': None, 'class_agnostic_nms_iou': None, 'scales': list(self.scales)}

  def count(self, counters, writer, labels, extra, source_id, shape):
    counters.add_segmentation(labels[F.SEMANTIC_MASK][..., 0], F.IGNORE_LABEL)

  @classmethod
  def counter_fields(cls, counters):
    return dict(pixels=counters.pixels, ignored_pixels=counters.ignored_pixels)

  @classmethod
  def add_derived(cls, merged):
    merged['ignored_fraction'] = merged.get('ignored_pixels', 0) / max(merged.get('pixels', 0),
                                                                       1)

  @classmethod
  def density(cls, stats, score_threshold, meta):
    """labeled_pixel_fraction: the pixels that carry a label rather than the ignore value."""
    pixels = int(stats.get('pixels', 0))
    labeled = 1.0 - stats.get('ignored_pixels', 0) / pixels if pixels else 0.0
    return {'images': int(stats.get('images', 0)), 'labeled_pixel_fraction': labeled}
