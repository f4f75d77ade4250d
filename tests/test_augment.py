"""Augment-S1..S4: masks move exactly with the image, boxes enclose their masks, colour ops
leave masks alone, eval preprocessing is Model Garden's."""
import glob
import os

import gin
import numpy as np
import pytest

from rethink_st import augment as A
from rethink_st.data import features as F
from rethink_st.errors import UserError

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order
from official.vision.ops import augment as mg_augment  # pylint: disable=wrong-import-order
from official.vision.ops import box_ops, preprocess_ops  # pylint: disable=wrong-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 72, 96
COLOURS = np.array([(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)], np.uint8)
CLASSES = np.array([3, 5, 7, 2], np.int64)
# Pixel constants scaled to the small test image (Model Garden's 250 px would move
# everything out of a 96 px image at level 10).
CONSTS = dict(cutout_const=20.0, translate_const=40.0)

DETECTION_V0_OPS = sorted({op for sub in mg_augment.AutoAugment.detection_policy_v0()
                           for op, _, _ in sub})
RANDAUG_OPS = mg_augment.RandAugment.build_for_detection().available_ops
ALL_OPS = sorted(set(DETECTION_V0_OPS) | set(RANDAUG_OPS))
GEOMETRIC = [op for op in ALL_OPS if A.op_kind(op) == 'geometric']
PIXEL = [op for op in ALL_OPS if A.op_kind(op) == 'pixel']


def make_example():
  """Four uniquely coloured objects on a background that never has their colours: an
  ellipse, an L whose box contains a disc, the disc, and a square on the right border;
  an IGNORE_LABEL streak in the semantic mask."""
  rng = np.random.default_rng(0)
  image = rng.integers(40, 160, (H, W, 3)).astype(np.uint8)
  yy, xx = np.mgrid[:H, :W]
  shapes = [
      ((yy - 20) / 9.0) ** 2 + ((xx - 20) / 13.0) ** 2 <= 1,
      ((xx >= 40) & (xx < 45) & (yy >= 10) & (yy < 52))
      | ((yy >= 47) & (yy < 52) & (xx >= 40) & (xx < 72)),
      (yy - 30) ** 2 + (xx - 60) ** 2 <= 36,
      (yy >= 55) & (yy < 68) & (xx >= W - 10),
  ]
  semantic = np.zeros((H, W), np.uint8)
  semantic[60:62, 5:30] = F.IGNORE_LABEL
  for shape, colour, cls in zip(shapes, COLOURS, CLASSES):
    image[shape] = colour
    semantic[shape] = cls
  masks = np.stack(shapes).astype(np.float32)
  boxes = A.boxes_from_masks(tf.constant(np.transpose(masks, [1, 2, 0]))).numpy()
  return {
      F.SOURCE_ID: tf.constant('17'),
      F.IMAGE: tf.constant(image),
      F.HEIGHT: tf.constant(H, tf.int64),
      F.WIDTH: tf.constant(W, tf.int64),
      F.BOXES: tf.constant(boxes),
      F.CLASSES: tf.constant(CLASSES),
      F.IS_CROWD: tf.constant([False, False, True, False]),
      F.AREA: tf.constant(masks.sum(axis=(1, 2))),
      F.INSTANCE_MASKS: tf.constant(masks),
      F.SEMANTIC_MASK: tf.constant(semantic[..., None]),
      F.SCORES: tf.constant([0.9, 0.8, 0.7, 0.6], tf.float32),
  }


@pytest.fixture(scope='module')
def example():
  return make_example()


def packed(example):
  layout = A.MaskLayout(True, True)
  return layout, layout.pack(example[F.INSTANCE_MASKS], example[F.SEMANTIC_MASK])


