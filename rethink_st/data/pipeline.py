"""Input pipelines: decoded examples -> batched (images, labels) in Model Garden's formats.

    preprocess_for_inference(image, output_size)   the eval / export / pseudo-label path
    build_input(source, task=..., ...)             tf.data pipeline for training or eval
    Position(seed, step)                           where a seeded training stream starts
                                                   (rethink_st/data/seeded_stream.py)

Labels are exactly what Model Garden's parsers produce, so its losses and evaluators work:

  detection       `retinanet_input.Parser`: cls_targets, box_targets, anchor_boxes (dicts
                  keyed by level str), cls_weights, box_weights, image_info; for eval also
                  `groundtruths` (source_id, height, width, num_detections, image_info,
                  boxes in original-image pixels, classes, areas, is_crowds; padded to
                  max_num_instances with -1).
  segmentation    `segmentation_input.Parser`: masks [S, S, 1] float32 (IGNORE_LABEL where
                  ignored or padded), valid_masks, image_info; eval masks at output size.
  classification  int32 class [B] from groundtruth_label.

Training images go through an `rethink_st.augment.Augment` (S1..S4); eval images through
Model Garden's eval preprocessing (normalize, aspect-preserving resize, pad). Images are
normalized with ImageNet mean/std (`preprocess_ops.normalize_image`) before resizing, as in
Model Garden, so padding is 0.

A seeded training stream (`position`, which run_train passes for a run with a seed) is a
pure function of (seed, element index), so that a resumed run reads exactly what the
uninterrupted run read: how, and what is exact, in `rethink_st/data/seeded_stream.py`
(`Position`, `keyed_parser`).
"""
import zlib
from typing import Optional, Sequence, Tuple

import gin
import tensorflow as tf

from official.vision.dataloaders import utils as mg_utils
from official.vision.ops import anchor as mg_anchor
from official.vision.ops import box_ops
from official.vision.ops import preprocess_ops

from rethink_st import augment as augment_lib
from rethink_st import features as F
from rethink_st.data.seeded_stream import Position, keyed_parser
from rethink_st.errors import UserError
from rethink_st.modeling import anchors as anchors_lib

DTYPES = ('float32', 'bfloat16', 'float16')


def preprocess_for_inference(image_uint8, output_size) -> Tuple[tf.Tensor, tf.Tensor]:
  """Model Garden's RetinaNet eval preprocessing of one image.

  `preprocess_ops.normalize_image`, then `resize_and_crop_image` to fit `output_size`
  (aspect ratio kept, no jitter) padded at the bottom/right to `output_size`.

  Args:
    image_uint8: [H, W, 3] uint8 image.
    output_size: (height, width) or int.

  Returns:
    (normalized float32 image [S_h, S_w, 3], image_info [4, 2] float32: [[orig_h, orig_w],
    [scaled_h, scaled_w], [y_scale, x_scale], [0, 0]]).
  """
  size = list(augment_lib.size_pair(output_size, 'preprocess_for_inference.output_size'))
  image = preprocess_ops.normalize_image(image_uint8)
  image, image_info = preprocess_ops.resize_and_crop_image(
      image, size, padded_size=size, aug_scale_min=1.0, aug_scale_max=1.0)
  return tf.ensure_shape(image, size + [3]), image_info


def process_source_id(source_id: tf.Tensor) -> tf.Tensor:
  """int64 image id for COCO evaluation: the number itself if `source_id` is a decimal
  string (Model Garden's `process_source_id`), else a stable 53-bit hash of it."""
  source_id = tf.convert_to_tensor(source_id)
  if source_id.dtype != tf.string:
    return mg_utils.process_source_id(source_id)
  numeric = tf.strings.regex_full_match(source_id, r'-?[0-9]{1,18}')
  return tf.cond(
      numeric,
      lambda: mg_utils.process_source_id(source_id),
      lambda: tf.strings.to_hash_bucket_fast(source_id, 1 << 53))


