"""initialize_model: restoring backbone / decoder / head / all from TF2 checkpoints."""
from unittest import mock

import numpy as np
import pytest

import rethink_st  # pylint: disable=unused-import
import tensorflow as tf, tf_keras

from rethink_st import checkpoint
from rethink_st.errors import UserError
from rethink_st.modeling import classification
from rethink_st.modeling import detection
from rethink_st.modeling import init
from rethink_st.modeling import segmentation

DET = dict(input_size=(128, 128), num_classes=11, backbone='resnet-10', decoder_num_filters=16,
           head_num_convs=1, head_num_filters=16)


def _values(variables):
  return [v.numpy().copy() for v in variables]


def _same(a_vars, b_vars):
  return all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(a_vars, b_vars))


def _train_one_step(model, images):
  """Moves every weight (and BN statistic) off its initial value; adds optimizer slots."""
  opt = tf_keras.optimizers.SGD(0.1, momentum=0.9)
  with tf.GradientTape() as tape:
    out = model(images, training=True)
    loss = tf.add_n([tf.reduce_mean(tf.square(t - 1.0)) for t in tf.nest.flatten(out)])
  grads = tape.gradient(loss, model.trainable_variables)
  opt.apply_gradients(zip(grads, model.trainable_variables))
  return opt


@pytest.fixture(scope='module')
def classifier_ckpt(tmp_path_factory):
  """A pre-trained ResNet-10 classifier, saved the way our trainer saves."""
  clf = classification.build_classifier(input_size=(64, 64), num_classes=10,
                                        backbone='resnet-10')
  opt = _train_one_step(clf, tf.random.uniform([2, 64, 64, 3]))
  dirname = tmp_path_factory.mktemp('clf')
  prefix = tf.train.Checkpoint(model=clf, optimizer=opt).save(str(dirname / 'ckpt'))
  return clf, str(dirname), prefix


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
  teacher = detection.build_retinanet(**DET)
  opt = _train_one_step(teacher, tf.random.uniform([1, 128, 128, 3]))
  prefix = tf.train.Checkpoint(model=teacher, optimizer=opt).save(
      str(tmp_path_factory.mktemp('teacher') / 'ckpt'))
  return teacher, prefix


def test_classifier_backbone_into_detector_from_directory(classifier_ckpt):
  clf, dirname, prefix = classifier_ckpt
  det = detection.build_retinanet(**DET)
  head_before = _values(det.head.weights)
  decoder_before = _values(det.decoder.weights)
  assert not _same(clf.backbone.weights, det.backbone.weights)
  report = init.initialize_model(det, dirname)               # a directory: latest checkpoint
  assert report.checkpoint == prefix
  assert _same(clf.backbone.weights, det.backbone.weights)   # BN statistics included
  n = len(det.backbone.weights)
  assert report.num_restored == n and report.num_total == n and report.unrestored == ()
  assert report.sources == {'backbone': 'model/_backbone'}
  assert all(np.array_equal(a, b.numpy()) for a, b in zip(head_before, det.head.weights))
  assert all(np.array_equal(a, b.numpy()) for a, b in zip(decoder_before, det.decoder.weights))
  assert f'{n} of {n}' in report.summary()


def test_model_garden_style_backbone_checkpoints(classifier_ckpt, tmp_path):
  clf, _, _ = classifier_ckpt
  mg = tf.train.Checkpoint(backbone=clf.backbone).write(str(tmp_path / 'mg' / 'ckpt'))
  bare = tf.train.Checkpoint(model=clf.backbone).write(str(tmp_path / 'bare' / 'ckpt'))
  for path, source in ((mg, 'backbone'), (bare, 'model')):
    det = detection.build_retinanet(**DET)
    report = init.initialize_model(det, path)
    assert report.sources == {'backbone': source}
    assert _same(clf.backbone.weights, det.backbone.weights)


def test_classifier_backbone_into_segmentation_model(classifier_ckpt):
  clf, _, prefix = classifier_ckpt
  seg = segmentation.build_segmentation_model(
      input_size=(128, 128), num_classes=11, backbone='resnet-10', decoder_num_filters=16,
      nasfpn_num_repeats=1, head_num_convs=1, head_num_filters=16)
  report = init.initialize_model(seg, prefix, modules=['backbone'])
  assert report.num_restored == len(seg.backbone.weights)
  assert _same(clf.backbone.weights, seg.backbone.weights)


