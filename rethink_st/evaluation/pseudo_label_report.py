"""Pseudo-label report: the paper's Appendix G pictures, and the numbers behind them.

`write_report(pseudo_dir, out_dir, reference_source=None, ...)` reads the pseudo-labeler's
output folder (`rethink_st/pseudo_label/shards.py`) and writes into out_dir:

    pseudo_labels.png     the first `num_images` pseudo-labeled images. Detection: the kept
                          pseudo boxes with their scores. Segmentation: the image and its
                          pseudo mask (class colours on black, ignored pixels white). With a
                          reference, its held-back labels are drawn beside them.
    report.json           all numbers below; report.md and the plot are made from it
    report.md             Markdown tables
    precision_recall.png  detection: precision, recall, F1 (with a reference) and pseudo
                          boxes per image against the score threshold
    per_class_iou.png     segmentation with a reference: IoU of the pseudo masks per class

Detection numbers come from the COCO JSON of ALL the teacher's detections with their scores
(the chunks' `pseudo-*.coco.json`, or `pseudo_coco.json` when there are none), so they can be
read at any score threshold t. "Precision / recall of pseudo labels" here means, per image:
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

Segmentation numbers: over pixels that neither the pseudo mask nor the reference ignores,
pixel accuracy and mIoU (`MeanIoUEvaluator`; a class absent from both is left out of the
mean), plus `ignored_fraction` (pseudo pixels set to ignore, of all pseudo pixels) and
`reference_pixels_ignored` (of the reference's labeled pixels, the share the pseudo mask
ignores).

Memory stays bounded in the size of the pseudo set: detections are read one chunk file at a
time and masks one example at a time; the reference is indexed by source_id holding only its
boxes (detection) or PNG-encoded masks (segmentation), never its images.
"""
import io
import json
import os
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import gin
import numpy as np
from PIL import Image
import tensorflow as tf

from rethink_st import drawing
from rethink_st.data import features as F
from rethink_st.errors import UserError
from rethink_st.pseudo_label import shards

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
GRID_FILE = 'pseudo_labels.png'
JSON_FILE = 'report.json'
MARKDOWN_FILE = 'report.md'
PR_PLOT_FILE = 'precision_recall.png'
IOU_PLOT_FILE = 'per_class_iou.png'


# ----------------------------------------------------------------------------- inputs


def parse_reference(spec: str, where: str = '--reference'):
  """A reference Source from a short string: 'digit_scenes:<split>' (digit_scenes_source,
  its data_dir from gin or the default dataset) or anything else as a TFRecord glob.
  Errors are one UserError line starting with `where`."""
  from rethink_st.data import sources  # pylint: disable=g-import-not-at-top
  spec = (spec or '').strip()
  if not spec:
    raise UserError(f'{where}: empty; give digit_scenes:<split> or a TFRecord glob')
  try:
    if spec.startswith('digit_scenes:'):
      return sources.digit_scenes_source(split=spec.split(':', 1)[1])
    return sources.tfrecord_source(spec)
  except UserError as e:
    raise UserError(f'{where}={spec}: {str(e).strip().splitlines()[0]}') from None


def _check_args(pseudo_dir, out_dir, num_images, thresholds, iou_threshold):
  if not out_dir:
    raise UserError('write_report: --output_dir (out_dir) is required')
  if not pseudo_dir or not tf.io.gfile.isdir(pseudo_dir):
    raise UserError(f'--pseudo_dir={pseudo_dir}: no such folder')
  if not tf.io.gfile.exists(os.path.join(pseudo_dir, 'meta.json')):
    raise UserError(f'--pseudo_dir={pseudo_dir}: not a pseudo-label folder (no meta.json)')
  if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
    raise UserError(f'write_report.num_images={num_images!r} must be an integer >= 0')
  try:
    values = [float(t) for t in thresholds]
  except (TypeError, ValueError):
    raise UserError(f'write_report.thresholds={thresholds!r} must be numbers in [0, 1]') \
        from None
  if not values or any(not 0.0 <= t <= 1.0 for t in values):
    raise UserError(f'write_report.thresholds={thresholds!r} must be numbers in [0, 1]')
  try:
    iou = float(iou_threshold)
  except (TypeError, ValueError):
    iou = -1.0
  if not 0.0 < iou <= 1.0:
    raise UserError(f'write_report.iou_threshold={iou_threshold!r} must be in (0, 1]')
  return sorted(set(values)), iou


