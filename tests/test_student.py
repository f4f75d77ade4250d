"""StudentTrainer.compute_losses: one forward pass over human + pseudo images, each half's
outputs and labels to its own loss, and the pseudo term's presence from the task's loss."""
import numpy as np
import tensorflow as tf, tf_keras

from rethink_st import losses
from rethink_st.training import student


class _StubTask:
  """Outputs = per-image sums of the images; loss = mean output + mean label."""
  num_classes = 2
  loss_names = ('total_loss',)
  label_stat_names = ('label_sum',)

  def label_stats(self, labels):
    return {'label_sum': tf.reduce_sum(labels)}

  def __init__(self):
    self.forward_batches = []

  def forward(self, model, images, labels, training):
    self.forward_batches.append(int(images.shape[0]))
    return {'sums': model(images, training=training)}

  def losses(self, outputs, labels):
    return {'total_loss': tf.reduce_mean(outputs['sums']) + tf.reduce_mean(labels),
            'num_positives': tf.reduce_sum(tf.cast(labels > 500, tf.float32)),
            'has_labels': tf.constant(True)}


def _trainer(task, model, global_batch_size, pseudo_fraction, alpha=1.0):
  return student.StudentTrainer(
      task=task, model=model, optimizer=tf_keras.optimizers.SGD(0.1),
      strategy=tf.distribute.get_strategy(), global_batch_size=global_batch_size,
      pseudo_source=None, pseudo_fraction=pseudo_fraction,
      normalizer=losses.LossNormalizer(alpha=alpha, decay=0.9))


def _sum_model():
  model = tf_keras.Sequential([tf_keras.layers.Flatten(),
                               tf_keras.layers.Dense(1, use_bias=False, kernel_initializer='ones')])
  model.build((None, 2, 2, 1))
  return model


def test_each_half_goes_to_its_own_loss():
  task = _StubTask()
  trainer = _trainer(task, _sum_model(), global_batch_size=4, pseudo_fraction=0.25)
  # 3 human images of 1, 2, 3 (sums 4, 8, 12) and labels 100; 1 pseudo image of 10 (sum 40)
  # and label 1000. A swap or a split at the wrong index changes both losses.
  h_images = tf.constant([1.0, 2.0, 3.0])[:, None, None, None] * tf.ones([3, 2, 2, 1])
  p_images = tf.fill([1, 2, 2, 1], 10.0)
  out = trainer.compute_losses(((h_images, tf.fill([3], 100.0)),
                                (p_images, tf.fill([1], 1000.0))))
  assert task.forward_batches == [4]   # one forward pass over both halves
  assert np.isclose(out['human_loss'], 8.0 + 100.0)
  assert np.isclose(out['pseudo_loss'], 40.0 + 1000.0)
  assert float(out['pseudo_positives_per_image']) == 1.0
  assert float(out['pseudo_label_sum']) == 1000.0      # the pseudo half's labels
  assert tuple(out) == trainer.loss_names
  assert set(trainer.metric_names) <= set(out) | {'weight_decay'}


class _DetectionStub:
  """Real RetinaNet losses on a one-level, one-anchor, 3-class head."""
  num_classes = 3
  loss_names = ('total_loss',)
  label_stat_names = ()

  def label_stats(self, labels):
    return {}

  def forward(self, model, images, labels, training):
    cls, box = model(images, training=training)
    return {'cls_outputs': {'3': cls}, 'box_outputs': {'3': box}}

  def losses(self, outputs, labels):
    return losses.detection_losses(outputs, labels, num_classes=self.num_classes)


def _detection_labels(batch, positive):
  cls_targets = np.zeros([batch, 2, 2, 1], np.int32)
  box_weights = np.zeros([batch, 4], np.float32)
  if positive:
    cls_targets[0, 0, 0, 0], box_weights[0, 0] = 1, 1.0
  return {'cls_targets': {'3': tf.constant(cls_targets)},
          'box_targets': {'3': tf.fill([batch, 2, 2, 4], 0.1)},
          'cls_weights': tf.ones([batch, 4]), 'box_weights': tf.constant(box_weights)}


def test_detection_pseudo_batch_without_boxes_still_has_its_focal_loss():
  inputs = tf_keras.Input((2, 2, 3))
  model = tf_keras.Model(inputs, [tf_keras.layers.Conv2D(3, 1)(inputs),
                                  tf_keras.layers.Conv2D(4, 1)(inputs)])
  task, alpha = _DetectionStub(), 3.0
  trainer = _trainer(task, model, global_batch_size=4, pseudo_fraction=0.5, alpha=alpha)
  images = tf.random.stateless_uniform([4, 2, 2, 3], seed=(1, 2))
  h_labels, p_labels = _detection_labels(2, True), _detection_labels(2, False)
  out = trainer.compute_losses(((images[:2], h_labels), (images[2:], p_labels)))
  # The pseudo half has no positive anchor: all background, a positive finite focal loss
  # that counts, so the human loss gets 1 / (1 + alpha), not the whole weight or a drop.
  p_loss = task.losses({k: {'3': v[2:]} for k, v in
                        zip(('cls_outputs', 'box_outputs'), model(images))}, p_labels)
  assert float(p_loss['num_positives']) == 0.0
  assert np.isfinite(out['pseudo_loss']) and float(out['pseudo_loss']) > 0.0
  assert np.isclose(out['pseudo_loss'], p_loss['total_loss'])
  assert np.isclose(out['human_weight'], 1 / (1 + alpha))
  # First step: the averages are this step's losses, so r = L_h / L_p.
  ratio = float(out['human_loss']) / float(out['pseudo_loss'])
  assert np.isclose(out['pseudo_weight'], alpha * ratio / (1 + alpha), rtol=1e-5)
  assert np.isclose(out['total_loss'],
                    (out['human_loss'] + alpha * ratio * out['pseudo_loss']) / (1 + alpha),
                    rtol=1e-5)
  assert float(out['pseudo_positives_per_image']) == 0.0
