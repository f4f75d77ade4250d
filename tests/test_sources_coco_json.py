"""coco_json_source: COCO JSON + image folder -> boxes, classes 1..K, masks; bad-input errors."""
import json

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
from pycocotools import mask as mask_utils
import pytest
import tensorflow as tf

from rethink_st.data import features as F
from rethink_st.data import sources
from rethink_st.errors import UserError

H, W = 20, 40


def _rle(mask):
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  rle['counts'] = rle['counts'].decode('ascii')
  return rle


def make_dataset(root, num_images=3):
  """Images 1..n of 20x40; categories 5 ('cat') and 17 ('dog') -> classes 1 and 2."""
  (root / 'imgs').mkdir()
  images = []
  for i in range(1, num_images + 1):
    name = f'img{i}.png'
    (root / 'imgs' / name).write_bytes(
        tf.io.encode_png(np.full([H, W, 3], i, np.uint8)).numpy())
    images.append({'id': i, 'file_name': name, 'height': H, 'width': W})
  big = np.zeros([H, W], np.uint8)
  big[0:10, 0:20] = 1                       # 200 px
  small = np.zeros([H, W], np.uint8)
  small[4:6, 4:8] = 1                       # 8 px, inside big
  crowd = np.zeros([H, W], np.uint8)
  crowd[10:20, 30:40] = 1
  annotations = [
      # polygon (a 10 x 10 square at x=20..30, y=5..15), category 17 -> class 2
      {'id': 1, 'image_id': 1, 'category_id': 17, 'bbox': [20, 5, 10, 10], 'area': 100.0,
       'iscrowd': 0, 'segmentation': [[20, 5, 30, 5, 30, 15, 20, 15]]},
      # compressed RLE, category 5 -> class 1
      {'id': 2, 'image_id': 1, 'category_id': 5, 'bbox': [0, 0, 20, 10], 'area': 200.0,
       'iscrowd': 0, 'segmentation': _rle(big)},
      {'id': 3, 'image_id': 1, 'category_id': 17, 'bbox': [4, 4, 4, 2], 'area': 8.0,
       'iscrowd': 0, 'segmentation': _rle(small)},
      # uncompressed RLE crowd on image 2
      {'id': 4, 'image_id': 2, 'category_id': 5, 'bbox': [30, 10, 10, 10], 'area': 100.0,
       'iscrowd': 1, 'segmentation': {'size': [H, W], 'counts': _uncompressed(crowd)}},
      # zero-width box: skipped
      {'id': 5, 'image_id': 2, 'category_id': 5, 'bbox': [1, 1, 0, 3], 'area': 0.0,
       'iscrowd': 0, 'segmentation': [[1, 1, 1, 4, 1, 4]]},
  ]
  categories = [{'id': 17, 'name': 'dog'}, {'id': 5, 'name': 'cat'}]
  data = {'images': images, 'annotations': annotations, 'categories': categories}
  path = root / 'instances.json'
  path.write_text(json.dumps(data))
  return str(path), str(root / 'imgs'), data


def _uncompressed(mask):
  flat = mask.flatten(order='F')
  counts, value, run = [], 0, 0
  for v in flat:
    if v == value:
      run += 1
    else:
      counts.append(run)
      value, run = v, 1
  counts.append(run)
  return counts


def by_id(source, **kwargs):
  return {ex[F.SOURCE_ID].numpy().decode(): ex for ex in source.dataset(**kwargs)}


