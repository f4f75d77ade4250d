"""Model builders: RetinaNet, segmentation, classifier, joint model, gin files. Tiny models."""
import glob
import os

import gin
import numpy as np
import pytest

import rethink_st  # pylint: disable=unused-import
import tensorflow as tf, tf_keras

from official.vision.modeling import classification_model
from official.vision.modeling import retinanet_model
from official.vision.modeling import segmentation_model
from official.vision.modeling.backbones import efficientnet as mg_efficientnet

from rethink_st import config_io
from rethink_st.errors import UserError
from rethink_st.modeling import anchors
from rethink_st.modeling import backbones
from rethink_st.modeling import classification
from rethink_st.modeling import detection
from rethink_st.modeling import segmentation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DET = dict(input_size=(128, 128), num_classes=11, backbone='resnet-10',
                decoder_num_filters=16, head_num_convs=1, head_num_filters=16)
TINY_SEG = dict(input_size=(128, 128), num_classes=11, backbone='resnet-10',
                decoder_num_filters=16, nasfpn_num_repeats=1, head_num_convs=1,
                head_num_filters=16)


@pytest.fixture(autouse=True)
def _clean():
  gin.clear_config()
  tf_keras.backend.clear_session()
  yield
  gin.clear_config()
  tf_keras.mixed_precision.set_global_policy('float32')


def _images(n=2, size=(128, 128)):
  return tf.random.stateless_uniform([n, size[0], size[1], 3], seed=(1, 2), minval=-1,
                                     maxval=1)


# --- backbones -----------------------------------------------------------------------------

def test_unknown_backbone_is_one_line_listing_known_names():
  with pytest.raises(backbones.UnknownBackboneError) as e:
    backbones.build_backbone('resnet-51', (128, 128))
  # Gin appends an "In call to configurable" context line; the message is the first line.
  msg = str(e.value).splitlines()[0]
  assert 'resnet-51' in msg and 'resnet-50' in msg and 'spinenet-190' in msg
  assert 'efficientnet-l2' in msg
  assert isinstance(e.value, UserError)


def test_backbone_names_are_case_insensitive_and_levels():
  bb = backbones.build_backbone('ResNet-10', (64, 64))
  assert sorted(bb.output_specs) == ['2', '3', '4', '5']
  assert bb.output_specs['5'].as_list() == [None, 2, 2, 512]


def test_spinenet_levels_follow_anchor_config_and_check_size():
  bb = backbones.build_backbone('spinenet-49s', (128, 128))
  assert sorted(int(k) for k in bb.output_specs) == [3, 4, 5, 6, 7]
  with pytest.raises(UserError, match='divisible'):
    backbones.build_backbone('spinenet-49s', (100, 128))


def test_efficientnet_l2_registered_and_se_ratio_of_published_models():
  assert mg_efficientnet.SCALING_MAP['l2'] == dict(width_scale=4.3, depth_scale=5.3)
  cfg = backbones.backbone_config('efficientnet-l2')
  assert cfg.efficientnet.model_id == 'l2' and cfg.efficientnet.se_ratio == 0.25
  # EfficientNet-B0 as published (5.3M with its 1.28M-parameter ImageNet classifier).
  b0 = backbones.build_backbone('efficientnet-b0', (64, 64), activation='swish')
  n = backbones.count_params(b0, trainable_only=True) + 1280 * 1000 + 1000
  assert abs(n - 5.29e6) / 5.29e6 < 0.01


def test_bad_activation_and_drop_connect_are_user_errors():
  with pytest.raises(UserError, match='activation'):
    backbones.build_backbone('resnet-10', (64, 64), activation='nope')
  with pytest.raises(UserError, match='drop_connect_rate'):
    backbones.build_backbone('resnet-10', (64, 64), drop_connect_rate=1.5)


# --- RetinaNet -----------------------------------------------------------------------------

def test_retinanet_outputs_nine_anchors_per_location_and_detections():
  model = detection.build_retinanet(max_num_detections=7, pre_nms_score_threshold=0.0,
                                    **TINY_DET)
  assert isinstance(model, retinanet_model.RetinaNetModel)
  cfg = anchors.anchor_config()
  out = model(_images(), training=True)
  assert sorted(out['cls_outputs']) == ['3', '4', '5', '6', '7']
  for level in range(cfg.min_level, cfg.max_level + 1):
    stride = 2 ** level
    assert out['cls_outputs'][str(level)].shape.as_list() == [2, 128 // stride, 128 // stride,
                                                              9 * 11]
    assert out['box_outputs'][str(level)].shape.as_list() == [2, 128 // stride, 128 // stride,
                                                              9 * 4]
  assert 'detection_boxes' not in out
  det = model(_images(), image_shape=tf.constant([[128, 128]] * 2), training=False)
  assert det['detection_boxes'].shape.as_list() == [2, 7, 4]
  assert det['num_detections'].numpy().tolist() == [7, 7]   # threshold 0 keeps the top 7
  classes = det['detection_classes'].numpy()
  assert classes.min() >= 1 and classes.max() <= 10           # background 0 never returned


