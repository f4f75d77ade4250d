"""The embedded "digit scenes" dataset: detection / segmentation scenes and iconic images
built from scikit-learn's bundled handwritten digits (1,797 real 8x8 images; no download).

It is the miniature stand-in for the paper's data: scenes of 1-6 digits for COCO / PASCAL
(boxes, instance masks, semantic masks) and one-digit "iconic" images for ImageNet
(image-level labels, used for pre-training, joint training and as an unlabeled source).

The 1,797 digits are split once (stratified, fixed seed) into disjoint pools `train`,
`unlabeled` and `val`; each split draws only from its pool, so no validation digit is ever
seen in training:

    split          kind    pool        what it stands for
    train          scenes  train       COCO train (human labels)
    unlabeled      scenes  unlabeled   unlabeled images (labels written too, held back for
                                       measuring pseudo-label precision / recall)
    val            scenes  val         COCO val
    iconic_train   iconic  train       ImageNet train
    iconic_val     iconic  val         ImageNet val

Generation (numpy, `rethink_st/data/digit_scene_generator.py`) is kept apart from
serialization: `make_digit_scenes` writes a directory:

    {data_dir}/meta.json                              written last: the directory is complete
    {data_dir}/{split}.tfrecord-00000-of-00004 ...    Model Garden tf.Examples
    {data_dir}/annotations/{split}.json               COCO instances JSON (RLE masks)
    {data_dir}/images/{split}/{image_id:06d}.jpg      the images (JPEG q92; or .png)
    {data_dir}/masks/{split}/{image_id:06d}.png       semantic masks (0, 1..10, 255 ignore)

Image ids (COCO `image_id`, tf.Example `image/source_id`) are 1..N within each split;
example i goes to shard i % shards. Every image is generated from its own
`np.random.default_rng([seed, split_number, index])` (split_number = SPLITS.index(split)),
so the same seed gives byte-identical files and a bigger set starts with the smaller one.

What a scene holds (how digits are drawn, occluded and labelled):
`rethink_st/data/digit_scene_generator.py`.
"""
import json
import os
import shutil
import sys
import tempfile
from typing import List, Optional

import gin
import numpy as np

from rethink_st import features as F
# The generator's names callers reach through this module too (digit_scenes.generate_scene).
from rethink_st.data.digit_scene_generator import (  # noqa: F401  (re-exported)
    DIGIT_INDICES, NUM_CLASSES, DigitPool, digit_pools, generate_iconic, generate_scene)
from rethink_st.errors import UserError

CLASS_NAMES = tuple(str(d) for d in range(NUM_CLASSES))
SCENE_SPLITS = ('train', 'unlabeled', 'val')
ICONIC_SPLITS = ('iconic_train', 'iconic_val')
SPLITS = SCENE_SPLITS + ICONIC_SPLITS
POOL_OF_SPLIT = {'train': 'train', 'unlabeled': 'unlabeled', 'val': 'val',
                 'iconic_train': 'train', 'iconic_val': 'val'}
META_FILE = 'meta.json'
DATA_DIR_ENV = 'RETHINK_ST_DATA_DIR'
FORMAT_VERSION = 1
IMAGE_FORMATS = ('jpeg', 'png')
JPEG_QUALITY = 92     # JPEG images are 4:4:4 at this quality; masks are always PNG


# --------------------------------------------------------------------------- the directory


def default_data_dir() -> str:
  """`$RETHINK_ST_DATA_DIR` if set, else `<repo>/data/digit_scenes`."""
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    return env
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(repo, 'data', 'digit_scenes')


def is_complete(data_dir: str) -> bool:
  """True if `data_dir` holds a finished dataset (meta.json is written last)."""
  return os.path.isfile(os.path.join(data_dir, META_FILE))


def read_meta(data_dir: str) -> dict:
  path = os.path.join(data_dir, META_FILE)
  if not os.path.isfile(path):
    raise UserError(f'{path} not found: {data_dir} is not a complete digit-scenes dataset '
                    f'(make one with bin/make_digit_scenes.py)')
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise UserError(f'{path} is not valid JSON: {e}') from None


