"""The paper's full-size models, built (not trained), against their published parameter counts.

Counts are trainable parameters (batch-norm moving statistics excluded), COCO heads with 91
classes as Model Garden uses (ids 1..90 + background), at the authors' settings
(paper/NOTES.md). Parameter counts do not depend on the input size, so every model is built at
128 x 128 (the smallest size with a P7 level). Measured:

    model                                 measured    published   difference
    RetinaNet ResNet-101 + FPN             53.08M       53.1M       -0.04%
    RetinaNet SpineNet-143 (head 256x4)    66.96M       67.0M       -0.06%
    RetinaNet SpineNet-190 (head 512x7)   163.64M      163.6M       +0.02%
    NAS-FPN EfficientNet-B7 (PASCAL)       69.17M       71M         -2.6%
    NAS-FPN EfficientNet-L2 (PASCAL)      480.47M      485M         -0.9%

With 81 classes (COCO's 80 + background) the RetinaNet heads would have 0.21M fewer
parameters (10 classes x 9 anchors x (3*3*256 + 1)); 91 reproduces the published numbers.

The segmentation models' published counts match our models plus the EfficientNet's ImageNet
classifier layer (B7: 2560 x 1000 + 1000 = 2.56M -> 71.73M, +1.0%; L2: 5504 x 1000 + 1000 =
5.51M -> 485.98M, +0.2%): the paper quotes the classification network's size (B7 66M, L2
480M, as published for EfficientNet / Noisy Student) plus decoder and head. That classifier
layer is not part of a segmentation model; Model Garden's segmentation head itself (3 x 3x3
convs of 256, 1x1 to 21 classes: 1.78M) and separable NAS-FPN (3.6M for B7) are as the
paper describes. Model Garden's EfficientNet backbone keeps the network's final 1x1 conv
(B7: 1.64M, L2: 7.6M) although detection and segmentation use levels 2..5 only; it is in
the counts above, as it is in the published classification networks.

The whole file takes about a minute on 2 cores (EfficientNet-L2 alone about 30 s and 2 GB).
"""
import gc

import pytest

import rethink_st  # pylint: disable=unused-import
import tensorflow as tf, tf_keras

from rethink_st.modeling import backbones
from rethink_st.modeling import detection
from rethink_st.modeling import segmentation

SIZE = (128, 128)


def _trainable(build_fn):
  tf_keras.backend.clear_session()
  model = build_fn()
  n = backbones.count_params(model, trainable_only=True)
  parts = {k: backbones.count_params(getattr(model, k), trainable_only=True)
           for k in ('backbone', 'decoder', 'head') if getattr(model, k, None) is not None}
  del model
  tf_keras.backend.clear_session()
  gc.collect()
  return n, parts


def _close(measured, published, tol=0.02):
  return abs(measured - published) / published < tol


def test_retinanet_resnet101_fpn():
  n, parts = _trainable(lambda: detection.build_retinanet(
      input_size=SIZE, num_classes=91, backbone='resnet-101', decoder='fpn'))
  assert _close(n, 53.1e6, 0.005), (n, parts)


def test_retinanet_spinenet143():
  n, parts = _trainable(lambda: detection.build_retinanet(
      input_size=SIZE, num_classes=91, backbone='spinenet-143', decoder='identity',
      head_num_convs=4, head_num_filters=256, activation='swish', soft_nms_sigma=0.3))
  assert _close(n, 67.0e6, 0.005), (n, parts)


def test_retinanet_spinenet190():
  n, parts = _trainable(lambda: detection.build_retinanet(
      input_size=SIZE, num_classes=91, backbone='spinenet-190', decoder='identity',
      head_num_convs=7, head_num_filters=512, activation='swish', soft_nms_sigma=0.3))
  assert _close(n, 163.6e6, 0.005), (n, parts)


@pytest.mark.parametrize('name,published,width', [('efficientnet-b7', 71e6, 2560),
                                                   ('efficientnet-l2', 485e6, 5504)])
def test_segmentation_nasfpn(name, published, width):
  n, parts = _trainable(lambda: segmentation.build_segmentation_model(
      input_size=SIZE, num_classes=21, backbone=name, backbone_activation='swish',
      decoder='nasfpn', nasfpn_num_repeats=7, use_separable_conv=True, fusion_level=2,
      head_num_convs=3, head_num_filters=256, norm_momentum=0.997))
  # The published figure counts the EfficientNet's ImageNet classifier (module docstring).
  imagenet_classifier = width * 1000 + 1000
  assert _close(n + imagenet_classifier, published), (n, parts)
  assert _close(n, published, 0.03), (n, parts)
  assert parts['head'] == 3 * 3 * 3 * 256 * 256 + 3 * 2 * 256 + 256 * 21 + 21
