"""A seeded run is bit-reproducible on CPU: the same seed gives the same loss at every step
and the same final weights, in this process and in a fresh one; another seed does not.
Its input stream is a function of (seed, element index) (rethink_st/data/pipeline.py): a
stream resumed at step k is the rest of the whole stream, every random draw of the policies
is keyed per image, and a draw that cannot be keyed is refused. (A seeded run killed with
kill -9 and resumed: tests/test_fault_injection.py.)

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

from rethink_st import augment as augment_lib, cli, config_io
from rethink_st.data import features as F, pipeline, sources
from rethink_st.errors import UserError
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


# --- the input stream of a seeded run ---------------------------------------------------------

def _batches(data_dir, position, count, input_context=None):
  """`count` batches of the digit teacher's training input (cached scenes, shuffled after the
  cache, S1, anchor labels) as flat lists of numpy arrays."""
  tf.random.set_seed(position.seed)   # as run_train's `seeded` does (the shuffles read it)
  ds = pipeline.build_input(
      sources.digit_scenes_source(split='train', data_dir=data_dir), task='detection',
      global_batch_size=4, is_training=True, output_size=(128, 128), cache=True,
      shuffle_buffer=64, input_context=input_context, position=position)
  return [[x.numpy() for x in tf.nest.flatten(batch)] for batch in ds.take(count)]


def _same(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_seeded_stream_resumed_at_step_k_is_the_rest_of_the_whole_stream(digit_scenes_dir):
  """48 scenes, 4 per step: step 13 is in the second (reshuffled) epoch. Per input pipeline
  too (2 pipelines, 1 replica each: 2 images of each pipeline per step)."""
  whole = _batches(digit_scenes_dir, pipeline.Position(1, 0), 16)
  resumed = _batches(digit_scenes_dir, pipeline.Position(1, 13), 3)
  assert all(_same(a, b) for a, b in zip(resumed, whole[13:])) and len(resumed) == 3
  assert not _same(whole[0], whole[12])             # epoch 2 is not epoch 1 again
  assert not _same(_batches(digit_scenes_dir, pipeline.Position(2, 0), 1)[0], whole[0])
  # the student's pseudo stream (same source here) draws its own order and augmentation
  assert not _same(_batches(digit_scenes_dir, pipeline.Position(1, 0).of('pseudo'), 1)[0],
                   whole[0])
  context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                       num_replicas_in_sync=2)
  whole_1 = _batches(digit_scenes_dir, pipeline.Position(1, 0), 8, context)
  assert whole_1[0][0].shape[0] == 2
  resumed_1 = _batches(digit_scenes_dir, pipeline.Position(1, 5), 3, context)
  assert all(_same(a, b) for a, b in zip(resumed_1, whole_1[5:])) and len(resumed_1) == 3


def _scene():
  """A 64 x 64 scene of noise with three boxes, their instance masks and a semantic mask."""
  rng = np.random.default_rng(0)
  boxes = np.float32([[0.1, 0.1, 0.5, 0.4], [0.3, 0.5, 0.9, 0.9], [0.6, 0.1, 0.8, 0.3]])
  masks = np.zeros([3, 64, 64], np.uint8)
  semantic = np.zeros([64, 64, 1], np.uint8)
  for i, (y0, x0, y1, x1) in enumerate((boxes * 64).astype(int)):
    masks[i, y0:y1, x0:x1] = 1
    semantic[y0:y1, x0:x1] = i + 1
  return {F.IMAGE: rng.integers(0, 256, [64, 64, 3], np.uint8), F.BOXES: boxes,
          F.CLASSES: np.int64([1, 2, 3]), F.INSTANCE_MASKS: masks, F.SEMANTIC_MASK: semantic}


@pytest.mark.parametrize('policy,masks', [('s2', False), ('s2', True), ('s4', False)])
def test_every_draw_of_the_policies_is_keyed_by_the_image_not_its_position(policy, masks):
  """S2/S3's AutoAugment (Model Garden's ops; with masks, ours; TranslateY_Only_BBoxes draws
  inside a loop) and S4's RandAugment under a keyed parser: images 0-5 and then 5-0 again
  come out the same, as they would not with stateful draws (each call advances them)."""
  scene = {k: tf.constant(v) for k, v in _scene().items()
           if masks or k not in (F.INSTANCE_MASKS, F.SEMANTIC_MASK)}
  augment = augment_lib.Augment(policy, output_size=(64, 64))
  order = [0, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0]
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(order, tf.int64)).map(
      lambda i: (i, scene)).map(pipeline.keyed_parser(
          lambda example: augment(example)[F.IMAGE], (7, 1)))
  images = [x.numpy() for x in ds]
  assert all(np.array_equal(images[i], images[len(order) - 1 - i]) for i in range(6))
  assert len({x.tobytes() for x in images[:6]}) == 6    # and each image its own draws


def test_draws_in_a_loop_are_keyed_per_iteration_and_stateful_draws_are_refused():
  def five_draws(_):
    def body(i, acc):
      return i + 1, acc.write(i, tf.random.uniform([]))
    return tf.while_loop(lambda i, _: i < 5, body,
                         [0, tf.TensorArray(tf.float32, size=5)])[1].stack()

  def keyed(fn, skip=0):
    ds = tf.data.Dataset.range(4).enumerate().skip(skip)
    return [x.numpy() for x in ds.map(pipeline.keyed_parser(fn, (3, 4)))]

  values = keyed(five_draws)
  assert all(len(set(v)) == 5 for v in values)       # a new number every iteration
  assert len({v.tobytes() for v in values}) == 4     # and every element
  assert _same(keyed(five_draws, skip=2), values[2:])
  # tf.image's random ops draw from TF's stateful kernels directly: not keyable.
  with pytest.raises(UserError, match='stateful random ops .*RandomUniform'):
    keyed(lambda x: tf.image.random_flip_left_right(tf.fill([2, 2, 1], x)))


if __name__ == '__main__':
  _data_dir, _model_dir, _seed, _out = sys.argv[1:5]
  _losses, _weights = train(_data_dir, _model_dir, int(_seed))
  np.savez(_out + '.npz', **_weights)
  with open(_out + '.json', 'w') as _f:
    json.dump({'losses': _losses}, _f)
