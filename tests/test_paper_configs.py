"""The paper's experiments as gin configs (gin_configs/coco/, gin_configs/pascal/).

  * every .gin file in the repository parses (each alone, gin cleared in between);
  * every paper config builds its full-size model at the real input size (RetinaNet
    EfficientNet-B7 / ResNet at 1024, SpineNet at 1280, NAS-FPN B7 / L2 at 512) and its train
    and eval input pipelines, and one batch goes through each; TFDS (coco/2017, imagenet2012)
    is mocked by tfds.testing.mock_data and the user-supplied inputs (PASCAL TFRecords, Open
    Images and COCO image folders) are tiny files in tmp. No training;
  * self-training configs get the paper's teacher / pseudo-labeler / student settings (batch
    half human half pseudo, the teacher's learning rate, threshold 0.5, loss normalization);
    joint-training configs get the ImageNet head and data;
  * each header names the table, the expected number and a command, and that command's flags
    parse; gin_configs/README.md lists every config and every required input;
  * a required input left unset stops with one line naming it.

Configs that share a model reuse it: they are ordered by model and each model is built once
(7 models for 75 configs), then dropped; each distinct input pipeline pulls one batch once.
Models are built with zero-initialized variables (conftest.zero_initialized_variables: same
shapes, no random draws; nothing here runs them on data), and every model with a published
parameter count is checked against it here (test_modeling_params.check_published_count), so
no full-size network is built twice in a session. scripts/test.sh runs this file on one
xdist worker (--dist loadfile), so the model cache holds. Most of the time is building the 7
models (EfficientNet-L2 at 512 x 512 about 2 GB) and tracing the augmentation at full size.
"""
import contextlib
import gc
import glob
import os
import re
import sys

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import gin
import numpy as np
import pytest
import tensorflow as tf, tf_keras
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from rethink_st import cli
from rethink_st import config_io
from rethink_st import losses
from rethink_st.data import features as F
from rethink_st.data import tfexample
from rethink_st.training import optimization
from rethink_st.training import student as student_lib
from helpers import documented_command, gin_header, one_error_line
import test_modeling_params

cli.register_configurables()

REPO = config_io.REPO_ROOT
ALL_GIN = sorted(os.path.relpath(p, REPO) for p in glob.glob(
    os.path.join(REPO, 'gin_configs', '**', '*.gin'), recursive=True))
PAPER = [p for p in ALL_GIN if p.startswith(('gin_configs/coco/', 'gin_configs/pascal/'))]
RUN_TRAIN = 'rethink_st.training.run.run_train'
RUN_PSEUDO = 'rethink_st.pseudo_label.run.run_pseudo_label'
RUN_SELF_TRAINING = 'rethink_st.self_training.run_self_training'
STUDENT_BATCH = f'student/{RUN_TRAIN}.global_batch_size'
MODEL_CONFIGURABLES = ('rethink_st.modeling.detection.build_retinanet',
                       'rethink_st.modeling.segmentation.build_segmentation_model',
                       'rethink_st.modeling.backbones.build_backbone',
                       'rethink_st.modeling.anchors.anchor_config')
NUM_MOCK_EXAMPLES = 20   # enough that COCO's 20% subset of them is not empty


# --------------------------------------------------------------------------- helpers
def _parse(path, params=()):
  gin.clear_config()
  config_io.parse_gin([os.path.join(REPO, path)], list(params))


def _bound(name):
  try:
    gin.query_parameter(name)
    return True
  except ValueError:
    return False


def _is_self_training():
  return _bound(STUDENT_BATCH)


def _scope(name):
  return gin.config_scope(name) if name else contextlib.nullcontext()


def _model_key():
  """What the model depends on besides the task's input size and classes."""
  return repr([sorted(gin.get_bindings(name).items()) for name in MODEL_CONFIGURABLES])


def model_identity():
  """(task kind, backbone name) of the bound config's model, as test_modeling_params.PUBLISHED
  names the models with a published parameter count."""
  selector = gin.query_parameter(f'{RUN_TRAIN}.task').selector
  kind = {'DetectionTask': 'detection', 'SegmentationTask': 'segmentation'}[
      selector.rsplit('.', 1)[-1]]
  builder = MODEL_CONFIGURABLES[0 if kind == 'detection' else 1]
  return kind, gin.get_bindings(builder)['backbone']


