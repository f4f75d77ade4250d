"""run_pseudo_label: a teacher labels an unlabeled source, sharded and resumable.

Detection: boxes with score >= `score_threshold` (0.5, the paper's) are kept; Soft-NMS is the
model's (bind build_retinanet.soft_nms_sigma). Images with no kept box are written too, as
background. Segmentation: probabilities averaged over `scales` (and flips) at the original
size; a pixel gets the argmax class when its probability >= `mask_threshold`, else 255.

Output (see `shards.py`): tf.Example TFRecords that the ordinary input pipeline reads (kept
boxes only), a COCO JSON of ALL the teacher's detections with their scores (so precision and
recall can be read at any threshold afterwards), and stats JSON. Memory stays flat: each batch is
written and dropped; only fixed-size counters are kept.
"""
import json
import os
import time
from typing import Any, Dict, Optional, Sequence

import gin
import numpy as np
import tensorflow as tf

from rethink_st.data import features as F
from rethink_st.data import tfexample
from rethink_st.errors import UserError
from rethink_st.pseudo_label import shards
from rethink_st.training import run as run_lib
from rethink_st.training import strategy as strategy_lib
from rethink_st.training import tasks as tasks_lib


def _restore_teacher(model, teacher_checkpoint: str) -> str:
  path = run_lib.resolve_init_checkpoint(teacher_checkpoint)
  status = tf.train.Checkpoint(model=model).read(path)
  try:
    status.expect_partial().assert_existing_objects_matched()
  except AssertionError as e:
    raise UserError(f'run_pseudo_label.teacher_checkpoint={teacher_checkpoint} does not match '
                    f'the model: {str(e).splitlines()[0][:160]}') from None
  return path


def _inference_dataset(source, image_size, batch_size, num_shards, shard_index, skip):
  """(original image, its shape, source_id, model input, image_info), padded batches."""
  from rethink_st.data import pipeline  # pylint: disable=g-import-not-at-top

  def prepare(ex):
    image = ex[F.IMAGE]
    model_input, image_info = pipeline.preprocess_for_inference(image, image_size)
    return {'image': image, 'shape': tf.shape(image)[:2], 'source_id': ex[F.SOURCE_ID],
            'input': model_input, 'image_info': image_info}

  ds = source.dataset(num_shards=num_shards, shard_index=shard_index)
  if skip:
    ds = ds.skip(skip)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.padded_batch(batch_size).prefetch(tf.data.AUTOTUNE)


class _DetectionLabeler:
  """Teacher detections -> kept boxes per image (original-image normalized coordinates)."""
  kind = 'detection'

  def __init__(self, model, score_threshold: float):
    self.model, self.score_threshold = model, score_threshold
    self.anchor_boxes = None

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
    scale = batch['image_info'][:, 2:3, :]   # [B, 1, 2] y/x scale model-input / original
    det = out['detection_boxes'] / tf.tile(scale, [1, 1, 2])
    return {'boxes': det, 'scores': out['detection_scores'],
            'classes': out['detection_classes'], 'num': out['num_detections']}

  def to_example(self, pred, i, shape):
    h, w = int(shape[0]), int(shape[1])
    n = int(pred['num'][i])
    scores = np.asarray(pred['scores'][i][:n], np.float32)
    keep = scores >= self.score_threshold
    boxes = np.asarray(pred['boxes'][i][:n], np.float32)[keep]
    boxes = np.clip(boxes / np.array([h, w, h, w], np.float32), 0.0, 1.0)
    classes = np.asarray(pred['classes'][i][:n]).astype(np.int64)[keep]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * h * w
    example = {F.BOXES: boxes, F.CLASSES: classes, F.SCORES: scores[keep],
               F.IS_CROWD: np.zeros(len(classes), np.int64), F.AREA: area.astype(np.float32)}
    all_boxes = np.clip(np.asarray(pred['boxes'][i][:n], np.float32) /
                        np.array([h, w, h, w], np.float32), 0.0, 1.0)
    all_classes = np.asarray(pred['classes'][i][:n]).astype(np.int64)
    return example, {F.BOXES: all_boxes, F.CLASSES: all_classes, F.SCORES: scores}