def check_masks_follow_image(image, boxes, instance, semantic, colours=COLOURS,
                             classes=CLASSES):
  """Mask pixels show their object's colour, the semantic mask agrees with the instance
  masks, and the boxes are the tight boxes of the masks."""
  image, boxes, instance = np.asarray(image), np.asarray(boxes), np.asarray(instance)
  semantic = np.asarray(semantic)[..., 0]
  for i, (mask, colour, cls) in enumerate(zip(instance, colours, classes)):
    on = mask > 0
    np.testing.assert_array_equal(image[on], np.broadcast_to(colour, image[on].shape),
                                  err_msg=f'object {i}: mask pixels lost their colour')
    assert (semantic[on] == cls).all(), f'object {i}: semantic mask disagrees'
    sem_on = semantic == cls
    np.testing.assert_array_equal(image[sem_on], np.broadcast_to(colour, image[sem_on].shape))
  tight = A.boxes_from_masks(tf.constant(np.transpose(instance, [1, 2, 0]))).numpy()
  np.testing.assert_array_equal(boxes, tight)
  check_boxes_enclose(boxes, instance)


def check_boxes_enclose(boxes, instance, tolerance_px=0.0):
  h, w = instance.shape[1:]
  for box, mask in zip(boxes, instance):
    rows, cols = np.nonzero(mask > 0)
    if rows.size == 0:
      continue
    assert rows.min() >= box[0] * h - tolerance_px - 1e-4
    assert rows.max() + 1 <= box[2] * h + tolerance_px + 1e-4
    assert cols.min() >= box[1] * w - tolerance_px - 1e-4
    assert cols.max() + 1 <= box[3] * w + tolerance_px + 1e-4


# ------------------------------------------------------------------------------ single ops


def test_op_table_covers_the_policies():
  assert set(DETECTION_V0_OPS) <= A.SUPPORTED_OPS
  assert set(RANDAUG_OPS) <= A.SUPPORTED_OPS
  assert {'TranslateY_Only_BBoxes'} <= set(DETECTION_V0_OPS)
  with pytest.raises(UserError, match='not supported'):
    A.op_kind('Mixup')


@pytest.mark.parametrize('name', GEOMETRIC)
@pytest.mark.parametrize('level', [10.0, 4.0])
def test_geometric_op_moves_masks_with_image(example, name, level):
  layout, masks = packed(example)
  moved_any = False
  for seed in range(3):          # the sign of the op's argument is random
    tf.random.set_seed(seed)
    image, boxes, new_masks = A.apply_op(name, example[F.IMAGE], example[F.BOXES], masks,
                                         layout, level=level, **CONSTS)
    instance, semantic = layout.unpack(new_masks)
    check_masks_follow_image(image, boxes, instance, semantic)
    moved_any |= not np.array_equal(new_masks.numpy(), masks.numpy())
    # New area: no instance, ignore in the semantic mask; both from the same transform.
    tf.random.set_seed(seed)
    full = A.MaskLayout(True, True)
    _, _, filled = A.apply_op(name, example[F.IMAGE], example[F.BOXES][:1],
                              full.pack(tf.ones([1, H, W]), tf.ones([H, W, 1], tf.uint8)),
                              full, level=level, **CONSTS)
    inst, sem = full.unpack(filled)
    outside = inst.numpy()[0] == 0
    np.testing.assert_array_equal(outside, sem.numpy()[..., 0] == F.IGNORE_LABEL)
    assert outside.any()
    if name.startswith('Translate'):   # exactly |pixels| rows or columns are new
      pixels = level / 10 * CONSTS['translate_const']
      axis = 0 if name.startswith('TranslateX') else 1
      assert outside.all(axis=axis).sum() == pixels
  assert moved_any


@pytest.mark.parametrize('level', [2.0, 6.0])
def test_bbox_only_op_moves_masks_inside_boxes(example, level):
  layout, masks = packed(example)
  for seed in range(3):
    tf.random.set_seed(seed)
    # prob 3.0: Model Garden divides a bbox-only op's probability by 3 -> every box moves.
    image, boxes, new_masks = A.apply_op('TranslateY_Only_BBoxes', example[F.IMAGE],
                                         example[F.BOXES], masks, layout, level=level,
                                         prob=3.0, **CONSTS)
    instance, semantic = layout.unpack(new_masks)
    check_masks_follow_image(image, boxes, instance, semantic)
    assert not np.array_equal(new_masks.numpy(), masks.numpy())
    # Only content inside the original boxes moved.
    inside = np.zeros((H, W), bool)
    size = np.array([H, W, H, W], np.float32)     # Model Garden's float32 box -> pixels
    for y0, x0, y1, x1 in (size * example[F.BOXES].numpy()).astype(np.int32):
      inside[y0:y1 + 1, x0:x1 + 1] = True
    np.testing.assert_array_equal(new_masks.numpy()[~inside], masks.numpy()[~inside])
    np.testing.assert_array_equal(image.numpy()[~inside], example[F.IMAGE].numpy()[~inside])


