"""Input pipelines: labels are exactly Model Garden's parsers' (RetinaNet, segmentation),
batching follows the input context, bad input is one clear line."""
import gin
import numpy as np
import pytest

from rethink_st import augment as A
from rethink_st.data import digit_scenes
from rethink_st.data import features as F
from rethink_st.data import pipeline as P
from rethink_st.data.seeded_stream import Position
from rethink_st.errors import UserError

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order
from official.vision.dataloaders import retinanet_input, segmentation_input  # pylint: disable=wrong-import-order
from official.vision.ops import preprocess_ops  # pylint: disable=wrong-import-order

SIZE = 128   # digit scenes and network input; a multiple of 2**7 (anchor max_level 7)

SPEC_SHAPES = {F.IMAGE: [None, None, 3], F.BOXES: [None, 4], F.CLASSES: [None],
               F.IS_CROWD: [None], F.AREA: [None], F.INSTANCE_MASKS: [None, None, None],
               F.SEMANTIC_MASK: [None, None, 1], F.SCORES: [None]}
DTYPES = {F.SOURCE_ID: tf.string, F.IMAGE: tf.uint8, F.HEIGHT: tf.int64, F.WIDTH: tf.int64,
          F.BOXES: tf.float32, F.CLASSES: tf.int64, F.IS_CROWD: tf.bool, F.AREA: tf.float32,
          F.INSTANCE_MASKS: tf.float32, F.SEMANTIC_MASK: tf.uint8, F.LABEL: tf.int64,
          F.SCORES: tf.float32}


def to_contract(example, source_id):
  """A generated digit scene / iconic image as a decoded example of features.py."""
  out = {k: v for k, v in example.items() if k in DTYPES}
  out[F.SOURCE_ID] = str(source_id).encode()
  out[F.INSTANCE_MASKS] = example[F.INSTANCE_MASKS].astype(np.float32)
  return out


class FakeSource:
  """Stand-in for rethink_st.data.sources.Source: decoded examples from a list."""

  def __init__(self, examples, name='fake'):
    self.examples = examples
    self.name = name
    self.calls = []

  def __repr__(self):
    return f'<FakeSource {self.name}>'

  def dataset(self, *, shuffle=False, seed=0, input_context=None, instance_masks=True):
    self.calls.append(dict(shuffle=shuffle, seed=seed, input_context=input_context))
    keys = sorted(k for k in self.examples[0] if instance_masks or k != F.INSTANCE_MASKS)
    spec = {k: tf.TensorSpec(SPEC_SHAPES.get(k, []), DTYPES[k]) for k in keys}
    examples = [{k: e[k] for k in keys} for e in self.examples]
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)


@pytest.fixture(scope='module')
def pools():
  return digit_scenes.digit_pools()


@pytest.fixture(scope='module')
def scenes(pools):
  examples = [to_contract(digit_scenes.generate_scene(np.random.default_rng(i), pools['train'],
                                                      SIZE), 100 + i) for i in range(5)]
  examples[1][F.IS_CROWD] = np.arange(len(examples[1][F.CLASSES])) == 0   # one crowd box
  for key in (F.BOXES, F.CLASSES, F.IS_CROWD, F.AREA, F.INSTANCE_MASKS):   # no instances
    examples[4][key] = examples[4][key][:0]
  return examples


@pytest.fixture(scope='module')
def iconic(pools):
  return [to_contract(digit_scenes.generate_iconic(np.random.default_rng(i), pools['train'],
                                                   64), i) for i in range(4)]


def first(ds):
  return next(iter(ds))


def element(batch, i=0):
  return tf.nest.map_structure(lambda t: t[i].numpy(), batch)


