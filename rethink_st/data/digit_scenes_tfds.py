"""The digit-scenes dataset as a TFDS builder, `digit_scenes`, built locally (no download).

Importing this module registers the builder, after which

    tfds.load('digit_scenes', split='train', data_dir=...)            # config 'small'
    tfds.load('digit_scenes/full', split='val', data_dir=...)

build the dataset into data_dir on first use from the same generator as
`digit_scenes.make_digit_scenes` (same seed -> the same scenes), and load it. Splits:
train, unlabeled, val (scenes) and iconic_train, iconic_val (one centred digit).

Features: image (uint8 [H, W, 3], PNG), image_id (1-based, as the TFRecords' source_id),
objects {bbox (tfds BBox, normalized ymin, xmin, ymax, xmax), label (ClassLabel: digit 0..9,
i.e. class id - 1), is_crowd, area (pixels)}, segmentation_mask (uint8 [H, W, 1]: 0
background, 1..10 digit + 1, 255 ignore) and label (image-level digit for iconic splits,
-1 for scenes). Instance masks are only in the TFRecord / COCO JSON forms.
"""
import dataclasses

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from rethink_st import features as F
from rethink_st.data import digit_scenes


@dataclasses.dataclass
class DigitScenesConfig(tfds.core.BuilderConfig):
  """Sizes of a digit-scenes build; name it after them."""
  num_train: int = 200
  num_unlabeled: int = 200
  num_val: int = 100
  num_iconic_train: int = 200
  num_iconic_val: int = 100
  image_size: int = 128
  iconic_image_size: int = 64
  seed: int = 0

  def counts(self):
    return {'train': self.num_train, 'unlabeled': self.num_unlabeled, 'val': self.num_val,
            'iconic_train': self.num_iconic_train, 'iconic_val': self.num_iconic_val}


class DigitScenes(tfds.core.GeneratorBasedBuilder):
  """Scenes of handwritten sklearn digits, and iconic single digits; generated locally."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}
  BUILDER_CONFIGS = [
      DigitScenesConfig(name='small', description='500 scenes and 300 iconic images.'),
      DigitScenesConfig(name='full', description='The default set of make_digit_scenes.',
                        num_train=2000, num_unlabeled=2000, num_val=500,
                        num_iconic_train=2000, num_iconic_val=500),
  ]
  DEFAULT_CONFIG_NAME = 'small'

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 looks a packaged builder's file up through the `importlib_resources`
    # backport, which it declares only for Python < 3.9; name the file directly instead.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'image_id': np.int64,
            'objects': tfds.features.Sequence({
                'bbox': tfds.features.BBoxFeature(),
                'label': tfds.features.ClassLabel(names=digit_scenes.CLASS_NAMES),
                'is_crowd': np.bool_,
                'area': np.int64,
            }),
            'segmentation_mask': tfds.features.Image(shape=(None, None, 1)),
            'label': tfds.features.ClassLabel(names=digit_scenes.CLASS_NAMES),
        }),
        supervised_keys=None,
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in digit_scenes.SPLITS}

  def _generate_examples(self, split):
    config = self.builder_config
    pool = digit_scenes.digit_pools()[digit_scenes.POOL_OF_SPLIT[split]]
    iconic = split in digit_scenes.ICONIC_SPLITS
    size = config.iconic_image_size if iconic else config.image_size
    make = digit_scenes.generate_iconic if iconic else digit_scenes.generate_scene
    split_number = digit_scenes.SPLITS.index(split)
    for i in range(config.counts()[split]):
      example = make(np.random.default_rng([config.seed, split_number, i]), pool, size)
      boxes = example[F.BOXES]
      yield i, {
          'image': example[F.IMAGE],
          'image_id': i + 1,
          'objects': {
              'bbox': [tfds.features.BBox(*(float(v) for v in b)) for b in boxes],
              'label': (example[F.CLASSES] - 1).tolist(),
              'is_crowd': example[F.IS_CROWD].tolist(),
              'area': example[F.AREA].astype(np.int64).tolist(),
          },
          'segmentation_mask': example[F.SEMANTIC_MASK],
          'label': int(example[F.LABEL]) if iconic else -1,
      }
