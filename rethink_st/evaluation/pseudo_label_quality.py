"""How good a set of pseudo labels is, measured against held-back reference labels.

Detection numbers come from the COCO JSON of ALL the teacher's detections with their scores
(`detection_metrics(json_paths, ...)`: the pseudo-labeler's chunk files
`pseudo-*.coco.json`, or its merged `pseudo_coco.json`), so they can be read at any score
threshold t. "Precision / recall of pseudo labels" here means, per image:
the detections with score >= t are matched greedily, highest score first, each to the
not-yet-matched reference box of the same class with the highest IoU, if that IoU is
>= `iou_threshold` (true positive); otherwise it is a false positive, and reference boxes left
unmatched are false negatives. precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their
harmonic mean. As in COCO, crowd reference boxes are not counted in recall, and a detection
that matches no box but lies on a crowd box of its class (intersection / detection area
>= iou_threshold) is ignored. This is not COCO AP (one IoU threshold, no averaging over
the precision-recall curve). Greedy matching in score order decides each detection from the
higher-scored ones alone, so one matching per image gives the counts at every threshold.
Boxes per image count all pseudo images; TP/FP/FN only the images that are also in the
reference (matched by source_id).

Class-agnostic suppression (run_pseudo_label.class_agnostic_nms_iou): the COCO JSON flags the
detections it dropped ("suppressed": 1). Each row's numbers are those of the pseudo labels
the student reads (the detections not suppressed, score >= t); `suppressed` counts the
flagged ones with score >= t, and `without_suppression` holds the same numbers for all
detections with score >= t (matched on their own), i.e. what the labeler would have kept
without it. Suppression, like matching, decides each box from the higher-scored ones alone, so
the flags hold at every threshold. The labeler's own score threshold is always a row.

Segmentation numbers (`segmentation_metrics`): over pixels that neither the pseudo mask nor
the reference ignores, pixel accuracy and mIoU (`MeanIoUEvaluator`; a class absent from both
is left out of the mean), plus `ignored_fraction` (pseudo pixels set to ignore, of all pseudo
pixels) and `reference_pixels_ignored` (of the reference's labeled pixels, the share the
pseudo mask ignores).

Memory stays bounded in the size of the pseudo set: detections are read one COCO JSON file at
a time and masks one example at a time; the reference is indexed by source_id holding only
its boxes (`index_reference_boxes`, detection) or PNG-encoded masks
(`index_reference_masks`, segmentation), never its images.
"""
import io
import json
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
import tensorflow as tf

from rethink_st import features as F
from rethink_st.errors import UserError
from rethink_st.evaluation import segmentation


def read_json(path: str):
  with tf.io.gfile.GFile(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise UserError(f'{path}: not valid JSON ({e})') from None


def source_id(value) -> str:
  value = value.item() if isinstance(value, np.ndarray) else value
  return value.decode('utf8') if isinstance(value, bytes) else str(value)


def decode_png(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)))


# ------------------------------------------------------------------- detection matching


def match_detections(det_boxes: np.ndarray, det_classes: np.ndarray, det_scores: np.ndarray,
                     gt_boxes: np.ndarray, gt_classes: np.ndarray,
                     gt_is_crowd: Optional[np.ndarray] = None,
                     iou_threshold: float = 0.5) -> Tuple[np.ndarray, np.ndarray]:
  """Greedy class-aware matching of one image's detections to its reference boxes.

  Boxes are [x, y, w, h] in one coordinate system (pixels). Returns (scores sorted
  high to low, status per sorted detection: 1 true positive, 0 false positive, -1 ignored
  because it lies on a crowd box of its class). Take the detections with score >= t for
  the matching at threshold t (see the module docstring).
  """
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  det_classes = np.asarray(det_classes, np.int64).reshape(-1)
  det_scores = np.asarray(det_scores, np.float64).reshape(-1)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
  crowd = (np.zeros(len(gt_boxes), bool) if gt_is_crowd is None
           else np.asarray(gt_is_crowd).astype(bool).reshape(-1))
  order = np.argsort(-det_scores, kind='stable')
  status = np.zeros(len(order), np.int8)
  if len(order) and len(gt_boxes):
    ious = np.asarray(mask_util.iou(det_boxes[order], gt_boxes, crowd.astype(np.uint8)))
    ious = ious.reshape(len(order), len(gt_boxes))
    matched = np.zeros(len(gt_boxes), bool)
    for i, d in enumerate(order):
      same = gt_classes == det_classes[d]
      free = same & ~crowd & ~matched
      if free.any():
        j = int(np.argmax(np.where(free, ious[i], -1.0)))
        if ious[i, j] >= iou_threshold:
          matched[j] = True
          status[i] = 1
          continue
      on_crowd = same & crowd
      if on_crowd.any() and ious[i][on_crowd].max() >= iou_threshold:
        status[i] = -1
  return det_scores[order], status


