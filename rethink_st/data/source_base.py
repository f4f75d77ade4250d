"""The `Source` interface every data source implements, and the deterministic subset rules.

A source yields decoded examples (the contract in `rethink_st.data.features`): one dict per
image, not batched, not repeated. Every source runs the same steps:

    keyed records  (source_id, cheap payload)    subclass: `_keyed_dataset`
      -> labeled fraction   keep iff in_fraction(source_id, fraction, fraction_seed)
      -> image-id file      keep ('keep') or drop ('drop') the ids of image_ids_file
      -> host shard         keep iff in_shard(source_id, num_shards, shard_index)
      -> shuffle            optional, on the cheap payloads
      -> decode             subclass: `_decode` (image decoding happens only here)

With `images_only=True` (pseudo-labeling's unlabeled pool) the decode step is guarded, for
every source alike (`guarded_decode` below): an image that cannot be read or decoded
(corrupt, zero bytes, not an image, a vanished file) is skipped with a warning instead of
stopping the run (`unreadable='skip'`), or yields an example with F.READABLE False so the
caller can count it (`'flag'`). Each image is still decoded once, and which images are
skipped depends only on their bytes, so it is the same on every run. The guard costs about
0.1-0.2 ms of CPU per image; `unreadable='raise'` decodes without it (pseudo-labeling does
so until the first unreadable image, then switches to 'flag').

Both subset rules hash the example's `source_id`, never its position, so they do not depend
on file order, shuffling, the number of hosts or the run: the 20% subset is the same on every
host and every run, and it is contained in the 50% subset (same hash, lower threshold).

`image_ids_file` names a subset explicitly instead (rethink_st/data/image_ids.py; e.g. a
semi-supervised fold written by bin/make_ssod_splits.py): with image_ids_mode='keep' the
source yields the images whose source_id is in the file (the labeled set), with 'drop' all
the others (the unlabeled set), so one file gives both halves of a split.
"""
import abc
import os
from typing import Any, Callable, Optional

import tensorflow as tf, tf_keras  # pylint: disable=unused-import

from rethink_st.data import features as F
from rethink_st.data import image_ids as image_ids_lib
from rethink_st.errors import UserError

# The fraction hash lands in [0, _FRACTION_BUCKETS); an example is kept iff its bucket is
# below round(fraction * _FRACTION_BUCKETS).
_FRACTION_BUCKETS = 1 << 30


def check_fraction(fraction: Any, where: str) -> float:
  """Returns `fraction` as a float, or raises UserError naming `where` if it is not in (0, 1]."""
  try:
    value = float(fraction)
  except (TypeError, ValueError):
    raise UserError(f'{where}: fraction={fraction!r} must be a number in (0, 1]') from None
  if isinstance(fraction, bool) or not 0.0 < value <= 1.0:
    raise UserError(f'{where}: fraction={fraction!r} must be in (0, 1]')
  return value


def fraction_bucket(source_id, fraction_seed: int = 0) -> tf.Tensor:
  """Stable hash of (source_id, fraction_seed) in [0, 2**30); same on every host and run.

  `tf.strings.to_hash_bucket_fast` is FarmHash Fingerprint64, which TensorFlow guarantees
  never changes. Works on a scalar or a vector of source ids, eagerly or in a graph.
  """
  salted = tf.strings.join([source_id, f'|fraction_seed={int(fraction_seed)}'])
  return tf.strings.to_hash_bucket_fast(salted, _FRACTION_BUCKETS)


def in_fraction(source_id, fraction: float, fraction_seed: int = 0) -> tf.Tensor:
  """True where the example belongs to the deterministic `fraction` subset (a bool tensor)."""
  threshold = int(round(float(fraction) * _FRACTION_BUCKETS))
  return fraction_bucket(source_id, fraction_seed) < threshold


def in_shard(source_id, num_shards: int, shard_index: int) -> tf.Tensor:
  """True where the example belongs to host shard `shard_index` of `num_shards`.

  A partition: every example is in exactly one shard, whatever the order of the data.
  """
  salted = tf.strings.join([source_id, '|shard'])
  return tf.equal(tf.strings.to_hash_bucket_fast(salted, int(num_shards)), int(shard_index))


