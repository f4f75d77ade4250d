"""Fault injection at tiny scale (issue 13): the ways a long job gets hurt, what must hold, and
the test that shows it (here, or where the case already had one).

kill -9 while training, between checkpoints
    the rerun takes over the lock the dead run left, resumes from the last checkpoint and ends
    with the uninterrupted run's losses and weights, bit for bit (a seeded run)
    -> test_training_killed_between_checkpoints_resumes_exactly (here)
a classifier with dropout (the pre-training), interrupted between checkpoints
    the resumed run draws the uninterrupted run's dropout masks: same losses and weights
    -> test_a_resumed_classifier_draws_the_uninterrupted_dropout_masks (here)
kill during a checkpoint save
    the ckpt-N_temp folder it leaves is removed at the next start
    -> test_run_folder_safety.py::test_student_start_reports_an_empty_pseudo_set_and_removes_an_interrupted_save
kill during pseudo-labeling, mid-chunk
    complete chunks are kept, each image is labeled once
    -> test_pseudo_label.py::test_resume_after_a_kill_labels_each_image_once (the kill is an
       exception in the chunk writer; the lock a real kill -9 leaves is taken over by the same
       run_lock code as the training lock here)
two writers on one folder
    the second stops at once with one `error:` line naming the holder
    -> test_run_folder_safety.py::test_a_second_teacher_on_a_held_folder_stops_in_seconds_naming_the_holder,
       ::test_run_train_refuses_a_held_folder_before_touching_it,
       ::test_pseudo_label_hosts_share_a_folder_but_not_a_shard,
       ::test_export_refuses_a_held_run_folder
empty chunk (the teacher detects nothing)
    chunks are complete, counted, resumable and merged
    -> test_pseudo_label.py::test_chunk_writer_completes_chunks_without_detections_or_images,
       ::test_a_teacher_that_detects_nothing_writes_complete_resumable_chunks,
       ::test_a_chunk_of_only_unreadable_images_is_complete
corrupt images among the unlabeled ones
    skipped and counted
    -> test_pseudo_label.py::test_image_folder_unreadable_images_are_skipped_and_counted,
       ::test_tfrecord_unreadable_images_are_skipped_counted_and_resumed,
       ::test_coco_json_unreadable_images_are_skipped_and_counted

Also runnable as a script (the run that is killed):
    python tests/test_fault_injection.py DATA_DIR MODEL_DIR
trains the tiny run below and, after step KILLED_AFTER, prints `waiting` and waits to be killed.
"""
import os
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import tensorflow as tf, tf_keras

from rethink_st import cli, config_io
from rethink_st.data import sources
from rethink_st.modeling import anchors
from rethink_st.training import run, tasks, trainer as trainer_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_training  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# Orbit saves after the first loop and then every CHECKPOINT_EVERY steps: ckpt-1, 3, 5, 6.
STEPS, CHECKPOINT_EVERY, SEED = 6, 2, 1
KILLED_AFTER, RESUMED_FROM = 4, 3


def tiny_retinanet(input_size, num_classes):
  """RetinaNet's outputs (class and box logits, 9 anchors per location at levels 3-7) from a
  batch norm and a 1x1 convolution of the image average-pooled to each level: the digit
  teacher's input pipeline and loss with a model of a few thousand weights, so that a run
  costs seconds."""
  cfg = anchors.anchor_config()
  images = tf_keras.Input(list(input_size) + [3])
  x = tf_keras.layers.BatchNormalization()(images)
  cls_outputs, box_outputs = {}, {}
  for level in range(cfg.min_level, cfg.max_level + 1):
    pooled = tf_keras.layers.AveragePooling2D(2 ** level)(x)
    cls_outputs[str(level)] = tf_keras.layers.Conv2D(
        cfg.num_anchors_per_location * num_classes, 1)(pooled)
    box_outputs[str(level)] = tf_keras.layers.Conv2D(cfg.num_anchors_per_location * 4, 1)(pooled)
  return tf_keras.Model(images, {'cls_outputs': cls_outputs, 'box_outputs': box_outputs})


class _Interrupted(Exception):
  pass