class _SegmentationLabeler:
  """Multi-scale (+ flip) probabilities at the original size -> thresholded pseudo mask."""
  kind = 'segmentation'

  def __init__(self, model, scales, flip, mask_threshold, size_divisor):
    self.model, self.scales, self.flip = model, tuple(scales), flip
    self.mask_threshold, self.size_divisor = mask_threshold, size_divisor

  def predict(self, batch):
    from rethink_st.evaluation import segmentation  # pylint: disable=g-import-not-at-top
    probs = segmentation.predict_probabilities(self.model, batch['input'], scales=self.scales,
                                               flip=self.flip, size_divisor=self.size_divisor)
    return {'probs': probs, 'image_info': batch['image_info']}

  def to_example(self, pred, i, shape):
    from rethink_st.evaluation import segmentation  # pylint: disable=g-import-not-at-top
    h, w = int(shape[0]), int(shape[1])
    probs = segmentation.restore_original_size(pred['probs'][i:i + 1],
                                               pred['image_info'][i:i + 1], output_size=(h, w))
    mask = segmentation.probabilities_to_pseudo_mask(
        probs, threshold=self.mask_threshold, ignore_label=F.IGNORE_LABEL)
    mask = np.asarray(mask).reshape(h, w).astype(np.uint8)
    return {F.SEMANTIC_MASK: mask[..., None]}, None


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
                     scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                     flip: bool = False,
                     mask_threshold: float = 0.5,
                     expected_images: Optional[int] = None,
                     merge_coco: bool = True) -> Dict[str, Any]:
  """Labels host `shard_index` of `num_shards`' share of `unlabeled_source` into output_dir.

  Returns the merged stats once every host is done (else this host's counters).
  expected_images: the source's size, for the ETA when the source cannot tell.
  """
  if not output_dir:
    raise UserError('--output_dir is required')
  if not 0 <= shard_index < num_shards:
    raise UserError(f'--shard_index={shard_index} must be in [0, --num_shards={num_shards})')
  if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= mask_threshold <= 1.0:
    raise UserError('run_pseudo_label.score_threshold/mask_threshold must be in [0, 1]')
  if chunk_size <= 0 or batch_size <= 0:
    raise UserError('run_pseudo_label.chunk_size and batch_size must be positive')
  run_lib.resolve_init_checkpoint(teacher_checkpoint)
  try:
    next(iter(unlabeled_source.dataset(num_shards=num_shards, shard_index=shard_index).take(1)))
  except StopIteration:
    raise UserError(f'run_pseudo_label.unlabeled_source {unlabeled_source.name}: no images '
                    f'(in shard {shard_index} of {num_shards})') from None

  strategy_lib.set_mixed_precision()
  strategy = strategy_lib.build_strategy()
  strategy_lib.check_global_batch_size(batch_size, strategy, 'run_pseudo_label.batch_size')
  with strategy.scope():
    model = task.build_model()
  path = _restore_teacher(model, teacher_checkpoint)
  if isinstance(task, tasks_lib.DetectionTask):
    labeler = _DetectionLabeler(model, score_threshold)
  elif isinstance(task, tasks_lib.SegmentationTask):
    labeler = _SegmentationLabeler(model, scales, flip, mask_threshold, task.size_divisor)
  else:
    raise UserError(f'run_pseudo_label.task must be a DetectionTask or SegmentationTask, '
                    f'not {type(task).__name__}')
  num_object_classes = task.num_classes - 1
  shards.write_meta(output_dir, {
      'kind': labeler.kind, 'num_classes': num_object_classes, 'num_shards': num_shards,
      'chunk_size': chunk_size, 'score_threshold': score_threshold,
      'mask_threshold': mask_threshold, 'scales': list(scales) if labeler.kind ==
      'segmentation' else None, 'flip': flip, 'teacher_checkpoint': path,
      'source': unlabeled_source.name})

  start_chunk = shards.first_incomplete_chunk(output_dir, shard_index, num_shards)
  skip = start_chunk * chunk_size
  if start_chunk:
    print(f'[pseudo_label] host {shard_index}: {start_chunk} chunk(s) already complete, '
          f'resuming at image {skip}', flush=True)
  ds = _inference_dataset(unlabeled_source, task.image_size, batch_size, num_shards,
                          shard_index, skip)
  dist_ds = strategy.experimental_distribute_dataset(ds)

  @tf.function
  def predict(batch):
    return strategy.run(labeler.predict, args=({'input': batch['input'],
                                                 'image_info': batch['image_info']},))

  def local(tree):
    return tf.nest.map_structure(
        lambda x: np.concatenate([np.asarray(p) for p in
                                  strategy.experimental_local_results(x)], 0), tree)

  total = expected_images or getattr(unlabeled_source, 'num_examples', None)
  if total:
    total = -(-int(total) // num_shards)  # this host's share
  progress = _Progress(total, skip)
  chunk, writer, counters, coco = start_chunk, None, None, None
  in_chunk = 0
  for dist_batch in dist_ds:
    pred = local(predict(dist_batch))
    batch = local(dist_batch)
    for i in range(int(batch['shape'].shape[0])):
      if writer is None:
        writer = shards.ChunkWriter(shards.chunk_prefix(output_dir, shard_index, num_shards,
                                                        chunk))
        counters = shards.Counters(num_object_classes, labeler.kind)
        coco = _new_coco(num_object_classes) if labeler.kind == 'detection' else None
      shape = batch['shape'][i]
      image = batch['image'][i][:shape[0], :shape[1]]
      source_id = batch['source_id'][i]
      labels, all_detections = labeler.to_example(pred, i, shape)
      example = {F.SOURCE_ID: source_id, F.IMAGE: image, **labels}
      writer.write(tfexample.encode_example(example))
      if labeler.kind == 'detection':
        counters.add_detection(labels[F.CLASSES], all_detections[F.SCORES])
        _add_coco(coco, source_id, shape, all_detections)
      else:
        counters.add_segmentation(labels[F.SEMANTIC_MASK][..., 0], F.IGNORE_LABEL)
      in_chunk += 1
      if in_chunk == chunk_size:
        writer.close(coco, counters.to_dict())
        writer, chunk, in_chunk = None, chunk + 1, 0
    progress.update(int(batch['shape'].shape[0]))
  if writer is not None:
    writer.close(coco, counters.to_dict())
  skipped = int(getattr(unlabeled_source, 'skipped', 0) or 0)
  shards.mark_host_done(output_dir, shard_index, num_shards,
                        {'images': progress.done, 'unreadable_skipped': skipped})
  print(f'[pseudo_label] host {shard_index}/{num_shards} done: {progress.done} images, '
        f'{skipped} unreadable skipped', flush=True)
  if shards.all_hosts_done(output_dir, num_shards):
    done_infos = []
    for i in range(num_shards):
      with tf.io.gfile.GFile(os.path.join(
          output_dir, f'host-{i:05d}-of-{num_shards:05d}.done')) as f:
        done_infos.append(json.load(f))
    stats = shards.merge_outputs(output_dir, {
        'unreadable_skipped': sum(d['unreadable_skipped'] for d in done_infos)})
    if not merge_coco and tf.io.gfile.exists(os.path.join(output_dir, 'pseudo_coco.json')):
      tf.io.gfile.remove(os.path.join(output_dir, 'pseudo_coco.json'))
    print(f'[pseudo_label] all hosts done: {json.dumps(_summary(stats))}', flush=True)
    return stats
  return counters.to_dict() if counters else {}


def _summary(stats):
  keys = ('images', 'boxes', 'boxes_per_image', 'images_without_labels', 'ignored_fraction',
          'unreadable_skipped')
  return {k: stats[k] for k in keys if k in stats}


def _new_coco(num_classes):
  return {'images': [], 'annotations': [],
          'categories': [{'id': c, 'name': str(c)} for c in range(1, num_classes + 1)]}


def _add_coco(coco, source_id, shape, labels):
  sid = source_id.decode('utf8') if isinstance(source_id, bytes) else str(source_id)
  image_id = int(sid) if sid.isdigit() else sid
  h, w = int(shape[0]), int(shape[1])
  coco['images'].append({'id': image_id, 'file_name': sid, 'height': h, 'width': w})
  for box, cls, score in zip(labels[F.BOXES], labels[F.CLASSES], labels[F.SCORES]):
    y0, x0, y1, x1 = (float(v) for v in box * np.array([h, w, h, w]))
    coco['annotations'].append({'image_id': image_id, 'category_id': int(cls),
                                'bbox': [x0, y0, x1 - x0, y1 - y0], 'score': float(score),
                                'area': (x1 - x0) * (y1 - y0), 'iscrowd': 0})


class _Progress:
  """images/s and ETA, printed at most every 10 seconds."""

  def __init__(self, total: Optional[int], already: int):
    self.total, self.done, self.start = total, already, time.time()
    self.already, self.last = already, 0.0

  def update(self, n: int) -> None:
    self.done += n
    now = time.time()
    if now - self.last < 10 and (self.total is None or self.done < self.total):
      return
    self.last = now
    rate = (self.done - self.already) / max(now - self.start, 1e-9)
    if self.total:
      eta = max(self.total - self.done, 0) / max(rate, 1e-9)
      eta_s = f'{int(eta // 60)}m{int(eta % 60):02d}s'
      of = f'/{self.total}'
    else:
      eta_s, of = '? (bind run_pseudo_label.expected_images)', ''
    print(f'[pseudo_label] {self.done}{of} images, {rate:.1f} img/s, eta {eta_s}', flush=True)
