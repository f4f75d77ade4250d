"""run_pseudo_label: a teacher labels an unlabeled source, sharded and resumable.

Detection: boxes with score >= `score_threshold` (0.5, the paper's) are kept; Soft-NMS is the
model's (bind build_retinanet.soft_nms_sigma). The model's NMS is per class, so one object
often gets boxes of several classes; class-agnostic suppression (`class_agnostic_nms_iou`,
0.5; None: off) then keeps, across classes, the highest-scored box and drops every box whose
IoU with a kept, higher-scored one is >= the threshold (tf.image.non_max_suppression_padded,
the rule of Model Garden's NMS). Greedy suppression decides each box from the higher-scored
ones alone, so suppressing before or after the score threshold gives the same boxes: it runs
in the graph on all detections, and each detection is flagged. Images with no kept box are
written too, as background. Segmentation: probabilities averaged over `scales` (and flips)
at the original size; a pixel gets the argmax class when its probability >= `mask_threshold`,
else 255.

Output (see `shards.py`): tf.Example TFRecords that the ordinary input pipeline reads (kept
boxes only), a COCO JSON of ALL the teacher's detections with their scores, the suppressed
ones flagged "suppressed": 1 (so precision and recall, with and without the suppression, can
be read at any threshold afterwards), and stats JSON (`suppressed`: boxes at or above the
score threshold that the suppression dropped; `class_agnostic_nms_iou`: the setting). A chunk
with no detection or no readable image is written like any other. Memory stays flat: each
batch is written and dropped (a chunk's COCO JSON is streamed to disk, and merged chunk by
chunk); only fixed-size counters are kept.

Unreadable images (corrupt, zero bytes, not an image, a vanished file) are skipped and
counted, never a crash, whatever the source. Decoding starts unguarded (no cost); when an
image fails, the batches from the first image not yet labeled on are rebuilt with
`Source.dataset(images_only=True, unreadable='flag')` (one guarded decode per image, shared by
all sources, ~0.1-0.2 ms CPU each) for the rest of the run. A flagged image passes through its
batch as not VALID and is counted by the chunk being filled (`unreadable_skipped` in its
stats, summed in stats.json). A chunk thus covers a fixed stretch of the source (its images
plus its unreadable ones), and a resumed run skips exactly the stretches of the complete
chunks (without decoding them): which images are skipped depends only on their bytes, so
every image is labeled once and every skip counted once. An error that is not an image's (a
corrupt TFRecord file, say) comes back under the guard and still stops the run.

Speed: the per-image work outside the model is kept to a few small numpy operations.
  - The image is written as the source's own encoded bytes (JPEG or PNG, exactly what the
    teacher decoded), not re-encoded: PNG encoding cost more than the model (~15-35 ms per
    128 px image on 2 CPU cores) and makes JPEG datasets several times larger. Sources whose
    bytes cannot be had, and formats other than JPEG/PNG, are PNG-encoded inside tf.data.
  - Every batch has the same static size (the last one is padded and the padding dropped),
    so the predict function is traced once.
  - Segmentation masks are mapped back to the original size and thresholded in the graph.
  - Writing (tf.Examples, COCO JSON, counters) runs in a thread, overlapped with the next
    batch's inference.
"""
import contextlib
import json
import queue
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence

import gin
import numpy as np
import tensorflow as tf

from rethink_st import config_io
from rethink_st import run_lock
from rethink_st.data import features as F
from rethink_st.data import sources
from rethink_st.data import tfexample
from rethink_st.errors import UserError
from rethink_st.pseudo_label import shards
from rethink_st.training import run as run_lib
from rethink_st.training import strategy as strategy_lib
from rethink_st.training import tasks as tasks_lib

# Keys of the inference batches (besides the model's 'input' and 'image_info').
ENCODED = 'encoded'   # the image bytes written to the output (JPEG or PNG)
SHAPE = 'shape'       # original (height, width), int32
VALID = 'valid'       # False on the padding of the last batch and on unreadable images
UNREADABLE = 'unreadable'  # 1 for an image the source could not decode (not VALID), int32
_META_KEYS = (F.SOURCE_ID, ENCODED, SHAPE, VALID, UNREADABLE)
_PNG_COMPRESSION = 1  # fallback encoding: lossless either way, level 1 is ~4x faster than 6