@pytest.mark.parametrize('name', PIXEL)
def test_colour_ops_leave_masks_and_boxes_identical(example, name):
  layout, masks = packed(example)
  tf.random.set_seed(0)
  image, boxes, new_masks = A.apply_op(name, example[F.IMAGE], example[F.BOXES], masks,
                                       layout, level=10.0, **CONSTS)
  np.testing.assert_array_equal(new_masks.numpy(), masks.numpy())
  np.testing.assert_array_equal(boxes.numpy(), example[F.BOXES].numpy())
  assert image.dtype == tf.uint8 and image.shape == (H, W, 3)


@pytest.mark.parametrize('name', GEOMETRIC + ['TranslateY_Only_BBoxes'])
def test_without_masks_ops_are_model_garden_ops(example, name):
  """Without masks image and boxes come out of Model Garden's own function; with masks
  the image is still exactly Model Garden's."""
  boxes = example[F.BOXES][:1] if name == 'TranslateY_Only_BBoxes' else example[F.BOXES]
  prob = 3.0 if name == 'TranslateY_Only_BBoxes' else 1.0
  tf.random.set_seed(5)
  # pylint: disable=protected-access
  func, _, args = mg_augment._parse_policy_info(name, prob, 7.0, A.REPLACE_VALUE,
                                                CONSTS['cutout_const'],
                                                CONSTS['translate_const'])
  mg_image, mg_boxes = func(example[F.IMAGE], boxes, *args)
  tf.random.set_seed(5)
  image, our_boxes, no_masks = A.apply_op(name, example[F.IMAGE], boxes, level=7.0, prob=prob,
                                          **CONSTS)
  assert no_masks is None
  np.testing.assert_array_equal(image.numpy(), mg_image.numpy())
  np.testing.assert_array_equal(our_boxes.numpy(), mg_boxes.numpy())
  layout = A.MaskLayout(True, False)
  tf.random.set_seed(5)
  image, _, _ = A.apply_op(name, example[F.IMAGE], boxes, layout.pack(
      example[F.INSTANCE_MASKS][:boxes.shape[0]]), layout, level=7.0, prob=prob, **CONSTS)
  np.testing.assert_array_equal(image.numpy(), mg_image.numpy())


def test_semantic_only_masks_move(example):
  """Segmentation data without instance masks: the semantic mask moves with the image."""
  layout = A.MaskLayout(False, True)
  masks = layout.pack(semantic_mask=example[F.SEMANTIC_MASK])
  for name in ('Rotate_BBox', 'TranslateY_Only_BBoxes'):
    tf.random.set_seed(1)
    image, _, new_masks = A.apply_op(name, example[F.IMAGE], example[F.BOXES], masks, layout,
                                     level=5.0, prob=3.0, **CONSTS)
    _, semantic = layout.unpack(new_masks)
    semantic, image = semantic.numpy()[..., 0], image.numpy()
    assert not np.array_equal(semantic, example[F.SEMANTIC_MASK].numpy()[..., 0])
    for colour, cls in zip(COLOURS, CLASSES):
      np.testing.assert_array_equal(image[semantic == cls],
                                    np.broadcast_to(colour, image[semantic == cls].shape))


# -------------------------------------------------------------------------- full policies


def augment_fn(policy, **kwargs):
  aug = A.Augment(policy, output_size=(64, 80), **CONSTS, **kwargs)
  return aug, tf.function(lambda ex: aug(ex, training=True), reduce_retracing=True)


