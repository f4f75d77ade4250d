"""The pseudo-labeler's input and inference: batches of decoded unlabeled images with the
bytes to write back, and the distributed predict function.

Speed: the per-image work outside the model is kept to a few small numpy operations.
  - The image is written as the source's own encoded bytes (JPEG or PNG, exactly what the
    teacher decoded), not re-encoded: PNG encoding cost more than the model (~15-35 ms per
    128 px image on 2 CPU cores) and makes JPEG datasets several times larger. Sources whose
    bytes cannot be had, and formats other than JPEG/PNG, are PNG-encoded inside tf.data.
  - Every batch has the same static size (the last one is padded and the padding dropped),
    so the predict function is traced once.
"""
from typing import Any, Callable, Dict

import numpy as np
import tensorflow as tf

from rethink_st.data import features as F

# Keys of the inference batches (besides the model's 'input' and 'image_info').
ENCODED = 'encoded'   # the image bytes written to the output (JPEG or PNG)
SHAPE = 'shape'       # original (height, width), int32
VALID = 'valid'       # False on the padding of the last batch and on unreadable images
UNREADABLE = 'unreadable'  # 1 for an image the source could not decode (not VALID), int32
_META_KEYS = (F.SOURCE_ID, ENCODED, SHAPE, VALID, UNREADABLE)
_PNG_COMPRESSION = 1  # fallback encoding: lossless either way, level 1 is ~4x faster than 6


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