def _restore_teacher(model, teacher_checkpoint: str) -> str:
  """Restores the model's weights (only: a training checkpoint's optimizer is left out);
  one UserError line if the checkpoint holds another model."""
  path = run_lib.resolve_init_checkpoint(teacher_checkpoint)
  try:
    status = tf.train.Checkpoint(model=model).read(path)
    status.expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError,
          tf.errors.NotFoundError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f'run_pseudo_label.teacher_checkpoint={teacher_checkpoint} holds a '
                    f'checkpoint of a different model ({path}): {first}') from None
  return path


# --- input: decoded images + their encoded bytes ---------------------------------------------

def _bytes_to_write(example) -> tf.Tensor:
  """The source's bytes when they are JPEG or PNG (what Model Garden's decoder reads back to
  the same pixels); otherwise (GIF, BMP, a source without bytes) the decoded image as PNG."""
  image = example[F.IMAGE]
  encode = lambda: tf.io.encode_png(image, compression=_PNG_COMPRESSION)
  encoded = example[F.ENCODED_IMAGE]          # b'' when the source holds no bytes
  is_jpeg = tf.equal(tf.strings.substr(encoded, 0, 3), b'\xff\xd8\xff')
  is_png = tf.equal(tf.strings.substr(encoded, 0, 8), b'\x89PNG\r\n\x1a\n')
  return tf.cond(is_jpeg | is_png, lambda: encoded, encode)


