"""CocoDetectionEvaluator on handcrafted cases whose AP is known, and against Model Garden's."""
import json

import rethink_st  # noqa: F401  (legacy Keras before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from official.vision.evaluation import coco_evaluator
from rethink_st.errors import UserError
from rethink_st.evaluation import coco

# Two 100x200 (h x w) images, fed to the model at half size: image_info scale 0.5.
GT_BOXES = np.array([[[10, 20, 50, 60], [40, 100, 80, 140], [-1, -1, -1, -1]],
                     [[20, 30, 60, 70], [-1, -1, -1, -1], [-1, -1, -1, -1]]], np.float32)
GT_CLASSES = np.array([[1, 3, -1], [2, -1, -1]], np.int64)
SCALE = 0.5


def _groundtruths(source_id=(1, 2)):
  return {
      'source_id': np.array(source_id),
      'height': np.array([100, 100]),
      'width': np.array([200, 200]),
      'num_detections': np.array([[2], [1]], np.int32),  # the MG parser's [B, 1]
      'boxes': GT_BOXES,
      'classes': GT_CLASSES,
      'areas': np.array([[1600, 1600, -1], [1600, -1, -1]], np.float32),
      'is_crowds': np.zeros([2, 3], np.int32),
  }


def _image_info():
  one = [[100, 200], [50, 100], [SCALE, SCALE], [0, 0]]
  return np.array([one, one], np.float32)


def _predictions(boxes_original, classes, scores, num, source_id=(1, 2)):
  return {
      'source_id': np.array(source_id),
      'image_info': _image_info(),
      'detection_boxes': np.asarray(boxes_original, np.float32) * SCALE,  # model-input pixels
      'detection_classes': np.asarray(classes, np.int32),
      'detection_scores': np.asarray(scores, np.float32),
      'num_detections': np.asarray(num, np.int32),
  }


def _perfect_predictions():
  # Padding rows after num_detections hold a confident wrong box: it must be ignored.
  junk = [0, 0, 100, 200]
  boxes = [[GT_BOXES[0, 0], GT_BOXES[0, 1], junk], [GT_BOXES[1, 0], junk, junk]]
  return _predictions(boxes, [[1, 3, 2], [2, 1, 1]], [[0.9, 0.8, 1.0], [0.7, 1.0, 1.0]],
                      [2, 1])


def test_metric_names_are_the_twelve_coco_stats():
  ev = coco.CocoDetectionEvaluator()
  ev.update_state(_groundtruths(), _perfect_predictions())
  assert list(ev.result()) == ['AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'ARmax1',
                               'ARmax10', 'ARmax100', 'ARs', 'ARm', 'ARl']


def test_perfect_detections_give_ap_one():
  ev = coco.CocoDetectionEvaluator()
  ev.update_state(_groundtruths(), _perfect_predictions())
  m = ev.result()
  for name in ('AP', 'AP50', 'AP75', 'APm', 'ARmax1', 'ARmax10', 'ARmax100', 'ARm'):
    assert m[name] == pytest.approx(1.0), name
  # All boxes are 40x40 = 1600 px: medium. Small/large are undefined: pycocotools' -1.
  for name in ('APs', 'APl', 'ARs', 'ARl'):
    assert m[name] == -1.0, name


def test_tensors_and_per_replica_tuples_are_accepted():
  gt, pred = _groundtruths(), _perfect_predictions()
  ev = coco.CocoDetectionEvaluator()
  split = lambda d: {k: (tf.constant(v[:1]), tf.constant(v[1:])) for k, v in d.items()}
  ev.update_state(split(gt), split(pred))
  assert ev.result()['AP'] == pytest.approx(1.0)


def test_shifted_boxes_pass_iou_half_but_not_three_quarters():
  # Each 40x40 box moved 8 px right: IoU = 32*40 / (2*1600 - 1280) = 2/3. It matches at the
  # IoU thresholds 0.50, 0.55, 0.60, 0.65 and misses at 0.70 .. 0.95: AP = 4/10.
  shift = np.array([0, 8, 0, 8], np.float32)
  boxes = [[GT_BOXES[0, 0] + shift, GT_BOXES[0, 1] + shift, np.zeros(4)],
           [GT_BOXES[1, 0] + shift, np.zeros(4), np.zeros(4)]]
  ev = coco.CocoDetectionEvaluator()
  ev.update_state(_groundtruths(), _predictions(boxes, [[1, 3, 0], [2, 0, 0]],
                                                [[0.9, 0.8, 0], [0.7, 0, 0]], [2, 1]))
  m = ev.result()
  assert m['AP50'] == pytest.approx(1.0)
  assert m['AP75'] == pytest.approx(0.0)
  assert m['AP'] == pytest.approx(0.4)