@pytest.mark.parametrize('policy', ['s1', 's2', 's3', 's4'])
def test_policies_keep_boxes_masks_and_keys_aligned(example, policy):
  aug, fn = augment_fn(policy)
  tf.random.set_seed(0)
  images = []
  for _ in range(8):
    out = {k: v.numpy() for k, v in fn(example).items()}
    n = len(out[F.BOXES])
    for key in (F.CLASSES, F.IS_CROWD, F.AREA, F.SCORES, F.INSTANCE_MASKS):
      assert len(out[key]) == n, key
    assert out[F.IMAGE].shape == (64, 80, 3) and out[F.IMAGE].dtype == np.float32
    assert 0 <= out[F.IMAGE].min() and out[F.IMAGE].max() <= 255
    assert out[F.SEMANTIC_MASK].shape == (64, 80, 1)
    assert out[F.INSTANCE_MASKS].shape == (n, 64, 80)
    info = out[A.IMAGE_INFO]
    np.testing.assert_allclose(info[0], [H, W])
    np.testing.assert_allclose(info[1], [64, 80])
    jitter = info[2].min() / min(64 / H, 80 / W)    # sampled scale of the aspect-kept fit
    assert aug.scale_min - 0.02 <= jitter <= aug.scale_max + 0.02
    # Exact: boxes are the tight boxes of the moved masks; every box is non-empty.
    tight = A.boxes_from_masks(tf.constant(np.transpose(out[F.INSTANCE_MASKS], [1, 2, 0])))
    np.testing.assert_allclose(out[F.BOXES], tight.numpy(), atol=1e-6)
    assert ((out[F.BOXES][:, 2:] - out[F.BOXES][:, :2]) > 0).all()
    np.testing.assert_array_equal(out[F.AREA], out[F.INSTANCE_MASKS].sum(axis=(1, 2)))
    # Classes and scores stay with their objects: the semantic mask agrees.
    sem = out[F.SEMANTIC_MASK][..., 0]
    for mask, cls, score in zip(out[F.INSTANCE_MASKS], out[F.CLASSES], out[F.SCORES]):
      assert (sem[mask > 0] == cls).all()
      assert score == {3: 0.9, 5: 0.8, 7: 0.7, 2: 0.6}[int(cls)]
    images.append(out[F.IMAGE])
  assert not all(np.array_equal(images[0], im) for im in images[1:])


def test_s1_masks_stay_on_their_objects(example):
  """S1 has no colour ops: inside each (eroded) mask the resized image keeps the colour."""
  _, fn = augment_fn('s1')
  tf.random.set_seed(3)
  checked = 0
  for _ in range(6):
    out = {k: v.numpy() for k, v in fn(example).items()}
    for mask, cls in zip(out[F.INSTANCE_MASKS], out[F.CLASSES]):
      m = mask > 0
      core = m.copy()
      for dy in (-2, -1, 0, 1, 2):
        for dx in (-2, -1, 0, 1, 2):
          core &= np.roll(np.roll(m, dy, 0), dx, 1)
      colour = COLOURS[list(CLASSES).index(cls)]
      if core.any():
        np.testing.assert_allclose(out[F.IMAGE][core], np.broadcast_to(
            colour, out[F.IMAGE][core].shape).astype(np.float32), atol=1.0)
        checked += 1
  assert checked >= 6


def test_flip_moves_masks_and_boxes(example):
  aug = A.Augment('s1', output_size=(H, W), scale_min=1.0, scale_max=1.0)
  flipped = 0
  tf.random.set_seed(0)
  for _ in range(8):
    out = aug(example)
    if np.array_equal(out[F.IMAGE].numpy(), example[F.IMAGE].numpy()[:, ::-1]):
      flipped += 1
      np.testing.assert_array_equal(out[F.INSTANCE_MASKS].numpy(),
                                    example[F.INSTANCE_MASKS].numpy()[:, :, ::-1])
      np.testing.assert_array_equal(out[F.SEMANTIC_MASK].numpy(),
                                    example[F.SEMANTIC_MASK].numpy()[:, ::-1])
      np.testing.assert_allclose(out[F.BOXES].numpy(), box_ops.horizontal_flip_boxes(
          example[F.BOXES]).numpy(), atol=1e-6)
    else:
      np.testing.assert_array_equal(out[F.IMAGE].numpy(), example[F.IMAGE].numpy())
  assert 0 < flipped < 8


