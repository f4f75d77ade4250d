"""The Task owns its kind: comparisons with a kind's name appear only in the task modules
(rethink_st/, bin/ and benchmarks/ are scanned), and a new kind is one Task subclass plus its
gin file (a toy 'count' kind, defined here, trains through run_train and evaluates, with no
project module changed)."""
import ast
import json
import os
import pathlib

import gin
import numpy as np
import tensorflow as tf, tf_keras

from rethink_st import cli
from rethink_st import config_io
from rethink_st import features as F
from rethink_st.data import pipeline
from rethink_st.training import run
from rethink_st.training import tasks

REPO = pathlib.Path(__file__).resolve().parent.parent
KIND_NAMES = {'detection', 'segmentation', 'classification', 'joint'}
# Where a kind's name may be compared with: the task module, and the data sources telling
# dataset schemas apart (tfds features: 'coco', 'classification', ...; a COCO JSON
# annotation's 'segmentation' field).
ALLOWED = {'rethink_st/training/tasks.py', 'rethink_st/data/tfds_source.py',
           'rethink_st/data/coco_json_source.py'}


def _kind_constants(node):
  """The kind-name string constants among a compared operand (a tuple/list/set included)."""
  if isinstance(node, ast.Constant) and node.value in KIND_NAMES:
    return [node.value]
  if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
    return [v for elt in node.elts for v in _kind_constants(elt)]
  return []


def kind_comparisons(path: pathlib.Path, root: pathlib.Path = REPO):
  """['file:line: ...'] for each ==, !=, in, not in (and is) with a kind's name."""
  hits = []
  tree = ast.parse(path.read_text(), filename=str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Compare):
      names = [v for operand in [node.left] + node.comparators for v in _kind_constants(operand)]
      if names:
        hits.append(f'{path.relative_to(root)}:{node.lineno}: compares with '
                    f'{", ".join(repr(n) for n in names)}')
  return hits


def test_kind_names_are_compared_only_in_the_task_modules():
  hits = []
  for folder in ('rethink_st', 'bin', 'benchmarks'):
    for path in sorted((REPO / folder).rglob('*.py')):
      if str(path.relative_to(REPO)) not in ALLOWED:
        hits += kind_comparisons(path)
  assert not hits, ('a task kind\'s name is compared outside the task modules (ask the Task '
                    'or its labeler instead; a benchmark deciding something of its own: a '
                    'table keyed by the kind):\n' + '\n'.join(hits))


def test_the_check_finds_each_form_of_comparison(tmp_path):
  code = ("a = kind == 'detection'\n"
          "b = 'segmentation' != task\n"
          "c = kind in ('joint', 'x')\n"
          "d = kind not in {'classification'}\n"
          "e = {'detection': 1}[kind]\n"          # a lookup, not a comparison
          "f = kind == 'detections'\n")
  path = tmp_path / 'm.py'
  path.write_text(code)
  hits = kind_comparisons(path, tmp_path)
  assert [h.split(':')[1] for h in hits] == ['1', '2', '3', '4'], hits
  assert hits[0] == "m.py:1: compares with 'detection'"


def test_every_kind_is_registered_with_its_parts():
  assert {'detection', 'segmentation', 'classification'} <= set(tasks.KINDS)
  for kind, cls in tasks.KINDS.items():
    assert cls.kind == kind and issubclass(cls.input_parser, pipeline.InputParser)
    assert cls.input_parser.kind == kind
  assert tasks.labeler_class('segmentation', 'x').kind == 'segmentation'
  assert tasks.find_labeler_class('classification') is None
  try:
    tasks.labeler_class('classification', '--pseudo_dir=p: meta.json kind')
  except Exception as e:   # pylint: disable=broad-except
    assert str(e).startswith("--pseudo_dir=p: meta.json kind='classification' is not a kind "
                             'with a labeler (detection, segmentation'), str(e)
  else:
    raise AssertionError('no error')


# --- a toy kind, registered here: regress how many digits a scene holds ---------------------

class CountParser(pipeline.InputParser):
  """The eval preprocessing of the image; the label is its number of boxes."""
  kind = 'count'

  @classmethod
  def required_keys(cls, is_training):
    return (F.IMAGE, F.CLASSES)

  def parse(self, example):
    image, _ = pipeline.preprocess_for_inference(example[F.IMAGE], self.output_size)
    return tf.cast(image, self.dtype), tf.cast(tf.shape(example[F.CLASSES])[0], tf.float32)


