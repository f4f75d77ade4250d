"""Losses: RetinaNet (focal + Huber), segmentation and classification cross-entropy, all from
Model Garden / tf_keras, and the paper's LossNormalizer for human + pseudo losses (Appendix B).

Every loss here is per replica and per batch part; the trainer divides by the number of
replicas before taking gradients. The detection and segmentation losses also say whether the
part has any label at all (`has_labels`): a student's pseudo term counts only if it has.
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

  Returns total, cls and box losses, `num_positives` (the positive anchors of the batch) and
  `has_labels`: whether some anchor has a class target. That is every non-empty batch, also
  one without boxes: its anchors are all background, and their focal loss (box loss 0) is a
  real training signal.
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
          'box_loss': box_loss, 'num_positives': num_positives,
          'has_labels': tf.reduce_sum(labels['cls_weights']) > 0}


@gin.configurable
def segmentation_losses_fn(outputs: Mapping[str, tf.Tensor], labels: Mapping[str, tf.Tensor],
                           label_smoothing: float = 0.0,
                           top_k_percent_pixels: float = 1.0) -> Dict[str, tf.Tensor]:
  """Pixel cross-entropy over non-ignored pixels (ignore label 255), logits upsampled to the
  label size; `num_positives` counts the labelled pixels and `has_labels` is whether there
  is one (over zero labelled pixels the loss is 0, not a training signal).

  top_k_percent_pixels: Model Garden's (DeepLab's) hard-pixel mining, the mean over this
  fraction of the pixels with the highest loss; 1.0 (the default) is the plain mean.
  """
  if not 0.0 < float(top_k_percent_pixels) <= 1.0:
    raise UserError(f'segmentation_losses_fn.top_k_percent_pixels must be in (0, 1], got '
                    f'{top_k_percent_pixels}')
  loss_fn = segmentation_losses.SegmentationLoss(
      label_smoothing=label_smoothing, class_weights=[], ignore_label=IGNORE_LABEL,
      use_groundtruth_dimension=True, top_k_percent_pixels=float(top_k_percent_pixels))
  masks = labels['masks']
  loss = loss_fn(outputs['logits'], masks)
  valid = tf.reduce_sum(tf.cast(tf.not_equal(tf.cast(masks, tf.int32), IGNORE_LABEL),
                                tf.float32))
  return {'total_loss': loss, 'ce_loss': loss, 'num_positives': valid, 'has_labels': valid > 0}


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

  With r = avg L_h / avg L_p and [p] = 1 if the pseudo term is present this step, else 0:

    mode='normalized':  total = (L_h + [p] * alpha * r * L_p) / (1 + [p] * alpha)
    mode='standard':    total =  L_h + [p] * alpha * L_p

  The pseudo term is present when the pseudo part has any label (`pseudo_has_labels`, from the
  task's loss: a detection batch always has, since an image without pseudo boxes is all
  background anchors, a real focal-loss signal; a segmentation batch has iff some pixel is not
  ignored) and its loss is finite. When it is absent the human loss keeps the weight it has on
  its own (total = L_h in both modes), not 1 / (1 + alpha); absence is a select, not a product
  with 0, since 0 * NaN is NaN.

  avg is an exponential moving average with `decay` (0.9997 in the paper), bias-corrected so
  the first steps are not dominated by the zero start, and averaged over replicas. avg L_h
  moves every step, avg L_p only on steps with a present pseudo term; r is 1 until avg L_p
  exists and carries no gradient. The averages are tf.Variables that the trainer puts in the
  checkpoint, so a resumed student continues them.

  matched_control=True is the control that differs from self-training in one thing only: the
  weight of L_p is 0. Everything else is unchanged: the same batches (the pseudo images still
  go through the forward pass, so batch norm sees them), the same averages, and the same human
  weight, 1 / (1 + alpha) in normalized mode. Setting alpha = 0 instead would also raise the
  human weight to 1, i.e. change the human term's effective learning rate as well.

  Each call returns `output_names`: the total, L_h, L_p (0 when absent), both averages,
  `loss_ratio` r, and the weights actually applied, total = human_weight * L_h +
  pseudo_weight * L_p (pseudo_weight is 0 when absent or in the control).
  """
  output_names = ('total_loss', 'human_loss', 'pseudo_loss', 'human_loss_avg',
                  'pseudo_loss_avg', 'loss_ratio', 'human_weight', 'pseudo_weight')

  def __init__(self, alpha: float = 1.0, decay: float = 0.9997, mode: str = 'normalized',
               matched_control: bool = False):
    super().__init__(name='loss_normalizer')
    if mode not in ('normalized', 'standard'):
      raise UserError(f"LossNormalizer.mode={mode!r} is not 'normalized' or 'standard'")
    if alpha < 0:
      raise UserError(f'LossNormalizer.alpha={alpha} must be >= 0')
    if not 0.0 <= decay < 1.0:
      raise UserError(f'LossNormalizer.decay={decay} must be in [0, 1)')
    if not isinstance(matched_control, bool):
      raise UserError(f'LossNormalizer.matched_control={matched_control!r} must be True or '
                      f'False')
    self.alpha, self.decay, self.mode = float(alpha), float(decay), mode
    self.matched_control = matched_control
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

  def _update_averages(self, human_loss, pseudo_loss, present):
    """avg L_h every step, avg L_p over the replicas whose pseudo term is present; returns the
    fraction of replicas whose term is present (this replica's 0 or 1 on one replica)."""
    ctx = tf.distribute.get_replica_context()
    h, p, n_p = tf.stop_gradient(human_loss), tf.stop_gradient(pseudo_loss), present
    if ctx is not None and ctx.num_replicas_in_sync > 1:
      h, p, n_p = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [h, p, n_p])
    present_fraction = n_p     # of the replicas whose pseudo term is present
    p = tf.math.divide_no_nan(p, n_p)  # mean over the replicas that had a pseudo term
    self.human_ema.assign(self.decay * self.human_ema + (1 - self.decay) * h)
    self.human_count.assign_add(1.0)
    update_p = n_p > 0
    self.pseudo_ema.assign(tf.where(update_p, self.decay * self.pseudo_ema + (1 - self.decay) * p,
                                    self.pseudo_ema))
    self.pseudo_count.assign_add(tf.where(update_p, 1.0, 0.0))
    return present_fraction

  def __call__(self, human_loss: tf.Tensor, pseudo_loss: tf.Tensor,
               pseudo_has_labels: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Updates the averages and returns `output_names` (see the class docstring).

    Call in replica context; `human_loss`/`pseudo_loss`/`pseudo_has_labels` are this replica's.
    Over several replicas the term is present for the step when any replica has it: all give L_h
    the weight 1 / (1 + alpha), and a replica with the term weights it by R / (replicas that
    have it), so the mean of the replicas' totals is what one replica would compute.
    """
    present = tf.logical_and(tf.cast(pseudo_has_labels, tf.bool),
                             tf.math.is_finite(pseudo_loss))
    pseudo_loss = tf.where(present, pseudo_loss, tf.zeros_like(pseudo_loss))
    fraction = self._update_averages(human_loss, pseudo_loss, tf.cast(present, tf.float32))
    ratio = tf.math.divide_no_nan(self.human_average, self.pseudo_average)
    ratio = tf.stop_gradient(tf.where(self.pseudo_count > 0, ratio, 1.0))
    # The step's alpha is 0 only when no replica has a pseudo term, so every replica gives L_h
    # the same weight. A replica with the term carries the share of those without it (1 /
    # fraction), so the mean over replicas is the one-replica total. One replica: unchanged.
    alpha = tf.where(fraction > 0, self.alpha, 0.0)
    share = tf.where(present, tf.math.divide_no_nan(1.0, fraction), 0.0)
    if self.mode == 'normalized':
      human_weight = 1.0 / (1.0 + alpha)
      pseudo_weight = share * alpha * ratio / (1.0 + alpha)
    else:
      human_weight = tf.ones_like(alpha)
      pseudo_weight = share * alpha
    if self.matched_control:
      pseudo_weight = tf.zeros_like(pseudo_weight)
    return {'total_loss': human_weight * human_loss + pseudo_weight * pseudo_loss,
            'human_loss': human_loss, 'pseudo_loss': pseudo_loss,
            'human_loss_avg': self.human_average, 'pseudo_loss_avg': self.pseudo_average,
            'loss_ratio': ratio, 'human_weight': human_weight, 'pseudo_weight': pseudo_weight}
