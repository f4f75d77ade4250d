"""Semi-supervised detection splits (rethink_st/data/ssod_splits.py, bin/make_ssod_splits.py):

  * the fold rule, pinned on a synthetic id list (stable output), equal to the documented
    numpy expression, nested across percents, independent of the input order;
  * the split files, written from a COCO JSON and from TFDS coco/2017 (tfds.testing.mock_data),
    keep (labeled) and drop (unlabeled) exactly the fold's ids through tfds_source and
    coco_json_source, and through the gin configs of gin_configs/ssod/ (COCO-standard,
    COCO-additional, VOC07+12), whose headers name the protocol, the published numbers and a
    command that parses;
  * other projects' split files (STAC / Soft Teacher COCO JSON, Unbiased Teacher's dataseed)
    import as the same labeled images;
  * bad input (percent, fold, missing or malformed files) stops with one `error:` line that
    names the flag or binding.
"""
import glob
import json
import os
import re
import subprocess
import sys

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from rethink_st import cli
from rethink_st import config_io
from rethink_st.data import features as F
from rethink_st.data import image_ids
from rethink_st.data import sources
from rethink_st.data import ssod_splits
from rethink_st.errors import UserError
from helpers import documented_command, gin_header, one_error_line

REPO = config_io.REPO_ROOT
SSOD_GIN = sorted(os.path.relpath(p, REPO) for p in glob.glob(
    os.path.join(REPO, 'gin_configs', 'ssod', '*.gin')))
RUN_TRAIN = 'rethink_st.training.run.run_train'
RUN_PSEUDO = 'rethink_st.pseudo_label.run.run_pseudo_label'

# 1000 synthetic image ids (not contiguous, given out of order).
SYNTHETIC_IDS = [9 + 13 * i for i in range(1000)][::-1]
# Fold 1 at 2% of them: 20 ids. Pinned: a change of this list changes every published split.
PINNED_2PCT_FOLD1 = [633, 2492, 3285, 3415, 6028, 6132, 6509, 6834, 7068, 7510, 7588, 7913,
                     8121, 8446, 9174, 9694, 10526, 10708, 11943, 12060]

# The mocked TFDS coco/2017 train split: 60 images with these ids.
MOCK_COCO_IDS = [100003 + 17 * i for i in range(60)]


# ------------------------------------------------------------------------------ the rule
def test_fold_ids_are_pinned_and_follow_the_documented_rule():
  labeled = ssod_splits.fold_labeled_ids(SYNTHETIC_IDS, 2, 1)
  assert labeled == PINNED_2PCT_FOLD1
  # The documented rule, written out with numpy alone.
  ids = sorted(SYNTHETIC_IDS)
  order = np.random.default_rng(1).permutation(len(ids))
  assert labeled == sorted(ids[i] for i in order[:20])
  # Input order and duplicates do not matter; ids as strings (TFDS) give the same fold.
  assert ssod_splits.fold_labeled_ids(sorted(SYNTHETIC_IDS) * 2, 2, 1) == labeled
  assert ssod_splits.fold_labeled_ids([str(i) for i in SYNTHETIC_IDS], 2, 1) == labeled


def test_counts_nesting_and_folds():
  # floor(p% of N), as STAC / Soft Teacher / Consistent-Teacher draw, at COCO's 118,287.
  assert [ssod_splits.num_labeled(p, 118287) for p in (1, 2, 5, 10)] == [1182, 2365, 5914, 11828]
  assert ssod_splits.num_labeled(0.5, 118287) == 591 and ssod_splits.num_labeled(1, 50) == 1
  folds = {}
  for fold in range(1, 6):
    previous = set()
    for percent in (1, 2, 5, 10):
      labeled = ssod_splits.fold_labeled_ids(SYNTHETIC_IDS, percent, fold)
      assert len(labeled) == 10 * percent and labeled == sorted(labeled)
      assert previous <= set(labeled)          # 1% inside 2% inside 5% inside 10%
      previous = set(labeled)
    folds[fold] = previous
  assert len({frozenset(s) for s in folds.values()}) == 5   # five different draws