def test_retinanet_score_threshold_and_soft_nms_wiring():
  # Model Garden initializes the class bias to prior 0.01: no score reaches 0.5.
  model = detection.build_retinanet(pre_nms_score_threshold=0.5, soft_nms_sigma=0.3,
                                    **TINY_DET)
  gen = model.detection_generator.get_config()
  assert gen['soft_nms_sigma'] == 0.3 and gen['nms_version'] == 'v1'
  det = model(_images(1), image_shape=tf.constant([[128, 128]]), training=False)
  assert det['num_detections'].numpy().tolist() == [0]
  hard = detection.build_retinanet(**TINY_DET).detection_generator.get_config()
  assert hard['soft_nms_sigma'] is None and hard['nms_version'] == 'v2'
  with pytest.raises(UserError, match='soft_nms_sigma'):
    detection.build_retinanet(soft_nms_sigma=0.3, nms_version='v2', **TINY_DET)


def test_retinanet_head_and_decoder_settings_change_the_model():
  base = backbones.count_params(detection.build_retinanet(**TINY_DET).head)
  wider = detection.build_retinanet(**dict(TINY_DET, head_num_convs=3, head_num_filters=32))
  assert backbones.count_params(wider.head) > base
  nas = detection.build_retinanet(decoder='nasfpn', nasfpn_num_repeats=1,
                                  use_separable_conv=True, **TINY_DET)
  assert type(nas.decoder).__name__ == 'NASFPN'
  spine = detection.build_retinanet(**dict(TINY_DET, backbone='spinenet-49s',
                                           decoder='identity'))
  assert spine.decoder is None and spine.head.built
  out = spine(_images(1), training=True)
  assert out['cls_outputs']['7'].shape.as_list() == [1, 1, 1, 99]


def test_retinanet_user_errors():
  with pytest.raises(UserError, match='divisible by 2\\*\\*max_level = 128'):
    detection.build_retinanet(**dict(TINY_DET, input_size=(100, 128)))
  with pytest.raises(UserError, match='unknown decoder'):
    detection.build_retinanet(**dict(TINY_DET, decoder='bifpn'))
  with pytest.raises(UserError, match='identity'):
    detection.build_retinanet(**dict(TINY_DET, decoder='identity'))   # ResNet has no P6/P7


def test_outputs_are_float32_under_mixed_precision():
  tf_keras.mixed_precision.set_global_policy('mixed_float16')
  det = detection.build_retinanet(**TINY_DET)
  out = det(_images(1), training=True)
  feats = det.backbone(_images(1))
  assert feats['3'].dtype == tf.float16                    # the policy is in force...
  assert out['cls_outputs']['3'].dtype == tf.float32       # ...but the outputs are float32
  assert out['box_outputs']['3'].dtype == tf.float32
  seg = segmentation.build_segmentation_model(**TINY_SEG)
  assert seg(_images(1), training=True)['logits'].dtype == tf.float32
  clf = classification.build_classifier(input_size=(32, 32), num_classes=10,
                                        backbone='resnet-10')
  assert clf(_images(1, (32, 32)), training=True).dtype == tf.float32


# --- segmentation --------------------------------------------------------------------------

def test_segmentation_logits_at_fusion_level():
  model = segmentation.build_segmentation_model(**TINY_SEG)
  assert isinstance(model, segmentation_model.SegmentationModel)
  head = model.head.get_config()
  assert head['feature_fusion'] == 'pyramid_fusion' and head['level'] == 2
  assert head['num_convs'] == 1
  assert type(model.decoder).__name__ == 'NASFPN'
  assert model.decoder.get_config()['use_separable_conv'] is True
  logits = model(_images(2), training=True)['logits']
  assert logits.shape.as_list() == [2, 32, 32, 11]
  logits3 = segmentation.build_segmentation_model(**dict(TINY_SEG, fusion_level=3))(
      _images(1), training=False)['logits']
  assert logits3.shape.as_list() == [1, 16, 16, 11]
  with pytest.raises(UserError, match='fusion_level'):
    segmentation.build_segmentation_model(**dict(TINY_SEG, fusion_level=9))


