"""tfrecord_source: Model Garden tf.Examples by glob, extra keys, fraction, sharding, errors."""
import os

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from rethink_st.data import features as F
from rethink_st.data import sources
from rethink_st.errors import UserError


def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _png(array):
  return tf.io.encode_png(np.asarray(array, np.uint8)).numpy()


def make_example(index, *, height=8, width=10, source_id=True, boxes=((0.1, 0.2, 0.5, 0.6),),
                 classes=(3,), masks=False, semantic=False, label=None, scores=None):
  """A tf.Example with Model Garden keys; boxes are [ymin, xmin, ymax, xmax]."""
  image = np.full([height, width, 3], index % 256, np.uint8)
  image[0, 0] = [index // 256 % 256, 7, 9]  # make every image's bytes unique
  feature = {
      'image/encoded': _bytes([_png(image)]),
      'image/height': _ints([height]),
      'image/width': _ints([width]),
      'image/object/bbox/ymin': _floats([b[0] for b in boxes]),
      'image/object/bbox/xmin': _floats([b[1] for b in boxes]),
      'image/object/bbox/ymax': _floats([b[2] for b in boxes]),
      'image/object/bbox/xmax': _floats([b[3] for b in boxes]),
      'image/object/class/label': _ints(list(classes)),
      'image/object/is_crowd': _ints([0] * len(boxes)),
  }
  if source_id:
    feature['image/source_id'] = _bytes([str(index).encode()])
  if masks:
    mask = np.zeros([height, width], np.uint8)
    mask[1:4, 2:5] = 1
    feature['image/object/mask'] = _bytes([_png(mask[..., None]) for _ in boxes])
  if semantic:
    sem = np.zeros([height, width, 1], np.uint8)
    sem[2:5, 3:6] = classes[0] if classes else 0
    feature[F.TFEX_SEMANTIC_MASK] = _bytes([_png(sem)])
  if label is not None:
    feature[F.TFEX_LABEL] = _ints([label])
  if scores is not None:
    feature[F.TFEX_SCORE] = _floats(list(scores))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_records(path, examples):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for example in examples:
      writer.write(example)
  return str(path)


def ids_of(ds):
  return [ex[F.SOURCE_ID].numpy().decode() for ex in ds]


@pytest.fixture(scope='module')
def many_records(tmp_path_factory):
  """400 tiny detection records in 4 files (source ids 0..399)."""
  d = tmp_path_factory.mktemp('many')
  for shard in range(4):
    write_records(d / f'train.tfrecord-{shard:05d}-of-00004',
                  [make_example(i) for i in range(shard * 100, (shard + 1) * 100)])
  return str(d / 'train.tfrecord-*')


def test_detection_with_masks_semantic_label_scores(tmp_path):
  path = write_records(tmp_path / 'a.tfrecord', [
      make_example(1, masks=True, semantic=True, label=4, scores=[0.7],
                   boxes=((0.1, 0.2, 0.5, 0.6),), classes=(3,)),
      # Second record lacks the optional extras: it must still decode.
      make_example(2, boxes=((0.0, 0.0, 1.0, 1.0), (0.2, 0.2, 0.4, 0.4)), classes=(1, 2)),
  ])
  source = sources.tfrecord_source(path, num_classes=10)
  assert source.num_classes == 10
  assert (source.has_masks, source.has_semantic_mask, source.has_label, source.has_scores) == \
      (True, True, True, True)
  first, second = list(source.dataset())
  assert first[F.SOURCE_ID].numpy() == b'1'
  assert first[F.IMAGE].dtype == tf.uint8 and first[F.IMAGE].shape == (8, 10, 3)
  assert int(first[F.HEIGHT]) == 8 and int(first[F.WIDTH]) == 10
  np.testing.assert_allclose(first[F.BOXES].numpy(), [[0.1, 0.2, 0.5, 0.6]], atol=1e-6)
  assert first[F.CLASSES].numpy().tolist() == [3]
  assert first[F.IS_CROWD].numpy().tolist() == [False]
  masks = first[F.INSTANCE_MASKS]
  assert masks.dtype == tf.float32 and masks.shape == (1, 8, 10)
  assert float(tf.reduce_sum(masks)) == 9.0
  sem = first[F.SEMANTIC_MASK]
  assert sem.dtype == tf.uint8 and sem.shape == (8, 10, 1)
  assert int(sem[3, 4, 0]) == 3 and int(sem[0, 0, 0]) == 0
  assert int(first[F.LABEL]) == 4
  np.testing.assert_allclose(first[F.SCORES].numpy(), [0.7])
  # Defaults for the record without extras.
  assert second[F.INSTANCE_MASKS].shape[0] == 0
  assert np.all(second[F.SEMANTIC_MASK].numpy() == F.IGNORE_LABEL)
  assert int(second[F.LABEL]) == -1
  np.testing.assert_allclose(second[F.SCORES].numpy(), [1.0, 1.0])
  assert second[F.CLASSES].numpy().tolist() == [1, 2]


def test_without_instance_masks_the_rest_is_the_same(tmp_path):
  path = write_records(tmp_path / 'a.tfrecord', [
      make_example(1, masks=True, semantic=True, label=4, scores=[0.7]),
      make_example(2, boxes=((0.0, 0.0, 1.0, 1.0),), classes=(1,))])
  source = sources.tfrecord_source(path)
  full = list(source.dataset())
  lean = list(source.dataset(instance_masks=False))
  for a, b in zip(full, lean):
    assert set(a) - set(b) == {F.INSTANCE_MASKS}
    for key in b:
      np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_minimal_records_without_source_id_or_extras(tmp_path):
  path = write_records(tmp_path / 'b.tfrecord',
                       [make_example(i, source_id=False, boxes=(), classes=()) for i in range(3)])
  source = sources.tfrecord_source(path)
  examples = list(source.dataset())
  assert len(examples) == 3
  assert set(examples[0]) == set(F.DETECTION_KEYS)
  # Model Garden's generated id (hash of the encoded image): non-empty, distinct.
  ids = [ex[F.SOURCE_ID].numpy() for ex in examples]
  assert all(ids) and len(set(ids)) == 3
  assert examples[0][F.BOXES].shape == (0, 4)


def test_classification_records(tmp_path):
  path = write_records(tmp_path / 'c.tfrecord', [make_example(i, boxes=(), classes=(), label=i)
                                                 for i in range(3)])
  examples = list(sources.tfrecord_source(path).dataset())
  assert [int(ex[F.LABEL]) for ex in examples] == [0, 1, 2]


def test_comma_separated_patterns_and_order(tmp_path):
  a = write_records(tmp_path / 'x-1.tfrecord', [make_example(i) for i in range(3)])
  b = write_records(tmp_path / 'y-1.tfrecord', [make_example(i) for i in range(3, 5)])
  source = sources.tfrecord_source(f'{a},{tmp_path}/y-*')
  assert source.files == [a, b]
  assert sorted(ids_of(source.dataset())) == ['0', '1', '2', '3', '4']
  assert ids_of(source.dataset()) == ids_of(source.dataset())  # same order every run


def test_fraction_is_deterministic_nested_and_about_right(many_records):
  full = set(ids_of(sources.tfrecord_source(many_records).dataset()))
  assert len(full) == 400
  s20 = set(ids_of(sources.tfrecord_source(many_records, fraction=0.2).dataset()))
  s50 = set(ids_of(sources.tfrecord_source(many_records, fraction=0.5).dataset()))
  assert s20 < s50 < full
  assert 50 <= len(s20) <= 110, len(s20)
  assert 160 <= len(s50) <= 240, len(s50)
  # Same subset when reading in another order (shuffled) and in another run.
  again = sources.tfrecord_source(many_records, fraction=0.2)
  assert set(ids_of(again.dataset(shuffle=True, seed=3))) == s20
  # Another seed draws another subset.
  other = set(ids_of(sources.tfrecord_source(many_records, fraction=0.2,
                                             fraction_seed=1).dataset()))
  assert other != s20
  # The rule is the public in_fraction on source ids.
  keep = sources.in_fraction(tf.constant(sorted(full)), 0.2, 0).numpy()
  assert {i for i, k in zip(sorted(full), keep) if k} == s20


def test_host_shards_partition_the_data(many_records):
  source = sources.tfrecord_source(many_records, fraction=0.5)
  everything = ids_of(source.dataset())
  shards = [ids_of(source.dataset(num_shards=3, shard_index=i)) for i in range(3)]
  assert sorted(sum(shards, [])) == sorted(everything)
  assert all(shards)
  assert shards[1] == ids_of(source.dataset(num_shards=3, shard_index=1))  # same order


def test_shuffle_changes_order_not_content(many_records):
  source = sources.tfrecord_source(many_records)
  plain = ids_of(source.dataset())
  shuffled = ids_of(source.dataset(shuffle=True, seed=1))
  assert shuffled != plain and sorted(shuffled) == sorted(plain)


def test_input_context_splits_files(many_records):
  source = sources.tfrecord_source(many_records)
  parts = [ids_of(source.dataset(input_context=tf.distribute.InputContext(
      num_input_pipelines=2, input_pipeline_id=i))) for i in range(2)]
  assert len(parts[0]) == len(parts[1]) == 200
  assert sorted(parts[0] + parts[1]) == sorted(ids_of(source.dataset()))


def test_input_context_with_fewer_files_than_pipelines(tmp_path):
  path = write_records(tmp_path / 'one.tfrecord', [make_example(i) for i in range(6)])
  source = sources.tfrecord_source(path)
  parts = [ids_of(source.dataset(input_context=tf.distribute.InputContext(
      num_input_pipelines=2, input_pipeline_id=i))) for i in range(2)]
  assert sorted(parts[0] + parts[1]) == [str(i) for i in range(6)]
  assert len(parts[0]) == 3


# ---- bad input --------------------------------------------------------------------------------

def test_glob_matching_nothing(tmp_path):
  pattern = str(tmp_path / 'nothing-*.tfrecord')
  with pytest.raises(UserError, match='matches no files') as e:
    sources.tfrecord_source(pattern)
  # Gin appends "In call to configurable ..." on a second line; our message is the first.
  assert pattern in str(e.value).splitlines()[0]
  with pytest.raises(UserError) as e:
    sources.TFRecordSource(pattern)
  assert '\n' not in str(e.value) and pattern in str(e.value)


def test_not_a_tfrecord_file(tmp_path):
  path = tmp_path / 'junk.tfrecord'
  path.write_bytes(b'this is not a tfrecord file at all')
  with pytest.raises(UserError, match='not a readable TFRecord') as e:
    sources.tfrecord_source(str(path))
  assert str(path) in str(e.value)


def test_records_that_are_not_image_examples(tmp_path):
  no_image = tf.train.Example(features=tf.train.Features(feature={
      'foo': _ints([1])})).SerializeToString()
  path = write_records(tmp_path / 'noimage.tfrecord', [no_image])
  with pytest.raises(UserError, match="image/encoded") as e:
    sources.tfrecord_source(path)
  assert path in str(e.value)
  path2 = write_records(tmp_path / 'garbage.tfrecord', [b'\xff\x00garbage'])
  with pytest.raises(UserError, match='tf.train.Example') as e:
    sources.tfrecord_source(path2)
  assert path2 in str(e.value)


def test_empty_files(tmp_path):
  path = write_records(tmp_path / 'empty.tfrecord', [])
  with pytest.raises(UserError, match='hold no records') as e:
    sources.tfrecord_source(path)
  assert path in str(e.value)


@pytest.mark.parametrize('fraction', [0, 0.0, -0.1, 1.5, 'half', None])
def test_bad_fraction(tmp_path, fraction):
  path = write_records(tmp_path / 'f.tfrecord', [make_example(0)])
  with pytest.raises(UserError, match='fraction') as e:
    sources.tfrecord_source(path, fraction=fraction)
  assert 'tfrecord_source' in str(e.value) and repr(fraction) in str(e.value)


def test_bad_shard_arguments(tmp_path):
  path = write_records(tmp_path / 's.tfrecord', [make_example(0)])
  source = sources.tfrecord_source(path)
  with pytest.raises(UserError, match='shard_index'):
    source.dataset(num_shards=2, shard_index=2)
  with pytest.raises(UserError, match='num_shards'):
    source.dataset(num_shards=0)
