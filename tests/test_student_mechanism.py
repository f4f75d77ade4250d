"""The student's mechanism, each test failing on the bug it names (issue 17).

1. compute_losses: each half to its own loss; the total is the paper's formula in both modes,
   alpha 0, 1, 3, with and without a pseudo term, once the averages exist; the logged weights
   are the weights the gradient sees.
2. The student's input: known teacher boxes reach the pseudo half, and only it, as positive
   anchors of their class; human and pseudo images per step as configured; pseudo scores stay
   with their boxes.
3. student_init='teacher' starts the student at the teacher's weights; 'random' does not.
4. Two replicas (MirroredStrategy over two logical CPUs): the loss averages equal the one-replica
   run's on the same data, one replica without pseudo labels.
5. A student killed mid-training and resumed continues its four loss-average variables and ends
   where an uninterrupted run ends.
6. Detection losses against a hand-computed case and Model Garden's RetinaNetTask.build_losses;
   segmentation self-training (a student on pseudo masks) end to end on the digit scenes.

Tiny everything: a stub task where the mechanism is the point, otherwise 64 px scenes and
ResNet-10 models with 8 filters, 1-4 steps.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf, tf_keras

from rethink_st import cli
from rethink_st import config_io
from rethink_st import losses
from rethink_st import self_training
from rethink_st.data import features as F
from rethink_st.data import sources
from rethink_st.pseudo_label import run as pl_run
from rethink_st.pseudo_label import source as pl_source
from rethink_st.training import run as run_lib
from rethink_st.training import student as student_lib
from rethink_st.training import tasks

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SIZE = (64, 64)   # model input = the tiny scenes' size, so boxes need no rescaling
NORMALIZER_VARIABLES = ('human_ema', 'pseudo_ema', 'human_count', 'pseudo_count')


# --- a stub task: the student's wiring with nothing else ------------------------------------

class StubTask:
  """Outputs: each image's weighted pixel sum (a bias-free Dense(1)). A part's loss is the mean,
  over its labelled images (label >= 0), of output + label; `has_labels` is whether it has one
  (a pseudo part labelled -1 throughout is like a segmentation batch with every pixel ignored).
  `datasets` (optional): split -> {'human'|'pseudo': a batched tf.data.Dataset} for run_train."""
  num_classes = 2
  loss_names = ('total_loss',)
  label_stat_names = ()
  image_size = (2, 2)
  eval_source = None
  train_source = 'human'

  def __init__(self, datasets=None, kernel=(1.0, 2.0, -1.0, 0.5)):
    self.datasets = datasets
    self.kernel = np.asarray(kernel, np.float32)

  def build_model(self):
    model = tf_keras.Sequential([
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(1, use_bias=False, kernel_initializer=tf_keras.initializers.Constant(
            self.kernel[:, None]))])
    model.build((None, 2, 2, 1))
    return model

  def build_dataset(self, split, global_batch_size, input_context=None, source=None,
                    position=None):
    del split, global_batch_size, input_context, position
    return self.datasets['pseudo' if source is not None else 'human']

  def label_stats(self, labels):
    return {}

  def forward(self, model, images, labels, training):
    return {'sums': model(images, training=training)[:, 0]}

  def losses(self, outputs, labels):
    valid = tf.cast(labels >= 0, tf.float32)
    count = tf.reduce_sum(valid)
    loss = tf.math.divide_no_nan(tf.reduce_sum(valid * (outputs['sums'] + labels)), count)
    return {'total_loss': loss, 'num_positives': count, 'has_labels': count > 0}


def stub_student(task, model, global_batch_size, pseudo_fraction, *, alpha=1.0, mode='normalized',
                 decay=0.5, strategy=None):
  return student_lib.StudentTrainer(
      task=task, model=model, optimizer=tf_keras.optimizers.SGD(0.1),
      strategy=strategy or tf.distribute.get_strategy(), global_batch_size=global_batch_size,
      pseudo_source='pseudo', pseudo_fraction=pseudo_fraction,
      normalizer=losses.LossNormalizer(alpha=alpha, decay=decay, mode=mode))


def stub_batches(num_steps, n_human, n_pseudo, pseudo_labelled, seed=0):
  """[(human images, labels), (pseudo images, labels)] per step; the pseudo labels are -1 (no
  label) where pseudo_labelled[step] is False, and a per-image mask where it is a list."""
  rng = np.random.default_rng(seed)
  steps = []
  for k in range(num_steps):
    h_images = rng.uniform(0, 1, (n_human, 2, 2, 1)).astype(np.float32)
    p_images = rng.uniform(2, 3, (n_pseudo, 2, 2, 1)).astype(np.float32)
    h_labels = rng.uniform(10, 20, n_human).astype(np.float32)
    p_labels = rng.uniform(100, 200, n_pseudo).astype(np.float32)
    labelled = pseudo_labelled[k]
    mask = np.broadcast_to(np.asarray(labelled, bool), (n_pseudo,))
    p_labels = np.where(mask, p_labels, -1.0).astype(np.float32)
    steps.append(((h_images, h_labels), (p_images, p_labels)))
  return steps


def reference_student(steps, kernel, alpha, mode, decay):
  """The paper's formulas (Appendix B) in plain Python, per step: L_h, L_p, present, the
  debiased averages, r, the human and pseudo weights, the total and d total / d kernel."""
  kernel = np.asarray(kernel, np.float64)
  h_ema = p_ema = 0.0
  h_count = p_count = 0
  out = []
  for (h_images, h_labels), (p_images, p_labels) in steps:
    h_x = h_images.reshape(len(h_images), -1).astype(np.float64)
    p_x = p_images.reshape(len(p_images), -1).astype(np.float64)
    l_h = np.mean(h_x @ kernel + h_labels)
    valid = p_labels >= 0
    present = bool(valid.any())
    l_p = np.mean((p_x @ kernel + p_labels)[valid]) if present else 0.0
    h_ema = decay * h_ema + (1 - decay) * l_h
    h_count += 1
    if present:
      p_ema = decay * p_ema + (1 - decay) * l_p
      p_count += 1
    h_avg = h_ema / (1 - decay ** h_count)
    p_avg = p_ema / (1 - decay ** p_count) if p_count else 0.0
    r = h_avg / p_avg if p_count else 1.0
    a = alpha if present else 0.0
    if mode == 'normalized':
      w_h, w_p = 1 / (1 + a), a * r / (1 + a)
    else:
      w_h, w_p = 1.0, a
    grad = w_h * h_x.mean(0) + (w_p * p_x[valid].mean(0) if present else 0.0)
    out.append(dict(human_loss=l_h, pseudo_loss=l_p, present=present, human_loss_avg=h_avg,
                    pseudo_loss_avg=p_avg, loss_ratio=r, human_weight=w_h, pseudo_weight=w_p,
                    total_loss=w_h * l_h + w_p * l_p, grad=grad))
  return out


# --- 1. compute_losses: the right halves, the formula, the applied weights ------------------

@pytest.mark.parametrize('mode', ['normalized', 'standard'])
@pytest.mark.parametrize('alpha', [0.0, 1.0, 3.0])
def test_compute_losses_is_the_papers_formula_with_the_applied_weights(mode, alpha):
  # 3 human + 2 pseudo images per step; steps 2 and 5 have no pseudo label at all, step 4 one
  # of two. Human and pseudo images, labels and losses are far apart, so a swap, an offset
  # split, the pseudo labels read from the human half, a pseudo term that is always (or
  # never) present, or a weight off by a factor changes some number below.
  task = StubTask()
  model = task.build_model()
  trainer = stub_student(task, model, global_batch_size=5, pseudo_fraction=0.4, alpha=alpha,
                         mode=mode)
  assert (trainer.human_batch_size, trainer.pseudo_batch_size) == (3, 2)
  labelled = [True, False, True, [True, False], False, True]
  steps = stub_batches(len(labelled), 3, 2, labelled)
  want = reference_student(steps, task.kernel, alpha, mode, decay=0.5)
  for k, (inputs, ref) in enumerate(zip(steps, want)):
    with tf.GradientTape() as tape:
      out = trainer.compute_losses(tf.nest.map_structure(tf.constant, inputs))
    grad = tape.gradient(out['total_loss'], model.trainable_variables[0])
    for name in ('human_loss', 'pseudo_loss', 'human_loss_avg', 'pseudo_loss_avg', 'loss_ratio',
                 'human_weight', 'pseudo_weight', 'total_loss'):
      assert np.isclose(float(out[name]), ref[name], rtol=1e-5, atol=1e-6), (k, name)
    # the weights logged are the weights applied: d total / d kernel is
    # human_weight * d L_h + pseudo_weight * d L_p, with the logged weights
    np.testing.assert_allclose(grad.numpy()[:, 0], ref['grad'], rtol=1e-5, atol=1e-6,
                               err_msg=f'step {k}')
  assert float(trainer.normalizer.human_count.numpy()) == 6.0
  assert float(trainer.normalizer.pseudo_count.numpy()) == 4.0
  if alpha > 0:   # the pseudo term was really on, with a ratio that is not 1
    assert want[-1]['pseudo_weight'] > 0 and abs(want[-1]['loss_ratio'] - 1) > 0.5


# --- 2. the student's input -----------------------------------------------------------------

# A stand-in teacher's detections, in model-input pixels (= original pixels at 64 px), in
# score order: kept are A (class 3, 0.9) and B (class 7, 0.6); D (class 2, 0.8) lies on A and
# class-agnostic suppression drops it; C (class 5, 0.3) is below the score threshold 0.5.
TEACHER_BOXES = [[8., 6., 30., 26.], [9., 7., 30., 26.], [32., 34., 58., 60.], [4., 40., 20., 56.]]
TEACHER_CLASSES = [3, 2, 7, 5]
TEACHER_SCORES = [0.9, 0.8, 0.6, 0.3]
KEPT = [0, 2]
ANCHOR_BINDINGS = ['rethink_st.modeling.anchors.anchor_config.max_level = 6',
                   'rethink_st.modeling.anchors.anchor_config.anchor_size = 2.0']


class FixedDetector(tf.Module):
  """Returns TEACHER_* for every image (and nothing to train or restore)."""

  @tf.autograph.experimental.do_not_convert
  def __call__(self, inputs, image_shape, anchor_boxes, training):
    del image_shape, anchor_boxes, training
    n = tf.shape(inputs)[0]
    tile = lambda x, dtype: tf.tile(tf.constant([x], dtype), [n] + [1] * np.ndim(x))
    return {'detection_boxes': tile(TEACHER_BOXES, tf.float32),
            'detection_classes': tile(TEACHER_CLASSES, tf.int32),
            'detection_scores': tile(TEACHER_SCORES, tf.float32),
            'num_detections': tf.fill([n], len(TEACHER_SCORES))}


@pytest.fixture(scope='module')
def det_pseudo_dir(digit_scenes_dir, tmp_path_factory):
  """The real pseudo-labeler (score threshold 0.5, class-agnostic suppression 0.5) run with
  FixedDetector on the 32 unlabeled scenes: every image gets boxes A and B."""
  root = tmp_path_factory.mktemp('det_pseudo')
  ckpt = tf.train.Checkpoint(model=FixedDetector()).save(str(root / 'teacher' / 'ckpt'))
  task = tasks.DetectionTask(model_fn=lambda **_: FixedDetector(), num_classes=11,
                             image_size=SIZE)
  out = str(root / 'pseudo')
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([], ANCHOR_BINDINGS)
  try:
    stats = pl_run.run_pseudo_label(
        out, task=task, unlabeled_source=sources.digit_scenes_source('unlabeled', digit_scenes_dir),
        teacher_checkpoint=ckpt, batch_size=8, chunk_size=16, score_threshold=0.5,
        class_agnostic_nms_iou=0.5)
  finally:
    gin.clear_config()
  assert stats['images'] == 32 and stats['boxes'] == 64
  return out




def _iou(anchors, box):
  y0, x0 = np.maximum(anchors[:, 0], box[0]), np.maximum(anchors[:, 1], box[1])
  y1, x1 = np.minimum(anchors[:, 2], box[2]), np.minimum(anchors[:, 3], box[3])
  inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / (area(anchors) + area(np.asarray(box)) - inter)


def _flat(per_level, last):
  return np.concatenate([np.reshape(per_level[k], (per_level[k].shape[0], -1, last))
                         for k in sorted(per_level, key=int)], axis=1)


def test_the_pseudo_half_holds_the_teachers_boxes_in_the_configured_ratio(
    det_pseudo_dir, digit_scenes_dir):
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([], ANCHOR_BINDINGS + [
      # no random flip or scale jitter: the boxes land where the teacher put them
      'rethink_st.augment.Augment.flip = False',
      'rethink_st.augment.Augment.scale_min = 1.0',
      'rethink_st.augment.Augment.scale_max = 1.0'])
  task = tasks.DetectionTask(model_fn=lambda **_: None, num_classes=11, image_size=SIZE,
                             train_source=sources.digit_scenes_source('train', digit_scenes_dir))
  trainer = student_lib.StudentTrainer(
      task=task, model=None, optimizer=tf_keras.optimizers.SGD(0.1),
      strategy=tf.distribute.get_strategy(), global_batch_size=8,
      pseudo_source=pl_source.pseudo_label_source(det_pseudo_dir), pseudo_fraction=0.25)
  assert (trainer.human_batch_size, trainer.pseudo_batch_size) == (6, 2)

  from official.vision.ops import preprocess_ops  # pylint: disable=g-import-not-at-top
  def normalized_scenes(split):   # as the pipeline normalizes them (64 px: no resize)
    images = np.stack([ex[F.IMAGE].numpy() for ex in
                       sources.digit_scenes_source(split, digit_scenes_dir).dataset()])
    return ((images - np.array(preprocess_ops.MEAN_RGB, np.float32))
            / np.array(preprocess_ops.STDDEV_RGB, np.float32))
  unlabeled, train = normalized_scenes('unlabeled'), normalized_scenes('train')
  is_one_of = lambda image, pool: np.abs(pool - image).max(axis=(1, 2, 3)).min() < 1e-3

  # what the pseudo half's anchors must say: A and B as Model Garden's labeler assigns them,
  # and independently of it, every anchor with IoU >= 0.5 with A (B) is positive with class 3 (7)
  from official.vision.ops import anchor as mg_anchor  # pylint: disable=g-import-not-at-top
  cfg = dict(min_level=3, max_level=6, num_scales=3, aspect_ratios=[0.5, 1.0, 2.0],
             anchor_size=2.0)
  anchor_boxes = mg_anchor.build_anchor_generator(**cfg)(image_size=list(SIZE))
  boxes = tf.constant([TEACHER_BOXES[i] for i in KEPT])
  classes = tf.constant([[TEACHER_CLASSES[i]] for i in KEPT])
  want = mg_anchor.AnchorLabeler(0.5, 0.5).label_anchors(
      anchor_boxes, boxes, classes)[0]
  want_cls = _flat({k: v.numpy()[None] for k, v in want.items()}, 1)[0, :, 0]
  flat_anchors = _flat({k: v.numpy()[None] for k, v in anchor_boxes.items()}, 4)[0]
  iou = np.stack([_iou(flat_anchors, TEACHER_BOXES[i]) for i in KEPT], axis=1)
  assert (want_cls > 0).sum() >= 4

  batches = trainer.main_dataset_fn(None).take(2)
  for (h_images, h_labels), (p_images, p_labels) in batches:
    # the configured ratio: 6 human + 2 pseudo images a step, each from its own source
    assert h_images.shape[0] == 6 and p_images.shape[0] == 2
    assert h_labels['box_weights'].shape[0] == 6 and p_labels['box_weights'].shape[0] == 2
    assert all(is_one_of(im, unlabeled) and not is_one_of(im, train) for im in p_images.numpy())
    assert all(is_one_of(im, train) for im in h_images.numpy())
    p_cls = _flat({k: v.numpy() for k, v in p_labels['cls_targets'].items()}, 1)[..., 0]
    for i in range(2):
      np.testing.assert_array_equal(p_cls[i], want_cls)        # exactly A and B, as labelled
      positive = p_cls[i] > 0
      np.testing.assert_array_equal(p_labels['box_weights'].numpy()[i] > 0, positive)
      best = np.array([TEACHER_CLASSES[KEPT[j]] for j in iou.argmax(1)])
      assert np.all(p_cls[i][iou.max(1) >= 0.5] == best[iou.max(1) >= 0.5])
      assert set(p_cls[i][positive]) == {3, 7}
    np.testing.assert_array_equal(p_labels['num_boxes'].numpy(), [2, 2])
    # the human half holds the human scenes' boxes, not the teacher's
    h_cls = _flat({k: v.numpy() for k, v in h_labels['cls_targets'].items()}, 1)[..., 0]
    assert not any(np.array_equal(c, want_cls) for c in h_cls)
  gin.clear_config()


def test_pseudo_scores_stay_with_their_boxes(det_pseudo_dir):
  # what the student reads: the kept boxes, in the teacher's order, each with its own score
  source = pl_source.pseudo_label_source(det_pseudo_dir)
  assert source.has_scores and source.num_classes == 10
  examples = list(source.dataset().take(8))
  score_of = {TEACHER_CLASSES[i]: TEACHER_SCORES[i] for i in KEPT}
  for ex in examples:
    np.testing.assert_allclose(ex[F.BOXES].numpy() * 64.0, [TEACHER_BOXES[i] for i in KEPT],
                               atol=1e-4)
    assert ex[F.CLASSES].numpy().tolist() == [TEACHER_CLASSES[i] for i in KEPT]
    np.testing.assert_allclose(ex[F.SCORES].numpy(), [TEACHER_SCORES[i] for i in KEPT])
  # through training augmentation that moves boxes and drops those that leave the crop: each
  # score still belongs to its box
  from rethink_st import augment  # pylint: disable=g-import-not-at-top
  aug = augment.Augment('s1', output_size=SIZE, scale_min=1.6, scale_max=2.0)
  tf.random.set_seed(3)
  kept_counts = set()
  for ex in examples * 3:
    out = aug(dict(ex), training=True)
    classes, scores = out[F.CLASSES].numpy().tolist(), out[F.SCORES].numpy().tolist()
    assert len(scores) == len(classes) == out[F.BOXES].shape[0]
    np.testing.assert_allclose(scores, [score_of[c] for c in classes])
    kept_counts.add(tuple(classes))
  assert len(kept_counts) > 1, kept_counts   # some crops did drop a box


# --- students that record what they did (items 3, 5 and 6) -----------------------------------

class _Stop(Exception):
  """Stops a run where a test wants it stopped (a kill, or the end of what it looks at)."""


def _recording_student(record, stop_at_step=None, stop_after_step=None, read_data=True):
  """A StudentTrainer that records the model's weights when a training loop begins and each
  loop's logged values when it ends; it stops (_Stop) when a loop would begin at
  `stop_at_step`, or when a loop ends at `stop_after_step` (before that step's checkpoint).
  read_data=False: no input pipelines are built (for a run stopped before its first step)."""
  class RecordingStudent(student_lib.StudentTrainer):

    def attach_datasets(self, train=True, eval_batch_size=None, position=None):
      if read_data:
        return super().attach_datasets(train, eval_batch_size, position)
      import orbit  # pylint: disable=g-import-not-at-top
      orbit.StandardTrainer.__init__(self, tf.data.Dataset.range(1))
      return None

    def train_loop_begin(self):
      step = int(self.global_step.numpy())
      record.setdefault('weights', {})[step] = [w.numpy() for w in self.model.weights]
      if step == stop_at_step:
        raise _Stop(step)
      return super().train_loop_begin()

    def train_loop_end(self):
      logs = super().train_loop_end()
      record.setdefault('logs', {})[int(self.global_step.numpy())] = {
          k: float(np.asarray(v)) for k, v in logs.items() if np.ndim(v) == 0}
      if int(self.global_step.numpy()) == stop_after_step:
        raise _Stop(stop_after_step)
      return logs
  return RecordingStudent


def _student_records(monkeypatch, recording_cls):
  """Makes run_self_training's student a `recording_cls`, once its checks (which look the
  StudentTrainer up in gin) have passed."""
  check = self_training._check_student_batch  # pylint: disable=protected-access

  def check_then_record():
    check()
    monkeypatch.setattr(student_lib, 'StudentTrainer', recording_cls)
  monkeypatch.setattr(self_training, '_check_student_batch', check_then_record)


def _randomize(model, seed):
  """Every weight (batch-norm statistics too) to seeded values unlike any initializer's."""
  rng = np.random.default_rng(seed)
  for w in model.weights:
    w.assign(rng.uniform(0.5, 1.5, w.shape).astype(w.dtype.as_numpy_dtype))


