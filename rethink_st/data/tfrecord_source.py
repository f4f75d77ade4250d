"""Model Garden TFRecords (detection, segmentation, classification) found by glob.

Records are `tf.train.Example`s with Model Garden's keys (those of `create_coco_tf_record.py`),
decoded by `official.vision.dataloaders.tf_example_decoder.TfExampleDecoder`, plus this
project's extra keys (`rethink_st.data.features`):

    image/segmentation/class/encoded (PNG)  -> groundtruth_semantic_mask uint8 [H, W, 1]
    image/class/label (int64)               -> groundtruth_label int64 [] (as stored)
    image/object/score (float list)         -> groundtruth_scores float32 [N]

Which optional keys a source yields is decided once, from the first record: instance masks
(`image/object/mask`) and the three extra keys are yielded iff that record has them. A later
record that lacks one still decodes: no masks -> [0, H, W], no semantic mask -> all
IGNORE_LABEL, no label -> -1, no scores -> 1.0 for every box. Records without
`image/source_id` get Model Garden's generated id (a hash of the encoded image).
"""
from typing import Optional, Sequence, Union

import gin
import tensorflow as tf, tf_keras  # pylint: disable=unused-import
from official.vision.dataloaders import tf_example_decoder

from rethink_st.data import features as F
from rethink_st.data import source_base
from rethink_st.errors import UserError

_GIN_MODULE = 'rethink_st.data.sources'
_MASK = 'image/object/mask'
_SOURCE_ID = 'image/source_id'
_ENCODED = 'image/encoded'


def _generated_source_id(image_bytes):
  # Same as Model Garden's tf_example_decoder._generate_source_id (22 bits, float32-safe).
  return tf.strings.as_string(tf.strings.to_hash_bucket_fast(image_bytes, 2 ** 22 - 1))


def _split_patterns(file_pattern) -> list:
  if isinstance(file_pattern, str):
    return [p.strip() for p in file_pattern.split(',') if p.strip()]
  return [str(p) for p in file_pattern]


def _mg_decoder(include_mask: bool) -> tf_example_decoder.TfExampleDecoder:
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=include_mask)
  # Model Garden's decoder falls back to a generated id when image/source_id is empty,
  # but fails when it is absent; give it a default so both cases decode.
  keys_to_features = decoder._keys_to_features  # pylint: disable=protected-access
  keys_to_features[_SOURCE_ID] = tf.io.FixedLenFeature((), tf.string, '')
  return decoder


