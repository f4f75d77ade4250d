"""Data sources: one gin-configurable way to name any collection of images.

Every source is a `Source` (rethink_st/data/source_base.py) yielding the decoded examples of
`rethink_st.data.features`, validated at construction (bad input -> one-line UserError):

    tfds_source(name, split='train', data_dir=None, fraction=1.0, fraction_seed=0,
                image_ids_file=None, image_ids_mode='keep')
    tfrecord_source(file_pattern, fraction=1.0, fraction_seed=0, num_classes=None)
    coco_json_source(annotation_file, image_dir, include_masks=True, semantic_masks=False,
                     fraction=1.0, fraction_seed=0, image_ids_file=None, image_ids_mode='keep',
                     num_classes=None)
    image_folder_source(directory, fraction=1.0, fraction_seed=0)
    mask_folder_source(image_dir, mask_dir, num_classes, class_names=None,
                       require_masks=True, fraction=1.0, fraction_seed=0)
    digit_scenes_source(split='train', data_dir=None, fraction=1.0, fraction_seed=0,
                        generate=False)

All are registered in gin as `rethink_st.data.sources.<name>`, e.g.

    import rethink_st.data.sources
    train_input.source = @train/digit_scenes_source()
    train/digit_scenes_source.split = 'train'
    train/digit_scenes_source.fraction = 0.2     # the paper's 20% labeled subset

A source's `label_space` (rethink_st/data/label_space.py: the dataset's category id and name
of each class id) is read from a COCO JSON file; other sources have contiguous ids.
`num_classes_with_background(num_classes)` turns a count of object categories (the custom
templates' NUM_CLASSES) into a task's num_classes.

`source_from_spec` makes a source from one string (bin/pseudo_label.py's --unlabeled):
'digit_scenes:<split>', an image folder, or a TFRecord glob.

`fraction` keeps an example iff a stable hash of (source_id, fraction_seed) falls below it:
the same subset on every host and run, and the 20% subset is inside the 50% one.
`image_ids_file` keeps ('keep') or drops ('drop') the images an image-id file lists, e.g. the
labeled and the unlabeled half of a semi-supervised fold (bin/make_ssod_splits.py).
"""
from typing import Optional

import gin
import tensorflow as tf

from rethink_st.data import features as F  # pylint: disable=unused-import
from rethink_st.data.coco_json_source import CocoJsonSource, coco_json_source
from rethink_st.data.image_folder_source import IMAGE_EXTENSIONS, ImageFolderSource, \
    image_folder_source
from rethink_st.data.label_space import LabelSpace, num_classes_with_background
from rethink_st.data.mask_folder_source import MaskFolderSource, mask_folder_source
from rethink_st.data.source_base import Source, check_fraction, fraction_bucket, in_fraction, \
    in_shard
from rethink_st.data.tfds_source import TFDSSource, tfds_source
from rethink_st.data.tfrecord_source import TFRecordSource, tfrecord_source
from rethink_st.errors import UserError

__all__ = [
    'Source', 'TFDSSource', 'TFRecordSource', 'CocoJsonSource', 'ImageFolderSource',
    'tfds_source', 'tfrecord_source', 'coco_json_source', 'image_folder_source',
    'digit_scenes_source', 'source_from_spec', 'in_fraction', 'in_shard', 'fraction_bucket',
    'check_fraction', 'IMAGE_EXTENSIONS', 'UserError', 'MaskFolderSource',
    'mask_folder_source', 'LabelSpace', 'num_classes_with_background',
]

DIGIT_SCENES_NUM_CLASSES = 10


@gin.configurable(module='rethink_st.data.sources')
def digit_scenes_source(split: str = 'train', data_dir: Optional[str] = None,
                        fraction: float = 1.0, fraction_seed: int = 0,
                        generate: bool = False) -> TFRecordSource:
  """The embedded digit-scenes dataset's TFRecords for `split` (10 classes, ids 1..10).

  `rethink_st.data.digit_scenes.ensure_digit_scenes(data_dir)` makes the dataset if it is
  not there yet and returns its directory; its files are `{dir}/{split}.tfrecord-*`. In the
  default folder (data_dir None, or $RETHINK_ST_DATA_DIR) that happens on first use; in
  another one only with `generate=True`, so a mistyped data_dir is an error, not a new
  dataset. Splits: train, unlabeled, val, iconic_train, iconic_val.
  """
  from rethink_st.data import digit_scenes  # pylint: disable=import-outside-toplevel
  check_fraction(fraction, 'digit_scenes_source')
  if split not in digit_scenes.SPLITS:
    raise UserError(f'digit_scenes_source: unknown split={split!r}; expected one of '
                    f'{", ".join(digit_scenes.SPLITS)}')
  directory = digit_scenes.ensure_digit_scenes(data_dir, generate,
                                               what='digit_scenes_source.data_dir')
  source = TFRecordSource(f'{directory}/{split}.tfrecord-*', fraction=fraction,
                          fraction_seed=fraction_seed,
                          num_classes=DIGIT_SCENES_NUM_CLASSES,
                          name=f'digit_scenes_source(split={split!r})')
  # For progress ETAs (exact at fraction 1, expected otherwise).
  source.num_examples = int(round(
      digit_scenes.read_meta(directory)['splits'][split]['num_examples'] * fraction))
  return source


DIGIT_SCENES_PREFIX = 'digit_scenes:'


def source_from_spec(spec: str, where: str) -> Source:
  """A source named by one string: 'digit_scenes:<split>' (digit_scenes_source, its data_dir
  from gin or the default dataset), an existing folder (image_folder_source: its images,
  searched recursively), or anything else as a TFRecord glob (tfrecord_source). Errors are
  one UserError line starting with `<where>=<spec>`."""
  spec = (spec or '').strip()
  if not spec:
    raise UserError(f'{where}: empty; give digit_scenes:<split>, an image folder or a '
                    'TFRecord glob')
  try:
    if spec.startswith(DIGIT_SCENES_PREFIX):
      return digit_scenes_source(split=spec[len(DIGIT_SCENES_PREFIX):])
    if tf.io.gfile.isdir(spec):
      return image_folder_source(spec)
    return tfrecord_source(spec)
  except UserError as e:
    raise UserError(f'{where}={spec}: {(str(e).strip().splitlines() or [""])[0]}') from None