# ------------------------------------------------------------------------ files from JSON
def _coco_json(path, ids, crowd_only=(), no_boxes=()):
  images = [{'id': i, 'file_name': f'{i:012d}.jpg', 'height': 8, 'width': 8} for i in ids]
  annotations = []
  for n, i in enumerate(ids):
    if i in no_boxes:
      continue
    annotations.append({'id': n + 1, 'image_id': i, 'category_id': 1, 'bbox': [1, 1, 3, 3],
                        'area': 9.0, 'iscrowd': int(i in crowd_only), 'segmentation': []})
  with open(path, 'w') as f:
    json.dump({'images': images, 'annotations': annotations,
               'categories': [{'id': 1, 'name': 'thing'}]}, f)
  return str(path)


def test_split_files_from_a_coco_json(tmp_path):
  annotations = _coco_json(tmp_path / 'instances_train2017.json', SYNTHETIC_IDS)
  out = str(tmp_path / 'splits')
  written = ssod_splits.run_make_ssod_splits(out, annotations=annotations)
  assert len(written) == 4 * 5
  names = sorted(os.listdir(out))
  assert names == sorted(f'coco_standard_{p}pct_fold{f}.json' for p in (1, 2, 5, 10)
                         for f in range(1, 6))
  with open(os.path.join(out, 'coco_standard_2pct_fold1.json')) as f:
    content = json.load(f)
  assert content['labeled_ids'] == PINNED_2PCT_FOLD1
  assert (content['num_images'], content['num_labeled'], content['num_unlabeled']) == (
      1000, 20, 980)
  assert (content['percent'], content['fold'], content['protocol']) == (2.0, 1, 'coco-standard')
  assert content['drawn_from'] == 'instances_train2017.json'
  assert content['all_ids_sha256'] == image_ids.ids_sha256(sorted(SYNTHETIC_IDS))
  assert content['labeled_ids_sha256'] == image_ids.ids_sha256(PINNED_2PCT_FOLD1)
  # Written again: the same bytes.
  before = {n: open(os.path.join(out, n), 'rb').read() for n in names}
  ssod_splits.run_make_ssod_splits(out, annotations=annotations)
  assert before == {n: open(os.path.join(out, n), 'rb').read() for n in names}
  assert ssod_splits.ssod_split_file(out, 2, 1) == os.path.join(out, names[names.index(
      'coco_standard_2pct_fold1.json')])


# ---------------------------------------------------------------- TFDS coco/2017, mocked
def _fake_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  """The builder's own feature spec with random content (images 10 x 10, 10 boxes), except
  'image/id' (coco: MOCK_COCO_IDS) and 'image/filename' (voc: '<split>_<i>.jpg'), so that the
  ids a split file names are there. Honours SkipDecoding and add_tfds_id as TFDS does."""
  del kwargs
  features = self.info.features
  num = len(MOCK_COCO_IDS) if self.name == 'coco' else 6
  generator = mocking.RandomFakeGenerator(features, num, constant_dynamic_shape=True)
  spec = tf.nest.map_structure(lambda t: tf.TensorSpec([10 if d is None else d for d in t.shape],
                                                       t.dtype), features.get_tensor_info())
  ds = tf.data.Dataset.from_generator(lambda: iter(generator), output_signature=spec).take(num)

  def fix(i, ex):
    if 'image/id' in ex:
      ex = dict(ex, **{'image/id': tf.gather(tf.constant(MOCK_COCO_IDS, tf.int64), i)})
    if 'image/filename' in ex and self.name == 'voc':
      ex = dict(ex, **{'image/filename': tf.strings.join(
          [str(split).replace('+', '_'), '_', tf.strings.as_string(i), '.jpg'])})
    b = ex['objects']['bbox']
    ex['objects'] = dict(ex['objects'], bbox=tf.concat(
        [tf.minimum(b[..., :2], b[..., 2:]), tf.maximum(b[..., :2], b[..., 2:])], -1))
    if decoders and isinstance(decoders.get('image'), tfds.decode.SkipDecoding):
      ex = dict(ex, image=tf.io.encode_png(ex['image']))
    if read_config and read_config.add_tfds_id:
      ex = dict(ex, tfds_id=tf.strings.join([f'{self.name}-{split}__', tf.strings.as_string(i)]))
    return ex

  return ds.enumerate().map(fix)


