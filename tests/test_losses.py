"""LossNormalizer (the paper's Appendix B) and the human/pseudo batch split."""
import numpy as np
import pytest
import tensorflow as tf

from rethink_st import losses
from rethink_st.errors import UserError
from rethink_st.training import student


def test_normalized_total_matches_formula():
  norm = losses.LossNormalizer(alpha=2.0, decay=0.5, mode='normalized')
  out = norm(tf.constant(1.0), tf.constant(4.0), tf.constant(True))
  # First step: debiased averages equal the losses, so the pseudo loss is rescaled to L_h.
  assert np.isclose(out['human_loss_avg'], 1.0) and np.isclose(out['pseudo_loss_avg'], 4.0)
  expected = (1.0 + 2.0 * (1.0 / 4.0) * 4.0) / 3.0
  assert np.isclose(out['total_loss'], expected)
  out = norm(tf.constant(3.0), tf.constant(2.0), tf.constant(True))
  h_avg = (0.5 * 0.5 * 1 + 0.5 * 3) / (1 - 0.25)
  p_avg = (0.5 * 0.5 * 4 + 0.5 * 2) / (1 - 0.25)
  assert np.isclose(out['human_loss_avg'], h_avg) and np.isclose(out['pseudo_loss_avg'], p_avg)
  assert np.isclose(out['total_loss'], (3.0 + 2.0 * h_avg / p_avg * 2.0) / 3.0, rtol=1e-5)


def test_standard_total_is_plain_sum():
  norm = losses.LossNormalizer(alpha=0.5, mode='standard')
  out = norm(tf.constant(1.0), tf.constant(4.0), tf.constant(True))
  assert np.isclose(out['total_loss'], 1.0 + 0.5 * 4.0)


def _ema(values, decay):
  """Bias-corrected EMA of `values`, as the normalizer keeps it."""
  ema = 0.0
  for v in values:
    ema = decay * ema + (1 - decay) * v
  return ema / (1 - decay ** len(values))


@pytest.mark.parametrize('mode', ['normalized', 'standard'])
@pytest.mark.parametrize('alpha', [0.0, 1.0, 3.0])
def test_total_is_the_formula_with_the_applied_weights(mode, alpha):
  norm = losses.LossNormalizer(alpha=alpha, decay=0.5, mode=mode)
  hs, ps = [1.0, 3.0, 2.0, 5.0], [4.0, 2.0, 6.0, 1.0]
  for h, p in zip(hs, ps):
    out = norm(tf.constant(h), tf.constant(p), tf.constant(True))
  r = _ema(hs, 0.5) / _ema(ps, 0.5)
  assert np.isclose(out['loss_ratio'], r, rtol=1e-5)
  assert np.isclose(out['human_loss_avg'], _ema(hs, 0.5), rtol=1e-5)
  assert np.isclose(out['pseudo_loss_avg'], _ema(ps, 0.5), rtol=1e-5)
  if mode == 'normalized':
    expected = (h + alpha * r * p) / (1 + alpha)
    weights = (1 / (1 + alpha), alpha * r / (1 + alpha))
  else:
    expected, weights = h + alpha * p, (1.0, alpha)
  assert np.isclose(out['total_loss'], expected, rtol=1e-5)
  assert np.allclose([out['human_weight'], out['pseudo_weight']], weights, rtol=1e-5)
  assert np.isclose(out['total_loss'],
                    out['human_weight'] * out['human_loss'] +
                    out['pseudo_weight'] * out['pseudo_loss'], rtol=1e-6)
  assert set(out) == set(losses.LossNormalizer.output_names)


@pytest.mark.parametrize('mode', ['normalized', 'standard'])
@pytest.mark.parametrize('pseudo_loss,has_labels', [(0.0, False), (5.0, False),
                                                    (float('nan'), True), (float('inf'), True),
                                                    (-float('inf'), False)])