# --- classification and joint model --------------------------------------------------------

def test_classifier_and_dropout():
  clf = classification.build_classifier(input_size=(32, 32), num_classes=10,
                                        backbone='resnet-10', dropout_rate=0.5)
  assert isinstance(clf, classification_model.ClassificationModel)
  x = _images(4, (32, 32))
  assert clf(x, training=False).shape.as_list() == [4, 10]
  np.testing.assert_allclose(clf(x, training=False), clf(x, training=False))
  assert clf.get_config()['dropout_rate'] == 0.5
  with pytest.raises(UserError, match='dropout_rate'):
    classification.build_classifier(input_size=(32, 32), num_classes=10,
                                    backbone='resnet-10', dropout_rate=1.0)


def test_joint_model_shares_the_backbone():
  det = detection.build_retinanet(**TINY_DET)
  head = classification.build_classification_head(det.backbone, 10, input_size=(64, 64))
  assert head.backbone is det.backbone
  joint = classification.JointModel(det, head)
  assert joint.backbone is det.backbone and joint.head is det.head
  with tf.GradientTape() as tape:
    out = joint(_images(2), classification_images=_images(3, (64, 64)), training=True)
    cls_loss = tf.reduce_sum(out['classification_logits'])
  assert out['classification_logits'].shape.as_list() == [3, 10]
  assert out['cls_outputs']['3'].shape[0] == 2
  grads = tape.gradient(cls_loss, det.backbone.trainable_variables)
  assert all(g is not None for g in grads)       # the classification loss trains the backbone
  # One set of backbone variables: the joint model adds only the dense layer's 2.
  names = [v.name for v in joint.trainable_variables]
  assert len(joint.trainable_variables) == len(det.trainable_variables) + 2
  assert len(set(id(v) for v in joint.trainable_variables)) == len(names)
  other = detection.build_retinanet(**TINY_DET)
  with pytest.raises(ValueError, match='detector.backbone'):
    classification.JointModel(other, head)


# --- gin files -----------------------------------------------------------------------------

def _model_gin_files():
  return sorted(glob.glob(os.path.join(REPO, 'gin_configs', 'base', 'models', '*.gin')) +
                glob.glob(os.path.join(REPO, 'gin_configs', 'digits', 'model_*.gin')))


def test_model_gin_files_parse_and_start_with_imports():
  files = _model_gin_files()
  assert len(files) >= 10
  for path in files:
    gin.clear_config()
    config_io.parse_gin([path], [])
    lines = [l for l in open(path).read().splitlines() if l.strip()]
    first_code = next(l for l in lines if not l.startswith('#'))
    assert first_code.startswith(('import ', 'include ')), path


def test_digit_gin_files_build_the_digit_models():
  digits = os.path.join(REPO, 'gin_configs', 'digits')
  config_io.parse_gin([os.path.join(digits, 'model_retinanet.gin')], [])
  det = detection.build_retinanet(input_size=(128, 128), num_classes=11)
  assert det.backbone.get_config()['model_id'] == 18
  assert anchors.anchor_config().anchor_size == 2.0
  assert det.head.get_config()['num_filters'] == 64
  assert det(_images(1), training=True)['cls_outputs']['3'].shape[-1] == 99

  gin.clear_config()
  config_io.parse_gin([os.path.join(digits, 'model_segmentation.gin')], [])
  seg = segmentation.build_segmentation_model(input_size=(128, 128), num_classes=11)
  assert seg(_images(1), training=False)['logits'].shape.as_list() == [1, 32, 32, 11]

  gin.clear_config()
  config_io.parse_gin([os.path.join(digits, 'model_classifier.gin')], [])
  clf = classification.build_classifier(input_size=(64, 64), num_classes=10)
  assert clf.backbone.get_config()['model_id'] == 18
  # experiments/pretrain.gin's classifier initializes the RetinaNet's and the segmenter's
  # backbones (experiments/init_pretrained.gin): all three take their width from backbone.gin.
  shapes = lambda model: [v.shape.as_list() for v in model.backbone.variables]
  assert shapes(clf)[0] == [7, 7, 3, 32]     # half width: 32-256 channels
  assert shapes(clf) == shapes(det) == shapes(seg)

  gin.clear_config()
  config_io.parse_gin([os.path.join(digits, 'model_joint.gin')], [])
  joint = classification.build_joint_model(input_size=(128, 128), num_classes=11)
  out = joint(_images(1), classification_images=_images(2, (64, 64)), training=False)
  assert out['classification_logits'].shape.as_list() == [2, 10]
  assert 'detection_boxes' in out
