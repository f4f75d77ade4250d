"""mask_folder_source: images + PNG class masks paired by relative path; one-line errors."""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from rethink_st.data import features as F
from rethink_st.data import pipeline
from rethink_st.data import sources
from rethink_st.errors import UserError


def _png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(tf.io.encode_png(array).numpy())


def _make(root, names=('a', 'sub/b')):
  for i, name in enumerate(names):
    _png(root / 'images' / f'{name}.png', np.full([16, 24, 3], 10 * i, np.uint8))
    mask = np.zeros([16, 24, 1], np.uint8)
    mask[2:8, 3:9] = i + 1
    mask[0, 0] = 255
    _png(root / 'masks' / f'{name}.png', mask)
  return str(root / 'images'), str(root / 'masks')


def test_images_pair_with_their_masks(tmp_path):
  images, masks = _make(tmp_path)
  source = sources.mask_folder_source(images, masks, num_classes=2, class_names=['x', 'y'])
  got = {ex[F.SOURCE_ID].numpy().decode(): ex for ex in source.dataset()}
  assert sorted(got) == ['a', 'sub/b']
  mask = got['sub/b'][F.SEMANTIC_MASK].numpy()
  assert mask.shape == (16, 24, 1) and mask[3, 4, 0] == 2 and mask[0, 0, 0] == 255
  assert got['a'][F.BOXES].shape == (0, 4)
  assert source.label_space.names == ('x', 'y') and source.label_space.category_ids == (1, 2)
  images_, labels = next(iter(pipeline.build_input(
      source, task='segmentation', global_batch_size=2, is_training=True,
      output_size=(32, 32))))
  assert images_.shape == (2, 32, 32, 3) and labels['masks'].shape[:3] == (2, 32, 32)


def test_bad_input_is_one_line(tmp_path):
  images, masks = _make(tmp_path)
  _png(tmp_path / 'images' / 'c.png', np.zeros([4, 4, 3], np.uint8))   # no mask
  with pytest.raises(UserError, match=r"1 of 3 images have no mask .* \(e.g. c.png"):
    sources.mask_folder_source(images, masks, num_classes=2)
  assert len(sources.mask_folder_source(images, masks, num_classes=2,
                                        require_masks=False).pairs) == 2
  with pytest.raises(UserError, match='num_classes=0 must be a positive integer'):
    sources.mask_folder_source(images, masks, num_classes=0, require_masks=False)
  with pytest.raises(UserError, match='mask_dir is not set: REQUIRED'):
    sources.mask_folder_source(images, 'REQUIRED: set TRAIN_MASKS', num_classes=2)
