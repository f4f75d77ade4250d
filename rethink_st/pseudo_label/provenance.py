"""Where a pseudo-label folder comes from, as its meta.json records it: the teacher
checkpoint's content hash (the path alone does not say which weights: a run folder's latest
checkpoint moves on, a copy has another path) and the model's NMS settings."""
import hashlib
import os
from typing import Any, Dict, Optional

import tensorflow as tf

_BLOCK = 1 << 22   # bytes read at a time


def checkpoint_sha256(prefix: str) -> str:
  """sha256 over a TF checkpoint's files (`<prefix>.index` and its `<prefix>.data-*`
  shards, in name order; each file's suffix, then its bytes): the same checkpoint copied
  to another folder gives the same hash. Reads the checkpoint once (a few
  seconds for a 500 MB one)."""
  digest = hashlib.sha256()
  files = [prefix + '.index'] + sorted(tf.io.gfile.glob(prefix + '.data-*'))
  for path in files:
    digest.update(os.path.basename(path)[len(os.path.basename(prefix)):].encode() + b'\0')
    with tf.io.gfile.GFile(path, 'rb') as f:
      while True:
        block = f.read(_BLOCK)
        if not block:
          break
        digest.update(block)
  return digest.hexdigest()


def nms_settings(model) -> Optional[Dict[str, Any]]:
  """The detection generator's settings (Model Garden's config: NMS version, IoU threshold,
  pre-NMS score threshold and top-k, detections per image, Soft-NMS sigma, ...), the
  JSON-able values only; None for a model without one."""
  generator = getattr(model, 'detection_generator', None)
  if generator is None or not hasattr(generator, 'get_config'):
    return None
  out = {}
  for key, value in sorted(generator.get_config().items()):
    if isinstance(value, (bool, int, float, str)) or value is None:
      out[key] = value
  return out
