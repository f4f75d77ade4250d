"""A kind's part of the pseudo-label report (rethink_st/pseudo_label_report.py): which files
of the folder it reads, how its reference is indexed, how an image is drawn, what is
measured. A labeler class names its part (`Labeler.report`); the report looks the labeler up
from meta.json's kind (`tasks.labeler_class`). What is measured is
rethink_st/evaluation/pseudo_label_quality.py; the drawing, pseudo_label_report_render.py.
"""
import os
from typing import Any, Dict, List, Optional, Sequence

import tensorflow as tf

from rethink_st.errors import UserError
from rethink_st.evaluation import pseudo_label_quality as quality
from rethink_st.evaluation import pseudo_label_report_render as render


class ReportPart:
  """Base: what a kind adds to the report. `labeler_threshold`: the labeler's score
  threshold (None: its labels carry no score)."""
  labeler_threshold: Optional[float] = None

  def __init__(self, pseudo_dir: str, prefixes: Sequence[str], meta: Dict[str, Any],
               reference_source=None):
    """Checks, before any long work, that the folder holds what the part reads."""
    self.pseudo_dir, self.prefixes, self.meta = pseudo_dir, list(prefixes), meta

  def iou_threshold(self, iou_threshold: float) -> Optional[float]:
    """The IoU at which pseudo labels match the reference, if the part uses one."""
    return None

  def index_reference(self, reference_source) -> Dict[str, Dict[str, Any]]:
    raise NotImplementedError

  def panels(self, ex, reference, panel_size: int, names):
    """(source_id, panels, titles) of one pseudo-labeled image of the grid."""
    raise NotImplementedError

  def metrics(self, source, reference, thresholds, iou_threshold, num_classes,
              names) -> Dict[str, Any]:
    """report.json's entries of the kind (e.g. {'detection': {...}})."""
    return {}


def detection_json_paths(pseudo_dir: str, prefixes: Sequence[str]) -> List[str]:
  """The chunks' COCO JSON files of all the teacher's detections (else the merged one)."""
  chunks = [p + '.coco.json' for p in prefixes if tf.io.gfile.exists(p + '.coco.json')]
  if chunks:
    return chunks
  merged = os.path.join(pseudo_dir, 'pseudo_coco.json')
  return [merged] if tf.io.gfile.exists(merged) else []


class DetectionReport(ReportPart):
  """Pseudo boxes: precision / recall / F1 at each score threshold, from the COCO JSON of
  all the teacher's detections."""

  def __init__(self, pseudo_dir, prefixes, meta, reference_source=None):
    super().__init__(pseudo_dir, prefixes, meta, reference_source)
    self.json_paths = detection_json_paths(pseudo_dir, prefixes)
    if reference_source is not None and not self.json_paths:
      raise UserError(f'--pseudo_dir={pseudo_dir}: no pseudo_coco.json or pseudo-*.coco.json; '
                      'precision/recall need the teacher\'s scored detections')
    self.labeler_threshold = meta.get('score_threshold')

  def iou_threshold(self, iou_threshold):
    return iou_threshold

  def index_reference(self, reference_source):
    return quality.index_reference_boxes(reference_source)

  def panels(self, ex, reference, panel_size, names):
    return render.detection_panels(ex, reference, panel_size, names)

  def metrics(self, source, reference, thresholds, iou_threshold, num_classes, names):
    if not self.json_paths:
      return {}
    threshold = self.labeler_threshold if self.labeler_threshold is not None else 0.5
    return {'detection': quality.detection_metrics(self.json_paths, reference, thresholds,
                                                   iou_threshold, threshold, num_classes,
                                                   names)}


class SegmentationReport(ReportPart):
  """Pseudo masks: the ignored share and, with a reference, pixel accuracy and IoU."""

  def index_reference(self, reference_source):
    return quality.index_reference_masks(reference_source)

  def panels(self, ex, reference, panel_size, names):
    return render.segmentation_panels(ex, reference, panel_size, names)

  def metrics(self, source, reference, thresholds, iou_threshold, num_classes, names):
    return {'segmentation': quality.segmentation_metrics(iter(source.dataset()), reference,
                                                         num_classes, names)}
