"""What a pseudo-label report looks like: its picture grid, report.md and its plot.

    example_panels(example, ...)  one pseudo-labeled example as grid panels: detection, the
                                  kept pseudo boxes with their scores; segmentation, the image
                                  and its pseudo mask (class colours on black, ignored pixels
                                  white); with a reference, its held-back labels beside them
    save_grid(panels, ...)        the panels as one PNG (pseudo_labels.png)
    report_markdown(report)       report.md from report.json's dict
    plot_report(report, out_dir)  precision_recall.png (detection: precision, recall, F1 and
                                  pseudo boxes per image against the score threshold) or
                                  per_class_iou.png (segmentation with a reference)

The numbers come from `pseudo_label_quality`; `rethink_st/pseudo_label_report.py` puts the
report together.
"""
import io
import os
import tempfile
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
import tensorflow as tf

from rethink_st import drawing
from rethink_st import features as F
from rethink_st.evaluation import pseudo_label_quality as quality

PR_PLOT_FILE = 'precision_recall.png'
IOU_PLOT_FILE = 'per_class_iou.png'


def class_names(num_classes: int, given: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
  """Names of class ids 1..num_classes: `given`, else the digits for 10 classes, else the
  numbers."""
  if given is not None:
    return tuple(str(n) for n in given)
  if num_classes == len(drawing.DIGIT_NAMES):
    return drawing.DIGIT_NAMES
  return tuple(str(c) for c in range(1, num_classes + 1))


def _write_bytes(path: str, data: bytes) -> None:
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(data)


# ----------------------------------------------------------------------------- the grid


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


def save_grid(panels, titles, path, ncols):
  with tempfile.TemporaryDirectory() as tmp:
    local = drawing.save_grid(panels, os.path.join(tmp, 'grid.png'), ncols=ncols,
                              titles=titles)
    tf.io.gfile.copy(local, path, overwrite=True)


def _reference(ex, reference):
  sid = quality.source_id(ex[F.SOURCE_ID])
  return sid, (reference.get(sid) if reference is not None else None)


def detection_panels(ex, reference, panel_size, names):
  """(source_id, panels, titles) of one pseudo-labeled image: its pseudo boxes with their
  scores, and beside them the reference's boxes (with a reference)."""
  sid, ref = _reference(ex, reference)
  image = ex[F.IMAGE]
  panels, titles = [], []
  n = len(ex[F.CLASSES])
  panels.append(_panel(image, boxes=ex[F.BOXES], classes=ex[F.CLASSES],
                       scores=ex.get(F.SCORES), panel_size=panel_size, names=names))
  titles.append(f'#{sid} pseudo: {n}')
  _add_reference_panel(panels, titles, reference, ref, lambda: (
      _panel(image, boxes=ref['boxes'], classes=ref['classes'], panel_size=panel_size,
             names=names), f'held back: {len(ref["classes"])}'))
  return sid, panels, titles


def _add_reference_panel(panels, titles, reference, ref, draw) -> None:
  """With a reference: its panel and title (`draw()` -> (panel, title)) when it holds the
  image, else a blank panel titled 'not in reference'. Without one: nothing."""
  if reference is None:
    return
  panel, title = draw() if ref is not None else (np.full_like(panels[-1], 255),
                                                  'not in reference')
  panels.append(panel)
  titles.append(title)


def segmentation_panels(ex, reference, panel_size, names):
  """(source_id, panels, titles) of one pseudo-labeled image: the image, the reference's
  mask (with a reference) and its pseudo mask."""
  sid, ref = _reference(ex, reference)
  image = ex[F.IMAGE]
  panels, titles = [], []
  mask = ex[F.SEMANTIC_MASK][..., 0]
  ignored = float((mask == F.IGNORE_LABEL).mean())
  panels.append(_panel(image, panel_size=panel_size))
  titles.append(f'#{sid}')
  _add_reference_panel(panels, titles, reference, ref, lambda: (
      _panel(image, semantic_mask=quality.decode_png(ref['png']), on_black=True,
             panel_size=panel_size), 'held back'))
  panels.append(_panel(image, semantic_mask=mask, on_black=True, panel_size=panel_size))
  titles.append(f'pseudo ({ignored:.0%} ign.)')
  return sid, panels, titles


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


def plot_file(report: Dict[str, Any]) -> Optional[str]:
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
