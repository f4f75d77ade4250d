"""rethink_st/checkpoint.py on two-layer Keras models: resolving a folder or a prefix, whole
and partial restores, their reports and log lines, and the one-line errors naming `where`."""
import logging
import os

import numpy as np
import pytest

import rethink_st  # pylint: disable=unused-import
import tensorflow as tf, tf_keras

from rethink_st import checkpoint
from rethink_st.errors import UserError


class Net(tf_keras.Model):
  """A backbone and a head (the module names restore_modules looks for); `extra`: a layer a
  checkpoint of the plain Net does not have."""

  def __init__(self, width=4, extra=False):
    super().__init__()
    self.backbone = tf_keras.layers.Dense(width)
    self.head = tf_keras.layers.Dense(2)
    self.extra = tf_keras.layers.Dense(2) if extra else None

  def call(self, x):
    y = self.head(self.backbone(x))
    return y if self.extra is None else y + self.extra(x)


def _net(**kwargs):
  net = Net(**kwargs)
  net(tf.zeros([1, 3]))
  return net


def _same(a, b):
  return all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b))


@pytest.fixture
def saved(tmp_path):
  """A trained Net saved twice as the trainer saves (Model Garden's SGD is the legacy one):
  (net, folder, prefixes)."""
  net = _net()
  opt = tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9)
  ckpt = tf.train.Checkpoint(model=net, optimizer=opt)
  folder = str(tmp_path / 'run')
  prefixes = []
  for _ in range(2):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(net(tf.ones([2, 3])) - 1.0))
    opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables),
                            net.trainable_variables))
    prefixes.append(ckpt.save(os.path.join(folder, 'ckpt')))
  return net, folder, prefixes


def _info_lines(caplog):
  ours = os.path.join('rethink_st', 'checkpoint.py')
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.INFO and r.pathname.endswith(ours)]


def test_resolve_a_folder_a_prefix_and_mistakes(saved, tmp_path):
  _, folder, prefixes = saved
  assert checkpoint.resolve(folder, '--teacher') == prefixes[-1]        # latest
  assert checkpoint.resolve(prefixes[0], '--teacher') == prefixes[0]    # a prefix: itself
  assert checkpoint.latest_in(folder, 'x.teacher_dir') == prefixes[-1]
  assert checkpoint.folder_of(folder) == folder
  assert checkpoint.folder_of(prefixes[0]) == folder
  assert checkpoint.folder_of(None) is None
  nope, empty = str(tmp_path / 'nope'), str(tmp_path / 'empty')
  os.makedirs(empty)
  cases = [
      (lambda: checkpoint.resolve(nope, '--teacher'),
       f'--teacher={nope}: no such folder or checkpoint'),
      (lambda: checkpoint.resolve(empty, 'run_train.init_checkpoint'),
       f'run_train.init_checkpoint={empty}: holds no checkpoint'),
      (lambda: checkpoint.resolve(None, 'run_pseudo_label.teacher_checkpoint'),
       'run_pseudo_label.teacher_checkpoint is not set'),
      (lambda: checkpoint.resolve('REQUIRED: set CKPT', 'run_train.init_checkpoint'),
       'run_train.init_checkpoint is not set: REQUIRED: set CKPT'),
      (lambda: checkpoint.latest_in(prefixes[0], 'x.teacher_dir'),   # a run folder, not a prefix
       f'x.teacher_dir={prefixes[0]}: no such folder'),
  ]
  for call, message in cases:
    with pytest.raises(checkpoint.CheckpointNotFoundError) as e:
      call()
    assert str(e.value) == message
  assert checkpoint.training_step(prefixes[-1]) == 2


