"""digit_scenes_source: the embedded dataset's TFRecords through tfrecord_source."""
import json
import os

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import gin
import numpy as np
import pytest
import tensorflow as tf

from rethink_st.data import features as F
from rethink_st.data import sources
from rethink_st.errors import UserError


def test_train_split(digit_scenes_dir):
  source = sources.digit_scenes_source('train', data_dir=digit_scenes_dir)
  assert source.num_classes == 10
  assert len(source.files) == 4 and all('/train.tfrecord-' in f for f in source.files)
  examples = list(source.dataset())
  with open(os.path.join(digit_scenes_dir, 'meta.json')) as f:
    assert len(examples) == json.load(f)['splits']['train']['num_examples']
  ex = examples[0]
  assert {F.INSTANCE_MASKS, F.SEMANTIC_MASK} <= set(ex) and set(F.DETECTION_KEYS) <= set(ex)
  assert ex[F.IMAGE].shape == (64, 64, 3)
  classes = np.concatenate([e[F.CLASSES].numpy() for e in examples])
  assert classes.min() >= 1 and classes.max() <= 10
  n = ex[F.CLASSES].shape[0]
  assert ex[F.INSTANCE_MASKS].shape == (n, 64, 64) and ex[F.BOXES].shape == (n, 4)
  sem = ex[F.SEMANTIC_MASK].numpy()
  assert set(np.unique(sem)) <= set(range(11)) | {F.IGNORE_LABEL}


def test_iconic_split_has_labels_and_fraction_nests(digit_scenes_dir):
  source = sources.digit_scenes_source('iconic_train', data_dir=digit_scenes_dir)
  labels = [int(ex[F.LABEL]) for ex in source.dataset()]
  assert len(labels) == 48 and min(labels) >= 0 and max(labels) <= 9
  ids = lambda s: {ex[F.SOURCE_ID].numpy() for ex in s.dataset()}
  small = ids(sources.digit_scenes_source('train', data_dir=digit_scenes_dir, fraction=0.2))
  big = ids(sources.digit_scenes_source('train', data_dir=digit_scenes_dir, fraction=0.5))
  assert small < big and 0 < len(small) < len(big) < 48


def test_bad_split_and_fraction(digit_scenes_dir):
  with pytest.raises(UserError, match="split='tarin'") as e:
    sources.digit_scenes_source('tarin', data_dir=digit_scenes_dir)
  assert 'iconic_train' in str(e.value).splitlines()[0]
  with pytest.raises(UserError, match=r'digit_scenes_source.*fraction=0'):
    sources.digit_scenes_source('train', data_dir=digit_scenes_dir, fraction=0)


@gin.configurable('test_sources_consumer')
def _consumer(source=None):
  return source


def test_gin_names_a_scoped_source(digit_scenes_dir):
  gin.clear_config()
  try:
    gin.parse_config(f"""
        import rethink_st.data.sources
        test_sources_consumer.source = @train/digit_scenes_source()
        train/digit_scenes_source.split = 'val'
        train/digit_scenes_source.data_dir = '{digit_scenes_dir}'
        train/rethink_st.data.sources.digit_scenes_source.fraction = 0.5
    """)
    source = _consumer()
  finally:
    gin.clear_config()
  assert isinstance(source, sources.Source) and source.fraction == 0.5
  assert all('/val.tfrecord-' in f for f in source.files)
  for name in ('tfds_source', 'tfrecord_source', 'coco_json_source', 'image_folder_source',
               'digit_scenes_source'):
    assert gin.get_configurable(f'rethink_st.data.sources.{name}')
