"""The paper's full-size models against their published parameter counts.

Counts are trainable parameters (batch-norm moving statistics excluded), COCO heads with 91
classes as Model Garden uses (ids 1..90 + background), at the authors' settings
(paper/NOTES.md). Measured:

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

Where the counting happens: each of these networks is a paper config's model
(gin_configs/base/models/*.gin), which tests/test_paper_configs.py builds anyway, at the
config's real input size (parameter counts do not depend on the input size). It calls
`check_published_count` on every model it builds, so each full-size network is built once
per test session, not twice (EfficientNet-L2 alone is about 25 s of CPU and 2 GB). The
configs' COCO heads have 81 classes; `count_at_classes` gives the count the same network has
with 91, which the tests here show to be exact. This file checks that every published count
has a paper config whose model it is checked on, and that a wrong count fails.
"""
import os

import gin
import pytest

import rethink_st  # pylint: disable=unused-import
import tensorflow as tf, tf_keras

from rethink_st import config_io
from rethink_st.modeling import backbones
from rethink_st.modeling import detection

# (task kind, backbone) -> (published trainable parameters, relative tolerance, parameters of
# the ImageNet classifier layer that the published figure includes and our model has not)
PUBLISHED = {
    ('detection', 'resnet-101'): (53.1e6, 0.005, 0),
    ('detection', 'spinenet-143'): (67.0e6, 0.005, 0),
    ('detection', 'spinenet-190'): (163.6e6, 0.005, 0),
    ('segmentation', 'efficientnet-b7'): (71e6, 0.02, 2560 * 1000 + 1000),
    ('segmentation', 'efficientnet-l2'): (485e6, 0.02, 5504 * 1000 + 1000),
}
COCO_CLASSES = 91   # Model Garden's COCO heads (ids 1..90 + background), as published
PASCAL_SEGMENTATION_HEAD = 3 * 3 * 3 * 256 * 256 + 3 * 2 * 256 + 256 * 21 + 21


def _trainable(layer):
  return backbones.count_params(layer, trainable_only=True)


def _close(measured, published, tol):
  return abs(measured - published) / published < tol


def count_at_classes(model, num_classes: int) -> int:
  """Trainable parameters `model` (a RetinaNet) would have with `num_classes` classes: only
  the head's classification conv depends on them (anchors x classes outputs, each a 3x3 conv
  over the head's channels plus a bias)."""
  head = model.head.get_config()
  per_class = head['num_anchors_per_location'] * (3 * 3 * head['num_filters'] + 1)
  return _trainable(model) + (num_classes - head['num_classes']) * per_class


def check_published_count(model, kind: str, backbone: str) -> bool:
  """Asserts that `model`, a `kind` ('detection' / 'segmentation') model with `backbone`, has
  the published number of parameters; False if none is published for it."""
  if (kind, backbone) not in PUBLISHED:
    return False
  published, tol, imagenet_classifier = PUBLISHED[(kind, backbone)]
  parts = {k: _trainable(getattr(model, k)) for k in ('backbone', 'decoder', 'head')
           if getattr(model, k, None) is not None}
  if kind == 'detection':
    n = count_at_classes(model, COCO_CLASSES)
    assert _close(n, published, tol), (backbone, n, published, parts)
  else:
    n = _trainable(model)
    # The published figure counts the EfficientNet's ImageNet classifier (module docstring).
    assert _close(n + imagenet_classifier, published, tol), (backbone, n, published, parts)
    assert _close(n, published, 0.03), (backbone, n, published, parts)
    assert parts['head'] == PASCAL_SEGMENTATION_HEAD, (backbone, parts)
  return True


def _tiny_retinanet(num_classes, head_num_filters, zero_initialized_variables):
  tf_keras.backend.clear_session()
  with zero_initialized_variables():
    return detection.build_retinanet(input_size=(128, 128), num_classes=num_classes,
                                     backbone='resnet-10', decoder_num_filters=8,
                                     head_num_convs=2, head_num_filters=head_num_filters)


@pytest.mark.parametrize('head_num_filters', [8, 16])
def test_count_at_classes_is_the_count_of_the_model_with_those_classes(
    head_num_filters, zero_initialized_variables):
  """What the paper configs' 81-class COCO models are checked with: exact, not approximate."""
  at_81 = _tiny_retinanet(81, head_num_filters, zero_initialized_variables)
  at_91 = _tiny_retinanet(COCO_CLASSES, head_num_filters, zero_initialized_variables)
  assert count_at_classes(at_81, COCO_CLASSES) == _trainable(at_91)
  assert count_at_classes(at_91, 81) == _trainable(at_81)
  assert _trainable(at_91) - _trainable(at_81) == 10 * 9 * (3 * 3 * head_num_filters + 1)


def test_every_published_count_is_checked_on_a_paper_config_model():
  """tests/test_paper_configs.py builds every paper config's model and calls
  check_published_count on it: each published count must belong to one of those models."""
  from test_paper_configs import PAPER, model_identity  # pylint: disable=g-import-not-at-top
  built = set()
  for path in PAPER:
    gin.clear_config()
    config_io.parse_gin([os.path.join(config_io.REPO_ROOT, path)], [])
    built.add(model_identity())
  gin.clear_config()
  assert set(PUBLISHED) <= built, set(PUBLISHED) - built


def test_a_wrong_count_fails(zero_initialized_variables):
  model = _tiny_retinanet(81, 8, zero_initialized_variables)
  n = count_at_classes(model, COCO_CLASSES)
  try:
    PUBLISHED[('detection', 'tiny')] = (n, 0.005, 0)
    assert check_published_count(model, 'detection', 'tiny')
    PUBLISHED[('detection', 'tiny')] = (n * 1.01, 0.005, 0)
    with pytest.raises(AssertionError):
      check_published_count(model, 'detection', 'tiny')
  finally:
    del PUBLISHED[('detection', 'tiny')]
  assert not check_published_count(model, 'detection', 'resnet-10')
