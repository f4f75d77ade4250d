"""Teacher training end to end on the tiny digit scenes: Orbit loop, checkpoints, resume,
configs, evaluation JSON, and the stops for a NaN loss and a foreign checkpoint."""
import json
import logging
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from rethink_st import cli
from rethink_st import config_io
from rethink_st.errors import TrainingDiverged, UserError
from rethink_st.training import run
from rethink_st.training import strategy as strategy_lib
from rethink_st.training import trainer as trainer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_GIN = os.path.join(REPO, 'gin_configs', 'digits', 'teacher.gin')


def tiny_bindings(data_dir, steps=4):
  """The digits teacher config shrunk to a few seconds: ResNet-10, 32-channel FPN."""
  return [
      f"train/rethink_st.data.sources.digit_scenes_source.data_dir = '{data_dir}'",
      f"eval/rethink_st.data.sources.digit_scenes_source.data_dir = '{data_dir}'",
      'rethink_st.data.sources.digit_scenes_source.fraction = 1.0',
      "rethink_st.modeling.detection.build_retinanet.backbone = 'resnet-10'",
      'rethink_st.modeling.detection.build_retinanet.decoder_num_filters = 32',
      'rethink_st.modeling.detection.build_retinanet.head_num_filters = 32',
      'rethink_st.modeling.detection.build_retinanet.head_num_convs = 1',
      f'rethink_st.training.run.run_train.train_steps = {steps}',
      'rethink_st.training.run.run_train.global_batch_size = 4',
      'rethink_st.training.run.run_train.eval_batch_size = 8',
      'rethink_st.training.run.run_train.steps_per_loop = 2',
      'rethink_st.training.run.run_train.checkpoint_every = 2',
      'rethink_st.training.optimization.build_optimizer.warmup_steps = 1',
  ]


@pytest.fixture
def teacher_config(digit_scenes_dir):
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([TEACHER_GIN], tiny_bindings(digit_scenes_dir))
  yield digit_scenes_dir
  gin.clear_config()


def test_teacher_trains_checkpoints_evaluates_and_resumes(tiny_teacher, teacher_config, tmp_path,
                                                         capsys, caplog):
  # conftest.tiny_teacher: 4 steps, evaluated at steps 2 and 4, made once for the session
  out, metrics = tiny_teacher.stdout, tiny_teacher.metrics
  assert '[train] step 2/4' in out and 'img/s=' in out and 'eta=' in out
  # the [eval] line shows AP x 100; eval_metrics.json keeps pycocotools' 0-1 values
  eval_line = next(l for l in out.splitlines() if l.startswith('[eval] step 4'))
  assert eval_line.startswith('[eval] step 4 (x 100): AP=') and 'ARmax100=' in eval_line
  assert all(0.0 <= metrics[k] <= 1.0 for k in ('AP', 'AP50', 'ARmax100'))
  assert f'AP50={run.format_x100(metrics["AP50"])} ' in eval_line
  assert set(['AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'ARmax1', 'ARmax10', 'ARmax100',
              'ARs', 'ARm', 'ARl']) <= set(metrics)
  model_dir = tiny_teacher.copy_to(tmp_path / 'teacher')   # the resume below writes to it
  assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-4')
  for name in ('config.gin', 'operative_config.gin', 'eval_metrics.json',
               'detections_coco.json'):
    assert os.path.exists(os.path.join(model_dir, name)), name
  operative = open(os.path.join(model_dir, 'operative_config.gin')).read()
  assert "build_retinanet.backbone = 'resnet-10'" in operative
  with open(os.path.join(model_dir, 'eval_metrics.json')) as f:
    saved = json.load(f)
  assert saved['step'] == 4 and saved['AP'] == metrics['AP']
  assert os.listdir(os.path.join(model_dir, 'train'))  # TensorBoard events

  # Resume: the same folder with more steps continues from step 4, not from 0.
  gin.bind_parameter('rethink_st.training.run.run_train.train_steps', 6)
  # The absl log at a binary's default verbosity. The level is set on the 'absl' logger
  # itself: a test that ran a binary earlier in this process (helpers.run_bin) leaves absl's
  # verbosity, and so that logger's level, at WARNING.
  with caplog.at_level(logging.INFO, logger='absl'):
    run.run_train(model_dir)
  out = capsys.readouterr().out
  assert 'resuming from' in out and 'ckpt-4' in out
  assert '[train] step 6/6' in out and '[train] step 2/6' not in out
  # One loop (steps 5-6) and the final evaluation: each value once, in the [train] or
  # [eval] line; Orbit's messages are in the log (not printed), without the values.
  log = '\n'.join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
  assert 'saved checkpoint' in log and 'saved checkpoint' not in out
  for name in METRICS_PER_LOOP + METRICS_PER_EVAL:
    assert (out + log).count(name) == 1, (name, out, log)


