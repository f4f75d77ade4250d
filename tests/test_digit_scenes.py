"""The digit-scenes dataset: generator invariants, serialization, determinism, readers."""
import hashlib
import json
import os

import numpy as np
import pytest

from rethink_st.data import digit_scenes as ds
from rethink_st.data import features as F
from rethink_st.errors import UserError
from helpers import run_bin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def pools():
  return ds.digit_pools()


@pytest.fixture(scope='module')
def scenes(pools):
  return [ds.generate_scene(np.random.default_rng([7, i]), pools['train'], 128)
          for i in range(40)]


def _records(data_dir, split):
  import tensorflow as tf
  return [r.numpy() for r in tf.data.TFRecordDataset(ds.tfrecord_files(data_dir, split))]


# ---------------------------------------------------------------------------- generator


def test_pools_are_disjoint_stratified_and_real_digits(pools):
  from sklearn.datasets import load_digits
  digits = load_digits()
  seen = set()
  for name, pool in pools.items():
    idx = set(pool.indices.tolist())
    assert not idx & seen, f'pool {name} shares digits with another pool'
    seen |= idx
    assert set(pool.labels.tolist()) == set(range(10))
    np.testing.assert_array_equal(pool.labels, digits.target[pool.indices])
    np.testing.assert_allclose(pool.images, digits.images[pool.indices] / 16.0)
  assert len(pools['train'].labels) > len(pools['val'].labels) > 300
  assert len(seen) <= 1797


def test_pools_reject_bad_fractions():
  with pytest.raises(UserError, match='digit_pools.fractions'):
    ds.digit_pools(fractions=(0.8, 0.4, 0.2))


def test_scene_instances_boxes_tightly_enclose_visible_masks(scenes):
  counts = []
  for ex in scenes:
    n = len(ex[F.CLASSES])
    counts.append(n)
    assert ex[F.IMAGE].shape == (128, 128, 3) and ex[F.IMAGE].dtype == np.uint8
    masks = ex[F.INSTANCE_MASKS]
    assert masks.shape == (n, 128, 128)
    assert set(np.unique(masks)) <= {0, 1}
    assert ((1 <= ex[F.CLASSES]) & (ex[F.CLASSES] <= 10)).all()
    assert masks.sum(axis=0).max() <= 1, 'visible masks overlap'
    for box, mask, area in zip(ex[F.BOXES], masks, ex[F.AREA]):
      rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
      expected = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]) / 128.0
      np.testing.assert_allclose(box, expected, atol=1e-6)
      assert area == mask.sum() >= 12
    # digit classes come from the drawn digits
    drawn = set((ds.digit_pools()['train'].labels[
        np.searchsorted(ds.digit_pools()['train'].indices, ex[ds.DIGIT_INDICES])] + 1).tolist())
    assert set(ex[F.CLASSES].tolist()) <= drawn
  assert 1 <= min(counts) and max(counts) <= 6 and np.mean(counts) > 2.5


def test_scene_digit_sizes_span_the_range(scenes):
  heights = np.concatenate([(ex[F.BOXES][:, 2] - ex[F.BOXES][:, 0]) * 128 for ex in scenes])
  assert heights.min() < 20 and heights.max() > 40 and heights.max() <= 64


def test_semantic_mask_is_consistent_with_instance_masks(scenes):
  ignore_pixels = foreground = 0
  for ex in scenes:
    sem = ex[F.SEMANTIC_MASK][..., 0]
    assert ex[F.SEMANTIC_MASK].shape == (128, 128, 1)
    union = np.zeros(sem.shape, bool)
    for cls, mask in zip(ex[F.CLASSES], ex[F.INSTANCE_MASKS].astype(bool)):
      assert (sem[mask] == cls).all()
      union |= mask
    labelled = (sem >= 1) & (sem <= 10)
    np.testing.assert_array_equal(labelled, union)
    assert set(np.unique(sem)) <= set(range(11)) | {F.IGNORE_LABEL}
    ignore_pixels += (sem == F.IGNORE_LABEL).sum()
    foreground += union.sum()
  assert 0 < ignore_pixels < 0.25 * foreground, 'the ignore band should be thin'


