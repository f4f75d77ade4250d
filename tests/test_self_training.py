"""Self-training end to end at toy size: teacher -> pseudo-label -> student for two rounds,
the student's loss averages in its checkpoint, joint training, and the student's bad inputs."""
import json
import os
import types

import numpy as np

import gin
import pytest
from PIL import Image
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
      # every detection kept, so each image has exactly max_num_detections pseudo boxes
      'rethink_st.pseudo_label.run.run_pseudo_label.class_agnostic_nms_iou = None',
      'rethink_st.pseudo_label.run.run_pseudo_label.chunk_size = 16',
      'rethink_st.pseudo_label.run.run_pseudo_label.batch_size = 8',
      # the scenes' own 64 x 64 and three pyramid levels: what is tested is the orchestration
      'IMAGE_SIZE = (64, 64)',
      'rethink_st.modeling.anchors.anchor_config.max_level = 5',
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
  assert '| model | AP x 100 | gain over teacher (x 100) |' in out
  saved = json.load(open(os.path.join(root, 'results.json')))
  for row in saved['rows']:   # raw 0-1 AP beside AP x 100 (rounded to 6 decimals, run.x100)
    assert 0.0 <= row['AP'] <= 1.0 and row['AP_x100'] == round(100 * row['AP'], 6)
  assert saved['teacher_AP_x100'] == saved['rows'][0]['AP_x100']
  assert saved['student_AP_x100'] == saved['rows'][2]['AP_x100']
  for k in (1, 2):
    stats = json.load(open(os.path.join(root, f'round_{k}', 'pseudo', 'stats.json')))
    assert stats['images'] == 32 and stats['boxes'] == 32 * 5, k
  # each round wrote its pseudo-label report: the picture grid and, against the unlabeled
  # scenes' held-back labels (demo.gin's report_reference), precision and recall
  pictures = []
  for k, row in ((1, results['rows'][1]), (2, results['rows'][2])):
    png = os.path.join(root, f'round_{k}', 'pseudo_report', 'pseudo_labels.png')
    assert row['pseudo_report'] == png and os.path.getsize(png) > 0, k
    with Image.open(png) as im:
      assert im.format == 'PNG' and min(im.size) >= 64, (k, im.size)
    report = json.load(open(os.path.join(root, f'round_{k}', 'pseudo_report', 'report.json')))
    assert report['reference'] and report['detection']['images_evaluated'] == 32, k
    assert 0.0 <= row['pseudo_precision'] <= 1.0 and 0.0 <= row['pseudo_recall'] <= 1.0, k
    pictures.append(png)
  assert f'pseudo-label pictures: {", ".join(pictures)}' in out
  png_mtime = os.path.getmtime(pictures[0])
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
  assert again['rows'][1]['pseudo_precision'] == results['rows'][1]['pseudo_precision']
  assert os.path.getmtime(pictures[0]) == png_mtime  # the report was not redrawn


def test_table_and_results_show_the_metric_x100_and_keep_raw_values():
  results = {'metric': 'AP', 'rows': [
      {'model': 'teacher', 'AP': 0.2465, 'AP50': 0.5},
      {'model': 'student_round_1', 'AP': 0.30281},
      {'model': 'student_round_2'}]}
  self_training.add_x100(results)
  # raw COCO values untouched (benchmarks/suite.py reads AP in 0-1)
  assert [r.get('AP') for r in results['rows']] == [0.2465, 0.30281, None]
  assert results['rows'][0]['AP50'] == 0.5
  assert [r['AP_x100'] for r in results['rows']] == [24.65, 30.281, None]
  assert results['teacher_AP_x100'] == 24.65 and results['student_AP_x100'] is None
  assert results['gain_AP_x100'] is None
  json.dumps(results)  # as results.json stores it
  results['rows'].pop()
  self_training.add_x100(results)
  assert results['student_AP_x100'] == 30.281 and results['gain_AP_x100'] == 5.631
  assert self_training.format_table(results).splitlines() == [
      '| model | AP x 100 | gain over teacher (x 100) |',
      '| --- | --- | --- |',
      '| teacher | 24.65 |  |',
      '| student_round_1 | 30.28 | +5.63 |']
  # COCO's -1 (no ground truth) and a missing metric are not numbers to compare
  table = self_training.format_table({'metric': 'mIoU', 'rows': [
      {'model': 'teacher', 'mIoU': 0.8}, {'model': 'student_round_1', 'mIoU': -1.0},
      {'model': 'student_round_2'}]})
  assert table.splitlines()[0] == '| model | mIoU x 100 | gain over teacher (x 100) |'
  assert table.splitlines()[2:] == ['| teacher | 80.00 |  |', '| student_round_1 | n/a |  |',
                                    '| student_round_2 | n/a |  |']