def assert_same(ours, theirs, atol=1e-5):
  """Same structure, ints equal, floats close."""
  tf.nest.assert_same_structure(ours, theirs)
  for a, b in zip(tf.nest.flatten(ours), tf.nest.flatten(theirs)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    if np.issubdtype(a.dtype, np.floating):
      np.testing.assert_allclose(a, b, atol=atol)
    else:
      np.testing.assert_array_equal(a, b)


def mg_retinanet(**kwargs):
  return retinanet_input.Parser(
      output_size=[SIZE, SIZE], min_level=3, max_level=7, num_scales=3,
      aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4.0, dtype='float32', **kwargs)


def example_tensors(example):
  return {k: tf.constant(v) for k, v in example.items()}


# ------------------------------------------------------------------ Model Garden parity


def test_preprocess_for_inference_is_model_garden_eval(scenes):
  image, info = P.preprocess_for_inference(tf.constant(scenes[0][F.IMAGE][:100]), (SIZE, SIZE))
  mg_image, mg_labels = mg_retinanet()._parse_eval_data(  # pylint: disable=protected-access
      dict(example_tensors(scenes[0]), image=tf.constant(scenes[0][F.IMAGE][:100])))
  np.testing.assert_array_equal(image.numpy(), mg_image.numpy())
  np.testing.assert_array_equal(info.numpy(), mg_labels['image_info'].numpy())
  np.testing.assert_allclose(info.numpy()[:2], [[100, SIZE], [SIZE, SIZE]])


def test_detection_eval_labels_are_model_garden_eval_labels(scenes):
  ds = P.build_input(FakeSource(scenes), task='detection', global_batch_size=len(scenes),
                     is_training=False, output_size=(SIZE, SIZE))
  images, labels = first(ds)
  parser = mg_retinanet(max_num_instances=100)
  for i, example in enumerate(scenes):
    mg_image, mg_labels = parser._parse_eval_data(example_tensors(example))  # pylint: disable=protected-access
    ours = element(labels, i)
    assert_same(ours, tf.nest.map_structure(lambda t: t.numpy(), mg_labels))
    np.testing.assert_allclose(images[i].numpy(), mg_image.numpy(), atol=1e-5)
  gt = element(labels, 0)['groundtruths']
  assert gt['source_id'] == 100 and gt['boxes'].shape == (100, 4)
  n = len(scenes[0][F.CLASSES])
  np.testing.assert_allclose(gt['boxes'][:n], scenes[0][F.BOXES] * SIZE, atol=1e-4)
  assert (gt['classes'][n:] == -1).all()


def test_detection_train_labels_are_model_garden_train_labels(scenes):
  """Without random ops (no flip, no jitter) training labels equal Model Garden's
  `_parse_train_data` exactly, crowd boxes skipped."""
  aug = A.Augment('s1', output_size=(SIZE, SIZE), scale_min=1.0, scale_max=1.0, flip=False)
  ds = P.build_input(FakeSource(scenes), task='detection', global_batch_size=len(scenes),
                     is_training=True, output_size=(SIZE, SIZE), augment=aug, repeat=False,
                     shuffle_buffer=0, seed=1)
  images, labels = first(ds)
  parser = mg_retinanet(skip_crowd_during_training=True)
  by_id = {}
  for example in scenes:
    by_id[int(example[F.SOURCE_ID])] = parser._parse_train_data(example_tensors(example))  # pylint: disable=protected-access
  # The source shuffles when training: match the images.
  positives = np.concatenate([t.numpy().reshape(len(scenes), -1)
                              for t in labels['cls_targets'].values()], 1) > 0
  for i in range(len(scenes)):
    matches = [sid for sid, (img, _) in by_id.items()
               if np.allclose(img.numpy(), images[i].numpy(), atol=1e-5)]
    assert len(matches) == 1
    mg_labels = tf.nest.map_structure(lambda t: t.numpy(), by_id[matches[0]][1])
    ours = element(labels, i)
    # Our one extra key: the boxes left after augmentation (crowd boxes skipped).
    assert ours.pop('num_boxes') == np.sum(~np.asarray(scenes[matches[0] - 100][F.IS_CROWD],
                                                         bool))
    assert_same(ours, mg_labels)
    has_objects = len(scenes[matches[0] - 100][F.CLASSES]) > 0
    assert positives[i].any() == has_objects     # the scene without instances has none


def test_an_ignored_pseudo_box_is_neither_object_nor_background(scenes):
  """A pseudo box in the student's ignore band (class F.IGNORE_BOX_CLASS): the anchors it
  matches weigh 0 in both losses (removed, the box would make them background, weight 1);
  every other anchor's targets and weights are those of the scene with the box labeled;
  num_boxes counts the labeled boxes only."""
  aug = A.Augment('s1', output_size=(SIZE, SIZE), scale_min=1.0, scale_max=1.0, flip=False)
  labeled = scenes[0]
  n = len(labeled[F.CLASSES])
  ignored = dict(labeled, **{F.CLASSES: np.where(np.arange(n) == 0, F.IGNORE_BOX_CLASS,
                                                 labeled[F.CLASSES])})
  removed = {k: (v[1:] if k in (F.BOXES, F.CLASSES, F.IS_CROWD, F.AREA, F.INSTANCE_MASKS)
                 else v) for k, v in labeled.items()}

  def labels_of(example):
    ds = P.build_input(FakeSource([example]), task='detection', global_batch_size=1,
                       is_training=True, output_size=(SIZE, SIZE), augment=aug, repeat=False,
                       shuffle_buffer=0, seed=1)
    out = element(first(ds)[1])
    out['flat_cls'] = np.concatenate([out['cls_targets'][k].reshape(-1)
                                      for k in out['cls_targets']])
    return out

  full, band, gone = labels_of(labeled), labels_of(ignored), labels_of(removed)
  assert (full['cls_weights'] == 1).all() and not labeled[F.IS_CROWD].any()
  of_box = (full['box_weights'] > 0) & (band['box_weights'] == 0)   # box 0's anchors
  assert of_box.any() and (full['flat_cls'][of_box] == labeled[F.CLASSES][0]).all()
  assert (band['cls_weights'][of_box] == 0).all() and (band['cls_weights'][~of_box] == 1).all()
  assert (gone['cls_weights'][of_box] == 1).all() and (gone['box_weights'][of_box] == 0).all()
  np.testing.assert_array_equal(band['flat_cls'][~of_box], full['flat_cls'][~of_box])
  np.testing.assert_array_equal(band['box_weights'][~of_box], full['box_weights'][~of_box])
  assert band['num_boxes'] == n - 1 and full['num_boxes'] == n


def _mg_segmentation_data(example):
  return {
      'image/encoded': tf.io.encode_png(example[F.IMAGE]),
      'image/height': tf.constant(example[F.HEIGHT], tf.int64),
      'image/width': tf.constant(example[F.WIDTH], tf.int64),
      'image/segmentation/class/encoded': tf.io.encode_png(example[F.SEMANTIC_MASK]),
  }


@pytest.mark.parametrize('is_training', [True, False])
def test_segmentation_labels_are_model_garden_segmentation_labels(scenes, is_training):
  aug = A.Augment('s1', output_size=(SIZE, SIZE), scale_min=1.0, scale_max=1.0, flip=False)
  examples = [dict(e) for e in scenes[:2]]
  examples[1][F.IMAGE] = examples[1][F.IMAGE][:96]          # not square: padding is ignore
  examples[1][F.SEMANTIC_MASK] = examples[1][F.SEMANTIC_MASK][:96]
  examples[1][F.HEIGHT] = np.int64(96)
  ds = P.build_input(FakeSource(examples), task='segmentation', global_batch_size=2,
                     is_training=is_training, output_size=(SIZE, SIZE), augment=aug,
                     repeat=False, shuffle_buffer=0)
  images, labels = first(ds)
  parser = segmentation_input.Parser(output_size=[SIZE, SIZE], aug_rand_hflip=False)
  parse = parser._parse_train_data if is_training else parser._parse_eval_data  # pylint: disable=protected-access
  for i, example in enumerate(examples):
    mg_image, mg_labels = parse(_mg_segmentation_data(example))
    assert_same(element(labels, i), tf.nest.map_structure(lambda t: t.numpy(), mg_labels))
    np.testing.assert_allclose(images[i].numpy(), mg_image.numpy(), atol=1e-5)
  masks = labels['masks'].numpy()
  assert (masks[1, 96:] == F.IGNORE_LABEL).all() and not labels['valid_masks'][1, 96:].numpy().any()
  assert set(np.unique(masks[0])) <= set(range(11)) | {F.IGNORE_LABEL}


# ---------------------------------------------------------------- augmented pipelines


@pytest.mark.parametrize('policy', ['s2', 's4'])
def test_detection_training_with_policies(scenes, policy):
  aug = A.Augment(policy, output_size=(SIZE, SIZE), cutout_const=20, translate_const=50)
  ds = P.build_input(FakeSource(scenes), task='detection', global_batch_size=4,
                     is_training=True, output_size=(SIZE, SIZE), augment=aug,
                     boxes_from_masks=(policy == 's4'))
  for images, labels in ds.take(2):
    assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == tf.float32
    assert labels['cls_targets']['3'].shape == (4, 16, 16, 9)
    assert labels['box_targets']['7'].shape == (4, 1, 1, 36)
    assert labels['cls_weights'].shape == (4, 3069) and labels['image_info'].shape == (4, 4, 2)
    assert 'groundtruths' not in labels
    assert np.isfinite(images.numpy()).all()


def test_segmentation_training_moves_masks(scenes):
  """S3 in the segmentation pipeline (graph mode, normalized images): the masks move, and
  on synthetic scenes of flat-coloured objects (test_augment.make_example) each class of
  the mask lies on the pixels of its object in the image. The draws are keyed (a seeded
  stream), so the test checks the same augmentations on every run: with TF's stateful draws
  it drew afresh each run, and one CI run in ~20 drew one where 16% of the L's semantic mask
  lay off its colour (not reproduced here in 48 stateful and 150 keyed batches)."""
  from test_augment import CLASSES, check_aligned_with_image, make_example  # pylint: disable=g-import-not-at-top
  synthetic = {k: v.numpy() for k, v in make_example().items()}
  # Cutout leaves the masks untouched, so its hole is kept to 2x2 px: within the 1 px the
  # comparison allows. (A 4x4 hole, cutout_const=2, hid 16% of a cropped object in CI.)
  aug = A.Augment('s3', output_size=(SIZE, SIZE), cutout_const=1, translate_const=50)
  ds = P.build_input(FakeSource(scenes + [synthetic] * 7), task='segmentation',
                     global_batch_size=12, is_training=True, output_size=(SIZE, SIZE),
                     augment=aug, seed=0, position=Position(seed=0))
  originals = np.stack([e[F.SEMANTIC_MASK] for e in scenes]).astype(np.float32)
  images, labels = first(ds)     # FakeSource keeps the order: the 5 scenes, 7 synthetic
  masks = labels['masks'].numpy()
  assert masks.shape == (12, SIZE, SIZE, 1)
  assert set(np.unique(masks)) <= set(range(11)) | {F.IGNORE_LABEL}
  np.testing.assert_array_equal(labels['valid_masks'].numpy(), masks != F.IGNORE_LABEL)
  assert not np.array_equal(np.sort(masks[:5].reshape(5, -1), 1), np.sort(
      originals.reshape(5, -1), 1))
  images = images.numpy() * preprocess_ops.STDDEV_RGB + preprocess_ops.MEAN_RGB
  for image, mask, info in zip(images[5:], masks[5:], labels['image_info'].numpy()[5:]):
    check_aligned_with_image(image, None, CLASSES, None, mask.astype(np.uint8),
                             scale=info[2].max())


def test_classification(iconic):
  aug = A.Augment('s4', output_size=(64, 64))
  ds = P.build_input(FakeSource(iconic), task='classification', global_batch_size=4,
                     is_training=True, output_size=(64, 64), augment=aug)
  images, labels = first(ds)
  assert images.shape == (4, 64, 64, 3) and labels.dtype == tf.int32 and labels.shape == (4,)
  ds = P.build_input(FakeSource(iconic), task='classification', global_batch_size=4,
                     is_training=False, output_size=(64, 64), dtype='bfloat16')
  images, labels = first(ds)
  assert images.dtype == tf.bfloat16
  np.testing.assert_array_equal(labels.numpy(), [e[F.LABEL] for e in iconic])


def test_batching_and_input_context(scenes):
  source = FakeSource(scenes)
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  ds = P.build_input(source, task='detection', global_batch_size=4, is_training=True,
                     output_size=(SIZE, SIZE), input_context=context, seed=3, repeat=False,
                     augment=A.Augment('s1', output_size=(SIZE, SIZE)))
  sizes = [int(images.shape[0]) for images, _ in ds]
  assert sizes == [2, 2]                               # per replica, remainder dropped
  assert source.calls[-1] == dict(shuffle=True, seed=3, input_context=context)
  ds = P.build_input(source, task='detection', global_batch_size=2, is_training=False,
                     output_size=(SIZE, SIZE))
  assert [int(images.shape[0]) for images, _ in ds] == [2, 2, 1]   # eval keeps all
  assert source.calls[-1]['shuffle'] is False
  ds = P.build_input(source, task='detection', global_batch_size=2, is_training=True,
                     output_size=(SIZE, SIZE), cache=True,
                     augment=A.Augment('s1', output_size=(SIZE, SIZE)))
  assert source.calls[-1]['shuffle'] is False          # shuffled after the cache instead
  assert len(list(ds.take(7))) == 7                    # repeats when training


def test_pseudo_labels_keep_scores_aligned(scenes):
  """Pseudo-labeled examples (with scores) flow through unchanged in format."""
  pseudo = [dict(e, **{F.SCORES: np.linspace(0.5, 1.0, len(e[F.CLASSES])).astype(np.float32)})
            for e in scenes]
  ds = P.build_input(FakeSource(pseudo), task='detection', global_batch_size=2,
                     is_training=True, output_size=(SIZE, SIZE),
                     augment=A.Augment('s2', output_size=(SIZE, SIZE)))
  images, labels = first(ds)
  assert images.shape == (2, SIZE, SIZE, 3) and set(labels) >= {'cls_targets', 'box_weights'}


def test_gin_binding(scenes):
  gin.clear_config()
  try:
    gin.parse_config(['rethink_st.data.pipeline.build_input.output_size = (128, 128)',
                      "rethink_st.data.pipeline.build_input.task = 'segmentation'",
                      "rethink_st.augment.Augment.policy = 's4'"])
    ds = P.build_input(FakeSource(scenes), global_batch_size=2, is_training=True)
    images, labels = first(ds)
    assert images.shape == (2, 128, 128, 3) and labels['masks'].shape == (2, 128, 128, 1)
  finally:
    gin.clear_config()


def test_bad_input_is_one_clear_line(scenes, iconic):
  source = FakeSource(scenes)
  no_semantic = FakeSource([{k: v for k, v in e.items() if k != F.SEMANTIC_MASK}
                            for e in scenes])
  cases = [
      (dict(source=source, task='keypoints'), 'build_input.task'),
      (dict(source=source, dtype='int8'), 'build_input.dtype'),
      (dict(source=source, output_size=(100, 100)), '2**max_level'),
      (dict(source=source, augment=A.Augment(output_size=(256, 256))), 'Augment'),
      (dict(source=no_semantic, task='segmentation'), 'groundtruth_semantic_mask'),
      (dict(source=source, task='classification'), 'groundtruth_label'),
      (dict(source=source, global_batch_size=0), 'global_batch_size'),
      (dict(source='coco', task='detection'), 'build_input.source'),
  ]
  for kwargs, match in cases:
    kwargs = dict(dict(global_batch_size=2, is_training=True, output_size=(SIZE, SIZE)),
                  **kwargs)
    with pytest.raises(UserError) as info:
      P.build_input(**kwargs)
    assert match in str(info.value).splitlines()[0], str(info.value)


def test_non_numeric_source_ids_get_stable_int_ids():
  a = P.process_source_id(tf.constant('val/000123.png')).numpy()
  assert a == P.process_source_id(tf.constant('val/000123.png')).numpy()
  assert a != P.process_source_id(tf.constant('val/000124.png')).numpy()
  assert P.process_source_id(tf.constant('42')).numpy() == 42
  assert 0 <= a < 2 ** 53
