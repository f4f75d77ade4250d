"""TFDS datasets by name and split, converted to the decoded-example contract.

Supported (tensorflow-datasets 4.9.10 feature specs):

  coco/2017, coco/2014   detection. Decoded by Model Garden's `MSCOCODecoder`; TFDS stores
                         COCO's 80 used categories as contiguous labels 0..79, yielded here
                         as class ids 1..80 (num_classes = 80, NOT COCO's original 1..90 ids).
                         No instance masks: TFDS's coco has none.
  voc/2012, voc/2007     detection only: TFDS's voc has boxes and labels but NO segmentation
                         masks, so it yields boxes + classes 1..20 (num_classes = 20),
                         source_id = image/filename, is_crowd all False (VOC's "difficult"
                         flags are not carried). Segmentation VOC comes by TFRecords
                         (`tfrecord_source`).
  imagenet2012 (and any  classification: image + groundtruth_label (0-based, as TFDS stores
  dataset with image +   it; num_classes = 1000 for imagenet2012), source_id = file_name.
  ClassLabel 'label')    No boxes.
  digit_scenes           this project's embedded dataset (rethink_st.data.digit_scenes_tfds;
                         generated locally into data_dir on first use, no download), and any
                         other dataset with `objects/{bbox,label}`: detection, classes
                         label + 1 (digit_scenes: num_classes = 10), plus a semantic mask and
                         an image-level label (0-based, -1 for scenes) if the dataset has
                         them; source_id = str(image_id), as in its TFRecords.

Images are read undecoded (`tfds.decode.SkipDecoding`) so that the labeled-fraction and host
shard filters run before any image is decoded.
"""
import importlib
from typing import Optional

from absl import logging
import gin
import tensorflow as tf, tf_keras  # pylint: disable=unused-import
import tensorflow_datasets as tfds
from official.vision.dataloaders import tfds_detection_decoders

from rethink_st.data import features as F
from rethink_st.data import source_base
from rethink_st.errors import UserError

_GIN_MODULE = 'rethink_st.data.sources'

# TFDS builders defined in this project, imported (registered) on first use.
_PROJECT_BUILDERS = {'digit_scenes': 'rethink_st.data.digit_scenes_tfds'}

# Candidate semantic-mask features of project builders (an Image feature, 1 channel).
_SEMANTIC_MASK_FEATURES = ('segmentation_mask', 'semantic_mask', 'mask')


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


def _register_project_builder(name: str) -> None:
  base = name.split('/')[0].split(':')[0]
  module = _PROJECT_BUILDERS.get(base)
  if module:
    try:
      importlib.import_module(module)
    except ImportError:
      pass  # Not written yet: tfds.builder below reports the name as unknown.


def _source_id_fn(features):
  """How to get a stable string id from a raw TFDS example of this feature spec."""
  for key in ('source_id', 'image/id', 'image_id', 'image/filename', 'file_name', 'id'):
    if key in features:
      def source_id(ex, key=key):
        value = ex[key]
        return value if value.dtype == tf.string else tf.strings.as_string(value)
      return source_id
  return lambda ex: ex['tfds_id']  # Stable for a prepared dataset: file name and index.