def _complete_prefixes(pseudo_dir: str) -> List[str]:
  """Chunk prefixes whose .tfrecord exists (the chunk is complete), sorted."""
  return [p[:-len('.tfrecord')] for p in shards.list_tfrecords(pseudo_dir)]


def _read_json(path: str):
  with tf.io.gfile.GFile(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise UserError(f'{path}: not valid JSON ({e})') from None


def _write_bytes(path: str, data: bytes) -> None:
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(data)


def _source_id(value) -> str:
  value = value.item() if isinstance(value, np.ndarray) else value
  return value.decode('utf8') if isinstance(value, bytes) else str(value)


def _class_names(num_classes: int, class_names: Optional[Sequence[str]]) -> Tuple[str, ...]:
  if class_names is not None:
    return tuple(str(n) for n in class_names)
  if num_classes == len(drawing.DIGIT_NAMES):
    return drawing.DIGIT_NAMES
  return tuple(str(c) for c in range(1, num_classes + 1))


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
  from pycocotools import mask as mask_util  # pylint: disable=g-import-not-at-top
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
    coco = _read_json(path)
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


def _detection_json_paths(pseudo_dir: str, prefixes: Sequence[str]) -> List[str]:
  chunks = [p + '.coco.json' for p in prefixes if tf.io.gfile.exists(p + '.coco.json')]
  if chunks:
    return chunks
  merged = os.path.join(pseudo_dir, 'pseudo_coco.json')
  return [merged] if tf.io.gfile.exists(merged) else []


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


def _detection_metrics(json_paths, reference, thresholds, iou_threshold, labeler_threshold,
                       num_classes, names) -> Dict[str, Any]:
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


def _index_reference(reference_source, kind: str) -> Dict[str, Dict[str, Any]]:
  """source_id -> boxes (detection) or PNG-encoded semantic mask (segmentation)."""
  ds = reference_source.dataset()
  if kind == 'segmentation':
    if F.SEMANTIC_MASK not in ds.element_spec:
      raise UserError(f'reference {reference_source.name}: has no semantic masks '
                      f'({F.SEMANTIC_MASK}) to compare pseudo masks with')
    ds = ds.map(lambda ex: (ex[F.SOURCE_ID], tf.io.encode_png(ex[F.SEMANTIC_MASK])),
                num_parallel_calls=tf.data.AUTOTUNE)
    return {_source_id(sid.numpy()): {'png': png.numpy()} for sid, png in ds}

  def boxes_only(ex):
    crowd = ex.get(F.IS_CROWD, tf.zeros_like(ex[F.CLASSES], tf.bool))
    return {k: ex[k] for k in (F.SOURCE_ID, F.HEIGHT, F.WIDTH, F.BOXES, F.CLASSES)} | {
        F.IS_CROWD: tf.cast(crowd, tf.bool)}

  index = {}
  for ex in ds.map(boxes_only, num_parallel_calls=tf.data.AUTOTUNE):
    index[_source_id(ex[F.SOURCE_ID].numpy())] = {
        'height': int(ex[F.HEIGHT]), 'width': int(ex[F.WIDTH]),
        'boxes': ex[F.BOXES].numpy().reshape(-1, 4).astype(np.float32),
        'classes': ex[F.CLASSES].numpy().astype(np.int64),
        'is_crowd': ex[F.IS_CROWD].numpy().astype(bool)}
  return index


def _decode_png(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)))


# ----------------------------------------------------------------------------- drawing