def test_student_from_teacher_all_and_partial_modules(teacher_ckpt):
  teacher, prefix = teacher_ckpt
  student = detection.build_retinanet(**DET)
  assert not _same(teacher.head.weights, student.head.weights)
  report = init.initialize_model(student, prefix, modules=('all',))
  assert report.unrestored == () and report.num_restored == len(student.weights)
  assert _same(teacher.weights, student.weights)

  partial = detection.build_retinanet(**DET)
  head_before = _values(partial.head.weights)
  report = init.initialize_model(partial, prefix, modules=('backbone', 'decoder'))
  assert report.num_restored == len(partial.backbone.weights) + len(partial.decoder.weights)
  assert _same(teacher.decoder.weights, partial.decoder.weights)
  assert all(np.array_equal(a, b.numpy()) for a, b in zip(head_before, partial.head.weights))


def test_joint_checkpoint_into_detector(teacher_ckpt, tmp_path):
  det = detection.build_retinanet(**DET)
  joint = classification.JointModel(
      det, classification.build_classification_head(det.backbone, 10, input_size=(64, 64)))
  _train_one_step(det, tf.random.uniform([1, 128, 128, 3]))
  prefix = tf.train.Checkpoint(model=joint).write(str(tmp_path / 'joint' / 'ckpt'))
  fresh = detection.build_retinanet(**DET)
  report = init.initialize_model(fresh, prefix, modules=['all'])
  assert report.sources == {'all': 'model/detector'} and report.unrestored == ()
  assert _same(det.weights, fresh.weights)


def test_unrestored_variables_are_reported(classifier_ckpt, tmp_path):
  # A checkpoint of the backbone's first conv only: everything else stays initial.
  clf, _, _ = classifier_ckpt
  det = detection.build_retinanet(**DET)
  partial = tf.train.Checkpoint(backbone=tf.train.Checkpoint(
      **{'layer_with_weights-0': clf.backbone.get_layer(index=1)}))
  path = partial.write(str(tmp_path / 'partial' / 'ckpt'))
  report = init.initialize_model(det, path)
  assert report.num_restored == 1 and len(report.unrestored) == len(det.backbone.weights) - 1
  conv = det.backbone.get_layer(index=1)
  assert report.restored == (conv.kernel.name,)
  np.testing.assert_array_equal(conv.kernel.numpy(), clf.backbone.get_layer(index=1).kernel)


def test_user_errors(teacher_ckpt, tmp_path):
  _, prefix = teacher_ckpt
  det = detection.build_retinanet(**DET)
  assert init.initialize_model(det, None) is None
  with pytest.raises(init.CheckpointNotFoundError,
                     match=r'^initialize_model.checkpoint=.*ckpt-1: no such folder or checkpoint'):
    init.initialize_model(det, str(tmp_path / 'missing' / 'ckpt-1'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(init.CheckpointNotFoundError, match='empty: holds no checkpoint'):
    init.initialize_model(det, str(tmp_path / 'empty'))
  with pytest.raises(UserError, match='^initialize_model.modules: unknown'):
    init.initialize_model(det, prefix, modules=('neck',))
  unrelated = tf.train.Checkpoint(step=tf.Variable(3)).write(str(tmp_path / 'other' / 'ckpt'))
  with pytest.raises(init.CheckpointMismatchError, match='holds none of the'):
    init.initialize_model(det, unrelated)
  other_classes = detection.build_retinanet(**dict(DET, num_classes=5))
  with pytest.raises(init.CheckpointMismatchError, match='other shapes') as e:
    init.initialize_model(other_classes, prefix, modules=['all'])
  assert 'scores/kernel' in str(e.value).splitlines()[0]
  # The same checkpoint still initializes what does match.
  report = init.initialize_model(other_classes, prefix, modules=['backbone', 'decoder'])
  assert report.num_restored == (len(other_classes.backbone.weights) +
                                 len(other_classes.decoder.weights))


def test_a_classifier_checkpoint_without_dropout_mask_state_restores(tmp_path):
  """The state of a classifier's dropout masks is run state, saved by the trainer beside the
  optimizer, not a weight of the model: a classifier checkpoint without it (from before
  classification.checkpointed_dropout_masks, or Model Garden's) restores in full."""
  with mock.patch.object(classification, 'checkpointed_dropout_masks', lambda layer: None):
    old = classification.build_classifier(input_size=(32, 32), num_classes=10,
                                          backbone='resnet-10', dropout_rate=0.2)
  prefix = tf.train.Checkpoint(model=old).save(str(tmp_path / 'ckpt'))
  new = classification.build_classifier(input_size=(32, 32), num_classes=10,
                                        backbone='resnet-10', dropout_rate=0.2)
  assert classification.dropout_mask_state(new) is not None
  report = checkpoint.restore_model(new, prefix, '--checkpoint')
  assert report.num_restored == len(new.variables)
  assert _same(old.variables, new.variables)