def inference_dataset(source, image_size, batch_size: int, *, num_shards: int = 1,
                      shard_index: int = 0, skip: int = 0,
                      unreadable: str = 'raise') -> tf.data.Dataset:
  """Batches of exactly `batch_size`: 'input' (model input), 'image_info', and per image
  SOURCE_ID, ENCODED (bytes to write), SHAPE (original height, width), VALID and UNREADABLE.

  unreadable: 'raise' (decoding unguarded: an image that cannot be decoded makes the
    iterator raise) or 'flag' (it comes as VALID=False, UNREADABLE=1, with a black 1x1 model
    input: it takes a batch slot, is counted by the caller and written nowhere).
  skip: source images (readable or not) left out before decoding, e.g. what complete
    chunks cover.
  The last batch is filled up by repeating its last image, marked VALID=False and
  UNREADABLE=0, so every batch has one static shape (one trace of the predict function,
  equal replica shares).
  """
  from rethink_st.data import pipeline  # pylint: disable=g-import-not-at-top

  def prepare(ex):
    if F.READABLE in ex:
      readable = ex[F.READABLE]
      image = tf.cond(readable, lambda: ex[F.IMAGE], lambda: tf.zeros([1, 1, 3], tf.uint8))
      ex = dict(ex, **{F.IMAGE: image})
    else:
      readable, image = tf.constant(True), ex[F.IMAGE]
    model_input, image_info = pipeline.preprocess_for_inference(image, image_size)
    return {'input': model_input, 'image_info': image_info, F.SOURCE_ID: ex[F.SOURCE_ID],
            ENCODED: _bytes_to_write(ex),
            SHAPE: tf.shape(image)[:2], VALID: readable,
            UNREADABLE: tf.cast(tf.logical_not(readable), tf.int32)}

  def fill(batch):
    n = tf.shape(batch[VALID])[0]

    def repeat_last():
      index = tf.minimum(tf.range(batch_size), n - 1)
      return {k: tf.gather(v, index) for k, v in batch.items()}

    out = tf.cond(n < batch_size, repeat_last, lambda: dict(batch))
    real = tf.range(batch_size) < n
    out[VALID] = out[VALID] & real
    out[UNREADABLE] = tf.where(real, out[UNREADABLE], 0)
    return {k: tf.ensure_shape(v, [batch_size] + v.shape[1:].as_list())
            for k, v in out.items()}

  ds = source.dataset(num_shards=num_shards, shard_index=shard_index, images_only=True,
                      unreadable=unreadable, skip=skip)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size).map(fill, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


# --- labelers ----------------------------------------------------------------------------

def class_agnostic_suppressed(boxes, scores, num_detections, iou_threshold: float):
  """[B, N] bool: the detections that greedy class-agnostic NMS drops, among each image's
  first num_detections[i] (the rest is padding, never suppressed and never suppressing)."""
  n = boxes.shape[1]
  real = tf.range(n)[tf.newaxis] < tf.cast(num_detections, tf.int32)[:, tf.newaxis]
  index, num_kept = tf.image.non_max_suppression_padded(  # one tile: ~20x faster on CPU
      boxes, tf.where(real, scores, -1.0), n, iou_threshold=iou_threshold,
      pad_to_max_output_size=True, tile_size=n)
  chosen = tf.range(n)[tf.newaxis] < num_kept[:, tf.newaxis]            # [B, N] output slots
  kept = tf.reduce_any(tf.cast(tf.one_hot(index, n), tf.bool) & chosen[..., tf.newaxis], 1)
  return real & ~kept


class _DetectionLabeler:
  """Teacher detections -> kept boxes per image (original-image normalized coordinates)."""
  kind = 'detection'

  def __init__(self, model, score_threshold: float, class_agnostic_nms_iou: Optional[float]):
    self.model, self.score_threshold = model, score_threshold
    self.class_agnostic_nms_iou = class_agnostic_nms_iou

  def predict(self, batch):
    from official.vision.ops import anchor  # pylint: disable=g-import-not-at-top
    from rethink_st.modeling import anchors  # pylint: disable=g-import-not-at-top
    cfg = anchors.anchor_config()
    size = batch['input'].shape[1:3]
    boxes = anchor.build_anchor_generator(
        min_level=cfg.min_level, max_level=cfg.max_level, num_scales=cfg.num_scales,
        aspect_ratios=list(cfg.aspect_ratios), anchor_size=cfg.anchor_size)(size)
    n = tf.shape(batch['input'])[0]
    boxes = {k: tf.tile(v[tf.newaxis], [n, 1, 1, 1]) for k, v in boxes.items()}
    out = self.model(batch['input'], image_shape=batch['image_info'][:, 1, :],
                     anchor_boxes=boxes, training=False)
    info = tf.tile(batch['image_info'], [1, 1, 2])  # rows: original size, ..., y/x scale
    det = tf.cast(out['detection_boxes'], tf.float32) / info[:, 2:3, :]
    det = tf.clip_by_value(det, 0.0, info[:, 0:1, :])  # original pixels, inside the image
    scores = tf.cast(out['detection_scores'], tf.float32)
    pred = {'boxes': det, 'scores': scores, 'classes': out['detection_classes'],
            'num': out['num_detections']}
    if self.class_agnostic_nms_iou is not None:
      pred['suppressed'] = class_agnostic_suppressed(det, scores, out['num_detections'],
                                                     self.class_agnostic_nms_iou)
    return pred

  def to_example(self, pred, i, shape):
    """(labels for the tf.Example, all detections for the COCO JSON, with 'suppressed') of
    image i."""
    h, w = int(shape[0]), int(shape[1])
    n = int(pred['num'][i])
    scores = np.asarray(pred['scores'][i, :n], np.float32)
    all_boxes = np.clip(np.asarray(pred['boxes'][i, :n], np.float32) /
                        np.array([h, w, h, w], np.float32), 0.0, 1.0)
    all_classes = np.asarray(pred['classes'][i, :n]).astype(np.int64)
    suppressed = (np.asarray(pred['suppressed'][i, :n], bool) if 'suppressed' in pred
                  else np.zeros(n, bool))
    keep = (scores >= self.score_threshold) & ~suppressed
    boxes, classes = all_boxes[keep], all_classes[keep]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * h * w
    example = {F.BOXES: boxes, F.CLASSES: classes, F.SCORES: scores[keep],
               F.IS_CROWD: np.zeros(len(classes), np.int64), F.AREA: area.astype(np.float32)}
    return example, {F.BOXES: all_boxes, F.CLASSES: all_classes, F.SCORES: scores,
                     'suppressed': suppressed}


class _SegmentationLabeler:
  """Multi-scale (+ flip) probabilities at the original size -> thresholded pseudo mask."""
  kind = 'segmentation'

  def __init__(self, model, scales, flip, mask_threshold, size_divisor):
    self.model, self.scales, self.flip = model, tuple(scales), flip
    self.mask_threshold, self.size_divisor = mask_threshold, size_divisor

  def predict(self, batch):
    """'mask' uint8 [B, H_max, W_max]: image i's pseudo mask in its top-left H_i x W_i."""
    from rethink_st.evaluation import segmentation  # pylint: disable=g-import-not-at-top
    probs = segmentation.predict_probabilities(self.model, batch['input'], scales=self.scales,
                                               flip=self.flip, size_divisor=self.size_divisor)
    image_info = batch['image_info']
    out_size = tf.reduce_max(tf.cast(image_info[:, 0, :], tf.int32), axis=0)
    probs = segmentation.restore_original_size(probs, image_info, output_size=out_size)
    mask = segmentation.probabilities_to_pseudo_mask(
        probs, threshold=self.mask_threshold, ignore_label=F.IGNORE_LABEL)
    return {'mask': mask}

  def to_example(self, pred, i, shape):
    h, w = int(shape[0]), int(shape[1])
    return {F.SEMANTIC_MASK: pred['mask'][i, :h, :w, None]}, None


def build_labeler(task, model, *, score_threshold: float = 0.5,
                  class_agnostic_nms_iou: Optional[float] = 0.5,
                  scales: Sequence[float] = (1.0,), flip: bool = False,
                  mask_threshold: float = 0.5):
  if isinstance(task, tasks_lib.DetectionTask):
    return _DetectionLabeler(model, score_threshold, class_agnostic_nms_iou)
  if isinstance(task, tasks_lib.SegmentationTask):
    return _SegmentationLabeler(model, scales, flip, mask_threshold, task.size_divisor)
  raise UserError(f'run_pseudo_label.task must be a DetectionTask or SegmentationTask, '
                  f'not {type(task).__name__}')


def _concat(parts):
  """Concatenates per-replica arrays on axis 0, zero-padding the other axes when the
  replicas' shapes differ (segmentation masks are as large as each replica's largest image)."""
  parts = [np.asarray(p) for p in parts]
  if len(parts) == 1:
    return parts[0]
  if len({p.shape[1:] for p in parts}) > 1:
    top = np.max([p.shape for p in parts], axis=0)
    parts = [np.pad(p, [(0, 0)] + [(0, t - s) for s, t in zip(p.shape[1:], top[1:])])
             for p in parts]
  return np.concatenate(parts, 0)


def make_predict_fn(strategy: tf.distribute.Strategy, labeler) -> Callable[[Any], Dict]:
  """A function: distributed inference batch -> this host's predictions as numpy arrays.
  Only the model inputs go to the replicas; source ids and bytes stay on the host."""

  @tf.function
  def predict(batch):
    return strategy.run(labeler.predict, args=({'input': batch['input'],
                                                 'image_info': batch['image_info']},))

  def call(dist_batch):
    return tf.nest.map_structure(
        lambda x: _concat(strategy.experimental_local_results(x)), predict(dist_batch))
  return call


def host_values(strategy: tf.distribute.Strategy, dist_batch) -> Dict[str, np.ndarray]:
  """This host's per-image metadata (source ids, bytes, shapes, valid) of a batch."""
  return {k: _concat(strategy.experimental_local_results(dist_batch[k])) for k in _META_KEYS}


# --- the run -----------------------------------------------------------------------------

@gin.configurable(denylist=['output_dir'])
def run_pseudo_label(output_dir: str,
                     task=gin.REQUIRED,
                     unlabeled_source=gin.REQUIRED,
                     teacher_checkpoint: str = gin.REQUIRED,
                     *,
                     num_shards: int = 1,
                     shard_index: int = 0,
                     batch_size: int = 8,
                     chunk_size: int = 1000,
                     score_threshold: float = 0.5,
                     class_agnostic_nms_iou: Optional[float] = 0.5,
                     scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                     flip: bool = False,
                     mask_threshold: float = 0.5,
                     expected_images: Optional[int] = None,
                     merge_coco: bool = True) -> Dict[str, Any]:
  """Labels host `shard_index` of `num_shards`' share of `unlabeled_source` into output_dir.

  Returns the merged stats once every host is done (else this host's counters). Holds the
  shard's lock in output_dir for the run (another process on this shard stops at once).
  class_agnostic_nms_iou: detection: across classes, a box whose IoU with a kept,
    higher-scored box is >= this is dropped (None: no class-agnostic suppression).
  unlabeled_source: a Source, or a string for `sources.source_from_spec` ('digit_scenes:<split>',
    an image folder or a TFRecord glob; what bin/pseudo_label.py --unlabeled binds).
  expected_images: the source's size, for the ETA when the source cannot tell.
  merge_coco: also write the merged pseudo_coco.json (the chunks' COCO files always exist).
  """
  if not output_dir:
    raise UserError('--output_dir is required')
  if not 0 <= shard_index < num_shards:
    raise UserError(f'--shard_index={shard_index} must be in [0, --num_shards={num_shards})')
  if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= mask_threshold <= 1.0:
    raise UserError('run_pseudo_label.score_threshold/mask_threshold must be in [0, 1]')
  if class_agnostic_nms_iou is not None and not (
      isinstance(class_agnostic_nms_iou, (int, float)) and 0.0 < class_agnostic_nms_iou <= 1.0):
    raise UserError(f'run_pseudo_label.class_agnostic_nms_iou={class_agnostic_nms_iou!r} must '
                    'be in (0, 1], or None for no class-agnostic suppression')
  if chunk_size <= 0 or batch_size <= 0:
    raise UserError('run_pseudo_label.chunk_size and batch_size must be positive')
  if not teacher_checkpoint:
    raise UserError('run_pseudo_label.teacher_checkpoint is not set')
  try:
    run_lib.resolve_init_checkpoint(teacher_checkpoint)
  except UserError as e:
    raise UserError(str(e).replace('init_checkpoint=', 'run_pseudo_label.teacher_checkpoint=',
                                   1)) from None
  if isinstance(unlabeled_source, str):
    unlabeled_source = sources.source_from_spec(unlabeled_source,
                                                'run_pseudo_label.unlabeled_source')
  try:  # any image, readable or not (an unreadable one is counted, not an error)
    next(iter(unlabeled_source.dataset(num_shards=num_shards, shard_index=shard_index,
                                       images_only=True, unreadable='flag').take(1)))
  except StopIteration:
    raise UserError(f'run_pseudo_label.unlabeled_source {unlabeled_source.name}: no images '
                    f'(in shard {shard_index} of {num_shards})') from None

  with _shard_lock(output_dir, shard_index, num_shards):
    strategy_lib.set_mixed_precision()
    strategy = strategy_lib.build_strategy()
    strategy_lib.check_global_batch_size(batch_size, strategy, 'run_pseudo_label.batch_size')
    with strategy.scope():
      model = task.build_model()
    labeler = build_labeler(task, model, score_threshold=score_threshold,
                            class_agnostic_nms_iou=class_agnostic_nms_iou, scales=scales,
                            flip=flip, mask_threshold=mask_threshold)
    detection = labeler.kind == 'detection'
    path = _restore_teacher(model, teacher_checkpoint)
    num_object_classes = task.num_classes - 1
    shards.write_meta(output_dir, {
        'kind': labeler.kind, 'num_classes': num_object_classes, 'num_shards': num_shards,
        'chunk_size': chunk_size, 'score_threshold': score_threshold,
        'class_agnostic_nms_iou': class_agnostic_nms_iou if detection else None,
        'mask_threshold': mask_threshold, 'scales': None if detection else list(scales),
        'flip': flip, 'teacher_checkpoint': path, 'source': unlabeled_source.name})

    start_chunk = shards.first_incomplete_chunk(output_dir, shard_index, num_shards)
    skip = shards.consumed_images(output_dir, shard_index, num_shards)
    if start_chunk:
      print(f'[pseudo_label] host {shard_index}: {start_chunk} chunk(s) already complete, '
            f'resuming at image {skip}', flush=True)
    predict = make_predict_fn(strategy, labeler)

    total = expected_images or getattr(unlabeled_source, 'num_examples', None)
    if total:
      total = -(-int(total) // num_shards)  # this host's share
    progress = _Progress(total, skip)
    sink = _ChunkSink(output_dir, shard_index, num_shards, start_chunk, chunk_size, labeler,
                      num_object_classes, progress)
    # Writing runs in a thread, overlapped with the next batch's inference (TensorFlow releases
    # the GIL); at most `_QUEUE_DEPTH` batches wait, so memory stays bounded.
    writer = _Background(sink.add_batch, depth=_QUEUE_DEPTH)

    def make_dataset(start, unreadable):
      return inference_dataset(unlabeled_source, task.image_size, batch_size,
                               num_shards=num_shards, shard_index=shard_index, skip=start,
                               unreadable=unreadable)

    try:
      _label(strategy, predict, writer.put, make_dataset, skip,
             f'{unlabeled_source.name}, host {shard_index}')
    except BaseException:
      writer.close(raise_error=False)
      raise
    writer.close()
    sink.finish()
    host = shards.host_stats(output_dir, shard_index, num_shards)
    skipped = int(host.get('unreadable_skipped', 0))  # this host's, over all its runs
    shards.mark_host_done(output_dir, shard_index, num_shards,
                          {'images': host.get('images', 0), 'unreadable_skipped': skipped})
    print(f'[pseudo_label] host {shard_index}/{num_shards} done: {host.get("images", 0)} '
          f'images ({progress.rate():.1f} img/s), {skipped} unreadable skipped', flush=True)
    if shards.all_hosts_done(output_dir, num_shards):
      stats = shards.merge_outputs(output_dir, merge_coco=merge_coco)
      print(f'[pseudo_label] all hosts done: {json.dumps(_summary(stats))}', flush=True)
      return stats
    return host


_QUEUE_DEPTH = 2


def _shard_lock(output_dir: str, shard_index: int, num_shards: int):
  """This host's shard lock (run_lock.shard_lock_name): hosts of other shards share the
  folder, a second process on this shard stops at once. Held by the chief of a cluster."""
  if not config_io.is_chief():
    return contextlib.nullcontext()
  return run_lock.hold(output_dir, f'--output_dir={output_dir} (shard {shard_index} of '
                       f'{num_shards})', run_lock.shard_lock_name(shard_index, num_shards))


def _label(strategy, predict, put, make_dataset, start: int, name: str) -> None:
  """Runs every batch of `make_dataset(start, unreadable)` through `predict` and hands it to
  `put`. Decoding is unguarded ('raise') until an image fails; then the batches are rebuilt
  from the first image not yet handed on, guarded ('flag'), for the rest of the run. An
  error under the guard is not an image's: it is raised."""
  unreadable = 'raise'
  while True:
    iterator = iter(strategy.experimental_distribute_dataset(make_dataset(start, unreadable)))
    while True:
      try:
        dist_batch = next(iterator)
      except StopIteration:
        return
      except tf.errors.OpError as e:
        if unreadable == 'flag':
          raise
        first = (str(e).strip().splitlines() or [''])[0][:160]
        print(f'[pseudo_label] {name}: an image at or after image {start} cannot be decoded '
              f'({type(e).__name__}: {first}); from there on every image is checked, and '
              'unreadable ones are skipped and counted', flush=True)
        unreadable = 'flag'
        break
      meta = host_values(strategy, dist_batch)
      start += int(np.count_nonzero(meta[VALID] | (meta[UNREADABLE] > 0)))
      put(predict(dist_batch), meta)


class _ChunkSink:
  """Turns predicted batches into chunk files: tf.Examples, COCO JSON (detection) and
  counters; a chunk is closed (renamed into place) when it holds `chunk_size` images."""

  def __init__(self, output_dir, shard_index, num_shards, start_chunk, chunk_size, labeler,
               num_object_classes, progress):
    self.output_dir, self.shard_index, self.num_shards = output_dir, shard_index, num_shards
    self.chunk, self.chunk_size, self.labeler = start_chunk, chunk_size, labeler
    self.num_object_classes, self.progress = num_object_classes, progress
    self.categories = [{'id': c, 'name': str(c)} for c in range(1, num_object_classes + 1)]
    self.nms_iou = labeler.class_agnostic_nms_iou if labeler.kind == 'detection' else None
    self.writer = self.counters = None

  def add_batch(self, pred, meta) -> None:
    detection = self.labeler.kind == 'detection'
    # In source order: an unreadable image is counted in the chunk being filled (or the next
    # one, opened for it), so each chunk covers a fixed stretch of the source.
    for i in np.flatnonzero(meta[VALID] | (meta[UNREADABLE] > 0)):
      if self.writer is None:
        self.writer = shards.ChunkWriter(
            shards.chunk_prefix(self.output_dir, self.shard_index, self.num_shards,
                                self.chunk),
            coco_categories=self.categories if detection else None)
        self.counters = shards.Counters(self.num_object_classes, self.labeler.kind,
                                        class_agnostic_nms_iou=self.nms_iou)
      self.counters.unreadable_skipped += int(meta[UNREADABLE][i])
      if not meta[VALID][i]:
        continue
      shape, source_id = meta[SHAPE][i], meta[F.SOURCE_ID][i]
      labels, all_detections = self.labeler.to_example(pred, i, shape)
      example = {F.SOURCE_ID: source_id, F.HEIGHT: shape[0], F.WIDTH: shape[1], **labels}
      self.writer.write(tfexample.encode_example(example, encoded_image=meta[ENCODED][i]))
      if detection:
        scores, suppressed = all_detections[F.SCORES], all_detections['suppressed']
        self.counters.add_detection(
            labels[F.CLASSES], scores,
            suppressed=np.count_nonzero(suppressed & (scores >= self.labeler.score_threshold)))
        self.writer.add_coco_image(source_id, int(shape[0]), int(shape[1]),
                                   all_detections[F.BOXES], all_detections[F.CLASSES],
                                   scores, suppressed)
      else:
        self.counters.add_segmentation(labels[F.SEMANTIC_MASK][..., 0], F.IGNORE_LABEL)
      if self.counters.images == self.chunk_size:
        self.writer.close(None, self.counters.to_dict())
        self.writer, self.chunk = None, self.chunk + 1
    self.progress.update(int(np.count_nonzero(meta[VALID] | (meta[UNREADABLE] > 0))))

  def finish(self) -> None:
    """Closes the last (partial) chunk."""
    if self.writer is not None:
      self.writer.close(None, self.counters.to_dict())
      self.writer = None


class _Background:
  """Calls fn(*item) for each put item, in order, in one thread. An error there is raised
  in the caller at the next put() or at close()."""

  def __init__(self, fn, depth: int):
    self._fn, self._error, self._raised = fn, None, False
    self._queue = queue.Queue(maxsize=depth)
    self._thread = threading.Thread(target=self._run, name='pseudo_label_writer', daemon=True)
    self._thread.start()

  def _run(self):
    while True:
      item = self._queue.get()
      if item is None:
        return
      if self._error is None:  # after an error, only drain the queue: nothing more is written
        try:
          self._fn(*item)
        except BaseException as e:  # pylint: disable=broad-except
          self._error = e

  def _raise(self):
    if self._error is not None and not self._raised:
      self._raised = True
      raise self._error

  def put(self, *item) -> None:
    self._raise()
    self._queue.put(item)

  def close(self, raise_error: bool = True) -> None:
    """Waits for the queued items; raises the thread's error, if any (and asked to)."""
    if self._thread.is_alive():
      self._queue.put(None)
      self._thread.join()
    if raise_error:
      self._raise()


def _summary(stats):
  keys = ('images', 'boxes', 'suppressed', 'boxes_per_image', 'images_without_labels',
          'ignored_fraction', 'unreadable_skipped')
  return {k: stats[k] for k in keys if k in stats}


class _Progress:
  """images/s and ETA, printed at most every 10 seconds."""

  def __init__(self, total: Optional[int], already: int):
    self.total, self.done, self.start = total, already, time.time()
    self.already, self.last = already, 0.0

  def rate(self) -> float:
    return (self.done - self.already) / max(time.time() - self.start, 1e-9)

  def update(self, n: int) -> None:
    self.done += n
    now = time.time()
    if now - self.last < 10 and (self.total is None or self.done < self.total):
      return
    self.last = now
    rate = self.rate()
    if self.total:
      eta = max(self.total - self.done, 0) / max(rate, 1e-9)
      eta_s = f'{int(eta // 60)}m{int(eta % 60):02d}s'
      of = f'/{self.total}'
    else:
      eta_s, of = '? (bind run_pseudo_label.expected_images)', ''
    print(f'[pseudo_label] {self.done}{of} images, {rate:.1f} img/s, eta {eta_s}', flush=True)
