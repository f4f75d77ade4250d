"""pseudo_label_source: the pseudo-labeler's output folder as a Source for the student.

It reads the chunks' tf.Examples, which hold the kept pseudo boxes only; the detections below
the score threshold or dropped by class-agnostic suppression are in the COCO JSON files
alone, for the report."""
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
  if not tf.io.gfile.isdir(directory):
    raise UserError(f'pseudo_label_source.directory={directory}: no such folder')
  meta = shards.read_meta(directory)
  if require_complete and not shards.all_hosts_done(directory, int(meta['num_shards'])):
    raise UserError(f'pseudo_label_source.directory={directory}: labeling is not finished '
                    f'(not all {meta["num_shards"]} hosts wrote their .done file)')
  if not shards.list_tfrecords(directory):
    raise UserError(f'pseudo_label_source.directory={directory}: no complete chunk')
  return sources.tfrecord_source(shards.tfrecord_pattern(directory),
                                 num_classes=int(meta['num_classes']))