def mock_tfds():
  return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_dataset_fn=_fake_as_dataset)


def _ids(source):
  return sorted(int(ex[F.SOURCE_ID].numpy()) for ex in source.dataset())


@pytest.fixture(scope='module')
def tfds_splits(tmp_path_factory):
  """Split files of the mocked coco/2017 train, written by the tool's TFDS path."""
  out = str(tmp_path_factory.mktemp('tfds_splits'))
  with mock_tfds():
    written = ssod_splits.run_make_ssod_splits(out)   # default: TFDS coco/2017 train
  return out, {(c['percent'], c['fold']): c for c in written}


def test_split_files_from_tfds_keep_and_drop_through_tfds_source(tfds_splits):
  out, written = tfds_splits
  c = written[(5.0, 3)]
  assert c['drawn_from'] == 'tfds:coco/2017:train' and c['num_images'] == 60
  assert c['labeled_ids'] == ssod_splits.fold_labeled_ids(MOCK_COCO_IDS, 5, 3)
  path = ssod_splits.ssod_split_file(out, 5, 3)
  with mock_tfds():
    labeled = sources.tfds_source('coco/2017', 'train', image_ids_file=path)
    unlabeled = sources.tfds_source('coco/2017', 'train', image_ids_file=path,
                                    image_ids_mode='drop')
    assert _ids(labeled) == c['labeled_ids']
    assert _ids(unlabeled) == sorted(set(MOCK_COCO_IDS) - set(c['labeled_ids']))
    # The filter composes with host shards and images_only (pseudo-labeling's reading).
    shards = [{int(ex[F.SOURCE_ID].numpy()) for ex in unlabeled.dataset(
        num_shards=2, shard_index=k, images_only=True)} for k in range(2)]
    assert sorted(shards[0] | shards[1]) == _ids(unlabeled) and not shards[0] & shards[1]


# ------------------------------------------------------------------------ coco_json_source
def test_coco_json_source_keeps_drops_and_checks_the_ids(tmp_path):
  ids = [3, 5, 8, 13, 21, 34]
  (tmp_path / 'imgs').mkdir()
  for i in ids:
    (tmp_path / 'imgs' / f'{i:012d}.jpg').write_bytes(
        tf.io.encode_jpeg(np.full([8, 8, 3], i, np.uint8)).numpy())
  annotations = _coco_json(tmp_path / 'train.json', ids)
  ids_file = str(tmp_path / 'ids.json')
  image_ids.write_image_ids_file(ids_file, [21, 5], len(ids))
  kwargs = dict(include_masks=False, image_ids_file=ids_file)
  keep = sources.coco_json_source(annotations, str(tmp_path / 'imgs'), **kwargs)
  drop = sources.coco_json_source(annotations, str(tmp_path / 'imgs'), image_ids_mode='drop',
                                  **kwargs)
  assert _ids(keep) == [5, 21] and _ids(drop) == [3, 8, 13, 34]
  # A file of another dataset's ids: one line naming the binding, before any reading.
  image_ids.write_image_ids_file(ids_file, [5, 999], len(ids))
  with pytest.raises(UserError, match=r'image_ids_file=.*ids\.json: 1 of its 2 image ids are '
                                      r'not images of this source \(e\.g\. 999\)'):
    sources.coco_json_source(annotations, str(tmp_path / 'imgs'), **kwargs)