def test_boxes_classes_masks_and_category_map(tmp_path):
  ann, img_dir, _ = make_dataset(tmp_path)
  source = sources.coco_json_source(ann, img_dir, semantic_masks=True)
  assert source.num_classes == 2
  assert source.category_ids == [5, 17] and source.category_names == ['cat', 'dog']
  assert source.skipped_annotations == 1
  examples = by_id(source)
  assert sorted(examples) == ['1', '2', '3']
  one = examples['1']
  assert one[F.IMAGE].shape == (H, W, 3) and one[F.IMAGE].dtype == tf.uint8
  assert int(one[F.IMAGE][0, 0, 0]) == 1
  assert int(one[F.HEIGHT]) == H and int(one[F.WIDTH]) == W
  assert one[F.CLASSES].numpy().tolist() == [2, 1, 2]
  np.testing.assert_allclose(one[F.BOXES].numpy(), [
      [5 / H, 20 / W, 15 / H, 30 / W], [0, 0, 10 / H, 20 / W], [4 / H, 4 / W, 6 / H, 8 / W]],
                             atol=1e-6)
  np.testing.assert_allclose(one[F.AREA].numpy(), [100, 200, 8])
  assert one[F.IS_CROWD].numpy().tolist() == [False, False, False]
  masks = one[F.INSTANCE_MASKS].numpy()
  assert masks.dtype == np.float32 and masks.shape == (3, H, W)
  assert set(np.unique(masks)) <= {0.0, 1.0}
  assert masks[1].sum() == 200 and masks[2].sum() == 8
  assert 90 <= masks[0].sum() <= 121  # rasterized polygon of a 10 x 10 square
  assert masks[0][10, 25] == 1 and masks[0][0, 0] == 0
  sem = one[F.SEMANTIC_MASK].numpy()
  assert sem.shape == (H, W, 1) and sem.dtype == np.uint8
  assert sem[0, 0, 0] == 1          # big 'cat'
  assert sem[5, 5, 0] == 2          # small 'dog' painted on top of the big cat
  assert sem[10, 25, 0] == 2        # polygon dog
  assert sem[19, 0, 0] == 0         # background
  two = examples['2']
  assert two[F.CLASSES].numpy().tolist() == [1]  # the zero-width box is skipped
  assert two[F.IS_CROWD].numpy().tolist() == [True]
  assert two[F.INSTANCE_MASKS].numpy().sum() == 100
  three = examples['3']
  assert three[F.BOXES].shape == (0, 4) and three[F.INSTANCE_MASKS].shape == (0, H, W)


def test_without_masks(tmp_path):
  ann, img_dir, _ = make_dataset(tmp_path)
  ex = by_id(sources.coco_json_source(ann, img_dir, include_masks=False))['1']
  assert F.INSTANCE_MASKS not in ex and F.SEMANTIC_MASK not in ex
  assert ex[F.CLASSES].numpy().tolist() == [2, 1, 2]
  # A semantic mask can be derived without yielding the instance masks.
  ex = by_id(sources.coco_json_source(ann, img_dir, include_masks=False,
                                      semantic_masks=True))['1']
  assert F.INSTANCE_MASKS not in ex and ex[F.SEMANTIC_MASK].numpy()[5, 5, 0] == 2


def test_fraction_shards_shuffle(tmp_path):
  ann, img_dir, _ = make_dataset(tmp_path, num_images=40)
  full = set(by_id(sources.coco_json_source(ann, img_dir, include_masks=False)))
  half = sources.coco_json_source(ann, img_dir, include_masks=False, fraction=0.5,
                                  fraction_seed=4)
  kept = set(by_id(half))
  assert kept < full
  assert kept == {i for i in full if sources.in_fraction(i, 0.5, 4).numpy()}
  shards = [set(by_id(half, num_shards=2, shard_index=i)) for i in range(2)]
  assert shards[0] | shards[1] == kept and not shards[0] & shards[1]
  order = [ex[F.SOURCE_ID].numpy() for ex in half.dataset(shuffle=True, seed=1)]
  assert sorted(order) == sorted(i.encode() for i in kept)


# ---- bad input --------------------------------------------------------------------------------

def _write(tmp_path, data, name='bad.json'):
  path = tmp_path / name
  path.write_text(data if isinstance(data, str) else json.dumps(data))
  return str(path)


def _subdir(tmp_path, name):
  path = tmp_path / name
  path.mkdir()
  return path


def _error(ann, img_dir, **kwargs):
  with pytest.raises(UserError) as e:
    sources.CocoJsonSource(ann, img_dir, **kwargs)
  message = str(e.value)
  assert '\n' not in message
  return message


def test_missing_annotation_file(tmp_path):
  missing = str(tmp_path / 'nope.json')
  message = _error(missing, str(tmp_path))
  assert missing in message and 'does not exist' in message


def test_empty_and_not_json(tmp_path):
  empty = _write(tmp_path, '', 'empty.json')
  assert 'is empty' in _error(empty, str(tmp_path)) and empty in _error(empty, str(tmp_path))
  broken = _write(tmp_path, '{"images": [', 'broken.json')
  message = _error(broken, str(tmp_path))
  assert broken in message and 'not valid JSON' in message and 'line 1' in message
  listy = _write(tmp_path, '[1, 2]', 'list.json')
  assert 'not a COCO JSON object' in _error(listy, str(tmp_path))


@pytest.mark.parametrize('key', ['images', 'annotations', 'categories'])
def test_missing_top_level_key(tmp_path, key):
  ann, img_dir, data = make_dataset(tmp_path)
  del data[key]
  bad = _write(tmp_path, data)
  message = _error(bad, img_dir)
  assert bad in message and f"no '{key}' list" in message


