"""run_pseudo_label end to end on tiny untrained models and the tiny digit scenes: output the
student reads, boxes/masks equal to running the model by hand, class-agnostic suppression,
COCO JSON, stats, host sharding, resume after a kill, unreadable images, chunks without
detections, and the one-line errors."""
import gc
import io
import json
import os

from PIL import Image
import gin
import numpy as np
import pytest
import tensorflow as tf, tf_keras
import tensorflow_datasets as tfds
from pycocotools.coco import COCO

from rethink_st import cli
from rethink_st import config_io
from rethink_st.data import features as F
from rethink_st.data import label_space
from rethink_st.data import pipeline
from rethink_st.data import sources
from rethink_st.errors import UserError
from rethink_st import pseudo_label_report as plr
from rethink_st.evaluation import segmentation
from rethink_st.pseudo_label import provenance
from rethink_st.pseudo_label import run as pl_run
from rethink_st.pseudo_label import shards
from rethink_st.pseudo_label import source as pl_source
from rethink_st.training import student
from rethink_st.training import tasks

import test_training

DEMO_GIN = os.path.join(test_training.REPO, 'gin_configs', 'digits', 'demo.gin')
SEG_GIN = os.path.join(test_training.REPO, 'gin_configs', 'digits', 'model_segmentation.gin')
SIZE = (128, 128)    # model input; the tiny scenes are 64 x 64, so boxes are scaled by 2
NUM_IMAGES = 32      # the tiny unlabeled split
BATCH, CHUNK = 6, 10  # 32 images: a partial last batch (2) and chunks of 10, 10, 10, 2


def _parse(files, bindings):
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin(files, bindings)


def _det_bindings(data_dir):
  return test_training.tiny_bindings(data_dir) + [
      f"unlabeled/rethink_st.data.sources.digit_scenes_source.data_dir = '{data_dir}'",
      # an untrained head scores ~0.01 (the focal-loss prior): keep its top boxes anyway
      'rethink_st.modeling.detection.build_retinanet.pre_nms_score_threshold = 0.0',
      'rethink_st.modeling.detection.build_retinanet.max_num_detections = 10',
      f'rethink_st.pseudo_label.run.run_pseudo_label.batch_size = {BATCH}',
      f'rethink_st.pseudo_label.run.run_pseudo_label.chunk_size = {CHUNK}',
  ]


@pytest.fixture
def det_config(digit_scenes_dir):
  """demo.gin (task and unlabeled source from gin) shrunk to a tiny ResNet-10 RetinaNet."""
  _parse([DEMO_GIN], _det_bindings(digit_scenes_dir))
  yield digit_scenes_dir
  gin.clear_config()


def _source_images(data_dir):
  """source_id -> decoded image of the tiny unlabeled split, as the source yields them."""
  src = sources.tfrecord_source(f'{data_dir}/unlabeled.tfrecord-*')
  return {ex[F.SOURCE_ID].numpy(): ex[F.IMAGE].numpy() for ex in src.dataset()}


def _read(out_dir):
  """source_id -> decoded example (numpy) of every record of a pseudo-label folder."""
  src = sources.tfrecord_source(shards.tfrecord_pattern(out_dir))
  got = {}
  for ex in src.dataset():
    sid = ex[F.SOURCE_ID].numpy()
    assert sid not in got, f'{sid} written twice'
    got[sid] = {k: v.numpy() for k, v in ex.items()}
  return got


def _hand_detections(model, image):
  """The model run by hand on one image: (boxes normalized to the original image, classes,
  scores), with the model's own anchors."""
  inputs, info = pipeline.preprocess_for_inference(tf.constant(image), SIZE)
  out = model(inputs[None], image_shape=info[None, 1], training=False)
  n = int(out['num_detections'][0])
  h, w = image.shape[:2]
  scale = np.tile(info[2].numpy(), 2)
  boxes = out['detection_boxes'][0, :n].numpy() / scale / np.array([h, w, h, w])
  return (np.clip(boxes, 0, 1), out['detection_classes'][0, :n].numpy(),
          out['detection_scores'][0, :n].numpy())


def _hand_suppressed(boxes, scores, iou=0.5):
  """Class-agnostic greedy NMS by hand, with tf.image.non_max_suppression (another kernel
  than the labeler's): which boxes it drops."""
  keep = tf.image.non_max_suppression(boxes, scores, len(scores), iou).numpy()
  return ~np.isin(np.arange(len(scores)), keep)


@pytest.fixture(scope='module')
def teacher(digit_scenes_dir, tmp_path_factory):
  """A tiny untrained RetinaNet saved as a checkpoint: (model, checkpoint folder, threshold).
  The threshold lies in a gap between the first image's detection scores, so that image has
  both kept and dropped boxes (and no score sits on the threshold)."""
  _parse([DEMO_GIN], _det_bindings(digit_scenes_dir))
  tf_keras.utils.set_random_seed(0)
  model = tasks.DetectionTask().build_model()
  folder = str(tmp_path_factory.mktemp('teacher'))
  tf.train.Checkpoint(model=model).save(os.path.join(folder, 'ckpt'))
  gin.clear_config()
  first = sorted(_source_images(digit_scenes_dir).items())[0][1]
  scores = np.sort(_hand_detections(model, first)[2])
  k = 2 + int(np.argmax(np.diff(scores[2:-2])))  # the widest gap away from the ends
  return model, folder, float(scores[k] + scores[k + 1]) / 2


@pytest.fixture(scope='module')
def labeled(teacher, digit_scenes_dir, tmp_path_factory):
  """The tiny unlabeled split labeled through demo.gin by 2 hosts (--num_shards=2), host 1
  first: (out_dir, stats, threshold, host 1's return value)."""
  _, folder, threshold = teacher
  _parse([DEMO_GIN], _det_bindings(digit_scenes_dir))
  out = str(tmp_path_factory.mktemp('pseudo'))
  try:
    first = pl_run.run_pseudo_label(out, teacher_checkpoint=folder, score_threshold=threshold,
                                    num_shards=2, shard_index=1)
    assert not os.path.exists(os.path.join(out, 'stats.json'))  # host 0 is not done yet
    with pytest.raises(UserError, match='labeling is not finished'):
      pl_source.pseudo_label_source(out)
    stats = pl_run.run_pseudo_label(out, teacher_checkpoint=folder, score_threshold=threshold,
                                    num_shards=2, shard_index=0)
  finally:
    gin.clear_config()
  return out, stats, threshold, first


def test_detection_records_hold_every_image_and_the_models_kept_boxes(
    labeled, teacher, digit_scenes_dir):
  out, stats, threshold, _ = labeled
  model = teacher[0]
  images = _source_images(digit_scenes_dir)
  got = _read(out)
  assert sorted(got) == sorted(images)  # every image exactly once
  for sid, ex in got.items():
    np.testing.assert_array_equal(ex[F.IMAGE], images[sid])  # the same pixels
    assert np.all(ex[F.SCORES] >= threshold)
    assert np.all((ex[F.BOXES] >= 0) & (ex[F.BOXES] <= 1))
    assert np.all((ex[F.CLASSES] >= 1) & (ex[F.CLASSES] <= 10))
  suppressed = 0
  for k, sid in enumerate(sorted(images)):  # kept boxes = the model run by hand, in original
    boxes, classes, scores = _hand_detections(model, images[sid])  # coords, less class-
    dropped = _hand_suppressed(boxes, scores) & (scores >= threshold)  # agnostic NMS
    keep = (scores >= threshold) & ~dropped
    suppressed += int(dropped.sum())
    np.testing.assert_allclose(got[sid][F.BOXES], boxes[keep], atol=1e-4)
    np.testing.assert_array_equal(got[sid][F.CLASSES], classes[keep])
    np.testing.assert_allclose(got[sid][F.SCORES], scores[keep], atol=1e-5)
    if k >= 2 and suppressed:  # enough: 3 images or more, one with a box suppressed
      break
  assert suppressed > 0 and stats['class_agnostic_nms_iou'] == 0.5
  first = got[sorted(images)[0]]
  assert 0 < len(first[F.CLASSES]) < 10  # some boxes kept, some dropped
  # the source's JPEG bytes are written as they are, not re-encoded
  record = next(iter(tf.data.TFRecordDataset(shards.list_tfrecords(out)[0])))
  feature = tf.train.Example.FromString(record.numpy()).features.feature
  assert feature['image/encoded'].bytes_list.value[0][:3] == b'\xff\xd8\xff'
  assert feature['image/format'].bytes_list.value[0] == b'jpeg'


