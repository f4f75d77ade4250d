"""pseudo_label_source: the pseudo-labeler's output folder as a Source for the student.

Detection: the chunks' tf.Examples hold every box the labeler wrote (score >= its floor,
`score_floor` in meta.json, not dropped by class-agnostic suppression) with its score; the
source keeps those with score >= `score_threshold` (default: the labeler's own threshold,
meta.json's `score_threshold`), so one labeling pass serves students at any threshold down to
the floor. With `ignore_threshold` below `score_threshold`, the boxes between the two are
kept too, as ignored regions (class F.IGNORE_BOX_CLASS): the anchors they match count as
neither object nor background in the student's loss (rethink_st/data/pipeline.py), so a
digit the teacher was unsure of is not taught as background. The paper does not do this; it
is off (None) unless bound. The detections below the floor or suppressed are in the COCO JSON
files alone, for the report. Segmentation pseudo masks are used as written (their threshold
is the labeler's `mask_threshold`).

The source carries the folder's `label_space` (meta.json; the student refuses pseudo labels
of another label space than its task's), its `score_threshold`, and `pseudo_set`
(`pseudo_set_density`), how densely it labels its images at that threshold, which the
student reports and warns about."""
import os
from typing import Any, Dict, Optional

import gin
import tensorflow as tf

from rethink_st.data import features as F
from rethink_st.data import label_space as label_space_lib
from rethink_st.data import sources
from rethink_st.errors import UserError
from rethink_st.pseudo_label import shards
from rethink_st.training import tasks

THRESHOLD_BINDING = 'rethink_st.pseudo_label.source.pseudo_label_source.score_threshold'
_BOX_KEYS = (F.CLASSES, F.IS_CROWD, F.AREA, F.BOXES, F.SCORES)


class PseudoLabelSource(sources.TFRecordSource):
  """A pseudo-label folder's records; detection boxes below `score_threshold` left out, or
  with `ignore_threshold`, those between the two kept as ignored (class F.IGNORE_BOX_CLASS)."""

  def __init__(self, file_pattern, *, num_classes, score_threshold: Optional[float],
               ignore_threshold: Optional[float] = None):
    self.score_threshold = score_threshold
    self.ignore_threshold = ignore_threshold
    super().__init__(file_pattern, num_classes=num_classes)

  def _keep(self, example):
    if self.score_threshold is None or F.SCORES not in example:
      return example
    scores = example[F.SCORES]
    floor = self.score_threshold if self.ignore_threshold is None else self.ignore_threshold
    keep = scores >= tf.constant(floor, tf.float32)
    out = dict(example)
    for key in _BOX_KEYS:
      out[key] = tf.boolean_mask(example[key], keep)
    if self.ignore_threshold is not None:
      unsure = tf.boolean_mask(scores, keep) < tf.constant(self.score_threshold, tf.float32)
      classes = out[F.CLASSES]
      out[F.CLASSES] = tf.where(unsure, tf.cast(F.IGNORE_BOX_CLASS, classes.dtype), classes)
    return out

  def _decode(self, source_id, serialized):
    return self._keep(super()._decode(source_id, serialized))

  def _decode_without_masks(self, source_id, serialized):
    return self._keep(super()._decode_without_masks(source_id, serialized))