def test_scenes_draw_digits_only_from_their_pool(pools):
  for name, pool in pools.items():
    for i in range(5):
      ex = ds.generate_scene(np.random.default_rng([1, i]), pool, 64)
      assert set(ex[ds.DIGIT_INDICES].tolist()) <= set(pool.indices.tolist()), name


def test_generation_is_deterministic_and_seed_dependent(pools):
  a = ds.generate_scene(np.random.default_rng(3), pools['val'], 96)
  b = ds.generate_scene(np.random.default_rng(3), pools['val'], 96)
  c = ds.generate_scene(np.random.default_rng(4), pools['val'], 96)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a[F.IMAGE], c[F.IMAGE])


def test_iconic_is_one_centred_digit_with_its_label(pools):
  for i in range(20):
    ex = ds.generate_iconic(np.random.default_rng([2, i]), pools['train'], 64)
    assert ex[F.IMAGE].shape == (64, 64, 3)
    assert len(ex[F.CLASSES]) == 1 and ex[F.CLASSES][0] == ex[F.LABEL] + 1
    ymin, xmin, ymax, xmax = ex[F.BOXES][0]
    assert abs((ymin + ymax) / 2 - 0.5) < 0.15 and abs((xmin + xmax) / 2 - 0.5) < 0.15
    assert ymax - ymin > 0.45
    sem = ex[F.SEMANTIC_MASK][..., 0]
    assert (sem[ex[F.INSTANCE_MASKS][0] == 1] == ex[F.LABEL] + 1).all()


# ---------------------------------------------------------------------- the directory


def test_meta_describes_the_directory(digit_scenes_dir):
  meta = ds.read_meta(digit_scenes_dir)
  assert meta['num_classes'] == 10 and meta['class_names'] == [str(d) for d in range(10)]
  assert meta['image_size'] == 64 and meta['seed'] == 0
  expected = {'train': 48, 'unlabeled': 32, 'val': 24, 'iconic_train': 48, 'iconic_val': 16}
  assert {s: v['num_examples'] for s, v in meta['splits'].items()} == expected
  for split, info in meta['splits'].items():
    assert info['tfrecord_files'] == [f'{split}.tfrecord-{i:05d}-of-00004' for i in range(4)]
    assert len(_records(digit_scenes_dir, split)) == expected[split]
    assert len(os.listdir(os.path.join(digit_scenes_dir, info['image_dir']))) == expected[split]
  assert not [f for f in os.listdir(os.path.dirname(digit_scenes_dir)) if '.tmp-' in f]


def test_model_garden_decoder_reads_the_records(digit_scenes_dir, pools):
  import tensorflow as tf
  from official.vision.dataloaders import tf_example_decoder
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  records = _records(digit_scenes_dir, 'val')
  files = ds.tfrecord_files(digit_scenes_dir, 'val')
  assert len(files) == 4
  # shard s holds examples s, s + 4, ...: the first record of shard 0 is example 0.
  for record in records[:8]:
    out = decoder.decode(tf.constant(record))
    index = int(out['source_id'].numpy()) - 1
    ex = ds.generate_scene(np.random.default_rng([0, ds.SPLITS.index('val'), index]),
                           pools['val'], 64)
    assert out['image'].shape == (64, 64, 3)
    assert np.abs(out['image'].numpy().astype(int) - ex[F.IMAGE]).mean() < 8   # JPEG q92
    np.testing.assert_allclose(out['groundtruth_boxes'].numpy(), ex[F.BOXES], atol=1e-6)
    np.testing.assert_array_equal(out['groundtruth_classes'].numpy(), ex[F.CLASSES])
    np.testing.assert_array_equal(out['groundtruth_area'].numpy(), ex[F.AREA])
    np.testing.assert_array_equal(out['groundtruth_is_crowd'].numpy(), ex[F.IS_CROWD])
    np.testing.assert_array_equal(out['groundtruth_instance_masks'].numpy(),
                                  ex[F.INSTANCE_MASKS].astype(np.float32))
    assert out['height'].numpy() == 64 and out['width'].numpy() == 64
    parsed = tf.io.parse_single_example(record, {
        F.TFEX_SEMANTIC_MASK: tf.io.FixedLenFeature((), tf.string),
        'image/object/class/text': tf.io.VarLenFeature(tf.string)})
    np.testing.assert_array_equal(tf.io.decode_png(parsed[F.TFEX_SEMANTIC_MASK]).numpy(),
                                  ex[F.SEMANTIC_MASK])
    names = [t.decode() for t in tf.sparse.to_dense(parsed['image/object/class/text'],
                                                    default_value=b'').numpy()]
    assert names == [str(c - 1) for c in ex[F.CLASSES]]


