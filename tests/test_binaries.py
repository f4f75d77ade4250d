"""What the binaries do around their run functions, on one tiny teacher trained as
bin/train_teacher.py trains it (conftest.tiny_teacher): evaluation at an interval during
training, the stages chained by their flags alone (bin/pseudo_label.py --teacher --unlabeled,
bin/train_student.py --teacher --pseudo_labels), bin/export.py and bin/evaluate.py
--checkpoint (outputs and configs, the training run's files untouched), the stage flags'
one-line errors (a bad path, a --gin_param that disagrees), bin/show_augment.py's
digit-scale default, one-line errors for bad gin input, and, in a fresh interpreter,
TF_USE_LEGACY_KERAS set by importing the package and every bin/*.py importing."""
import glob
import json
import os
import re
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
from helpers import run_bin

TEACHER_GIN = test_training.TEACHER_GIN
RUN_FILES = ('config.gin', 'operative_config.gin', 'eval_metrics.json', 'detections_coco.json')


def _bindings(data_dir):
  return test_training.tiny_bindings(data_dir, steps=4) + [
      'rethink_st.training.run.run_evaluate.eval_batch_size = 8',
  ]


def _read(path):
  with open(path, 'rb') as f:
    return f.read()


def _gin_params(bindings):
  return [f'--gin_param={b}' for b in bindings]


def _config(path):
  """A saved config (config.gin, operative_config.gin) with gin's wrapped lines joined."""
  with open(path) as f:
    return re.sub(r' \\\n\s+', ' ', f.read())


@pytest.fixture(scope='module')
def trained_run(tiny_teacher, tmp_path_factory):
  """4 steps of the tiny teacher with evaluation every 2 steps: what bin/train_teacher.py
  runs (conftest.tiny_teacher, trained once per session), copied for this file, whose
  export and evaluation write into it. Returns (model_dir, data_dir)."""
  return (tiny_teacher.copy_to(tmp_path_factory.mktemp('run') / 'teacher'),
          tiny_teacher.data_dir)


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


# ------------------------------------------------------------ stages chained by their flags
DEMO_GIN = os.path.join(test_training.REPO, 'gin_configs', 'digits', 'demo.gin')
STUDENT_GIN = os.path.join(test_training.REPO, 'gin_configs', 'digits', 'student.gin')


def test_teacher_pseudo_label_student_chained_by_flags_alone(trained_run, tmp_path):
  """bin/train_teacher.py (trained_run) -> bin/pseudo_label.py --teacher --unlabeled ->
  bin/train_student.py --teacher --pseudo_labels, the last two run as scripts with their
  absl flags (helpers.run_bin): no --gin_param names a stage's input (those below only
  shrink the model and the data). Each flag's binding is in the stage's config.gin, and was
  used (operative_config.gin, meta.json); the student's config.gin alone gives the same
  inputs again."""
  teacher, data_dir = trained_run
  pseudo, student = str(tmp_path / 'pseudo'), str(tmp_path / 'student')
  unlabeled = os.path.join(data_dir, 'unlabeled.tfrecord-*')
  tiny = _gin_params(_bindings(data_dir))
  done = run_bin('pseudo_label', f'--gin_file={DEMO_GIN}', *tiny, f'--teacher={teacher}',
                 f'--unlabeled={unlabeled}', f'--output_dir={pseudo}')
  assert done.returncode == 0, done.stderr[-3000:]
  config = _config(os.path.join(pseudo, 'config.gin'))
  assert f"run_pseudo_label.teacher_checkpoint = '{teacher}'" in config
  assert f"run_pseudo_label.unlabeled_source = '{unlabeled}'" in config
  # The flag replaced demo.gin's @unlabeled/digit_scenes_source(), and said so.
  assert '[flags] --unlabeled=' in done.stdout and 'digit_scenes_source' in done.stdout
  with open(os.path.join(pseudo, 'meta.json')) as f:
    meta = json.load(f)
  assert meta['teacher_checkpoint'] == tf.train.latest_checkpoint(teacher)
  assert meta['source'] == f'tfrecord_source(file_pattern={unlabeled!r})'
  with open(os.path.join(pseudo, 'stats.json')) as f:
    assert json.load(f)['images'] == 32      # the tiny set's unlabeled split

  done = run_bin('train_student', f'--gin_file={STUDENT_GIN}', *tiny,
                 '--gin_param=rethink_st.training.run.run_train.train_steps = 2',
                 '--gin_param=rethink_st.training.tasks.DetectionTask.eval_source = None',
                 f'--teacher={teacher}', f'--pseudo_labels={pseudo}', f'--model_dir={student}')
  assert done.returncode == 0, done.stderr[-3000:]
  config = _config(os.path.join(student, 'config.gin'))
  assert f"run_train.init_checkpoint = '{teacher}'" in config
  assert f"pseudo_label_source.directory = '{pseudo}'" in config
  operative = _config(os.path.join(student, 'operative_config.gin'))
  assert f"init_checkpoint = '{teacher}'" in operative and 'StudentTrainer' in operative
  assert f"directory = '{pseudo}'" in operative
  assert tf.train.latest_checkpoint(student).endswith('ckpt-2')
  assert '[train] step 2/2' in done.stdout and 'pseudo_set_' in done.stdout
  # config.gin alone (no flag) repeats the run's inputs.
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([os.path.join(student, 'config.gin')], [])
  assert gin.query_parameter(cli.STUDENT_TEACHER) == teacher
  assert gin.query_parameter(cli.PSEUDO_LABELS) == pseudo


