"""Pseudo-label report: the paper's Appendix G pictures, and the numbers behind them.

`write_report(pseudo_dir, out_dir, reference_source=None, ...)` reads the pseudo-labeler's
output folder (`rethink_st/pseudo_label/shards.py`) and writes into out_dir:

    pseudo_labels.png     the first `num_images` pseudo-labeled images. Detection: the kept
                          pseudo boxes with their scores. Segmentation: the image and its
                          pseudo mask (class colours on black, ignored pixels white). With a
                          reference, its held-back labels are drawn beside them.
    report.json           all numbers; report.md and the plot are made from it
    report.md             Markdown tables
    precision_recall.png  detection: precision, recall, F1 (with a reference) and pseudo
                          boxes per image against the score threshold
    per_class_iou.png     segmentation with a reference: IoU of the pseudo masks per class

What is measured (precision and recall of pseudo boxes at every score threshold, with and
without the labeler's class-agnostic suppression; accuracy and IoU of pseudo masks) is
`rethink_st/evaluation/pseudo_label_quality.py`; how it is drawn and written,
`rethink_st/evaluation/pseudo_label_report_render.py`. This module reads the folder, checks
what it was given, and puts the report together (bin/pseudo_label_report.py, and each round
of run_self_training).
"""
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import gin
import tensorflow as tf

from rethink_st.data import sources
from rethink_st.errors import UserError
from rethink_st.evaluation import pseudo_label_quality as quality
from rethink_st.evaluation import pseudo_label_report_render as render
from rethink_st.pseudo_label import shards
from rethink_st.pseudo_label import source as pseudo_source
from rethink_st.training import tasks

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
GRID_FILE = 'pseudo_labels.png'
JSON_FILE = 'report.json'
MARKDOWN_FILE = 'report.md'


# ----------------------------------------------------------------------------- inputs


def parse_reference(spec: str, where: str = '--reference'):
  """A reference Source from a short string: 'digit_scenes:<split>' (digit_scenes_source,
  its data_dir from gin or the default dataset) or anything else as a TFRecord glob.
  Errors are one UserError line starting with `where`."""
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
  report dict (report.json's content). What is measured: rethink_st/evaluation/
  pseudo_label_quality.py.

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
  thresholds, iou_threshold = _check_args(pseudo_dir, out_dir, num_images, thresholds,
                                          iou_threshold)
  meta = shards.read_meta(pseudo_dir)
  kind = meta.get('kind')
  part_class = tasks.labeler_class(kind, f'--pseudo_dir={pseudo_dir}: meta.json kind').report
  num_classes = int(meta['num_classes'])
  names = render.class_names(num_classes, class_names)
  prefixes = _complete_prefixes(pseudo_dir)
  if not prefixes:
    raise UserError(f'--pseudo_dir={pseudo_dir}: no complete chunk (pseudo-*.tfrecord)')
  part = part_class(pseudo_dir, prefixes, meta, reference_source)   # the kind's, checked
  ref_classes = getattr(reference_source, 'num_classes', None)
  if reference_source is not None and ref_classes is not None and ref_classes != num_classes:
    raise UserError(f'reference {reference_source.name} has {ref_classes} classes, the '
                    f'pseudo labels in {pseudo_dir} have {num_classes}')
  labeler_threshold = part.labeler_threshold
  if labeler_threshold is not None:
    thresholds = sorted(set(thresholds) | {float(labeler_threshold)})
  num_shards = int(meta.get('num_shards', 1))

  # The labeler's own boxes: no student's ignore band (a binding of it reaches here too).
  source = pseudo_source.pseudo_label_source(pseudo_dir, require_complete=False,
                                             ignore_threshold=None)
  reference = (part.index_reference(reference_source) if reference_source is not None
               else None)
  tf.io.gfile.makedirs(out_dir)

  # The grid (and a check that the reference is the right one before the long pass).
  panels, titles, grid_ids = [], [], []
  for ex in source.dataset().take(max(num_images, 1)):
    ex = {k: v.numpy() for k, v in ex.items()}
    sid, p, t = part.panels(ex, reference, panel_size, names)
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
    render.save_grid(panels, titles, os.path.join(out_dir, GRID_FILE),
               ncols=max(1, images_per_row) * per_example)
    files['grid'] = GRID_FILE

  stats_paths = [p + '.stats.json' for p in prefixes if tf.io.gfile.exists(p + '.stats.json')]
  stats = shards.merge_stats(quality.read_json(p) for p in stats_paths) if stats_paths else {}
  report: Dict[str, Any] = {
      'pseudo_dir': pseudo_dir, 'kind': kind, 'num_classes': num_classes,
      'source': meta.get('source'), 'teacher_checkpoint': meta.get('teacher_checkpoint'),
      'labeler_score_threshold': labeler_threshold,
      'class_agnostic_nms_iou': meta.get('class_agnostic_nms_iou'),
      'complete': shards.all_hosts_done(pseudo_dir, num_shards), 'chunks': len(prefixes),
      'reference': None if reference_source is None else reference_source.name,
      'iou_threshold': part.iou_threshold(iou_threshold),
      'stats': {k: v for k, v in stats.items()
                if k in ('images', 'boxes', 'suppressed', 'boxes_per_image',
                         'images_without_labels', 'ignored_fraction')}}
  report.update(part.metrics(source, reference, thresholds, iou_threshold, num_classes,
                             names))
  plot = render.plot_file(report)
  if plot:
    files['plot'] = plot
  files.update(json=JSON_FILE, markdown=MARKDOWN_FILE)
  report['files'] = files
  # JSON first; the Markdown and the plot are made from it.
  with tf.io.gfile.GFile(os.path.join(out_dir, JSON_FILE), 'w') as f:
    f.write(json.dumps(report, indent=1))
  with tf.io.gfile.GFile(os.path.join(out_dir, MARKDOWN_FILE), 'w') as f:
    f.write(render.report_markdown(report))
  render.plot_report(report, out_dir)
  return report