def test_model_garden_segmentation_decoder_reads_the_records(digit_scenes_dir):
  import tensorflow as tf
  from official.vision.dataloaders import segmentation_input
  record = _records(digit_scenes_dir, 'train')[0]
  out = segmentation_input.Decoder().decode(tf.constant(record))
  label = tf.io.decode_png(out['image/segmentation/class/encoded'], channels=1).numpy()
  assert label.shape == (64, 64, 1)
  assert label.max() >= 1 and set(np.unique(label)) <= set(range(11)) | {255}


def test_iconic_records_carry_the_image_label(digit_scenes_dir):
  examples = list(ds.read_examples(digit_scenes_dir, 'iconic_val'))
  assert len(examples) == 16
  for ex in examples:
    assert ex[F.IMAGE].shape == (32, 32, 3)
    assert list(ex[F.CLASSES]) == [ex[F.LABEL] + 1]
  assert len({int(ex[F.LABEL]) for ex in examples}) > 3


def test_coco_json_loads_and_matches_the_tfrecords(digit_scenes_dir):
  from pycocotools import mask as mask_util
  from pycocotools.coco import COCO
  meta = ds.read_meta(digit_scenes_dir)
  for split in ('train', 'iconic_train'):
    info = meta['splits'][split]
    coco = COCO(os.path.join(digit_scenes_dir, info['coco_json']))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == [str(d) for d in range(10)]
    assert coco.getCatIds() == list(range(1, 11))
    assert len(coco.getImgIds()) == info['num_examples']
    assert len(coco.getAnnIds()) == info['num_instances']
    for ex in ds.read_examples(digit_scenes_dir, split, n=10):
      image_id = int(ex[F.SOURCE_ID])
      img = coco.loadImgs(image_id)[0]
      assert (img['height'], img['width']) == ex[F.IMAGE].shape[:2]
      with open(os.path.join(digit_scenes_dir, info['image_dir'], img['file_name']), 'rb') as f:
        import tensorflow as tf
        np.testing.assert_array_equal(tf.io.decode_image(f.read()).numpy(), ex[F.IMAGE])
      anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
      assert [a['category_id'] for a in anns] == ex[F.CLASSES].tolist()
      h, w = img['height'], img['width']
      for a, box, m, area in zip(anns, ex[F.BOXES], ex[F.INSTANCE_MASKS], ex[F.AREA]):
        x, y, bw, bh = a['bbox']
        np.testing.assert_allclose([y / h, x / w, (y + bh) / h, (x + bw) / w], box, atol=1e-4)
        np.testing.assert_array_equal(coco.annToMask(a), m)
        np.testing.assert_allclose(mask_util.toBbox(a['segmentation']), a['bbox'], atol=1e-3)
        assert a['area'] == area and a['iscrowd'] == 0
      if split == 'iconic_train':
        assert img['label'] == ex[F.LABEL]


