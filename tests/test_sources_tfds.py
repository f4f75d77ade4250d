"""tfds_source: coco/2017, voc/2012, imagenet2012 under tfds.testing.mock_data (no download),
a real tiny TFDS builder prepared in a tmp dir, and the bad-input errors."""
import functools

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from rethink_st.data import features as F
from rethink_st.data import sources
from rethink_st.errors import UserError

NUM_EXAMPLES = 6


def _fake_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  """Random examples from the builder's own feature spec (like mock_data's default), with
  every dynamic dimension 10 so that `objects` sequences agree in length, and honouring
  `SkipDecoding` for the image (mock_data's default cannot encode random boxes)."""
  del kwargs
  features = self.info.features
  skip_image = bool(decoders) and isinstance(decoders.get('image'), tfds.decode.SkipDecoding)
  generator = mocking.RandomFakeGenerator(features, NUM_EXAMPLES, constant_dynamic_shape=True)
  spec = tf.nest.map_structure(lambda t: tf.TensorSpec([10 if d is None else d for d in t.shape],
                                                       t.dtype), features.get_tensor_info())
  ds = tf.data.Dataset.from_generator(lambda: iter(generator), output_signature=spec)
  if skip_image:
    ds = ds.map(lambda ex: dict(ex, image=tf.io.encode_png(ex['image'])))
  if read_config and read_config.add_tfds_id:
    prefix = f'{self.name}-{split}.tfrecord-00000-of-00001__'
    ds = ds.enumerate().map(
        lambda i, ex: dict(ex, tfds_id=tf.strings.join([prefix, tf.strings.as_string(i)])))
  return ds


def mock_tfds():
  return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_dataset_fn=_fake_as_dataset)


def _check_image(ex, height=10, width=10):
  assert ex[F.IMAGE].dtype == tf.uint8 and ex[F.IMAGE].shape == (height, width, 3)
  assert int(ex[F.HEIGHT]) == height and int(ex[F.WIDTH]) == width
  assert ex[F.SOURCE_ID].dtype == tf.string and ex[F.SOURCE_ID].shape == ()


def test_coco_2017_detection():
  with mock_tfds():
    source = sources.tfds_source('coco/2017', split='train')
    assert source.num_classes == 80 and source.kind == 'coco'
    examples = list(source.dataset())
  assert len(examples) == NUM_EXAMPLES
  ex = examples[0]
  assert set(ex) == set(F.DETECTION_KEYS)
  _check_image(ex)
  classes = ex[F.CLASSES].numpy()
  assert ex[F.CLASSES].dtype == tf.int64 and classes.shape == (10,)
  assert classes.min() >= 1 and classes.max() <= 80  # TFDS 0..79 -> 1..80
  assert ex[F.BOXES].dtype == tf.float32 and ex[F.BOXES].shape == (10, 4)
  assert ex[F.IS_CROWD].dtype == tf.bool and ex[F.AREA].dtype == tf.float32
  # MSCOCODecoder's source_id is the COCO image id as a string.
  assert ex[F.SOURCE_ID].numpy().decode().isdigit()


def test_voc_2012_detection_without_masks():
  with mock_tfds():
    source = sources.tfds_source('voc/2012', split='validation')
    assert source.num_classes == 20 and source.kind == 'detection'
    ex = next(iter(source.dataset()))
  assert set(ex) == set(F.DETECTION_KEYS)  # TFDS voc has no segmentation masks
  _check_image(ex)
  classes = ex[F.CLASSES].numpy()
  assert classes.min() >= 1 and classes.max() <= 20
  assert not ex[F.IS_CROWD].numpy().any()
  boxes = ex[F.BOXES].numpy()
  expected_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * 100
  np.testing.assert_allclose(ex[F.AREA].numpy(), expected_area, rtol=1e-5)


def test_imagenet2012_classification_with_default_mock():
  # mock_data's default generator works for imagenet's features, with SkipDecoding too.
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    source = sources.tfds_source('imagenet2012', split='validation')
    assert source.num_classes == 1000 and source.kind == 'classification'
    examples = list(source.dataset())
  assert len(examples) == 4
  for ex in examples:
    assert set(ex) == {F.SOURCE_ID, F.IMAGE, F.HEIGHT, F.WIDTH, F.LABEL}
    assert ex[F.IMAGE].shape == (int(ex[F.HEIGHT]), int(ex[F.WIDTH]), 3)
    assert ex[F.LABEL].dtype == tf.int64 and 0 <= int(ex[F.LABEL]) < 1000


def test_mocked_fraction_uses_source_ids():
  with mock_tfds():
    full = [ex[F.SOURCE_ID].numpy() for ex in sources.tfds_source('voc/2012').dataset()]
    half = [ex[F.SOURCE_ID].numpy()
            for ex in sources.tfds_source('voc/2012', fraction=0.5).dataset()]
  assert half == [i for i in full if sources.in_fraction(i, 0.5, 0).numpy()]


# ---- a real (tiny) TFDS dataset, prepared in a tmp dir ------------------------------------------