def test_missed_image_counts_and_wrong_class_does_not_match():
  # Image 1: class-1 box found, class-3 box detected as class 2; image 2: no detections.
  boxes = [[GT_BOXES[0, 0], GT_BOXES[0, 1], np.zeros(4)], np.zeros([3, 4])]
  ev = coco.CocoDetectionEvaluator()
  ev.update_state(_groundtruths(), _predictions(boxes, [[1, 2, 0], [0, 0, 0]],
                                                [[0.9, 0.8, 0], [0, 0, 0]], [2, 0]))
  m = ev.result()
  # Per class AP: class 1 -> 1, class 2 -> 0 (GT in image 2 missed), class 3 -> 0.
  assert m['AP'] == pytest.approx(1 / 3)
  assert m['ARmax100'] == pytest.approx(1 / 3)


def test_empty_predictions_score_zero_without_crashing(tmp_path):
  ev = coco.CocoDetectionEvaluator()
  ev.update_state(_groundtruths(), _predictions(np.zeros([2, 3, 4]), np.zeros([2, 3]),
                                                np.zeros([2, 3]), [0, 0]))
  m = ev.result()
  assert m['AP'] == 0.0 and m['AP50'] == 0.0 and m['ARmax100'] == 0.0
  path = ev.write_results_json(str(tmp_path / 'out' / 'detections.json'))
  assert json.load(open(path)) == []


def test_results_json_is_coco_format_in_original_pixels(tmp_path):
  ev = coco.CocoDetectionEvaluator(category_map={1: 11, 2: 12, 3: 13})
  ev.update_state(_groundtruths(source_id=(b'123', b'456')), _perfect_predictions() | {
      'source_id': np.array([b'123', b'456'])})
  assert ev.result()['AP'] == pytest.approx(1.0)  # the map changes ids, not metrics
  results = json.load(open(ev.write_results_json(str(tmp_path / 'd.json'))))
  assert len(results) == 3
  first = results[0]
  assert set(first) == {'image_id', 'category_id', 'bbox', 'score'}
  assert first['image_id'] == 123 and first['category_id'] == 11
  assert first['bbox'] == pytest.approx([20, 10, 40, 40])  # x, y, w, h of [10, 20, 50, 60]
  assert first['score'] == pytest.approx(0.9)
  assert sorted(r['category_id'] for r in results) == [11, 12, 13]


def test_non_numeric_source_ids_round_trip():
  ev = coco.CocoDetectionEvaluator()
  pred = _perfect_predictions() | {'source_id': np.array([b'img-a', b'img-b'])}
  ev.update_state(_groundtruths(source_id=(b'img-a', b'img-b')), pred)
  assert ev.result()['AP'] == pytest.approx(1.0)
  assert {r['image_id'] for r in ev.coco_results()} == {'img-a', 'img-b'}


def test_per_category_ap_and_reset():
  boxes = [[GT_BOXES[0, 0], GT_BOXES[0, 1], np.zeros(4)], np.zeros([3, 4])]
  ev = coco.CocoDetectionEvaluator(per_category=True,
                                   category_names={1: 'zero', 2: 'one', 3: 'two'})
  ev.update_state(_groundtruths(), _predictions(boxes, [[1, 2, 0], [0, 0, 0]],
                                                [[0.9, 0.8, 0], [0, 0, 0]], [2, 0]))
  m = ev.result()
  assert m['AP/zero'] == pytest.approx(1.0)
  assert m['AP/one'] == pytest.approx(0.0)
  assert m['AP/two'] == pytest.approx(0.0)
  ev.reset()
  with pytest.raises(ValueError, match='no images'):
    ev.result()


def test_matches_model_garden_coco_evaluator_on_random_detections():
  rng = np.random.default_rng(0)
  b, k = 4, 20
  gt = {
      'source_id': np.arange(1, b + 1), 'height': np.full([b], 120), 'width': np.full([b], 90),
      'num_detections': np.array([3, 5, 1, 4]),
  }
  yx = rng.uniform(0, 60, [b, 5, 2])
  hw = rng.uniform(8, 50, [b, 5, 2])
  gt['boxes'] = np.concatenate([yx, yx + hw], -1).astype(np.float32)
  gt['classes'] = rng.integers(1, 4, [b, 5])
  gt['areas'] = (hw[..., 0] * hw[..., 1]).astype(np.float32)
  gt['is_crowds'] = np.zeros([b, 5], np.int32)
  scale = rng.uniform(0.5, 2.0, [b, 1, 2])
  size = np.tile([[[120, 90]]], [b, 1, 1])
  image_info = np.concatenate([size, size * scale, scale, np.zeros([b, 1, 2])],
                              1).astype(np.float32)
  jitter = rng.normal(0, 4, [b, k, 4])
  src = rng.integers(0, 5, [b, k])
  det = np.take_along_axis(gt['boxes'], src[..., None], 1) + jitter
  pred = {'source_id': gt['source_id'], 'image_info': image_info,
          'detection_boxes': (det * np.tile(scale, [1, 1, 2])).astype(np.float32),
          'detection_classes': rng.integers(1, 4, [b, k]),
          'detection_scores': rng.uniform(0, 1, [b, k]).astype(np.float32),
          'num_detections': np.full([b], k)}
  ours = coco.CocoDetectionEvaluator()
  ours.update_state(gt, pred)
  theirs = coco_evaluator.COCOEvaluator(annotation_file=None, include_mask=False)
  theirs.update_state(tf.nest.map_structure(tf.constant, gt),
                      tf.nest.map_structure(tf.constant, pred))
  a, b_ = ours.result(), theirs.result()
  assert a['AP'] > 0.05  # a real, non-trivial score
  for name in a:
    assert a[name] == pytest.approx(float(b_[name]), abs=1e-6), name