def _check_keys(element_spec, required, where):
  if not isinstance(element_spec, dict):
    raise UserError(f'{where}: the source must yield dicts of decoded features '
                    f'(rethink_st/features.py), got {element_spec!r}')
  missing = [k for k in required if k not in element_spec]
  if missing:
    raise UserError(f'{where}: the source has no {", ".join(missing)} '
                    f'(it yields {", ".join(sorted(element_spec))})')


def _without(example, *keys):
  return {k: v for k, v in example.items() if k not in keys}


def _gather_instances(example, indices):
  example = dict(example)
  for key in augment_lib.INSTANCE_KEYS:
    if key in example:
      example[key] = tf.gather(example[key], indices)
  return example


class InputParser:
  """Turns one decoded example into (image, labels) for one task kind. A Task hands its
  parser class to `build_input` (`Task.input_parser`); a subclass sets `kind`, implements
  `parse` and says which decoded features it reads (`required_keys`)."""
  kind = ''

  def __init__(self, is_training, augment, output_size, anchor_cfg, match_threshold,
               unmatched_threshold, max_num_instances, dtype, boxes_from_masks):
    self.is_training = is_training
    self.augment = augment
    self.output_size = list(output_size)
    self.max_num_instances = max_num_instances
    self.dtype = dtype
    self.boxes_from_masks = boxes_from_masks

  @classmethod
  def required_keys(cls, is_training: bool) -> Tuple[str, ...]:
    """The decoded features (rethink_st/features.py) the source must yield."""
    return (F.IMAGE,)

  @classmethod
  def check_output_size(cls, output_size, anchor_cfg) -> None:
    """One UserError line if `output_size` does not suit this kind's model."""

  @tf.autograph.experimental.do_not_convert
  def __call__(self, example):
    return self.parse(example)

  def parse(self, example):
    raise NotImplementedError

  def _without_unused_instances(self, example):
    """Drops per-instance keys when no op of the policy reads the boxes (saves S1/S4 the
    box work for segmentation and classification)."""
    if self.boxes_from_masks or self.augment.needs_boxes:
      return example
    return _without(example, *augment_lib.INSTANCE_KEYS)