def test_two_hosts_label_every_image_once(labeled, digit_scenes_dir):
  out, stats, _, first = labeled
  host = [sorted(_read_host(out, i)) for i in range(2)]
  assert first['images'] == len(host[1]) and 0 < len(host[1]) < NUM_IMAGES
  assert not set(host[0]) & set(host[1])
  assert sorted(host[0] + host[1]) == sorted(_source_images(digit_scenes_dir))
  chunks = sum(-(-len(h) // CHUNK) for h in host)
  assert len(shards.list_tfrecords(out)) == stats['chunks'] == chunks
  assert stats['images'] == NUM_IMAGES


def _read_host(out, shard_index):
  pattern = os.path.join(out, f'pseudo-{shard_index:05d}-of-00002-*.tfrecord')
  return [ex[F.SOURCE_ID].numpy() for ex in sources.tfrecord_source(pattern).dataset()]


def test_chunks_stats_and_coco_json_add_up(labeled):
  out, stats, threshold, _ = labeled
  got = _read(out)
  assert not [f for f in os.listdir(out) if f.endswith('.tmp')]
  with open(os.path.join(out, 'stats.json')) as f:
    assert json.load(f) == stats
  kept = sum(len(ex[F.CLASSES]) for ex in got.values())
  assert stats['images'] == NUM_IMAGES
  assert stats['boxes'] == kept == sum(stats['per_class'])
  assert stats['boxes_per_image'] == pytest.approx(kept / NUM_IMAGES)
  assert stats['images_without_labels'] == sum(len(ex[F.CLASSES]) == 0 for ex in got.values())
  assert sum(stats['boxes_per_image_hist']) == NUM_IMAGES
  assert stats['unreadable_skipped'] == 0
  per_class = np.bincount(np.concatenate([ex[F.CLASSES] for ex in got.values()]),
                          minlength=11)
  assert stats['per_class'] == per_class.tolist()

  coco = COCO(os.path.join(out, 'pseudo_coco.json'))
  assert sorted(coco.getImgIds()) == sorted(int(s) for s in got)
  anns = coco.loadAnns(coco.getAnnIds())
  assert sum(stats['score_hist']) == len(anns)  # every detection, with its score
  assert sorted(a['id'] for a in anns) == list(range(1, len(anns) + 1))
  assert len(anns) > kept  # also those below the threshold
  suppressed = 0
  for sid, ex in got.items():
    img = coco.loadImgs(int(sid))[0]
    assert (img['height'], img['width']) == ex[F.IMAGE].shape[:2]
    above = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=int(sid)))
             if a['score'] >= threshold]
    mine = [a for a in above if not a.get('suppressed')]
    assert len(mine) == len(ex[F.CLASSES])
    suppressed += len(above) - len(mine)
    order = np.argsort([-a['score'] for a in mine])
    h, w = img['height'], img['width']
    for a, box, cls in zip([mine[i] for i in order], ex[F.BOXES], ex[F.CLASSES]):
      x, y, bw, bh = a['bbox']
      np.testing.assert_allclose([y / h, x / w, (y + bh) / h, (x + bw) / w], box, atol=1e-5)
      assert a['category_id'] == cls
  assert stats['suppressed'] == suppressed > 0
  assert [c['suppressed'] for c in _stats_of_chunks(out)] == [
      sum(a.get('suppressed', 0) and a['score'] >= threshold for a in
          json.load(open(p[:-len('.tfrecord')] + '.coco.json'))['annotations'])
      for p in shards.list_tfrecords(out)]


def test_the_student_pipeline_reads_the_output(labeled, teacher):
  out = labeled[0]
  source = pl_source.pseudo_label_source(out)
  assert source.num_classes == 10 and source.has_scores
  images, labels = next(iter(pipeline.build_input(
      source, task='detection', global_batch_size=4, is_training=True, output_size=SIZE)))
  assert images.shape == (4, 128, 128, 3) and 'cls_targets' in labels
  task = tasks.DetectionTask(model_fn=lambda **_: None, num_classes=11, image_size=SIZE)
  student._check_label_space(task, source)  # same label space: no error


# --- class-agnostic suppression ----------------------------------------------------------

class _FixedDetections:
  """A stand-in model that returns the same detections (model-input pixels) for every
  image, and `num` of them real (the rest padding)."""

  def __init__(self, boxes, classes, scores, num):
    self.boxes, self.classes, self.scores, self.num = boxes, classes, scores, num

  def __call__(self, inputs, image_shape, anchor_boxes, training):
    del image_shape, anchor_boxes, training
    n = inputs.shape[0]
    tile = lambda x, dtype: tf.tile(tf.constant([x], dtype), [n] + [1] * np.ndim(x))
    return {'detection_boxes': tile(self.boxes, tf.float32),
            'detection_classes': tile(self.classes, tf.int32),
            'detection_scores': tile(self.scores, tf.float32),
            'num_detections': tf.fill([n], self.num)}


def _label_hand_made(class_agnostic_nms_iou, num=3):
  """Classes and scores the detection labeler keeps (score >= 0.5), and its 'suppressed'
  flags, for hand-made detections on a 128 x 128 image: class 3 (0.8) and class 7 (0.9) on
  one object at IoU 0.8; class 5 (0.7) at IoU 1/3 with the class-3 box; then padding with a
  higher score on the class-3 box (never real)."""
  boxes = [[10, 10, 50, 50], [10, 10, 50, 42], [10, 30, 50, 70], [10, 10, 50, 50]]
  model = _FixedDetections(boxes, [3, 7, 5, 4], [0.8, 0.9, 0.7, 0.95], num)
  labeler = pl_run.build_labeler(tasks.DetectionTask(model_fn=lambda **_: None,
                                                     num_classes=11, image_size=SIZE),
                                 model, score_threshold=0.5,
                                 class_agnostic_nms_iou=class_agnostic_nms_iou)
  info = tf.constant([[[128., 128.], [128., 128.], [1., 1.], [0., 0.]]] * 2)
  pred = labeler.predict({'input': tf.zeros([2, 128, 128, 3]), 'image_info': info})
  pred = {k: v.numpy() for k, v in pred.items()}
  labels, detections = labeler.to_example(pred, 1, (128, 128))
  return labels[F.CLASSES].tolist(), labels[F.SCORES].tolist(), detections['suppressed']


def test_class_agnostic_suppression_of_hand_made_boxes():
  classes, scores, suppressed = _label_hand_made(0.5)
  assert classes == [7, 5]                        # of one object, the higher score only
  np.testing.assert_allclose(scores, [0.9, 0.7])
  assert suppressed.tolist() == [True, False, False]  # padding neither counts nor suppresses
  assert _label_hand_made(0.9)[0] == [3, 7, 5]    # IoU 0.8 < 0.9: both kept
  assert _label_hand_made(None)[0] == [3, 7, 5]   # disabled
  assert _label_hand_made(None)[2].tolist() == [False] * 3
  assert _label_hand_made(0.5, num=0)[0] == []


