"""COCO box AP: the 12 pycocotools metrics, and the detections as a COCO results JSON.

Inputs are Model Garden's evaluation formats, batch by batch, as numpy arrays or tensors (a
tuple/list of per-replica arrays is concatenated, as `strategy.experimental_local_results`
gives them):

  groundtruths (Model Garden's RetinaNet eval parser, `labels['groundtruths']`):
    source_id       [B]           int (or numeric / any string; see below)
    height, width   [B]           original image size, pixels
    num_detections  [B] or [B, 1] number of valid rows in boxes/classes/...
    boxes           [B, N, 4]     ymin, xmin, ymax, xmax in original-image pixels
    classes         [B, N]        1..num_classes
    areas           [B, N]        optional; pixels (a value <= 0 falls back to the box area)
    is_crowds       [B, N]        optional
  predictions (model outputs plus `source_id` and the parser's `image_info`):
    source_id, image_info [B, 4, 2], detection_boxes [B, K, 4] yxyx in model-input pixels,
    detection_scores [B, K], detection_classes [B, K], num_detections [B]

Boxes go back to original-image pixels the way Model Garden's RetinaNetTask/COCOEvaluator do
it: divided by the resize scale `image_info[:, 2, :]` (the eval parser never crops, so the
offset is 0). Only the first `num_detections` rows of each image are kept. An image whose
source id was already added (a repeated or padded final eval batch) is skipped.

The ground truth is converted with Model Garden's `coco_utils.convert_groundtruths_to_coco_dataset`
and scored with pycocotools' `COCOeval` over every image seen (an image without detections
counts, with recall 0). pycocotools reports -1 for a metric that is undefined (no ground-truth
box in that area range); that value is passed through unchanged.

Image ids: integer source ids (or strings of digits) are used as COCO image ids. Other string
ids are numbered internally and written back as the original string in the results JSON.
"""
import contextlib
import io
import json
import os
from typing import Any, Dict, List, Mapping, Optional

import gin
import numpy as np
import tensorflow as tf, tf_keras  # pylint: disable=unused-import
from absl import logging
from official.vision.evaluation import coco_utils
from official.vision.ops import box_ops
from pycocotools import cocoeval

from rethink_st.errors import UserError

_GT_REQUIRED = ('source_id', 'height', 'width', 'num_detections', 'boxes', 'classes')
_PRED_REQUIRED = ('source_id', 'detection_boxes', 'detection_scores', 'detection_classes',
                  'num_detections')


def metric_names(max_detections: int = 100) -> List[str]:
  """The 12 COCOeval.stats entries, in pycocotools' order, with short names."""
  return ['AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'ARmax1', 'ARmax10',
          f'ARmax{max_detections}', 'ARs', 'ARm', 'ARl']


def _to_numpy(value: Any) -> np.ndarray:
  if isinstance(value, (tuple, list)):
    return np.concatenate([_to_numpy(v) for v in value], axis=0)
  if isinstance(value, (tf.Tensor, tf.Variable)):
    return value.numpy()
  return np.asarray(value)


def _check_keys(what: str, batch: Mapping[str, Any], required) -> None:
  missing = [k for k in required if k not in batch]
  if missing:
    raise ValueError(f'CocoDetectionEvaluator.update_state: {what} lacks {", ".join(missing)} '
                     f'(has {", ".join(sorted(batch))})')


