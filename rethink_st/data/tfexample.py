"""Encoding examples as Model Garden tf.Examples.

`encode_example` turns a dict of numpy arrays keyed by `rethink_st.data.features` into a
serialized tf.train.Example with the feature keys of Model Garden's
`official/vision/data/create_coco_tf_record.py` (image/encoded, image/object/bbox/*,
image/object/class/label, image/object/mask as PNGs, ...), plus this project's
`image/segmentation/class/encoded` (PNG), `image/class/label` and `image/object/score`.
Model Garden's `TfExampleDecoder(include_mask=True)` and segmentation decoder read them.
"""
import hashlib
import io
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image
import tensorflow as tf
from official.vision.data import tfrecord_lib

from rethink_st.data import features as F


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [H, W], [H, W, 1] or [H, W, 3] array (deterministic)."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f'encode_png: expected uint8, got {array.dtype}')
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  out = io.BytesIO()
  Image.fromarray(array).save(out, format='PNG')
  return out.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
  """JPEG bytes (4:4:4, no chroma subsampling, deterministic) of a uint8 [H, W, 3] image."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'encode_jpeg: expected uint8 [H, W, 3], got {image.dtype} {image.shape}')
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='JPEG', quality=quality, subsampling=0)
  return out.getvalue()


def encode_example(example: Mapping[str, np.ndarray], *,
                   encoded_image: Optional[bytes] = None,
                   encoded_semantic_mask: Optional[bytes] = None,
                   class_names: Optional[Sequence[str]] = None,
                   filename: Optional[str] = None) -> bytes:
  """Serializes one example to tf.train.Example bytes.

  Args:
    example: dict keyed by `features` constants. Required: IMAGE (uint8 [H, W, 3]; may be
      omitted if `encoded_image` is given together with HEIGHT and WIDTH) and SOURCE_ID
      (digits, as Model Garden parses it to an int). Optional: BOXES (normalized [N, 4]
      ymin, xmin, ymax, xmax), CLASSES [N] (1-based), IS_CROWD [N], AREA [N] (pixels;
      default from the boxes), INSTANCE_MASKS [N, H, W] 0/1, SEMANTIC_MASK [H, W(, 1)] uint8,
      LABEL (image-level, 0-based), SCORES [N]. Keys outside the contract are ignored.
    encoded_image: the image already encoded (PNG or JPEG), to avoid encoding twice.
    encoded_semantic_mask: SEMANTIC_MASK already encoded as PNG (used instead of it).
    class_names: names of class ids 1, 2, ...; if given, image/object/class/text is written.
    filename: image/filename (default '<source_id>.png').
  """
  feat = tfrecord_lib.convert_to_feature

  if encoded_image is None:
    image = np.asarray(example[F.IMAGE])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'encode_example: image must be uint8 [H, W, 3], got '
                       f'{image.dtype} {image.shape}')
    height, width = image.shape[:2]
    encoded_image = encode_png(image)
    image_format = 'png'
  else:
    if F.IMAGE in example:
      height, width = np.asarray(example[F.IMAGE]).shape[:2]
    else:
      height, width = int(example[F.HEIGHT]), int(example[F.WIDTH])
    image_format = 'jpeg' if encoded_image[:3] == b'\xff\xd8\xff' else 'png'
  source_id = example[F.SOURCE_ID]
  if isinstance(source_id, np.ndarray):
    source_id = source_id.item()
  source_id = source_id.decode('utf8') if isinstance(source_id, bytes) else str(source_id)

  feature = {
      'image/height': feat(int(height), 'int64'),
      'image/width': feat(int(width), 'int64'),
      'image/filename': feat((filename or f'{source_id}.{image_format}').encode('utf8'),
                             'bytes'),
      'image/source_id': feat(source_id.encode('utf8'), 'bytes'),
      'image/key/sha256': feat(hashlib.sha256(encoded_image).hexdigest().encode('utf8'),
                               'bytes'),
      'image/encoded': feat(encoded_image, 'bytes'),
      'image/format': feat(image_format.encode('utf8'), 'bytes'),
  }

  boxes = np.asarray(example.get(F.BOXES, np.zeros((0, 4))), np.float32).reshape(-1, 4)
  n = len(boxes)
  classes = np.asarray(example.get(F.CLASSES, np.zeros(n)), np.int64).reshape(-1)
  if len(classes) != n:
    raise ValueError(f'encode_example: {n} boxes but {len(classes)} classes')
  is_crowd = np.asarray(example.get(F.IS_CROWD, np.zeros(n)), np.int64).reshape(-1)
  if F.AREA in example:
    area = np.asarray(example[F.AREA], np.float32).reshape(-1)
  else:
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * height * width)
  feature.update({
      'image/object/bbox/xmin': feat(boxes[:, 1].tolist(), 'float_list'),
      'image/object/bbox/xmax': feat(boxes[:, 3].tolist(), 'float_list'),
      'image/object/bbox/ymin': feat(boxes[:, 0].tolist(), 'float_list'),
      'image/object/bbox/ymax': feat(boxes[:, 2].tolist(), 'float_list'),
      'image/object/class/label': feat(classes.tolist(), 'int64_list'),
      'image/object/is_crowd': feat(is_crowd.tolist(), 'int64_list'),
      'image/object/area': feat(area.tolist(), 'float_list'),
  })
  if class_names is not None:
    feature['image/object/class/text'] = feat(
        [class_names[c - 1].encode('utf8') for c in classes], 'bytes_list')
  if example.get(F.INSTANCE_MASKS) is not None:
    masks = np.asarray(example[F.INSTANCE_MASKS])
    if len(masks) != n:
      raise ValueError(f'encode_example: {n} boxes but {len(masks)} instance masks')
    masks = (masks > 0.5).astype(np.uint8)     # 0/1, as create_coco_tf_record writes them
    feature['image/object/mask'] = feat([encode_png(m) for m in masks], 'bytes_list')
  if example.get(F.SCORES) is not None:
    feature[F.TFEX_SCORE] = feat(
        np.asarray(example[F.SCORES], np.float32).reshape(-1).tolist(), 'float_list')
  if encoded_semantic_mask is None and example.get(F.SEMANTIC_MASK) is not None:
    encoded_semantic_mask = encode_png(np.asarray(example[F.SEMANTIC_MASK], np.uint8))
  if encoded_semantic_mask is not None:
    feature[F.TFEX_SEMANTIC_MASK] = feat(encoded_semantic_mask, 'bytes')
    feature['image/segmentation/class/format'] = feat(b'png', 'bytes')
  if example.get(F.LABEL) is not None:
    feature[F.TFEX_LABEL] = feat(int(example[F.LABEL]), 'int64')
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)