def test_bad_class_agnostic_nms_iou_is_one_line(det_config, teacher, tmp_path):
  for bad in (0.0, 1.5, 'high'):
    with pytest.raises(UserError) as e:
      pl_run.run_pseudo_label(str(tmp_path / 'out'), teacher_checkpoint=teacher[1],
                              class_agnostic_nms_iou=bad)
    assert str(e.value).splitlines()[0] == (
        f'run_pseudo_label.class_agnostic_nms_iou={bad!r} must be in (0, 1], or None for no '
        'class-agnostic suppression')
  assert not os.path.exists(str(tmp_path / 'out'))


def test_suppressed_boxes_reach_the_report_not_the_student(labeled, tmp_path):
  """The pseudo labels evaluated against themselves: at the labeler's threshold the kept
  boxes are all true positives (recall 1, precision 1); without the suppression the K kept
  boxes are still matched and the S suppressed ones are false positives (a suppressed box
  overlaps a kept one of another class, and the teacher's per-class NMS keeps same-class
  boxes apart)."""
  out, stats, threshold, _ = labeled
  kept, dropped = stats['boxes'], stats['suppressed']
  assert kept > 0 and dropped > 0
  boxes = 0
  for ex in pl_source.pseudo_label_source(out).dataset():  # what the student reads
    boxes += int(ex[F.CLASSES].shape[0])
    assert np.all(ex[F.SCORES].numpy() >= threshold)
  assert boxes == kept
  own = sources.tfrecord_source(shards.tfrecord_pattern(out))
  report = plr.write_report(out, str(tmp_path / 'report'), reference_source=own,
                            num_images=0, thresholds=(0.5,))
  rows = report['detection']['thresholds']
  assert [r['score_threshold'] for r in rows] == sorted([0.5, threshold])  # labeler's added
  at = next(r for r in rows if r['score_threshold'] == threshold)
  assert (at['boxes'], at['tp'], at['fp'], at['fn'], at['suppressed']) == (kept, kept, 0, 0,
                                                                           dropped)
  without = at['without_suppression']
  assert (without['boxes'], without['tp'], without['fp'], without['fn']) == (
      kept + dropped, kept, dropped, 0)
  assert at['precision'] == 1.0 and without['precision'] == pytest.approx(
      kept / (kept + dropped)) and without['recall'] == 1.0
  assert report['class_agnostic_nms_iou'] == 0.5 and report['stats']['suppressed'] == dropped
  md = open(str(tmp_path / 'report' / 'report.md')).read()
  assert (f'{kept} pseudo boxes with class-agnostic suppression at IoU >= 0.5 ({dropped} '
          f'suppressed): precision 100.0, recall 100.0; without it, {kept + dropped} boxes: '
          f'precision {100 * kept / (kept + dropped):.1f}, recall 100.0.') in md


# --- chunks without detections or without images ----------------------------------------

def test_chunk_writer_completes_chunks_without_detections_or_images(tmp_path):
  categories = [{'id': 1, 'name': '1'}]
  none = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
  no_boxes = shards.ChunkWriter(str(tmp_path / 'a'), coco_categories=categories)
  no_boxes.add_coco_image(b'7', 4, 5, *none)
  no_boxes.close(None, {'images': 1})
  no_images = shards.ChunkWriter(str(tmp_path / 'b'), coco_categories=categories)
  no_images.close(None, {'images': 0, 'unreadable_skipped': 2})
  aborted = shards.ChunkWriter(str(tmp_path / 'c'), coco_categories=categories)
  aborted.add_coco_image(b'8', 4, 5, *none)
  aborted.abort()
  assert sorted(os.listdir(tmp_path)) == ['a.coco.json', 'a.stats.json', 'a.tfrecord',
                                          'b.coco.json', 'b.stats.json', 'b.tfrecord']
  assert json.load(open(tmp_path / 'a.coco.json')) == {
      'images': [{'id': 7, 'file_name': '7', 'height': 4, 'width': 5}], 'annotations': [],
      'categories': categories}
  assert json.load(open(tmp_path / 'b.coco.json'))['images'] == []


def _nothing_detected_bindings(data_dir):
  """_det_bindings without pre_nms_score_threshold = 0.0: the untrained head's ~0.01 scores
  do not pass 0.9, so the teacher detects nothing."""
  keep = [b for b in _det_bindings(data_dir) if 'pre_nms_score_threshold' not in b]
  return keep + ['rethink_st.modeling.detection.build_retinanet.pre_nms_score_threshold = 0.9']


def test_a_teacher_that_detects_nothing_writes_complete_resumable_chunks(
    digit_scenes_dir, teacher, tmp_path, monkeypatch, capsys):
  _parse([DEMO_GIN], _nothing_detected_bindings(digit_scenes_dir))
  out = str(tmp_path / 'pseudo')
  write = shards.ChunkWriter.write
  calls = []

  def dying_write(self, serialized):
    calls.append(1)
    if len(calls) == CHUNK + 5:  # in the middle of chunk 1
      raise Killed()
    write(self, serialized)

  monkeypatch.setattr(shards.ChunkWriter, 'write', dying_write)
  with pytest.raises(Killed):
    pl_run.run_pseudo_label(out, teacher_checkpoint=teacher[1])
  monkeypatch.undo()
  # A real kill closes the killed chunk's files; here its writer lives on in a reference
  # cycle (through the exception) and would flush into the resumed chunk when collected.
  gc.collect()
  assert shards.complete_chunks(out, 0, 1) == [0]
  capsys.readouterr()
  stats = pl_run.run_pseudo_label(out, teacher_checkpoint=teacher[1])
  assert 'resuming at image 10' in capsys.readouterr().out
  assert stats['images'] == NUM_IMAGES and stats['chunks'] == 4
  assert stats['boxes'] == stats['suppressed'] == sum(stats['score_hist']) == 0
  assert stats['images_without_labels'] == NUM_IMAGES
  assert not [f for f in os.listdir(out) if f.endswith('.tmp')]
  for chunk in _stats_of_chunks(out):
    assert chunk['boxes'] == 0 and chunk['images'] in (CHUNK, NUM_IMAGES % CHUNK)
  coco = COCO(os.path.join(out, 'pseudo_coco.json'))
  assert len(coco.getImgIds()) == NUM_IMAGES and not coco.getAnnIds()
  # the student's source: every image, none with a box
  got = [ex for ex in pl_source.pseudo_label_source(out).dataset()]
  assert len(got) == NUM_IMAGES and all(ex[F.BOXES].shape == (0, 4) for ex in got)
  # a rerun skips every chunk
  mtimes = {p: os.stat(p).st_mtime_ns for p in shards.list_tfrecords(out)}
  assert pl_run.run_pseudo_label(out, teacher_checkpoint=teacher[1]) == stats
  assert 'resuming at image 32' in capsys.readouterr().out
  assert {p: os.stat(p).st_mtime_ns for p in shards.list_tfrecords(out)} == mtimes


