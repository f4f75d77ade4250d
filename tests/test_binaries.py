"""What the binaries do around their run functions, on one tiny trained teacher: evaluation
at an interval during training, bin/export.py and bin/evaluate.py (outputs and configs, the
training run's files untouched), bin/show_augment.py's digit-scale default, one-line errors
for bad gin input, and TF_USE_LEGACY_KERAS set by importing the package."""
import json
import os
import subprocess
import sys

import gin
import pytest
import tensorflow as tf

from rethink_st import augment_preview
from rethink_st import cli
from rethink_st import config_io
from rethink_st import export
from rethink_st.errors import UserError
from rethink_st.training import run

import test_training
from helpers import one_error_line

TEACHER_GIN = test_training.TEACHER_GIN
RUN_FILES = ('config.gin', 'operative_config.gin', 'eval_metrics.json', 'detections_coco.json')


def _bindings(data_dir):
  return test_training.tiny_bindings(data_dir, steps=4) + [
      'rethink_st.training.run.run_evaluate.eval_batch_size = 8',
  ]


def _read(path):
  with open(path, 'rb') as f:
    return f.read()


@pytest.fixture(scope='module')
def trained_run(digit_scenes_dir, tmp_path_factory):
  """4 steps of the tiny teacher with evaluation every 2 steps, as bin/train_teacher.py runs
  it (config.gin saved first). Returns (model_dir, data_dir)."""
  model_dir = str(tmp_path_factory.mktemp('run') / 'teacher')
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([TEACHER_GIN], _bindings(digit_scenes_dir) + [
      'rethink_st.training.run.run_train.eval_every = 2'])
  config_io.save_config(model_dir)
  run.run_train(model_dir)
  gin.clear_config()
  return model_dir, digit_scenes_dir