def tfrecord_files(data_dir: str, split: str) -> List[str]:
  """The TFRecord shards of `split`, in order."""
  meta = read_meta(data_dir)
  if split not in meta['splits']:
    raise UserError(f'digit-scenes split {split!r} unknown in {data_dir}; '
                    f'splits are {sorted(meta["splits"])}')
  return [os.path.join(data_dir, f) for f in meta['splits'][split]['tfrecord_files']]


def _shard_name(split: str, shard: int, shards: int) -> str:
  return f'{split}.tfrecord-{shard:05d}-of-{shards:05d}'


def _check_count(name: str, value, minimum: int = 0) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise UserError(f'make_digit_scenes.{name} must be an integer >= {minimum}, got {value!r}')
  return int(value)


def _write_split(tmp_dir, split, count, size, seed, shards, pool, image_format):
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from rethink_st.data import coco_json_writer
  from rethink_st.data import tfexample
  # pylint: enable=g-import-not-at-top
  iconic = split in ICONIC_SPLITS
  split_number = SPLITS.index(split)
  coco = coco_json_writer.CocoJsonWriter(CLASS_NAMES, supercategory='digit',
                                         info={'description': f'digit scenes {split}'})
  image_dir = os.path.join(tmp_dir, 'images', split)
  mask_dir = os.path.join(tmp_dir, 'masks', split)
  os.makedirs(image_dir)
  os.makedirs(mask_dir)
  names = [_shard_name(split, s, shards) for s in range(shards)]
  writers = [tf.io.TFRecordWriter(os.path.join(tmp_dir, n)) for n in names]
  num_instances = 0
  try:
    for i in range(count):
      rng = np.random.default_rng([seed, split_number, i])
      example = (generate_iconic if iconic else generate_scene)(rng, pool, size)
      image_id = i + 1
      example[F.SOURCE_ID] = str(image_id)
      if image_format == 'jpeg':
        file_name = f'{image_id:06d}.jpg'
        encoded = tfexample.encode_jpeg(example[F.IMAGE], JPEG_QUALITY)
      else:
        file_name = f'{image_id:06d}.png'
        encoded = tfexample.encode_png(example[F.IMAGE])
      with open(os.path.join(image_dir, file_name), 'wb') as f:
        f.write(encoded)
      semantic_png = tfexample.encode_png(example[F.SEMANTIC_MASK])
      with open(os.path.join(mask_dir, f'{image_id:06d}.png'), 'wb') as f:
        f.write(semantic_png)
      writers[i % shards].write(tfexample.encode_example(
          example, encoded_image=encoded, encoded_semantic_mask=semantic_png,
          class_names=CLASS_NAMES, filename=file_name))
      extras = {'label': int(example[F.LABEL])} if iconic else {}
      coco.add(image_id, file_name, example, **extras)
      num_instances += len(example[F.CLASSES])
  finally:
    for w in writers:
      w.close()
  coco.write(os.path.join(tmp_dir, 'annotations', f'{split}.json'))
  return {'kind': 'iconic' if iconic else 'scenes', 'pool': POOL_OF_SPLIT[split],
          'num_examples': count, 'num_instances': num_instances, 'image_size': size,
          'tfrecord_files': names, 'coco_json': f'annotations/{split}.json',
          'image_dir': f'images/{split}', 'semantic_mask_dir': f'masks/{split}'}


def _install(tmp_dir: str, data_dir: str, overwrite: bool) -> None:
  """Moves the finished tmp_dir to data_dir (a rename: readers never see half a dataset)."""
  if os.path.isdir(data_dir) and not os.listdir(data_dir):
    os.rmdir(data_dir)
  if not os.path.exists(data_dir):
    os.rename(tmp_dir, data_dir)
    return
  if not overwrite:
    raise UserError(f'{data_dir} already exists and is not empty; bind '
                    f'make_digit_scenes.overwrite=True to replace it')
  old = tempfile.mkdtemp(prefix=f'.{os.path.basename(data_dir)}.old-',
                         dir=os.path.dirname(data_dir))
  os.rename(data_dir, os.path.join(old, 'd'))
  os.rename(tmp_dir, data_dir)
  shutil.rmtree(old, ignore_errors=True)