def test_a_chunk_of_only_unreadable_images_is_complete(det_config, teacher, tmp_path):
  """Chunks of 2: a.png and b.png fill chunk 0; the 3 unreadable images after them make
  chunk 1, which holds no image."""
  images = list(_source_images(det_config).values())[:2]
  folder = tmp_path / 'images'
  folder.mkdir()
  (folder / 'a.png').write_bytes(_png(images[0]))
  (folder / 'b.png').write_bytes(_png(images[1]))
  for name in ('c.png', 'd.jpg', 'e.png'):
    (folder / name).write_bytes(b'not an image')
  source = sources.image_folder_source(str(folder))
  out = str(tmp_path / 'pseudo')
  stats = pl_run.run_pseudo_label(out, unlabeled_source=source, teacher_checkpoint=teacher[1],
                                  chunk_size=2)
  assert stats['chunks'] == 2 and stats['images'] == 2 and stats['unreadable_skipped'] == 3
  assert [(c['images'], c['unreadable_skipped']) for c in _stats_of_chunks(out)] == [(2, 0),
                                                                                     (0, 3)]
  assert shards.consumed_images(out, 0, 1) == 5
  assert pl_run.run_pseudo_label(out, unlabeled_source=source, teacher_checkpoint=teacher[1],
                                 chunk_size=2) == stats


class Killed(Exception):
  pass


def test_resume_after_a_kill_labels_each_image_once(det_config, teacher, tmp_path,
                                                    monkeypatch, capsys):
  out = str(tmp_path / 'pseudo')
  folder = teacher[1]
  write = shards.ChunkWriter.write
  calls = []

  def dying_write(self, serialized):
    calls.append(1)
    if len(calls) == CHUNK + 5:  # in the middle of chunk 1
      raise Killed()
    write(self, serialized)

  monkeypatch.setattr(shards.ChunkWriter, 'write', dying_write)
  with pytest.raises(Killed):
    pl_run.run_pseudo_label(out, teacher_checkpoint=folder, score_threshold=1.0)
  monkeypatch.undo()
  chunk0 = shards.chunk_prefix(out, 0, 1, 0) + '.tfrecord'
  assert shards.complete_chunks(out, 0, 1) == [0]
  assert os.path.exists(shards.chunk_prefix(out, 0, 1, 1) + '.tfrecord.tmp')
  assert not os.path.exists(os.path.join(out, 'stats.json'))
  before = os.stat(chunk0).st_mtime_ns
  capsys.readouterr()

  stats = pl_run.run_pseudo_label(out, teacher_checkpoint=folder, score_threshold=1.0)
  assert 'resuming at image 10' in capsys.readouterr().out
  assert os.stat(chunk0).st_mtime_ns == before  # the complete chunk is untouched
  assert stats['images'] == NUM_IMAGES and stats['chunks'] == 4  # 10 + 10 + 10 + 2
  got = _read(out)
  assert sorted(got) == sorted(_source_images(det_config))
  assert not [f for f in os.listdir(out) if f.endswith('.tmp')]
  # score_threshold 1.0 keeps no box: every image is still written, as background
  assert stats['boxes'] == 0 and stats['images_without_labels'] == NUM_IMAGES
  assert all(len(ex[F.CLASSES]) == 0 and ex[F.BOXES].shape == (0, 4) for ex in got.values())
  # a different setting in the same folder is refused
  with pytest.raises(UserError, match='made with score_threshold=1.0, not 0.7'):
    pl_run.run_pseudo_label(out, teacher_checkpoint=folder, score_threshold=0.7)


def test_background_writer_stops_at_its_first_error():
  """After a failed write nothing more is written (a later batch must not complete a chunk
  that misses images); the error reaches the caller once."""
  done = []

  def write(x):
    if x == 2:
      raise Killed()
    done.append(x)

  writer = pl_run._Background(write, depth=2)  # pylint: disable=protected-access
  with pytest.raises(Killed):
    for x in range(20):
      writer.put(x)
    writer.close()
  writer.close(raise_error=False)
  writer.close()  # raised once only
  assert done == [0, 1]


def _png(image):
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='PNG')
  return out.getvalue()


def _gif(image):
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='GIF')
  return out.getvalue()


def test_image_folder_unreadable_images_are_skipped_and_counted(det_config, teacher,
                                                                tmp_path):
  images = list(_source_images(det_config).values())[:3]
  folder = tmp_path / 'images'
  folder.mkdir()
  (folder / 'a.png').write_bytes(_png(images[0]))
  (folder / 'b.jpg').write_bytes(tf.io.encode_jpeg(images[1]).numpy())
  (folder / 'c.gif').write_bytes(_gif(images[2]))  # not JPEG/PNG: written as PNG
  (folder / 'broken.jpg').write_bytes(b'not an image')
  (folder / 'empty.png').write_bytes(b'')
  source = sources.image_folder_source(str(folder))
  out = str(tmp_path / 'pseudo')
  stats = pl_run.run_pseudo_label(out, unlabeled_source=source, teacher_checkpoint=teacher[1])
  assert stats['images'] == 3 and stats['unreadable_skipped'] == 2
  with open(os.path.join(out, 'stats.json')) as f:
    assert json.load(f)['unreadable_skipped'] == 2
  got = _read(out)
  want = {ex[F.SOURCE_ID].numpy(): ex[F.IMAGE].numpy() for ex in source.dataset()}
  assert sorted(got) == [b'a.png', b'b.jpg', b'c.gif']
  for sid, ex in got.items():
    np.testing.assert_array_equal(ex[F.IMAGE], want[sid])
  records = [tf.train.Example.FromString(r.numpy()).features.feature
             for r in tf.data.TFRecordDataset(shards.list_tfrecords(out))]
  formats = {f['image/source_id'].bytes_list.value[0]: f['image/format'].bytes_list.value[0]
             for f in records}
  assert formats == {b'a.png': b'png', b'b.jpg': b'jpeg', b'c.gif': b'png'}
  coco = COCO(os.path.join(out, 'pseudo_coco.json'))  # string image ids
  assert sorted(coco.getImgIds()) == ['a.png', 'b.jpg', 'c.gif']


def _with_image(record, source_id, encoded):
  """A copy of a serialized tf.Example with another source_id and image/encoded bytes."""
  example = tf.train.Example.FromString(record)
  feature = example.features.feature
  feature['image/source_id'].bytes_list.value[:] = [source_id]
  feature['image/encoded'].bytes_list.value[:] = [encoded]
  return example.SerializeToString()


def _stats_of_chunks(out):
  stats = []
  for path in shards.list_tfrecords(out):
    with open(path[:-len('.tfrecord')] + '.stats.json') as f:
      stats.append(json.load(f))
  return stats


