"""Where the pseudo-labeler's predictions go: chunk files (ChunkSink), written in a thread
overlapped with the next batch's inference (Background), and the progress line (Progress)."""
import queue
import threading
import time
from typing import Optional

import numpy as np

from rethink_st.data import features as F
from rethink_st.data import tfexample
from rethink_st.pseudo_label import shards
from rethink_st.pseudo_label.inference import ENCODED, SHAPE, UNREADABLE, VALID


class ChunkSink:
  """Turns predicted batches into chunk files: tf.Examples, COCO JSON (a labeler that
  `writes_coco_json`) and counters (the labeler's `count`); a chunk is closed (renamed into
  place) when it holds `chunk_size` images."""

  def __init__(self, output_dir, shard_index, num_shards, start_chunk, chunk_size, labeler,
               label_space, progress):
    self.output_dir, self.shard_index, self.num_shards = output_dir, shard_index, num_shards
    self.chunk, self.chunk_size, self.labeler = start_chunk, chunk_size, labeler
    self.num_object_classes, self.progress = label_space.num_classes, progress
    # The COCO files' category ids are class ids (as their annotations'); each category
    # carries its name and the dataset's own id (`dataset_category_id`).
    self.categories = [{'id': c, 'name': name, 'dataset_category_id': int(dataset_id)}
                       for c, (dataset_id, name) in enumerate(
                           zip(label_space.category_ids, label_space.names), 1)]
    self.nms_iou = labeler.meta_fields()['class_agnostic_nms_iou']
    self.writer = self.counters = None

  def add_batch(self, pred, meta) -> None:
    # In source order: an unreadable image is counted in the chunk being filled (or the next
    # one, opened for it), so each chunk covers a fixed stretch of the source.
    for i in np.flatnonzero(meta[VALID] | (meta[UNREADABLE] > 0)):
      if self.writer is None:
        self.writer = shards.ChunkWriter(
            shards.chunk_prefix(self.output_dir, self.shard_index, self.num_shards,
                                self.chunk),
            coco_categories=self.categories if self.labeler.writes_coco_json else None)
        self.counters = shards.Counters(self.num_object_classes, self.labeler.kind,
                                        class_agnostic_nms_iou=self.nms_iou)
      self.counters.unreadable_skipped += int(meta[UNREADABLE][i])
      if not meta[VALID][i]:
        continue
      shape, source_id = meta[SHAPE][i], meta[F.SOURCE_ID][i]
      labels, all_detections = self.labeler.to_example(pred, i, shape)
      example = {F.SOURCE_ID: source_id, F.HEIGHT: shape[0], F.WIDTH: shape[1], **labels}
      self.writer.write(tfexample.encode_example(example, encoded_image=meta[ENCODED][i]))
      self.labeler.count(self.counters, self.writer, labels, all_detections, source_id,
                         shape)
      if self.counters.images == self.chunk_size:
        self.writer.close(None, self.counters.to_dict())
        self.writer, self.chunk = None, self.chunk + 1
    self.progress.update(int(np.count_nonzero(meta[VALID] | (meta[UNREADABLE] > 0))))

  def finish(self) -> None:
    """Closes the last (partial) chunk."""
    if self.writer is not None:
      self.writer.close(None, self.counters.to_dict())
      self.writer = None


class Background:
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



class Progress:
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
