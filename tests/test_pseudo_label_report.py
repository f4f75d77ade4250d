"""Tests for rethink_st.pseudo_label_report (and the evaluation modules it puts together:
pseudo_label_quality, pseudo_label_report_render) on hand-made pseudo-label folders."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import rethink_st  # noqa: F401
from rethink_st import drawing
from rethink_st import features as F
from rethink_st import pseudo_label_report as plr
from rethink_st.data import tfexample
from rethink_st.errors import UserError
from rethink_st.evaluation import pseudo_label_quality
from rethink_st.pseudo_label import shards
from helpers import run_bin

SIZE = 32


def _image(seed):
  rng = np.random.default_rng(seed)
  return rng.integers(60, 200, (SIZE, SIZE, 3), dtype=np.uint8)


def _xywh(box):
  """Normalized [ymin, xmin, ymax, xmax] -> pixel [x, y, w, h] of a SIZE x SIZE image."""
  y0, x0, y1, x1 = (v * SIZE for v in box)
  return [x0, y0, x1 - x0, y1 - y0]


def _write_reference(path, examples):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.TFRecordWriter(path) as w:
    for ex in examples:
      w.write(tfexample.encode_example(ex))


def _meta(kind, num_shards=1):
  return {'kind': kind, 'num_classes': 10, 'num_shards': num_shards, 'chunk_size': 1,
          'score_threshold': 0.5, 'mask_threshold': 0.5, 'source': 'hand-made',
          'teacher_checkpoint': 'none'}


def _write_detection_chunk(pseudo_dir, chunk, sid, image, dets, threshold=0.5):
  """One chunk with one image; dets: (normalized box, class, score); boxes >= threshold kept."""
  kept = [d for d in dets if d[2] >= threshold]
  example = {F.SOURCE_ID: sid, F.IMAGE: image,
             F.BOXES: np.array([d[0] for d in kept], np.float32).reshape(-1, 4),
             F.CLASSES: np.array([d[1] for d in kept], np.int64),
             F.SCORES: np.array([d[2] for d in kept], np.float32)}
  coco = {'images': [{'id': int(sid), 'file_name': sid, 'height': SIZE, 'width': SIZE}],
          'categories': [{'id': c, 'name': str(c)} for c in range(1, 11)],
          'annotations': [{'image_id': int(sid), 'category_id': c, 'bbox': _xywh(b),
                           'score': s, 'iscrowd': 0} for b, c, s in dets]}
  counters = shards.Counters(10, 'detection')
  counters.add_detection(example[F.CLASSES], np.array([d[2] for d in dets]))
  writer = shards.ChunkWriter(shards.chunk_prefix(pseudo_dir, 0, 1, chunk))
  writer.write(tfexample.encode_example(example))
  writer.close(coco, counters.to_dict())


# Reference boxes (normalized [ymin, xmin, ymax, xmax]).
G1, G2, G3 = [0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9], [0.1, 0.6, 0.4, 0.9]
G4, CROWD = [0.5, 0.1, 0.9, 0.4], [0.0, 0.0, 0.3, 1.0]
SHIFTED_G4 = [0.5, 0.3, 0.9, 0.6]   # IoU with G4 = 1/5: no match


@pytest.fixture(scope='module')
def detection_case(tmp_path_factory):
  """Image '1': 3 reference boxes; image '2': 1 box and a crowd box; image '3' is only in
  the reference. Teacher detections, by score:
    A 0.9 on G1 class 3 (TP)          B 0.6 on G2 class 5 (TP)
    C 0.7 on G3 with the wrong class (FP)
    D 0.3 a duplicate of G1 (FP: G1 is taken by A)
    E 0.2 on G4 class 8 (TP)          F 0.55 shifted off G4 (FP)
    G 0.95 inside the crowd box, its class (ignored)
  At 0.5: kept A, B, C, F (+G ignored): precision 2/4, recall 2/4.
  """
  root = tmp_path_factory.mktemp('det')
  pseudo_dir = str(root / 'pseudo')
  shards.write_meta(pseudo_dir, _meta('detection'))
  _write_detection_chunk(pseudo_dir, 0, '1', _image(1), [
      (G1, 3, 0.9), (G2, 5, 0.6), (G3, 4, 0.7), ([0.1, 0.12, 0.4, 0.42], 3, 0.3)])
  _write_detection_chunk(pseudo_dir, 1, '2', _image(2), [
      ([0.0, 0.2, 0.2, 0.5], 2, 0.95), (SHIFTED_G4, 8, 0.55), (G4, 8, 0.2)])
  shards.mark_host_done(pseudo_dir, 0, 1, {'images': 2, 'unreadable_skipped': 0})
  shards.merge_outputs(pseudo_dir)
  ref = str(root / 'reference.tfrecord')
  _write_reference(ref, [
      {F.SOURCE_ID: '1', F.IMAGE: _image(1), F.BOXES: np.array([G1, G2, G3], np.float32),
       F.CLASSES: np.array([3, 5, 6])},
      {F.SOURCE_ID: '2', F.IMAGE: _image(2), F.BOXES: np.array([G4, CROWD], np.float32),
       F.CLASSES: np.array([8, 2]), F.IS_CROWD: np.array([0, 1])},
      {F.SOURCE_ID: '3', F.IMAGE: _image(3), F.BOXES: np.array([G1], np.float32),
       F.CLASSES: np.array([1])},
  ])
  return pseudo_dir, ref


def _row(report, t):
  return next(r for r in report['detection']['thresholds'] if abs(r['score_threshold'] - t)
              < 1e-9)


def _assert_png(path, min_size):
  assert os.path.exists(path)
  im = np.asarray(Image.open(path).convert('RGB'))
  assert im.shape[0] >= min_size[0] and im.shape[1] >= min_size[1], im.shape
  assert len(np.unique(im.reshape(-1, 3), axis=0)) > 10
  return im


def _has_colour(im, colour):
  return bool((im.reshape(-1, 3) == np.array(colour)).all(1).any())


def test_match_detections_is_greedy_by_score_and_class_aware():
  gt = np.array([[0, 0, 10, 10], [20, 0, 10, 10], [0, 20, 30, 30]], float)
  # The 0.5 detection overlaps gt 0 better, but the 0.9 one came first and took it.
  dets = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [20, 0, 10, 10], [5, 25, 10, 10]], float)
  scores, status = pseudo_label_quality.match_detections(
      dets, [1, 1, 2, 1], [0.5, 0.9, 0.8, 0.7], gt, [1, 3, 1], gt_is_crowd=[0, 0, 1])
  np.testing.assert_allclose(scores, [0.9, 0.8, 0.7, 0.5])
  # 0.9 -> gt 0 (TP); 0.8 class 2 on gt 1 of class 3 (FP); 0.7 inside the class-1 crowd
  # box (ignored); 0.5 finds gt 0 taken (FP).
  assert status.tolist() == [1, 0, -1, 0]
  scores, status = pseudo_label_quality.match_detections(np.zeros((0, 4)), [], [], gt, [1, 2, 1])
  assert len(scores) == 0 and len(status) == 0
  _, status = pseudo_label_quality.match_detections(dets[:1], [1], [0.4], np.zeros((0, 4)), [])
  assert status.tolist() == [0]


def test_detection_precision_recall_per_threshold(detection_case, tmp_path):
  pseudo_dir, ref = detection_case
  out = str(tmp_path / 'report')
  report = plr.write_report(pseudo_dir, out, reference_source=plr.parse_reference(ref),
                            num_images=2)
  det = report['detection']
  assert det['images'] == 2 and det['images_evaluated'] == 2
  assert det['images_not_in_reference'] == 0 and det['reference_boxes'] == 4
  r = _row(report, 0.5)   # A, B TP; C, F FP; G ignored
  assert (r['tp'], r['fp'], r['fn'], r['ignored'], r['boxes']) == (2, 2, 2, 1, 5)
  assert r['precision'] == pytest.approx(2 / 4) and r['recall'] == pytest.approx(2 / 4)
  assert r['f1'] == pytest.approx(0.5) and r['boxes_per_image'] == pytest.approx(2.5)
  r = _row(report, 0.2)   # + D (FP), E (TP)
  assert (r['tp'], r['fp'], r['fn']) == (3, 3, 1)
  assert r['precision'] == pytest.approx(3 / 6) and r['recall'] == pytest.approx(3 / 4)
  r = _row(report, 0.6)   # A, B, C
  assert (r['tp'], r['fp']) == (2, 1) and r['precision'] == pytest.approx(2 / 3)
  r = _row(report, 0.9)   # A (G ignored)
  assert (r['tp'], r['fp'], r['boxes']) == (1, 0, 2) and r['precision'] == 1.0
  assert r['recall'] == pytest.approx(1 / 4) and r['f1'] == pytest.approx(0.4)
  per = {c['class_id']: c for c in det['per_class_at_labeler_threshold']}
  assert (per[3]['tp'], per[3]['fp'], per[3]['fn']) == (1, 0, 0)
  assert (per[4]['fp'], per[6]['fn'], per[8]['fp'], per[8]['fn']) == (1, 1, 1, 1)
  assert per[2]['fn'] == 0    # the crowd box is not a miss

  on_disk = json.load(open(os.path.join(out, 'report.json')))
  assert on_disk['detection']['thresholds'] == det['thresholds']
  assert on_disk['labeler_score_threshold'] == 0.5 and on_disk['complete']
  md = open(os.path.join(out, 'report.md')).read()
  assert '| 0.5 (labeler) | 2.5 | 5 | 50.0 | 50.0 | 50.0 | 2 | 2 | 2 | 1 |' in md
  grid = _assert_png(os.path.join(out, 'pseudo_labels.png'), (128, 4 * 128))
  assert _has_colour(grid, drawing.class_colour(3))   # the class-3 box / label of image 1
  _assert_png(os.path.join(out, 'precision_recall.png'), (200, 300))


def test_detection_reads_merged_json_when_chunks_have_none(detection_case, tmp_path):
  pseudo_dir, ref = detection_case
  import shutil  # pylint: disable=g-import-not-at-top
  copy = str(tmp_path / 'pseudo')
  shutil.copytree(pseudo_dir, copy)
  for name in os.listdir(copy):
    if name.endswith('.coco.json'):
      os.remove(os.path.join(copy, name))
  report = plr.write_report(copy, str(tmp_path / 'r'), reference_source=plr.parse_reference(ref),
                            num_images=0, thresholds=(0.5,))
  assert (_row(report, 0.5)['tp'], _row(report, 0.5)['fp']) == (2, 2)
  assert 'grid' not in report['files']


def test_detection_without_reference(detection_case, tmp_path):
  pseudo_dir, _ = detection_case
  out = str(tmp_path / 'r')
  report = plr.write_report(pseudo_dir, out, num_images=1, thresholds=(0.1, 0.5, 0.9))
  assert [r['boxes'] for r in report['detection']['thresholds']] == [7, 5, 2]
  assert 'precision' not in report['detection']['thresholds'][0]
  assert report['stats']['images'] == 2 and report['stats']['boxes'] == 5
  _assert_png(os.path.join(out, 'pseudo_labels.png'), (128, 128))
  assert os.path.exists(os.path.join(out, 'precision_recall.png'))


@pytest.fixture(scope='module')
def suppression_case(tmp_path_factory):
  """One image, reference G1 (class 3) and G2 (class 5), written the labeler's way (the
  streaming ChunkWriter). Detections by score, S: dropped by class-agnostic suppression:
    A 0.9 on G1 class 3 (TP)     B 0.8 on G1 class 7, S (FP without suppression)
    C 0.7 on G2 class 6 (FP)     D 0.6 on G2 class 5, S (TP without suppression)
    E 0.3 on G3 class 4 (FP)
  """
  root = tmp_path_factory.mktemp('suppression')
  pseudo_dir = str(root / 'pseudo')
  shards.write_meta(pseudo_dir, dict(_meta('detection'), class_agnostic_nms_iou=0.5))
  dets = [(G1, 3, 0.9, 0), (G1, 7, 0.8, 1), (G2, 6, 0.7, 0), (G2, 5, 0.6, 1), (G3, 4, 0.3, 0)]
  boxes, classes, scores, suppressed = (np.array(v) for v in zip(*dets))
  kept = (scores >= 0.5) & (suppressed == 0)
  writer = shards.ChunkWriter(shards.chunk_prefix(pseudo_dir, 0, 1, 0),
                              coco_categories=[{'id': c, 'name': str(c)} for c in range(1, 11)])
  writer.write(tfexample.encode_example({
      F.SOURCE_ID: '1', F.IMAGE: _image(1), F.BOXES: boxes[kept].astype(np.float32),
      F.CLASSES: classes[kept], F.SCORES: scores[kept].astype(np.float32)}))
  writer.add_coco_image(b'1', SIZE, SIZE, boxes, classes, scores, suppressed)
  counters = shards.Counters(10, 'detection', class_agnostic_nms_iou=0.5)
  counters.add_detection(classes[kept], scores, suppressed=2)
  writer.close(None, counters.to_dict())
  shards.mark_host_done(pseudo_dir, 0, 1, {'images': 1, 'unreadable_skipped': 0})
  shards.merge_outputs(pseudo_dir)
  ref = str(root / 'reference.tfrecord')
  _write_reference(ref, [{F.SOURCE_ID: '1', F.IMAGE: _image(1),
                          F.BOXES: np.array([G1, G2], np.float32), F.CLASSES: np.array([3, 5])}])
  return pseudo_dir, ref


def test_precision_recall_with_and_without_class_agnostic_suppression(suppression_case,
                                                                       tmp_path):
  pseudo_dir, ref = suppression_case
  out = str(tmp_path / 'report')
  report = plr.write_report(pseudo_dir, out, reference_source=plr.parse_reference(ref),
                            num_images=1, thresholds=(0.2, 0.75))
  assert [r['score_threshold'] for r in report['detection']['thresholds']] == [0.2, 0.5, 0.75]

  def counts(row):
    return row['boxes'], row['tp'], row['fp'], row['fn']
  r = _row(report, 0.5)     # kept A, C; without: A, B, C, D
  assert counts(r) == (2, 1, 1, 1) and r['suppressed'] == 2
  assert counts(r['without_suppression']) == (4, 2, 2, 0)
  assert (r['precision'], r['recall']) == (0.5, 0.5)
  assert (r['without_suppression']['precision'], r['without_suppression']['recall']) == (0.5, 1)
  r = _row(report, 0.75)    # kept A; without: A, B
  assert counts(r) == (1, 1, 0, 1) and r['suppressed'] == 1
  assert counts(r['without_suppression']) == (2, 1, 1, 1)
  r = _row(report, 0.2)     # kept A, C, E; without: all 5
  assert counts(r) == (3, 1, 2, 1) and r['suppressed'] == 2
  assert counts(r['without_suppression']) == (5, 2, 3, 0)
  per = {c['class_id']: c for c in report['detection']['per_class_at_labeler_threshold']}
  assert (per[5]['tp'], per[5]['fn'], per[7]['fp']) == (0, 1, 0)  # kept boxes only
  assert report['stats']['suppressed'] == 2 and report['class_agnostic_nms_iou'] == 0.5
  md = open(os.path.join(out, 'report.md')).read()
  assert ("At the labeler's score threshold 0.5: 2 pseudo boxes with class-agnostic "
          'suppression at IoU >= 0.5 (2 suppressed): precision 50.0, recall 50.0; without it, '
          '4 boxes: precision 50.0, recall 100.0.') in md
  assert '| 0.5 (labeler) | 2 | 2 | 50.0 | 50.0 | 50.0 | 1 | 1 | 1 | 0 | 2 | 50.0 | 100.0 |' in md
  assert '| class_agnostic_nms_iou | 0.5 |' in md
  # what the student reads: A and C
  from rethink_st.pseudo_label import source as pseudo_source  # pylint: disable=g-import-not-at-top
  ex = next(iter(pseudo_source.pseudo_label_source(pseudo_dir).dataset()))
  assert ex[F.CLASSES].numpy().tolist() == [3, 6]


# Segmentation: 16x16 masks made of 4x4 blocks of a 4x4 pattern.
def _blocks(rows):
  return np.kron(np.array(rows, np.uint8), np.ones((4, 4), np.uint8))


REF_1 = _blocks([[1, 1, 0, 0]] * 4)
PSEUDO_1 = _blocks([[1, 255, 2, 0]] * 4)   # column 2 wrong, column 1 ignored
REF_2 = _blocks([[3, 3, 3, 255]] * 4)
PSEUDO_2 = _blocks([[3, 3, 3, 3]] * 4)


@pytest.fixture(scope='module')
def segmentation_case(tmp_path_factory):
  root = tmp_path_factory.mktemp('seg')
  pseudo_dir = str(root / 'pseudo')
  shards.write_meta(pseudo_dir, _meta('segmentation'))
  for chunk, (sid, mask) in enumerate([('1', PSEUDO_1), ('2', PSEUDO_2)]):
    img = np.repeat((mask[..., None] % 16) * 15, 3, -1).astype(np.uint8)
    writer = shards.ChunkWriter(shards.chunk_prefix(pseudo_dir, 0, 1, chunk))
    writer.write(tfexample.encode_example({F.SOURCE_ID: sid, F.IMAGE: img,
                                           F.SEMANTIC_MASK: mask[..., None]}))
    counters = shards.Counters(10, 'segmentation')
    counters.add_segmentation(mask, F.IGNORE_LABEL)
    writer.close(None, counters.to_dict())
  shards.mark_host_done(pseudo_dir, 0, 1, {'images': 2, 'unreadable_skipped': 0})
  shards.merge_outputs(pseudo_dir)
  ref = str(root / 'reference.tfrecord')
  _write_reference(ref, [{F.SOURCE_ID: sid, F.IMAGE: np.zeros((16, 16, 3), np.uint8),
                          F.SEMANTIC_MASK: m[..., None]} for sid, m in [('1', REF_1),
                                                                         ('2', REF_2)]])
  return pseudo_dir, ref


def test_segmentation_accuracy_miou_and_ignored(segmentation_case, tmp_path):
  pseudo_dir, ref = segmentation_case
  out = str(tmp_path / 'report')
  report = plr.write_report(pseudo_dir, out, reference_source=plr.parse_reference(ref))
  seg = report['segmentation']
  assert seg['images'] == 2 and seg['images_evaluated'] == 2 and seg['pixels'] == 512
  assert seg['ignored_fraction'] == pytest.approx(64 / 512)
  # Counted pixels: image 1 columns 0, 2, 3 (192; 128 right), image 2 columns 0-2 (192 right).
  assert seg['evaluated_pixels'] == 384
  assert seg['pixel_accuracy'] == pytest.approx(320 / 384)
  # IoU: background 64/128, class 1 1, class 2 0 (predicted, absent), class 3 1.
  iou = {c['class_id']: c['IoU'] for c in seg['per_class_IoU']}
  assert iou[0] == pytest.approx(0.5) and iou[1] == 1.0 and iou[2] == 0.0 and iou[3] == 1.0
  assert iou[5] is None
  assert seg['mIoU'] == pytest.approx(2.5 / 4)
  # Reference-labeled pixels: 256 + 192; the pseudo mask ignores 64 of them.
  assert seg['reference_pixels_ignored'] == pytest.approx(64 / 448)
  md = open(os.path.join(out, 'report.md')).read()
  assert '| mIoU (%) | 62.5 |' in md and '| ignored pixels (%) | 12.5 |' in md
  grid = _assert_png(os.path.join(out, 'pseudo_labels.png'), (256, 6 * 256))
  # Panels of 256 pixels (16x16 masks enlarged 16 times), 4 pixels apart, titles 12 high:
  # image 1's pseudo mask is the third panel; its mask columns are 64 pixels wide.
  y, x = 4 + 12 + 10, 4 + 2 * (256 + 4) + 10
  assert tuple(grid[y, x]) == drawing.class_colour(1)
  assert tuple(grid[y, x + 64]) == (255, 255, 255)            # ignored: white
  assert tuple(grid[y, x + 128]) == drawing.class_colour(2)   # the wrong pseudo class
  assert tuple(grid[y, x + 192]) == (0, 0, 0)                 # background
  # The held-back mask beside it (second panel) has class 1 where the pseudo mask ignores.
  assert tuple(grid[y, x - 260 + 64]) == drawing.class_colour(1)
  _assert_png(os.path.join(out, 'per_class_iou.png'), (200, 300))


def test_segmentation_without_reference(segmentation_case, tmp_path):
  pseudo_dir, _ = segmentation_case
  report = plr.write_report(pseudo_dir, str(tmp_path / 'r'), num_images=1)
  assert report['segmentation'] == {'images': 2, 'pixels': 512,
                                    'ignored_fraction': pytest.approx(0.125)}
  assert 'plot' not in report['files']
  im = _assert_png(os.path.join(str(tmp_path / 'r'), 'pseudo_labels.png'), (128, 2 * 128))
  assert im.shape[1] < 3 * 256     # image and pseudo mask only


def test_perfect_pseudo_labels_of_digit_scenes(digit_scenes_dir, tmp_path):
  """Pseudo labels equal to the held-back labels of digit_scenes:unlabeled score 1."""
  import gin  # pylint: disable=g-import-not-at-top
  from rethink_st.data import digit_scenes  # pylint: disable=g-import-not-at-top
  pseudo_dir = str(tmp_path / 'pseudo')
  shards.write_meta(pseudo_dir, _meta('detection'))
  writer = shards.ChunkWriter(shards.chunk_prefix(pseudo_dir, 0, 1, 0))
  coco = {'images': [], 'annotations': [], 'categories': []}
  for ex in digit_scenes.read_examples(digit_scenes_dir, 'unlabeled', 6):
    sid, (h, w) = ex[F.SOURCE_ID].decode(), ex[F.IMAGE].shape[:2]
    scores = np.full(len(ex[F.CLASSES]), 0.8, np.float32)
    writer.write(tfexample.encode_example({**ex, F.SCORES: scores}))
    coco['images'].append({'id': int(sid), 'file_name': sid, 'height': h, 'width': w})
    for b, c in zip(ex[F.BOXES], ex[F.CLASSES]):
      y0, x0, y1, x1 = b * [h, w, h, w]
      coco['annotations'].append({'image_id': int(sid), 'category_id': int(c), 'score': 0.8,
                                  'bbox': [float(x0), float(y0), float(x1 - x0),
                                           float(y1 - y0)]})
  writer.close(coco, {'kind': 'detection', 'images': 6})
  with gin.unlock_config():
    gin.bind_parameter('rethink_st.data.sources.digit_scenes_source.data_dir', digit_scenes_dir)
  try:
    reference = plr.parse_reference('digit_scenes:unlabeled')
  finally:
    gin.clear_config()
  report = plr.write_report(pseudo_dir, str(tmp_path / 'r'), reference_source=reference,
                            num_images=4, thresholds=(0.5, 0.9))
  det = report['detection']
  assert det['images_evaluated'] == 6 and det['images_not_in_reference'] == 0
  assert det['reference_boxes'] > 6
  r5, r9 = det['thresholds']
  assert (r5['precision'], r5['recall'], r5['fn']) == (1.0, 1.0, 0)
  assert (r9['boxes'], r9['recall'], r9['precision']) == (0, 0.0, None)
  assert not report['complete']     # no .done file was written


def test_bad_input_is_one_clear_error(detection_case, segmentation_case, tmp_path):
  pseudo_dir, ref = detection_case
  out = str(tmp_path / 'r')
  with pytest.raises(UserError, match=r'^--pseudo_dir=.*/nope: no such folder(\n|$)'):
    plr.write_report(str(tmp_path / 'nope'), out)
  with pytest.raises(UserError, match=r'not a pseudo-label folder \(no meta.json\)(\n|$)'):
    plr.write_report(str(tmp_path), out)
  with pytest.raises(UserError, match=r'^write_report.thresholds=.*must be numbers in \[0, 1\]'):
    plr.write_report(pseudo_dir, out, thresholds=(0.5, 1.5))
  with pytest.raises(UserError, match=r'^write_report.iou_threshold=0 must be in \(0, 1\]'):
    plr.write_report(pseudo_dir, out, iou_threshold=0)
  with pytest.raises(UserError, match=r'^write_report.num_images=-1 '):
    plr.write_report(pseudo_dir, out, num_images=-1)
  with pytest.raises(UserError, match=r'^--reference=.*missing\*.tfrecord: .*matches no files'):
    plr.parse_reference(str(tmp_path / 'missing*.tfrecord'))
  with pytest.raises(UserError, match=r"^--reference=digit_scenes:bogus: .*unknown split"):
    plr.parse_reference('digit_scenes:bogus')
  # A reference that is not the labeled set.
  other = str(tmp_path / 'other.tfrecord')
  _write_reference(other, [{F.SOURCE_ID: '77', F.IMAGE: _image(0)}])
  with pytest.raises(UserError, match=r'has none of the first 1 pseudo-labeled images'):
    plr.write_report(pseudo_dir, out, reference_source=plr.parse_reference(other),
                     num_images=1)
  # Segmentation needs reference masks.
  with pytest.raises(UserError, match=r'has no semantic masks'):
    plr.write_report(segmentation_case[0], out, reference_source=plr.parse_reference(ref))
  empty = str(tmp_path / 'empty')
  shards.write_meta(empty, _meta('detection'))
  with pytest.raises(UserError, match=r'no complete chunk'):
    plr.write_report(empty, out)


def test_binary(detection_case, tmp_path):
  """bin/pseudo_label_report.py run as a script with its absl flags (helpers.run_bin, in
  this process)."""
  pseudo_dir, ref = detection_case
  out = str(tmp_path / 'r')
  done = run_bin('pseudo_label_report', f'--pseudo_dir={pseudo_dir}', f'--output_dir={out}',
                 f'--reference={ref}', '--gin_param=write_report.thresholds=(0.5,)')
  assert done.returncode == 0, done.stderr[-2000:]
  report = json.load(open(os.path.join(out, 'report.json')))
  assert [r['precision'] for r in report['detection']['thresholds']] == [0.5]
  assert os.path.exists(os.path.join(out, 'config.gin'))
  bad = run_bin('pseudo_label_report', f'--pseudo_dir={tmp_path}/none', f'--output_dir={out}')
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1] == (
      f'error: --pseudo_dir={tmp_path}/none: no such folder')