class TFRecordSource(source_base.Source):
  """Model Garden tf.Example TFRecords matching one or more glob patterns (sorted)."""

  def __init__(self, file_pattern: Union[str, Sequence[str]], *, fraction: float = 1.0,
               fraction_seed: int = 0, num_classes: Optional[int] = None,
               name: Optional[str] = None):
    self.file_pattern = file_pattern
    super().__init__(name or f'tfrecord_source(file_pattern={file_pattern!r})',
                     fraction=fraction, fraction_seed=fraction_seed, num_classes=num_classes)
    self.files = []
    self.has_masks = self.has_semantic_mask = self.has_label = self.has_scores = False
    self._decoder = None
    self.validate()

  def validate(self) -> None:
    patterns = _split_patterns(self.file_pattern)
    if not patterns:
      raise UserError(f'{self.name}: file_pattern is empty')
    files = []
    for pattern in patterns:
      matched = tf.io.gfile.glob(pattern)
      if not matched:
        raise UserError(f'{self.name}: file_pattern {pattern!r} matches no files')
      files.extend(matched)
    self.files = sorted(set(files))
    first = self._first_example()
    feature = first.features.feature
    if _ENCODED not in feature:
      raise UserError(f'{self.name}: records of {self.files[0]!r} have no {_ENCODED!r} '
                      'feature (not Model Garden image tf.Examples)')
    self.has_masks = _MASK in feature
    self.has_semantic_mask = F.TFEX_SEMANTIC_MASK in feature
    self.has_label = F.TFEX_LABEL in feature
    self.has_scores = F.TFEX_SCORE in feature
    self._decoder = _mg_decoder(include_mask=self.has_masks)
    self._decoder_without_masks = _mg_decoder(include_mask=False)

  def _first_example(self) -> tf.train.Example:
    """The first record of the first non-empty file; UserError if unreadable or all empty."""
    for path in self.files:
      try:
        for record in tf.data.TFRecordDataset(path).take(1):
          try:
            return tf.train.Example.FromString(record.numpy())
          except Exception:  # pylint: disable=broad-except
            raise UserError(f'{self.name}: {path!r} does not hold tf.train.Example '
                            'records') from None
      except tf.errors.OpError as e:
        raise UserError(f'{self.name}: {path!r} is not a readable TFRecord file '
                        f'({type(e).__name__})') from None
    raise UserError(f'{self.name}: the {len(self.files)} files matching '
                    f'{self.file_pattern!r} hold no records')

  def _keyed_dataset(self, *, shuffle, seed, input_context):
    files = tf.data.Dataset.from_tensor_slices(self.files)
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    shard_by_file = num_pipelines > 1 and len(self.files) >= num_pipelines
    if shard_by_file:
      files = source_base.shard_for_input_context(files, input_context)
    if shuffle:
      files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(16, len(self.files)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_pipelines > 1 and not shard_by_file:
      ds = source_base.shard_for_input_context(ds, input_context)
    return ds.map(self._key, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  @staticmethod
  def _key(serialized):
    parsed = tf.io.parse_single_example(serialized, {
        _SOURCE_ID: tf.io.FixedLenFeature((), tf.string, ''),
        _ENCODED: tf.io.FixedLenFeature((), tf.string, ''),
    })
    source_id = tf.cond(tf.strings.length(parsed[_SOURCE_ID]) > 0,
                        lambda: parsed[_SOURCE_ID],
                        lambda: _generated_source_id(parsed[_ENCODED]))
    return source_id, serialized

  def _decode_image(self, source_id, serialized):
    # The image only, decoded as Model Garden's decoder does (~3x cheaper than `_decode` per
    # 128 px digit scene).
    encoded = tf.io.parse_single_example(
        serialized, {_ENCODED: tf.io.FixedLenFeature((), tf.string, '')})[_ENCODED]
    return source_base.image_example(source_id, encoded)

  def _decode(self, source_id, serialized):
    del source_id  # The decoder derives the same id.
    return self._decode_with(self._decoder, serialized)

  def _decode_without_masks(self, source_id, serialized):
    del source_id
    return self._decode_with(self._decoder_without_masks, serialized)

  def _decode_with(self, decoder, serialized):
    decoded = decoder.decode(serialized)
    example = {k: decoded[k] for k in F.DETECTION_KEYS}
    if F.INSTANCE_MASKS in decoded:
      example[F.INSTANCE_MASKS] = decoded[F.INSTANCE_MASKS]
    extra_spec = {}
    if self.has_semantic_mask:
      extra_spec[F.TFEX_SEMANTIC_MASK] = tf.io.FixedLenFeature((), tf.string, '')
    if self.has_label:
      extra_spec[F.TFEX_LABEL] = tf.io.VarLenFeature(tf.int64)
    if self.has_scores:
      extra_spec[F.TFEX_SCORE] = tf.io.VarLenFeature(tf.float32)
    if not extra_spec:
      return example
    extra = tf.io.parse_single_example(serialized, extra_spec)
    image_shape = tf.shape(decoded[F.IMAGE])
    if self.has_semantic_mask:
      png = extra[F.TFEX_SEMANTIC_MASK]
      mask = tf.cond(
          tf.strings.length(png) > 0,
          lambda: tf.io.decode_png(png, channels=1, dtype=tf.uint8),
          lambda: tf.fill([image_shape[0], image_shape[1], 1],
                          tf.constant(F.IGNORE_LABEL, tf.uint8)))
      mask.set_shape([None, None, 1])
      example[F.SEMANTIC_MASK] = mask
    if self.has_label:
      labels = tf.sparse.to_dense(extra[F.TFEX_LABEL])
      example[F.LABEL] = tf.cond(tf.size(labels) > 0, lambda: labels[0],
                                 lambda: tf.constant(-1, tf.int64))
    if self.has_scores:
      scores = tf.sparse.to_dense(extra[F.TFEX_SCORE])
      num_boxes = tf.shape(example[F.CLASSES])[0]
      example[F.SCORES] = tf.cond(tf.size(scores) > 0, lambda: scores,
                                  lambda: tf.ones([num_boxes], tf.float32))
    return example


@gin.configurable(module=_GIN_MODULE)
def tfrecord_source(file_pattern: Union[str, Sequence[str]], fraction: float = 1.0,
                    fraction_seed: int = 0, num_classes: Optional[int] = None
                    ) -> TFRecordSource:
  """Model Garden TFRecords: a glob, a comma-separated list of globs, or a list of globs.

  `num_classes` is what the records' class ids mean (e.g. 90 for Model Garden's COCO
  TFRecords, which keep COCO's original category ids 1..90); None if unknown.
  Raises UserError at construction if a pattern matches nothing or the first record is
  not a readable image tf.Example.
  """
  return TFRecordSource(file_pattern, fraction=fraction, fraction_seed=fraction_seed,
                        num_classes=num_classes)