def _panel(image, *, boxes=None, classes=None, scores=None, semantic_mask=None,
           on_black=False, panel_size=256, names=drawing.DIGIT_NAMES) -> np.ndarray:
  """One grid cell: images larger than panel_size are shrunk to fit, smaller ones are
  enlarged by the largest integer factor that fits."""
  image = np.asarray(image)
  h, w = image.shape[:2]
  scale = 1
  if max(h, w) > panel_size:
    f = panel_size / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    if semantic_mask is not None:
      semantic_mask = np.asarray(Image.fromarray(
          np.asarray(semantic_mask).reshape(h, w).astype(np.uint8)).resize(size, Image.NEAREST))
  else:
    scale = max(1, panel_size // max(h, w))
  base = np.zeros_like(image) if on_black else image
  return drawing.draw_example(base, boxes, classes, scores, semantic_mask=semantic_mask,
                              class_names=names, scale=scale,
                              mask_alpha=1.0 if on_black else 0.45)


def _save_grid(panels, titles, path, ncols):
  with tempfile.TemporaryDirectory() as tmp:
    local = drawing.save_grid(panels, os.path.join(tmp, 'grid.png'), ncols=ncols,
                              titles=titles)
    tf.io.gfile.copy(local, path, overwrite=True)


def _example_panels(ex, kind, reference, panel_size, names):
  sid = _source_id(ex[F.SOURCE_ID])
  image = ex[F.IMAGE]
  ref = reference.get(sid) if reference is not None else None
  panels, titles = [], []
  if kind == 'detection':
    n = len(ex[F.CLASSES])
    panels.append(_panel(image, boxes=ex[F.BOXES], classes=ex[F.CLASSES],
                         scores=ex.get(F.SCORES), panel_size=panel_size, names=names))
    titles.append(f'#{sid} pseudo: {n}')
    if reference is not None:
      if ref is None:
        panels.append(np.full_like(panels[-1], 255))
        titles.append('not in reference')
      else:
        panels.append(_panel(image, boxes=ref['boxes'], classes=ref['classes'],
                             panel_size=panel_size, names=names))
        titles.append(f'held back: {len(ref["classes"])}')
  else:
    mask = ex[F.SEMANTIC_MASK][..., 0]
    ignored = float((mask == F.IGNORE_LABEL).mean())
    panels.append(_panel(image, panel_size=panel_size))
    titles.append(f'#{sid}')
    if reference is not None:
      if ref is None:
        panels.append(np.full_like(panels[-1], 255))
        titles.append('not in reference')
      else:
        panels.append(_panel(image, semantic_mask=_decode_png(ref['png']), on_black=True,
                             panel_size=panel_size))
        titles.append('held back')
    panels.append(_panel(image, semantic_mask=mask, on_black=True, panel_size=panel_size))
    titles.append(f'pseudo ({ignored:.0%} ign.)')
  return sid, panels, titles


# ------------------------------------------------------------------------ segmentation


def _segmentation_metrics(examples, reference, num_classes, names) -> Dict[str, Any]:
  from rethink_st.evaluation import segmentation  # pylint: disable=g-import-not-at-top
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
    sid = _source_id(ex[F.SOURCE_ID].numpy())
    ref = reference.get(sid)
    if ref is None:
      not_in_reference += 1
      continue
    ref_mask = _decode_png(ref['png'])
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


# ------------------------------------------------------------------- markdown and plots


def _fmt(v, pct=False):
  if v is None:
    return '-'
  if isinstance(v, float):
    return f'{100 * v:.1f}' if pct else f'{v:.3g}'
  return str(v)


def report_markdown(report: Dict[str, Any]) -> str:
  """report.md from report.json's dict."""
  lines = [f'# Pseudo-label report: `{report["pseudo_dir"]}`', '',
           '| | |', '| --- | --- |']
  for key in ('kind', 'num_classes', 'source', 'teacher_checkpoint', 'labeler_score_threshold',
              'class_agnostic_nms_iou', 'complete', 'reference', 'iou_threshold'):
    if report.get(key) is not None:
      lines.append(f'| {key} | {report[key]} |')
  for key, value in report.get('stats', {}).items():
    if not isinstance(value, list):
      lines.append(f'| stats: {key} | {_fmt(value)} |')
  lines.append('')
  det, seg = report.get('detection'), report.get('segmentation')
  if det:
    has_ref = report.get('reference') is not None
    lines += [f'Pseudo images: {det["images"]}.']
    if has_ref:
      lines += [f'Evaluated against the reference: {det["images_evaluated"]} images, '
                f'{det["reference_boxes"]} reference boxes (not in the reference: '
                f'{det["images_not_in_reference"]} images). Greedy class-aware matching at '
                f'IoU >= {report["iou_threshold"]}; precision, recall, F1 in %.']
    labeler = report.get('labeler_score_threshold')

    def is_labeler(row):
      return labeler is not None and abs(row['score_threshold'] - labeler) < 1e-9
    at = [r for r in det['thresholds'] if is_labeler(r)]
    nms = report.get('class_agnostic_nms_iou')
    if at:
      r, w = at[0], at[0]['without_suppression']
      how = (f'class-agnostic suppression at IoU >= {nms:g}' if nms is not None else
             'class-agnostic suppression off')
      text = f'{r["boxes"]} pseudo boxes with {how} ({r["suppressed"]} suppressed)'
      if has_ref:
        text += (f': precision {_fmt(r["precision"], True)}, recall '
                 f'{_fmt(r["recall"], True)}; without it, {w["boxes"]} boxes: precision '
                 f'{_fmt(w["precision"], True)}, recall {_fmt(w["recall"], True)}')
      lines += ['', f'At the labeler\'s score threshold {labeler:g}: {text}.']
    if has_ref:
      lines += ['', '"Without suppression": all the teacher\'s boxes at that score threshold, '
                'the class-agnostic suppression undone.']
    lines += ['']
    head = ['score threshold', 'boxes/image', 'boxes']
    if has_ref:
      head += ['precision', 'recall', 'F1', 'TP', 'FP', 'FN', 'crowd-ignored']
    head += ['suppressed']
    if has_ref:
      head += ['precision without suppression', 'recall without suppression']
    lines += ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for row in det['thresholds']:
      mark = ' (labeler)' if is_labeler(row) else ''
      cells = [f'{row["score_threshold"]:g}{mark}', _fmt(row['boxes_per_image']),
               str(row['boxes'])]
      if has_ref:
        cells += [_fmt(row['precision'], True), _fmt(row['recall'], True),
                  _fmt(row['f1'], True), str(row['tp']), str(row['fp']), str(row['fn']),
                  str(row['ignored'])]
      cells += [str(row['suppressed'])]
      if has_ref:
        w = row['without_suppression']
        cells += [_fmt(w['precision'], True), _fmt(w['recall'], True)]
      lines.append('| ' + ' | '.join(cells) + ' |')
    if has_ref:
      lines += ['', f'Per class at the labeler\'s score threshold '
                f'{report.get("labeler_score_threshold")} (precision, recall in %):', '',
                '| class | TP | FP | FN | precision | recall |',
                '| --- | --- | --- | --- | --- | --- |']
      for c in det['per_class_at_labeler_threshold']:
        lines.append(f'| {c["name"]} | {c["tp"]} | {c["fp"]} | {c["fn"]} | '
                     f'{_fmt(c["precision"], True)} | {_fmt(c["recall"], True)} |')
  if seg:
    lines += ['| pseudo masks | |', '| --- | --- |',
              f'| images | {seg["images"]} |',
              f'| ignored pixels (%) | {_fmt(seg["ignored_fraction"], True)} |']
    if report.get('reference') is not None:
      lines += [f'| images evaluated | {seg["images_evaluated"]} |',
                f'| images not in reference | {seg["images_not_in_reference"]} |',
                f'| pixel accuracy (%) | {_fmt(seg["pixel_accuracy"], True)} |',
                f'| mIoU (%) | {_fmt(seg["mIoU"], True)} |',
                f'| reference-labeled pixels ignored (%) | '
                f'{_fmt(seg["reference_pixels_ignored"], True)} |',
                '', 'Accuracy and IoU over pixels neither mask ignores. IoU per class (%):', '',
                '| class | IoU |', '| --- | --- |']
      lines += [f'| {c["name"]} | {_fmt(c["IoU"], True)} |' for c in seg['per_class_IoU']]
  files = report.get('files', {})
  if files:
    lines += ['', 'Files: ' + ', '.join(f'`{v}`' for v in files.values()) + '.']
  return '\n'.join(lines) + '\n'


def _plot_png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  return buf.getvalue()


def _plot_file(report: Dict[str, Any]) -> Optional[str]:
  if report.get('detection'):
    return PR_PLOT_FILE
  if (report.get('segmentation') or {}).get('per_class_IoU'):
    return IOU_PLOT_FILE
  return None


def plot_report(report: Dict[str, Any], out_dir: str) -> Optional[str]:
  """The report's plot from its dict (matplotlib Agg); returns the file name or None."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  det, seg = report.get('detection'), report.get('segmentation')
  if det:
    rows = det['thresholds']
    x = [r['score_threshold'] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    if report.get('reference') is not None:
      for key, style in (('precision', 'o-'), ('recall', 's-'), ('f1', '^--')):
        y = [np.nan if r[key] is None else r[key] for r in rows]
        ax.plot(x, y, style, label=key)
      if any(r['suppressed'] for r in rows):
        for key, style in (('precision', 'o:'), ('recall', 's:')):
          y = [np.nan if r['without_suppression'][key] is None
               else r['without_suppression'][key] for r in rows]
          ax.plot(x, y, style, alpha=0.6, label=f'{key} without suppression')
      ax.set_ylim(0, 1.02)
      ax.set_ylabel('precision / recall / F1')
    ax.set_xlabel('score threshold')
    labeler = report.get('labeler_score_threshold')
    if labeler is not None:
      ax.axvline(labeler, color='grey', ls=':', label=f'labeler threshold {labeler:g}')
    ax2 = ax.twinx()
    ax2.plot(x, [r['boxes_per_image'] or 0.0 for r in rows], 'k.-', alpha=0.5,
             label='boxes / image')
    ax2.set_ylabel('pseudo boxes per image')
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8, loc='best')
    ax.set_title(f'pseudo labels (IoU >= {report["iou_threshold"]})', fontsize=10)
    fig.tight_layout()
    _write_bytes(os.path.join(out_dir, PR_PLOT_FILE), _plot_png(fig))
    plt.close(fig)
    return PR_PLOT_FILE
  if seg and seg.get('per_class_IoU'):
    per = seg['per_class_IoU']
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(per) + 1), 3.5))
    ax.bar(range(len(per)), [np.nan if c['IoU'] is None else c['IoU'] for c in per])
    ax.set_xticks(range(len(per)))
    ax.set_xticklabels([c['name'] for c in per], rotation=90 if len(per) > 12 else 0,
                       fontsize=8)
    if seg.get('mIoU') is not None:
      ax.axhline(seg['mIoU'], color='k', ls='--', label=f'mIoU {seg["mIoU"]:.3f}')
      ax.legend(fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel('IoU of pseudo masks')
    fig.tight_layout()
    _write_bytes(os.path.join(out_dir, IOU_PLOT_FILE), _plot_png(fig))
    plt.close(fig)
    return IOU_PLOT_FILE
  return None


# ----------------------------------------------------------------------------- report


@gin.configurable(denylist=['pseudo_dir', 'out_dir'])
def write_report(pseudo_dir: str,
                 out_dir: str,
                 *,
                 reference_source=None,
                 num_images: int = 16,
                 thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 iou_threshold: float = 0.5,
                 images_per_row: int = 4,
                 panel_size: int = 256,
                 class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Writes pseudo_labels.png, report.json, report.md and a plot into out_dir; returns the
  report dict (report.json's content). See the module docstring for what is measured.

  Args:
    pseudo_dir: a pseudo-labeler output folder (meta.json and complete chunks).
    out_dir: where the report goes (created).
    reference_source: a Source with the held-back labels of the unlabeled images (matched
      by source_id), e.g. digit_scenes_source(split='unlabeled'); None: pictures and
      pseudo-label statistics only.
    num_images: how many pseudo-labeled images the grid shows (0: no grid).
    thresholds: score thresholds for the detection table and plot (the labeler's own is
      always added).
    iou_threshold: IoU at which a pseudo box matches a reference box.
    images_per_row: examples per grid row (each is 1-3 panels).
    panel_size: grid panels are about this many pixels on their long side.
    class_names: names of class ids 1.. (default: the digits for 10 classes, else numbers).
  """
  from rethink_st.pseudo_label import source as pseudo_source  # pylint: disable=g-import-not-at-top
  thresholds, iou_threshold = _check_args(pseudo_dir, out_dir, num_images, thresholds,
                                          iou_threshold)
  meta = shards.read_meta(pseudo_dir)
  kind = meta.get('kind')
  if kind not in ('detection', 'segmentation'):
    raise UserError(f'--pseudo_dir={pseudo_dir}: meta.json kind={kind!r} is not '
                    f'detection or segmentation')
  num_classes = int(meta['num_classes'])
  names = _class_names(num_classes, class_names)
  prefixes = _complete_prefixes(pseudo_dir)
  if not prefixes:
    raise UserError(f'--pseudo_dir={pseudo_dir}: no complete chunk (pseudo-*.tfrecord)')
  json_paths = _detection_json_paths(pseudo_dir, prefixes) if kind == 'detection' else []
  if kind == 'detection' and reference_source is not None and not json_paths:
    raise UserError(f'--pseudo_dir={pseudo_dir}: no pseudo_coco.json or pseudo-*.coco.json; '
                    'precision/recall need the teacher\'s scored detections')
  ref_classes = getattr(reference_source, 'num_classes', None)
  if reference_source is not None and ref_classes is not None and ref_classes != num_classes:
    raise UserError(f'reference {reference_source.name} has {ref_classes} classes, the '
                    f'pseudo labels in {pseudo_dir} have {num_classes}')
  labeler_threshold = meta.get('score_threshold') if kind == 'detection' else None
  if labeler_threshold is not None:
    thresholds = sorted(set(thresholds) | {float(labeler_threshold)})
  num_shards = int(meta.get('num_shards', 1))

  source = pseudo_source.pseudo_label_source(pseudo_dir, require_complete=False)
  reference = (_index_reference(reference_source, kind) if reference_source is not None
               else None)
  tf.io.gfile.makedirs(out_dir)

  # The grid (and a check that the reference is the right one before the long pass).
  panels, titles, grid_ids = [], [], []
  for ex in source.dataset().take(max(num_images, 1)):
    ex = {k: v.numpy() for k, v in ex.items()}
    sid, p, t = _example_panels(ex, kind, reference, panel_size, names)
    grid_ids.append(sid)
    if len(grid_ids) <= num_images:
      panels += p
      titles += t
  if reference is not None and not any(s in reference for s in grid_ids):
    raise UserError(f'reference {reference_source.name} has none of the first '
                    f'{len(grid_ids)} pseudo-labeled images of {pseudo_dir} (source_ids '
                    f'{", ".join(grid_ids[:3])}...); is it the unlabeled set that was labeled?')
  files = {}
  if panels:
    per_example = len(panels) // min(num_images, len(grid_ids))
    _save_grid(panels, titles, os.path.join(out_dir, GRID_FILE),
               ncols=max(1, images_per_row) * per_example)
    files['grid'] = GRID_FILE

  stats_paths = [p + '.stats.json' for p in prefixes if tf.io.gfile.exists(p + '.stats.json')]
  stats = shards.merge_stats(_read_json(p) for p in stats_paths) if stats_paths else {}
  report: Dict[str, Any] = {
      'pseudo_dir': pseudo_dir, 'kind': kind, 'num_classes': num_classes,
      'source': meta.get('source'), 'teacher_checkpoint': meta.get('teacher_checkpoint'),
      'labeler_score_threshold': labeler_threshold,
      'class_agnostic_nms_iou': meta.get('class_agnostic_nms_iou'),
      'complete': shards.all_hosts_done(pseudo_dir, num_shards), 'chunks': len(prefixes),
      'reference': None if reference_source is None else reference_source.name,
      'iou_threshold': iou_threshold if kind == 'detection' else None,
      'stats': {k: v for k, v in stats.items()
                if k in ('images', 'boxes', 'suppressed', 'boxes_per_image',
                         'images_without_labels', 'ignored_fraction')}}
  if kind == 'detection':
    if json_paths:
      report['detection'] = _detection_metrics(
          json_paths, reference, thresholds, iou_threshold,
          labeler_threshold if labeler_threshold is not None else 0.5, num_classes, names)
  else:
    report['segmentation'] = _segmentation_metrics(iter(source.dataset()), reference,
                                                   num_classes, names)
  plot = _plot_file(report)
  if plot:
    files['plot'] = plot
  files.update(json=JSON_FILE, markdown=MARKDOWN_FILE)
  report['files'] = files
  # JSON first; the Markdown and the plot are made from it.
  with tf.io.gfile.GFile(os.path.join(out_dir, JSON_FILE), 'w') as f:
    f.write(json.dumps(report, indent=1))
  with tf.io.gfile.GFile(os.path.join(out_dir, MARKDOWN_FILE), 'w') as f:
    f.write(report_markdown(report))
  plot_report(report, out_dir)
  return report
