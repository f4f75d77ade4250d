"""Joint training (the paper's Table 7): the task's loss plus w * a classification loss on a
classification source (ImageNet at scale, the iconic digits here), through a classification
head on the model's own backbone, so the backbone is shared.

Bind it on any trainer, teacher or student:

    rethink_st.training.run.run_train.joint = @rethink_st.training.joint.JointClassification()
    rethink_st.training.joint.JointClassification.source = @iconic/digit_scenes_source()
    rethink_st.training.joint.JointClassification.weight = 0.2
"""
from typing import Dict, Optional

import gin
import tensorflow as tf

from rethink_st import losses as losses_lib
from rethink_st.data import pipeline
from rethink_st.errors import UserError
from rethink_st.modeling import classification


@gin.configurable
class JointClassification:
  """The classification half of joint training.

  source: a Source with image-level labels (groundtruth_label).
  weight: w in total = task loss + w * classification loss (paper: 0.2).
  global_batch_size: classification images per step (default: the main global batch).
  num_classes: classes of the source (default: source.num_classes).
  image_size: classification image size (default: the task's image size).
  """

  def __init__(self, source=gin.REQUIRED, weight: float = 0.2,
               global_batch_size: Optional[int] = None, num_classes: Optional[int] = None,
               image_size=None):
    if weight < 0:
      raise UserError(f'JointClassification.weight={weight} must be >= 0')
    self.source, self.weight = source, float(weight)
    self.global_batch_size = global_batch_size
    self.num_classes = num_classes or getattr(source, 'num_classes', None)
    if not self.num_classes:
      raise UserError('JointClassification.num_classes is not bound and the source '
                      f'{getattr(source, "name", source)} does not say how many classes it has')
    self.head = None
    self.image_size = tuple(image_size) if image_size else None

  def build(self, model, image_size, main_global_batch_size: int, num_replicas: int) -> None:
    """Builds the head on `model.backbone`; call under the strategy scope."""
    self.global_batch_size = self.global_batch_size or main_global_batch_size
    if self.global_batch_size % num_replicas:
      raise UserError(f'JointClassification.global_batch_size={self.global_batch_size} is not '
                      f'a multiple of the {num_replicas} replicas')
    self.image_size = self.image_size or tuple(image_size)
    self.head = classification.build_classification_head(
        model.backbone, self.num_classes, input_size=self.image_size)

  def dataset_fn(self, input_context, position=None) -> tf.data.Dataset:
    """The classification batches (`position`: build_input's, for a seeded run)."""
    with gin.config_scope('classification'):
      return pipeline.build_input(
          self.source, task='classification', global_batch_size=self.global_batch_size,
          is_training=True, output_size=self.image_size, input_context=input_context,
          position=position)

  def loss(self, inputs) -> tf.Tensor:
    images, labels = inputs
    logits = tf.cast(self.head(images, training=True), tf.float32)
    return losses_lib.classification_losses(logits, labels)['total_loss']

  def combine(self, losses: Dict[str, tf.Tensor], inputs) -> Dict[str, tf.Tensor]:
    """The task's losses plus `classification_loss` on `inputs` (images, labels), with
    total_loss = task total + weight * classification loss. Returns a new dict."""
    out = dict(losses)
    out['classification_loss'] = self.loss(inputs)
    out['total_loss'] = losses['total_loss'] + self.weight * out['classification_loss']
    return out
