"""Losses: RetinaNet (focal + Huber), segmentation and classification cross-entropy, all from
Model Garden / tf_keras, and the paper's LossNormalizer for human + pseudo losses (Appendix B).

Every loss here is per replica and per batch part; the trainer divides by the number of
replicas before taking gradients.
"""
from typing import Dict, Mapping

import gin
import tensorflow as tf, tf_keras
from official.vision.losses import focal_loss
from official.vision.losses import loss_utils
from official.vision.losses import segmentation_losses

from rethink_st.data.features import IGNORE_LABEL
from rethink_st.errors import UserError


@gin.configurable
def detection_losses(outputs: Mapping[str, Mapping[str, tf.Tensor]],
                     labels: Mapping[str, tf.Tensor],
                     num_classes: int,
                     focal_alpha: float = 0.25,
                     focal_gamma: float = 1.5,
                     huber_delta: float = 0.1,
                     box_loss_weight: float = 50.0) -> Dict[str, tf.Tensor]:
  """RetinaNet's loss as Model Garden's RetinaNetTask computes it: focal loss on classes and
  Huber on box regression, both summed and divided by (number of positive anchors + 1).

  Returns total, cls and box losses and `num_positives` (the positive anchors of the batch).
  """
  cls_loss_fn = focal_loss.FocalLoss(alpha=focal_alpha, gamma=focal_gamma,
                                     reduction=tf_keras.losses.Reduction.SUM)
  box_loss_fn = tf_keras.losses.Huber(huber_delta, reduction=tf_keras.losses.Reduction.SUM)
  num_positives = tf.reduce_sum(labels['box_weights'])
  cls_weights = labels['cls_weights'] / (num_positives + 1.0)
  box_weights = labels['box_weights'] / (num_positives + 1.0)
  y_true_cls = tf.one_hot(
      loss_utils.multi_level_flatten(labels['cls_targets'], last_dim=None), num_classes)
  y_pred_cls = loss_utils.multi_level_flatten(outputs['cls_outputs'], last_dim=num_classes)
  y_true_box = loss_utils.multi_level_flatten(labels['box_targets'], last_dim=4)
  y_pred_box = loss_utils.multi_level_flatten(outputs['box_outputs'], last_dim=4)
  cls_loss = cls_loss_fn(y_true=y_true_cls, y_pred=y_pred_cls, sample_weight=cls_weights)
  box_loss = box_loss_fn(y_true=y_true_box, y_pred=y_pred_box, sample_weight=box_weights)
  return {'total_loss': cls_loss + box_loss_weight * box_loss, 'cls_loss': cls_loss,
          'box_loss': box_loss, 'num_positives': num_positives}


@gin.configurable
def segmentation_losses_fn(outputs: Mapping[str, tf.Tensor], labels: Mapping[str, tf.Tensor],
                           label_smoothing: float = 0.0) -> Dict[str, tf.Tensor]:
  """Pixel cross-entropy over non-ignored pixels (ignore label 255), logits upsampled to the
  label size; `num_positives` counts the labelled pixels."""
  loss_fn = segmentation_losses.SegmentationLoss(
      label_smoothing=label_smoothing, class_weights=[], ignore_label=IGNORE_LABEL,
      use_groundtruth_dimension=True)
  masks = labels['masks']
  loss = loss_fn(outputs['logits'], masks)
  valid = tf.reduce_sum(tf.cast(tf.not_equal(tf.cast(masks, tf.int32), IGNORE_LABEL),
                                tf.float32))
  return {'total_loss': loss, 'ce_loss': loss, 'num_positives': valid}


@gin.configurable
def classification_losses(logits: tf.Tensor, labels: tf.Tensor,
                          label_smoothing: float = 0.0) -> Dict[str, tf.Tensor]:
  num_classes = logits.shape[-1]
  loss = tf_keras.losses.categorical_crossentropy(
      tf.one_hot(tf.cast(labels, tf.int32), num_classes), logits, from_logits=True,
      label_smoothing=label_smoothing)
  return {'total_loss': tf.reduce_mean(loss), 'ce_loss': tf.reduce_mean(loss)}


