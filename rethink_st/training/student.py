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

A pseudo-label folder that labels almost nothing (a teacher too weak for its score
threshold) trains a student without any error, so the student checks the folder's own
figure at start (`pseudo_label_source`'s `pseudo_set`: boxes per image, or the labeled pixel
fraction): below its floor it prints a warning and writes it to TensorBoard as text; the
figure itself is a scalar of every loop (`pseudo_set_boxes_per_image`).
"""
from typing import Any, Dict, Optional

import gin
import tensorflow as tf
from absl import logging

from rethink_st import losses as losses_lib
from rethink_st.data import label_space as label_space_lib
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

  pseudo_source: a Source of pseudo-labeled examples (pseudo_label_source: the
    pseudo-labeler's folder, its boxes at the student's score threshold); it must have the
    task's label space (class count, category ids and names), else one UserError line.
  pseudo_fraction: share of each global batch taken from pseudo labels (paper: 0.5).
  normalizer: a LossNormalizer (alpha, decay, 'normalized' or 'standard', matched_control).
  min_pseudo_boxes_per_image, min_pseudo_labeled_pixel_fraction: the floors below which a
    pseudo-label set (detection, segmentation) is reported as nearly empty at start.
  """

  def __init__(self, *, task, model, optimizer, strategy, global_batch_size,
               pseudo_source=gin.REQUIRED, pseudo_fraction: float = 0.5,
               normalizer: Optional[losses_lib.LossNormalizer] = None, joint=None,
               min_pseudo_boxes_per_image: float = 0.1,
               min_pseudo_labeled_pixel_fraction: float = 0.01):
    self.human_batch_size, self.pseudo_batch_size = split_batch(
        global_batch_size, pseudo_fraction, strategy.num_replicas_in_sync)
    self.pseudo_source = pseudo_source
    _check_label_space(task, pseudo_source)
    self.pseudo_set = getattr(pseudo_source, 'pseudo_set', None) or {}
    self.pseudo_set_warning = check_pseudo_set(self.pseudo_set, {
        'boxes_per_image': ('min_pseudo_boxes_per_image', min_pseudo_boxes_per_image),
        'labeled_pixel_fraction': ('min_pseudo_labeled_pixel_fraction',
                                   min_pseudo_labeled_pixel_fraction)})
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

  def train_loop_end(self) -> Dict[str, Any]:
    """Adds the pseudo set's density to every loop's scalars; the warning, if any, goes to
    TensorBoard's text once (the controller's writer is the default here)."""
    logs = super().train_loop_end()
    logs.update({f'pseudo_set_{k}': float(v) for k, v in self.pseudo_set.items()
                 if k in _DENSITY_NAMES})
    if self.pseudo_set_warning:
      with tf.summary.record_if(True):
        tf.summary.text('pseudo_set/warning', self.pseudo_set_warning, step=self.global_step)
      self.pseudo_set_warning = None
    return logs

  def main_dataset_fn(self, input_context):
    position = self.input_position
    human = self.task.build_dataset('train', self.human_batch_size, input_context,
                                    position=position)
    pseudo = self.task.build_dataset('train', self.pseudo_batch_size, input_context,
                                     source=self.pseudo_source,
                                     position=position and position.of('pseudo'))
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


_DENSITY_NAMES = {'boxes_per_image': 'boxes per image',
                  'labeled_pixel_fraction': 'of its pixels labeled'}


def check_pseudo_set(pseudo_set: Dict[str, Any], floors: Dict[str, Any]) -> Optional[str]:
  """A pseudo set without images stops here (one UserError line); one whose density is
  below its floor (floors: measure -> (binding name, floor)) is reported on stdout and in
  the log as a WARNING, and the message returned (None when all is well)."""
  where = pseudo_set.get('directory', 'the pseudo-label source')
  if 'images' in pseudo_set and not pseudo_set['images']:
    raise UserError(f'StudentTrainer.pseudo_source {where} holds no pseudo-labeled image')
  for name, (binding, floor) in floors.items():
    value = pseudo_set.get(name)
    if value is None or value >= floor:
      continue
    message = (f'the pseudo-label set {where} has {value:.3g} {_DENSITY_NAMES[name]} over '
               f'{pseudo_set.get("images")} images, below StudentTrainer.{binding}={floor}: '
               'the student gets next to no pseudo label (check the teacher and the '
               "labeler's threshold)")
    print(f'[student] WARNING: {message}', flush=True)
    logging.warning('%s', message)
    return message
  return None


def _check_label_space(task, pseudo_source) -> None:
  """Pseudo labels of another label space than the task's (another class count, or the
  same count with other category ids or names, e.g. a teacher of another dataset) stop
  here, in one line."""
  got = label_space_lib.of_source(pseudo_source)
  if got is None:
    return
  expected = label_space_lib.label_space_of(task)
  diff = label_space_lib.difference(expected, got)
  if diff:
    where = (getattr(pseudo_source, 'pseudo_set', None) or {}).get(
        'directory', getattr(pseudo_source, 'name', ''))
    raise UserError(f'StudentTrainer.pseudo_source {where} holds pseudo labels of another '
                    f'label space than the task ({diff}): pseudo labels {got.describe()}, '
                    f'task {expected.describe()}')