def test_absent_pseudo_term_leaves_the_human_loss_alone(mode, pseudo_loss, has_labels):
  # A pseudo part with no label at all (segmentation with every pixel ignored) or with a
  # NaN/inf loss has no pseudo term: total is exactly L_h, not L_h / (1 + alpha), no NaN
  # (0 * NaN would be NaN), and avg L_p does not move.
  norm = losses.LossNormalizer(alpha=3.0, decay=0.9, mode=mode)
  norm(tf.constant(1.0), tf.constant(2.0), tf.constant(True))
  ema, count = float(norm.pseudo_ema.numpy()), float(norm.pseudo_count.numpy())
  out = norm(tf.constant(2.0), tf.constant(pseudo_loss), tf.constant(has_labels))
  assert float(out['total_loss']) == 2.0
  assert float(out['human_weight']) == 1.0 and float(out['pseudo_weight']) == 0.0
  assert float(out['pseudo_loss']) == 0.0
  assert all(np.isfinite(v.numpy()) for v in out.values())
  assert float(norm.pseudo_ema.numpy()) == ema and float(norm.pseudo_count.numpy()) == count
  assert float(norm.human_count.numpy()) == 2.0
  # The next batch with a pseudo term uses avg L_p of the earlier good batch only.
  out = norm(tf.constant(2.0), tf.constant(2.0), tf.constant(True))
  assert np.isclose(out['pseudo_loss_avg'], 2.0) and float(norm.pseudo_count.numpy()) == 2.0


def test_pseudo_term_never_seen_gives_ratio_one():
  norm = losses.LossNormalizer(alpha=1.0, decay=0.9)
  out = norm(tf.constant(2.0), tf.constant(0.0), tf.constant(False))
  assert float(out['loss_ratio']) == 1.0 and float(out['total_loss']) == 2.0


@pytest.mark.parametrize('mode', ['normalized', 'standard'])
def test_matched_control_differs_only_in_the_pseudo_weight(mode):
  alpha = 3.0
  control = losses.LossNormalizer(alpha=alpha, decay=0.5, mode=mode, matched_control=True)
  self_training = losses.LossNormalizer(alpha=alpha, decay=0.5, mode=mode)
  p = tf.Variable(4.0)   # feeds only L_p
  steps = [(1.0, True), (3.0, True), (2.0, False), (5.0, True)]
  for h, has_labels in steps:
    with tf.GradientTape() as tape:
      out = control(tf.constant(h), p * 1.0, tf.constant(has_labels))
    reference = self_training(tf.constant(h), p * 1.0, tf.constant(has_labels))
    grad = tape.gradient(out['total_loss'], p, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    assert float(grad) == 0.0 and float(out['pseudo_weight']) == 0.0
    # same human weight as self-training: 1 / (1 + alpha) with a pseudo part, 1 without
    human_weight = (1 / (1 + alpha) if has_labels else 1.0) if mode == 'normalized' else 1.0
    assert np.isclose(out['human_weight'], human_weight)
    assert np.isclose(out['human_weight'], reference['human_weight'])
    assert np.isclose(out['total_loss'], h * human_weight)
    for name in ('human_loss_avg', 'pseudo_loss_avg', 'loss_ratio'):   # averages still move
      assert np.isclose(out[name], reference[name]), name
  assert float(control.pseudo_count.numpy()) == 3.0 and float(control.human_count.numpy()) == 4.0
  assert float(reference['pseudo_weight']) > 0.0


def test_detection_batch_without_boxes_is_background_with_a_loss():
  # One level of 2x2 locations, 1 anchor, 3 classes; no positive anchor at all.
  batch, classes = 2, 3
  labels = {'cls_targets': {'3': tf.zeros([batch, 2, 2, 1], tf.int32)},
            'box_targets': {'3': tf.zeros([batch, 2, 2, 4])},
            'cls_weights': tf.ones([batch, 4]), 'box_weights': tf.zeros([batch, 4])}
  outputs = {'cls_outputs': {'3': tf.fill([batch, 2, 2, classes], 0.5)},
             'box_outputs': {'3': tf.fill([batch, 2, 2, 4], 0.3)}}
  out = losses.detection_losses(outputs, labels, num_classes=classes)
  assert float(out['num_positives']) == 0.0 and bool(out['has_labels'])
  assert float(out['box_loss']) == 0.0
  assert np.isfinite(out['total_loss']) and float(out['total_loss']) > 0.0


def test_segmentation_has_labels_iff_a_pixel_is_labelled():
  logits = {'logits': tf.zeros([1, 4, 4, 3])}
  masks = np.full([1, 4, 4, 1], 255.0, np.float32)
  out = losses.segmentation_losses_fn(logits, {'masks': tf.constant(masks)})
  assert not bool(out['has_labels']) and float(out['total_loss']) == 0.0
  masks[0, 1, 1, 0] = 2.0
  out = losses.segmentation_losses_fn(logits, {'masks': tf.constant(masks)})
  assert bool(out['has_labels']) and np.isclose(out['total_loss'], np.log(3.0), rtol=1e-4)


def test_segmentation_top_k_percent_pixels_averages_the_hardest_pixels():
  """Four pixels of class 0, two predicted right and two wrong: top_k 0.5 is the mean loss of
  the two wrong ones, 1.0 the mean of all four; outside (0, 1] is a one-line error."""
  logits = np.zeros([1, 2, 2, 3], np.float32)
  logits[0, 0, :, 0] = 4.0      # right: class 0 high
  logits[0, 1, :, 1] = 4.0      # wrong: class 1 high
  masks = tf.zeros([1, 2, 2, 1])
  per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.zeros([4], tf.int32), logits=tf.reshape(logits, [4, 3])).numpy()
  plain = losses.segmentation_losses_fn({'logits': tf.constant(logits)}, {'masks': masks})
  hard = losses.segmentation_losses_fn({'logits': tf.constant(logits)}, {'masks': masks},
                                       top_k_percent_pixels=0.5)
  assert np.isclose(plain['total_loss'], per_pixel.mean(), rtol=1e-4)
  assert np.isclose(hard['total_loss'], np.sort(per_pixel)[2:].mean(), rtol=1e-4)
  for bad in (0.0, 1.5):
    with pytest.raises(UserError, match='segmentation_losses_fn.top_k_percent_pixels'):
      losses.segmentation_losses_fn({'logits': tf.constant(logits)}, {'masks': masks},
                                    top_k_percent_pixels=bad)