class _Recorder(trainer_lib.Trainer):
  """Keeps each loop's total_loss (one step per loop) as its exact float32 value; with
  `wait_after`, prints `waiting` after that step and sleeps (to be killed there); with
  `stop_after`, raises _Interrupted after that step (before its checkpoint is saved)."""
  losses = None
  wait_after = None
  stop_after = None

  def train_loop_end(self):
    logs = super().train_loop_end()
    step = int(self.global_step.numpy())
    _Recorder.losses[step] = float(np.float32(logs['total_loss'])).hex()
    print(f'loss {step} {_Recorder.losses[step]}', flush=True)
    if step == _Recorder.wait_after:
      print('waiting', flush=True)
      time.sleep(600)
    if step == _Recorder.stop_after:
      raise _Interrupted(step)
    return logs


def train(data_dir: str, model_dir: str, wait_after=None):
  """The digit teacher's task and input (cached scenes, shuffle, S1 augmentation, anchor
  labels) on the tiny scenes, with tiny_retinanet, seeded, STEPS steps of 4 images, a
  checkpoint every CHECKPOINT_EVERY steps (the streams of S2-S4 resume alike:
  test_determinism.py). Returns {step: loss as float.hex} of the steps it ran."""
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([test_training.TEACHER_GIN], test_training.tiny_bindings(data_dir, STEPS) + [
      'rethink_st.training.run.run_train.steps_per_loop = 1',
      f'rethink_st.training.run.run_train.checkpoint_every = {CHECKPOINT_EVERY}',
      'rethink_st.training.optimization.build_optimizer.learning_rate = 0.32',  # 0.005 at 4
  ])
  task = tasks.DetectionTask(
      model_fn=tiny_retinanet, num_classes=11, image_size=(128, 128),
      train_source=sources.digit_scenes_source(split='train', data_dir=data_dir),
      eval_source=None)
  _Recorder.losses, _Recorder.wait_after, _Recorder.stop_after = {}, wait_after, None
  try:
    run.run_train(model_dir, task=task, trainer_cls=_Recorder, seed=SEED)
  finally:
    gin.clear_config()
  return dict(_Recorder.losses)


def _variables(path, also=()):
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if name.startswith(('model/', 'optimizer/') + tuple(also)) and 'VARIABLE_VALUE' in name}


def test_training_killed_between_checkpoints_resumes_exactly(digit_scenes_dir, tmp_path, capsys):
  """kill -9 of a seeded training process after step 4 (ckpt-3 written, ckpt-5 not yet): the
  rerun takes over the lock the dead run left, resumes from ckpt-3, and its steps 4-6 and
  final weights are those of a run that was never killed. The input is what makes this
  hold: a resumed stream that restarted at its first batch (issue 13) gives another loss at
  step 4 already."""
  killed = str(tmp_path / 'killed')
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), digit_scenes_dir, killed],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    whole = train(digit_scenes_dir, str(tmp_path / 'whole'))   # meanwhile, uninterrupted
    out = []
    for line in proc.stdout:
      out.append(line)
      if line.strip() == 'waiting':
        break
    assert out and out[-1].strip() == 'waiting', ''.join(out)[-3000:]
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  first = {int(l.split()[1]): l.split()[2] for l in out if l.startswith('loss ')}
  assert sorted(first) == list(range(1, KILLED_AFTER + 1))
  assert sorted(whole) == list(range(1, STEPS + 1))
  assert first == {s: whole[s] for s in first}     # a fresh process: the same first steps
  assert tf.train.latest_checkpoint(killed).endswith(f'ckpt-{RESUMED_FROM}')
  assert os.path.exists(os.path.join(killed, 'writer.lock'))   # left by the kill

  capsys.readouterr()
  resumed = train(digit_scenes_dir, killed)
  printed = capsys.readouterr().out
  assert 'took over the stale lock' in printed and 'resuming from' in printed
  assert f'ckpt-{RESUMED_FROM}' in printed
  assert sorted(resumed) == list(range(RESUMED_FROM + 1, STEPS + 1))
  assert resumed == {s: whole[s] for s in resumed}, (resumed, whole)
  assert tf.train.latest_checkpoint(killed).endswith(f'ckpt-{STEPS}')
  want = _variables(os.path.join(tmp_path, 'whole', f'ckpt-{STEPS}'))
  got = _variables(os.path.join(killed, f'ckpt-{STEPS}'))
  assert sorted(got) == sorted(want) and any('moving_mean' in n for n in want)
  different = [n for n in want if not np.array_equal(got[n], want[n])]
  assert not different, f'{len(different)} variables differ, e.g. {different[:3]}'
  assert not os.path.exists(os.path.join(killed, 'writer.lock'))


