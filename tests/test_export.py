"""export_saved_model: the reloaded SavedModel gives the Keras model's outputs (a RetinaNet
from detection.build_retinanet, a segmentation model)."""
import json
import os

import rethink_st  # noqa: F401  (legacy Keras before TensorFlow)
import gin
import numpy as np
import pytest
import tensorflow as tf, tf_keras

from official.vision.ops import anchor
from official.vision.ops import preprocess_ops
from rethink_st import export
from rethink_st.errors import UserError
from rethink_st.modeling import detection

INPUT_SIZE = (64, 64)
NUM_CLASSES = 11  # digits 1..10 + background
MAX_DETECTIONS = 20


def _tiny_retinanet():
  """detection.build_retinanet (what every run builds) at 64 x 64 with pyramid levels 3-5,
  its anchors from the gin-bound anchor_config as in a run; random weights."""
  tf_keras.utils.set_random_seed(0)
  gin.bind_parameter('rethink_st.modeling.anchors.anchor_config.max_level', 5)
  gin.bind_parameter('rethink_st.modeling.backbones.build_backbone.depth_multiplier', 0.125)
  # A score threshold of 0 so that an untrained model still returns detections to compare.
  return detection.build_retinanet(
      input_size=INPUT_SIZE, num_classes=NUM_CLASSES, backbone='resnet-10',
      decoder_num_filters=8, head_num_convs=1, head_num_filters=8, pre_nms_top_k=200,
      pre_nms_score_threshold=0.0, max_num_detections=MAX_DETECTIONS)


def _reference_anchors(batch):
  boxes = anchor.build_anchor_generator(
      min_level=3, max_level=5, num_scales=3, aspect_ratios=[0.5, 1.0, 2.0],
      anchor_size=4.0)(image_size=INPUT_SIZE)
  return {k: tf.tile(v[None], [batch, 1, 1, 1]) for k, v in boxes.items()}


def _reference_preprocess(images, size=INPUT_SIZE):
  """The eval pipeline's preprocessing, image by image, eagerly."""
  out, infos = [], []
  for image in images:
    image = preprocess_ops.normalize_image(tf.constant(image))
    image, info = preprocess_ops.resize_and_crop_image(
        image, list(size), padded_size=list(size), aug_scale_min=1.0,
        aug_scale_max=1.0)
    out.append(image)
    infos.append(info)
  return tf.stack(out), tf.stack(infos)


def _images(batch, height, width, seed):
  return np.random.default_rng(seed).integers(0, 256, [batch, height, width, 3], np.uint8)


@pytest.fixture(scope='module')
def detection_export(tmp_path_factory):
  """The tiny RetinaNet exported as run_export exports it: no anchor_config argument, so the
  export's anchors are the gin-bound ones (levels 3-5), which the tests rebuild by hand."""
  gin.clear_config()
  try:
    model = _tiny_retinanet()
    export_dir = str(tmp_path_factory.mktemp('export') / 'detection')
    export.export_saved_model(model, export_dir, task='detection', input_size=INPUT_SIZE)
  finally:
    gin.clear_config()
  return model, export_dir


def test_detection_saved_model_matches_keras_model(detection_export):
  model, export_dir = detection_export
  serve = tf.saved_model.load(export_dir).signatures['serving_default']
  for shape in ((2, 48, 80), (1, 100, 60)):  # any H, W; letterboxed inside
    images = _images(*shape, seed=shape[1])
    got = serve(images=tf.constant(images))
    inputs, image_info = _reference_preprocess(images)
    want = model(inputs, anchor_boxes=_reference_anchors(shape[0]),
                 image_shape=image_info[:, 1, :], training=False)
    scale = tf.tile(image_info[:, 2:3, :], [1, 1, 2])
    want_boxes = np.clip(want['detection_boxes'] / scale, 0, [[[shape[1], shape[2]] * 2]])
    np.testing.assert_allclose(got['image_info'], image_info, rtol=1e-6)
    np.testing.assert_array_equal(got['num_detections'], want['num_detections'])
    # score threshold 0: every image gets the builder's max_num_detections
    assert got['num_detections'].numpy().tolist() == [MAX_DETECTIONS] * shape[0]
    np.testing.assert_allclose(got['detection_boxes'], want_boxes,
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got['detection_scores'], want['detection_scores'],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got['detection_classes'], want['detection_classes'])
    # Boxes are in original-image pixels: inside the H x W image, and some touch its far
    # side (random-init boxes are large), so the scale really was undone.
    n = int(got['num_detections'][0])
    boxes = got['detection_boxes'].numpy()[0, :n]
    assert boxes[:, 2].max() == pytest.approx(shape[1])
    assert boxes[:, 3].max() <= shape[2] + 1e-3


