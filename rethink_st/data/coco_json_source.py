"""A COCO-format JSON annotation file plus a folder of images: any user's custom dataset.

Class ids: the file's categories, sorted by their `id`, become contiguous class ids 1..K
(K = num_classes; 0 is background). `source.category_ids[c - 1]` is the file's category id of
class c and `source.category_names[c - 1]` its name, so results can be mapped back;
`source.label_space` (rethink_st/data/label_space.py) holds both and travels to pseudo
labels, evaluation and export. `num_classes`, when bound (gin_configs/custom/ binds it to
NUM_CLASSES), must equal K: a class count that disagrees with the file is one error line
naming both.

Per image (source_id = str(image id), images in increasing id order):
  boxes     COCO [x, y, w, h] pixels -> normalized [ymin, xmin, ymax, xmax], clipped to [0, 1],
            using the image's `height`/`width` from the JSON. Annotations with w <= 0 or
            h <= 0 are skipped (as Model Garden's create_coco_tf_record.py does).
  area      the annotation's `area`, else w * h.
  masks     polygons, RLE or uncompressed RLE -> float32 0/1 [N, H, W] (pycocotools.mask),
            when include_masks.
  semantic  when semantic_masks: uint8 [H, W, 1], 0 background, class id where an instance
            covers the pixel; larger instances are painted first so smaller ones stay on top.
Images are read with tf.io.read_file + tf.io.decode_image(channels=3, expand_animations=False).
"""
import contextlib
import io
import json
import os

import gin
import numpy as np
import tensorflow as tf, tf_keras  # pylint: disable=unused-import
from pycocotools import coco as coco_api

from rethink_st.data import features as F
from rethink_st.data import label_space as label_space_lib
from rethink_st.data import source_base
from rethink_st.errors import UserError

_GIN_MODULE = 'rethink_st.data.sources'