@gin.configurable(denylist=['data_dir'])
def make_digit_scenes(data_dir: str, *,
                      num_train: int = 2000,
                      num_unlabeled: int = 2000,
                      num_val: int = 500,
                      num_iconic_train: int = 2000,
                      num_iconic_val: int = 500,
                      image_size: int = 128,
                      iconic_image_size: int = 64,
                      seed: int = 0,
                      shards: int = 4,
                      image_format: str = 'jpeg',
                      overwrite: bool = False) -> str:
  """Generates the digit-scenes dataset into `data_dir` (see the module docstring for the
  layout) and returns data_dir. Everything is written to a temporary sibling directory and
  renamed into place at the end, with meta.json written last. The same arguments (and gin
  bindings of digit_pools / generate_scene / generate_iconic) give byte-identical files.
  Images are JPEG (quality 92, 4:4:4; as COCO's) or PNG (`image_format='png'`: lossless,
  about 2.5x bigger and slower); masks are always PNG."""
  if not data_dir:
    raise UserError('make_digit_scenes: data_dir is empty')
  counts = {'train': _check_count('num_train', num_train),
            'unlabeled': _check_count('num_unlabeled', num_unlabeled),
            'val': _check_count('num_val', num_val),
            'iconic_train': _check_count('num_iconic_train', num_iconic_train),
            'iconic_val': _check_count('num_iconic_val', num_iconic_val)}
  image_size = _check_count('image_size', image_size, 16)
  iconic_image_size = _check_count('iconic_image_size', iconic_image_size, 16)
  seed = _check_count('seed', seed)
  shards = _check_count('shards', shards, 1)
  if image_format not in IMAGE_FORMATS:
    raise UserError(f'make_digit_scenes.image_format must be one of {IMAGE_FORMATS}, '
                    f'got {image_format!r}')
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if (os.path.isdir(data_dir) and os.listdir(data_dir)) or os.path.isfile(data_dir):
    if not overwrite or os.path.isfile(data_dir):
      raise UserError(f'{data_dir} already exists and is not empty; bind '
                      f'make_digit_scenes.overwrite=True to replace it')
  from absl import logging  # pylint: disable=g-import-not-at-top
  pools = digit_pools()
  parent = os.path.dirname(data_dir)
  os.makedirs(parent, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix=f'.{os.path.basename(data_dir)}.tmp-', dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp_dir, 0o777 & ~umask)       # mkdtemp makes it private
  try:
    splits = {}
    for split in SPLITS:
      size = iconic_image_size if split in ICONIC_SPLITS else image_size
      splits[split] = _write_split(tmp_dir, split, counts[split], size, seed, shards,
                                   pools[POOL_OF_SPLIT[split]], image_format)
      logging.info('digit scenes: wrote %d %s examples (%d instances)', counts[split], split,
                   splits[split]['num_instances'])
    meta = {'name': 'digit_scenes', 'format_version': FORMAT_VERSION, 'seed': seed,
            'image_size': image_size, 'iconic_image_size': iconic_image_size,
            'num_classes': NUM_CLASSES, 'class_names': list(CLASS_NAMES),
            'class_ids': 'digit d has class id d + 1; 0 is background',
            'ignore_label': F.IGNORE_LABEL, 'shards': shards, 'image_format': image_format,
            'pools': {name: len(pool.labels) for name, pool in pools.items()},
            'splits': splits}
    with open(os.path.join(tmp_dir, META_FILE), 'w') as f:
      json.dump(meta, f, indent=1, sort_keys=True)
    _install(tmp_dir, data_dir, overwrite)
  finally:
    if os.path.isdir(tmp_dir):
      shutil.rmtree(tmp_dir, ignore_errors=True)
  return data_dir