def test_gradient_does_not_flow_through_averages():
  norm = losses.LossNormalizer(alpha=1.0, decay=0.0)
  p = tf.Variable(3.0)
  with tf.GradientTape() as tape:
    total = norm(tf.constant(1.0), p * 1.0, tf.constant(True))['total_loss']
  # weight = alpha * (1/3) / 2 held constant -> d total / d p = 1/6
  assert np.isclose(tape.gradient(total, p), 1.0 / 6.0)


def test_averages_live_in_checkpoint(tmp_path):
  norm = losses.LossNormalizer(alpha=1.0, decay=0.9)
  for _ in range(3):
    norm(tf.constant(1.0), tf.constant(2.0), tf.constant(True))
  path = tf.train.Checkpoint(n=norm).save(str(tmp_path / 'ckpt'))
  fresh = losses.LossNormalizer(alpha=1.0, decay=0.9)
  tf.train.Checkpoint(n=fresh).restore(path).assert_consumed()
  assert np.isclose(fresh.human_average, norm.human_average)
  assert float(fresh.pseudo_count.numpy()) == 3.0


@pytest.mark.parametrize('kwargs', [dict(mode='plain'), dict(alpha=-1.0), dict(decay=1.0),
                                    dict(matched_control='yes')])
def test_bad_bindings(kwargs):
  with pytest.raises(UserError, match='LossNormalizer'):
    losses.LossNormalizer(**kwargs)


def test_split_batch():
  assert student.split_batch(512, 0.5, 8) == (256, 256)
  assert student.split_batch(16, 0.25, 2) == (12, 4)
  with pytest.raises(UserError, match='at least one human example each'):
    student.split_batch(8, 0.9, 8)  # 1 human example for 8 replicas
  with pytest.raises(UserError, match='at least one human example each'):
    student.split_batch(4, 0.9, 1)  # round(3.6) = 4 pseudo: no human example at all
  with pytest.raises(UserError, match=r'must be in \[0, 1\)'):
    student.split_batch(8, 1.0, 1)
  with pytest.raises(UserError, match='leaves no pseudo example'):
    student.split_batch(8, 0.0, 1)