def shard_for_input_context(ds: tf.data.Dataset,
                            input_context: Optional[tf.distribute.InputContext]
                            ) -> tf.data.Dataset:
  """Keeps this input pipeline's share of `ds` (every n-th element) under tf.distribute."""
  if input_context is None or input_context.num_input_pipelines <= 1:
    return ds
  return ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


IMAGE_IDS_MODES = ('keep', 'drop')
_ID_HASH_BUCKETS = (1 << 63) - 1


# Images decoded concurrently by `guarded_decode` (each in its own tiny nested dataset).
_GUARDED_DECODE_CYCLE = max(8, os.cpu_count() or 1)


def image_example(source_id, encoded) -> dict:
  """The image-only example (F.IMAGE_ONLY_KEYS but F.READABLE) of encoded image bytes:
  decoded to 3 channels (PNG, JPEG, BMP, GIF's first frame), with its height and width."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  shape = tf.shape(image, out_type=tf.int64)
  return {F.SOURCE_ID: source_id, F.IMAGE: image, F.HEIGHT: shape[0], F.WIDTH: shape[1],
          F.ENCODED_IMAGE: encoded}


def unreadable_example(source_id) -> dict:
  """The F.READABLE=False example of an image that could not be read or decoded."""
  return {F.SOURCE_ID: source_id, F.IMAGE: tf.zeros([0, 0, 3], tf.uint8),
          F.HEIGHT: tf.constant(0, tf.int64), F.WIDTH: tf.constant(0, tf.int64),
          F.ENCODED_IMAGE: tf.constant(b''), F.READABLE: tf.constant(False)}


def guarded_decode(keyed: tf.data.Dataset, decode: Callable[[Any, Any], dict],
                   name: str) -> tf.data.Dataset:
  """`keyed.map(decode)` (to F.IMAGE_ONLY_KEYS + F.READABLE) where an error in `decode` gives
  `unreadable_example(source_id)` (with a warning) instead of stopping the iteration.

  Each record is decoded in its own one-element dataset with `ignore_errors()`, followed by
  its unreadable example, `take(1)`: exactly one example per record, in the input order
  (interleaving one-element datasets with block_length 1 keeps the order), decoded once and
  in parallel. Only errors of `decode` are caught: one reading the records themselves (a
  corrupt TFRecord file, say) still stops the run.
  """
  def readable(source_id, payload):
    example = decode(source_id, payload)
    out = {k: example[k] for k in F.IMAGE_ONLY_KEYS}
    out[F.HEIGHT] = tf.cast(out[F.HEIGHT], tf.int64)
    out[F.WIDTH] = tf.cast(out[F.WIDTH], tf.int64)
    out[F.READABLE] = tf.constant(True)
    return out

  def unreadable(source_id):
    tf.print(f'WARNING: {name}: skipping unreadable image (corrupt, empty or not an image): '
             'source_id =', source_id)
    return unreadable_example(source_id)

  def one(source_id, payload):
    decoded = tf.data.Dataset.from_tensors((source_id, payload)).map(readable).ignore_errors()
    fallback = tf.data.Dataset.from_tensors(source_id).map(unreadable)
    return decoded.concatenate(fallback).take(1)

  return keyed.interleave(one, cycle_length=_GUARDED_DECODE_CYCLE, block_length=1,
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class Source(abc.ABC):
  """A named collection of images (and labels), yielding decoded examples.

  Attributes:
    name: how error and log messages name this source.
    num_classes: number of foreground classes (class ids are 1..num_classes, 0 is
      background), or None when the source has no class labels or does not know them.
    fraction, fraction_seed: the deterministic labeled subset (see module docstring).
    image_ids_file, image_ids_mode: an explicit subset: keep ('keep') or drop ('drop') the
      images listed in the file (see module docstring); None: no such filter.
  """

  # Shuffle buffer, in records (encoded images or record indices, not decoded images).
  shuffle_buffer_size = 1024

  def __init__(self, name: str, *, fraction: float = 1.0, fraction_seed: int = 0,
               num_classes: Optional[int] = None, image_ids_file: Optional[str] = None,
               image_ids_mode: str = 'keep'):
    self.name = name
    self.fraction = check_fraction(fraction, name)
    try:
      self.fraction_seed = int(fraction_seed)
    except (TypeError, ValueError):
      raise UserError(f'{name}: fraction_seed={fraction_seed!r} must be an integer') from None
    self.num_classes = num_classes
    if image_ids_mode not in IMAGE_IDS_MODES:
      raise UserError(f'{name}: image_ids_mode={image_ids_mode!r} must be one of '
                      f'{", ".join(IMAGE_IDS_MODES)}')
    self.image_ids_file, self.image_ids_mode = image_ids_file, image_ids_mode
    self.image_ids_meta = None
    self._image_ids_keys = None   # the file's ids as source_id strings
    if image_ids_file is not None:
      self._image_ids_keys, self.image_ids_meta = image_ids_lib.read_image_ids_file(
          image_ids_file, f'{name}: image_ids_file')
      if tf.executing_eagerly():  # _filter_image_ids needs distinct hashes (~1e-10 odds)
        hashes = tf.strings.to_hash_bucket_fast(self._image_ids_keys, _ID_HASH_BUCKETS)
        if len(set(hashes.numpy().tolist())) != len(self._image_ids_keys):
          raise NotImplementedError(f'{image_ids_file}: two image ids share a 63-bit hash')

  def check_image_ids(self, known_source_ids) -> None:
    """UserError unless every id of image_ids_file is one of `known_source_ids` (a source
    that knows its ids cheaply calls this from `validate`): a file made from another dataset
    would otherwise keep or drop nothing, silently."""
    if self._image_ids_keys is None:
      return
    known = set(known_source_ids)
    missing = [i for i in self._image_ids_keys if i not in known]
    if missing:
      raise UserError(
          f'{self.name}: image_ids_file={self.image_ids_file}: {len(missing)} of its '
          f'{len(self._image_ids_keys)} image ids are not images of this source (e.g. '
          f'{missing[0]}); was it made from another annotation file or split?')

  def source_ids(self) -> tf.data.Dataset:
    """The source_id of every record, in the source's order, before any subset filter and
    without decoding (e.g. to list a dataset's image ids, bin/make_ssod_splits.py)."""
    ds = self._keyed_dataset(shuffle=False, seed=0, input_context=None)
    return ds.map(lambda source_id, _: source_id)

  def _filter_image_ids(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Keeps (image_ids_mode 'keep') or drops ('drop') the records whose source_id is in
    image_ids_file. Membership is a binary search over the ids' 63-bit FarmHash values, then
    an exact string comparison: constants only, no lookup-table resource to keep alive on
    every input host."""
    keys = tf.constant(self._image_ids_keys, tf.string)
    hashes = tf.strings.to_hash_bucket_fast(keys, _ID_HASH_BUCKETS)
    order = tf.argsort(hashes)
    hashes, keys = tf.gather(hashes, order), tf.gather(keys, order)
    last = len(self._image_ids_keys) - 1
    keep_listed = self.image_ids_mode == 'keep'

    def selected(source_id, _):
      h = tf.strings.to_hash_bucket_fast(source_id, _ID_HASH_BUCKETS)
      i = tf.minimum(tf.searchsorted(hashes, tf.reshape(h, [1]))[0], last)
      listed = tf.logical_and(tf.equal(hashes[i], h), tf.equal(keys[i], source_id))
      return tf.equal(listed, keep_listed)

    return ds.filter(selected)

  def __repr__(self):
    return f'<{type(self).__name__} {self.name}>'

  @abc.abstractmethod
  def validate(self) -> None:
    """Cheap up-front checks; raises UserError with one line naming the path/name/file."""

  @abc.abstractmethod
  def _keyed_dataset(self, *, shuffle: bool, seed: int,
                     input_context: Optional[tf.distribute.InputContext]) -> tf.data.Dataset:
    """Elements `(source_id, payload)`: cheap to make, in a deterministic order if not shuffle.

    Must already apply `input_context` sharding (by file where possible).
    """

  @abc.abstractmethod
  def _decode(self, source_id: tf.Tensor, payload: Any) -> dict:
    """Turns one keyed record into a decoded example dict (features.py contract)."""

  def _decode_image(self, source_id: tf.Tensor, payload: Any) -> dict:
    """Like `_decode`, for `dataset(images_only=True)`: F.IMAGE_ONLY_KEYS only. This default
    decodes everything and drops the labels, with no bytes; sources override it to skip
    the labels and to pass their stored bytes through."""
    example = self._decode(source_id, payload)
    image_only = {k: example[k] for k in F.IMAGE_ONLY_KEYS[:-1]}
    image_only[F.ENCODED_IMAGE] = tf.constant(b'')
    return image_only

  def _decode_without_masks(self, source_id: tf.Tensor, payload: Any) -> dict:
    """Like `_decode` without F.INSTANCE_MASKS; sources override it to skip decoding them."""
    example = self._decode(source_id, payload)
    example.pop(F.INSTANCE_MASKS, None)
    return example

  def _finish(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Hook applied after `_decode` (e.g. dropping unreadable images); not after
    `_decode_image`, which `guarded_decode` guards for every source."""
    return ds

  def dataset(self, *, shuffle: bool = False, seed: int = 0,
              input_context: Optional[tf.distribute.InputContext] = None,
              num_shards: int = 1, shard_index: int = 0,
              images_only: bool = False, instance_masks: bool = True,
              unreadable: str = 'skip', skip: int = 0) -> tf.data.Dataset:
    """Decoded examples, not batched, not repeated.

    Args:
      shuffle: shuffle files and records (seeded by `seed`); otherwise the order is the
        same on every run.
      seed: shuffle seed.
      input_context: a `tf.distribute.InputContext`; each input pipeline reads its share
        (files are split by `input_pipeline_id` when there are enough of them).
      num_shards, shard_index: split by example for independent hosts (pseudo-labeling):
        shard `shard_index` keeps the examples whose source_id hashes to it, so the shards
        partition the data, the same way on every run.
      images_only: examples hold only F.IMAGE_ONLY_KEYS: the image, its id and size, and
        its bytes as stored (for pseudo-labeling, which writes them back unchanged).
      instance_masks: False: examples hold no F.INSTANCE_MASKS (a detector that does not
        derive boxes from masks never reads them, and decoding them costs CPU).
      unreadable: with images_only, what an image that cannot be read or decoded gives:
        'skip' nothing (with a warning); 'flag' an example with F.READABLE False (its id,
        an empty image, b'' bytes; the others have F.READABLE True); 'raise' an error from
        the iterator (no guard, a little faster).
      skip: leave out the first `skip` records (after the subset, shard and shuffle steps)
        before decoding them: resuming where a run stopped costs no decoding.
    """
    if unreadable not in ('skip', 'flag', 'raise'):
      raise ValueError(f"unreadable={unreadable!r}: expected 'skip', 'flag' or 'raise'")
    if int(num_shards) < 1 or not 0 <= int(shard_index) < int(num_shards):
      raise UserError(f'{self.name}: need 0 <= shard_index < num_shards, got '
                      f'shard_index={shard_index!r}, num_shards={num_shards!r}')
    ds = self._keyed_dataset(shuffle=shuffle, seed=seed, input_context=input_context)
    if self.fraction < 1.0:
      fraction, fraction_seed = self.fraction, self.fraction_seed
      ds = ds.filter(lambda source_id, _: in_fraction(source_id, fraction, fraction_seed))
    if self._image_ids_keys is not None:
      ds = self._filter_image_ids(ds)
    if num_shards > 1:
      ds = ds.filter(lambda source_id, _: in_shard(source_id, num_shards, shard_index))
    if shuffle:
      ds = ds.shuffle(self.shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    if skip:
      ds = ds.skip(int(skip))
    if images_only and unreadable == 'raise':
      return ds.map(self._decode_image, num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
    if images_only:
      ds = guarded_decode(ds, self._decode_image, self.name)
      if unreadable == 'skip':
        ds = ds.filter(lambda ex: ex[F.READABLE])
        ds = ds.map(lambda ex: {k: ex[k] for k in F.IMAGE_ONLY_KEYS})
      return ds
    decode = self._decode if instance_masks else self._decode_without_masks
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return self._finish(ds)