@gin.configurable
class CocoDetectionEvaluator:
  """Accumulates ground truth and detections over an eval set; scores them with pycocotools.

  Args:
    max_detections: detections per image that count (COCOeval's maxDets[2]; the 9th metric
      is named `ARmax{max_detections}`).
    category_map: optional {model class id: dataset category id}, e.g. contiguous 1..80 to
      COCO's 1..90 ids. Applied to ground truth and detections alike, so it changes only the
      ids in the results JSON (and per-category names), never the metrics.
    category_names: optional {model class id: name}, for per-category keys.
    per_category: also return 'AP/<name>' (AP over IoU 0.5:0.95, all areas) per category.
    rescale_boxes: divide detection boxes by image_info's scale (predictions in model-input
      pixels, as RetinaNet outputs them). False if they are already in original pixels.
    label_space: the task's LabelSpace (rethink_st/data/label_space.py; DetectionTask passes
      its sources'): gives category_map (dataset category ids, e.g. a custom COCO JSON's
      non-contiguous ones) and category_names where those are not bound.
  """

  def __init__(self,
               max_detections: int = 100,
               category_map: Optional[Mapping[int, int]] = None,
               category_names: Optional[Mapping[int, str]] = None,
               per_category: bool = False,
               rescale_boxes: bool = True,
               label_space=None):
    if not isinstance(max_detections, int) or max_detections <= 0:
      raise UserError(f'CocoDetectionEvaluator.max_detections={max_detections!r} is not a '
                      'positive integer')
    self._max_detections = max_detections
    if label_space is not None:
      if category_map is None and not label_space.is_contiguous():
        category_map = label_space.category_map()
      if category_names is None:
        category_names = label_space.class_names()
    self._category_map = ({int(k): int(v) for k, v in category_map.items()}
                          if category_map else None)
    self._category_names = ({int(k): str(v) for k, v in category_names.items()}
                            if category_names else None)
    self._per_category = per_category
    self._rescale_boxes = rescale_boxes
    self.reset()

  @property
  def name(self) -> str:
    return 'coco_metric'

  def reset(self) -> None:
    """Forgets everything seen so far."""
    self._gt = {k: [] for k in ('source_id', 'height', 'width', 'num_detections', 'boxes',
                                'classes', 'areas', 'is_crowds')}
    self._detections: List[Dict[str, Any]] = []   # image_id is the internal int id.
    self._id_of: Dict[Any, int] = {}               # original source id -> internal int id
    self._original_id: Dict[int, Any] = {}         # internal int id -> id for the JSON
    self._seen = set()                             # internal ids of images added

  reset_states = reset  # Model Garden's name.

  def _image_id(self, source_id: Any) -> int:
    if isinstance(source_id, bytes):
      source_id = source_id.decode('utf-8')
    if isinstance(source_id, np.generic):
      source_id = source_id.item()
    if source_id in self._id_of:
      return self._id_of[source_id]
    if isinstance(source_id, (int, np.integer)):
      internal, original = int(source_id), int(source_id)
    elif isinstance(source_id, str) and source_id.lstrip('-').isdigit():
      internal, original = int(source_id), int(source_id)
    else:
      # Non-numeric string: number it above every id seen so far.
      internal = max([0] + list(self._original_id)) + 1
      while internal in self._original_id:
        internal += 1
      original = str(source_id)
    if internal in self._original_id and self._original_id[internal] != original:
      raise ValueError(f'CocoDetectionEvaluator: source ids {self._original_id[internal]!r} and '
                       f'{original!r} map to the same COCO image id {internal}')
    self._id_of[source_id] = internal
    self._original_id[internal] = original
    return internal

  def _first_sightings(self, ids) -> np.ndarray:
    """True for ids not seen in an earlier batch nor earlier in this one."""
    keep, here = [], set()
    for i in ids:
      keep.append(i not in self._seen and i not in here)
      here.add(i)
    return np.array(keep, bool)

  def _category(self, class_id: int) -> int:
    if self._category_map is None:
      return class_id
    if class_id not in self._category_map:
      raise ValueError(f'CocoDetectionEvaluator: class id {class_id} is not in category_map '
                       f'(keys {sorted(self._category_map)})')
    return self._category_map[class_id]

  def update_state(self, groundtruths: Mapping[str, Any], predictions: Mapping[str, Any]) -> None:
    """Adds one batch of ground truth and the model's detections for the same images."""
    _check_keys('groundtruths', groundtruths, _GT_REQUIRED)
    _check_keys('predictions', predictions,
                _PRED_REQUIRED + (('image_info',) if self._rescale_boxes else ()))
    gt = {k: _to_numpy(v) for k, v in groundtruths.items() if k in self._gt}
    pred = {k: _to_numpy(v) for k, v in predictions.items()}

    gt_ids = np.array([self._image_id(s) for s in gt['source_id'].reshape(-1)], np.int64)
    det_ids = [self._image_id(s) for s in pred['source_id'].reshape(-1)]
    # An image seen before (a repeated or padded last eval batch) is counted once.
    keep_gt, keep_det = self._first_sightings(gt_ids), self._first_sightings(det_ids)
    self._seen.update(gt_ids.tolist())
    if not keep_gt.all():
      logging.warning('CocoDetectionEvaluator: skipping %d image(s) already evaluated',
                      int((~keep_gt).sum()))
      gt = {k: v[keep_gt] for k, v in gt.items()}
      gt_ids = gt_ids[keep_gt]
    batch_size = gt_ids.shape[0]
    if batch_size:
      self._add_groundtruths(gt, gt_ids)
    self._add_detections(pred, det_ids, keep_det)

  def _add_groundtruths(self, gt: Dict[str, np.ndarray], gt_ids: np.ndarray) -> None:
    # Model Garden's batched layout; only ids, classes (padding -1) and areas change.
    batch_size = gt_ids.shape[0]
    classes = gt['classes'].astype(np.int64).reshape(batch_size, -1)
    num_gt = gt['num_detections'].reshape(batch_size).astype(np.int64)
    valid = np.arange(classes.shape[1])[None, :] < num_gt[:, None]
    gt_classes = np.full_like(classes, -1)
    for b, k in zip(*np.nonzero(valid)):
      gt_classes[b, k] = self._category(int(classes[b, k]))
    boxes = gt['boxes'].astype(np.float64).reshape(batch_size, -1, 4)
    box_areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    areas = gt.get('areas')
    areas = box_areas if areas is None else np.where(
        areas.reshape(batch_size, -1) > 0, areas.reshape(batch_size, -1), box_areas)
    is_crowds = gt.get('is_crowds')
    is_crowds = (np.zeros_like(classes) if is_crowds is None
                 else is_crowds.reshape(batch_size, -1).astype(np.int64))
    for key, value in (('source_id', gt_ids), ('height', gt['height'].reshape(batch_size)),
                       ('width', gt['width'].reshape(batch_size)), ('num_detections', num_gt),
                       ('boxes', boxes), ('classes', gt_classes), ('areas', areas),
                       ('is_crowds', is_crowds)):
      self._gt[key].append(value)

  def _add_detections(self, pred: Dict[str, np.ndarray], det_ids: List[int],
                      keep_det: np.ndarray) -> None:
    # Back to original pixels, keep the valid rows, to COCO xywh.
    det_boxes = pred['detection_boxes'].astype(np.float64)
    if self._rescale_boxes:
      scale = np.tile(pred['image_info'][:, 2:3, :].astype(np.float64), (1, 1, 2))
      det_boxes = det_boxes / scale
    det_boxes = box_ops.yxyx_to_xywh(det_boxes)
    num_det = pred['num_detections'].reshape(-1).astype(np.int64)
    for b, image_id in enumerate(det_ids):
      if not keep_det[b]:
        continue
      for k in range(min(int(num_det[b]), det_boxes.shape[1])):
        self._detections.append({
            'image_id': image_id,
            'category_id': self._category(int(pred['detection_classes'][b, k])),
            'bbox': [float(v) for v in det_boxes[b, k]],
            'score': float(pred['detection_scores'][b, k]),
        })

  def coco_results(self) -> List[Dict[str, Any]]:
    """The detections so far in COCO results format: {image_id, category_id, bbox, score},
    bbox = [x, y, width, height] in original-image pixels."""
    return [dict(d, image_id=self._original_id[d['image_id']]) for d in self._detections]

  def write_results_json(self, path: str) -> str:
    """Writes `coco_results()` to `path` (any tf.io.gfile path); returns the path."""
    parent = os.path.dirname(path)
    if parent:
      tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(path, 'w') as f:
      json.dump(self.coco_results(), f)
    return path

  def _label_map(self) -> Optional[Dict[int, str]]:
    if self._category_map is None and self._category_names is None:
      return None
    classes = set(self._category_names or {}) | set(self._category_map or {})
    return {self._category(c): (self._category_names or {}).get(c, str(self._category(c)))
            for c in sorted(classes)}

  def evaluate(self) -> Dict[str, float]:
    """Scores everything seen so far (the state is kept)."""
    if not self._gt['source_id']:
      raise ValueError('CocoDetectionEvaluator.evaluate: no images were added with update_state')
    gt_dataset = coco_utils.convert_groundtruths_to_coco_dataset(self._gt)
    label_map = self._label_map()
    if label_map:
      present = {c['id'] for c in gt_dataset['categories']}
      gt_dataset['categories'] = [{'id': i, 'name': n} for i, n in label_map.items()
                                  if i in present]
    coco_gt = coco_utils.COCOWrapper(eval_type='box', gt_dataset=gt_dataset)
    detections = [dict(d, id=i + 1) for i, d in enumerate(self._detections)]
    coco_dt = coco_gt.loadRes(predictions=detections)

    coco_eval = cocoeval.COCOeval(coco_gt, coco_dt, iouType='bbox')
    coco_eval.params.imgIds = sorted(coco_gt.getImgIds())
    coco_eval.params.maxDets = [1, 10, self._max_detections]
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
      coco_eval.evaluate()
      coco_eval.accumulate()
      coco_eval.summarize()
    logging.info('COCO box evaluation of %d images, %d detections:\n%s',
                 len(coco_eval.params.imgIds), len(detections), summary.getvalue())
    metrics = {name: float(value) for name, value in
               zip(metric_names(self._max_detections), coco_eval.stats)}
    if self._per_category:
      # precision: [IoU thresholds, recall thresholds, categories, area ranges, maxDets].
      precision = coco_eval.eval['precision'][:, :, :, 0, -1]
      names = {c['id']: c.get('name', str(c['id'])) for c in gt_dataset['categories']}
      for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k]
        metrics[f'AP/{names[cat_id]}'] = float(np.mean(p[p > -1])) if np.any(p > -1) else -1.0
    return metrics

  def result(self) -> Dict[str, float]:
    """The 12 metrics ('AP', 'AP50', ..., 'ARl'; plus 'AP/<category>' if per_category), as
    fractions in [0, 1] (-1: undefined). Does not reset: call reset() between evaluations."""
    return self.evaluate()