class RethinkStTinyScenes(tfds.core.GeneratorBasedBuilder):
  """8 images with objects (bbox + label) and a semantic mask; 2 splits."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'image/filename': tfds.features.Text(),
        'objects': tfds.features.Sequence({
            'bbox': tfds.features.BBoxFeature(),
            'label': tfds.features.ClassLabel(num_classes=3),
        }),
        'segmentation_mask': tfds.features.Image(shape=(None, None, 1)),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(8, 'img'), 'test': self._generate_examples(2, 'test')}

  def _generate_examples(self, n, prefix):
    for i in range(n):
      mask = np.zeros([6, 8, 1], np.uint8)
      mask[:3, :4] = i % 3 + 1
      yield i, {
          'image': np.full([6, 8, 3], i, np.uint8),
          'image/filename': f'{prefix}{i}.png',
          'objects': {'bbox': [tfds.features.BBox(0.0, 0.0, 0.5, 0.5)], 'label': [i % 3]},
          'segmentation_mask': mask,
      }


@pytest.fixture(scope='module')
def tiny_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  RethinkStTinyScenes(data_dir=data_dir).download_and_prepare()
  return data_dir


def test_real_prepared_dataset(tiny_data_dir):
  source = sources.tfds_source('rethink_st_tiny_scenes', split='train', data_dir=tiny_data_dir)
  assert source.num_classes == 3 and source.kind == 'detection'
  examples = {ex[F.SOURCE_ID].numpy().decode(): ex for ex in source.dataset()}
  assert sorted(examples) == [f'img{i}.png' for i in range(8)]
  ex = examples['img4.png']
  _check_image(ex, 6, 8)
  assert int(ex[F.IMAGE][0, 0, 0]) == 4
  assert ex[F.CLASSES].numpy().tolist() == [2]  # label 1 -> class 2
  np.testing.assert_allclose(ex[F.BOXES].numpy(), [[0, 0, 0.5, 0.5]])
  np.testing.assert_allclose(ex[F.AREA].numpy(), [0.25 * 48])
  sem = ex[F.SEMANTIC_MASK].numpy()
  assert sem.shape == (6, 8, 1) and sem[0, 0, 0] == 2 and sem[5, 7, 0] == 0


def test_real_fraction_shards_and_input_context(tiny_data_dir):
  def ids(source, **kwargs):
    return [ex[F.SOURCE_ID].numpy().decode() for ex in source.dataset(**kwargs)]
  make = functools.partial(sources.tfds_source, 'rethink_st_tiny_scenes', data_dir=tiny_data_dir)
  everything = ids(make())
  assert ids(make()) == everything  # same order every run
  small, big = set(ids(make(fraction=0.3))), set(ids(make(fraction=0.7)))
  assert small <= big <= set(everything) and len(small) < 8
  shards = [ids(make(), num_shards=3, shard_index=i) for i in range(3)]
  assert sorted(sum(shards, [])) == sorted(everything)
  assert sorted(ids(make(), shuffle=True, seed=1)) == sorted(everything)
  # One file, two pipelines (TFDS alone refuses): each pipeline keeps every other example.
  parts = [ids(make(), input_context=tf.distribute.InputContext(
      num_input_pipelines=2, input_pipeline_id=i)) for i in range(2)]
  assert parts[0] == everything[0::2] and parts[1] == everything[1::2]
  # Two files ('train+test'): TFDS gives each pipeline one file.
  both = make(split='train+test')
  parts = [set(ids(both, input_context=tf.distribute.InputContext(
      num_input_pipelines=2, input_pipeline_id=i))) for i in range(2)]
  assert sorted(parts[0] | parts[1]) == sorted(ids(both)) and not parts[0] & parts[1]
  assert {len(parts[0]), len(parts[1])} == {8, 2}


# ---- bad input --------------------------------------------------------------------------------

def test_unknown_name():
  with pytest.raises(UserError, match="unknown TFDS dataset name='no_such_dataset_xyz'") as e:
    sources.tfds_source('no_such_dataset_xyz')
  assert '\n' not in str(e.value).splitlines()[0]
  with pytest.raises(UserError, match="'coco/2099'"):
    sources.TFDSSource('coco/2099')


def test_not_prepared_names_data_dir(tmp_path):
  with pytest.raises(UserError) as e:
    sources.TFDSSource('coco/2017', data_dir=str(tmp_path))
  message = str(e.value)
  assert "'coco/2017'" in message and 'not prepared' in message and str(tmp_path) in message
  assert '\n' not in message


def test_unknown_split(tiny_data_dir):
  with pytest.raises(UserError) as e:
    sources.TFDSSource('rethink_st_tiny_scenes', split='tarin', data_dir=tiny_data_dir)
  assert "split 'tarin'" in str(e.value) and '\n' not in str(e.value)


def test_bad_fraction():
  with pytest.raises(UserError, match=r"tfds_source.*fraction=1.01"):
    sources.TFDSSource('coco/2017', fraction=1.01)


def test_digit_scenes_builder_mapping():
  with mock_tfds():
    source = sources.tfds_source('digit_scenes', split='iconic_train')
    assert source.num_classes == 10 and source.kind == 'detection'
    ex = next(iter(source.dataset()))
  assert set(ex) == set(F.DETECTION_KEYS) | {F.SEMANTIC_MASK, F.LABEL}
  _check_image(ex)
  assert ex[F.SOURCE_ID].numpy().decode().isdigit()  # str(image_id), as in the TFRecords
  classes = ex[F.CLASSES].numpy()
  assert classes.min() >= 1 and classes.max() <= 10
  assert ex[F.SEMANTIC_MASK].shape == (10, 10, 1) and ex[F.SEMANTIC_MASK].dtype == tf.uint8
  assert ex[F.LABEL].dtype == tf.int64 and ex[F.LABEL].shape == ()


def test_grayscale_classification_falls_back_to_tfds_id():
  with mock_tfds():
    source = sources.tfds_source('mnist', split='test')
    examples = list(source.dataset())
  assert source.kind == 'classification' and source.num_classes == 10
  assert examples[0][F.IMAGE].shape == (28, 28, 3)  # 1 channel -> RGB
  assert examples[1][F.SOURCE_ID].numpy() == b'mnist-test.tfrecord-00000-of-00001__1'
