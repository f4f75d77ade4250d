"""A folder of images and a folder of PNG class masks: a user's segmentation dataset.

Image `<image_dir>/<path>/<name>.<ext>` (jpg/jpeg/png/bmp/gif, searched recursively) pairs with
mask `<mask_dir>/<path>/<name>.png`: one channel (or palette indices, as PASCAL's masks are
stored), the same height and width as the image, pixel value = class id: 0 background,
1..num_classes, IGNORE_LABEL (255) not labeled. source_id is `<path>/<name>`. Images without a
mask are an error at construction (one line naming the first), unless `require_masks=False`
skips them (e.g. a folder that also holds unlabeled images).

The label space is contiguous: class c is mask value c, named `class_names[c - 1]` when given
(else its number). Examples carry no boxes (N = 0) beside the semantic mask.
"""
import os
from typing import Optional, Sequence

import gin
import tensorflow as tf, tf_keras  # pylint: disable=unused-import

from rethink_st.data import features as F
from rethink_st.data import label_space as label_space_lib
from rethink_st.data import source_base
from rethink_st.data.image_folder_source import IMAGE_EXTENSIONS
from rethink_st.errors import UserError

_GIN_MODULE = 'rethink_st.data.sources'


def _files(directory: str, extensions) -> dict:
  """{relative path without extension: full path} of the files under `directory`."""
  found = {}
  for root, _, names in tf.io.gfile.walk(directory):
    for name in names:
      stem, ext = os.path.splitext(name)
      if ext.lower() in extensions:
        found[os.path.relpath(os.path.join(root, stem), directory)] = os.path.join(root, name)
  return found


class MaskFolderSource(source_base.Source):
  """Images + PNG masks of class ids, paired by relative path."""

  def __init__(self, image_dir: str, mask_dir: str, num_classes: int, *,
               class_names: Optional[Sequence[str]] = None, require_masks: bool = True,
               fraction: float = 1.0, fraction_seed: int = 0):
    self.image_dir, self.mask_dir, self.require_masks = image_dir, mask_dir, require_masks
    self.class_names = class_names
    super().__init__(f'mask_folder_source(image_dir={image_dir!r}, mask_dir={mask_dir!r})',
                     fraction=fraction, fraction_seed=fraction_seed, num_classes=num_classes)
    self.pairs = []
    self.validate()

  def validate(self) -> None:
    for what, path in (('image_dir', self.image_dir), ('mask_dir', self.mask_dir)):
      if isinstance(path, str) and path.startswith('REQUIRED'):
        raise UserError(f'mask_folder_source: {what} is not set: {path}')
      if not tf.io.gfile.isdir(path):
        raise UserError(f'mask_folder_source: {what} {path!r} does not exist')
    n = self.num_classes
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
      raise UserError(f'mask_folder_source: num_classes={n!r} must be a positive integer '
                      '(NUM_CLASSES: object classes, background 0 not counted)')
    if self.class_names is not None and len(self.class_names) != n:
      raise UserError(f'mask_folder_source: class_names has {len(self.class_names)} names '
                      f'but num_classes is {n}')
    images = _files(self.image_dir, IMAGE_EXTENSIONS)
    masks = _files(self.mask_dir, ('.png',))
    if not images:
      raise UserError(f'mask_folder_source: image_dir {self.image_dir!r} holds no images')
    missing = sorted(set(images) - set(masks))
    if missing and self.require_masks:
      raise UserError(f'mask_folder_source: {len(missing)} of {len(images)} images have no '
                      f'mask in mask_dir {self.mask_dir!r} (e.g. {missing[0]}.png for '
                      f'{images[missing[0]]}); bind require_masks=False to skip them')
    self.pairs = [(key, images[key], masks[key]) for key in sorted(images) if key in masks]
    if not self.pairs:
      raise UserError(f'mask_folder_source: no image of {self.image_dir!r} has a mask in '
                      f'{self.mask_dir!r}')
    self.label_space = label_space_lib.LabelSpace.contiguous(n, self.class_names)

  def _keyed_dataset(self, *, shuffle, seed, input_context):
    del shuffle, seed  # The base class shuffles the (cheap) paths.
    ids = [k for k, _, _ in self.pairs]
    paths = {'image': [i for _, i, _ in self.pairs], 'mask': [m for _, _, m in self.pairs]}
    ds = tf.data.Dataset.from_tensor_slices((ids, paths))
    return source_base.shard_for_input_context(ds, input_context)

  def _decode_image(self, source_id, paths):
    return source_base.image_example(source_id, tf.io.read_file(paths['image']))

  def _decode(self, source_id, paths):
    example = self._decode_image(source_id, paths)
    del example[F.ENCODED_IMAGE]
    mask = tf.io.decode_png(tf.io.read_file(paths['mask']), channels=1, dtype=tf.uint8)
    mask.set_shape([None, None, 1])
    tf.debugging.assert_equal(
        tf.shape(mask, out_type=tf.int64)[:2], tf.stack([example[F.HEIGHT], example[F.WIDTH]]),
        message='mask_folder_source: a mask is not the size of its image')
    example.update({F.SEMANTIC_MASK: mask, F.CLASSES: tf.zeros([0], tf.int64),
                    F.IS_CROWD: tf.zeros([0], tf.bool), F.AREA: tf.zeros([0], tf.float32),
                    F.BOXES: tf.zeros([0, 4], tf.float32)})
    return example


@gin.configurable(module=_GIN_MODULE)
def mask_folder_source(image_dir: str, mask_dir: str, num_classes: int = gin.REQUIRED,
                       class_names: Optional[Sequence[str]] = None,
                       require_masks: bool = True, fraction: float = 1.0,
                       fraction_seed: int = 0) -> MaskFolderSource:
  """Images under image_dir with PNG masks of class ids under mask_dir (same relative path,
  .png): 0 background, 1..num_classes, 255 ignored. Raises UserError at construction for a
  missing folder, an image without a mask (unless require_masks=False), a bad num_classes
  or class_names of another length."""
  return MaskFolderSource(image_dir, mask_dir, num_classes, class_names=class_names,
                          require_masks=require_masks, fraction=fraction,
                          fraction_seed=fraction_seed)