class CocoJsonSource(source_base.Source):
  """COCO JSON annotations (loaded with pycocotools.COCO) + an image directory."""

  def __init__(self, annotation_file: str, image_dir: str, *, include_masks: bool = True,
               semantic_masks: bool = False, fraction: float = 1.0, fraction_seed: int = 0,
               image_ids_file=None, image_ids_mode: str = 'keep', num_classes=None):
    self.annotation_file, self.image_dir = annotation_file, image_dir
    self.expected_num_classes = num_classes
    self.include_masks, self.semantic_masks = bool(include_masks), bool(semantic_masks)
    super().__init__(f'coco_json_source(annotation_file={annotation_file!r})',
                     fraction=fraction, fraction_seed=fraction_seed,
                     image_ids_file=image_ids_file, image_ids_mode=image_ids_mode)
    self.coco = None
    self.category_ids, self.category_names = [], []
    self.label_space = None
    self.image_ids, self.skipped_annotations = [], 0
    self.validate()

  # ---- validation -------------------------------------------------------------------------

  def _fail(self, what: str):
    raise UserError(f'coco_json_source: annotation_file {self.annotation_file!r} {what}')

  def validate(self) -> None:
    path = self.annotation_file
    if isinstance(path, str) and path.startswith('REQUIRED'):
      raise UserError(f'coco_json_source: annotation_file is not set: {path}')
    if isinstance(self.image_dir, str) and self.image_dir.startswith('REQUIRED'):
      raise UserError(f'coco_json_source: image_dir is not set: {self.image_dir}')
    if not tf.io.gfile.exists(path):
      raise UserError(f'coco_json_source: annotation_file {path!r} does not exist')
    if tf.io.gfile.isdir(path):
      raise UserError(f'coco_json_source: annotation_file {path!r} is a directory')
    with tf.io.gfile.GFile(path, 'r') as f:
      text = f.read()
    if not text.strip():
      self._fail('is empty')
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      self._fail(f'is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})')
    if not isinstance(data, dict):
      self._fail('is not a COCO JSON object (expected {"images": ..., "annotations": ..., '
                 '"categories": ...})')
    for key in ('images', 'annotations', 'categories'):
      if not isinstance(data.get(key), list):
        self._fail(f'has no {key!r} list')
    if not data['images']:
      self._fail("has an empty 'images' list")

    images = {}
    for i, image in enumerate(data['images']):
      missing = [k for k in ('id', 'file_name', 'height', 'width')
                 if not isinstance(image, dict) or k not in image]
      if missing:
        self._fail(f"images[{i}] has no {missing[0]!r}")
      if image['id'] in images:
        self._fail(f"has two images with id={image['id']!r}")
      images[image['id']] = image

    categories = {}
    for i, category in enumerate(data['categories']):
      if not isinstance(category, dict) or 'id' not in category:
        self._fail(f"categories[{i}] has no 'id'")
      categories[category['id']] = category.get('name', str(category['id']))
    if not categories:
      self._fail("has an empty 'categories' list")
    self._check_num_classes(categories)

    for i, ann in enumerate(data['annotations']):
      if not isinstance(ann, dict):
        self._fail(f'annotations[{i}] is not an object')
      ann_name = f"annotation id={ann.get('id', i)!r}"
      for key in ('image_id', 'category_id', 'bbox'):
        if key not in ann:
          self._fail(f'{ann_name} has no {key!r}')
      if ann['image_id'] not in images:
        self._fail(f"{ann_name} refers to image_id={ann['image_id']!r}, which is not in 'images'")
      if ann['category_id'] not in categories:
        self._fail(f"{ann_name} refers to category_id={ann['category_id']!r}, which is not in "
                   "'categories'")
      bbox = ann['bbox']
      if not (isinstance(bbox, list) and len(bbox) == 4 and
              all(isinstance(v, (int, float)) for v in bbox)):
        self._fail(f'{ann_name} has bbox={bbox!r}; expected [x, y, width, height]')
      if (self.include_masks or self.semantic_masks) and 'segmentation' not in ann:
        self._fail(f"{ann_name} has no 'segmentation' (needed for include_masks/semantic_masks)")

    if not tf.io.gfile.isdir(self.image_dir):
      raise UserError(f'coco_json_source: image_dir {self.image_dir!r} does not exist')
    present = set()
    for root, _, files in tf.io.gfile.walk(self.image_dir):
      present.update(os.path.normpath(os.path.join(root, name)) for name in files)
    for image_id in sorted(images):
      path = os.path.normpath(os.path.join(self.image_dir, images[image_id]['file_name']))
      if path not in present:
        raise UserError(f"coco_json_source: image file {images[image_id]['file_name']!r} "
                        f'(image id={image_id!r}) not found in image_dir {self.image_dir!r}')

    coco = coco_api.COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress.
      coco.createIndex()
    self.coco = coco
    self.category_ids = sorted(categories)
    self.category_names = [categories[c] for c in self.category_ids]
    self._class_of = {c: i + 1 for i, c in enumerate(self.category_ids)}
    self.num_classes = len(self.category_ids)
    self.label_space = label_space_lib.LabelSpace(
        tuple(self.category_ids), tuple(str(n) for n in self.category_names))
    self.image_ids = sorted(images)
    self.check_image_ids(str(i) for i in self.image_ids)
    self.skipped_annotations = sum(1 for a in data['annotations']
                                   if a['bbox'][2] <= 0 or a['bbox'][3] <= 0)

  def _check_num_classes(self, categories) -> None:
    expected = self.expected_num_classes
    if expected is None:
      return
    if isinstance(expected, str) and expected.startswith('REQUIRED'):
      raise UserError(f'NUM_CLASSES is not set ({expected}); annotation_file '
                      f'{self.annotation_file!r} has {len(categories)} categories')
    if expected != len(categories):
      space = label_space_lib.LabelSpace(tuple(sorted(categories)), tuple(
          str(categories[c]) for c in sorted(categories)))
      raise UserError(f'coco_json_source: NUM_CLASSES (num_classes) = {expected!r}, but '
                      f'annotation_file {self.annotation_file!r} has {space.describe()}')

  # ---- reading -----------------------------------------------------------------------------

  def _keyed_dataset(self, *, shuffle, seed, input_context):
    del shuffle, seed  # The base class shuffles the (cheap) indices.
    ids = [str(i) for i in self.image_ids]
    paths = [os.path.join(self.image_dir, self.coco.imgs[i]['file_name'])
             for i in self.image_ids]
    payload = {'index': np.arange(len(ids), dtype=np.int64), 'path': paths}
    ds = tf.data.Dataset.from_tensor_slices((ids, payload))
    return source_base.shard_for_input_context(ds, input_context)

  def _annotations(self, index):
    """numpy: classes, is_crowd, area, boxes, masks [N,H,W] uint8, semantic [H,W,1] uint8."""
    info = self.coco.imgs[self.image_ids[int(index)]]
    height, width = int(info['height']), int(info['width'])
    anns = [a for a in self.coco.imgToAnns.get(info['id'], [])
            if a['bbox'][2] > 0 and a['bbox'][3] > 0]
    n = len(anns)
    classes = np.array([self._class_of[a['category_id']] for a in anns], np.int64)
    is_crowd = np.array([bool(a.get('iscrowd', 0)) for a in anns], np.bool_)
    area = np.array([a.get('area', a['bbox'][2] * a['bbox'][3]) for a in anns], np.float32)
    xywh = np.array([a['bbox'] for a in anns], np.float32).reshape([n, 4])
    boxes = np.stack([xywh[:, 1] / height, xywh[:, 0] / width,
                      (xywh[:, 1] + xywh[:, 3]) / height, (xywh[:, 0] + xywh[:, 2]) / width],
                     axis=1).clip(0.0, 1.0).astype(np.float32)
    need_masks = self.include_masks or self.semantic_masks
    masks = np.zeros([n if need_masks else 0, height, width], np.uint8)
    if need_masks:
      for i, ann in enumerate(anns):
        if ann['segmentation']:  # An empty polygon list leaves the mask empty.
          masks[i] = self.coco.annToMask(ann)
    semantic = np.zeros([height, width, 1], np.uint8)
    if self.semantic_masks:
      for i in np.argsort(-area, kind='stable'):
        semantic[masks[i] > 0, 0] = classes[i]
    if not self.include_masks:
      masks = np.zeros([0, height, width], np.uint8)
    return classes, is_crowd, area, boxes, masks, semantic

  def _decode_image(self, source_id, payload):
    return source_base.image_example(source_id, tf.io.read_file(payload['path']))

  def _decode(self, source_id, payload):
    index = payload['index']
    image_only = self._decode_image(source_id, payload)
    image, height, width = image_only[F.IMAGE], image_only[F.HEIGHT], image_only[F.WIDTH]
    classes, is_crowd, area, boxes, masks, semantic = tf.numpy_function(
        self._annotations, [index],
        [tf.int64, tf.bool, tf.float32, tf.float32, tf.uint8, tf.uint8], stateful=False)
    classes.set_shape([None])
    is_crowd.set_shape([None])
    area.set_shape([None])
    boxes.set_shape([None, 4])
    example = {F.SOURCE_ID: source_id, F.IMAGE: image, F.HEIGHT: height, F.WIDTH: width,
               F.CLASSES: classes, F.IS_CROWD: is_crowd, F.AREA: area, F.BOXES: boxes}
    if self.include_masks:
      masks.set_shape([None, None, None])
      example[F.INSTANCE_MASKS] = tf.cast(masks, tf.float32)
    if self.semantic_masks:
      semantic.set_shape([None, None, 1])
      example[F.SEMANTIC_MASK] = semantic
    return example