PRETRAIN_GIN = os.path.join(os.path.dirname(test_training.TEACHER_GIN), 'experiments',
                            'pretrain.gin')


def pretrain(data_dir: str, model_dir: str, stop_after=None):
  """The digit pre-training (experiments/pretrain.gin: ResNet classifier, dropout 0.2 raised
  to 0.5 here) shrunk to ResNet-10 on 32 x 32 iconic digits, seeded, STEPS steps of 4
  images, a checkpoint every CHECKPOINT_EVERY steps. Returns {step: loss as float.hex}."""
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([PRETRAIN_GIN], [
      f"train/rethink_st.data.sources.digit_scenes_source.data_dir = '{data_dir}'",
      "rethink_st.modeling.classification.build_classifier.backbone = 'resnet-10'",
      'rethink_st.modeling.classification.build_classifier.dropout_rate = 0.5',
      'rethink_st.training.tasks.ClassificationTask.image_size = (32, 32)',
      'rethink_st.training.tasks.ClassificationTask.eval_source = None',
      f'PRETRAIN_STEPS = {STEPS}',
      'rethink_st.training.run.run_train.global_batch_size = 4',
      'rethink_st.training.run.run_train.steps_per_loop = 1',
      f'rethink_st.training.run.run_train.checkpoint_every = {CHECKPOINT_EVERY}',
      'rethink_st.training.optimization.build_optimizer.warmup_steps = 1',
  ])
  _Recorder.losses, _Recorder.wait_after, _Recorder.stop_after = {}, None, stop_after
  try:
    run.run_train(model_dir, trainer_cls=_Recorder, seed=SEED)
  except _Interrupted:
    pass
  finally:
    gin.clear_config()
  return dict(_Recorder.losses)


def test_a_resumed_classifier_draws_the_uninterrupted_dropout_masks(digit_scenes_dir, tmp_path):
  """Model Garden's classifier head has a Dropout whose legacy stateful op keeps its place
  in the random stream outside the checkpoint: resumed at step 3, it drew the masks of steps
  1-3 again and the losses parted from step 4 on (the digit pre-training's top-1 moved by a
  point). classification.checkpointed_dropout_masks keeps that place in a checkpointed
  variable, so the resumed run is the uninterrupted one, bit for bit."""
  whole = pretrain(digit_scenes_dir, str(tmp_path / 'whole'))
  cut = str(tmp_path / 'cut')
  first = pretrain(digit_scenes_dir, cut, stop_after=KILLED_AFTER)
  assert sorted(whole) == list(range(1, STEPS + 1))
  assert first == {s: whole[s] for s in range(1, KILLED_AFTER + 1)}
  assert tf.train.latest_checkpoint(cut).endswith(f'ckpt-{RESUMED_FROM}')
  saved = [n for n, _ in tf.train.list_variables(tf.train.latest_checkpoint(cut))]
  assert any(n.startswith('dropout_masks/') for n in saved), saved
  assert not any('dropout_masks' in n for n in saved if n.startswith('model/'))   # run state
  resumed = pretrain(digit_scenes_dir, cut)
  assert sorted(resumed) == list(range(RESUMED_FROM + 1, STEPS + 1))
  assert resumed == {s: whole[s] for s in resumed}, (resumed, whole)
  want = _variables(os.path.join(tmp_path, 'whole', f'ckpt-{STEPS}'), ('dropout_masks/',))
  got = _variables(os.path.join(cut, f'ckpt-{STEPS}'), ('dropout_masks/',))
  assert sorted(got) == sorted(want) and any(n.startswith('dropout_masks/') for n in want)
  different = [n for n in want if not np.array_equal(got[n], want[n])]
  assert not different, f'{len(different)} variables differ, e.g. {different[:3]}'


if __name__ == '__main__':
  train(sys.argv[1], sys.argv[2], wait_after=KILLED_AFTER)