def _tiny_detection_bindings(data_dir):
  return ANCHOR_BINDINGS + [
      'IMAGE_SIZE = (64, 64)',
      f"train/rethink_st.data.sources.digit_scenes_source.data_dir = '{data_dir}'",
      f"eval/rethink_st.data.sources.digit_scenes_source.data_dir = '{data_dir}'",
      f"unlabeled/rethink_st.data.sources.digit_scenes_source.data_dir = '{data_dir}'",
      "rethink_st.modeling.detection.build_retinanet.backbone = 'resnet-10'",
      'rethink_st.modeling.detection.build_retinanet.decoder_num_filters = 8',
      'rethink_st.modeling.detection.build_retinanet.head_num_filters = 8',
      'rethink_st.modeling.detection.build_retinanet.head_num_convs = 1',
      'student/rethink_st.training.run.run_train.global_batch_size = 4',
      'student/rethink_st.training.run.run_train.train_steps = 2',
  ]


# --- 3. student init ------------------------------------------------------------------------

def test_student_init_teacher_copies_the_teacher_and_random_does_not(
    det_pseudo_dir, digit_scenes_dir, tmp_path, monkeypatch):
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([os.path.join(REPO, 'gin_configs', 'digits', 'demo.gin')],
                      _tiny_detection_bindings(digit_scenes_dir))
  teacher = gin.query_parameter('rethink_st.training.run.run_train.task').scoped_configurable_fn()
  teacher_model = teacher.build_model()
  _randomize(teacher_model, seed=1)
  teacher_dir = str(tmp_path / 'teacher')
  tf.train.Checkpoint(model=teacher_model).save(os.path.join(teacher_dir, 'ckpt'))
  want = [w.numpy() for w in teacher_model.weights]
  assert len(want) > 50
  for student_init in ('teacher', 'random'):
    root = tmp_path / student_init
    shutil.copytree(det_pseudo_dir, root / 'round_1' / 'pseudo')   # labeled: no labeler run
    record = {}
    _student_records(monkeypatch, _recording_student(record, stop_at_step=0, read_data=False))
    with pytest.raises(_Stop):
      self_training.run_self_training(str(root), student_init=student_init,
                                      teacher_dir=teacher_dir, pseudo_report=False)
    got = record['weights'][0]          # the student when its first step begins
    assert len(got) == len(want)
    same = [np.array_equal(g, w) for g, w in zip(got, want)]
    if student_init == 'teacher':
      assert all(same), f'{same.count(False)} of {len(same)} weights differ from the teacher'
    else:   # no Keras initializer gives these uniform(0.5, 1.5) values
      assert not any(same), f'{sum(same)} of {len(same)} weights equal the teacher'
    monkeypatch.undo()
  gin.clear_config()