class DetectionParser(InputParser):
  """Model Garden's RetinaNet labels (anchor targets; eval groundtruths)."""
  kind = 'detection'

  def __init__(self, is_training, augment, output_size, anchor_cfg, match_threshold,
               unmatched_threshold, max_num_instances, dtype, boxes_from_masks):
    super().__init__(is_training, augment, output_size, anchor_cfg, match_threshold,
                     unmatched_threshold, max_num_instances, dtype, boxes_from_masks)
    # Called inside the map function: the anchors become graph constants (capturing
    # eagerly made anchors instead costs ~6% of the detection parse time).
    self.anchor_generator = mg_anchor.build_anchor_generator(
        min_level=anchor_cfg.min_level, max_level=anchor_cfg.max_level,
        num_scales=anchor_cfg.num_scales, aspect_ratios=list(anchor_cfg.aspect_ratios),
        anchor_size=anchor_cfg.anchor_size)
    self.labeler = mg_anchor.AnchorLabeler(match_threshold=match_threshold,
                                           unmatched_threshold=unmatched_threshold)

  @classmethod
  def required_keys(cls, is_training):
    return (F.IMAGE, F.BOXES, F.CLASSES, F.IS_CROWD) if is_training else F.DETECTION_KEYS

  @classmethod
  def check_output_size(cls, output_size, anchor_cfg):
    stride = 2 ** anchor_cfg.max_level
    if output_size[0] % stride or output_size[1] % stride:
      raise UserError(f'build_input.output_size {output_size} must be a multiple of '
                      f'2**max_level = {stride} (anchor_config.max_level='
                      f'{anchor_cfg.max_level}) for detection')

  def parse(self, example):
    # Only what the labels need goes through augmentation.
    keys = (F.IMAGE, F.BOXES, F.CLASSES) + ((F.INSTANCE_MASKS,) if self.boxes_from_masks
                                            else ())
    data = {k: example[k] for k in keys if k in example}
    if self.is_training:   # Model Garden's skip_crowd_during_training
      data = _gather_instances(data, tf.where(tf.logical_not(example[F.IS_CROWD]))[:, 0])
    out = self.augment(data, training=self.is_training, normalize=True)
    boxes = out[F.BOXES] * tf.constant(self.output_size * 2, tf.float32)
    anchor_boxes = self.anchor_generator(image_size=self.output_size)
    cls_targets, box_targets, _, cls_weights, box_weights = self.labeler.label_anchors(
        anchor_boxes, boxes, tf.expand_dims(out[F.CLASSES], axis=1))
    # A pseudo box in the ignore band (class F.IGNORE_BOX_CLASS; pseudo_label_source's
    # ignore_threshold): the anchors it matches get weight 0 in both losses and are not
    # counted as positives. (Model Garden's gt_weights would also zero the background anchors
    # whose nearest box it is.) A matched anchor is one with box weight 1; its class target
    # is the box's class, so < 0 only for these boxes.
    flat_cls = tf.concat([tf.reshape(cls_targets[k], [-1]) for k in anchor_boxes], axis=0)
    ignored = tf.logical_and(box_weights > 0, flat_cls < 0)
    cls_weights = tf.where(ignored, tf.zeros_like(cls_weights), cls_weights)
    box_weights = tf.where(ignored, tf.zeros_like(box_weights), box_weights)
    labels = {
        'cls_targets': cls_targets,
        'box_targets': box_targets,
        'anchor_boxes': anchor_boxes,
        'cls_weights': cls_weights,
        'box_weights': box_weights,
        'image_info': out[augment_lib.IMAGE_INFO],
    }
    if self.is_training:   # boxes left after augmentation (the student logs them per image)
      labels['num_boxes'] = tf.reduce_sum(tf.cast(out[F.CLASSES] >= 0, tf.int32))
    else:
      image_shape = tf.shape(example[F.IMAGE])[0:2]
      groundtruths = {
          'source_id': process_source_id(example[F.SOURCE_ID]),
          'height': tf.cast(example[F.HEIGHT], tf.int64),
          'width': tf.cast(example[F.WIDTH], tf.int64),
          'num_detections': tf.shape(example[F.CLASSES]),
          'image_info': out[augment_lib.IMAGE_INFO],
          'boxes': box_ops.denormalize_boxes(tf.cast(example[F.BOXES], tf.float32),
                                             image_shape),
          'classes': example[F.CLASSES],
          'areas': tf.cast(example[F.AREA], tf.float32),
          'is_crowds': tf.cast(example[F.IS_CROWD], tf.int32),
      }
      labels['groundtruths'] = mg_utils.pad_groundtruths_to_fixed_size(
          groundtruths, self.max_num_instances)
    return tf.cast(out[F.IMAGE], self.dtype), labels


class SegmentationParser(InputParser):
  """Model Garden's segmentation labels (masks, valid_masks, image_info)."""
  kind = 'segmentation'

  @classmethod
  def required_keys(cls, is_training):
    return (F.IMAGE, F.SEMANTIC_MASK)

  def parse(self, example):
    data = example if self.boxes_from_masks else _without(example, F.INSTANCE_MASKS)
    if self.is_training:
      data = self._without_unused_instances(data)
    else:
      data = _without(data, *augment_lib.INSTANCE_KEYS)
    out = self.augment(data, training=self.is_training, normalize=True)
    masks = tf.cast(out[F.SEMANTIC_MASK], tf.float32)
    labels = {
        'masks': masks,
        'valid_masks': tf.not_equal(masks, float(F.IGNORE_LABEL)),
        'image_info': out[augment_lib.IMAGE_INFO],
    }
    return tf.cast(out[F.IMAGE], self.dtype), labels