def test_student_rejects_a_batch_without_human_examples():
  from rethink_st.training import student  # pylint: disable=g-import-not-at-top
  # 8 * 0.75 = 6 pseudo + 2 human over 4 replicas: two replicas would get no human example.
  # (The fraction is in [0, 1), so this is the per-replica rule, not the range check.)
  four_replicas = types.SimpleNamespace(num_replicas_in_sync=4)
  with pytest.raises(UserError) as e:
    student.StudentTrainer(task=None, model=None, optimizer=None, strategy=four_replicas,
                           global_batch_size=8, pseudo_source=None, pseudo_fraction=0.75)
  # (gin appends the configurable's name on later lines; the CLI prints the first)
  assert str(e.value).splitlines()[0] == (
      'StudentTrainer.pseudo_fraction=0.75 with global batch 8 gives 2 human + 6 pseudo '
      'examples, which do not split over 4 replicas with at least one human example each')


def test_bad_ratio_stops_before_the_teacher_trains(demo_config, tmp_path, capsys):
  # The demo's student batch is 4 here; round(4 * 0.9) = 4 pseudo leaves 0 human examples.
  gin.bind_parameter('rethink_st.training.student.StudentTrainer.pseudo_fraction', 0.9)
  root = tmp_path / 'st'
  with pytest.raises(UserError, match=r'^StudentTrainer\.pseudo_fraction=0\.9 with global '
                     r'batch 4 gives 0 human \+ 4 pseudo examples'):
    self_training.run_self_training(str(root))
  assert 'stage 1: teacher' not in capsys.readouterr().out
  assert not os.path.exists(root / 'teacher') and not os.path.exists(root / 'round_1')


def test_a_macro_bound_student_batch_is_checked_before_the_teacher_trains(demo_config, tmp_path,
                                                                         capsys):
  # The values come from gin's public API (get_bindings, references resolved one at a time):
  # a macro is evaluated in the student's scope, as run_train would receive it.
  gin.parse_config(['STUDENT_BATCH = 4',
                    'student/rethink_st.training.run.run_train.global_batch_size = %STUDENT_BATCH',
                    'rethink_st.training.student.StudentTrainer.pseudo_fraction = 0.9'])
  root = tmp_path / 'st'
  with pytest.raises(UserError, match=r'^StudentTrainer\.pseudo_fraction=0\.9 with global '
                     r'batch 4 gives 0 human \+ 4 pseudo examples'):
    self_training.run_self_training(str(root))
  assert 'stage 1: teacher' not in capsys.readouterr().out


def test_a_wrong_unlabeled_source_stops_before_the_teacher_trains(demo_config, tmp_path,
                                                                  capsys):
  # demo.gin: run_pseudo_label.unlabeled_source = @unlabeled/digit_scenes_source(); the
  # reference is built in the pseudo stage's scope, so its scoped data_dir is the one read.
  missing = tmp_path / 'no_scenes'
  gin.bind_parameter('unlabeled/rethink_st.data.sources.digit_scenes_source.data_dir',
                     str(missing))
  root = tmp_path / 'st'
  with pytest.raises(UserError, match=str(missing)):
    self_training.run_self_training(str(root))
  assert 'stage 1: teacher' not in capsys.readouterr().out
  assert not os.path.exists(root / 'teacher')


def test_bad_student_init(demo_config, tmp_path):
  with pytest.raises(UserError, match="student_init='imagenet'"):
    self_training.run_self_training(str(tmp_path / 'st'), student_init='imagenet')


@pytest.mark.parametrize('weight', [0.2, 1.5])
def test_joint_total_is_task_loss_plus_weight_times_classification_loss(weight):
  """total = detection + w * classification, at the loss level (the trainer's step calls
  JointClassification.combine)."""
  logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], np.float32)
  labels = np.array([1, 2])
  expected_cls = np.mean([-np.log(np.exp(l[y]) / np.exp(l).sum())
                          for l, y in zip(logits.astype(np.float64), labels)])
  j = joint.JointClassification(source=types.SimpleNamespace(num_classes=3, name='fake'),
                                weight=weight)
  j.head = lambda images, training: tf.constant(logits)
  task_losses = {'total_loss': tf.constant(0.75), 'cls_loss': tf.constant(0.5)}
  out = j.combine(task_losses, (tf.zeros([2, 8, 8, 3]), tf.constant(labels)))
  assert np.isclose(out['classification_loss'], expected_cls, rtol=1e-5)
  assert np.isclose(out['total_loss'], 0.75 + weight * expected_cls, rtol=1e-5)
  assert float(out['cls_loss']) == 0.5 and float(task_losses['total_loss']) == 0.75


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