# --------------------------------------------------------------- importing other projects
def test_import_stac_soft_teacher_and_unbiased_teacher_splits(tmp_path):
  ids = SYNTHETIC_IDS[:200]
  no_boxes, crowd_only = {ids[0], ids[7]}, {ids[3]}
  annotations = _coco_json(tmp_path / 'instances_train2017.json', ids, crowd_only, no_boxes)
  out = str(tmp_path / 'splits')
  # STAC / Soft Teacher / Consistent-Teacher: instances_train2017.{fold}@{percent}.json.
  theirs = sorted(ids)[5:25:2]
  _coco_json(tmp_path / 'instances_train2017.2@10.json', theirs)
  c, = ssod_splits.run_make_ssod_splits(
      out, annotations=annotations, import_split_file=str(tmp_path / 'instances_train2017.2@10.json'),
      import_percent='10', import_fold='2')
  assert c['labeled_ids'] == theirs and c['path'].endswith('coco_standard_10pct_fold2.json')
  assert c['num_images'] == 200 and c['imported_kind'].startswith('coco-json')
  # Unbiased Teacher: indices into detectron2's list (sorted ids, images with a non-crowd box).
  detectron2_list = [i for i in sorted(ids) if i not in no_boxes | crowd_only]
  assert len(detectron2_list) == 197
  with open(tmp_path / 'COCO_supervision.txt', 'w') as f:
    json.dump({'1.0': {'0': [0], '1': [196, 0]}, '10.0': {'1': list(range(19))}}, f)
  c, = ssod_splits.run_make_ssod_splits(
      out, annotations=annotations, import_split_file=str(tmp_path / 'COCO_supervision.txt'),
      import_percent='1', import_fold='1')
  assert c['labeled_ids'] == sorted([detectron2_list[196], detectron2_list[0]])
  assert c['imported_key'] == ['1.0', '1'] and c['imported_index_base'] == 197
  # A plain list of ids, and the errors that name the flag.
  (tmp_path / 'ids.txt').write_text(f'{ids[4]}\n{ids[9]}\n')
  c, = ssod_splits.run_make_ssod_splits(out, annotations=annotations, import_percent=5,
                                        import_split_file=str(tmp_path / 'ids.txt'))
  assert c['labeled_ids'] == sorted([ids[4], ids[9]]) and c['fold'] == 1
  (tmp_path / 'bad.txt').write_text('12345678\n')
  with pytest.raises(UserError, match=r'--import_split=.*bad\.txt: 1 of its 1 image ids are '
                                      'not in instances_train2017.json'):
    ssod_splits.run_make_ssod_splits(out, annotations=annotations, import_percent=5,
                                     import_split_file=str(tmp_path / 'bad.txt'))
  with pytest.raises(UserError, match=r"no seed '3' under percent '10.0'.*--import_fold"):
    ssod_splits.run_make_ssod_splits(out, annotations=annotations, import_percent=10,
                                     import_fold=3,
                                     import_split_file=str(tmp_path / 'COCO_supervision.txt'))


# ------------------------------------------------------------------- one-line errors
def _error(fn, *args, **kwargs):
  return one_error_line(lambda: config_io.call_with_user_errors(fn, *args, **kwargs))