class ClassificationParser(InputParser):
  """An int32 class per image (groundtruth_label)."""
  kind = 'classification'

  @classmethod
  def required_keys(cls, is_training):
    return (F.IMAGE, F.LABEL)

  def parse(self, example):
    label = tf.cast(example[F.LABEL], tf.int32)
    if self.is_training:
      data = self._without_unused_instances(
          _without(example, F.INSTANCE_MASKS, F.SEMANTIC_MASK))
      image = self.augment(data, training=True, normalize=True)[F.IMAGE]
    else:   # centred: aspect-preserving resize, padded evenly on both sides
      image = preprocess_ops.normalize_image(example[F.IMAGE])
      image, _ = preprocess_ops.resize_and_crop_image(
          image, self.output_size, padded_size=self.output_size, centered_crop=True)
      image = tf.ensure_shape(image, self.output_size + [3])
    return tf.cast(image, self.dtype), label


# The kinds build_input knows by name (its `task` binding); a Task hands its parser class.
PARSERS = {p.kind: p for p in (DetectionParser, SegmentationParser, ClassificationParser)}
TASKS = tuple(PARSERS)


def _parser_class(task):
  if isinstance(task, type) and issubclass(task, InputParser):
    return task
  parser = PARSERS.get(task) if isinstance(task, str) else None
  if parser is None:
    raise UserError(f'build_input.task: unknown task {task!r}; choose one of '
                    f'{", ".join(TASKS)} (or a Task\'s input_parser class)')
  return parser