def test_annotation_with_unknown_image_or_category(tmp_path):
  ann, img_dir, data = make_dataset(tmp_path)
  data['annotations'][1]['image_id'] = 99
  message = _error(_write(tmp_path, data), img_dir)
  assert 'annotation id=2' in message and 'image_id=99' in message
  ann, img_dir, data = make_dataset(_subdir(tmp_path, 'x'))
  data['annotations'][0]['category_id'] = 3
  message = _error(_write(tmp_path, data, 'cat.json'), img_dir)
  assert 'annotation id=1' in message and 'category_id=3' in message


def test_malformed_entries(tmp_path):
  ann, img_dir, data = make_dataset(tmp_path)
  data['images'][0].pop('height')
  assert "images[0] has no 'height'" in _error(_write(tmp_path, data, 'a.json'), img_dir)
  _, _, data = make_dataset(_subdir(tmp_path, 'b'))
  data['annotations'][0]['bbox'] = [1, 2, 3]
  assert 'bbox=[1, 2, 3]' in _error(_write(tmp_path, data, 'b.json'), img_dir)
  _, _, data = make_dataset(_subdir(tmp_path, 'c'))
  del data['annotations'][0]['segmentation']
  assert "no 'segmentation'" in _error(_write(tmp_path, data, 'c.json'), img_dir)
  # ... which is fine when masks are not asked for.
  assert sources.CocoJsonSource(str(tmp_path / 'c.json'), img_dir, include_masks=False)


def test_missing_image_dir_and_image_file(tmp_path):
  ann, img_dir, _ = make_dataset(tmp_path)
  missing_dir = str(tmp_path / 'no_images')
  message = _error(ann, missing_dir)
  assert missing_dir in message and 'image_dir' in message
  (tmp_path / 'imgs' / 'img2.png').unlink()
  message = _error(ann, img_dir)
  assert "'img2.png'" in message and 'image id=2' in message and img_dir in message


def test_bad_fraction(tmp_path):
  ann, img_dir, _ = make_dataset(tmp_path)
  with pytest.raises(UserError, match=r'coco_json_source.*fraction=0'):
    sources.coco_json_source(ann, img_dir, fraction=0)


# --- the label space (gin_configs/custom/: NUM_CLASSES checked against the file) ----------

def test_label_space_is_the_files_categories_sorted_by_id(tmp_path):
  from rethink_st.data import label_space  # pylint: disable=g-import-not-at-top
  ann, img_dir, _ = make_dataset(tmp_path)
  source = sources.coco_json_source(ann, img_dir, num_classes=2)
  space = source.label_space
  assert space.category_ids == (5, 17) and space.names == ('cat', 'dog')
  assert space.category_map() == {1: 5, 2: 17} and not space.is_contiguous()
  assert label_space.LabelSpace.from_json(space.to_json()) == space
  assert space.describe() == '2 classes (5=cat, 17=dog)'


def test_a_num_classes_other_than_the_files_is_one_line_naming_both(tmp_path):
  ann, img_dir, _ = make_dataset(tmp_path)
  with pytest.raises(UserError) as e:
    sources.coco_json_source(ann, img_dir, num_classes=3)
  assert str(e.value).splitlines()[0] == (f"coco_json_source: NUM_CLASSES (num_classes) = 3, but "
                          f"annotation_file '{ann}' has 2 classes (5=cat, 17=dog)")
  with pytest.raises(UserError, match=r'^coco_json_source: annotation_file is not set: '
                                      r'REQUIRED: set TRAIN_ANNOTATIONS'):
    sources.coco_json_source('REQUIRED: set TRAIN_ANNOTATIONS (...)', img_dir)


def test_a_task_whose_class_count_differs_from_its_source_is_one_line(tmp_path):
  from rethink_st.data import label_space  # pylint: disable=g-import-not-at-top
  from rethink_st.training import tasks  # pylint: disable=g-import-not-at-top
  ann, img_dir, _ = make_dataset(tmp_path)
  source = sources.coco_json_source(ann, img_dir)
  task = tasks.DetectionTask(model_fn=lambda **_: None, num_classes=3, train_source=source)
  assert label_space.label_space_of(task) is source.label_space
  evaluator = task.new_evaluator()   # results in the file's category ids and names
  assert evaluator._category_map == {1: 5, 2: 17}  # pylint: disable=protected-access
  wrong = tasks.DetectionTask(model_fn=lambda **_: None, num_classes=4, train_source=source)
  with pytest.raises(UserError, match=r'^DetectionTask.num_classes=4 \(3 classes \+ '
                                      r'background\), but its train_source coco_json_source'):
    label_space.label_space_of(wrong)
  assert label_space.num_classes_with_background(2) == 3
  with pytest.raises(UserError, match='^NUM_CLASSES is not set: REQUIRED'):
    label_space.num_classes_with_background('REQUIRED: set NUM_CLASSES')