# ------------------------------------------------------------ stage flags: one-line errors
def _flag_error(flag_bindings, gin_params=(), gin_files=(), folder=None):
  """What a binary prints when its stage flags are wrong: one error line, and the run
  function never starts and its folder is never made."""
  gin.clear_config()
  line = one_error_line(lambda: cli.run_binary(
      lambda _: pytest.fail('the run function started'), gin_files=list(gin_files),
      gin_params=list(gin_params), model_dir=folder, flag_bindings=flag_bindings))
  assert folder is None or not os.path.exists(folder)
  return line


def _saved_checkpoint(folder):
  """A folder with one (tiny, unrelated) checkpoint: enough for the flags' checks."""
  return tf.train.Checkpoint(v=tf.Variable(1.0)).save(os.path.join(folder, 'ckpt'))


def test_a_bad_stage_path_is_one_line_naming_the_flag_and_no_folder_is_made(tmp_path):
  out, nope, empty = str(tmp_path / 'out'), str(tmp_path / 'nope'), str(tmp_path / 'empty')
  os.makedirs(empty)
  prefix = _saved_checkpoint(str(tmp_path / 'teacher'))
  teacher = os.path.dirname(prefix)
  assert _flag_error(cli.pseudo_label_flags(nope, None), folder=out) == (
      f'error: --teacher={nope}: no such folder or checkpoint')
  assert _flag_error(cli.pseudo_label_flags(empty, None), folder=out) == (
      f'error: --teacher={empty}: holds no checkpoint')
  assert _flag_error(cli.pseudo_label_flags(prefix, str(tmp_path / 'x*.tfrecord')),
                     folder=out) == (f'error: --unlabeled={tmp_path / "x*.tfrecord"}: no such '
                                     'folder, and no file matches it as a TFRecord glob')
  assert _flag_error(cli.train_student_flags(teacher, nope), folder=out) == (
      f'error: --pseudo_labels={nope}: no such folder')
  assert _flag_error(cli.train_student_flags(teacher, empty), folder=out) == (
      f'error: --pseudo_labels={empty}: not a pseudo-label folder (no meta.json; '
      'bin/pseudo_label.py writes one)')
  assert _flag_error(cli.self_train_flags(prefix), folder=out) == (
      f'error: --teacher={prefix}: no such folder')   # a run folder, not a prefix
  assert _flag_error(cli.evaluate_flags(None), folder=out) == (
      f'error: --checkpoint is required ({cli.EVALUATE_CHECKPOINT})')
  assert _flag_error(cli.export_flags(empty), folder=out) == (
      f'error: --checkpoint={empty}: holds no checkpoint')