def test_tfrecord_unreadable_images_are_skipped_counted_and_resumed(det_config, teacher,
                                                                    tmp_path, monkeypatch,
                                                                    capsys):
  """A zero-byte image first, a truncated JPEG right after chunk 0's last image, and bytes
  that are no image last: the 12 good images are labeled once, the 3 bad ones counted in the
  chunk they fall in (chunk 0: 1; chunk 1: 2), across a kill and a resume too."""
  files = sorted(tf.io.gfile.glob(f'{det_config}/unlabeled.tfrecord-*'))
  records = [r.numpy() for r in tf.data.TFRecordDataset(files).take(12)]
  good_ids = [tf.train.Example.FromString(r).features.feature['image/source_id']
              .bytes_list.value[0] for r in records]
  jpeg = tf.train.Example.FromString(records[0]).features.feature[
      'image/encoded'].bytes_list.value[0]
  path = str(tmp_path / 'mixed.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(_with_image(records[0], b'bad-empty', b''))
    for r in records[:CHUNK]:
      writer.write(r)
    writer.write(_with_image(records[0], b'bad-truncated', jpeg[:len(jpeg) // 2]))
    for r in records[CHUNK:]:
      writer.write(r)
    writer.write(_with_image(records[0], b'bad-text', b'not an image at all'))
  source = sources.tfrecord_source(path)
  # the source alone: dataset(images_only=True) skips them, unreadable='flag' flags them
  assert [ex[F.SOURCE_ID].numpy() for ex in source.dataset(images_only=True)] == good_ids
  flags = [(ex[F.SOURCE_ID].numpy(), bool(ex[F.READABLE]))
           for ex in source.dataset(images_only=True, unreadable='flag')]
  assert flags == ([(b'bad-empty', False)] + [(i, True) for i in good_ids[:CHUNK]] +
                   [(b'bad-truncated', False)] + [(i, True) for i in good_ids[CHUNK:]] +
                   [(b'bad-text', False)])

  out = str(tmp_path / 'pseudo')
  write = shards.ChunkWriter.write
  calls = []

  def dying_write(self, serialized):
    calls.append(1)
    if len(calls) == CHUNK + 2:  # in chunk 1, after its first image
      raise Killed()
    write(self, serialized)

  monkeypatch.setattr(shards.ChunkWriter, 'write', dying_write)
  with pytest.raises(Killed):
    pl_run.run_pseudo_label(out, unlabeled_source=source, teacher_checkpoint=teacher[1])
  monkeypatch.undo()
  assert shards.complete_chunks(out, 0, 1) == [0]
  # unguarded decoding failed on the first image and the run went on guarded
  assert 'an image at or after image 0 cannot be decoded' in capsys.readouterr().out
  stats = pl_run.run_pseudo_label(out, unlabeled_source=source, teacher_checkpoint=teacher[1])
  printed = capsys.readouterr().out
  assert 'resuming at image 11' in printed  # chunk 0: bad-empty and 10 images
  assert 'an image at or after image 11 cannot be decoded' in printed
  assert stats['images'] == 12 and stats['unreadable_skipped'] == 3 and stats['chunks'] == 2
  assert [c['unreadable_skipped'] for c in _stats_of_chunks(out)] == [1, 2]
  with open(os.path.join(out, 'stats.json')) as f:
    assert json.load(f)['unreadable_skipped'] == 3
  got = _read(out)  # asserts no image is written twice
  assert sorted(got) == sorted(good_ids)
  images = _source_images(det_config)
  for sid, ex in got.items():
    np.testing.assert_array_equal(ex[F.IMAGE], images[sid])
  # a rerun of the finished folder labels and counts nothing again
  assert pl_run.run_pseudo_label(out, unlabeled_source=source,
                                 teacher_checkpoint=teacher[1]) == stats


def test_coco_json_unreadable_images_are_skipped_and_counted(det_config, teacher, tmp_path):
  images = list(_source_images(det_config).values())[:3]
  folder = tmp_path / 'images'
  folder.mkdir()
  (folder / '1.png').write_bytes(_png(images[0]))
  (folder / '2.jpg').write_bytes(b'')                    # zero bytes
  (folder / '3.jpg').write_bytes(tf.io.encode_jpeg(images[1]).numpy())
  (folder / '4.png').write_bytes(_png(images[2])[:40])   # truncated
  (folder / '5.png').write_bytes(_png(images[2]))
  (folder / '6.jpg').write_bytes(b'<html>not an image</html>')
  (tmp_path / 'coco.json').write_text(json.dumps({
      'images': [{'id': i, 'file_name': name, 'height': 64, 'width': 64}
                 for i, name in enumerate(sorted(os.listdir(folder)), 1)],
      'annotations': [], 'categories': [{'id': 1, 'name': 'digit'}]}))
  source = sources.coco_json_source(str(tmp_path / 'coco.json'), str(folder))
  out = str(tmp_path / 'pseudo')
  stats = pl_run.run_pseudo_label(out, unlabeled_source=source, teacher_checkpoint=teacher[1])
  assert stats['images'] == 3 and stats['unreadable_skipped'] == 3
  with open(os.path.join(out, 'stats.json')) as f:
    assert json.load(f)['unreadable_skipped'] == 3
  got = _read(out)
  assert sorted(got) == [b'1', b'3', b'5']
  np.testing.assert_array_equal(got[b'1'][F.IMAGE], images[0])  # the PNGs' pixels
  np.testing.assert_array_equal(got[b'5'][F.IMAGE], images[2])
  coco = COCO(os.path.join(out, 'pseudo_coco.json'))
  assert sorted(coco.getImgIds()) == [1, 3, 5]


class PseudoLabelTinyCorrupt(tfds.core.GeneratorBasedBuilder):
  """5 unlabeled images stored as bytes: 3 PNGs, one empty and one that is not an image."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'image_id': tf.int64,
        'objects': tfds.features.Sequence({'bbox': tfds.features.BBoxFeature(),
                                           'label': tfds.features.ClassLabel(num_classes=2)}),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(3)
    for i in range(5):
      encoded = {1: b'', 3: b'GIF89a broken'}.get(i)
      if encoded is None:
        encoded = _png(rng.integers(0, 255, (6 + i, 5, 3), np.uint8))
      yield i, {'image': io.BytesIO(encoded), 'image_id': i,
                'objects': {'bbox': [], 'label': []}}


def test_inference_dataset_flags_unreadable_images_of_every_source_kind(tmp_path):
  """The shared guard, without a model: TFDS, COCO JSON, TFRecords and an image folder with
  unreadable images among good ones and last. Guarded, every image comes once, in source
  order: a readable one VALID, an unreadable one not VALID with UNREADABLE 1; the padding has
  neither; `skip` counts both kinds. Unguarded, the iterator raises."""
  tfds_dir = str(tmp_path / 'tfds')
  PseudoLabelTinyCorrupt(data_dir=tfds_dir).download_and_prepare()
  rng = np.random.default_rng(4)
  good = _png(rng.integers(0, 255, (7, 9, 3), np.uint8))
  files = {'a.png': good, 'b.png': b'', 'c.png': good, 'd.png': good[:30], 'e.jpg': b'x'}
  (tmp_path / 'img').mkdir()
  for name, data in files.items():
    (tmp_path / 'img' / name).write_bytes(data)
  (tmp_path / 'coco.json').write_text(json.dumps({
      'images': [{'id': i, 'file_name': n, 'height': 7, 'width': 9}
                 for i, n in enumerate(sorted(files), 1)],
      'annotations': [], 'categories': [{'id': 1, 'name': 'x'}]}))
  record = tf.train.Example(features=tf.train.Features(feature={
      'image/source_id': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'r'])),
      'image/encoded': tf.train.Feature(bytes_list=tf.train.BytesList(value=[good]))}))
  with tf.io.TFRecordWriter(str(tmp_path / 'r.tfrecord')) as writer:
    for name in sorted(files):
      writer.write(_with_image(record.SerializeToString(), name.encode(), files[name]))
  tfds_source = sources.tfds_source('pseudo_label_tiny_corrupt', data_dir=tfds_dir)
  tfds_order = [(str(int(ex['image_id'])).encode(), int(ex['image_id']) not in (1, 3))
                for ex in tfds_source.builder.as_dataset(
                    split='train', decoders={'image': tfds.decode.SkipDecoding()})]
  by_name = [(name.encode(), name in ('a.png', 'c.png')) for name in sorted(files)]
  by_id = [(str(i).encode(), ok) for i, (_, ok) in enumerate(by_name, 1)]
  cases = [
      (tfds_source, tfds_order),
      (sources.coco_json_source(str(tmp_path / 'coco.json'), str(tmp_path / 'img')), by_id),
      (sources.tfrecord_source(str(tmp_path / 'r.tfrecord')), by_name),
      (sources.image_folder_source(str(tmp_path / 'img')), by_name),
  ]

  def seen(source, skip=0):
    out = []
    for batch in pl_run.inference_dataset(source, SIZE, 2, skip=skip, unreadable='flag'):
      assert batch['input'].shape == (2, 128, 128, 3)
      for sid, valid, unreadable in zip(*(batch[k].numpy() for k in (
          F.SOURCE_ID, pl_run.VALID, pl_run.UNREADABLE))):
        assert not (valid and unreadable)
        if valid or unreadable:
          out.append((sid, bool(valid)))
    return out

  for source, order in cases:
    assert 2 <= sum(ok for _, ok in order) < len(order)
    assert seen(source) == order, source.name
    assert seen(source, skip=2) == order[2:], source.name
    readable = [sid for sid, ok in order if ok]
    assert [ex[F.SOURCE_ID].numpy() for ex in source.dataset(images_only=True)] == readable
    with pytest.raises(tf.errors.OpError):  # unguarded, as run_pseudo_label starts
      list(pl_run.inference_dataset(source, SIZE, 2))


def test_segmentation_masks_are_original_size_and_thresholded(tmp_path):
  _parse([SEG_GIN], [
      "rethink_st.modeling.segmentation.build_segmentation_model.backbone = 'resnet-10'",
      'rethink_st.modeling.segmentation.build_segmentation_model.decoder_num_filters = 16',
      'rethink_st.modeling.segmentation.build_segmentation_model.head_num_convs = 1',
      'rethink_st.modeling.segmentation.build_segmentation_model.head_num_filters = 16',
  ])
  try:
    task = tasks.SegmentationTask(model_fn=gin.get_configurable(
        'rethink_st.modeling.segmentation.build_segmentation_model'), num_classes=11,
        image_size=SIZE, size_divisor=128)
    tf_keras.utils.set_random_seed(0)
    model = task.build_model()
    ckpt = tf.train.Checkpoint(model=model).save(str(tmp_path / 'teacher' / 'ckpt'))
    rng = np.random.default_rng(0)
    folder = tmp_path / 'images'
    folder.mkdir()
    shapes = [(64, 64), (40, 96), (100, 30), (128, 128), (20, 20)]  # batch 4 + a partial one
    for k, (h, w) in enumerate(shapes):
      (folder / f'{k}.png').write_bytes(_png(rng.integers(0, 255, (h, w, 3), np.uint8)))
    source = sources.image_folder_source(str(folder))
    scales, flip = (0.5, 1.0, 1.5), True   # 1.5: tiles of the 128 px model

    def hand_probs(image):
      inputs, info = pipeline.preprocess_for_inference(tf.constant(image), SIZE)
      probs = segmentation.predict_probabilities(model, inputs[None], scales=scales,
                                                 flip=flip, size_divisor=128)
      return segmentation.restore_original_size(probs, info[None]).numpy()[0]

    images = {ex[F.SOURCE_ID].numpy(): ex[F.IMAGE].numpy() for ex in source.dataset()}
    probs = {sid: hand_probs(image) for sid, image in images.items()}
    threshold = float(np.median(probs[b'0.png'].max(-1)))  # half the pixels of image 0 ignored
    out = str(tmp_path / 'pseudo')
    stats = pl_run.run_pseudo_label(out, task=task, unlabeled_source=source,
                                    teacher_checkpoint=ckpt, batch_size=4, scales=scales,
                                    flip=flip, mask_threshold=threshold)
  finally:
    gin.clear_config()
  got = _read(out)
  assert sorted(got) == sorted(images)
  ignored = pixels = 0
  for sid, ex in got.items():
    mask = ex[F.SEMANTIC_MASK][..., 0]
    assert mask.shape == images[sid].shape[:2]
    p = probs[sid]
    want = np.where(p.max(-1) >= threshold, p.argmax(-1), 255)
    # equal except where the top probability is within float noise of the threshold or a tie
    close = (np.abs(p.max(-1) - threshold) < 1e-5) | (np.sort(p, -1)[..., -2] > p.max(-1) - 1e-5)
    assert np.mean((mask != want) & ~close) == 0, sid
    ignored += int((mask == 255).sum())
    pixels += mask.size
  mask0 = got[b'0.png'][F.SEMANTIC_MASK]
  assert 0.3 < np.mean(mask0 == 255) < 0.7
  assert stats['kind'] == 'segmentation' and stats['images'] == 5
  assert stats['pixels'] == pixels and stats['ignored_pixels'] == ignored
  assert stats['ignored_fraction'] == pytest.approx(ignored / pixels)
  assert not os.path.exists(os.path.join(out, 'pseudo_coco.json'))
  # the segmentation input pipeline reads the pseudo masks
  images_, labels = next(iter(pipeline.build_input(
      pl_source.pseudo_label_source(out), task='segmentation', global_batch_size=2,
      is_training=True, output_size=SIZE)))
  assert images_.shape == (2, 128, 128, 3) and labels['masks'].shape == (2, 128, 128, 1)


class PseudoLabelTinyUnlabeled(tfds.core.GeneratorBasedBuilder):
  """4 unlabeled images (3 RGB, stored by TFDS as PNG) for the bytes pass-through test."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'objects': tfds.features.Sequence({'bbox': tfds.features.BBoxFeature(),
                                           'label': tfds.features.ClassLabel(num_classes=2)}),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(1)
    for i in range(4):
      yield i, {'image': rng.integers(0, 255, (10 + i, 12, 3), np.uint8),
                'objects': {'bbox': [], 'label': []}}


class _NoBytesSource(sources.Source):
  """A source of another kind: decoded images only (its bytes cannot be had)."""

  def __init__(self, images):
    super().__init__('no_bytes_source')
    self.images = images

  def validate(self):
    pass

  def _keyed_dataset(self, *, shuffle, seed, input_context):
    ids = tf.data.Dataset.from_tensor_slices([str(i) for i in range(len(self.images))])
    return ids.map(lambda source_id: (source_id, source_id))

  def _decode(self, source_id, payload):
    image = tf.constant(np.stack(self.images))[tf.strings.to_number(payload, tf.int32)]
    shape = tf.shape(image, out_type=tf.int64)
    return {F.SOURCE_ID: source_id, F.IMAGE: image, F.HEIGHT: shape[0], F.WIDTH: shape[1]}


def test_written_bytes_decode_to_the_images_the_teacher_saw(digit_scenes_dir, tmp_path):
  """Each source kind: the bytes inference_dataset passes on are the source's own JPEG/PNG
  (or a PNG of the decoded image), and Model Garden's decoder reads them back to exactly
  the pixels the teacher was given; batches are full-size with the padding marked."""
  from official.vision.dataloaders import tf_example_decoder  # pylint: disable=g-import-not-at-top
  tfds_dir = str(tmp_path / 'tfds')
  PseudoLabelTinyUnlabeled(data_dir=tfds_dir).download_and_prepare()
  rng = np.random.default_rng(2)
  images = [rng.integers(0, 255, (9, 7, 3), np.uint8), rng.integers(0, 255, (5, 6, 3), np.uint8)]
  (tmp_path / 'coco').mkdir()
  (tmp_path / 'coco' / '1.png').write_bytes(_png(images[0]))
  (tmp_path / 'coco' / '2.jpg').write_bytes(tf.io.encode_jpeg(images[1]).numpy())
  (tmp_path / 'coco.json').write_text(json.dumps({
      'images': [{'id': 1, 'file_name': '1.png', 'height': 9, 'width': 7},
                 {'id': 2, 'file_name': '2.jpg', 'height': 5, 'width': 6}],
      'annotations': [], 'categories': [{'id': 1, 'name': 'x'}]}))
  png_scenes = tmp_path / 'png_scenes'
  from rethink_st.data import digit_scenes  # pylint: disable=g-import-not-at-top
  digit_scenes.make_digit_scenes(str(png_scenes), num_train=0, num_unlabeled=3, num_val=0,
                                 num_iconic_train=0, num_iconic_val=0, image_size=32,
                                 shards=1, image_format='png')
  cases = [
      (sources.tfds_source('pseudo_label_tiny_unlabeled', data_dir=tfds_dir), b'\x89PNG'),
      (sources.coco_json_source(str(tmp_path / 'coco.json'), str(tmp_path / 'coco')), None),
      (sources.tfrecord_source(f'{digit_scenes_dir}/unlabeled.tfrecord-*'), b'\xff\xd8\xff'),
      (sources.tfrecord_source(f'{png_scenes}/unlabeled.tfrecord-*'), b'\x89PNG'),
      (_NoBytesSource(images[:1] * 3), b'\x89PNG'),
  ]
  decode = tf_example_decoder.TfExampleDecoder()._decode_image  # pylint: disable=protected-access
  for source, magic in cases:
    want = {ex[F.SOURCE_ID].numpy(): ex[F.IMAGE].numpy() for ex in source.dataset()}
    assert set(next(iter(source.dataset(images_only=True)))) == set(F.IMAGE_ONLY_KEYS)
    seen = {}
    for batch in pl_run.inference_dataset(source, SIZE, 3):
      assert batch['input'].shape == (3, 128, 128, 3), source.name
      for sid, encoded, shape, valid in zip(*(batch[k].numpy() for k in (
          F.SOURCE_ID, pl_run.ENCODED, pl_run.SHAPE, pl_run.VALID))):
        if not valid:
          continue
        assert magic is None or encoded.startswith(magic), source.name
        image = decode({'image/encoded': encoded}).numpy()
        np.testing.assert_array_equal(image, want[sid], err_msg=source.name)
        assert tuple(shape) == image.shape[:2]
        seen[sid] = seen.get(sid, 0) + 1
    assert seen == {sid: 1 for sid in want}, source.name
  # a source file's JPEG/PNG bytes are passed on as they are
  coco = sources.coco_json_source(str(tmp_path / 'coco.json'), str(tmp_path / 'coco'))
  got = {sid: enc for b in pl_run.inference_dataset(coco, SIZE, 2)
         for sid, enc in zip(b[F.SOURCE_ID].numpy(), b[pl_run.ENCODED].numpy())}
  assert got == {b'1': (tmp_path / 'coco' / '1.png').read_bytes(),
                 b'2': (tmp_path / 'coco' / '2.jpg').read_bytes()}


# --- bad input: one line each, before the long work --------------------------------------

def test_missing_teacher_checkpoint(det_config, tmp_path):
  with pytest.raises(UserError, match=r'run_pseudo_label.teacher_checkpoint=.*nope: no such '
                                      r'folder or checkpoint') as e:
    pl_run.run_pseudo_label(str(tmp_path / 'out'), teacher_checkpoint=str(tmp_path / 'nope'))
  assert 'no such folder or checkpoint' in str(e.value).splitlines()[0]
  with pytest.raises(UserError, match='holds no checkpoint'):
    pl_run.run_pseudo_label(str(tmp_path / 'out'), teacher_checkpoint=str(tmp_path))


def test_checkpoint_of_another_model(det_config, tmp_path):
  gin.bind_parameter('rethink_st.modeling.detection.build_retinanet.decoder_num_filters', 16)
  other = tasks.DetectionTask().build_model()
  path = tf.train.Checkpoint(model=other).save(str(tmp_path / 'other' / 'ckpt'))
  gin.bind_parameter('rethink_st.modeling.detection.build_retinanet.decoder_num_filters', 32)
  with pytest.raises(UserError, match=r'run_pseudo_label.teacher_checkpoint=.* holds a '
                                      r'checkpoint of a different model') as e:
    pl_run.run_pseudo_label(str(tmp_path / 'out'), teacher_checkpoint=path)
  assert 'different model' in str(e.value).splitlines()[0]


def test_empty_unlabeled_source(det_config, teacher, tmp_path):
  empty = sources.tfrecord_source(f'{det_config}/unlabeled.tfrecord-*', fraction=1e-6)
  with pytest.raises(UserError, match=r'unlabeled_source .* no images'):
    pl_run.run_pseudo_label(str(tmp_path / 'out'), unlabeled_source=empty,
                            teacher_checkpoint=teacher[1])
  assert not os.path.exists(str(tmp_path / 'out' / 'meta.json'))


def test_pseudo_labels_of_another_label_space_stop_the_student(labeled):
  source = pl_source.pseudo_label_source(labeled[0])
  assert source.label_space == label_space.LabelSpace.contiguous(10)   # from meta.json
  six = tasks.DetectionTask(model_fn=lambda **_: None, num_classes=7, image_size=SIZE)
  with pytest.raises(UserError) as e:
    student._check_label_space(six, source)
  assert str(e.value) == (
      f'StudentTrainer.pseudo_source {labeled[0]} holds pseudo labels of another label space '
      'than the task (10 classes, not 6): pseudo labels 10 classes (1, 2, 3, 4, 5, 6, ... (4 '
      'more)), task 6 classes (1, 2, 3, 4, 5, 6)')

  class OtherIds:   # a train source of a COCO JSON whose 10 categories are 2, 4, ..., 20
    name = 'coco_json_source(...)'
    label_space = label_space.LabelSpace(tuple(range(2, 21, 2)), tuple('abcdefghij'))

  same_count = tasks.DetectionTask(model_fn=lambda **_: None, num_classes=11, image_size=SIZE,
                                   train_source=OtherIds())
  with pytest.raises(UserError, match=r'another label space than the task \(class 1 is '
                                      r'category id 1, not 2\)'):
    student._check_label_space(same_count, source)


def test_not_a_pseudo_label_folder(tmp_path):
  with pytest.raises(UserError, match='no such folder'):
    pl_source.pseudo_label_source(str(tmp_path / 'missing'))
  with pytest.raises(UserError, match='not a pseudo-label folder'):
    pl_source.pseudo_label_source(str(tmp_path))


# --- pseudo labels that outlive their threshold ------------------------------------------

@pytest.fixture(scope='module')
def confident_teacher(digit_scenes_dir, tmp_path_factory):
  """The tiny RetinaNet with its class head's kernel x 8 and its bias shifted so that the
  median of the first unlabeled image's detection scores is 0.7: scores spread on both sides
  of 0.7 (an untrained head scores ~0.01). Returns its checkpoint folder."""
  _parse([DEMO_GIN], _det_bindings(digit_scenes_dir))
  tf_keras.utils.set_random_seed(1)
  model = tasks.DetectionTask().build_model()
  classifier = model.head._classifier  # pylint: disable=protected-access
  classifier.kernel.assign(classifier.kernel * 8.0)
  first = sorted(_source_images(digit_scenes_dir).items())[0][1]
  median = float(np.median(_hand_detections(model, first)[2]))
  logit = lambda p: np.log(p / (1.0 - p))
  classifier.bias.assign(classifier.bias + (logit(0.7) - logit(median)))
  folder = str(tmp_path_factory.mktemp('confident_teacher'))
  tf.train.Checkpoint(model=model).save(os.path.join(folder, 'ckpt'))
  gin.clear_config()
  return folder


def _labels_by_image(source):
  return {ex[F.SOURCE_ID].numpy(): {k: ex[k].numpy() for k in (F.BOXES, F.CLASSES, F.SCORES,
                                                                 F.AREA, F.IS_CROWD)}
          for ex in source.dataset()}


def test_a_student_at_0_7_reads_the_boxes_a_labeler_at_0_7_writes(confident_teacher,
                                                                  digit_scenes_dir, tmp_path):
  """Labels written down to the floor 0.05 (labeler threshold 0.5), read by a student at 0.7,
  are exactly the labels a labeler at 0.7 writes: same images, boxes, classes, scores;
  and the pseudo set's density at 0.7 is the same. meta.json records the floor, the label
  space and the provenance (checkpoint path and hash, NMS settings)."""
  _parse([DEMO_GIN], _det_bindings(digit_scenes_dir))
  floor, at_07 = str(tmp_path / 'floor'), str(tmp_path / 'at_0.7')
  try:
    pl_run.run_pseudo_label(floor, teacher_checkpoint=confident_teacher, score_threshold=0.5)
    pl_run.run_pseudo_label(at_07, teacher_checkpoint=confident_teacher, score_threshold=0.7,
                            score_floor=0.7)
  finally:
    gin.clear_config()
  meta = shards.read_meta(floor)
  checkpoint = tf.train.latest_checkpoint(confident_teacher)
  assert (meta['score_floor'], meta['score_threshold']) == (0.05, 0.5)
  assert meta['teacher_checkpoint'] == checkpoint
  assert meta['teacher_checkpoint_sha256'] == provenance.checkpoint_sha256(checkpoint)
  assert len(meta['teacher_checkpoint_sha256']) == 64
  assert meta['nms']['nms_iou_threshold'] == 0.5 and meta['nms']['max_num_detections'] == 10
  assert meta['label_space'] == {'category_ids': list(range(1, 11)),
                                 'category_names': [str(c) for c in range(1, 11)]}
  written = np.concatenate([v[F.SCORES] for v in _read(floor).values()])
  assert written.min() >= 0.05
  assert np.sum(written < 0.7) > 0 and np.sum(written >= 0.7) > 0   # the threshold matters

  student_07 = pl_source.pseudo_label_source(floor, score_threshold=0.7)
  labeler_07 = pl_source.pseudo_label_source(at_07)
  got, want = _labels_by_image(student_07), _labels_by_image(labeler_07)
  assert sorted(got) == sorted(want) and len(got) == NUM_IMAGES
  for sid in want:
    for key in want[sid]:
      np.testing.assert_array_equal(got[sid][key], want[sid][key], err_msg=f'{sid} {key}')
  assert sum(len(v[F.SCORES]) for v in want.values()) == np.sum(written >= 0.7)
  assert student_07.pseudo_set['boxes_per_image'] == pytest.approx(
      labeler_07.pseudo_set['boxes_per_image'])
  # Without a threshold of its own the student reads the labeler's (0.5, the paper's).
  default = _labels_by_image(pl_source.pseudo_label_source(floor))
  assert sum(len(v[F.SCORES]) for v in default.values()) == np.sum(written >= 0.5) == (
      json.load(open(os.path.join(floor, 'stats.json')))['boxes'])
  with pytest.raises(UserError, match=r'^pseudo_label_source.score_threshold=0.5 is below the '
                                      r'score floor 0.7 the pseudo labels in .* were written '
                                      r'at; label again with run_pseudo_label.score_floor'):
    pl_source.pseudo_label_source(at_07, score_threshold=0.5)
  # An ignore band [0.5, 0.7): those boxes are kept with class F.IGNORE_BOX_CLASS, the boxes
  # at or above 0.7 are the student's at 0.7, unchanged.
  assert np.sum((written >= 0.5) & (written < 0.7)) > 0   # the band holds boxes
  band = _labels_by_image(pl_source.pseudo_label_source(floor, score_threshold=0.7,
                                                        ignore_threshold=0.5))
  assert sorted(band) == sorted(want)
  for sid in want:
    sure = band[sid][F.SCORES] >= 0.7
    assert (band[sid][F.SCORES] >= 0.5).all()
    assert (band[sid][F.CLASSES][~sure] == F.IGNORE_BOX_CLASS).all()
    for key in want[sid]:
      np.testing.assert_array_equal(band[sid][key][sure], want[sid][key], err_msg=f'{sid} {key}')
  assert sum(len(v[F.SCORES]) for v in band.values()) == np.sum(written >= 0.5)
  assert sum(int((v[F.CLASSES] == F.IGNORE_BOX_CLASS).sum()) for v in band.values()) == (
      np.sum((written >= 0.5) & (written < 0.7)))
  with pytest.raises(UserError, match=r'^pseudo_label_source.ignore_threshold=0.7 must be '
                                      r'below the score threshold 0.7'):
    pl_source.pseudo_label_source(floor, score_threshold=0.7, ignore_threshold=0.7)
  with pytest.raises(UserError, match=r'^pseudo_label_source.ignore_threshold=0.5 is below the '
                                      r'score floor 0.7'):
    pl_source.pseudo_label_source(at_07, ignore_threshold=0.5)


# --- labeling across machines: 3 hosts, one killed and rerun, verified -------------------

def test_three_hosts_one_killed_then_rerun_are_verified_complete(det_config, teacher, tmp_path,
                                                                 monkeypatch, capsys):
  """Three independent hosts (--num_shards=3): hosts 0 and 2 finish, host 1 is killed in its
  second chunk. run_verify (bin/pseudo_label.py --verify) names host 1 in one line and merges
  nothing; rerunning host 1's command resumes it, its finish merges, and run_verify finds
  every image of the source labeled once."""
  from rethink_st.pseudo_label import verify  # pylint: disable=g-import-not-at-top
  out, folder = str(tmp_path / 'pseudo'), teacher[1]
  label = lambda i: pl_run.run_pseudo_label(out, teacher_checkpoint=folder, num_shards=3,
                                            shard_index=i, chunk_size=4)
  label(0)
  label(2)
  write, calls = shards.ChunkWriter.write, []

  def dying_write(self, serialized):
    calls.append(1)
    if len(calls) == 6:  # the second image of host 1's second chunk
      raise Killed()
    write(self, serialized)

  monkeypatch.setattr(shards.ChunkWriter, 'write', dying_write)
  with pytest.raises(Killed):
    label(1)
  monkeypatch.undo()
  capsys.readouterr()
  with pytest.raises(UserError) as e:
    verify.run_verify(out)
  assert str(e.value) == (f'--output_dir={out}: 1 of 3 hosts are not done; rerun their '
                          'commands (--shard_index=1 with --num_shards=3): they resume where '
                          'they stopped')
  printed = capsys.readouterr().out
  assert '[verify] host 1/3: NOT DONE, 1 chunks, 4 images' in printed
  assert 'a chunk cut short (resumes on rerun)' in printed
  assert not os.path.exists(os.path.join(out, 'stats.json'))

  stats = label(1)   # the rerun: host 1 resumes at its image 4, then merges all three
  assert stats['images'] == NUM_IMAGES
  assert sorted(_read(out)) == sorted(_source_images(det_config))   # each image once
  os.remove(os.path.join(out, 'stats.json'))   # as if the merging host died while merging
  report = verify.run_verify(out)
  assert report['source_images'] == NUM_IMAGES and report['images'] == NUM_IMAGES
  assert os.path.exists(os.path.join(out, 'stats.json'))   # merged again
  assert f'[verify] complete: {NUM_IMAGES} images labeled, 0 unreadable skipped' in (
      capsys.readouterr().out)
  assert sum(h['images'] for h in report['hosts']) == NUM_IMAGES and all(
      h['done'] and not h['chunk_cut_short'] for h in report['hosts'])
  # The same check as a command (bin/pseudo_label.py --verify), the source from demo.gin.
  from helpers import run_bin  # pylint: disable=g-import-not-at-top
  done = run_bin('pseudo_label', f'--gin_file={DEMO_GIN}', f'--output_dir={out}', '--verify',
                 *[f'--gin_param={b}' for b in _det_bindings(det_config)])
  assert done.returncode == 0, done.stderr[-2000:]
  assert (f'[verify] complete: {NUM_IMAGES} images labeled, 0 unreadable skipped '
          f'({NUM_IMAGES} of digit_scenes_source(split=\'unlabeled\')\'s {NUM_IMAGES})'
          ) in done.stdout