def test_semantic_mask_pngs_match_the_records(digit_scenes_dir):
  from PIL import Image
  for ex in ds.read_examples(digit_scenes_dir, 'unlabeled', n=4):
    path = os.path.join(digit_scenes_dir, 'masks', 'unlabeled', f'{int(ex[F.SOURCE_ID]):06d}.png')
    np.testing.assert_array_equal(np.asarray(Image.open(path))[..., None], ex[F.SEMANTIC_MASK])


def _tree_digest(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


SMALL = dict(num_train=4, num_unlabeled=3, num_val=2, num_iconic_train=3, num_iconic_val=2,
             image_size=48, iconic_image_size=32, shards=2)


def test_same_seed_gives_byte_identical_files(tmp_path):
  a = _tree_digest(ds.make_digit_scenes(str(tmp_path / 'a'), seed=5, **SMALL))
  b = _tree_digest(ds.make_digit_scenes(str(tmp_path / 'b'), seed=5, **SMALL))
  c = _tree_digest(ds.make_digit_scenes(str(tmp_path / 'c'), seed=6, **SMALL))
  assert a == b
  assert len(a) == 1 + 5 * 2 + 5 + 2 * (4 + 3 + 2 + 3 + 2)   # meta, shards, json, images+masks
  assert a['train.tfrecord-00000-of-00002'] != c['train.tfrecord-00000-of-00002']
  assert a['meta.json'] != c['meta.json']


def test_png_images_option(tmp_path):
  path = ds.make_digit_scenes(str(tmp_path / 'p'), image_format='png', **SMALL)
  assert sorted(os.listdir(os.path.join(path, 'images', 'val'))) == ['000001.png', '000002.png']
  ex = next(ds.read_examples(path, 'val'))
  np.testing.assert_array_equal(
      ex[F.IMAGE], ds.generate_scene(np.random.default_rng([0, 2, 0]), ds.digit_pools()['val'],
                                     48)[F.IMAGE])


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
  calls = []

  def broken(rng, pool, size):
    calls.append(1)
    if len(calls) > 3:
      raise RuntimeError('boom')
    return real(rng, pool, size)
  real = ds.generate_scene
  monkeypatch.setattr(ds, 'generate_scene', broken)
  with pytest.raises(RuntimeError, match='boom'):
    ds.make_digit_scenes(str(tmp_path / 'x'), **SMALL)
  assert os.listdir(tmp_path) == []


def test_bad_input_is_one_clear_error(tmp_path, digit_scenes_dir):
  with pytest.raises(UserError, match='make_digit_scenes.num_val'):
    ds.make_digit_scenes(str(tmp_path / 'y'), num_val=-1)
  with pytest.raises(UserError, match='make_digit_scenes.image_format'):
    ds.make_digit_scenes(str(tmp_path / 'y'), image_format='gif')
  with pytest.raises(UserError, match='already exists'):
    ds.make_digit_scenes(digit_scenes_dir, **SMALL)
  with pytest.raises(UserError, match='meta.json not found'):
    ds.read_meta(str(tmp_path))
  with pytest.raises(UserError, match="split 'test' unknown"):
    ds.tfrecord_files(digit_scenes_dir, 'test')


def test_overwrite_replaces_a_dataset(tmp_path):
  path = ds.make_digit_scenes(str(tmp_path / 'o'), seed=1, **SMALL)
  ds.make_digit_scenes(path, seed=2, overwrite=True, **SMALL)
  assert ds.read_meta(path)['seed'] == 2
  assert sorted(os.listdir(tmp_path)) == ['o']


def test_default_data_dir_and_ensure(tmp_path, monkeypatch, capsys):
  monkeypatch.delenv(ds.DATA_DIR_ENV, raising=False)
  assert ds.default_data_dir() == os.path.join(REPO, 'data', 'digit_scenes')
  monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / 'env'))
  assert ds.default_data_dir() == str(tmp_path / 'env')

  made = []
  real = ds.make_digit_scenes

  def small(data_dir, overwrite=False):
    made.append(data_dir)
    return real(data_dir, overwrite=overwrite, **SMALL)
  monkeypatch.setattr(ds, 'make_digit_scenes', small)
  assert ds.ensure_digit_scenes() == str(tmp_path / 'env')
  assert ds.is_complete(str(tmp_path / 'env'))
  assert 'generating the digit-scenes dataset' in capsys.readouterr().err
  assert ds.ensure_digit_scenes() == str(tmp_path / 'env')
  assert len(made) == 1, 'a complete directory is not generated again'


