"""Pseudo-label output folder: atomically written chunks, resumable, mergeable.

Host `i` of `n` (--shard_index/--num_shards) labels its deterministic share of the unlabeled
source in chunks of `chunk_size` images. Chunk `c` of host `i` is three files:

    pseudo-{i:05d}-of-{n:05d}-{c:05d}.tfrecord   tf.Examples, the same format as human labels
    pseudo-{i:05d}-of-{n:05d}-{c:05d}.coco.json  all the teacher's detections (detection) in
                                                 COCO format, with their scores; those that
                                                 class-agnostic suppression dropped carry
                                                 "suppressed": 1 (the .tfrecord leaves them out)
    pseudo-{i:05d}-of-{n:05d}-{c:05d}.stats.json its counters

each written under a `.tmp` name and renamed; the .tfrecord is renamed last, so its presence
means the chunk is complete. A chunk without any detection, or without any readable image, is
a chunk like any other: all its files are written, and it is counted, skipped and merged. A
rerun skips complete chunks, so a killed job resumes with every image labeled exactly once.
A chunk's counters include `unreadable_skipped`, the source's images that could not be
decoded among its stretch of the source, so a resumed run skips `consumed_images` (images +
unreadable_skipped of the complete chunks) source images and counts every skip once. When a
host finishes it writes `host-{i:05d}-of-{n:05d}.done`; whichever host sees all n done merges
the counters into stats.json (and the boxes into pseudo_coco.json). `meta.json`, written
first, records the label space and the settings.
"""
import glob
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import tensorflow as tf

from rethink_st.errors import UserError
from rethink_st.training import tasks
# The written boxes' scores, in 0.001-wide bins (the detection labeler's `density` reads
# boxes per image at any student threshold that is a multiple of 0.001 from them).
from rethink_st.training.labelers import WRITTEN_SCORE_BINS, written_boxes_at  # noqa: F401

SCORE_BINS = np.linspace(0.0, 1.0, 21)  # 0.05-wide bins for score histograms


def chunk_prefix(out_dir: str, shard_index: int, num_shards: int, chunk: int) -> str:
  return os.path.join(out_dir, f'pseudo-{shard_index:05d}-of-{num_shards:05d}-{chunk:05d}')


def complete_chunks(out_dir: str, shard_index: int, num_shards: int) -> List[int]:
  """Chunk numbers of this host that are complete, in order."""
  pattern = os.path.join(out_dir, f'pseudo-{shard_index:05d}-of-{num_shards:05d}-*.tfrecord')
  chunks = sorted(int(re.search(r'-(\d{5})\.tfrecord$', p).group(1))
                  for p in tf.io.gfile.glob(pattern))
  return chunks


def first_incomplete_chunk(out_dir: str, shard_index: int, num_shards: int) -> int:
  """Chunks are written in order, so the complete ones are 0..k-1; returns k."""
  done = complete_chunks(out_dir, shard_index, num_shards)
  for expected, got in enumerate(done):
    if expected != got:
      raise UserError(f'{out_dir}: chunk {expected} of host {shard_index} is missing but '
                      f'chunk {got} exists; the folder was edited by hand')
  return len(done)


def consumed_images(out_dir: str, shard_index: int, num_shards: int) -> int:
  """Source images (labeled or skipped as unreadable) the host's complete chunks cover."""
  total = 0
  for prefix in _complete_prefixes(out_dir, shard_index, num_shards):
    stats = _read_json(prefix + '.stats.json')
    total += int(stats['images']) + int(stats.get('unreadable_skipped', 0))
  return total


