"""Compiled steps (run_train.jit_compile, run_evaluate.jit_compile): the same losses and
detections as the graph step within float tolerance, and one error line when XLA cannot
compile a step."""
import gin
import numpy as np
import pytest
import tensorflow as tf

from rethink_st import cli
from rethink_st import config_io
from rethink_st.data import pipeline
from rethink_st.errors import UserError
from rethink_st.training import optimization
from rethink_st.training import run
from rethink_st.training import strategy as strategy_lib
from rethink_st.training import tasks
from rethink_st.training import trainer as trainer_lib

import test_training

SEED, STEPS = 3, 3


def _parse(data_dir, extra=()):
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([test_training.TEACHER_GIN],
                      test_training.tiny_bindings(data_dir) + list(extra))


def _trainer(jit_compile, trainer_cls=trainer_lib.Trainer, jit_compile_eval=False):
  """The tiny teacher's trainer as run_train builds it, seeded, with eval batches of 8."""
  task = tasks.DetectionTask()   # teacher.gin's task, with its bindings
  strategy = strategy_lib.build_strategy()
  with strategy.scope():
    model = task.build_model()
    optimizer = optimization.build_optimizer(4, STEPS)
    trainer = trainer_cls(task=task, model=model, optimizer=optimizer, strategy=strategy,
                          global_batch_size=4)
    trainer.compile_steps(jit_compile, jit_compile_eval,
                          bindings=('run_train.jit_compile', 'run_train.jit_compile_eval'))
    trainer.attach_datasets(train=True, eval_batch_size=8, position=pipeline.Position(SEED, 0))
  return trainer


def _losses(jit_compile):
  """Each step's losses (one loop per step)."""
  # deterministic=False: XLA has no deterministic MaxPool gradient (the last test)
  with run.seeded(SEED, deterministic=False):
    trainer = _trainer(jit_compile)
    return [{k: float(v) for k, v in trainer.train(tf.constant(1)).items()
             if k not in ('images_per_sec', 'learning_rate')} for _ in range(STEPS)]


def test_compiled_train_step_matches_graph_step(digit_scenes_dir):
  _parse(digit_scenes_dir)
  graph_losses, xla_losses = _losses(False), _losses(True)
  for step, (g, x) in enumerate(zip(graph_losses, xla_losses)):
    assert g.keys() == x.keys()
    for name in g:
      assert x[name] == pytest.approx(g[name], rel=1e-4, abs=1e-5), (step, name, g, x)


def test_eval_step_with_batched_nms_is_one_line(digit_scenes_dir):
  _parse(digit_scenes_dir)   # the digit model's NMS: Model Garden's 'batched'
  trainer = _trainer(False, jit_compile_eval=True)
  with pytest.raises(UserError) as e:
    trainer.evaluate(tf.constant(1))
  assert str(e.value) == (
      'run_train.jit_compile_eval=True: XLA cannot compile the eval step: no XLA kernel for '
      "CombinedNonMaxSuppression (Model Garden's 'batched' NMS); "
      'set run_train.jit_compile_eval = False')


class _PyFuncTrainer(trainer_lib.Trainer):
  """A step with an op XLA has no kernel for (a Python function)."""

  def compute_losses(self, inputs):
    losses = super().compute_losses(inputs)
    one = tf.numpy_function(lambda: np.float32(1.0), [], tf.float32, stateful=False)
    return dict(losses, total_loss=losses['total_loss'] * one)


def test_step_xla_cannot_compile_is_one_line(digit_scenes_dir):
  _parse(digit_scenes_dir)
  trainer = _trainer(True, trainer_cls=_PyFuncTrainer)
  with pytest.raises(UserError) as e:
    trainer.train(tf.constant(1))
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith('run_train.jit_compile=True: XLA cannot compile the train step: ')
  assert 'PyFunc' in message and message.endswith('set run_train.jit_compile = False')


def test_seeded_deterministic_run_names_the_way_out(digit_scenes_dir):
  _parse(digit_scenes_dir)
  with run.seeded(SEED, deterministic=True), pytest.raises(UserError) as e:
    _trainer(True).train(tf.constant(1))
  message = str(e.value)
  assert '\n' not in message and 'MaxPoolGrad' in message, message
  assert message.endswith('set run_train.deterministic = False or run_train.jit_compile = False')
