"""Drawing helpers: overlays land where the boxes and masks are; grids tile and title."""
import numpy as np
import pytest
from PIL import Image

from rethink_st import drawing


def _grey(h=40, w=60):
  return np.full((h, w, 3), 128, np.uint8)


def test_plain_image_is_returned_unchanged():
  img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
  np.testing.assert_array_equal(drawing.draw_example(img), img)
  out = drawing.draw_example(img[..., 0] / 255.0)          # float grey input
  assert out.shape == (20, 30, 3) and out.dtype == np.uint8


def test_box_outline_is_drawn_at_the_normalized_coordinates():
  boxes = np.array([[0.5, 0.5, 1.0, 1.0]], np.float32)     # lower-right quarter
  out = drawing.draw_example(_grey(), boxes, classes=[3])
  colour = np.array(drawing.class_colour(3))
  changed = np.any(out != 128, axis=-1)
  assert (out[39, 45] == colour).all() and (out[30, 59] == colour).all()   # bottom, right edge
  assert not changed[:8].any() and not changed[:, :25].any()               # far from the box
  assert not changed[30:38, 33:58].any()                                   # box interior


def test_scores_below_min_score_are_not_drawn():
  boxes = np.array([[0.1, 0.1, 0.9, 0.9]], np.float32)
  out = drawing.draw_example(_grey(), boxes, [1], scores=[0.2], min_score=0.5)
  assert (out == 128).all()
  out = drawing.draw_example(_grey(), boxes, [1], scores=[0.7], min_score=0.5)
  assert (out != 128).any()


def test_masks_are_tinted_by_class_and_ignore_is_white():
  masks = np.zeros((1, 40, 60), np.float32)
  masks[0, 10:20, 10:20] = 1
  out = drawing.draw_example(_grey(), instance_masks=masks, classes=[2], mask_alpha=1.0)
  np.testing.assert_array_equal(out[15, 15], drawing.class_colour(2))
  assert (out[30, 40] == 128).all()
  sem = np.zeros((40, 60, 1), np.uint8)
  sem[0:5] = 4
  sem[5:7] = 255
  out = drawing.draw_example(_grey(), semantic_mask=sem, mask_alpha=1.0)
  np.testing.assert_array_equal(out[2, 2], drawing.class_colour(4))
  np.testing.assert_array_equal(out[6, 2], [255, 255, 255])
  assert (out[20:] == 128).all()


def test_scale_enlarges():
  out = drawing.draw_example(_grey(), np.array([[0, 0, 0.5, 0.5]]), [1], scale=3)
  assert out.shape == (120, 180, 3)


def test_save_grid_tiles_images_and_checks_titles(tmp_path):
  images = [np.full((10, 12, 3), v, np.uint8) for v in (0, 50, 100, 150, 200)]
  path = drawing.save_grid(images, str(tmp_path / 'sub' / 'g.png'), ncols=2, pad=2)
  grid = np.asarray(Image.open(path).convert('RGB'))
  assert grid.shape == (3 * 12 + 2, 2 * 14 + 2, 3)
  assert (grid[2 + 12 + 5, 2 + 14 + 5] == 150).all()      # row 1, column 1
  assert (grid[-3, -3] == 255).all()                      # empty sixth cell stays white
  titled = np.asarray(Image.open(drawing.save_grid(
      images, str(tmp_path / 't.png'), ncols=5, titles=list('abcde'))))
  assert titled.shape[0] > 10 + 12
  with pytest.raises(ValueError, match='titles'):
    drawing.save_grid(images, str(tmp_path / 'x.png'), titles=['a'])
  with pytest.raises(ValueError, match='no images'):
    drawing.save_grid([], str(tmp_path / 'x.png'))
