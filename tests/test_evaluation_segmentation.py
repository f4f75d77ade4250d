"""mIoU on handcrafted masks, multi-scale/flip inference with fake models, pseudo masks."""
import math

import rethink_st  # noqa: F401  (legacy Keras before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf, tf_keras

from rethink_st.errors import UserError
from rethink_st.evaluation import segmentation as seg

# Ground truth and prediction on one 2x4 image, 3 classes + ignore.
GT = np.array([[[0, 0, 1, 1],
                [0, 2, 1, 255]]])
PRED = np.array([[[0, 1, 1, 1],
                  [0, 2, 2, 0]]])
# Counted pixels (the 255 one is out): class 0: tp 2, gt 3, pred 2 -> 2/3;
# class 1: tp 2, gt 3, pred 3 -> 2/4; class 2: tp 1, gt 1, pred 2 -> 1/2.


def test_miou_on_handcrafted_labels():
  ev = seg.MeanIoUEvaluator(num_classes=3)
  ev.update_state(GT, PRED)
  r = ev.result()
  assert r['per_class_IoU'] == pytest.approx([2 / 3, 1 / 2, 1 / 2])
  assert r['mIoU'] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
  assert r['pixel_accuracy'] == pytest.approx(5 / 7)


def test_scores_are_argmaxed_and_valid_mask_excludes_pixels():
  scores = tf.one_hot(PRED, 3) * 5.0  # logits
  valid = np.ones_like(GT, bool)
  valid[0, 0, 1] = False  # drops a class-0 pixel predicted as 1
  ev = seg.MeanIoUEvaluator(num_classes=3)
  ev.update_state(GT[..., None], scores, valid[..., None])
  r = ev.result()
  # class 0: tp 2, gt 2, pred 2 -> 1; class 1: tp 2, gt 3, pred 2 -> 2/3; class 2 unchanged.
  assert r['per_class_IoU'] == pytest.approx([1.0, 2 / 3, 1 / 2])


def test_low_resolution_scores_are_resized_to_the_mask():
  gt = np.zeros([1, 8, 8], np.int32)
  gt[:, :, 4:] = 1
  logits = np.zeros([1, 4, 4, 2], np.float32)
  logits[:, :, :2, 0] = 1.0
  logits[:, :, 2:, 1] = 1.0
  ev = seg.MeanIoUEvaluator(num_classes=2)
  ev.update_state(gt, logits)
  assert ev.result()['mIoU'] == pytest.approx(1.0)


def test_absent_class_is_nan_and_left_out_of_the_mean_like_keras():
  gt = np.array([[[0, 0, 3, 3]]])
  pred = np.array([[[0, 3, 3, 3]]])
  ev = seg.MeanIoUEvaluator(num_classes=5)
  ev.update_state(gt, pred)
  r = ev.result()
  iou = r['per_class_IoU']
  assert iou[0] == pytest.approx(0.5) and iou[3] == pytest.approx(2 / 3)
  assert all(math.isnan(iou[c]) for c in (1, 2, 4))
  assert r['mIoU'] == pytest.approx((0.5 + 2 / 3) / 2)
  keras_miou = tf_keras.metrics.MeanIoU(num_classes=5)
  keras_miou.update_state(gt.reshape(-1), pred.reshape(-1))
  assert r['mIoU'] == pytest.approx(float(keras_miou.result()))


def test_accumulates_over_batches_and_resets():
  ev = seg.MeanIoUEvaluator(num_classes=3)
  ev.update_state(GT, GT)          # perfect
  ev.update_state(GT, PRED)
  cm = ev.confusion_matrix()
  assert cm.sum() == 14
  assert np.trace(cm) == 7 + 5
  ev.reset()
  assert math.isnan(ev.result()['mIoU'])


def test_works_inside_tf_function():
  ev = seg.MeanIoUEvaluator(num_classes=3)
  tf.function(ev.update_state)(tf.constant(GT), tf.constant(PRED))
  assert ev.result()['mIoU'] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)


def test_out_of_range_prediction_and_bad_num_classes():
  ev = seg.MeanIoUEvaluator(num_classes=3)
  with pytest.raises(tf.errors.InvalidArgumentError, match='predicted label'):
    ev.update_state(GT, np.full_like(GT, 7))
  with pytest.raises(UserError, match='num_classes'):
    seg.MeanIoUEvaluator(num_classes=1)