def _iter_pseudo_detections(json_paths: Sequence[str]) -> Iterator[Tuple[str, int, int, Dict]]:
  """(source_id, height, width, {'bbox', 'category_id', 'score' arrays}) per pseudo image,
  one JSON file in memory at a time."""
  for path in json_paths:
    coco = read_json(path)
    if not isinstance(coco, dict) or 'images' not in coco or 'annotations' not in coco:
      raise UserError(f'{path}: not a COCO JSON with images and annotations')
    by_image: Dict[Any, List[dict]] = {}
    for ann in coco['annotations']:
      by_image.setdefault(ann['image_id'], []).append(ann)
    for image in coco['images']:
      anns = by_image.get(image['id'], [])
      dets = {'bbox': np.array([a['bbox'] for a in anns], np.float64).reshape(-1, 4),
              'category_id': np.array([a['category_id'] for a in anns], np.int64),
              'score': np.array([a.get('score', 1.0) for a in anns], np.float64),
              'suppressed': np.array([bool(a.get('suppressed')) for a in anns], bool)}
      yield (str(image.get('file_name', image['id'])), int(image['height']),
             int(image['width']), dets)


def _ratio(num, den):
  return float(num) / float(den) if den else None


def _f1(p, r):
  if p is None or r is None:
    return None
  return 0.0 if p + r == 0 else 2 * p * r / (p + r)


class _Tally:
  """Counts of one set of detections (the kept ones, or all) at every score threshold, and
  per class at the labeler's threshold."""

  def __init__(self, thresholds, labeler_threshold, num_classes):
    self.t, self.labeler_threshold = np.asarray(thresholds, np.float64), labeler_threshold
    self.boxes, self.tp, self.fp, self.ignored = (np.zeros(len(self.t), np.int64)
                                                  for _ in range(4))
    self.cls_tp, self.cls_fp = (np.zeros(num_classes + 1, np.int64) for _ in range(2))

  def add_boxes(self, scores):
    self.boxes += (scores[None, :] >= self.t[:, None]).sum(1)

  def add_matches(self, sorted_scores, status, sorted_classes):
    keep = sorted_scores[None, :] >= self.t[:, None]
    self.tp += (keep & (status == 1)[None]).sum(1)
    self.fp += (keep & (status == 0)[None]).sum(1)
    self.ignored += (keep & (status == -1)[None]).sum(1)
    at = sorted_scores >= self.labeler_threshold
    top = len(self.cls_tp) - 1
    np.add.at(self.cls_tp, np.clip(sorted_classes[at & (status == 1)], 0, top), 1)
    np.add.at(self.cls_fp, np.clip(sorted_classes[at & (status == 0)], 0, top), 1)

  def row(self, k, images, gt_total):
    """Row k's numbers; precision and recall when gt_total is not None (a reference)."""
    row = {'boxes': int(self.boxes[k]), 'boxes_per_image': _ratio(self.boxes[k], images)}
    if gt_total is not None:
      tp, fp = int(self.tp[k]), int(self.fp[k])
      p, r = _ratio(tp, tp + fp), _ratio(tp, gt_total)
      row.update(tp=tp, fp=fp, fn=gt_total - tp, ignored=int(self.ignored[k]),
                 precision=p, recall=r, f1=_f1(p, r))
    return row


