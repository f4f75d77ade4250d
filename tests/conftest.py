"""Test set-up: legacy Keras, quiet TF, and a session-wide tiny digit-scenes dataset."""
import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


# --- the tiny digit-scenes dataset (rethink_st.data.digit_scenes) -------------------------
import pytest  # noqa: E402

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