def test_bad_max_detections_is_a_user_error():
  with pytest.raises(UserError, match='max_detections'):
    coco.CocoDetectionEvaluator(max_detections=0)


def test_missing_keys_are_named():
  ev = coco.CocoDetectionEvaluator()
  pred = _perfect_predictions()
  del pred['image_info']
  with pytest.raises(ValueError, match='image_info'):
    ev.update_state(_groundtruths(), pred)


def test_perfect_detections_on_the_eval_pipelines_groundtruths():
  """The evaluator reads what rethink_st.data.pipeline's eval labels hold (int64 ids, hashed
  for non-numeric source ids; [B, 1] num_detections; padded boxes) and MG's image_info."""
  from rethink_st.data import features as F  # pylint: disable=g-import-not-at-top
  from rethink_st.data import pipeline  # pylint: disable=g-import-not-at-top

  def example(sid, h, w, boxes, classes):
    boxes = np.array(boxes, np.float32)
    return {F.SOURCE_ID: sid, F.IMAGE: np.zeros([h, w, 3], np.uint8), F.HEIGHT: h, F.WIDTH: w,
            F.CLASSES: np.array(classes, np.int64), F.IS_CROWD: np.zeros(len(classes), bool),
            F.AREA: ((boxes[:, 2] - boxes[:, 0]) * h * (boxes[:, 3] - boxes[:, 1]) * w),
            F.BOXES: boxes}

  examples = [example('7', 60, 100, [[0.1, 0.1, 0.5, 0.4], [0.5, 0.5, 0.9, 0.9]], [1, 3]),
              example('img-a', 80, 50, [[0.2, 0.2, 0.6, 0.7]], [2])]
  spec = {F.SOURCE_ID: tf.TensorSpec([], tf.string),
          F.IMAGE: tf.TensorSpec([None, None, 3], tf.uint8),
          F.HEIGHT: tf.TensorSpec([], tf.int64), F.WIDTH: tf.TensorSpec([], tf.int64),
          F.CLASSES: tf.TensorSpec([None], tf.int64), F.IS_CROWD: tf.TensorSpec([None], tf.bool),
          F.AREA: tf.TensorSpec([None], tf.float32), F.BOXES: tf.TensorSpec([None, 4], tf.float32)}
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)
  _, labels = next(iter(pipeline.build_input(ds, task='detection', global_batch_size=2,
                                             is_training=False, output_size=(128, 128))))
  gt = labels['groundtruths']
  scale = tf.tile(labels['image_info'][:, 2:3, :], [1, 1, 2])
  num = tf.reshape(gt['num_detections'], [-1])
  predictions = {'source_id': gt['source_id'], 'image_info': labels['image_info'],
                 'detection_boxes': gt['boxes'] * scale,  # model-input pixels
                 'detection_classes': gt['classes'],
                 'detection_scores': tf.ones_like(gt['areas']),
                 'num_detections': num}
  ev = coco.CocoDetectionEvaluator()
  ev.update_state(gt, predictions)
  m = ev.result()
  assert m['AP'] == pytest.approx(1.0) and m['ARmax100'] == pytest.approx(1.0)
  results = ev.coco_results()
  assert len(results) == 3
  assert results[0]['image_id'] == 7
  assert results[0]['bbox'] == pytest.approx([10, 6, 30, 24], abs=1e-3)  # x, y, w, h pixels


def test_an_image_added_twice_counts_once():
  boxes = [[GT_BOXES[0, 0], GT_BOXES[0, 1], np.zeros(4)], np.zeros([3, 4])]
  pred = _predictions(boxes, [[1, 2, 0], [0, 0, 0]], [[0.9, 0.8, 0], [0, 0, 0]], [2, 0])
  once = coco.CocoDetectionEvaluator()
  once.update_state(_groundtruths(), pred)
  twice = coco.CocoDetectionEvaluator()
  twice.update_state(_groundtruths(), pred)
  twice.update_state(_groundtruths(), pred)  # e.g. a padded last batch repeating images
  assert twice.result() == once.result()
  assert len(twice.coco_results()) == 2
  # Within one batch too: image 1 repeated in row 2 (its GT and detections) is dropped.
  gt = {k: (v[[0, 0]] if np.ndim(v) else v) for k, v in _groundtruths().items()}
  dup = {k: (v[[0, 0]] if np.ndim(v) else v) for k, v in _perfect_predictions().items()}
  ev = coco.CocoDetectionEvaluator()
  ev.update_state(gt, dup)
  assert ev.result()['AP'] == pytest.approx(1.0) and len(ev.coco_results()) == 2