def test_bad_flags_and_bindings_stop_with_one_line(tmp_path):
  annotations = _coco_json(tmp_path / 'a.json', SYNTHETIC_IDS[:50])
  out = str(tmp_path / 'splits')
  run = ssod_splits.run_make_ssod_splits
  assert "--percents='3': not a percent" in _error(run, out, annotations=annotations,
                                                   percents=['1', '3'])
  assert "--folds='0': a fold is an integer from 1 to 10" in _error(
      run, out, annotations=annotations, folds='0')
  assert '--folds=11' in _error(run, out, annotations=annotations, folds=11)
  assert '--annotations=/nope.json: no such file' in _error(run, out, annotations='/nope.json')
  assert '--import_percent=None' in _error(run, out, annotations=annotations,
                                           import_split_file=annotations)
  assert not os.path.exists(out)   # nothing written before the flags are checked
  run(out, annotations=annotations, percents=['1'], folds='2')
  assert 'ssod_split_file.percent=3' in _error(ssod_splits.ssod_split_file, out, 3, 1)
  assert 'ssod_split_file.fold=0' in _error(ssod_splits.ssod_split_file, out, 1, 0)
  assert 'ssod_split_file.splits_dir' in _error(ssod_splits.ssod_split_file, out + 'x', 1, 1)
  line = _error(ssod_splits.ssod_split_file, out, 1, 5)   # fold 5 was not written
  assert 'ssod_split_file(percent=1, fold=5)=' in line and 'no such file' in line, line
  # An image-id file that is not one, through the source's binding.
  (tmp_path / 'ids.json').write_text('{"labeled_ids": [1]}')
  with mock_tfds():
    line = _error(sources.tfds_source, 'coco/2017', image_ids_file=str(tmp_path / 'ids.json'))
    assert 'image_ids_file=' in line and 'not an image-id file' in line, line
    (tmp_path / 'ids.json').write_text('not json')
    assert 'image_ids_file=' in _error(sources.tfds_source, 'coco/2017',
                                       image_ids_file=str(tmp_path / 'ids.json'))
    assert "image_ids_mode='both'" in _error(sources.tfds_source, 'coco/2017',
                                             image_ids_mode='both')


def test_binary_writes_the_files_and_prints_a_summary(tmp_path):
  annotations = _coco_json(tmp_path / 'a.json', SYNTHETIC_IDS)
  out = str(tmp_path / 'splits')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bin', 'make_ssod_splits.py'),
       f'--annotations={annotations}', f'--output_dir={out}', '--percents=2,10', '--folds=1'],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(out)) == ['coco_standard_10pct_fold1.json',
                                     'coco_standard_2pct_fold1.json']
  assert re.search(r'^\s+2\s+1\s+20\s+980\s+' + image_ids.ids_sha256(PINNED_2PCT_FOLD1)[:18],
                   result.stdout, re.M), result.stdout


# ------------------------------------------------------------------ the gin configs
def _header(path):
  return gin_header(os.path.join(REPO, path))


_command = documented_command


def test_configs_found():
  assert len(SSOD_GIN) == 12, SSOD_GIN


@pytest.mark.parametrize('path', SSOD_GIN)
def test_header_names_protocol_numbers_and_a_command_that_parses(path):
  header = _header(path)
  protocol = re.match(r' (COCO-standard (\d+)%|COCO-additional|VOC07\+12) ', header)
  assert protocol, header.split('\n')[0]
  assert 'Expected AP' in header and 'Steps:' in header
  if path.endswith('_self_training.gin'):
    published = {'COCO-standard 1%': ['20.75', '20.46', '25.50'],
                 'COCO-standard 2%': ['24.16', '30.70'],
                 'COCO-standard 5%': ['28.27', '30.74', '36.60'],
                 'COCO-standard 10%': ['31.50', '34.04', '40.20'],
                 'COCO-additional': ['48.20', '44.05'],
                 'VOC07+12': ['80.51', '54.48', '81.00', '59.00']}[protocol.group(1)]
    for number in published:
      assert number in header, (number, path)
  argv = _command(header)
  assert argv[:2] == ['python', ('bin/self_train.py' if path.endswith('_self_training.gin')
                                 else 'bin/train_teacher.py')]
  files = [a.split('=', 1)[1] for a in argv if a.startswith('--gin_file=')]
  params = [a.split('=', 1)[1] for a in argv if a.startswith('--gin_param=')]
  assert files[0] == path and any(a.startswith('--model_dir=') for a in argv)
  config_io.parse_gin([os.path.join(REPO, f) for f in files], params)
  steps = int(re.search(r'Steps: [^0-9]*([0-9,]+)', header).group(1).replace(',', ''))
  assert str(gin.query_parameter(f'{RUN_TRAIN}.train_steps')) == '%TRAIN_STEPS'
  assert gin.query_parameter('%TRAIN_STEPS') == steps
  assert gin.query_parameter(f'{RUN_TRAIN}.global_batch_size') == 256
  for macro in ('SSOD_SPLITS_DIR', 'COCO_UNLABELED2017_DIR'):   # REQUIRED inputs are set
    try:
      value = gin.query_parameter(f'%{macro}')
    except ValueError:
      continue
    assert not str(value).startswith('REQUIRED'), macro
  if protocol.group(2):
    assert gin.query_parameter('%SSOD_PERCENT') == int(protocol.group(2))
    assert f'coco_standard_{protocol.group(2)}pct' in path