def ensure_digit_scenes(data_dir: Optional[str] = None, generate: bool = False,
                        what: str = 'data_dir') -> str:
  """Returns the dataset directory (default_data_dir() if None), generating the default set
  first if its meta.json is absent. Another folder without a dataset is generated only with
  `generate`; else one UserError line naming `what` (a mistyped path would otherwise start
  a new dataset, silently, instead of reading the one meant)."""
  default = os.path.abspath(os.path.expanduser(default_data_dir()))
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default))
  if is_complete(data_dir):
    return data_dir
  if data_dir != default and not generate:
    raise UserError(f'{what}={data_dir} holds no digit-scenes dataset (no {META_FILE}) and is '
                    f'not the default folder {default}; generate one there with python '
                    f'bin/make_digit_scenes.py --data_dir={data_dir}, or bind '
                    'rethink_st.data.sources.digit_scenes_source.generate = True')
  print(f'rethink_st: generating the digit-scenes dataset in {data_dir} '
        f'(first run only, about a minute)', file=sys.stderr, flush=True)
  try:
    make_digit_scenes(data_dir, overwrite=False)
  except UserError:
    if not is_complete(data_dir):   # else another process finished it first
      raise
  return data_dir


# ------------------------------------------------------------------------- reading back


def read_examples(data_dir: str, split: str, n: Optional[int] = None):
  """Yields up to n decoded examples of `split` (numpy dicts keyed by `features`), read with
  Model Garden's TfExampleDecoder(include_mask=True) plus the semantic mask and label."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from official.vision.dataloaders import tf_example_decoder
  # pylint: enable=g-import-not-at-top
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  extra = {F.TFEX_SEMANTIC_MASK: tf.io.FixedLenFeature((), tf.string, ''),
           F.TFEX_LABEL: tf.io.FixedLenFeature((), tf.int64, -1)}
  dataset = tf.data.TFRecordDataset(tfrecord_files(data_dir, split))
  if n is not None:
    dataset = dataset.take(n)
  for record in dataset:
    out = {k: v.numpy() for k, v in decoder.decode(record).items()}
    parsed = tf.io.parse_single_example(record, extra)
    if parsed[F.TFEX_SEMANTIC_MASK].numpy():
      out[F.SEMANTIC_MASK] = tf.io.decode_png(parsed[F.TFEX_SEMANTIC_MASK], channels=1).numpy()
    if parsed[F.TFEX_LABEL].numpy() >= 0:
      out[F.LABEL] = parsed[F.TFEX_LABEL].numpy()
    yield out


def write_preview(data_dir: str, split: str, path: str, n: int = 16, ncols: int = 4,
                  scale: int = 2) -> str:
  """A PNG grid of the first n examples of `split`: each as the image with its boxes and
  instance masks, next to its semantic mask (class colours on black, ignore white).
  Returns path."""
  from rethink_st import drawing  # pylint: disable=g-import-not-at-top
  panels, titles = [], []
  for ex in read_examples(data_dir, split, n):
    digits = ''.join(CLASS_NAMES[c - 1] for c in ex[F.CLASSES])
    panels.append(drawing.draw_example(ex[F.IMAGE], ex[F.BOXES], ex[F.CLASSES],
                                       instance_masks=ex[F.INSTANCE_MASKS], scale=scale))
    panels.append(drawing.draw_example(np.zeros_like(ex[F.IMAGE]),
                                       semantic_mask=ex.get(F.SEMANTIC_MASK),
                                       scale=scale, mask_alpha=1.0))
    sid = ex[F.SOURCE_ID].decode()
    label = f' label {ex[F.LABEL]}' if F.LABEL in ex else ''
    titles += [f'#{sid}: {digits}{label}', 'semantic']
  if not panels:
    raise UserError(f'digit-scenes split {split!r} in {data_dir} has no examples')
  return drawing.save_grid(panels, path, ncols=2 * ncols, titles=titles)