def _scalar_steps(folder, tag):
  steps = []
  for path in tf.io.gfile.glob(os.path.join(folder, 'events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return sorted(steps)


# ------------------------------------------------------------ evaluation during training
def test_eval_every_evaluates_at_the_interval_and_once_at_the_end(trained_run):
  model_dir, _ = trained_run
  assert _scalar_steps(os.path.join(model_dir, 'eval'), 'AP') == [2, 4]  # not 4 twice
  assert _scalar_steps(os.path.join(model_dir, 'train'), 'total_loss') == [2, 4]
  with open(os.path.join(model_dir, 'eval_metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['step'] == 4 and 'AP' in metrics


# ------------------------------------------------------------ bin/export.py
def test_export_writes_saved_model_and_configs_and_leaves_the_run_alone(trained_run):
  model_dir, data_dir = trained_run
  before = {name: _read(os.path.join(model_dir, name)) for name in RUN_FILES}
  # What bin/export.py --gin_file=... --model_dir=... calls.
  out = cli.run_binary(export.run_export, gin_files=[TEACHER_GIN],
                       gin_params=_bindings(data_dir), model_dir=model_dir, save_config=False)
  assert out == os.path.join(model_dir, 'saved_model')
  for name in ('saved_model.pb', 'config.gin', 'operative_config.gin', export.SETTINGS_FILE):
    assert os.path.exists(os.path.join(out, name)), name
  assert "build_retinanet.backbone = 'resnet-10'" in open(os.path.join(out, 'config.gin')).read()
  operative = open(os.path.join(out, 'operative_config.gin')).read()
  assert 'run_export' in operative and "backbone = 'resnet-10'" in operative
  assert {name: _read(os.path.join(model_dir, name)) for name in RUN_FILES} == before
  got = tf.saved_model.load(out).signatures['serving_default'](
      images=tf.zeros([1, 96, 80, 3], tf.uint8))
  assert got['detection_boxes'].shape[:2] == got['detection_scores'].shape


def test_export_of_a_folder_without_checkpoint_is_one_line(digit_scenes_dir, tmp_path):
  cli.register_configurables()
  config_io.parse_gin([TEACHER_GIN], _bindings(digit_scenes_dir))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(UserError, match=r'--model_dir=.*empty: holds no checkpoint'):
    export.run_export(str(tmp_path / 'empty'))


# ------------------------------------------------------------ bin/evaluate.py
def test_evaluate_writes_under_eval_and_leaves_the_run_alone(trained_run, capsys):
  model_dir, data_dir = trained_run
  before = {name: _read(os.path.join(model_dir, name)) for name in RUN_FILES}
  eval_dir = run.eval_dir(model_dir)
  # What bin/evaluate.py --gin_file=... --model_dir=... calls.
  metrics = cli.run_binary(run.run_evaluate, gin_files=[TEACHER_GIN],
                           gin_params=_bindings(data_dir), model_dir=model_dir,
                           config_dir=eval_dir)
  assert eval_dir == os.path.join(model_dir, 'eval')
  for name in RUN_FILES:
    assert os.path.exists(os.path.join(eval_dir, name)), name
  assert 'run_evaluate.eval_batch_size = 8' in open(os.path.join(eval_dir, 'config.gin')).read()
  assert 'run_evaluate' in open(os.path.join(eval_dir, 'operative_config.gin')).read()
  with open(os.path.join(eval_dir, 'eval_metrics.json')) as f:
    assert json.load(f)['step'] == 4
  assert 'AP' in metrics and '[eval] step 4' in capsys.readouterr().out
  assert {name: _read(os.path.join(model_dir, name)) for name in RUN_FILES} == before


# ------------------------------------------------------------ bin/show_augment.py
def test_show_augment_default_uses_each_policys_digit_scale_file(digit_scenes_dir, tmp_path):
  out = str(tmp_path / 'augment')
  paths = augment_preview.run_show_augment_digit_scale(out, [
      'rethink_st.augment_preview.run_show_augment.source = '
      '@rethink_st.data.sources.digit_scenes_source()',
      f"rethink_st.data.sources.digit_scenes_source.data_dir = '{digit_scenes_dir}'",
      'rethink_st.augment_preview.run_show_augment.n = 1',
      'rethink_st.augment_preview.run_show_augment.num_examples = 1',
  ])
  assert paths == [os.path.join(out, f'augment_s{k}.png') for k in (1, 2, 3, 4)]
  assert all(os.path.getsize(p) > 0 for p in paths)
  translate = {'s2': 50, 's3': 50, 's4': 20}   # gin_configs/digits/augment_s<k>.gin
  for policy, value in translate.items():
    config = open(os.path.join(out, policy, 'config.gin')).read()
    assert f"Augment.policy = '{policy}'" in config
    operative = open(os.path.join(out, policy, 'operative_config.gin')).read()
    assert f'translate_const = {value}' in operative, (policy, operative)


def test_show_augment_rejects_an_unknown_policy(tmp_path):
  with pytest.raises(UserError, match=r"run_show_augment.policies: unknown 's5'"):
    augment_preview.run_show_augment_digit_scale(
        str(tmp_path), ["rethink_st.augment_preview.run_show_augment.policies = ['s5']"])


# ------------------------------------------------------------ bad gin input
def _one_line_error(gin_files, gin_params):
  """What a binary prints: run_binary's parse fails before the run function starts."""
  gin.clear_config()
  return one_error_line(lambda: cli.run_binary(
      lambda _: pytest.fail('the run function started'), gin_files=gin_files,
      gin_params=gin_params, model_dir=None))


def test_unknown_binding_is_one_line_naming_it():
  line = _one_line_error([], ['rethink_st.training.run.run_train.no_such_arg = 3'])
  assert '--gin_param="rethink_st.training.run.run_train.no_such_arg = 3"' in line
  assert "no_such_arg" in line and 'run_train' in line, line


def test_unknown_binding_in_a_file_names_file_and_line(tmp_path):
  path = tmp_path / 'typo.gin'
  path.write_text('import rethink_st.training.run\n\n'
                  'rethink_st.training.run.run_train.trian_steps = 3\n')
  line = _one_line_error([str(path)], [])
  assert f'--gin_file={path}' in line and 'trian_steps' in line and 'line 3' in line, line


def test_missing_gin_file_is_one_line_naming_it(tmp_path):
  line = _one_line_error([str(tmp_path / 'nope.gin')], [])
  assert line == f'error: --gin_file={tmp_path / "nope.gin"}: no such file'


@pytest.mark.parametrize('text', [
    'rethink_st.training.run.run_train.train_steps 3',     # no '='
    'rethink_st.training.run.run_train.train_steps = = 3',  # no value
    'rethink_st.training.run.run_train.train_steps = [1,',  # unclosed bracket
])
def test_malformed_line_is_one_line_naming_it(text, tmp_path):
  line = _one_line_error([], [text])
  assert f'--gin_param="{text}"' in line, line
  path = tmp_path / 'bad.gin'
  path.write_text(f'import rethink_st.training.run\n{text}\n')
  line = _one_line_error([str(path)], [])
  assert f'--gin_file={path}' in line, line


# ------------------------------------------------------------ TF_USE_LEGACY_KERAS
def test_importing_the_package_first_selects_tf_keras():
  env = {k: v for k, v in os.environ.items() if k != 'TF_USE_LEGACY_KERAS'}
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  code = ('import os, rethink_st\n'
          'import tensorflow as tf, tf_keras\n'
          "assert os.environ['TF_USE_LEGACY_KERAS'] == '1', os.environ['TF_USE_LEGACY_KERAS']\n"
          # tf.keras is a lazy loader object that forwards to tf_keras, not the module itself.
          "assert tf.keras.__name__.startswith('tf_keras'), tf.keras.__name__\n"
          'assert tf.keras.Model is tf_keras.Model\n'
          "print('ok')\n")
  done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                        text=True, timeout=300, cwd=test_training.REPO)
  assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr[-2000:]
