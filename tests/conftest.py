"""Test set-up: legacy Keras, quiet TF, a tiny digit-scenes dataset and a tiny trained teacher
made once per session (shared by the xdist workers), `zero_initialized_variables` for tests
that only look at a model's structure, and the order in which test files go to the xdist
workers."""
import collections
import contextlib
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


import pytest  # noqa: E402

# --- file order ---------------------------------------------------------------------------
# scripts/test.sh runs `-n 2 --dist loadfile --no-loadscope-reorder`: whole files go to the two
# workers in collection order, each to a worker that is down to its last two tests. The
# slowest files go first (longest first), so that the two workers finish together instead of
# one running a slow file alone at the end; the others follow, those with most tests first
# (xdist's own order). Which files are slow: per-test durations of a whole run
# (`--durations=0`, summed by file; seconds below, with the two workers sharing 2 cores); a
# file missing here only starts later, nothing else changes. test_binaries and test_training
# both read the session's tiny_teacher, so they are kept apart: the second to ask waits.
SLOW_FILES_FIRST = (
    'test_paper_configs.py',            # 7 full-size models, full-size augmentation
    'test_pseudo_label.py',             # ~20 labeling runs
    'test_determinism.py',              # training runs, one in a fresh process
    'test_binaries.py',                 # the session's tiny teacher, stages chained, export
    'test_self_training.py',            # two rounds of teacher -> pseudo -> student
    'test_modeling.py',
    'test_pipeline.py',
    'test_student_mechanism.py',
    'test_augment.py',
    'test_export.py',                   # SavedModel exports
    'test_multi_worker.py',             # two training processes
    'test_benchmarks_train_step.py',
    'test_training.py',
    'test_init.py',
    'test_run_folder_safety.py',
    'test_fault_injection.py',          # a training process killed and resumed
    'test_ssod_splits.py',
    'test_sources_tfrecord.py',
    'test_pseudo_label_report.py',
    'test_modeling_params.py',
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
  count = collections.Counter(str(item.path) for item in items)
  # stable: each file's tests keep their order (test_paper_configs groups configs by model)
  items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), -count[str(item.path)],
                               str(item.path)))


# --- the tiny digit-scenes dataset (rethink_st.data.digit_scenes) -------------------------

TINY_DIGIT_SCENES = dict(num_train=48, num_unlabeled=32, num_val=24, num_iconic_train=48,
                         num_iconic_val=16, image_size=64, iconic_image_size=32, seed=0,
                         shards=4)


def _made_once(tmp_path_factory, name, make):
  """The folder `name`, made by make(folder) once per test session: under xdist, by the
  first worker that asks, in the temp folder the workers share, while the others wait on a
  lock and then use the same folder. What is in it is read-only to the tests."""
  import fcntl  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent   # <tmp>/pytest-N/popen-gw0 -> <tmp>/pytest-N, this session's only
  folder, done = root / name, root / f'{name}.done'
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)   # left by a worker whose make() failed
      make(folder)
      done.touch()
  return folder


@pytest.fixture(scope='session')
def digit_scenes_dir(tmp_path_factory):
  """A tiny complete digit-scenes directory (str path), built once per test session (and
  shared by the xdist workers): splits train 48 / unlabeled 32 / val 24 scenes of 64x64,
  iconic_train 48 / iconic_val 16 images of 32x32, 4 TFRecord shards each, COCO JSON under
  annotations/, meta.json. Read-only: make_digit_scenes is deterministic, so a test that
  needs to change a dataset makes its own."""
  from rethink_st.data import digit_scenes  # pylint: disable=g-import-not-at-top
  folder = _made_once(tmp_path_factory, 'digit_scenes', lambda folder: (
      digit_scenes.make_digit_scenes(str(folder), **TINY_DIGIT_SCENES)))
  return str(folder)


# --- one tiny teacher run, trained once per session ---------------------------------------

class TinyTeacher(collections.namedtuple('TinyTeacher', 'model_dir data_dir stdout metrics')):
  """A finished run of the tiny digits teacher. model_dir is shared by every test (and
  xdist worker) that uses the fixture: a test that writes into a run folder (a resume, an
  export, an evaluation) works on a copy (copy_to)."""

  def copy_to(self, path) -> str:
    import shutil  # pylint: disable=g-import-not-at-top
    return shutil.copytree(self.model_dir, str(path))


@pytest.fixture(scope='session')
def tiny_teacher(digit_scenes_dir, tmp_path_factory):
  """The tiny digits teacher (teacher.gin + test_training.tiny_bindings: ResNet-10, 4 steps
  of batch 4, checkpoints at steps 2 and 4) trained as bin/train_teacher.py trains it
  (cli.run_binary: lock, config.gin, operative_config.gin), evaluating every 2 steps:
  eval_metrics.json, detections_coco.json, TensorBoard events under train/ and eval/. Made
  once per session (test_training and test_binaries both read it); its printed lines
  (stdout) and the metrics run_train returned come with it."""
  import io  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  import test_training  # pylint: disable=g-import-not-at-top
  from rethink_st import cli  # pylint: disable=g-import-not-at-top
  from rethink_st.training import run  # pylint: disable=g-import-not-at-top

  def train(folder):
    out = io.StringIO()
    folder.mkdir()
    gin.clear_config()
    try:
      with contextlib.redirect_stdout(out):
        metrics = cli.run_binary(
            run.run_train, gin_files=[test_training.TEACHER_GIN],
            model_dir=str(folder / 'teacher'),
            gin_params=test_training.tiny_bindings(digit_scenes_dir, steps=4) + [
                'rethink_st.training.run.run_train.eval_every = 2'])
    finally:
      gin.clear_config()
      print(out.getvalue())   # shown with the setup of the test that made it, on failure
    (folder / 'stdout.txt').write_text(out.getvalue())
    (folder / 'metrics.json').write_text(json.dumps({k: float(v) for k, v in metrics.items()}))

  folder = _made_once(tmp_path_factory, 'tiny_teacher', train)
  return TinyTeacher(str(folder / 'teacher'), digit_scenes_dir,
                     (folder / 'stdout.txt').read_text(),
                     json.loads((folder / 'metrics.json').read_text()))


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Every test starts from an empty gin config: bindings one test parses (a digits gin file
  binds anchor_size = 2, say) must not change what another test on the same worker builds."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  yield


# --- structure-only model builds ---------------------------------------------------------
@contextlib.contextmanager
def _zero_initialized_variables():
  """Variables created inside the block start at zero instead of their initializer's random
  draw (same shapes, dtypes and names). For tests that check a model's structure (input
  size, heads, parameter counts) and never run it on data: drawing EfficientNet-L2's 480M
  truncated-normal weights is about 40% of building it on 2 CPU cores."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def creator(next_creator, **kwargs):
    init, shape, dtype = (kwargs.get(k) for k in ('initial_value', 'shape', 'dtype'))
    if (callable(init) and dtype is not None and shape is not None and
        tf.TensorShape(shape).is_fully_defined()):
      dtype = tf.as_dtype(dtype).base_dtype
      kwargs['initial_value'] = lambda: tf.zeros(shape, dtype)
    return next_creator(**kwargs)

  with tf.variable_creator_scope(creator):
    yield


@pytest.fixture
def zero_initialized_variables():
  """A context manager: variables made inside it are zeros (see _zero_initialized_variables).
  Enter it around the build only, after any tf_keras.backend.clear_session()."""
  return _zero_initialized_variables