def test_crop_drops_boxes_and_pads_with_ignore(example):
  """Large jitter: boxes that leave the crop are dropped with their keys; padding is
  IGNORE_LABEL in the semantic mask and 0 in the image and instance masks."""
  aug = A.Augment('s1', output_size=(64, 80), scale_min=0.5, scale_max=2.0, flip=False)
  tf.random.set_seed(1)
  saw_drop = saw_pad = False
  for _ in range(20):
    out = {k: v.numpy() for k, v in aug(example).items()}
    saw_drop |= len(out[F.BOXES]) < 4
    scaled = np.round(out[A.IMAGE_INFO][2] * [H, W]).astype(int)
    offset = out[A.IMAGE_INFO][3].astype(int)
    valid_h, valid_w = np.minimum(scaled - offset, [64, 80])
    if valid_h < 64 or valid_w < 80:
      saw_pad = True
      assert (out[F.SEMANTIC_MASK][valid_h:] == F.IGNORE_LABEL).all()
      assert (out[F.SEMANTIC_MASK][:, valid_w:] == F.IGNORE_LABEL).all()
      assert (out[F.IMAGE][valid_h:] == 0).all() and (out[F.IMAGE][:, valid_w:] == 0).all()
      assert (out[F.INSTANCE_MASKS][:, valid_h:] == 0).all()
  assert saw_drop and saw_pad


def test_no_instances_and_no_masks(example):
  empty = dict(example)
  for key in (F.BOXES, F.INSTANCE_MASKS, F.CLASSES, F.IS_CROWD, F.AREA, F.SCORES):
    empty[key] = example[key][:0]
  plain = {k: v for k, v in example.items() if k not in (F.INSTANCE_MASKS, F.SEMANTIC_MASK)}
  for policy in ('s2', 's4'):   # eager (graph mode with no instances: test_pipeline.py)
    fn = A.Augment(policy, output_size=(64, 80), **CONSTS)
    out = fn(empty)
    assert out[F.BOXES].shape == (0, 4) and out[F.INSTANCE_MASKS].shape == (0, 64, 80)
    out = fn({k: v for k, v in empty.items() if k != F.SEMANTIC_MASK})   # [H, W, 0] masks
    assert out[F.BOXES].shape == (0, 4) and out[F.INSTANCE_MASKS].shape == (0, 64, 80)
    out = fn(plain)
    assert F.INSTANCE_MASKS not in out and F.SEMANTIC_MASK not in out
    check_boxes_enclose(out[F.BOXES].numpy(), np.zeros((len(out[F.BOXES]), 64, 80)))


def test_eval_is_model_garden_eval_preprocessing(example):
  aug = A.Augment('s4', output_size=(128, 128))
  out = aug(example, training=False, normalize=True)
  image, info = preprocess_ops.resize_and_crop_image(
      preprocess_ops.normalize_image(example[F.IMAGE]), [128, 128], padded_size=[128, 128])
  np.testing.assert_array_equal(out[F.IMAGE].numpy(), image.numpy())
  np.testing.assert_array_equal(out[A.IMAGE_INFO].numpy(), info.numpy())
  boxes = preprocess_ops.resize_and_crop_boxes(
      box_ops.denormalize_boxes(example[F.BOXES], [H, W]), info[2], [128.0, 128.0], info[3])
  np.testing.assert_allclose(out[F.BOXES].numpy() * 128, boxes.numpy(), atol=1e-4)
  # Deterministic, and the masks still sit inside their boxes (within a pixel: nearest).
  again = aug(example, training=False, normalize=True)
  np.testing.assert_array_equal(again[F.IMAGE].numpy(), out[F.IMAGE].numpy())
  check_boxes_enclose(out[F.BOXES].numpy(), out[F.INSTANCE_MASKS].numpy(), tolerance_px=1.0)
  assert (out[F.SEMANTIC_MASK].numpy()[96:] == F.IGNORE_LABEL).all()   # 72 * 4/3 = 96


