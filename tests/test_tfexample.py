"""encode_example writes what Model Garden's TfExampleDecoder and our extra keys read back."""
import numpy as np
import pytest
import tensorflow as tf
from official.vision.dataloaders import tf_example_decoder

from rethink_st.data import features as F
from rethink_st.data import tfexample


def _decode(record):
  out = tf_example_decoder.TfExampleDecoder(include_mask=True).decode(tf.constant(record))
  return {k: v.numpy() for k, v in out.items()}


def _extra(record):
  return tf.io.parse_single_example(record, {
      F.TFEX_SCORE: tf.io.VarLenFeature(tf.float32),
      F.TFEX_LABEL: tf.io.FixedLenFeature((), tf.int64, -1),
      F.TFEX_SEMANTIC_MASK: tf.io.FixedLenFeature((), tf.string, ''),
      'image/format': tf.io.FixedLenFeature((), tf.string)})


def test_round_trip_through_model_garden_decoder():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
  masks = np.zeros((2, 24, 32), np.float32)
  masks[0, 2:6, 3:9] = 0.9           # probabilities are thresholded at 0.5
  masks[1, 10:20, 10:30] = 1
  sem = np.zeros((24, 32, 1), np.uint8)
  sem[10:20, 10:30] = 7
  sem[0, 0] = F.IGNORE_LABEL
  example = {F.SOURCE_ID: '42', F.IMAGE: image,
             F.BOXES: np.array([[2 / 24, 3 / 32, 6 / 24, 9 / 32], [10 / 24, 10 / 32, 20 / 24, 30 / 32]]),
             F.CLASSES: np.array([3, 7]), F.IS_CROWD: np.array([False, True]),
             F.AREA: np.array([24.0, 200.0]), F.INSTANCE_MASKS: masks, F.SEMANTIC_MASK: sem,
             F.LABEL: 6, F.SCORES: np.array([0.9, 0.6]), 'not_a_feature': 1}
  record = tfexample.encode_example(example, class_names=[str(d) for d in range(10)])
  out = _decode(record)
  np.testing.assert_array_equal(out['image'], image)            # PNG by default: lossless
  assert out['source_id'] == b'42' and (out['height'], out['width']) == (24, 32)
  np.testing.assert_allclose(out['groundtruth_boxes'], example[F.BOXES], atol=1e-6)
  np.testing.assert_array_equal(out['groundtruth_classes'], [3, 7])
  np.testing.assert_array_equal(out['groundtruth_is_crowd'], [False, True])
  np.testing.assert_array_equal(out['groundtruth_area'], [24.0, 200.0])
  np.testing.assert_array_equal(out['groundtruth_instance_masks'], (masks > 0.5).astype(np.float32))
  extra = _extra(record)
  np.testing.assert_allclose(tf.sparse.to_dense(extra[F.TFEX_SCORE]).numpy(), [0.9, 0.6])
  assert extra[F.TFEX_LABEL].numpy() == 6
  np.testing.assert_array_equal(tf.io.decode_png(extra[F.TFEX_SEMANTIC_MASK]).numpy(), sem)
  assert extra['image/format'].numpy() == b'png'
  assert record == tfexample.encode_example(example, class_names=[str(d) for d in range(10)])


def test_no_objects_and_pre_encoded_jpeg():
  image = np.full((16, 16, 3), 90, np.uint8)
  jpeg = tfexample.encode_jpeg(image)
  record = tfexample.encode_example({F.SOURCE_ID: b'7', F.HEIGHT: 16, F.WIDTH: 16},
                                    encoded_image=jpeg)
  out = _decode(record)
  assert out['groundtruth_boxes'].shape == (0, 4) and out['groundtruth_classes'].shape == (0,)
  assert out['groundtruth_instance_masks'].shape == (0, 16, 16)
  assert np.abs(out['image'].astype(int) - 90).max() <= 2
  assert _extra(record)['image/format'].numpy() == b'jpeg'
  assert _extra(record)[F.TFEX_LABEL].numpy() == -1               # absent


def test_area_defaults_to_box_area_and_mismatches_are_errors():
  image = np.zeros((10, 20, 3), np.uint8)
  record = tfexample.encode_example({F.SOURCE_ID: '1', F.IMAGE: image,
                                     F.BOXES: np.array([[0, 0, 0.5, 0.5]]), F.CLASSES: [1]})
  np.testing.assert_allclose(_decode(record)['groundtruth_area'], [50.0])
  with pytest.raises(ValueError, match='1 boxes but 2 classes'):
    tfexample.encode_example({F.SOURCE_ID: '1', F.IMAGE: image,
                              F.BOXES: np.array([[0, 0, 0.5, 0.5]]), F.CLASSES: [1, 2]})
  with pytest.raises(ValueError, match='uint8'):
    tfexample.encode_example({F.SOURCE_ID: '1', F.IMAGE: image.astype(np.float32)})