# --- 4. two replicas -------------------------------------------------------------------------

def two_replica_run():
  """In a process with two logical CPUs: the stub student's compute_losses on 5 steps of 4 human
  + 4 pseudo images, once over two replicas (MirroredStrategy, 2 + 2 each) and once on one,
  and after each step every replica's copy of the four normalizer variables and its averages.
  Pseudo labels: step 2 only in replica 0's images, step 3 none, step 5 only in replica 1's."""
  labelled = [True, [True, True, False, False], False, True, [False, False, True, True]]
  steps = stub_batches(len(labelled), 4, 4, labelled, seed=2)
  results = {}
  for name, strategy in (('two', tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])),
                         ('one', tf.distribute.get_strategy())):
    with strategy.scope():
      task = StubTask()
      trainer = stub_student(task, task.build_model(), 8, 0.5, alpha=1.0, decay=0.5,
                             strategy=strategy)
    step_fn = tf.function(lambda inputs: strategy.run(trainer.compute_losses, args=(inputs,)))
    results[name] = []
    for batch in steps:
      def replica_part(ctx, batch=batch):
        r, n = ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync
        return tf.nest.map_structure(
            lambda x: tf.constant(x[r * len(x) // n:(r + 1) * len(x) // n]), batch)
      if strategy.num_replicas_in_sync > 1:
        inputs = strategy.experimental_distribute_values_from_function(replica_part)
      else:
        inputs = tf.nest.map_structure(tf.constant, batch)
      out = step_fn(inputs)
      local = lambda x: [float(v) for v in strategy.experimental_local_results(x)]
      results[name].append({
          'replicas': strategy.num_replicas_in_sync,
          **{n: local(getattr(trainer.normalizer, n)) for n in NORMALIZER_VARIABLES},
          **{n: local(out[n]) for n in ('human_loss_avg', 'pseudo_loss_avg', 'loss_ratio',
                                        'human_weight', 'pseudo_weight')}})
  return results


_TWO_REPLICAS = """
import json, sys
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0], [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
import test_student_mechanism
print('RESULTS ' + json.dumps(test_student_mechanism.two_replica_run()))
"""


def test_two_replicas_keep_the_one_replica_averages_and_weights():
  proc = subprocess.run([sys.executable, '-c', _TWO_REPLICAS, HERE], capture_output=True,
                        text=True, timeout=300,
                        env=dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULTS ')][-1]
  results = json.loads(line[len('RESULTS '):])
  two, one = results['two'], results['one']
  assert two[0]['replicas'] == 2 and one[0]['replicas'] == 1
  for k, (a, b) in enumerate(zip(two, one)):
    for name in NORMALIZER_VARIABLES + ('human_loss_avg', 'pseudo_loss_avg', 'loss_ratio'):
      assert len(a[name]) == 2 and a[name][0] == a[name][1], (k, name, a[name])  # in sync
      np.testing.assert_allclose(a[name][0], b[name][0], rtol=1e-6, err_msg=f'step {k + 1} {name}')
    # The weights: every replica gives L_h the one-replica weight (also the replica without
    # pseudo labels at steps 2 and 5), and the replicas' pseudo weights average to it.
    np.testing.assert_allclose(a['human_weight'], b['human_weight'] * 2, rtol=1e-6,
                               err_msg=f'step {k + 1} human_weight')
    np.testing.assert_allclose(np.mean(a['pseudo_weight']), b['pseudo_weight'][0], rtol=1e-6,
                               err_msg=f'step {k + 1} pseudo_weight')
  assert [s['human_count'][0] for s in two] == [1, 2, 3, 4, 5]
  assert [s['pseudo_count'][0] for s in two] == [1, 2, 2, 3, 4]


# --- 5. resume ------------------------------------------------------------------------------

def _stub_datasets():
  """One human batch every step; pseudo batches alternate labelled / not labelled, so the two
  averages move at different steps (a checkpoint at an even step resumes at the same phase:
  data positions are not checkpointed, issue 13)."""
  (human_batch, _), = stub_batches(1, 2, 2, [True], seed=5)
  pseudo_batches = [p for _, p in stub_batches(2, 2, 2, [True, False], seed=6)]
  human = tf.data.Dataset.from_tensors(human_batch).repeat()
  pseudo = tf.data.Dataset.from_tensor_slices(
      tuple(np.stack(x) for x in zip(*pseudo_batches))).repeat()
  return {'human': human, 'pseudo': pseudo}


def _normalizer_values(path):
  return {n: float(tf.train.load_variable(path, f'loss_normalizer/{n}/.ATTRIBUTES/VARIABLE_VALUE'))
          for n in NORMALIZER_VARIABLES}


def test_a_killed_student_resumes_its_loss_averages(tmp_path):
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([], [
      'rethink_st.training.optimization.build_optimizer.learning_rate = 2.56',  # 0.04 at batch 4
      'rethink_st.training.optimization.build_optimizer.warmup_steps = 0',
      "rethink_st.training.optimization.build_optimizer.schedule = 'constant'"])
  task = StubTask(_stub_datasets())
  kwargs = dict(task=task, train_steps=4, global_batch_size=4, steps_per_loop=1,
                checkpoint_every=1, keep_checkpoints=5)

  def student(record, stop_after_step=None):
    cls = _recording_student(record, stop_after_step=stop_after_step)
    return lambda **kw: cls(pseudo_source='pseudo', pseudo_fraction=0.5,
                            normalizer=losses.LossNormalizer(alpha=1.0, decay=0.5), **kw)

  whole, first, resumed = {}, {}, {}
  run_lib.run_train(str(tmp_path / 'whole'), trainer_cls=student(whole), **kwargs)
  killed = str(tmp_path / 'killed')
  with pytest.raises(_Stop):   # killed after step 3, before its checkpoint was written
    run_lib.run_train(killed, trainer_cls=student(first, stop_after_step=3), **kwargs)
  assert sorted(first['logs']) == [1, 2, 3]
  assert tf.train.latest_checkpoint(killed).endswith('ckpt-2')
  run_lib.run_train(killed, trainer_cls=student(resumed), **kwargs)
  gin.clear_config()

  at_2 = _normalizer_values(os.path.join(killed, 'ckpt-2'))
  assert (at_2['human_count'], at_2['pseudo_count']) == (2.0, 1.0)
  # resumed: it starts from the checkpoint's averages, not from zero ...
  assert sorted(resumed['logs']) == [3, 4]
  end = _normalizer_values(os.path.join(killed, 'ckpt-4'))
  assert (end['human_count'], end['pseudo_count']) == (4.0, 2.0)
  h3, h4 = resumed['logs'][3]['human_loss'], resumed['logs'][4]['human_loss']
  p3 = resumed['logs'][3]['pseudo_loss']
  assert resumed['logs'][4]['pseudo_weight'] == 0.0 and resumed['logs'][3]['pseudo_weight'] > 0
  np.testing.assert_allclose(end['human_ema'], 0.25 * at_2['human_ema'] + 0.25 * h3 + 0.5 * h4,
                             rtol=1e-6)
  np.testing.assert_allclose(end['pseudo_ema'], 0.5 * at_2['pseudo_ema'] + 0.5 * p3, rtol=1e-6)
  np.testing.assert_allclose(resumed['logs'][4]['human_loss_avg'],
                             end['human_ema'] / (1 - 0.5 ** 4), rtol=1e-6)
  # ... and ends where the run that was never killed ends: averages, weights, optimizer
  np.testing.assert_allclose([end[n] for n in NORMALIZER_VARIABLES],
                             [_normalizer_values(os.path.join(tmp_path, 'whole', 'ckpt-4'))[n]
                              for n in NORMALIZER_VARIABLES], rtol=1e-6)
  for step in (3, 4):
    for name, value in whole['logs'][step].items():
      if name not in ('images_per_sec', 'learning_rate'):
        np.testing.assert_allclose(resumed['logs'][step][name], value, rtol=1e-6, err_msg=name)
  reader = tf.train.load_checkpoint(os.path.join(tmp_path, 'whole', 'ckpt-4'))
  resumed_reader = tf.train.load_checkpoint(os.path.join(killed, 'ckpt-4'))
  names = [n for n in reader.get_variable_to_shape_map() if n.startswith(('model/', 'optimizer/'))
           and 'VARIABLE_VALUE' in n]
  assert any('kernel' in n for n in names) and any('momentum' in n for n in names)
  for name in names:
    np.testing.assert_allclose(resumed_reader.get_tensor(name), reader.get_tensor(name),
                               rtol=1e-6, err_msg=name)


# --- 6a. detection loss values ---------------------------------------------------------------

def _focal(logit, target, alpha=0.25, gamma=1.5):
  p = 1 / (1 + math.exp(-logit))
  if target:
    return -alpha * (1 - p) ** gamma * math.log(p)
  return -(1 - alpha) * p ** gamma * math.log(1 - p)


def _huber(x, delta=0.1):
  return 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)


def test_detection_loss_by_hand():
  # One image, one level of 1 x 2 locations, 1 anchor, 3 classes (0 is background, and, as in
  # Model Garden, its one-hot column is a target too). Anchor 0 is class 2 (positive), anchor 1
  # background; one positive, so both sums are divided by 1 + 1.
  cls_logits = np.array([[0.3, -1.2, 2.0], [-0.5, 0.8, -2.5]])
  box_pred = np.array([[0.05, -0.2, 0.0, 0.3], [1.0, 1.0, 1.0, 1.0]])
  box_true = np.array([[0.0, 0.1, 0.0, 0.34], [0.0, 0.0, 0.0, 0.0]])
  outputs = {'cls_outputs': {'3': tf.constant(cls_logits.reshape(1, 1, 2, 3), tf.float32)},
             'box_outputs': {'3': tf.constant(box_pred.reshape(1, 1, 2, 4), tf.float32)}}
  labels = {'cls_targets': {'3': tf.constant([[[[2], [0]]]], tf.int32)},
            'box_targets': {'3': tf.constant(box_true.reshape(1, 1, 2, 4), tf.float32)},
            'cls_weights': tf.ones([1, 2]), 'box_weights': tf.constant([[1.0, 0.0]])}
  got = losses.detection_losses(outputs, labels, num_classes=3)
  targets = [[0, 0, 1], [1, 0, 0]]
  cls = sum(_focal(cls_logits[a, c], targets[a][c]) for a in range(2) for c in range(3)) / 2
  box = np.mean([_huber(d) for d in box_pred[0] - box_true[0]]) / 2   # Huber: mean of 4 coords
  assert np.isclose(float(got['cls_loss']), cls, rtol=1e-5)
  assert np.isclose(float(got['box_loss']), box, rtol=1e-5)
  assert np.isclose(float(got['total_loss']), cls + 50.0 * box, rtol=1e-5)
  assert float(got['num_positives']) == 1.0 and bool(got['has_labels'])


def test_detection_loss_equals_model_gardens_retinanet_loss():
  # Labels from Model Garden's own anchor labeler (positives, negatives and ignored anchors
  # with weight 0) on two levels; random outputs.
  from official.vision.configs import retinanet as mg_cfg  # pylint: disable=g-import-not-at-top
  from official.vision.ops import anchor as mg_anchor  # pylint: disable=g-import-not-at-top
  from official.vision.tasks import retinanet as mg_retinanet  # pylint: disable=g-import-not-at-top
  num_classes = 4
  anchor_boxes = mg_anchor.build_anchor_generator(
      min_level=3, max_level=4, num_scales=2, aspect_ratios=[0.5, 1.0, 2.0],
      anchor_size=2.0)(image_size=[32, 32])
  labeler = mg_anchor.AnchorLabeler(match_threshold=0.5, unmatched_threshold=0.4)
  per_image = [labeler.label_anchors(anchor_boxes, tf.constant(b, tf.float32),
                                     tf.constant(c, tf.int32)[:, None])
               for b, c in (([[2., 2., 14., 12.], [16., 10., 30., 30.]], [1, 3]),
                            ([[0., 0., 9., 20.]], [2]))]
  stack = lambda i: tf.nest.map_structure(lambda *x: tf.stack(x), *[p[i] for p in per_image])
  labels = {'cls_targets': stack(0), 'box_targets': stack(1), 'cls_weights': stack(3),
            'box_weights': stack(4)}
  assert 0 < float(tf.reduce_sum(labels['box_weights'])) < float(
      tf.reduce_sum(labels['cls_weights']))
  assert float(tf.reduce_min(labels['cls_weights'])) == 0.0   # some anchors ignored
  rng = np.random.default_rng(0)
  outputs = {
      'cls_outputs': {k: tf.constant(rng.normal(size=v.shape[:3] + (6 * num_classes,)),
                                     tf.float32) for k, v in labels['cls_targets'].items()},
      'box_outputs': {k: tf.constant(rng.normal(0, 0.2, v.shape[:3] + (6 * 4,)),
                                     tf.float32) for k, v in labels['cls_targets'].items()}}
  config = mg_cfg.RetinaNetTask(model=mg_cfg.RetinaNet(num_classes=num_classes),
                                losses=mg_cfg.Losses())   # alpha 0.25, gamma 1.5, delta 0.1, 50
  total, cls, box, _ = mg_retinanet.RetinaNetTask(config).build_losses(outputs, labels)
  got = losses.detection_losses(outputs, labels, num_classes=num_classes)
  assert np.isclose(float(got['cls_loss']), float(cls), rtol=1e-6)
  assert np.isclose(float(got['box_loss']), float(box), rtol=1e-6)
  assert np.isclose(float(got['total_loss']), float(total), rtol=1e-6)
  assert float(box) > 0 and float(cls) > 0


# --- 6b. segmentation self-training end to end ----------------------------------------------

def test_segmentation_self_training_end_to_end(digit_scenes_dir, tmp_path, monkeypatch):
  # The digit cell's segmentation self-training (seg_cell.gin + seg_self_training.gin) at 64 px:
  # the teacher's pseudo masks -> the student on human + pseudo masks -> mIoU. The teacher is
  # untrained but for its classifier, which says class 1 everywhere (logits 5 for it, 0 for
  # the others: probability 0.937 > the 0.5 mask threshold), so every pseudo mask is all 1s
  # and the student, starting from the teacher, has a known pseudo loss at step 1.
  gin.clear_config()
  cli.register_configurables()
  digits = os.path.join(REPO, 'gin_configs', 'digits')
  config_io.parse_gin([os.path.join(digits, 'experiments', 'seg_cell.gin'),
                       os.path.join(digits, 'augment_s1.gin'),
                       os.path.join(digits, 'experiments', 'seg_self_training.gin')], [
      'IMAGE_SIZE = (64, 64)',
      f"train/rethink_st.data.sources.digit_scenes_source.data_dir = '{digit_scenes_dir}'",
      f"eval/rethink_st.data.sources.digit_scenes_source.data_dir = '{digit_scenes_dir}'",
      f"unlabeled/rethink_st.data.sources.digit_scenes_source.data_dir = '{digit_scenes_dir}'",
      'UNLABELED_FRACTION = 0.25',                       # a few of the 32 unlabeled scenes
      "rethink_st.modeling.segmentation.build_segmentation_model.backbone = 'resnet-10'",
      "rethink_st.modeling.segmentation.build_segmentation_model.decoder = 'fpn'",
      'rethink_st.modeling.segmentation.build_segmentation_model.decoder_num_filters = 8',
      'rethink_st.modeling.segmentation.build_segmentation_model.max_level = 5',
      'rethink_st.modeling.segmentation.build_segmentation_model.head_num_convs = 1',
      'rethink_st.modeling.segmentation.build_segmentation_model.head_num_filters = 8',
      'rethink_st.training.tasks.SegmentationTask.size_divisor = 32',
      'rethink_st.augment.Augment.scale_min = 1.0',      # 64 px scenes fill the 64 px input
      'rethink_st.augment.Augment.scale_max = 1.0',
      'rethink_st.pseudo_label.run.run_pseudo_label.batch_size = 8',
      'STUDENT_STEPS = 2',
      'student/rethink_st.training.run.run_train.global_batch_size = 4',
      'rethink_st.training.run.run_train.steps_per_loop = 1',
      'rethink_st.training.run.run_train.eval_batch_size = 8',
      'rethink_st.training.run.run_train.eval_steps = 1',
      'rethink_st.training.optimization.build_optimizer.warmup_steps = 1',
  ])
  task = gin.query_parameter('rethink_st.training.run.run_train.task').scoped_configurable_fn()
  teacher = task.build_model()
  classifier = teacher.head._classifier  # pylint: disable=protected-access
  classifier.kernel.assign(tf.zeros_like(classifier.kernel))
  classifier.bias.assign(tf.one_hot(1, 11) * 5.0)
  teacher_dir = str(tmp_path / 'teacher')
  tf.train.Checkpoint(model=teacher).save(os.path.join(teacher_dir, 'ckpt'))
  record = {}
  _student_records(monkeypatch, _recording_student(record))
  root = tmp_path / 'st'
  results = self_training.run_self_training(str(root), teacher_dir=teacher_dir,
                                            pseudo_report=False)
  gin.clear_config()

  stats = json.load(open(root / 'round_1' / 'pseudo' / 'stats.json'))
  assert stats['kind'] == 'segmentation' and stats['images'] >= 2
  assert stats['ignored_pixels'] == 0
  assert stats['per_class'][1] == stats['pixels'] == stats['images'] * 64 * 64
  # the student starts as the teacher and trains on both halves, the pseudo one on the masks
  assert all(np.array_equal(a, b.numpy()) for a, b in zip(record['weights'][0], teacher.weights))
  step_1 = record['logs'][1]
  assert np.isclose(step_1['pseudo_loss'], math.log(math.exp(5) + 10) - 5, rtol=1e-4)
  assert step_1['human_loss'] > 1.0                   # human masks: mostly background
  assert step_1['pseudo_positives_per_image'] == 64 * 64
  assert step_1['human_weight'] == 0.5 and step_1['pseudo_weight'] > 0.0
  ckpt = tf.train.latest_checkpoint(str(root / 'round_1' / 'student'))
  assert ckpt.endswith('ckpt-2')
  values = _normalizer_values(ckpt)
  assert (values['human_count'], values['pseudo_count']) == (2.0, 2.0)
  assert not all(np.array_equal(a, b) for a, b in zip(record['weights'][1], record['weights'][0]))
  student_row = results['rows'][1]
  assert student_row['model'] == 'student_round_1' and 0.0 <= student_row['mIoU'] <= 1.0
