"""Test set-up: legacy Keras, quiet TF, a session-wide tiny digit-scenes dataset,
`zero_initialized_variables` for tests that only look at a model's structure, and the order
in which test files go to the xdist workers."""
import collections
import contextlib
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


import pytest  # noqa: E402

# --- file order ---------------------------------------------------------------------------
# scripts/test.sh runs `-n 2 --dist loadfile --no-loadscope-reorder`: whole files go to the two
# workers in collection order, each to the first worker that is free. The slowest files go
# first (longest first), so that the two workers finish together instead of one running a
# slow file alone at the end; the others follow, those with most tests first (xdist's own
# order). Which files are slow: per-test durations of a whole run (`--durations=0`); a file
# missing here only starts later, nothing else changes. Whole suite on the 2-core machine
# (2026-12-03, 648 tests): the workers' test time 766 s and 751 s.
SLOW_FILES_FIRST = (
    'test_paper_configs.py',            # 7 full-size models, full-size augmentation
    'test_export.py',                   # three SavedModel exports
    'test_self_training.py',            # two rounds of teacher -> pseudo -> student
    'test_pseudo_label.py',
    'test_binaries.py',
    'test_training.py',
    'test_multi_worker.py',             # two training processes
    'test_determinism.py',              # three training runs, one in a fresh process
    'test_benchmarks_train_step.py',
    'test_digit_scenes.py',
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


@pytest.fixture(scope='session')
def digit_scenes_dir(tmp_path_factory):
  """A tiny complete digit-scenes directory (str path), built once per test session:
  splits train 48 / unlabeled 32 / val 24 scenes of 64x64, iconic_train 48 / iconic_val 16
  images of 32x32, 4 TFRecord shards each, COCO JSON under annotations/, meta.json."""
  from rethink_st.data import digit_scenes  # pylint: disable=g-import-not-at-top
  return digit_scenes.make_digit_scenes(str(tmp_path_factory.mktemp('digit_scenes')),
                                        **TINY_DIGIT_SCENES)


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