class TFDSSource(source_base.Source):
  """A TFDS dataset split (`tfds.builder(name, data_dir=data_dir)`), already prepared."""

  def __init__(self, name: str, split: str = 'train', data_dir: Optional[str] = None, *,
               fraction: float = 1.0, fraction_seed: int = 0,
               image_ids_file: Optional[str] = None, image_ids_mode: str = 'keep'):
    self.tfds_name, self.split, self.data_dir = name, split, data_dir
    super().__init__(f'tfds_source(name={name!r}, split={split!r})', fraction=fraction,
                     fraction_seed=fraction_seed, image_ids_file=image_ids_file,
                     image_ids_mode=image_ids_mode)
    self.builder = None
    self.kind = None
    self.validate()

  def validate(self) -> None:
    if not isinstance(self.tfds_name, str) or not self.tfds_name:
      raise UserError(f'tfds_source: name={self.tfds_name!r} must be a TFDS dataset name')
    _register_project_builder(self.tfds_name)
    try:
      builder = tfds.builder(self.tfds_name, data_dir=self.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise UserError(f'tfds_source: unknown TFDS dataset name={self.tfds_name!r}') from None
    except (ValueError, AssertionError, KeyError) as e:
      raise UserError(f'tfds_source: cannot build TFDS dataset {self.tfds_name!r}: '
                      f'{_first_line(e)}') from None
    self.builder = builder
    self.kind = self._kind(builder.info.features)
    if self._is_project_builder() and not builder.is_prepared():
      # This project's builders generate their data locally (no download): build on first use.
      builder.download_and_prepare()
    try:
      builder.as_dataset(split=self.split, decoders={'image': tfds.decode.SkipDecoding()})
    except AssertionError:
      raise UserError(
          f'tfds_source: TFDS dataset {self.tfds_name!r} is not prepared in '
          f'data_dir={str(builder.data_dir_root)!r} (build it there first, e.g. '
          f'`tfds build {self.tfds_name} --data_dir=...`)') from None
    except (ValueError, KeyError) as e:
      raise UserError(f'tfds_source: TFDS dataset {self.tfds_name!r} has no split '
                      f'{self.split!r}: {_first_line(e)}') from None
    self._warn_if_ids_file_is_for_another_split()

  def _warn_if_ids_file_is_for_another_split(self) -> None:
    """TFDS cannot list a split's ids without reading it: compare sizes instead."""
    if self.image_ids_meta is None:
      return
    try:
      size = int(self.builder.info.splits[self.split].num_examples)
    except Exception:  # pylint: disable=broad-except
      size = 0  # Unknown (e.g. under tfds.testing.mock_data).
    drawn_from = self.image_ids_meta.get('num_images')
    if size and drawn_from and int(drawn_from) != size:
      logging.warning('%s: image_ids_file=%s was drawn from %s images; this split has %d',
                      self.name, self.image_ids_file, drawn_from, size)

  def _is_project_builder(self) -> bool:
    return self.builder.name in _PROJECT_BUILDERS

  def _kind(self, features) -> str:
    if 'image' not in features or not isinstance(features['image'], tfds.features.Image):
      raise UserError(f'tfds_source: TFDS dataset {self.tfds_name!r} has no "image" feature')
    if features['image'].shape[-1] not in (1, 3):
      raise UserError(f'tfds_source: TFDS dataset {self.tfds_name!r} has images of shape '
                      f'{features["image"].shape}; expected 1 or 3 channels')
    if 'objects' in features and {'bbox', 'label'} <= set(features['objects'].keys()):
      self.num_classes = features['objects']['label'].num_classes
      if self.builder.name == 'coco':
        return 'coco'
      return 'detection'
    if 'label' in features and isinstance(features['label'], tfds.features.ClassLabel):
      self.num_classes = features['label'].num_classes
      return 'classification'
    raise UserError(f'tfds_source: TFDS dataset {self.tfds_name!r} has neither objects/bbox '
                    'and objects/label nor a ClassLabel "label"; rethink_st cannot convert it')

  def _num_files(self) -> int:
    try:
      return len(self.builder.info.splits[self.split].file_instructions)
    except Exception:  # pylint: disable=broad-except
      return 0  # Unknown (e.g. under tfds.testing.mock_data).

  def _keyed_dataset(self, *, shuffle, seed, input_context):
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    # TFDS shards by file and refuses when there are fewer files than pipelines; then
    # every pipeline reads all files and keeps every n-th example instead.
    shard_by_file = num_pipelines > 1 and self._num_files() >= num_pipelines
    read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=seed,
                                  input_context=input_context if shard_by_file else None)
    ds = self.builder.as_dataset(split=self.split, shuffle_files=shuffle,
                                 read_config=read_config,
                                 decoders={'image': tfds.decode.SkipDecoding()})
    if num_pipelines > 1 and not shard_by_file:
      ds = source_base.shard_for_input_context(ds, input_context)
    source_id = _source_id_fn(self.builder.info.features)
    return ds.map(lambda ex: (source_id(ex), ex), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)

  def _image(self, raw):
    features = self.builder.info.features
    image = features['image'].decode_example(raw['image'])
    if features['image'].shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    image.set_shape([None, None, 3])
    return image, tf.shape(image, out_type=tf.int64)

  def _decode_image(self, source_id, raw):
    image, shape = self._image(raw)
    # The record holds the encoded image unless the builder stores decoded pixels.
    encoded = raw['image'] if raw['image'].dtype == tf.string else tf.constant(b'')
    return {F.SOURCE_ID: source_id, F.IMAGE: image, F.HEIGHT: shape[0], F.WIDTH: shape[1],
            F.ENCODED_IMAGE: encoded}

  def _decode(self, source_id, raw):
    image, shape = self._image(raw)
    features = self.builder.info.features
    if self.kind == 'classification':
      return {F.SOURCE_ID: source_id, F.IMAGE: image, F.HEIGHT: shape[0], F.WIDTH: shape[1],
              F.LABEL: tf.cast(raw['label'], tf.int64)}
    if self.kind == 'coco':
      decoded = tfds_detection_decoders.MSCOCODecoder().decode(dict(raw, image=image))
      example = {k: decoded[k] for k in F.DETECTION_KEYS}
      example[F.CLASSES] = tf.cast(example[F.CLASSES], tf.int64) + 1  # 0..79 -> 1..80
      return example
    objects = raw['objects']
    boxes = tf.reshape(tf.cast(objects['bbox'], tf.float32), [-1, 4])
    classes = tf.cast(objects['label'], tf.int64) + 1
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    if 'area' in objects:
      area = tf.cast(objects['area'], tf.float32)
    else:
      area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * height * width
    if 'is_crowd' in objects:
      is_crowd = tf.cast(objects['is_crowd'], tf.bool)
    else:
      is_crowd = tf.zeros_like(classes, tf.bool)
    example = {F.SOURCE_ID: source_id, F.IMAGE: image, F.HEIGHT: shape[0], F.WIDTH: shape[1],
               F.CLASSES: classes, F.IS_CROWD: is_crowd, F.AREA: area, F.BOXES: boxes}
    if 'label' in features and isinstance(features['label'], tfds.features.ClassLabel):
      example[F.LABEL] = tf.cast(raw['label'], tf.int64)  # e.g. digit_scenes' iconic splits
    for key in _SEMANTIC_MASK_FEATURES:
      if key in features and isinstance(features[key], tfds.features.Image):
        mask = raw[key]
        if mask.dtype == tf.string:
          mask = features[key].decode_example(mask)
        mask = tf.cast(mask, tf.uint8)[:, :, :1]
        mask.set_shape([None, None, 1])
        example[F.SEMANTIC_MASK] = mask
        break
    return example


@gin.configurable(module=_GIN_MODULE)
def tfds_source(name: str, split: str = 'train', data_dir: Optional[str] = None,
                fraction: float = 1.0, fraction_seed: int = 0,
                image_ids_file: Optional[str] = None,
                image_ids_mode: str = 'keep') -> TFDSSource:
  """A prepared TFDS dataset split, e.g. name='coco/2017', split='train'.

  image_ids_file: keep (image_ids_mode='keep') or drop ('drop') the images it lists, by
  source_id (COCO's image id for coco/2017); e.g. a semi-supervised fold of
  bin/make_ssod_splits.py (rethink_st/data/image_ids.py).

  Raises UserError at construction for an unknown name, a dataset not prepared in
  `data_dir`, an unknown split, a bad fraction, or a missing or malformed image_ids_file.
  """
  return TFDSSource(name, split, data_dir, fraction=fraction, fraction_seed=fraction_seed,
                    image_ids_file=image_ids_file, image_ids_mode=image_ids_mode)
