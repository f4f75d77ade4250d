"""The student: trains on human + pseudo labels with the paper's loss normalization.

Each global batch is part human, part pseudo (the paper: 256 + 256; `pseudo_fraction`). Both
parts go through the same input pipeline and augmentation policy, are concatenated and run
through the model in ONE forward pass (batch norm sees the whole batch, as in the paper), and
the outputs are split to compute L_h and L_p, which `LossNormalizer` combines.

The pseudo term counts when the task's loss says the pseudo part has any label (`has_labels`):
for detection always, as an image without pseudo boxes is background, a real focal-loss signal
(so a batch without positive anchors is not dropped); for segmentation iff some pixel is not
ignored. Without it the human loss keeps its own weight (see `LossNormalizer`). Besides the
normalizer's losses, averages, ratio and applied weights, each step reports
`pseudo_positives_per_image` (detection: positive anchors, segmentation: labelled pixels).
"""
from typing import Any, Dict, Optional

import gin
import tensorflow as tf

from rethink_st import losses as losses_lib
from rethink_st.errors import UserError
from rethink_st.training import trainer as trainer_lib


def split_batch(global_batch_size: int, pseudo_fraction: float, num_replicas: int):
  """(human, pseudo) global batch sizes; each replica gets at least one human example and
  the batch at least one pseudo example. A bad ratio is one UserError line naming the
  binding (`run_self_training` calls this before the teacher trains)."""
  if not 0.0 <= pseudo_fraction < 1.0:
    raise UserError(f'StudentTrainer.pseudo_fraction={pseudo_fraction} must be in [0, 1)')
  pseudo = int(round(global_batch_size * pseudo_fraction))
  human = global_batch_size - pseudo
  if human < num_replicas or human % num_replicas or pseudo % num_replicas:
    raise UserError(
        f'StudentTrainer.pseudo_fraction={pseudo_fraction} with global batch '
        f'{global_batch_size} gives {human} human + {pseudo} pseudo examples, which do not '
        f'split over {num_replicas} replicas with at least one human example each')
  if pseudo == 0:
    raise UserError(f'StudentTrainer.pseudo_fraction={pseudo_fraction} leaves no pseudo '
                    f'example in a batch of {global_batch_size}')
  return human, pseudo


@gin.configurable(denylist=['task', 'model', 'optimizer', 'strategy', 'global_batch_size'])
class StudentTrainer(trainer_lib.Trainer):
  """Trainer whose batches are (human part, pseudo part).

  pseudo_source: a Source of pseudo-labeled examples (e.g. tfrecord_source over the
    pseudo-labeler's shards); it must have the task's label space.
  pseudo_fraction: share of each global batch taken from pseudo labels (paper: 0.5).
  normalizer: a LossNormalizer (alpha, decay, 'normalized' or 'standard', matched_control).
  """

  def __init__(self, *, task, model, optimizer, strategy, global_batch_size,
               pseudo_source=gin.REQUIRED, pseudo_fraction: float = 0.5,
               normalizer: Optional[losses_lib.LossNormalizer] = None, joint=None):
    self.human_batch_size, self.pseudo_batch_size = split_batch(
        global_batch_size, pseudo_fraction, strategy.num_replicas_in_sync)
    self.pseudo_source = pseudo_source
    _check_label_space(task, pseudo_source)
    self.normalizer = normalizer or losses_lib.LossNormalizer()
    super().__init__(task=task, model=model, optimizer=optimizer, strategy=strategy,
                     global_batch_size=global_batch_size, joint=joint)

  @property
  def loss_names(self):
    return (losses_lib.LossNormalizer.output_names + ('pseudo_positives_per_image',)
            + tuple(f'pseudo_{n}' for n in self.task.label_stat_names))

  @property
  def checkpoint_items(self) -> Dict[str, Any]:
    return {**super().checkpoint_items, 'loss_normalizer': self.normalizer}

  def main_dataset_fn(self, input_context):
    human = self.task.build_dataset('train', self.human_batch_size, input_context)
    pseudo = self.task.build_dataset('train', self.pseudo_batch_size, input_context,
                                     source=self.pseudo_source)
    return tf.data.Dataset.zip((human, pseudo)).prefetch(tf.data.AUTOTUNE)

  def compute_losses(self, inputs):
    (h_images, h_labels), (p_images, p_labels) = inputs
    n_h = tf.shape(h_images)[0]
    images = tf.concat([h_images, tf.cast(p_images, h_images.dtype)], axis=0)
    outputs = self.task.forward(self.model, images, None, training=True)
    h_out = tf.nest.map_structure(lambda x: x[:n_h], outputs)
    p_out = tf.nest.map_structure(lambda x: x[n_h:], outputs)
    human = self.task.losses(h_out, h_labels)
    pseudo = self.task.losses(p_out, p_labels)
    out = self.normalizer(human['total_loss'], pseudo['total_loss'], pseudo['has_labels'])
    n_p = tf.cast(tf.shape(p_images)[0], tf.float32)
    out['pseudo_positives_per_image'] = tf.cast(pseudo['num_positives'], tf.float32) / n_p
    out.update({f'pseudo_{k}': v for k, v in self.task.label_stats(p_labels).items()})
    return out


def _check_label_space(task, pseudo_source) -> None:
  """A pseudo-label folder written for another class count stops here, in one line."""
  expected = task.num_classes - 1  # tasks count background; sources count object classes
  got = getattr(pseudo_source, 'num_classes', None)
  if got is not None and got != expected:
    raise UserError(f'StudentTrainer.pseudo_source {getattr(pseudo_source, "name", "")} has '
                    f'{got} classes but the task has {expected} (+ background)')