def check_score_threshold(where: str, value) -> float:
  """A score threshold in [0, 1], or one UserError line naming `where`."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
    raise UserError(f'{where}={value!r} must be a number in [0, 1]')
  return float(value)


@gin.configurable
def pseudo_label_source(directory: str, require_complete: bool = True,
                        score_threshold: Optional[float] = None,
                        ignore_threshold: Optional[float] = None) -> PseudoLabelSource:
  """The complete chunks in `directory`, with the label space recorded in its meta.json.

  require_complete: stop (one line) unless every host of the labeling run has finished.
  score_threshold: detection: keep the pseudo boxes of score >= this (bin/train_student.py
    --pseudo_label_threshold sets it); None: the labeler's run_pseudo_label.score_threshold.
    Below the floor the boxes were written at (meta.json's score_floor; labels made before
    floors existed: their score_threshold) is one UserError line.
  ignore_threshold: detection: also keep the boxes of score in [ignore_threshold,
    score_threshold), as ignored regions (module docstring); None: no such band. At or above
    the floor and below the score threshold, else one UserError line.
  """
  meta = check_folder(directory, 'pseudo_label_source.directory', require_complete)
  threshold = resolve_threshold(meta, directory, score_threshold)
  ignore = resolve_ignore_threshold(meta, directory, threshold, ignore_threshold)
  source = PseudoLabelSource(shards.tfrecord_pattern(directory),
                             num_classes=int(meta['num_classes']), score_threshold=threshold,
                             ignore_threshold=ignore)
  source.label_space = label_space_of_folder(meta)
  stats = shards.complete_stats(directory)
  source.pseudo_set = dict(pseudo_set_density(stats, threshold, meta), directory=directory)
  return source


def resolve_threshold(meta: Dict[str, Any], directory: str,
                      score_threshold: Optional[float]) -> Optional[float]:
  """The score threshold a student reads a folder at (None: segmentation, no threshold)."""
  kind_labeler = tasks.find_labeler_class(meta.get('kind'))
  if kind_labeler is None or not kind_labeler.scored:
    if score_threshold is not None:
      raise UserError(f'pseudo_label_source.score_threshold={score_threshold!r}: {directory} '
                      f'holds {meta.get("kind")} pseudo labels; a score threshold applies to '
                      'detection boxes only')
    return None
  labeler = meta.get('score_threshold')   # None: a folder written without one
  if score_threshold is None:
    return None if labeler is None else float(labeler)
  where = 'pseudo_label_source.score_threshold'
  return check_above_floor(where, check_score_threshold(where, score_threshold), meta, directory)


def check_above_floor(where: str, value: float, meta: Dict[str, Any], directory: str) -> float:
  """`value`, or one UserError line naming `where` if it is below the score floor the folder's
  boxes were written at (meta.json's score_floor; before floors existed: its score_threshold)."""
  floor = meta.get('score_floor', meta.get('score_threshold'))
  if floor is not None and value < float(floor) - 1e-9:
    raise UserError(f'{where}={value:g} is below the score floor {floor:g} the pseudo labels '
                    f'in {directory} were written at; label again with '
                    f'run_pseudo_label.score_floor <= {value:g}')
  return value


def resolve_ignore_threshold(meta: Dict[str, Any], directory: str, threshold: Optional[float],
                             ignore_threshold: Optional[float]) -> Optional[float]:
  """The lower end of the ignore band (None: none), or one UserError line naming
  pseudo_label_source.ignore_threshold."""
  if ignore_threshold is None:
    return None
  where = 'pseudo_label_source.ignore_threshold'
  value = check_score_threshold(where, ignore_threshold)
  if threshold is None:
    raise UserError(f'{where}={value:g}: {directory} holds {meta.get("kind")} pseudo labels '
                    'without scores; an ignore band applies to detection boxes only')
  if value >= threshold:
    raise UserError(f'{where}={value:g} must be below the score threshold {threshold:g} '
                    '(the band is [ignore_threshold, score_threshold))')
  return check_above_floor(where, value, meta, directory)


def label_space_of_folder(meta: Dict[str, Any]) -> label_space_lib.LabelSpace:
  """The label space meta.json records (contiguous ids for a folder written before it did)."""
  if meta.get('label_space'):
    return label_space_lib.LabelSpace.from_json(meta['label_space'])
  return label_space_lib.LabelSpace.contiguous(int(meta['num_classes']))


def check_folder(directory: str, where: str, require_complete: bool = True) -> Dict[str, Any]:
  """A pseudo-label folder's meta.json, or one UserError line `<where>=<directory>: ...` if it
  is missing, not a pseudo-label folder, not finished (require_complete) or without a
  complete chunk. `where` names what gave the folder (a binding, or bin/train_student.py's
  --pseudo_labels)."""
  if not tf.io.gfile.isdir(directory):
    raise UserError(f'{where}={directory}: no such folder')
  if not tf.io.gfile.exists(os.path.join(directory, 'meta.json')):
    raise UserError(f'{where}={directory}: not a pseudo-label folder (no meta.json; '
                    'bin/pseudo_label.py writes one)')
  meta = shards.read_meta(directory)
  if require_complete and not shards.all_hosts_done(directory, int(meta['num_shards'])):
    raise UserError(f'{where}={directory}: labeling is not finished '
                    f'(not all {meta["num_shards"]} hosts wrote their .done file)')
  if not shards.list_tfrecords(directory):
    raise UserError(f'{where}={directory}: no complete chunk')
  return meta


def pseudo_set_density(stats: Dict[str, Any], score_threshold: Optional[float] = None,
                       meta: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
  """How densely a pseudo-label folder labels its images, from its merged counters: images,
  and boxes_per_image (detection, at `score_threshold`: the labeler's own count at its
  threshold, else from the written boxes' score histogram) or labeled_pixel_fraction
  (segmentation: the pixels that carry a label rather than the ignore value). A teacher too
  weak for the threshold gives a set with almost no label, which a student trains on
  without any error."""
  # A folder's stats without a kind of their own (none merged yet) count as detection's.
  labeler = tasks.find_labeler_class(stats.get('kind')) or tasks.labelers.DetectionLabeler
  return labeler.density(stats, score_threshold, meta)