def test_bad_configuration_is_one_clear_line():
  for kwargs, match in [(dict(policy='s5'), 'Augment.policy'),
                        (dict(scale_min=2.0, scale_max=1.0), 'scale_min'),
                        (dict(output_size=(0, 64)), 'Augment.output_size'),
                        (dict(policy='s2', autoaugment_policy='nope'), 'autoaugment_policy'),
                        (dict(randaug_magnitude=11), 'randaug_magnitude')]:
    with pytest.raises(UserError) as info:
      A.Augment(**kwargs)
    assert match in str(info.value).splitlines()[0]   # gin appends context lines after it


def test_policy_defaults_are_the_papers():
  assert (A.Augment('s1').scale_min, A.Augment('s1').scale_max) == (0.8, 1.2)
  assert A.Augment('s1').augmenter is None
  s2 = A.Augment('s2')
  assert (s2.scale_min, s2.scale_max) == (0.8, 1.2)
  assert s2.augmenter.policies == mg_augment.AutoAugment.detection_policy_v0()
  s3 = A.Augment('s3')
  assert (s3.scale_min, s3.scale_max) == (0.5, 2.0) and s3.augmenter is not None
  s4 = A.Augment('s4')
  assert (s4.scale_min, s4.scale_max) == (0.5, 2.0)
  assert s4.augmenter.available_ops == RANDAUG_OPS
  assert s4.augmenter._mg.num_layers == 2 and s4.augmenter._mg.magnitude == 10  # pylint: disable=protected-access


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(
    REPO, 'gin_configs', 'base', 'augment_s*.gin'))))
def test_policy_gin_files(path):
  policy = os.path.basename(path)[len('augment_'):-len('.gin')]
  with open(path) as f:
    text = f.read()
  assert text.startswith('#') and 'Augment-S' in text.split('\n\n')[0]
  gin.clear_config()
  try:
    gin.parse_config_file(path)
    aug = A.Augment()
    assert aug.policy == policy
    assert (aug.scale_min, aug.scale_max) == A.POLICIES[policy][2]
  finally:
    gin.clear_config()


def test_four_policy_gin_files_exist():
  assert len(glob.glob(os.path.join(REPO, 'gin_configs', 'base', 'augment_s*.gin'))) == 4


@pytest.mark.parametrize('policy', ['s2', 's4'])
def test_policies_without_masks_are_model_garden_policies(example, policy):
  """Without masks the S2/S3 and S4 policy ops are Model Garden's distort_with_boxes: the
  same random draws in the same order give the same image and boxes."""
  aug = A.Augment(policy, **CONSTS)
  mg = aug.augmenter._mg  # pylint: disable=protected-access
  for seed in range(6):
    tf.random.set_seed(seed)
    mg_image, mg_boxes = mg.distort_with_boxes(example[F.IMAGE], example[F.BOXES])
    tf.random.set_seed(seed)
    image, boxes, masks = aug.augmenter.distort(example[F.IMAGE], example[F.BOXES])
    assert masks is None
    np.testing.assert_array_equal(image.numpy(), mg_image.numpy())
    np.testing.assert_array_equal(boxes.numpy(), mg_boxes.numpy())


def test_show_policy_grid_writes_png(example, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from rethink_st import augment_preview  # pylint: disable=g-import-not-at-top
  numpy_example = {k: v.numpy() for k, v in example.items()}
  path = augment_preview.show_policy_grid([numpy_example], 's4', str(tmp_path / 'g.png'), 2,
                                          scale=1, **CONSTS)
  with Image.open(path) as im:
    width, height = im.size
  # one example: an instance row and a semantic row, each original + 2 draws of 72 x 96
  assert width >= 3 * W and height >= 2 * H
  assert width < 3 * (W + 20) and height < 2 * (H + 30)