def _atomic_write_text(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def write_meta(out_dir: str, meta: Dict[str, Any]) -> None:
  """Writes meta.json, or checks an existing one has the same label space and settings."""
  path = os.path.join(out_dir, 'meta.json')
  tf.io.gfile.makedirs(out_dir)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      old = json.load(f)
    changed = [k for k in meta if k in old and old[k] != meta[k]]
    if changed:
      k = changed[0]
      raise UserError(f'{out_dir} holds pseudo labels made with {k}={old[k]!r}, not '
                      f'{meta[k]!r}; use a new output folder')
    return
  _atomic_write_text(path, json.dumps(meta, indent=1, sort_keys=True))


def read_meta(out_dir: str) -> Dict[str, Any]:
  path = os.path.join(out_dir, 'meta.json')
  if not tf.io.gfile.exists(path):
    raise UserError(f'{out_dir}: not a pseudo-label folder (no meta.json)')
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def coco_image_id(source_id) -> Any:
  """COCO image id of a source_id: the number for a decimal id, else the string itself."""
  sid = source_id.decode('utf8') if isinstance(source_id, bytes) else str(source_id)
  return int(sid) if sid.isdigit() else sid


class ChunkWriter:
  """Writes one chunk under temporary names; `close()` renames it into place.

  With `coco_categories`, `add_coco_image` streams the chunk's COCO JSON to disk as images
  arrive (images and annotations go to two temporary files, joined at close), so memory
  does not grow with the number of images or detections in a chunk.
  """

  def __init__(self, prefix: str, coco_categories: Optional[List[Dict[str, Any]]] = None):
    self.prefix = prefix
    self._writer = tf.io.TFRecordWriter(prefix + '.tfrecord.tmp')
    self._categories = coco_categories
    self._images = self._annotations = None
    if coco_categories is not None:
      self._images = tf.io.gfile.GFile(prefix + '.coco.json.tmp', 'w')
      self._annotations = tf.io.gfile.GFile(prefix + '.coco_annotations.tmp', 'w')
      self._images.write('{"images": [')
      self._num_images = self._num_annotations = 0

  def write(self, serialized: bytes) -> None:
    self._writer.write(serialized)

  def add_coco_image(self, source_id, height: int, width: int, boxes: np.ndarray,
                     classes: np.ndarray, scores: np.ndarray,
                     suppressed: Optional[np.ndarray] = None) -> None:
    """One image and its detections (normalized [ymin, xmin, ymax, xmax] boxes, class ids,
    scores, and optionally which ones class-agnostic suppression dropped) in COCO form:
    pixel [x, y, w, h] boxes with their scores, "suppressed": 1 on the dropped ones."""
    image_id = coco_image_id(source_id)
    sid = source_id.decode('utf8') if isinstance(source_id, bytes) else str(source_id)
    sep = ', ' if self._num_images else ''
    self._images.write(sep + json.dumps({'id': image_id, 'file_name': sid, 'height': height,
                                         'width': width}))
    self._num_images += 1
    if not len(scores):
      return
    b = np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([height, width, height, width],
                                                                 np.float64)
    x, y = b[:, 1], b[:, 0]
    w, h = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
    # What json.dumps writes for {'image_id', 'category_id', 'bbox': [x, y, w, h], 'score',
    # 'area', 'iscrowd'} (floats as repr, like json), at a third of its cost.
    head = '{"image_id": ' + json.dumps(image_id) + ', "category_id": '
    flags = (np.zeros(len(scores), bool) if suppressed is None
             else np.asarray(suppressed, bool).reshape(-1))
    tails = ('}', ', "suppressed": 1}')
    anns = [f'{head}{c}, "bbox": [{x0!r}, {y0!r}, {w0!r}, {h0!r}], "score": {s!r}, '
            f'"area": {w0 * h0!r}, "iscrowd": 0{tails[f]}'
            for c, x0, y0, w0, h0, s, f in zip(np.asarray(classes, np.int64).tolist(),
                                               x.tolist(), y.tolist(), w.tolist(), h.tolist(),
                                               np.asarray(scores, np.float64).tolist(),
                                               flags.tolist())]
    sep = ', ' if self._num_annotations else ''
    self._annotations.write(sep + ', '.join(anns))
    self._num_annotations += len(anns)

  def _finish_coco(self) -> None:
    self._annotations.close()
    self._images.write('], "annotations": [')
    if self._num_annotations:  # a GFile creates its file at the first write, not before
      _append_file(self._images, self.prefix + '.coco_annotations.tmp')
      tf.io.gfile.remove(self.prefix + '.coco_annotations.tmp')
    self._images.write('], "categories": ' + json.dumps(self._categories) + '}')
    self._images.close()
    tf.io.gfile.rename(self.prefix + '.coco.json.tmp', self.prefix + '.coco.json',
                       overwrite=True)

  def close(self, coco: Optional[Dict[str, Any]], stats: Dict[str, Any]) -> None:
    """Completes the chunk: its COCO JSON (streamed, or `coco` given whole), its stats, and
    last the .tfrecord rename that marks it complete."""
    self._writer.close()
    if self._images is not None:
      self._finish_coco()
    elif coco is not None:
      _atomic_write_text(self.prefix + '.coco.json', json.dumps(coco))
    _atomic_write_text(self.prefix + '.stats.json', json.dumps(stats))
    tf.io.gfile.rename(self.prefix + '.tfrecord.tmp', self.prefix + '.tfrecord', overwrite=True)

  def abort(self) -> None:
    self._writer.close()
    tf.io.gfile.remove(self.prefix + '.tfrecord.tmp')
    for f, suffix in ((self._images, '.coco.json.tmp'),
                      (self._annotations, '.coco_annotations.tmp')):
      if f is not None:
        f.close()
        if tf.io.gfile.exists(self.prefix + suffix):  # written to at least once
          tf.io.gfile.remove(self.prefix + suffix)


class Counters:
  """Streaming statistics; constant memory however many images pass."""

  score_bins = SCORE_BINS

  def __init__(self, num_classes: int, kind: str,
               class_agnostic_nms_iou: Optional[float] = None):
    self.kind = kind
    self.labeler_class = tasks.labeler_class(kind, 'Counters.kind')  # its part of to_dict
    self.class_agnostic_nms_iou = class_agnostic_nms_iou  # the labeler's setting, recorded
    self.num_classes = num_classes
    self.images = 0
    self.images_without_labels = 0
    self.boxes = 0
    self.suppressed = 0  # boxes >= the score threshold that class-agnostic suppression dropped
    self.per_class = np.zeros(num_classes + 1, np.int64)  # index = class id (0: background)
    self.boxes_per_image_hist = np.zeros(21, np.int64)    # 0..19, 20+
    self.score_hist = np.zeros(len(SCORE_BINS) - 1, np.int64)  # all detections, pre-threshold
    self.written = 0   # boxes in the tf.Examples: >= the score floor, not suppressed
    self.written_score_hist = np.zeros(WRITTEN_SCORE_BINS, np.int64)
    self.ignored_pixels = 0
    self.pixels = 0
    self.unreadable_skipped = 0  # undecodable images in this chunk's stretch of the source

  def add_detection(self, kept_classes: np.ndarray, all_scores: np.ndarray,
                    suppressed: int = 0, written_scores: Optional[np.ndarray] = None) -> None:
    """kept_classes: the boxes at the labeler's threshold (counted in boxes, per_class, ...);
    written_scores: the scores of the boxes written (default: as many as kept, unscored)."""
    self.images += 1
    if written_scores is not None:
      self.written += int(len(written_scores))
      bins = np.clip((np.asarray(written_scores, np.float64) * WRITTEN_SCORE_BINS).astype(
          np.int64), 0, WRITTEN_SCORE_BINS - 1)
      np.add.at(self.written_score_hist, bins, 1)
    n = int(kept_classes.shape[0])
    self.boxes += n
    self.suppressed += int(suppressed)
    self.images_without_labels += int(n == 0)
    self.boxes_per_image_hist[min(n, 20)] += 1
    np.add.at(self.per_class, kept_classes.astype(np.int64), 1)
    self.score_hist += np.histogram(all_scores, bins=SCORE_BINS)[0]

  def add_segmentation(self, mask: np.ndarray, ignore_label: int) -> None:
    self.images += 1
    valid = mask != ignore_label
    self.pixels += int(mask.size)
    self.ignored_pixels += int((~valid).sum())
    self.images_without_labels += int(not (valid & (mask > 0)).any())
    self.per_class += np.bincount(mask[valid].astype(np.int64),
                                  minlength=self.num_classes + 1)[:self.num_classes + 1]

  def to_dict(self) -> Dict[str, Any]:
    d = {'kind': self.kind, 'num_classes': self.num_classes, 'images': self.images,
         'images_without_labels': self.images_without_labels,
         'per_class': self.per_class.tolist(), 'unreadable_skipped': self.unreadable_skipped}
    d.update(self.labeler_class.counter_fields(self))
    return d


def merge_stats(parts: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
  """Sums chunk counters (settings are copied); adds means and fractions."""
  merged: Dict[str, Any] = {}
  for part in parts:
    for k, v in part.items():
      if k in ('kind', 'num_classes', 'score_bins', 'class_agnostic_nms_iou'):
        merged[k] = v
      elif isinstance(v, list):
        merged[k] = (np.asarray(merged.get(k, np.zeros(len(v), np.int64))) + np.asarray(v)).tolist()
      else:
        merged[k] = merged.get(k, 0) + v
  merged.setdefault('unreadable_skipped', 0)
  labeler = tasks.find_labeler_class(merged.get('kind'))   # None: no part merged
  if labeler is not None:
    labeler.add_derived(merged)
  return merged


def mark_host_done(out_dir: str, shard_index: int, num_shards: int, info: Dict[str, Any]) -> None:
  _atomic_write_text(os.path.join(out_dir, f'host-{shard_index:05d}-of-{num_shards:05d}.done'),
                     json.dumps(info))


def all_hosts_done(out_dir: str, num_shards: int) -> bool:
  return all(tf.io.gfile.exists(os.path.join(out_dir, f'host-{i:05d}-of-{num_shards:05d}.done'))
             for i in range(num_shards))


def _complete_prefixes(out_dir: str, shard_index: Optional[int] = None,
                       num_shards: Optional[int] = None) -> List[str]:
  """Prefixes of the complete chunks (those whose .tfrecord exists), sorted."""
  host = '*' if shard_index is None else f'{shard_index:05d}-of-{num_shards:05d}'
  paths = tf.io.gfile.glob(os.path.join(out_dir, f'pseudo-{host}-*.tfrecord'))
  return sorted(p[:-len('.tfrecord')] for p in paths)


def _read_json(path: str) -> Any:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def complete_stats(out_dir: str) -> Dict[str, Any]:
  """Merged counters of every complete chunk of the folder (what stats.json holds once all
  hosts are done; also for a folder still being labeled)."""
  return merge_stats(_read_json(p + '.stats.json') for p in _complete_prefixes(out_dir))


def host_stats(out_dir: str, shard_index: int, num_shards: int) -> Dict[str, Any]:
  """Merged counters of one host's complete chunks."""
  return merge_stats(_read_json(p + '.stats.json')
                     for p in _complete_prefixes(out_dir, shard_index, num_shards))


def _append_file(out, path: str) -> None:
  with tf.io.gfile.GFile(path, 'r') as f:
    while True:
      block = f.read(1 << 20)
      if not block:
        return
      out.write(block)


def _merge_coco(out_dir: str, prefixes: List[str]) -> None:
  """pseudo_coco.json from the chunks' COCO files, streamed: each chunk is read once and
  dropped (its images go to the output, its annotations, numbered 1, 2, ... across chunks,
  to a temporary file appended at the end)."""
  paths = [p + '.coco.json' for p in prefixes if tf.io.gfile.exists(p + '.coco.json')]
  if not paths:
    return
  target = os.path.join(out_dir, 'pseudo_coco.json')
  categories = []
  next_id = 1
  any_image = False
  out = tf.io.gfile.GFile(target + '.tmp', 'w')
  with tf.io.gfile.GFile(target + '.annotations.tmp', 'w') as ann_out:
    out.write('{"images": [')
    for path in paths:
      part = _read_json(path)
      categories = part.get('categories', categories)
      if part['images']:
        out.write((', ' if any_image else '') + json.dumps(part['images'])[1:-1])
        any_image = True
      anns = part['annotations']
      if anns:
        for ann in anns:
          ann['id'] = next_id
          next_id += 1
        ann_out.write((', ' if next_id - len(anns) > 1 else '') + json.dumps(anns)[1:-1])
      del part, anns
  out.write('], "annotations": [')
  if next_id > 1:  # a GFile creates its file at the first write, not before
    _append_file(out, target + '.annotations.tmp')
    tf.io.gfile.remove(target + '.annotations.tmp')
  out.write('], "categories": ' + json.dumps(categories) + '}')
  out.close()
  tf.io.gfile.rename(target + '.tmp', target, overwrite=True)


def merge_outputs(out_dir: str, extra: Optional[Dict[str, Any]] = None,
                  merge_coco: bool = True) -> Dict[str, Any]:
  """stats.json from all complete chunks' counters, pseudo_coco.json (if merge_coco) from
  their boxes. Memory holds one chunk's file at a time."""
  prefixes = _complete_prefixes(out_dir)
  stats = merge_stats(_read_json(p + '.stats.json') for p in prefixes)
  stats['chunks'] = len(prefixes)
  stats.update(extra or {})
  if merge_coco:
    _merge_coco(out_dir, prefixes)
  _atomic_write_text(os.path.join(out_dir, 'stats.json'), json.dumps(stats, indent=1))
  return stats


def tfrecord_pattern(out_dir: str) -> str:
  return os.path.join(out_dir, 'pseudo-*.tfrecord')


def list_tfrecords(out_dir: str) -> List[str]:
  return sorted(glob.glob(tfrecord_pattern(out_dir))) or sorted(
      tf.io.gfile.glob(tfrecord_pattern(out_dir)))