def _order_key(path):
  _parse(path)
  return (_model_key(), repr(gin.query_parameter('%IMAGE_SIZE')), path)


PAPER_BY_MODEL = sorted(PAPER, key=_order_key)
gin.clear_config()


def _header(path):
  return gin_header(os.path.join(REPO, path))


def _first_number_after(word, text):
  m = re.search(word + r'[^0-9]*([0-9][0-9,]*(?:\.[0-9]+)?)', text)
  return None if m is None else float(m.group(1).replace(',', ''))


_command = documented_command


_FAKE_DATASETS = {}


def _fake_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  """Random examples of the builder's own feature spec (images 10 x 10, 10 boxes), honouring
  SkipDecoding for the image, as tfds_source reads it. The examples are the same on every
  call (RandomFakeGenerator is seeded), so each (dataset, split, reading) is made once and
  handed out again: a config makes a dozen TFDS sources (each task of each stage validates
  its splits), and making the fake tf.data graph was a fifth of the time of a config whose
  model and pipelines were already checked."""
  del kwargs
  skip_image = bool(decoders) and isinstance(decoders.get('image'), tfds.decode.SkipDecoding)
  add_tfds_id = bool(read_config and read_config.add_tfds_id)
  key = (self.info.full_name, str(split), skip_image, add_tfds_id)
  if key not in _FAKE_DATASETS:
    _FAKE_DATASETS[key] = _make_fake_dataset(self, split, skip_image, add_tfds_id)
  return _FAKE_DATASETS[key]


def _make_fake_dataset(self, split, skip_image, add_tfds_id):
  features = self.info.features
  generator = mocking.RandomFakeGenerator(features, NUM_MOCK_EXAMPLES,
                                          constant_dynamic_shape=True)
  spec = tf.nest.map_structure(lambda t: tf.TensorSpec([10 if d is None else d for d in t.shape],
                                                       t.dtype), features.get_tensor_info())
  ds = tf.data.Dataset.from_generator(lambda: iter(generator), output_signature=spec)
  if 'bbox' in spec.get('objects', {}):
    ds = ds.map(_ordered_boxes)
  if skip_image:
    ds = ds.map(lambda ex: dict(ex, image=tf.io.encode_png(ex['image'])))
  if add_tfds_id:
    prefix = f'{self.name}-{split}.tfrecord-00000-of-00001__'
    ds = ds.enumerate().map(
        lambda i, ex: dict(ex, tfds_id=tf.strings.join([prefix, tf.strings.as_string(i)])))
  return ds


def _ordered_boxes(ex):
  """TFDS boxes are [ymin, xmin, ymax, xmax] with min <= max. The generator draws each
  coordinate on its own, so half of its boxes are inside out, which no dataset has (TFDS
  refuses to encode them) and on which Augment-S3's box-only ops fail, at random, with
  'output dimensions must be positive'."""
  b = ex['objects']['bbox']
  bbox = tf.concat([tf.minimum(b[..., :2], b[..., 2:]), tf.maximum(b[..., :2], b[..., 2:])], -1)
  return dict(ex, objects=dict(ex['objects'], bbox=bbox))


def mock_tfds():
  return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_dataset_fn=_fake_as_dataset)


