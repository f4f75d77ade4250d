"""pseudo_label_source: the pseudo-labeler's output folder as a Source for the student.

It reads the chunks' tf.Examples, which hold the kept pseudo boxes only; the detections below
the score threshold or dropped by class-agnostic suppression are in the COCO JSON files
alone, for the report. The source carries `pseudo_set` (`pseudo_set_density`), how densely
the folder labels its images, which the student reports and warns about."""
import os
from typing import Any, Dict

import gin
import tensorflow as tf

from rethink_st.data import sources
from rethink_st.errors import UserError
from rethink_st.pseudo_label import shards


@gin.configurable
def pseudo_label_source(directory: str, require_complete: bool = True) -> sources.TFRecordSource:
  """The complete chunks in `directory`, with the label space recorded in its meta.json.

  require_complete: stop (one line) unless every host of the labeling run has finished.
  """
  meta = check_folder(directory, 'pseudo_label_source.directory', require_complete)
  source = sources.tfrecord_source(shards.tfrecord_pattern(directory),
                                   num_classes=int(meta['num_classes']))
  source.pseudo_set = dict(pseudo_set_density(shards.complete_stats(directory)),
                           directory=directory)
  return source


def check_folder(directory: str, where: str, require_complete: bool = True) -> Dict[str, Any]:
  """A pseudo-label folder's meta.json, or one UserError line `<where>=<directory>: ...` if it
  is missing, not a pseudo-label folder, not finished (require_complete) or without a
  complete chunk. `where` names what gave the folder (a binding, or bin/train_student.py's
  --pseudo_labels)."""
  if not tf.io.gfile.isdir(directory):
    raise UserError(f'{where}={directory}: no such folder')
  if not tf.io.gfile.exists(os.path.join(directory, 'meta.json')):
    raise UserError(f'{where}={directory}: not a pseudo-label folder (no meta.json; '
                    'bin/pseudo_label.py writes one)')
  meta = shards.read_meta(directory)
  if require_complete and not shards.all_hosts_done(directory, int(meta['num_shards'])):
    raise UserError(f'{where}={directory}: labeling is not finished '
                    f'(not all {meta["num_shards"]} hosts wrote their .done file)')
  if not shards.list_tfrecords(directory):
    raise UserError(f'{where}={directory}: no complete chunk')
  return meta


def pseudo_set_density(stats: Dict[str, Any]) -> Dict[str, float]:
  """How densely a pseudo-label folder labels its images, from its merged counters: images,
  and boxes_per_image (detection) or labeled_pixel_fraction (segmentation: the pixels that
  carry a label rather than the ignore value). A teacher too weak for its score threshold
  gives a set with almost no label, which a student trains on without any error."""
  images = int(stats.get('images', 0))
  if stats.get('kind') == 'segmentation':
    pixels = int(stats.get('pixels', 0))
    labeled = 1.0 - stats.get('ignored_pixels', 0) / pixels if pixels else 0.0
    return {'images': images, 'labeled_pixel_fraction': labeled}
  return {'images': images,
          'boxes_per_image': stats.get('boxes', 0) / images if images else 0.0}