class MeanAbsoluteError:

  def __init__(self):
    self.reset()

  def reset(self):
    self.total, self.count = 0.0, 0

  def update_state(self, labels, predictions):
    self.total += float(np.abs(np.asarray(labels) - np.asarray(predictions)).sum())
    self.count += int(np.asarray(labels).shape[0])

  def result(self):
    return {'count_mae': self.total / max(self.count, 1)}


@gin.configurable
def count_model(input_size, num_classes):
  del num_classes
  inputs = tf_keras.Input(list(input_size) + [3])
  x = tf_keras.layers.Conv2D(4, 3, strides=4, activation='relu')(inputs)
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(1)(x)[:, 0])


@gin.configurable
class CountTask(tasks.Task):
  kind = 'count'
  loss_names = ('total_loss',)
  input_parser = CountParser

  def __init__(self, model_fn=None, num_classes=11, image_size=(32, 32), train_source=None,
               eval_source=None):
    super().__init__(model_fn, num_classes, image_size, train_source, eval_source)

  def forward(self, model, images, labels, training):
    return tf.cast(model(images, training=training), tf.float32)

  def losses(self, outputs, labels):
    return {'total_loss': tf.reduce_mean(tf.square(outputs - labels))}

  def eval_outputs(self, model, images, labels):
    return {'labels': labels, 'predictions': self.forward(model, images, labels, False)}

  def new_evaluator(self):
    return MeanAbsoluteError()

  restored_from = []   # each restore's `where`: evaluation restores through the Task too

  def restore(self, model, path, where):
    CountTask.restored_from.append(where)
    return super().restore(model, path, where)

  def update_evaluator(self, evaluator, outputs):
    evaluator.update_state(outputs['labels'], outputs['predictions'])


COUNT_GIN = """\
# The toy 'count' kind (tests/test_task_kinds.py): how many digits a scene holds.
import rethink_st.data.sources
import rethink_st.training.optimization
import rethink_st.training.run

TASK = @test_task_kinds.CountTask()
rethink_st.training.run.run_train.task = %TASK
rethink_st.training.run.run_evaluate.task = %TASK
test_task_kinds.CountTask.model_fn = @test_task_kinds.count_model
test_task_kinds.CountTask.image_size = (32, 32)                  # pixels
test_task_kinds.CountTask.train_source = @train/rethink_st.data.sources.digit_scenes_source()
test_task_kinds.CountTask.eval_source = @eval/rethink_st.data.sources.digit_scenes_source()
train/rethink_st.data.sources.digit_scenes_source.split = 'train'
eval/rethink_st.data.sources.digit_scenes_source.split = 'val'
rethink_st.training.run.run_train.train_steps = 4               # steps
rethink_st.training.run.run_train.global_batch_size = 8         # images per step
rethink_st.training.run.run_train.steps_per_loop = 2
rethink_st.training.run.run_train.checkpoint_every = 2
rethink_st.training.run.run_train.seed = 0
rethink_st.training.optimization.build_optimizer.warmup_steps = 1
"""


def test_a_new_kind_is_one_task_class_and_its_gin_file(digit_scenes_dir, tmp_path):
  assert tasks.KINDS['count'] is CountTask
  gin_file = tmp_path / 'count.gin'
  gin_file.write_text(COUNT_GIN)
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([str(gin_file)], [
      f"train/rethink_st.data.sources.digit_scenes_source.data_dir = '{digit_scenes_dir}'",
      f"eval/rethink_st.data.sources.digit_scenes_source.data_dir = '{digit_scenes_dir}'"])
  model_dir = str(tmp_path / 'count')
  metrics = run.run_train(model_dir)
  assert set(metrics) == {'count_mae'} and 0.0 <= metrics['count_mae'] < 50, metrics
  assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-4')
  with open(os.path.join(model_dir, 'eval_metrics.json')) as f:
    assert json.load(f) == {'step': 4, 'count_mae': metrics['count_mae']}
  # Evaluated again from its checkpoint (run_evaluate, as bin/evaluate.py does): the same.
  del CountTask.restored_from[:]
  again = run.run_evaluate(model_dir, eval_batch_size=8)
  assert abs(again['count_mae'] - metrics['count_mae']) < 1e-5, (again, metrics)
  assert CountTask.restored_from == ['--model_dir']   # what the Task says its checkpoint restores