# What the tiny teacher's [train] and [eval] lines show (its losses, learning rate, speed,
# COCO metrics): each name must appear once per loop / per evaluation.
METRICS_PER_LOOP = ('total_loss', 'cls_loss', 'box_loss', 'weight_decay', 'lr=', 'img/s',
                    'eta=')
METRICS_PER_EVAL = ('AP50', 'AP75', 'APs', 'ARmax1=', 'ARmax100')


def test_each_metric_is_printed_once_per_interval(tiny_teacher):
  # conftest.tiny_teacher: 4 steps in loops of 2, evaluated at steps 2 and 4 (as
  # bin/train_teacher.py runs it, stdout captured).
  out = tiny_teacher.stdout
  train_lines = [l for l in out.splitlines() if l.startswith('[train] step')]
  eval_lines = [l for l in out.splitlines() if l.startswith('[eval] step')]
  assert [l.split()[2] for l in train_lines] == ['2/4', '4/4'], out
  assert [l.split()[2] for l in eval_lines] == ['2', '4'], out
  for name in METRICS_PER_LOOP:
    assert out.count(name) == 2 and all(name in l for l in train_lines), (name, out)
  for name in METRICS_PER_EVAL:
    assert out.count(name) == 2 and all(name in l for l in eval_lines), (name, out)
  assert 'output:' not in out and 'saved checkpoint' not in out   # Orbit's own prints


def test_eval_line_shows_fraction_metrics_x100():
  line = run.format_metrics({'AP': 0.2734, 'AP50': 0.5, 'APl': -1.0, 'AP/digit_1': 0.1,
                             'ARmax100': 0.41235, 'mIoU': float('nan'),
                             'top1_accuracy': 0.9, 'loss': 0.123456})
  assert line == (' (x 100): AP=27.34 AP50=50.00 APl=n/a ARmax100=41.23 mIoU=nan '
                  'top1_accuracy=90.00 loss=0.1235')
  assert run.format_metrics({'loss': 2.0}) == ': loss=2'
  assert run.x100(0.2734) == 27.34 and run.x100(None) is None


class _NaNAfterTwoSteps(trainer_lib.Trainer):
  """Returns a NaN loss from step 2 on (after the first checkpoint)."""

  def compute_losses(self, inputs):
    losses = dict(super().compute_losses(inputs))
    losses['total_loss'] = tf.where(self.global_step >= 2, np.nan, losses['total_loss'])
    return losses


def test_nan_loss_stops_and_keeps_last_good_checkpoint(teacher_config, tmp_path):
  model_dir = str(tmp_path / 'nan')
  with pytest.raises(TrainingDiverged, match=r'became nan at step 4.*ckpt-2 is untouched'):
    run.run_train(model_dir, trainer_cls=_NaNAfterTwoSteps)
  assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-2')
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  for name in reader.get_variable_to_shape_map():
    if name.startswith('model/') and 'VARIABLE_VALUE' in name:
      value = reader.get_tensor(name)
      if np.issubdtype(np.asarray(value).dtype, np.floating):
        assert np.all(np.isfinite(value)), name


def test_model_dir_with_another_models_checkpoint(tiny_teacher, teacher_config, tmp_path):
  model_dir = tiny_teacher.copy_to(tmp_path / 'other')   # a checkpoint of the 32-filter model
  gin.bind_parameter('rethink_st.modeling.detection.build_retinanet.decoder_num_filters', 48)
  with pytest.raises(UserError, match='holds a checkpoint of a different model'):
    run.run_train(model_dir)


def test_missing_init_checkpoint_is_one_line(teacher_config, tmp_path):
  with pytest.raises(UserError, match=r'run_train.init_checkpoint=.*no such folder or checkpoint'):
    run.run_train(str(tmp_path / 'x'), init_checkpoint=str(tmp_path / 'nope'))


def test_batch_not_divisible_by_replicas():
  class ThreeReplicas:
    num_replicas_in_sync = 3
  with pytest.raises(UserError, match=r'run_train.global_batch_size=16 .* 3 replicas'):
    strategy_lib.check_global_batch_size(16, ThreeReplicas(), 'run_train.global_batch_size')
  assert strategy_lib.check_global_batch_size(12, ThreeReplicas(), 'x') == 4


def test_unknown_strategy_kind():
  with pytest.raises(UserError, match="build_strategy.kind='gpu'"):
    strategy_lib.build_strategy(kind='gpu')
