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


@pytest.mark.parametrize('mode', ['normalized', 'standard'])
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_batch_without_pseudo_labels_adds_no_loss_and_no_nan(mode, bad):
  # A pseudo part with no boxes can have a NaN/inf loss (e.g. a mean over zero boxes); it
  # must contribute nothing (0 * NaN would be NaN) and leave avg L_p alone.
  norm = losses.LossNormalizer(alpha=1.0, decay=0.9, mode=mode)
  out = norm(tf.constant(2.0), tf.constant(bad), tf.constant(False))
  expected_total = 2.0 / 2.0 if mode == 'normalized' else 2.0
  assert float(out['total_loss']) == expected_total
  assert float(out['pseudo_loss']) == 0.0
  assert float(norm.pseudo_ema.numpy()) == 0.0 and float(norm.pseudo_count.numpy()) == 0.0
  assert float(norm.human_count.numpy()) == 1.0 and np.isclose(out['human_loss_avg'], 2.0)
  # The next batch with pseudo labels starts avg L_p from its own loss, not from the bad one.
  out = norm(tf.constant(2.0), tf.constant(1.0), tf.constant(True))
  assert float(norm.pseudo_count.numpy()) == 1.0
  assert np.isclose(out['pseudo_loss_avg'], 1.0) and np.isfinite(out['total_loss'])
  expected_total = (2.0 + 1.0 * (2.0 / 1.0) * 1.0) / 2.0 if mode == 'normalized' else 3.0
  assert np.isclose(out['total_loss'], expected_total)


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


@pytest.mark.parametrize('kwargs', [dict(mode='plain'), dict(alpha=-1.0), dict(decay=1.0)])
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
