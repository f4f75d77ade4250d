"""A seeded run is bit-reproducible on CPU: the same seed gives the same loss at every step
and the same final weights, in this process and in a fresh one; another seed does not.

Also runnable as a script (the fresh process):
    python tests/test_determinism.py DATA_DIR MODEL_DIR SEED OUT_PREFIX
writes OUT_PREFIX.json (losses) and OUT_PREFIX.npz (final weights).
"""
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # pylint: disable=g-direct-tensorflow-import

from rethink_st import cli, config_io
from rethink_st.training import run, trainer as trainer_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_training  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

STEPS = 3


class _LossRecorder(trainer_lib.Trainer):
  """Keeps each loop's total_loss (one step per loop here) as its exact float32 value."""
  losses = None

  def train_loop_end(self):
    logs = super().train_loop_end()
    _LossRecorder.losses.append(float(np.float32(logs['total_loss'])).hex())
    return logs


def train(data_dir: str, model_dir: str, seed: int):
  """The tiny digits teacher (augmentation on, 4-image batches) for STEPS steps with `seed`;
  returns (losses per step as float.hex, {variable: final value})."""
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([test_training.TEACHER_GIN], test_training.tiny_bindings(data_dir, STEPS) + [
      'rethink_st.training.run.run_train.steps_per_loop = 1',
      'rethink_st.training.run.run_train.checkpoint_every = 1000',
      'rethink_st.training.tasks.DetectionTask.eval_source = None',
  ])
  _LossRecorder.losses = []
  run.run_train(model_dir, trainer_cls=_LossRecorder, seed=seed)
  gin.clear_config()
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  weights = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
             if name.startswith('model/')}
  return list(_LossRecorder.losses), weights


def test_same_seed_same_losses_and_weights_another_seed_differs(digit_scenes_dir, tmp_path):
  losses_1, weights_1 = train(digit_scenes_dir, str(tmp_path / 'seed1'), seed=1)
  # run_train turns op determinism on for its run only.
  assert not tf_config.is_op_determinism_enabled()
  losses_2, weights_2 = train(digit_scenes_dir, str(tmp_path / 'seed2'), seed=2)

  out = str(tmp_path / 'fresh')
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), digit_scenes_dir,
       str(tmp_path / 'seed1_fresh'), '1', out],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:]
  with open(out + '.json') as f:
    fresh_losses = json.load(f)['losses']
  with np.load(out + '.npz') as npz:
    fresh_weights = {k: npz[k] for k in npz.files}

  assert len(losses_1) == STEPS
  assert fresh_losses == losses_1
  assert sorted(fresh_weights) == sorted(weights_1) and len(weights_1) > 10
  different = [k for k in weights_1 if not np.array_equal(weights_1[k], fresh_weights[k])]
  assert not different, f'{len(different)} variables differ, e.g. {different[:3]}'

  assert losses_2 != losses_1
  assert any(not np.array_equal(weights_1[k], weights_2[k]) for k in weights_1)


def test_seeded_turns_op_determinism_on_for_its_block_only():
  assert not tf_config.is_op_determinism_enabled()
  with run.seeded(None):
    assert not tf_config.is_op_determinism_enabled()
  with run.seeded(3, deterministic=False):
    assert not tf_config.is_op_determinism_enabled()
    a = tf.random.uniform([4]).numpy()
  with pytest.raises(ValueError):
    with run.seeded(3):
      assert tf_config.is_op_determinism_enabled()
      b = tf.random.uniform([4]).numpy()
      raise ValueError('a failing run')
  assert not tf_config.is_op_determinism_enabled()
  np.testing.assert_array_equal(a, b)   # the seed is set either way


if __name__ == '__main__':
  _data_dir, _model_dir, _seed, _out = sys.argv[1:5]
  _losses, _weights = train(_data_dir, _model_dir, int(_seed))
  np.savez(_out + '.npz', **_weights)
  with open(_out + '.json', 'w') as _f:
    json.dump({'losses': _losses}, _f)