class _ConstantByScale:
  """Logits constant over space; the class depends on the input height. Records calls."""

  def __init__(self, favoured_by_height, num_classes=3, logit=math.log(3.0)):
    self.favoured = favoured_by_height
    self.num_classes = num_classes
    self.logit = logit
    self.calls = []

  def __call__(self, x, training=None):
    assert training is False
    self.calls.append(tuple(x.shape))
    b, h, w = x.shape[0], x.shape[1], x.shape[2]
    one_hot = tf.one_hot(self.favoured[h], self.num_classes) * self.logit
    # Lower resolution than the input, like a real head.
    return {'logits': tf.broadcast_to(one_hot, [b, max(h // 4, 1), max(w // 4, 1),
                                                self.num_classes])}


def test_multi_scale_averages_softmaxes_of_each_scale():
  images = tf.zeros([2, 8, 12, 3])
  model = _ConstantByScale({4: 0, 8: 1, 12: 2})
  probs = seg.predict_probabilities(model, images, scales=(0.5, 1.0, 1.5))
  assert model.calls == [(2, 4, 6, 3), (2, 8, 12, 3), (2, 12, 18, 3)]
  assert probs.shape == (2, 8, 12, 3)
  # Each scale: softmax of (log 3, 0, 0) -> 3/5 for its class, 1/5 for the others.
  np.testing.assert_allclose(probs.numpy(), np.full([2, 8, 12, 3], (3 / 5 + 1 / 5 + 1 / 5) / 3),
                             rtol=1e-6)
  model = _ConstantByScale({4: 0, 8: 0, 12: 2})
  probs = seg.predict_probabilities(model, images, scales=(0.5, 1.0, 1.5), output_size=(5, 7))
  assert probs.shape == (2, 5, 7, 3)
  np.testing.assert_allclose(probs.numpy()[0, 0, 0], [7 / 15, 3 / 15, 5 / 15], rtol=1e-6)


def _position_model(x, training=None):
  """A full-resolution 'model' whose logits are not flip-symmetric: channel 0 grows to the
  right, channel 1 follows the input's first channel."""
  del training
  w = tf.shape(x)[2]
  ramp = tf.cast(tf.range(w), tf.float32)[None, None, :, None] * tf.ones_like(x[..., :1])
  return {'logits': tf.concat([ramp * 0.3, x[..., :1]], axis=-1)}


def test_flip_averages_with_the_mirrored_prediction():
  rng = np.random.default_rng(0)
  images = tf.constant(rng.normal(size=[1, 4, 6, 3]), tf.float32)
  probs = seg.predict_probabilities(_position_model, images, flip=True).numpy()
  plain = tf.nn.softmax(_position_model(images)['logits']).numpy()
  mirrored = tf.reverse(tf.nn.softmax(_position_model(tf.reverse(images, [2]))['logits']),
                        [2]).numpy()
  np.testing.assert_allclose(probs, (plain + mirrored) / 2, rtol=1e-6)
  assert not np.allclose(probs, plain)


def test_size_divisor_pads_for_the_model_and_crops_back():
  rng = np.random.default_rng(1)
  images = tf.constant(rng.normal(size=[1, 6, 10, 3]), tf.float32)
  seen = []

  def model(x, training=None):
    seen.append(tuple(x.shape[1:3]))
    return _position_model(x, training)

  probs = seg.predict_probabilities(model, images, size_divisor=4)
  assert seen == [(8, 12)]
  np.testing.assert_allclose(probs.numpy(),
                             tf.nn.softmax(_position_model(images)['logits']).numpy(), rtol=1e-6)


def test_keras_model_multi_scale_flip_in_tf_function():
  inputs = tf_keras.Input([None, None, 3])
  logits = tf_keras.layers.Conv2D(4, 3, strides=2, padding='same')(inputs)
  model = tf_keras.Model(inputs, {'logits': logits})
  images = tf.random.stateless_normal([2, 16, 16, 3], seed=[1, 2])
  fn = tf.function(lambda x: seg.predict_probabilities(
      model, x, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True, size_divisor=2))
  probs = fn(images).numpy()
  assert probs.shape == (2, 16, 16, 4)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  eager = seg.predict_probabilities(model, images, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                                    flip=True, size_divisor=2).numpy()
  np.testing.assert_allclose(probs, eager, atol=1e-6)


def test_bad_scales_are_user_errors():
  with pytest.raises(UserError, match='scales'):
    seg.predict_probabilities(_position_model, tf.zeros([1, 4, 4, 3]), scales=())
  with pytest.raises(UserError, match='scales'):
    seg.predict_probabilities(_position_model, tf.zeros([1, 4, 4, 3]), scales=(1.0, -0.5))


def test_pseudo_mask_thresholds_the_top_probability():
  probs = np.array([[[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]],
                    [[0.1, 0.5, 0.4], [0.2, 0.2, 0.6]]], np.float32)[None]
  mask = seg.probabilities_to_pseudo_mask(probs)
  assert mask.dtype == tf.uint8
  np.testing.assert_array_equal(mask.numpy(), [[[0, 255], [1, 2]]])
  np.testing.assert_array_equal(
      seg.probabilities_to_pseudo_mask(probs, threshold=0.65, ignore_label=99).numpy(),
      [[[0, 99], [99, 99]]])


def test_restore_original_size_drops_the_padding_and_undoes_the_scale():
  from official.vision.ops import preprocess_ops  # pylint: disable=g-import-not-at-top
  # A 6x12 image letterboxed into an 8x8 canvas: resized to 4x8, rows 4..7 are padding.
  _, info = preprocess_ops.resize_and_crop_image(
      tf.zeros([6, 12, 3]), [8, 8], padded_size=[8, 8], aug_scale_min=1.0, aug_scale_max=1.0)
  labels = np.full([8, 8], 2)
  labels[:4, :4], labels[:4, 4:] = 0, 1
  probs = tf.one_hot(labels, 3)[None]
  restored = seg.restore_original_size(probs, info[None]).numpy()
  assert restored.shape == (1, 6, 12, 3)
  want = np.zeros([6, 12], int)
  want[:, 6:] = 1
  np.testing.assert_array_equal(restored[0].argmax(-1), want)  # no padding class 2 left
  # A larger output canvas is zero outside the image.
  big = seg.restore_original_size(probs, info[None], output_size=(7, 14)).numpy()
  np.testing.assert_array_equal(big[0, :6, :12], restored[0])
  assert not big[0, 6:].any() and not big[0, :, 12:].any()


def test_fixed_size_model_runs_every_scale_as_tiles_of_its_size():
  """A model built for 8 x 8 inputs gives, at the paper's six scales and with flips, what the
  same per-pixel weights give on whole images of any size: tiles stitch back exactly."""
  conv = tf_keras.layers.Conv2D(3, 1)
  fixed_in, any_in = tf_keras.Input([8, 8, 3]), tf_keras.Input([None, None, 3])
  fixed = tf_keras.Model(fixed_in, {'logits': conv(fixed_in)})
  anysize = tf_keras.Model(any_in, {'logits': conv(any_in)})
  assert seg.fixed_input_size(fixed) == (8, 8) and seg.fixed_input_size(anysize) is None
  images = tf.random.stateless_normal([2, 8, 8, 3], seed=[3, 4])
  scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  want = seg.predict_probabilities(anysize, images, scales=scales, flip=True).numpy()
  got = tf.function(lambda x: seg.predict_probabilities(fixed, x, scales=scales, flip=True))(
      images).numpy()
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_images_larger_than_a_non_square_model_are_tiled_at_scale_one():
  conv = tf_keras.layers.Conv2D(3, 1)
  fixed_in, any_in = tf_keras.Input([8, 6, 3]), tf_keras.Input([None, None, 3])
  fixed = tf_keras.Model(fixed_in, {'logits': conv(fixed_in)})
  anysize = tf_keras.Model(any_in, {'logits': conv(any_in)})
  images = tf.random.stateless_normal([1, 10, 13, 3], seed=[5, 6])
  for scales in [(1.0,), (0.5, 1.5)]:
    np.testing.assert_allclose(seg.predict_probabilities(fixed, images, scales=scales).numpy(),
                               seg.predict_probabilities(anysize, images, scales=scales).numpy(),
                               atol=1e-6)


class _FixedSizeRecorder:
  """A model 'built for' 8 x 8 inputs (as Keras reports it) that records its input shapes."""
  input_shape = (None, 8, 8, 3)

  def __init__(self):
    self.calls = []

  def __call__(self, x, training=None):
    self.calls.append(tuple(x.shape))
    return {'logits': x[..., :2]}


def test_each_scale_is_one_model_call_with_its_tiles_on_the_batch_axis():
  model = _FixedSizeRecorder()
  seg.predict_probabilities(model, tf.zeros([2, 8, 8, 3]), scales=(0.5, 1.0, 1.25, 1.75),
                            flip=True)
  # 1.25 -> 10 x 10: 2 x 2 tiles; 1.75 -> 14 x 14: 3 x 3 tiles; each flip is its own call.
  assert model.calls == [(2, 8, 8, 3)] * 4 + [(8, 8, 8, 3)] * 2 + [(18, 8, 8, 3)] * 2


def test_overlapping_tiles_average_their_logits():
  # Channel 0 of each tile's logits is the column index inside the tile.
  inputs = tf_keras.Input([8, 8, 3])
  ramp = tf_keras.layers.Lambda(lambda x: tf.concat(
      [tf.ones_like(x[..., :1]) * tf.range(8, dtype=tf.float32)[None, None, :, None],
       tf.zeros_like(x[..., :1])], axis=-1))(inputs)
  model = tf_keras.Model(inputs, {'logits': ramp})
  logits = seg._tiled_logits(model, tf.zeros([1, 6, 13, 3]), (8, 8), 1.75).numpy()  # pylint: disable=protected-access
  assert logits.shape == (1, 6, 13, 2)
  # Tiles start at columns 0 and 5: columns 5-7 are in both (local 5-7 and 0-2).
  want = np.array([0, 1, 2, 3, 4, 2.5, 3.5, 4.5, 3, 4, 5, 6, 7], np.float32)
  np.testing.assert_allclose(logits[0, :, :, 0], np.broadcast_to(want, [6, 13]))


def test_tiles_cover_the_image_and_overlap_by_a_third():
  assert seg.tile_starts(5, 8) == [0] and seg.tile_starts(8, 8) == [0]
  assert seg.tile_starts(13, 8) == [0, 5] and seg.tile_starts(14, 8) == [0, 3, 6]
  assert seg.tile_starts(224, 128) == [0, 48, 96]   # the digit model at scale 1.75
  for length in range(9, 60):
    starts = seg.tile_starts(length, 8)
    assert starts[0] == 0 and starts[-1] + 8 == length
    assert all(8 - (b - a) >= 8 / 3 for a, b in zip(starts, starts[1:]))


def test_fixed_size_model_on_images_of_unknown_size_is_a_one_line_user_error():
  inputs = tf_keras.Input([8, 8, 3])
  model = tf_keras.Model(inputs, {'logits': tf_keras.layers.Conv2D(2, 1)(inputs)})
  fn = tf.function(lambda x: seg.predict_probabilities(model, x, scales=(0.5, 1.0)),
                   input_signature=[tf.TensorSpec([None, None, None, 3])], autograph=False)
  with pytest.raises(UserError, match='static size') as e:
    fn(tf.zeros([1, 8, 8, 3]))
  assert '\n' not in str(e.value)


def test_eval_pipeline_masks_with_padding_are_read_correctly():
  """rethink_st.data.pipeline's eval masks: float32 [B, S, S, 1], IGNORE_LABEL on padding."""
  from rethink_st.data import features as F  # pylint: disable=g-import-not-at-top
  from rethink_st.data import pipeline  # pylint: disable=g-import-not-at-top
  mask = np.zeros([40, 64, 1], np.uint8)
  mask[:, 32:] = 2
  mask[:4, :4] = 255
  example = {F.SOURCE_ID: '1', F.IMAGE: np.zeros([40, 64, 3], np.uint8), F.HEIGHT: 40,
             F.WIDTH: 64, F.SEMANTIC_MASK: mask}
  ds = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in example.items()})
  _, labels = next(iter(pipeline.build_input(ds, task='segmentation', global_batch_size=1,
                                             is_training=False, output_size=(32, 32))))
  masks = labels['masks']
  assert masks.shape == (1, 32, 32, 1) and float(masks[0, -1, 0, 0]) == 255  # padded rows
  # Predict class 2 on the right half everywhere, class 1 on the left: padding and the
  # ignored corner must not count, so only class 0 vs 1 on the left half is wrong.
  pred = np.where(np.arange(32)[None, None, :] >= 16, 2, 1) * np.ones([1, 32, 32], int)
  ev = seg.MeanIoUEvaluator(num_classes=3)
  ev.update_state(masks, pred)
  iou = ev.result()['per_class_IoU']
  assert iou[0] == 0.0 and iou[1] == 0.0 and iou[2] == pytest.approx(1.0)