def _match(dets, take, gt_xywh, ref, iou_threshold):
  """match_detections of the detections `take` selects: (sorted scores, status, sorted
  classes)."""
  classes, scores = dets['category_id'][take], dets['score'][take]
  sorted_scores, status = match_detections(dets['bbox'][take], classes, scores, gt_xywh,
                                           ref['classes'], ref['is_crowd'], iou_threshold)
  return sorted_scores, status, classes[np.argsort(-scores, kind='stable')]


def detection_metrics(json_paths, reference, thresholds, iou_threshold, labeler_threshold,
                      num_classes, names) -> Dict[str, Any]:
  """report.json's 'detection' part: boxes per image and, with a `reference`
  (index_reference_boxes), precision / recall / F1 at each score threshold, with and without the
  class-agnostic suppression, and per class at the labeler's threshold."""
  kept, every = (_Tally(thresholds, labeler_threshold, num_classes) for _ in range(2))
  cls_gt = np.zeros(num_classes + 1, np.int64)
  images = evaluated = not_in_reference = gt_total = 0
  for sid, h, w, dets in _iter_pseudo_detections(json_paths):
    images += 1
    scores, suppressed = dets['score'], dets['suppressed']
    kept.add_boxes(scores[~suppressed])
    every.add_boxes(scores)
    if reference is None:
      continue
    ref = reference.get(sid)
    if ref is None:
      not_in_reference += 1
      continue
    evaluated += 1
    scale = np.array([ref['height'], ref['width'], ref['height'], ref['width']], np.float64)
    yx = ref['boxes'].astype(np.float64) * scale           # pixels ymin, xmin, ymax, xmax
    gt_xywh = np.stack([yx[:, 1], yx[:, 0], yx[:, 3] - yx[:, 1], yx[:, 2] - yx[:, 0]], 1)
    counted = ~ref['is_crowd']
    gt_total += int(counted.sum())
    np.add.at(cls_gt, np.clip(ref['classes'][counted], 0, num_classes), 1)
    kept_matches = _match(dets, ~suppressed, gt_xywh, ref, iou_threshold)
    kept.add_matches(*kept_matches)
    every.add_matches(*(_match(dets, np.ones_like(suppressed), gt_xywh, ref, iou_threshold)
                        if suppressed.any() else kept_matches))
  gt = gt_total if reference is not None else None
  rows = []
  for k, thr in enumerate(thresholds):
    rows.append({'score_threshold': thr, **kept.row(k, images, gt),
                 'suppressed': int(every.boxes[k] - kept.boxes[k]),
                 'without_suppression': every.row(k, images, gt)})
  out: Dict[str, Any] = {'images': images, 'thresholds': rows}
  if reference is not None:
    out.update(images_evaluated=evaluated, images_not_in_reference=not_in_reference,
               reference_boxes=gt_total)
    per_class = []
    for c in range(1, num_classes + 1):
      ctp, cfp, cgt = int(kept.cls_tp[c]), int(kept.cls_fp[c]), int(cls_gt[c])
      per_class.append({'class_id': c, 'name': names[c - 1], 'tp': ctp, 'fp': cfp,
                        'fn': cgt - ctp, 'precision': _ratio(ctp, ctp + cfp),
                        'recall': _ratio(ctp, cgt)})
    out['per_class_at_labeler_threshold'] = per_class
  return out


# --------------------------------------------------------------------------- reference


def index_reference_masks(reference_source) -> Dict[str, Dict[str, Any]]:
  """source_id -> {'png': its PNG-encoded semantic mask} (segmentation pseudo labels)."""
  ds = reference_source.dataset()
  if F.SEMANTIC_MASK not in ds.element_spec:
    raise UserError(f'reference {reference_source.name}: has no semantic masks '
                    f'({F.SEMANTIC_MASK}) to compare pseudo masks with')
  ds = ds.map(lambda ex: (ex[F.SOURCE_ID], tf.io.encode_png(ex[F.SEMANTIC_MASK])),
              num_parallel_calls=tf.data.AUTOTUNE)
  return {source_id(sid.numpy()): {'png': png.numpy()} for sid, png in ds}