def test_whole_restore_reports_every_variable_in_one_log_line(saved, caplog):
  net, folder, prefixes = saved
  caplog.set_level(logging.INFO, logger='absl')
  fresh = _net()
  assert not _same(net.weights, fresh.weights)
  report = checkpoint.restore_model(fresh, folder, '--checkpoint')   # optimizer left out
  assert _same(net.weights, fresh.weights)
  assert report.checkpoint == prefixes[-1] and report.unrestored == ()
  assert report.restored == tuple(sorted(v.name for v in fresh.weights))
  assert _info_lines(caplog) == [f'--checkpoint: restored 4 of 4 variables of all from '
                                 f'{prefixes[-1]} (all <- model)']


def test_a_checkpoint_of_another_model_is_one_line_naming_where(saved):
  _, folder, prefixes = saved
  with pytest.raises(UserError) as e:
    checkpoint.restore_model(_net(width=5), folder, 'run_pseudo_label.teacher_checkpoint')
  line = str(e.value)
  assert '\n' not in line
  assert line.startswith(f'run_pseudo_label.teacher_checkpoint={folder} holds a checkpoint of '
                         f'a different model ({prefixes[-1]}): ')
  with pytest.raises(UserError, match='^run_evaluate.checkpoint=.* different model: '):
    checkpoint.restore_model(_net(width=5), prefixes[-1], 'run_evaluate.checkpoint')


def test_resume_restores_model_and_optimizer_or_nothing(saved, tmp_path):
  net, folder, prefixes = saved
  model, opt = _net(), tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9)
  report = checkpoint.resume(tf.train.Checkpoint(model=model, optimizer=opt), folder,
                             '--model_dir')
  assert report.checkpoint == prefixes[-1] and report.unrestored == ()
  assert report.modules[:2] == ('model', 'optimizer')
  assert _same(net.weights, model.weights) and int(opt.iterations.numpy()) == 2
  os.makedirs(tmp_path / 'new')
  assert checkpoint.resume(tf.train.Checkpoint(model=_net()), str(tmp_path / 'new'),
                           '--model_dir') is None
  with pytest.raises(UserError, match=f'^--model_dir={folder} holds a checkpoint of a '
                                      'different model'):
    checkpoint.resume(tf.train.Checkpoint(model=_net(width=5)), folder, '--model_dir')


def test_partial_restore_reports_what_was_and_was_not_restored(saved, caplog):
  net, folder, _ = saved
  caplog.set_level(logging.INFO, logger='absl')
  part = _net()
  head_before = [v.numpy().copy() for v in part.head.weights]
  report = checkpoint.restore_modules(part, folder, ('backbone',), 'run_train.init_checkpoint')
  assert _same(net.backbone.weights, part.backbone.weights)
  assert all(np.array_equal(a, b.numpy()) for a, b in zip(head_before, part.head.weights))
  assert report.restored == tuple(sorted(v.name for v in part.backbone.weights))
  assert report.sources == {'backbone': 'model/backbone'} and report.unrestored == ()

  bigger = _net(extra=True)           # 'all' from a checkpoint without its extra layer
  report = checkpoint.restore_modules(bigger, folder, ('all',), 'run_train.init_checkpoint')
  assert _same(net.weights, [bigger.backbone.kernel, bigger.backbone.bias, bigger.head.kernel,
                             bigger.head.bias])
  assert report.unrestored == tuple(sorted(v.name for v in bigger.extra.weights))
  assert report.num_restored == 4 and report.num_total == 6
  lines = _info_lines(caplog)
  assert len(lines) == 2 and lines[1].startswith(
      'run_train.init_checkpoint: restored 4 of 6 variables of all from ')
  assert lines[1].endswith('; 2 keep their initial values (first: '
                           f'{", ".join(report.unrestored)})')
  with pytest.raises(UserError, match='^run_train.init_modules: unknown'):
    checkpoint.restore_modules(part, folder, ('neck',), 'run_train.init_checkpoint',
                               modules_where='run_train.init_modules')
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"^run_train.init_checkpoint: 2 variables of 'backbone' have other "
                           r'shapes'):
    checkpoint.restore_modules(_net(width=5), folder, ('backbone',),
                               'run_train.init_checkpoint')
