"""Self-training end to end at toy size: teacher -> pseudo-label -> student for two rounds,
the student's loss averages in its checkpoint, joint training, and the student's bad inputs."""
import json
import os

import gin
import pytest
import tensorflow as tf

from rethink_st import cli
from rethink_st import config_io
from rethink_st import self_training
from rethink_st.data import sources
from rethink_st.errors import UserError
from rethink_st.training import joint
from rethink_st.training import run

import test_training

DEMO_GIN = os.path.join(test_training.REPO, 'gin_configs', 'digits', 'demo.gin')


@pytest.fixture
def demo_config(digit_scenes_dir):
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([DEMO_GIN], test_training.tiny_bindings(digit_scenes_dir, steps=2) + [
      f"unlabeled/rethink_st.data.sources.digit_scenes_source.data_dir = '{digit_scenes_dir}'",
      'student/rethink_st.training.run.run_train.global_batch_size = 4',
      'student/rethink_st.training.run.run_train.train_steps = 2',
      # an untrained teacher scores ~0.01 (the focal-loss prior): keep its top boxes so the
      # pseudo set is not empty
      'rethink_st.modeling.detection.build_retinanet.pre_nms_score_threshold = 0.0',
      'rethink_st.modeling.detection.build_retinanet.max_num_detections = 5',
      'rethink_st.pseudo_label.run.run_pseudo_label.score_threshold = 0.0',
      'rethink_st.pseudo_label.run.run_pseudo_label.chunk_size = 16',
      'rethink_st.pseudo_label.run.run_pseudo_label.batch_size = 8',
  ])
  yield digit_scenes_dir
  gin.clear_config()


def test_two_rounds(demo_config, tmp_path, capsys):
  root = str(tmp_path / 'st')
  results = self_training.run_self_training(root, rounds=2)
  out = capsys.readouterr().out
  assert [r['model'] for r in results['rows']] == ['teacher', 'student_round_1',
                                                   'student_round_2']
  assert all('AP' in r for r in results['rows'])
  assert '| teacher |' in out and '| student_round_2 |' in out
  for k in (1, 2):
    stats = json.load(open(os.path.join(root, f'round_{k}', 'pseudo', 'stats.json')))
    assert stats['images'] == 32 and stats['boxes'] == 32 * 5, k
  # round 2 was labeled by round 1's student
  meta = json.load(open(os.path.join(root, 'round_2', 'pseudo', 'meta.json')))
  assert 'round_1/student' in meta['teacher_checkpoint']
  # the student's loss averages are in its checkpoint
  ckpt = tf.train.latest_checkpoint(os.path.join(root, 'round_1', 'student'))
  names = [n for n, _ in tf.train.list_variables(ckpt)]
  assert any(n.startswith('loss_normalizer/human_ema') for n in names)
  assert any(n.startswith('loss_normalizer/pseudo_count') for n in names)
  assert tf.train.load_variable(ckpt, 'loss_normalizer/human_count/.ATTRIBUTES/VARIABLE_VALUE') == 2
  # a rerun finds every stage finished and does no work
  again = self_training.run_self_training(root, rounds=2)
  assert 'is finished; skipping' in capsys.readouterr().out
  assert again['rows'][1]['AP'] == results['rows'][1]['AP']


def test_student_rejects_a_batch_without_human_examples():
  from rethink_st.training import student  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match='pseudo_fraction=1.0'):
    student.StudentTrainer(task=None, model=None, optimizer=None,
                           strategy=tf.distribute.get_strategy(), global_batch_size=4,
                           pseudo_source=None, pseudo_fraction=1.0)


def test_bad_student_init(demo_config, tmp_path):
  with pytest.raises(UserError, match="student_init='imagenet'"):
    self_training.run_self_training(str(tmp_path / 'st'), student_init='imagenet')


def test_joint_training_adds_classification_loss(demo_config, tmp_path, capsys):
  iconic = sources.digit_scenes_source(split='iconic_train', data_dir=demo_config)
  model_dir = str(tmp_path / 'joint')
  with gin.config_scope('teacher'):
    run.run_train(model_dir, joint=joint.JointClassification(source=iconic, weight=0.2),
                  eval_every=None)
  out = capsys.readouterr().out
  assert 'classification_loss=' in out
  names = [n for n, _ in tf.train.list_variables(tf.train.latest_checkpoint(model_dir))]
  assert any(n.startswith('classification_head/') for n in names)
