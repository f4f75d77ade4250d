"""run_pseudo_label: a teacher labels an unlabeled source, sharded and resumable.

Detection: after the model's NMS and class-agnostic suppression (`class_agnostic_nms_iou`;
rethink_st/training/labelers.py), every box with score >= `score_floor` (0.05) is written with its score; the
student keeps those >= its own threshold when it reads them (`pseudo_label_source`, default
the labeler's `score_threshold`, 0.5, the paper's), so a threshold sweep needs one labeling
pass. Images with no box are written too, as background. meta.json records the label space
(category ids and names), the teacher checkpoint's path and content hash, and the NMS
settings (provenance.py). Segmentation: multi-scale (+ flip)
probabilities, thresholded at `mask_threshold` (rethink_st/training/labelers.py). The
task's labeler (`Task.build_labeler`) does what differs between the kinds.

Output (see `shards.py`): tf.Example TFRecords that the ordinary input pipeline reads (the
boxes above the floor, with scores), a COCO JSON of ALL the teacher's detections with their scores, the suppressed
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

The work is split by responsibility: inference.py (input batches and the distributed
predict function), the task's labeler (rethink_st/training/labelers.py: model output ->
labels per image, and what they add to the counters), sink.py (chunk files,
written in a thread overlapped with inference; progress), shards.py (the folder's files).
"""
import contextlib
import json
from typing import Any, Dict, Optional, Sequence

import gin
import numpy as np
import tensorflow as tf

from rethink_st import checkpoint as checkpoint_lib
from rethink_st import config_io
from rethink_st import run_lock
from rethink_st.data import label_space as label_space_lib
from rethink_st.data import sources
from rethink_st.errors import UserError
from rethink_st.pseudo_label import provenance
from rethink_st.pseudo_label import shards
from rethink_st.pseudo_label.inference import (  # noqa: F401  (the names benchmarks use)
    ENCODED, SHAPE, UNREADABLE, VALID, host_values, inference_dataset, make_predict_fn)
from rethink_st.pseudo_label.labelers import build_labeler, class_agnostic_suppressed  # noqa: F401
from rethink_st.pseudo_label.sink import Background as _Background  # noqa: F401
from rethink_st.pseudo_label.sink import ChunkSink as _ChunkSink
from rethink_st.pseudo_label.sink import Progress as _Progress
from rethink_st.training import strategy as strategy_lib


TEACHER = 'run_pseudo_label.teacher_checkpoint'


def _restore_teacher(model, teacher_checkpoint: str, task=None) -> str:
  """The teacher's weights into `model` (the task's `restore`; without a task,
  checkpoint.restore_model); its checkpoint prefix. (benchmarks/pseudo_label.py calls it
  too.)"""
  restore = task.restore if task is not None else checkpoint_lib.restore_model
  return restore(model, teacher_checkpoint, TEACHER).checkpoint


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
                     score_floor: float = 0.05,
                     class_agnostic_nms_iou: Optional[float] = 0.5,
                     scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                     flip: bool = False,
                     mask_threshold: float = 0.5,
                     expected_images: Optional[int] = None,
                     merge_coco: bool = True) -> Dict[str, Any]:
  """Labels host `shard_index` of `num_shards`' share of `unlabeled_source` into output_dir.

  Returns the merged stats once every host is done (else this host's counters). Holds the
  shard's lock in output_dir for the run (another process on this shard stops at once).
  score_threshold: detection: the labeler's threshold: the statistics (stats.json, the
    report's marked row) count the boxes at or above it, and a student that binds no
    threshold of its own (pseudo_label_source.score_threshold) keeps those.
  score_floor: detection: every box at or above min(score_floor, score_threshold) is written
    with its score, so a student may read them at any threshold down to it.
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
  if not (isinstance(score_floor, (int, float)) and 0.0 <= score_floor <= 1.0):
    raise UserError(f'run_pseudo_label.score_floor={score_floor!r} must be in [0, 1]')
  if class_agnostic_nms_iou is not None and not (
      isinstance(class_agnostic_nms_iou, (int, float)) and 0.0 < class_agnostic_nms_iou <= 1.0):
    raise UserError(f'run_pseudo_label.class_agnostic_nms_iou={class_agnostic_nms_iou!r} must '
                    'be in (0, 1], or None for no class-agnostic suppression')
  if chunk_size <= 0 or batch_size <= 0:
    raise UserError('run_pseudo_label.chunk_size and batch_size must be positive')
  checkpoint_lib.resolve(teacher_checkpoint, TEACHER)
  space = label_space_lib.label_space_of(task)   # what the class ids mean, checked
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
                            flip=flip, mask_threshold=mask_threshold, score_floor=score_floor)
    path = _restore_teacher(model, teacher_checkpoint, task)
    num_object_classes = task.num_classes - 1
    # What the labels mean and where they come from (provenance.py): they outlive the
    # labeler's threshold, so the student can check what it reads.
    shards.write_meta(output_dir, {
        'label_space': space.to_json(),
        'kind': labeler.kind, 'num_classes': num_object_classes, 'num_shards': num_shards,
        'chunk_size': chunk_size, 'score_threshold': score_threshold,
        **labeler.meta_fields(),   # score_floor, class_agnostic_nms_iou, scales
        'nms': provenance.nms_settings(model),   # None for a model without NMS
        'mask_threshold': mask_threshold, 'flip': flip, 'teacher_checkpoint': path,
        'teacher_checkpoint_sha256': provenance.checkpoint_sha256(path),
        'source': unlabeled_source.name})

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
                      space, progress)
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


def _summary(stats):
  keys = ('images', 'boxes', 'suppressed', 'boxes_per_image', 'images_without_labels',
          'ignored_fraction', 'unreadable_skipped')
  return {k: stats[k] for k in keys if k in stats}