def test_a_flag_and_a_gin_param_that_disagree_is_one_line_naming_both(tmp_path):
  a = os.path.dirname(_saved_checkpoint(str(tmp_path / 'a')))
  b = os.path.dirname(_saved_checkpoint(str(tmp_path / 'b')))
  param = f"rethink_st.pseudo_label.run.run_pseudo_label.teacher_checkpoint = '{b}'"
  assert _flag_error(cli.pseudo_label_flags(a, None), [param], folder=str(tmp_path / 'o')) == (
      f'error: --teacher={a} and --gin_param="{param}" both set {cli.LABELER_TEACHER}, '
      'differently; give one of them')
  # A short name, and a macro the gin file's binding names, are the same parameter.
  short = f"run_train.init_checkpoint = '{b}'"
  line = _flag_error(cli.train_student_flags(a, None), [short])
  assert f'--teacher={a} and --gin_param="{short}" both set {cli.STUDENT_TEACHER}' in line
  gin_file = tmp_path / 'init.gin'
  gin_file.write_text('import rethink_st.training.run\n'
                      'rethink_st.training.run.run_train.init_checkpoint = %INIT\n'
                      "INIT = 'somewhere'\n")
  macro = f"INIT = '{b}'"
  line = _flag_error(cli.train_student_flags(a, None), [macro], [str(gin_file)])
  assert f'--teacher={a} and --gin_param="{macro}" both set {cli.STUDENT_TEACHER}' in line


def test_a_flag_replaces_the_gin_files_value_and_is_recorded_in_config_gin(tmp_path, capsys):
  a = os.path.dirname(_saved_checkpoint(str(tmp_path / 'a')))
  gin_file = tmp_path / 'init.gin'
  gin_file.write_text('import rethink_st.training.run\n'
                      "rethink_st.training.run.run_train.init_checkpoint = 'from_the_file'\n")
  out = str(tmp_path / 'out')
  # The same value as a --gin_param (here with a trailing slash) is no conflict.
  config = cli.run_binary(
      lambda model_dir: _config(os.path.join(model_dir, 'config.gin')),
      gin_files=[str(gin_file)], gin_params=[f"run_train.init_checkpoint = '{a}/'"],
      model_dir=out, flag_bindings=cli.train_student_flags(a, None))
  assert f"run_train.init_checkpoint = '{a}'" in config
  assert gin.query_parameter(cli.STUDENT_TEACHER) == a
  assert f'[flags] --teacher={a} replaces {cli.STUDENT_TEACHER} = ' not in capsys.readouterr().out
  gin.clear_config()
  cli.run_binary(lambda _: None, gin_files=[str(gin_file)], gin_params=[], model_dir=out,
                 flag_bindings=cli.train_student_flags(a, None))
  assert (f"[flags] --teacher={a} replaces {cli.STUDENT_TEACHER} = 'from_the_file' of the "
          'gin files') in capsys.readouterr().out


def test_unlabeled_spec_names_a_digit_scenes_split_an_image_folder_or_a_tfrecord_glob(
    digit_scenes_dir, tmp_path):
  from rethink_st.data import sources  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'images'
  folder.mkdir()
  (folder / 'a.png').write_bytes(tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8)).numpy())
  assert isinstance(sources.source_from_spec(str(folder), 'w'), sources.ImageFolderSource)
  glob = os.path.join(digit_scenes_dir, 'unlabeled.tfrecord-*')
  assert isinstance(sources.source_from_spec(glob, 'w'), sources.TFRecordSource)
  gin.bind_parameter('rethink_st.data.sources.digit_scenes_source.data_dir', digit_scenes_dir)
  scenes = sources.source_from_spec('digit_scenes:unlabeled', 'w')
  assert scenes.num_examples == 32
  with pytest.raises(UserError, match=r"^w=digit_scenes:nope: .*unknown split='nope'"):
    sources.source_from_spec('digit_scenes:nope', 'w')
  (tmp_path / 'none').mkdir()
  with pytest.raises(UserError, match=r'^w=.*none: image_folder_source: .* holds no images'):
    sources.source_from_spec(str(tmp_path / 'none'), 'w')