@gin.configurable
class LossNormalizer(tf.Module):
  """Combines the human loss L_h and the pseudo loss L_p (the paper's Appendix B).

  mode='normalized':  (L_h + alpha * (avg L_h / avg L_p) * L_p) / (1 + alpha)
  mode='standard':     L_h + alpha * L_p

  avg is an exponential moving average with `decay` (0.9997 in the paper), bias-corrected so
  the first steps are not dominated by the zero start. The averages are tf.Variables that the
  trainer puts in the checkpoint, so a resumed student continues them. A batch whose pseudo
  part has no positives (no pseudo box / no labelled pixel) contributes no pseudo loss and does
  not move avg L_p.
  """

  def __init__(self, alpha: float = 1.0, decay: float = 0.9997, mode: str = 'normalized'):
    super().__init__(name='loss_normalizer')
    if mode not in ('normalized', 'standard'):
      raise UserError(f"LossNormalizer.mode={mode!r} is not 'normalized' or 'standard'")
    if alpha < 0:
      raise UserError(f'LossNormalizer.alpha={alpha} must be >= 0')
    if not 0.0 <= decay < 1.0:
      raise UserError(f'LossNormalizer.decay={decay} must be in [0, 1)')
    self.alpha, self.decay, self.mode = float(alpha), float(decay), mode
    kw = dict(trainable=False, dtype=tf.float32,
              synchronization=tf.VariableSynchronization.ON_WRITE,
              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.human_ema = tf.Variable(0.0, name='human_ema', **kw)
    self.pseudo_ema = tf.Variable(0.0, name='pseudo_ema', **kw)
    self.human_count = tf.Variable(0.0, name='human_count', **kw)
    self.pseudo_count = tf.Variable(0.0, name='pseudo_count', **kw)

  def _debiased(self, ema, count):
    return ema / tf.maximum(1.0 - tf.pow(self.decay, count), 1e-12)

  @property
  def human_average(self):
    return self._debiased(self.human_ema, self.human_count)

  @property
  def pseudo_average(self):
    return self._debiased(self.pseudo_ema, self.pseudo_count)

  def __call__(self, human_loss: tf.Tensor, pseudo_loss: tf.Tensor,
               pseudo_has_labels: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Updates the averages and returns the total and the effective pseudo weight.

    Call in replica context; `human_loss`/`pseudo_loss`/`pseudo_has_labels` are this replica's.
    The averages move by the mean over replicas, so every replica holds the same values.
    """
    # A select, not a product: 0 * NaN is NaN, so a batch without pseudo labels whose pseudo
    # loss is NaN/inf (e.g. a mean over zero boxes) must not reach the total or avg L_p.
    has_labels = tf.cast(pseudo_has_labels, tf.bool)
    pseudo_loss = tf.where(has_labels, pseudo_loss, tf.zeros_like(pseudo_loss))
    has_pseudo = tf.cast(has_labels, tf.float32)
    ctx = tf.distribute.get_replica_context()
    h, p, n_p = tf.stop_gradient(human_loss), tf.stop_gradient(pseudo_loss), has_pseudo
    if ctx is not None and ctx.num_replicas_in_sync > 1:
      h, p, n_p = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [h, p, n_p])
    p = tf.math.divide_no_nan(p, n_p)  # mean over the replicas that had pseudo labels
    self.human_ema.assign(self.decay * self.human_ema + (1 - self.decay) * h)
    self.human_count.assign_add(1.0)
    update_p = n_p > 0
    self.pseudo_ema.assign(tf.where(update_p, self.decay * self.pseudo_ema + (1 - self.decay) * p,
                                    self.pseudo_ema))
    self.pseudo_count.assign_add(tf.where(update_p, 1.0, 0.0))
    if self.mode == 'normalized':
      ratio = tf.math.divide_no_nan(self.human_average, self.pseudo_average)
      ratio = tf.where(self.pseudo_count > 0, ratio, 1.0)
      weight = self.alpha * tf.stop_gradient(ratio) / (1.0 + self.alpha)
      total = human_loss / (1.0 + self.alpha) + weight * pseudo_loss
    else:
      weight = tf.constant(self.alpha)
      total = human_loss + weight * pseudo_loss
    return {'total_loss': total, 'human_loss': human_loss, 'pseudo_loss': pseudo_loss,
            'human_loss_avg': self.human_average, 'pseudo_loss_avg': self.pseudo_average,
            'pseudo_weight': weight}
