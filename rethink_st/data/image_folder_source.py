"""A plain folder of images without labels: the unlabeled pool for pseudo-labeling.

The folder is searched recursively for .jpg/.jpeg/.png/.bmp/.gif files (any case), in sorted
order; source_id is the path relative to the folder. Examples have only source_id, image,
height and width. A file that cannot be read or decoded (corrupt, zero bytes, not an image)
is skipped with a warning and counted: `source.skipped` is the number of distinct files found
unreadable so far by `dataset()` (complete after one full pass), `source.skipped_files` their
paths. `dataset(images_only=True)` (pseudo-labeling) decodes in the graph and skips (or flags)
unreadable files by the guard every source shares (`source_base.guarded_decode`).
"""
import os
import threading

from absl import logging
import gin
import tensorflow as tf, tf_keras  # pylint: disable=unused-import

from rethink_st.data import features as F
from rethink_st.data import source_base
from rethink_st.errors import UserError

_GIN_MODULE = 'rethink_st.data.sources'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


class ImageFolderSource(source_base.Source):
  """Every image file under `directory` (recursive), no labels."""

  def __init__(self, directory: str, *, fraction: float = 1.0, fraction_seed: int = 0):
    self.directory = directory
    super().__init__(f'image_folder_source(directory={directory!r})', fraction=fraction,
                     fraction_seed=fraction_seed)
    self.files = []
    self._skipped = set()
    self._lock = threading.Lock()
    self.validate()

  def validate(self) -> None:
    if not tf.io.gfile.isdir(self.directory):
      raise UserError(f'image_folder_source: directory {self.directory!r} does not exist '
                      'or is not a directory')
    files = []
    for root, _, names in tf.io.gfile.walk(self.directory):
      files.extend(os.path.join(root, n) for n in names
                   if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
    if not files:
      raise UserError(f'image_folder_source: directory {self.directory!r} holds no images '
                      f'({"/".join(e[1:] for e in IMAGE_EXTENSIONS)})')
    self.files = sorted(files)

  @property
  def skipped(self) -> int:
    """Number of distinct files skipped as unreadable so far."""
    with self._lock:
      return len(self._skipped)

  @property
  def skipped_files(self) -> list:
    with self._lock:
      return sorted(self._skipped)

  def _keyed_dataset(self, *, shuffle, seed, input_context):
    del shuffle, seed  # The base class shuffles the (cheap) paths.
    ids = [os.path.relpath(p, self.directory) for p in self.files]
    ds = tf.data.Dataset.from_tensor_slices((ids, self.files))
    return source_base.shard_for_input_context(ds, input_context)

  def _load(self, path):
    """Eager: (True, image) or, for an unreadable file, (False, empty image), counted."""
    try:
      image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
      return tf.constant(True), image
    except (tf.errors.OpError, ValueError) as e:
      name = path.numpy().decode('utf-8', 'replace')
      with self._lock:
        new = name not in self._skipped
        self._skipped.add(name)
        count = len(self._skipped)
      if new:
        logging.warning('%s: skipping unreadable image %s (%s); %d skipped so far', self.name,
                        name, type(e).__name__, count)
      return tf.constant(False), tf.zeros([0, 0, 3], tf.uint8)

  def _decode(self, source_id, path):
    ok, image = tf.py_function(self._load, [path], [tf.bool, tf.uint8])
    ok.set_shape([])
    image.set_shape([None, None, 3])
    shape = tf.shape(image, out_type=tf.int64)
    return {'_ok': ok, F.SOURCE_ID: source_id, F.IMAGE: image, F.HEIGHT: shape[0],
            F.WIDTH: shape[1]}

  def _decode_image(self, source_id, path):
    # Fails on an unreadable file: Source.dataset guards it (source_base.guarded_decode).
    return source_base.image_example(source_id, tf.io.read_file(path))

  def _finish(self, ds):
    ds = ds.filter(lambda ex: ex['_ok'])
    return ds.map(lambda ex: {k: v for k, v in ex.items() if k != '_ok'})


@gin.configurable(module=_GIN_MODULE)
def image_folder_source(directory: str, fraction: float = 1.0,
                        fraction_seed: int = 0) -> ImageFolderSource:
  """All images under `directory` (recursive; jpg/jpeg/png/bmp/gif), without labels.

  Raises UserError at construction if the directory is missing or holds no image files.
  Unreadable files are skipped and counted (`source.skipped`), never a crash.
  """
  return ImageFolderSource(directory, fraction=fraction, fraction_seed=fraction_seed)