# ------------------------------------------------------------ bin/export.py
def test_export_writes_saved_model_and_configs_and_leaves_the_run_alone(trained_run):
  model_dir, data_dir = trained_run
  before = {name: _read(os.path.join(model_dir, name)) for name in RUN_FILES}
  # What bin/export.py --gin_file=... --checkpoint=<model_dir> calls.
  out = cli.run_binary(export.run_export, gin_files=[TEACHER_GIN],
                       gin_params=_bindings(data_dir), model_dir=cli.checkpoint_folder(model_dir),
                       save_config=False, flag_bindings=cli.export_flags(model_dir))
  assert out == os.path.join(model_dir, 'saved_model')
  for name in ('saved_model.pb', 'config.gin', 'operative_config.gin', export.SETTINGS_FILE):
    assert os.path.exists(os.path.join(out, name)), name
  config = _config(os.path.join(out, 'config.gin'))
  assert "build_retinanet.backbone = 'resnet-10'" in config
  assert f"run_export.checkpoint = '{model_dir}'" in config   # --checkpoint, recorded
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
  # What bin/evaluate.py --gin_file=... --checkpoint=<a checkpoint prefix> calls.
  prefix = tf.train.latest_checkpoint(model_dir)
  folder = cli.checkpoint_folder(prefix)
  eval_dir = run.eval_dir(folder)
  metrics = cli.run_binary(run.run_evaluate, gin_files=[TEACHER_GIN],
                           gin_params=_bindings(data_dir), model_dir=folder,
                           config_dir=eval_dir, flag_bindings=cli.evaluate_flags(prefix))
  assert eval_dir == os.path.join(model_dir, 'eval')
  for name in RUN_FILES:
    assert os.path.exists(os.path.join(eval_dir, name)), name
  config = _config(os.path.join(eval_dir, 'config.gin'))
  assert 'run_evaluate.eval_batch_size = 8' in config
  assert f"run_evaluate.checkpoint = '{prefix}'" in config   # --checkpoint, recorded
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
  """In a fresh interpreter: importing rethink_st first selects tf_keras; then every
  bin/*.py runs its top level there (imports, flag definitions; not main), which the tests
  that call the binaries in-process (helpers.run_bin) leave unchecked."""
  env = {k: v for k, v in os.environ.items() if k != 'TF_USE_LEGACY_KERAS'}
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  code = ('import os, rethink_st\n'
          'import tensorflow as tf, tf_keras\n'
          "assert os.environ['TF_USE_LEGACY_KERAS'] == '1', os.environ['TF_USE_LEGACY_KERAS']\n"
          # tf.keras is a lazy loader object that forwards to tf_keras, not the module itself.
          "assert tf.keras.__name__.startswith('tf_keras'), tf.keras.__name__\n"
          'assert tf.keras.Model is tf_keras.Model\n'
          "print('ok')\n"
          'import glob, runpy, sys\n'
          'from absl import flags\n'
          "for path in sorted(glob.glob('bin/*.py')):\n"
          '  defined = set(flags.FLAGS)\n'
          "  runpy.run_path(path, run_name='imported')\n"
          '  for name in set(flags.FLAGS) - defined:\n'   # the binaries share flag names
          '    delattr(flags.FLAGS, name)\n'
          '  print(path)\n')
  done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                        text=True, timeout=300, cwd=test_training.REPO)
  assert done.returncode == 0, done.stderr[-2000:]
  scripts = sorted(os.path.join('bin', os.path.basename(p))
                   for p in glob.glob(os.path.join(test_training.REPO, 'bin', '*.py')))
  assert len(scripts) >= 10 and done.stdout.split() == ['ok'] + scripts, done.stdout