@gin.configurable(denylist=['position'])
def build_input(source,
                *,
                task='detection',
                global_batch_size: int,
                is_training: bool,
                output_size: Sequence[int] = (640, 640),
                augment: Optional[augment_lib.Augment] = None,
                anchor: Optional[anchors_lib.AnchorConfig] = None,
                match_threshold: float = 0.5,
                unmatched_threshold: float = 0.5,
                max_num_instances: int = 100,
                dtype: str = 'float32',
                shuffle_buffer: int = 256,
                seed: Optional[int] = None,
                input_context: Optional[tf.distribute.InputContext] = None,
                repeat: Optional[bool] = None,
                cache: bool = False,
                boxes_from_masks: bool = False,
                position: Optional[Position] = None) -> tf.data.Dataset:
  """Batched (images, labels) for `task` from a Source's decoded examples.

  Args:
    source: a `rethink_st.data.sources.Source` (or a tf.data.Dataset of decoded examples).
    task: 'detection', 'segmentation' or 'classification' (PARSERS), or an InputParser
      subclass (what a Task hands it: its `input_parser`).
    global_batch_size: batch size over all replicas; each input pipeline batches
      `input_context.get_per_replica_batch_size(global_batch_size)`.
    is_training: augment (`augment`), drop crowd boxes (detection), shuffle, drop the last
      partial batch; otherwise Model Garden's eval preprocessing and eval labels.
    output_size: (height, width) of the network input; for detection a multiple of
      2**max_level of the anchors.
    augment: the training Augment (default: `Augment(output_size=output_size)`, which picks
      up gin bindings of Augment); its output_size must equal `output_size`.
    anchor: an AnchorConfig (default `anchors.anchor_config()`, shared with the model).
    match_threshold, unmatched_threshold: Model Garden's AnchorLabeler IoU thresholds.
    max_num_instances: eval groundtruths are padded (or clipped) to this many boxes.
    dtype: image dtype, 'float32', 'bfloat16' or 'float16'.
    shuffle_buffer: when training, decoded examples are shuffled in a buffer of this size
      after `cache` (a Source shuffles its own records, but a cache freezes that order) or
      when `source` is a plain tf.data.Dataset; 0 disables it.
    seed: seed of the source's and this shuffle (augmentation randomness follows TF's
      global seed).
    input_context: a tf.distribute.InputContext (passed to the source, sets batch size).
    repeat: repeat forever; default is_training.
    cache: cache decoded examples in memory (small datasets only).
    boxes_from_masks: keep instance masks through augmentation so that boxes after
      geometric ops are the tight boxes of the moved masks (exact, slower); by default
      detection and segmentation drop them and boxes move by Model Garden's box functions.
    position: training only: a seeded stream that starts `position.step` steps in
      (rethink_st/data/seeded_stream.py); None: the augmentation draws from TF's stateful
      ops and the stream starts at its beginning.
  """
  parser_class = _parser_class(task)
  where = f'build_input(task={parser_class.kind!r})'
  if dtype not in DTYPES:
    raise UserError(f'build_input.dtype: {dtype!r} is not one of {", ".join(DTYPES)}')
  try:
    global_batch_size = int(global_batch_size)
  except (TypeError, ValueError):
    raise UserError(f'build_input.global_batch_size must be a positive int, '
                    f'got {global_batch_size!r}') from None
  if global_batch_size < 1:
    raise UserError(f'build_input.global_batch_size must be a positive int, '
                    f'got {global_batch_size!r}')
  if int(max_num_instances) < 1:
    raise UserError(f'build_input.max_num_instances must be >= 1, got {max_num_instances!r}')
  output_size = augment_lib.size_pair(output_size, 'build_input.output_size')
  if augment is None:
    augment = augment_lib.Augment(output_size=output_size)
  elif tuple(augment.output_size) != tuple(output_size):
    raise UserError(f'build_input.output_size {output_size} differs from the Augment\'s '
                    f'output_size {tuple(augment.output_size)}; bind the same size to both')
  anchor_cfg = anchor if anchor is not None else anchors_lib.anchor_config()
  parser_class.check_output_size(output_size, anchor_cfg)
  repeat = is_training if repeat is None else bool(repeat)

  if hasattr(source, 'dataset'):
    kwargs = {'shuffle': bool(is_training and not cache), 'input_context': input_context,
              'instance_masks': bool(boxes_from_masks)}   # nothing else reads them
    if seed is not None:
      kwargs['seed'] = seed
    ds = source.dataset(**kwargs)
  elif isinstance(source, tf.data.Dataset):
    ds = source
  else:
    raise UserError(f'build_input.source must be a rethink_st.data.sources.Source, '
                    f'got {source!r}')
  _check_keys(ds.element_spec, parser_class.required_keys(bool(is_training)),
              f'{where} with {source!r}')

  parser = parser_class(bool(is_training), augment, output_size, anchor_cfg, match_threshold,
                        unmatched_threshold, int(max_num_instances), dtype,
                        bool(boxes_from_masks))
  keyed = position is not None and is_training
  if keyed:   # this pipeline's part of the run's stream: its own shuffle and draws
    if position.step < 0:
      raise UserError(f'build_input.position: step {position.step} must be >= 0')
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    stream_id = zlib.crc32(f'{position.stream}/{pipeline_id}'.encode())
    if seed is None:
      seed = zlib.crc32(f'{position.seed}/{position.stream}/{pipeline_id}'.encode())
  if cache:
    ds = ds.cache()
  # A Source shuffles its records itself, but not again after a cache.
  if is_training and shuffle_buffer and (cache or not hasattr(source, 'dataset')):
    ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  if keyed:
    # Each step takes global_batch_size / num_input_pipelines elements from each pipeline
    # (one per-replica batch for each of its replicas). Skipped before the parser: no
    # augmentation for them.
    per_step = global_batch_size // (input_context.num_input_pipelines
                                     if input_context is not None else 1)
    ds = ds.enumerate().skip(position.step * per_step)
    parser = keyed_parser(parser, (position.seed, stream_id))
  ds = ds.map(parser, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=bool(seed is not None or not is_training))
  batch_size = (input_context.get_per_replica_batch_size(global_batch_size)
                if input_context is not None else global_batch_size)
  ds = ds.batch(batch_size, drop_remainder=bool(is_training))
  return ds.prefetch(tf.data.AUTOTUNE)