def _task_and_unlabeled(path, params):
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([os.path.join(REPO, path)], params)
  with gin.config_scope('teacher'):
    task = gin.get_bindings(RUN_TRAIN)['task']
  with gin.config_scope('pseudo'):
    unlabeled = gin.get_bindings(RUN_PSEUDO).get('unlabeled_source')
  return task, unlabeled


def test_coco_standard_configs_read_the_fold_as_labeled_and_the_rest_as_unlabeled(tfds_splits):
  out, written = tfds_splits
  labeled_ids = written[(10.0, 2)]['labeled_ids']
  with mock_tfds():
    task, unlabeled = _task_and_unlabeled(
        'gin_configs/ssod/coco_standard_10pct_self_training.gin',
        [f"SSOD_SPLITS_DIR='{out}'", 'SSOD_FOLD=2'])
    assert task.num_classes == 81 and task.image_size == (1024, 1024)
    train = task.source('train')
    assert train.image_ids_file.endswith('coco_standard_10pct_fold2.json')
    assert _ids(train) == labeled_ids
    assert (unlabeled.tfds_name, unlabeled.split, unlabeled.image_ids_mode) == (
        'coco/2017', 'train', 'drop')
    assert _ids(unlabeled) == sorted(set(MOCK_COCO_IDS) - set(labeled_ids))
    assert task.source('eval').split == 'validation'
    # A fold that was never written: one line naming the binding, at start.
    line = one_error_line(lambda: config_io.call_with_user_errors(
        _task_and_unlabeled, 'gin_configs/ssod/coco_standard_10pct.gin',
        [f"SSOD_SPLITS_DIR='{out}'", 'SSOD_FOLD=7']))
    assert 'ssod_split_file(percent=10, fold=7)' in line, line


def test_coco_additional_and_voc_configs(tmp_path):
  folder = tmp_path / 'unlabeled2017'
  folder.mkdir()
  (folder / '000000000001.jpg').write_bytes(
      tf.io.encode_jpeg(np.zeros([8, 8, 3], np.uint8)).numpy())
  with mock_tfds():
    task, unlabeled = _task_and_unlabeled(
        'gin_configs/ssod/coco_additional_self_training.gin',
        [f"COCO_UNLABELED2017_DIR='{folder}'"])
    assert task.source('train').image_ids_file is None and len(_ids(task.source('train'))) == 60
    assert str(folder) in unlabeled.name and len(list(unlabeled.dataset())) == 1

    task, unlabeled = _task_and_unlabeled('gin_configs/ssod/voc07_voc12_self_training.gin', [])
    assert task.num_classes == 21 and task.image_size == (640, 640)
    train, test = task.source('train'), task.source('eval')
    assert (train.tfds_name, train.split) == ('voc/2007', 'train+validation')
    assert (test.tfds_name, test.split) == ('voc/2007', 'test')
    assert (unlabeled.tfds_name, unlabeled.split) == ('voc/2012', 'train+validation')
    ex = next(iter(unlabeled.dataset(images_only=True)))
    assert ex[F.SOURCE_ID].numpy() == b'train_validation_0.jpg'
    line = one_error_line(lambda: config_io.call_with_user_errors(
        _task_and_unlabeled, 'gin_configs/ssod/coco_additional_self_training.gin', []))
    assert 'COCO_UNLABELED2017_DIR' in line, line