def test_write_preview(digit_scenes_dir, tmp_path):
  from PIL import Image
  path = ds.write_preview(digit_scenes_dir, 'train', str(tmp_path / 'p.png'), n=4, ncols=2,
                          scale=2)
  im = np.asarray(Image.open(path))
  assert im.shape[0] > 2 * 128 and im.shape[1] > 4 * 128
  assert im.std() > 20


# ------------------------------------------------------------------- TFDS and binaries


def test_tfds_builder_builds_and_loads(tmp_path):
  import tensorflow_datasets as tfds
  from rethink_st.data import digit_scenes_tfds
  config = digit_scenes_tfds.DigitScenesConfig(
      name='tiny', num_train=3, num_unlabeled=2, num_val=2, num_iconic_train=3,
      num_iconic_val=2, image_size=48, iconic_image_size=32)
  builder = tfds.builder('digit_scenes', config=config, data_dir=str(tmp_path))
  builder.download_and_prepare()
  assert builder.info.splits['train'].num_examples == 3
  assert builder.info.features['objects']['label'].num_classes == 10
  loaded = tfds.load('digit_scenes', split='val', data_dir=str(tmp_path),
                     builder_kwargs={'config': config}, download=False)
  examples = list(tfds.as_numpy(loaded))
  assert len(examples) == 2
  pool = ds.digit_pools()['val']
  for ex in examples:
    ref = ds.generate_scene(np.random.default_rng([0, 2, ex['image_id'] - 1]), pool, 48)
    np.testing.assert_array_equal(ex['image'], ref[F.IMAGE])
    np.testing.assert_allclose(ex['objects']['bbox'], ref[F.BOXES], atol=1e-6)
    np.testing.assert_array_equal(ex['objects']['label'], ref[F.CLASSES] - 1)
    np.testing.assert_array_equal(ex['segmentation_mask'], ref[F.SEMANTIC_MASK])
    assert ex['label'] == -1
  iconic = next(iter(tfds.as_numpy(builder.as_dataset(split='iconic_train'))))
  assert iconic['label'] == iconic['objects']['label'][0]


def test_binaries_make_and_show(tmp_path):
  """bin/make_digit_scenes.py and bin/show_digit_scenes.py run as scripts with their absl
  flags (helpers.run_bin, in this process)."""
  params = [f'--gin_param=make_digit_scenes.{k}={v}' for k, v in SMALL.items()]
  data_dir = str(tmp_path / 'bin')
  made = run_bin('make_digit_scenes', f'--data_dir={data_dir}', *params)
  assert made.returncode == 0, made.stderr[-2000:]
  assert json.load(open(os.path.join(data_dir, 'meta.json')))['splits']['train'][
      'num_examples'] == 4
  again = run_bin('make_digit_scenes', f'--data_dir={data_dir}',
                  '--gin_param=make_digit_scenes.seed=-3')
  assert again.returncode == 1
  assert again.stderr.strip().splitlines()[-1] == (
      'error: make_digit_scenes.seed must be an integer >= 0, got -3')
  out = str(tmp_path / 'grid.png')
  shown = run_bin('show_digit_scenes', f'--data_dir={data_dir}', '--split=iconic_val',
                  '--num=2', f'--output={out}')
  assert shown.returncode == 0, shown.stderr[-2000:]
  assert os.path.getsize(out) > 1000