def test_export_writes_settings_and_refuses_a_non_empty_dir(detection_export, tmp_path):
  model, export_dir = detection_export
  settings = json.load(open(os.path.join(export_dir, export.SETTINGS_FILE)))
  assert settings['task'] == 'detection' and settings['input_size'] == list(INPUT_SIZE)
  assert settings['anchors']['max_level'] == 5
  with pytest.raises(UserError, match='not empty') as e:
    export.export_saved_model(model, export_dir, input_size=INPUT_SIZE)
  assert export_dir in str(e.value).splitlines()[0]  # the line the binaries print


def test_bad_arguments_are_user_errors(tmp_path):
  model = tf_keras.Sequential([tf_keras.layers.Conv2D(3, 1)])
  with pytest.raises(UserError, match='task'):
    export.export_saved_model(model, str(tmp_path / 'a'), task='classify')
  with pytest.raises(UserError, match='input_size'):
    export.export_saved_model(model, str(tmp_path / 'a'), task='segmentation',
                              input_size=(64,))
  with pytest.raises(UserError, match='RetinaNet'):
    export.export_saved_model(model, str(tmp_path / 'a'), task='detection')


def _tiny_segmenter(num_classes=4):
  tf_keras.utils.set_random_seed(1)
  inputs = tf_keras.Input([None, None, 3])
  x = tf_keras.layers.Conv2D(8, 3, strides=2, padding='same', activation='relu')(inputs)
  x = tf_keras.layers.Conv2D(num_classes, 3, strides=2, padding='same')(x)  # 1/4 resolution
  return tf_keras.Model(inputs, {'logits': x})


def test_segmentation_saved_model_matches_keras_model(tmp_path):
  from rethink_st.evaluation import segmentation  # pylint: disable=g-import-not-at-top
  model = _tiny_segmenter()
  export_dir = str(tmp_path / 'seg')
  (tmp_path / 'seg').mkdir()  # an existing empty directory is fine
  export.export_saved_model(model, export_dir, task='segmentation', input_size=(32, 32),
                            scales=(0.5, 1.0), flip=True, size_divisor=4)
  serve = tf.saved_model.load(export_dir).signatures['serving_default']
  images = _images(2, 24, 40, seed=3)
  got = serve(images=tf.constant(images))
  assert got['probabilities'].shape == (2, 24, 40, 4)
  assert got['masks'].shape == (2, 24, 40)
  # Reference, eagerly: preprocessing at 32x32 (letterbox to 19x32 + padding), multi-scale
  # + flip probabilities on the canvas, then back to 24x40 original pixels.
  inputs, infos = _reference_preprocess(images, (32, 32))
  assert tuple(infos[0][1].numpy()) == (32, 32)
  assert list(infos[0][2].numpy()) == pytest.approx([19 / 24, 0.8])
  probs = segmentation.predict_probabilities(model, inputs, scales=(0.5, 1.0),
                                             flip=True, size_divisor=4)
  want = segmentation.restore_original_size(probs, infos).numpy()
  np.testing.assert_allclose(got['probabilities'], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got['masks'], got['probabilities'].numpy().argmax(-1))
  np.testing.assert_allclose(got['probabilities'].numpy().sum(-1), 1.0, rtol=1e-4)
  assert json.load(open(os.path.join(export_dir, export.SETTINGS_FILE)))['scales'] == [0.5, 1.0]


def test_overwrite_replaces_the_export(tmp_path):
  model = _tiny_segmenter(num_classes=3)
  export_dir = tmp_path / 'seg'
  export_dir.mkdir()
  (export_dir / 'stale.txt').write_text('old')
  export.export_saved_model(model, str(export_dir), task='segmentation', input_size=(16, 16),
                            overwrite=True)
  assert not (export_dir / 'stale.txt').exists()
  out = tf.saved_model.load(str(export_dir)).signatures['serving_default'](
      images=tf.zeros([1, 16, 16, 3], tf.uint8))
  assert out['probabilities'].shape == (1, 16, 16, 3)