# ------------------------------------------------------------------ user-supplied inputs
@pytest.fixture(scope='module')
def user_inputs(tmp_path_factory):
  """Tiny stand-ins for the inputs a user supplies, as gin params of their macros."""
  root = tmp_path_factory.mktemp('paper_inputs')
  rng = np.random.default_rng(0)

  def pascal(name, n):
    path = str(root / f'{name}-00000-of-00001')
    with tf.io.TFRecordWriter(path) as w:
      for i in range(n):
        h, w_ = 20 + 4 * i, 24
        mask = rng.integers(0, 21, size=(h, w_), dtype=np.uint8)
        mask[:2] = F.IGNORE_LABEL
        w.write(tfexample.encode_example({
            F.SOURCE_ID: str(100 + i), F.IMAGE: rng.integers(0, 255, (h, w_, 3), np.uint8),
            F.SEMANTIC_MASK: mask}))
    return str(root / f'{name}-*')

  def folder(name, n):
    directory = root / name / 'sub'
    directory.mkdir(parents=True)
    for i in range(n):
      image = rng.integers(0, 255, (16 + i, 20, 3), np.uint8)
      (directory / f'{i}.jpg').write_bytes(tf.io.encode_jpeg(image).numpy())
    return str(root / name)

  values = {'PASCAL_TRAIN_TFRECORDS': pascal('train', 3),
            'PASCAL_VAL_TFRECORDS': pascal('val', 2),
            'PASCAL_AUG_TFRECORDS': pascal('aug', 2),
            'OPENIMAGES_DIR': folder('openimages', 2),
            'COCO_IMAGES_DIR': folder('coco_images', 2)}
  return {'values': values, 'params': [f"{k}='{v}'" for k, v in values.items()]}


# --------------------------------------------------------------- every .gin file parses
def test_configs_found():
  assert len(PAPER) >= 70, PAPER
  assert 'gin_configs/base/augment_s4.gin' in ALL_GIN


@pytest.mark.parametrize('path', ALL_GIN)
def test_every_gin_file_parses(path):
  _parse(path)


# ----------------------------------------------------------- paper configs build and feed
_CACHE = {'model_key': None, 'model': None, 'pipelines': set()}


def _model_for(task, zero_initialized_variables):
  key = (_model_key(), type(task).__name__, task.image_size, task.num_classes)
  if _CACHE['model_key'] != key:
    _CACHE.update(model_key=None, model=None)
    tf_keras.backend.clear_session()
    gc.collect()
    with zero_initialized_variables():   # structure only: never run on data here
      _CACHE.update(model_key=key, model=task.build_model())
    # Each network is built once per session, here: its published size is checked here too.
    kind, backbone = model_identity()
    assert kind == task.kind
    test_modeling_params.check_published_count(_CACHE['model'], kind, backbone)
  return _CACHE['model']


def _pull_one_batch(task, split, scope, batch_size=2):
  """One batch of the task's `split` pipeline, once per distinct pipeline config."""
  key = (type(task).__name__, split, task.image_size, type(task.source(split)).__name__,
         repr(sorted(gin.get_bindings('rethink_st.modeling.anchors.anchor_config').items())),
         repr(sorted(gin.get_bindings('rethink_st.data.pipeline.build_input').items())))
  if split == 'train':   # evaluation is never augmented
    key += (repr(sorted(gin.get_bindings('rethink_st.augment.Augment').items())),)
  if key in _CACHE['pipelines']:
    return None
  with _scope(scope):
    images, labels = next(iter(task.build_dataset(split, batch_size)))
  _CACHE['pipelines'].add(key)
  return images, labels


def _expected(path):
  """The paper's numbers each family must carry (Section 3.1, paper/NOTES.md)."""
  if '/table5/' in path:
    return dict(size=(1280, 1280), batch=128, classes=81, kind='DetectionTask',
                lr=0.14 if 'spinenet143' in path else 0.15)
  if path.startswith('gin_configs/pascal/'):
    l2 = '/l2_' in path
    return dict(size=(512, 512), batch=256, classes=21, kind='SegmentationTask',
                lr=0.2 if l2 else 0.08)
  return dict(size=(1024, 1024), batch=256, classes=81, kind='DetectionTask', lr=0.32)


def _peak_learning_rate(scope, batch, steps):
  with _scope(scope):
    optimizer = optimization.build_optimizer(batch, steps)
    warmup = gin.query_parameter('rethink_st.training.optimization.build_optimizer.warmup_steps')
  return float(optimizer.learning_rate(warmup))