def index_reference_boxes(reference_source) -> Dict[str, Dict[str, Any]]:
  """source_id -> its height, width, boxes, classes and is_crowd (detection pseudo
  labels)."""
  ds = reference_source.dataset()

  def boxes_only(ex):
    crowd = ex.get(F.IS_CROWD, tf.zeros_like(ex[F.CLASSES], tf.bool))
    return {k: ex[k] for k in (F.SOURCE_ID, F.HEIGHT, F.WIDTH, F.BOXES, F.CLASSES)} | {
        F.IS_CROWD: tf.cast(crowd, tf.bool)}

  index = {}
  for ex in ds.map(boxes_only, num_parallel_calls=tf.data.AUTOTUNE):
    index[source_id(ex[F.SOURCE_ID].numpy())] = {
        'height': int(ex[F.HEIGHT]), 'width': int(ex[F.WIDTH]),
        'boxes': ex[F.BOXES].numpy().reshape(-1, 4).astype(np.float32),
        'classes': ex[F.CLASSES].numpy().astype(np.int64),
        'is_crowd': ex[F.IS_CROWD].numpy().astype(bool)}
  return index


# ------------------------------------------------------------------------ segmentation


def segmentation_metrics(examples, reference, num_classes, names) -> Dict[str, Any]:
  """report.json's 'segmentation' part from the pseudo-labeled examples: the share of
  ignored pixels and, with a `reference` (index_reference_masks), pixel accuracy, mIoU and IoU per
  class over the pixels neither mask ignores."""
  evaluator = segmentation.MeanIoUEvaluator(num_classes + 1, ignore_label=F.IGNORE_LABEL)
  images = pixels = ignored = 0
  evaluated = not_in_reference = ref_labeled = ref_labeled_ignored = 0
  for ex in examples:
    mask = ex[F.SEMANTIC_MASK].numpy()[..., 0]
    images += 1
    pixels += mask.size
    pseudo_ignored = mask == F.IGNORE_LABEL
    ignored += int(pseudo_ignored.sum())
    if reference is None:
      continue
    sid = source_id(ex[F.SOURCE_ID].numpy())
    ref = reference.get(sid)
    if ref is None:
      not_in_reference += 1
      continue
    ref_mask = decode_png(ref['png'])
    if ref_mask.shape[:2] != mask.shape:
      raise UserError(f'pseudo mask of image {sid} is {mask.shape}, its reference mask is '
                      f'{ref_mask.shape[:2]}; they must be the same size')
    ref_mask = ref_mask.reshape(mask.shape)
    if int(ref_mask[ref_mask != F.IGNORE_LABEL].max(initial=0)) > num_classes:
      raise UserError(f'reference mask of image {sid} has class '
                      f'{int(ref_mask[ref_mask != F.IGNORE_LABEL].max())} > num_classes '
                      f'{num_classes} of the pseudo labels')
    evaluated += 1
    labeled = ref_mask != F.IGNORE_LABEL
    ref_labeled += int(labeled.sum())
    ref_labeled_ignored += int((labeled & pseudo_ignored).sum())
    evaluator.update_state(ref_mask[None], mask[None].astype(np.int32),
                           valid=~pseudo_ignored[None])
  out: Dict[str, Any] = {'images': images, 'pixels': pixels,
                         'ignored_fraction': _ratio(ignored, pixels)}
  if reference is not None:
    result = evaluator.result()
    evaluated_pixels = int(evaluator.confusion_matrix().sum())

    def num(v):
      return None if v is None or np.isnan(v) else float(v)
    out.update(
        images_evaluated=evaluated, images_not_in_reference=not_in_reference,
        evaluated_pixels=evaluated_pixels,
        pixel_accuracy=num(result['pixel_accuracy']) if evaluated_pixels else None,
        mIoU=num(result['mIoU']) if evaluated_pixels else None,
        reference_pixels_ignored=_ratio(ref_labeled_ignored, ref_labeled),
        per_class_IoU=[{'class_id': c, 'name': 'background' if c == 0 else names[c - 1],
                        'IoU': num(v)} for c, v in enumerate(result['per_class_IoU'])])
  return out