@gin.configurable(module=_GIN_MODULE)
def coco_json_source(annotation_file: str, image_dir: str, include_masks: bool = True,
                     semantic_masks: bool = False, fraction: float = 1.0,
                     fraction_seed: int = 0, image_ids_file=None,
                     image_ids_mode: str = 'keep', num_classes=None) -> CocoJsonSource:
  """A COCO JSON file + image folder; categories sorted by id become classes 1..K.

  Raises UserError at construction for a missing, empty or malformed annotation file
  (not JSON; no 'images'/'annotations'/'categories'; an annotation naming a missing image or
  category), a missing image_dir or image file, a bad fraction, or an image_ids_file
  (keep, image_ids_mode='keep', or drop, 'drop', the image ids it lists; e.g. a
  semi-supervised fold of bin/make_ssod_splits.py) that is malformed or lists ids the
  annotation file does not have, or a `num_classes` (the number of object categories the
  config expects, e.g. %NUM_CLASSES; None: not checked) other than the file's.
  """
  return CocoJsonSource(annotation_file, image_dir, include_masks=include_masks,
                        semantic_masks=semantic_masks, fraction=fraction,
                        fraction_seed=fraction_seed, image_ids_file=image_ids_file,
                        image_ids_mode=image_ids_mode, num_classes=num_classes)