@pytest.mark.parametrize('path', PAPER_BY_MODEL)
def test_paper_config_builds_model_and_pipeline(path, user_inputs, zero_initialized_variables):
  _parse(path, user_inputs['params'])
  header = _header(path)
  expected = _expected(path)
  self_training = _is_self_training()
  teacher_scope = 'teacher' if self_training else None
  with mock_tfds():
    with _scope(teacher_scope):
      run = gin.get_bindings(RUN_TRAIN)
    task = run['task']
    # The run: the paper's batch, steps as the header says, learning rate after warmup.
    assert type(task).__name__ == expected['kind']
    assert task.image_size == expected['size'] and task.num_classes == expected['classes']
    # bin/evaluate.py and bin/export.py run on the same config: the same task.
    for binary_fn in ('rethink_st.training.run.run_evaluate', 'rethink_st.export.run_export'):
      other = gin.get_bindings(binary_fn)['task']
      assert (type(other), other.image_size, other.num_classes) == (
          type(task), task.image_size, task.num_classes), binary_fn
    assert run['global_batch_size'] == expected['batch']
    steps = _first_number_after('Steps:', header)
    if steps is not None:
      assert run['train_steps'] == steps
    lr = _peak_learning_rate(teacher_scope, run['global_batch_size'], run['train_steps'])
    assert lr == pytest.approx(expected['lr'], rel=0.01)

    # The full-size model at the real input size, agreeing with the pipeline's labels.
    model = _model_for(task, zero_initialized_variables)
    assert tuple(model.backbone.input_shape) == (None, *task.image_size, 3)
    head = model.head.get_config()
    assert head['num_classes'] == task.num_classes
    for split in ('train', 'eval'):
      batch = _pull_one_batch(task, split, teacher_scope)
      if batch is None:
        continue   # the same pipeline config went through in an earlier case
      images, labels = batch
      assert images.shape == (2, *task.image_size, 3)
      if expected['kind'] == 'DetectionTask':
        h, w = task.image_size
        for level in range(3, 8):
          assert labels['cls_targets'][str(level)].shape == (
              2, h // 2**level, w // 2**level, head['num_anchors_per_location'])
      else:
        assert labels['masks'].shape == (2, *task.image_size, 1)

    joint = run.get('joint')
    assert (joint is not None) == ('/table7/' in path and 'joint' in path or
                                   path.endswith('table7/all.gin'))
    if joint is not None:
      assert joint.weight == 0.2 and joint.num_classes == 1000
      assert joint.global_batch_size == 256 and joint.source.tfds_name == 'imagenet2012'
      if ('joint',) + _CACHE['model_key'] not in _CACHE['pipelines']:  # once per model
        joint.global_batch_size = 2   # one small batch here; 256 in the config
        joint.build(model, task.image_size, run['global_batch_size'], 1)
        assert joint.head.output_shape == (None, 1000)
        assert joint.head.backbone is model.backbone
        images, labels = next(iter(joint.dataset_fn(None)))
        assert images.shape == (2, *task.image_size, 3) and labels.shape == (2,)
        _CACHE['pipelines'].add(('joint',) + _CACHE['model_key'])

    if self_training:
      _check_self_training(path, header, task, run, user_inputs['values'])
    else:
      assert not _bound(f'{RUN_PSEUDO}.unlabeled_source')


def _check_self_training(path, header, task, run, inputs):
  """Teacher -> pseudo-labeler -> student as the paper sets them (Section 3.1)."""
  with _scope('student'):
    student = gin.get_bindings(RUN_TRAIN)
    normalizer = losses.LossNormalizer()
  steps = run['train_steps'] * (2.25 if '/appendix_c/' in path else 1)
  assert student['train_steps'] == steps
  # 256 human + 256 pseudo; SpineNet 128 + 128 (Section 3.1); PASCAL L2 128 + 128 (Section 3.1:
  # "a batch size of 512 for EfficientNet-B7 and 256 for EfficientNet-L2").
  half = 128 if ('/table5/' in path or '/l2_' in path) else 256
  fraction = gin.query_parameter('rethink_st.training.student.StudentTrainer.pseudo_fraction')
  assert student_lib.split_batch(student['global_batch_size'], fraction, 1) == (half, half)
  # "The other training hyper-parameters remain the same": the teacher's learning rate.
  assert _peak_learning_rate('student', student['global_batch_size'],
                             student['train_steps']) == pytest.approx(
                                 _peak_learning_rate('teacher', run['global_batch_size'],
                                                     run['train_steps']), rel=0.01)
  assert normalizer.decay == 0.9997
  assert normalizer.mode == ('standard' if '/appendix_b/' in path else 'normalized')
  alpha = _first_number_after('Alpha', header)
  if alpha is not None:
    assert normalizer.alpha == alpha
  assert normalizer.alpha in (0.25, 0.5, 1.0, 2.0, 3.0)

  orchestrator = gin.get_bindings(RUN_SELF_TRAINING)
  assert orchestrator['rounds'] == 1
  assert orchestrator['student_init'] == ('random' if '/appendix_c/' in path else 'teacher')
  assert orchestrator['metric'] == ('AP' if task.kind == 'detection' else 'mIoU')

  with _scope('pseudo'):
    pseudo = gin.get_bindings(RUN_PSEUDO)
  assert pseudo['score_threshold'] == 0.5 and pseudo['mask_threshold'] == 0.5
  assert tuple(pseudo['scales']) == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  labeler_task = pseudo['task']
  assert (type(labeler_task), labeler_task.image_size, labeler_task.num_classes) == (
      type(task), task.image_size, task.num_classes)
  source = pseudo['unlabeled_source']
  if '/table5/' in path or path.endswith('_openimages.gin'):
    assert inputs['OPENIMAGES_DIR'] in source.name
  elif path.startswith('gin_configs/pascal/') and path.endswith('/coco.gin'):
    assert inputs['COCO_IMAGES_DIR'] in source.name
  elif path.startswith('gin_configs/pascal/') and not path.endswith('/imagenet.gin'):
    assert inputs['PASCAL_AUG_TFRECORDS'] in source.name
  else:
    assert source.tfds_name == 'imagenet2012' and source.split == 'train'
  key = ('unlabeled', type(source).__name__, source.name, source.fraction)
  if key not in _CACHE['pipelines']:   # the same source was read in an earlier case
    example = next(iter(source.dataset()))
    assert example[F.IMAGE].dtype == tf.uint8 and example[F.IMAGE].shape[-1] == 3
    _CACHE['pipelines'].add(key)


# ------------------------------------------------------------ headers, commands, README
@pytest.mark.parametrize('path', PAPER)
def test_header_names_table_expected_number_and_a_command_that_parses(path):
  header = _header(path)
  assert re.search(r'\b(Table \d+|Appendix [A-H]|Figure \d)', header.split('\n')[0]), header
  assert 'Expected' in header or 'The same experiment as' in header
  argv = _command(header)
  assert argv[0] == 'python' and os.path.exists(os.path.join(REPO, argv[1])), argv
  files = [a.split('=', 1)[1] for a in argv if a.startswith('--gin_file=')]
  params = [a.split('=', 1)[1] for a in argv if a.startswith('--gin_param=')]
  assert files[0] == path and any(a.startswith('--model_dir=') for a in argv)
  gin.clear_config()
  config_io.parse_gin([os.path.join(REPO, f) for f in files], params)
  assert argv[1] == ('bin/self_train.py' if _is_self_training() else 'bin/train_teacher.py')
  # Every REQUIRED macro the config defines is set by the documented command.
  for macro in _required_macros():
    if _bound('%' + macro):
      assert not str(gin.query_parameter('%' + macro)).startswith('REQUIRED'), macro


DIGIT_SEGMENTATION = ['gin_configs/digits/teacher_segmentation.gin',
                      'gin_configs/digits/experiments/seg_cell.gin',
                      'gin_configs/digits/experiments/seg_self_training.gin']


@pytest.mark.parametrize('path', DIGIT_SEGMENTATION)
def test_digit_segmentation_headers_name_table6_and_a_command_that_parses(path):
  """The digit-scale Table 6 files (benchmarks/tables.py table6): the header names the table,
  what to expect and a command; that command parses, is a segmentation run (mIoU; pseudo
  masks at the paper's 0.5 for self-training) and runs the binary its stage needs."""
  header = _header(path)
  assert 'Table 6' in header or 'table6' in header, header
  assert 'Expect' in header and 'mIoU' in header
  argv = _command(header)
  assert argv[0] == 'python' and os.path.exists(os.path.join(REPO, argv[1])), argv
  files = [a.split('=', 1)[1] for a in argv if a.startswith('--gin_file=')]
  params = [a.split('=', 1)[1] for a in argv if a.startswith('--gin_param=')]
  assert path in files and any(a.startswith('--model_dir=') for a in argv)
  gin.clear_config()
  try:
    config_io.parse_gin([os.path.join(REPO, f) for f in files], params)
    assert gin.query_parameter('TASK/macro.value').selector == (
        'rethink_st.training.tasks.SegmentationTask')
    assert gin.query_parameter('rethink_st.modeling.backbones.build_backbone.'
                               'depth_multiplier') == 0.5
    assert argv[1] == ('bin/self_train.py' if _is_self_training() else 'bin/train_teacher.py')
    if _is_self_training():
      assert gin.query_parameter(f'{RUN_SELF_TRAINING}.metric') == 'mIoU'
      assert gin.query_parameter('PSEUDO_MASK_THRESHOLD/macro.value') == 0.5
      assert gin.query_parameter(f'{RUN_PSEUDO}.task') == gin.query_parameter(
          f'{RUN_TRAIN}.task')
  finally:
    gin.clear_config()


def _required_macros():
  found = {}
  for path in ALL_GIN:
    with open(os.path.join(REPO, path)) as f:
      for name, value in re.findall(r"^(\w+) = '(REQUIRED[^']*)'", f.read(), flags=re.M):
        found[name] = value
  return found


def test_readme_lists_every_config_and_required_input():
  with open(os.path.join(REPO, 'gin_configs', 'README.md')) as f:
    readme = f.read()
  missing = [p for p in PAPER if p[len('gin_configs/'):] not in readme]
  assert not missing, missing
  required = _required_macros()
  assert set(required) >= {'IMAGENET_B7_CHECKPOINT', 'NOISY_STUDENT_B7_CHECKPOINT',
                           'NOISY_STUDENT_L2_CHECKPOINT', 'SIMCLR_R50_CHECKPOINT',
                           'PASCAL_TRAIN_TFRECORDS', 'PASCAL_VAL_TFRECORDS',
                           'PASCAL_AUG_TFRECORDS', 'OPENIMAGES_DIR', 'COCO_IMAGES_DIR'}
  for name, value in required.items():
    assert name in value, (name, value)      # the placeholder names its own macro
    assert name in readme, name


# ------------------------------------------------------ a required input left unset
def _one_line_error(fn):
  gin.clear_config()   # cli.run_binary parses on top of what is bound
  return one_error_line(lambda: config_io.call_with_user_errors(fn))


def test_missing_checkpoint_stops_the_teacher_with_one_line(tmp_path):
  from rethink_st.training import run as run_lib  # pylint: disable=g-import-not-at-top
  with mock_tfds():
    line = _one_line_error(lambda: cli.run_binary(
        run_lib.run_train, gin_files=[os.path.join(REPO, 'gin_configs/coco/table2/s4_imagenet_init.gin')],
        gin_params=[], model_dir=str(tmp_path / 'run')))
  assert 'IMAGENET_B7_CHECKPOINT' in line and 'init_checkpoint' in line, line
  assert not tf.io.gfile.exists(str(tmp_path / 'run' / 'checkpoint'))


def test_missing_pascal_tfrecords_stop_with_one_line(tmp_path):
  from rethink_st.training import run as run_lib  # pylint: disable=g-import-not-at-top
  line = _one_line_error(lambda: cli.run_binary(
      run_lib.run_train, gin_files=[os.path.join(REPO, 'gin_configs/pascal/table6/b7_supervised.gin')],
      gin_params=[], model_dir=str(tmp_path / 'run')))
  assert 'PASCAL_TRAIN_TFRECORDS' in line, line


def test_missing_unlabeled_images_stop_the_pseudo_labeler_with_one_line(tmp_path):
  from rethink_st.pseudo_label import run as pseudo_run  # pylint: disable=g-import-not-at-top

  def label():
    config_io.parse_gin([os.path.join(REPO, 'gin_configs/coco/table5/spinenet143_self_training.gin')],
                        [])
    with gin.config_scope('pseudo'):
      pseudo_run.run_pseudo_label(str(tmp_path / 'pseudo'), teacher_checkpoint='unused')

  with mock_tfds():
    line = _one_line_error(label)
  assert 'OPENIMAGES_DIR' in line, line
