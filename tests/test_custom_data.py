"""Your own data, end to end (README.md, "Your own data"): a tiny COCO-JSON set of shapes drawn
here (rectangles and ellipses, category ids 7 and 3, not contiguous; some images without any
annotation) and a folder of unlabeled images with three unreadable files go through
gin_configs/custom/detection.gin and the three binaries, set by the template's macros alone
(plus bindings that only shrink the model and the schedule): teacher -> pseudo labels ->
student, each stage's AP in its eval_metrics.json, the file's label space in the pseudo
labels and the results, the unreadable files counted, not fatal; and the one-line errors: a
NUM_CLASSES the file disagrees with, pseudo labels of another label space (a threshold below
the labels' floor: tests/test_pseudo_label.py)."""
import json
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from helpers import run_bin
import test_training

CUSTOM_GIN = os.path.join(test_training.REPO, 'gin_configs', 'custom', 'detection.gin')
STUDENT_GIN = os.path.join(test_training.REPO, 'gin_configs', 'custom', 'detection_student.gin')
SIZE = 64                                     # pixels, square images
CATEGORIES = [{'id': 7, 'name': 'rectangle'}, {'id': 3, 'name': 'ellipse'}]
UNREADABLE = {'empty.png': b'', 'notes.jpg': b'not an image\n',
              'cut.png': b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00'}


def _draw(rng, num_shapes):
  """A 64 x 64 RGB image of `num_shapes` filled shapes and their COCO [x, y, w, h] boxes."""
  image = np.full([SIZE, SIZE, 3], rng.integers(0, 60), np.uint8)
  yy, xx = np.mgrid[:SIZE, :SIZE]
  shapes = []
  for _ in range(num_shapes):
    w, h = (int(v) for v in rng.integers(12, 30, size=2))
    x, y = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
    color = rng.integers(120, 256, size=3).astype(np.uint8)
    category = CATEGORIES[int(rng.integers(0, 2))]['id']
    if category == 7:
      image[y:y + h, x:x + w] = color
    else:
      inside = (((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2) <= 1
      image[inside] = color
    if category == 7:
      polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    else:
      t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
      polygon = np.stack([x + w / 2 + w / 2 * np.cos(t), y + h / 2 + h / 2 * np.sin(t)],
                         1).reshape(-1).round(2).tolist()
    shapes.append((category, [x, y, w, h], polygon))
  return image, shapes


def _write_coco_set(folder, count, seed, first_id):
  """count images under folder/images, folder/annotations.json; every 4th image has no
  annotation (background only); image ids first_id, first_id + 3, ... (not contiguous)."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(folder, 'images'))
  images, annotations = [], []
  for i in range(count):
    image_id = first_id + 3 * i
    image, shapes = _draw(rng, 0 if i % 4 == 3 else int(rng.integers(1, 4)))
    name = f'shape_{image_id}.png'
    Image.fromarray(image).save(os.path.join(folder, 'images', name))
    images.append({'id': image_id, 'file_name': name, 'height': SIZE, 'width': SIZE})
    for category, box, polygon in shapes:
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                          'category_id': category, 'bbox': box, 'area': box[2] * box[3],
                          'iscrowd': 0, 'segmentation': [polygon]})
  path = os.path.join(folder, 'annotations.json')
  with open(path, 'w') as f:
    json.dump({'images': images, 'annotations': annotations, 'categories': CATEGORIES}, f)
  return path, os.path.join(folder, 'images')


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
  """The macros of gin_configs/custom/detection.gin for a tiny shapes set: train 16 images,
  val 8, unlabeled 10 readable + 3 unreadable files."""
  root = str(tmp_path_factory.mktemp('shapes'))
  train_json, train_images = _write_coco_set(os.path.join(root, 'train'), 16, 0, 100)
  val_json, val_images = _write_coco_set(os.path.join(root, 'val'), 8, 1, 500)
  unlabeled = os.path.join(root, 'unlabeled')
  os.makedirs(os.path.join(unlabeled, 'more'))
  rng = np.random.default_rng(2)
  for i in range(10):
    Image.fromarray(_draw(rng, 2)[0]).save(
        os.path.join(unlabeled, 'more' if i % 2 else '', f'u{i}.png'))
  for name, data in UNREADABLE.items():
    with open(os.path.join(unlabeled, name), 'wb') as f:
      f.write(data)
  return {'TRAIN_ANNOTATIONS': train_json, 'TRAIN_IMAGES': train_images,
          'VAL_ANNOTATIONS': val_json, 'VAL_IMAGES': val_images,
          'UNLABELED_IMAGES': unlabeled, 'NUM_CLASSES': 2}


def _macros(values):
  return [f'--gin_param={k}={v!r}' for k, v in values.items()]


# Bindings that only shrink the run: ResNet-10 with 32-channel FPN and head, 128 px input,
# 4 teacher steps and 2 student steps of batch 4, random init, 10 detections per image.
TINY = [f'--gin_param={b}' for b in (
    'IMAGE_SIZE = (128, 128)', 'TRAIN_STEPS = 4', 'BATCH_SIZE = 4', 'STUDENT_STEPS = 2',
    'STUDENT_BATCH_SIZE = 4', 'INIT_CHECKPOINT = None',
    "rethink_st.modeling.detection.build_retinanet.backbone = 'resnet-10'",
    'rethink_st.modeling.detection.build_retinanet.decoder_num_filters = 32',
    'rethink_st.modeling.detection.build_retinanet.head_num_filters = 32',
    'rethink_st.modeling.detection.build_retinanet.head_num_convs = 1',
    'rethink_st.modeling.detection.build_retinanet.max_num_detections = 10',
    # an untrained head scores ~0.01 (the focal-loss prior): keep its boxes for the results
    'rethink_st.modeling.detection.build_retinanet.pre_nms_score_threshold = 0.0',
    "rethink_st.modeling.detection.build_retinanet.nms_version = 'batched'",
    'rethink_st.training.run.run_train.steps_per_loop = 2',
    'rethink_st.training.run.run_train.checkpoint_every = 2',
    'rethink_st.training.run.run_train.eval_batch_size = 8',
    'rethink_st.training.optimization.build_optimizer.warmup_steps = 1',
    'rethink_st.pseudo_label.run.run_pseudo_label.batch_size = 4',
    'rethink_st.pseudo_label.run.run_pseudo_label.chunk_size = 5')]


def _metrics(folder):
  with open(os.path.join(folder, 'eval_metrics.json')) as f:
    return json.load(f)


def _one_error(done):
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith('error: '), (
      done.stderr[-2000:])
  return lines[0]


def test_teacher_pseudo_labels_student_on_your_own_coco_json(shapes, tmp_path):
  macros = _macros(shapes)
  teacher, pseudo = str(tmp_path / 'teacher'), str(tmp_path / 'pseudo')
  student = str(tmp_path / 'student')

  done = run_bin('train_teacher', f'--gin_file={CUSTOM_GIN}', *macros, *TINY,
                 f'--model_dir={teacher}')
  assert done.returncode == 0, done.stderr[-3000:]
  assert {'AP', 'AP50', 'ARmax100'} <= set(_metrics(teacher))   # AP of the teacher stage
  with open(os.path.join(teacher, 'detections_coco.json')) as f:
    detections = json.load(f)
  assert detections and {d['category_id'] for d in detections} <= {3, 7}   # the file's ids
  assert {d['image_id'] for d in detections} <= set(range(500, 524, 3))

  done = run_bin('pseudo_label', f'--gin_file={CUSTOM_GIN}', *macros, *TINY,
                 f'--teacher={teacher}', f'--unlabeled={shapes["UNLABELED_IMAGES"]}',
                 f'--output_dir={pseudo}')
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(pseudo, 'meta.json')) as f:
    meta = json.load(f)
  # classes 1, 2 are the file's categories sorted by id: 3 (ellipse), 7 (rectangle)
  assert meta['label_space'] == {'category_ids': [3, 7],
                                 'category_names': ['ellipse', 'rectangle']}
  assert (meta['score_threshold'], meta['score_floor']) == (0.5, 0.05)
  with open(os.path.join(pseudo, 'stats.json')) as f:
    stats = json.load(f)
  assert stats['images'] == 10 and stats['unreadable_skipped'] == 3   # counted, not fatal
  assert 'cannot be decoded' in done.stdout
  with open(os.path.join(pseudo, 'pseudo_coco.json')) as f:
    assert json.load(f)['categories'] == [
        {'id': 1, 'name': 'ellipse', 'dataset_category_id': 3},
        {'id': 2, 'name': 'rectangle', 'dataset_category_id': 7}]

  done = run_bin('train_student', f'--gin_file={STUDENT_GIN}', *macros, *TINY,
                 f'--teacher={teacher}', f'--pseudo_labels={pseudo}',
                 '--pseudo_label_threshold=0.3', f'--model_dir={student}')
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'AP' in _metrics(student) and _metrics(student)['step'] == 2   # the student stage
  with open(os.path.join(student, 'config.gin')) as f:
    config = f.read()
  assert 'pseudo_label_source.score_threshold = 0.3' in config
  assert '[flags] --pseudo_label_threshold=0.3 replaces' in done.stdout

  # Picking a threshold (README.md): the evaluation set labeled by the teacher, its report
  # against the evaluation set's own labels gives precision and recall per threshold.
  val_source = '@custom_val/rethink_st.data.sources.coco_json_source()'
  done = run_bin('pseudo_label', f'--gin_file={CUSTOM_GIN}', *macros, *TINY,
                 f'--teacher={teacher}', f'--output_dir={tmp_path / "pseudo_val"}',
                 f'--gin_param=rethink_st.pseudo_label.run.run_pseudo_label.unlabeled_source'
                 f'={val_source}')
  assert done.returncode == 0, done.stderr[-3000:]
  done = run_bin('pseudo_label_report', f'--gin_file={CUSTOM_GIN}', *macros,
                 f'--pseudo_dir={tmp_path / "pseudo_val"}',
                 f'--output_dir={tmp_path / "pseudo_val" / "report"}',
                 f'--gin_param=write_report.reference_source={val_source}')
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / 'pseudo_val' / 'report' / 'report.json') as f:
    report = json.load(f)
  rows = report['detection']['thresholds']
  assert report['reference'].startswith('coco_json_source') and len(rows) > 3
  assert all(r['tp'] + r['fn'] == rows[0]['tp'] + rows[0]['fn'] > 0 for r in rows)  # val boxes

  # Pseudo labels of another label space (the same count, other names): one line, no run.
  other = str(tmp_path / 'other_pseudo')
  shutil.copytree(pseudo, other)
  with open(os.path.join(other, 'meta.json'), 'w') as f:
    json.dump(dict(meta, label_space={'category_ids': [3, 7],
                                      'category_names': ['circle', 'square']}), f)
  line = _one_error(run_bin('train_student', f'--gin_file={STUDENT_GIN}', *macros, *TINY,
                            f'--teacher={teacher}', f'--pseudo_labels={other}',
                            f'--model_dir={tmp_path / "refused"}'))
  assert line == (f"error: StudentTrainer.pseudo_source {other} holds pseudo labels of another "
                  "label space than the task (class 1 is named 'circle', not 'ellipse'): "
                  'pseudo labels 2 classes (3=circle, 7=square), task 2 classes (3=ellipse, '
                  '7=rectangle)')
  assert not os.path.exists(tmp_path / 'refused')


def test_a_num_classes_the_file_disagrees_with_is_one_line(shapes, tmp_path):
  line = _one_error(run_bin('train_teacher', f'--gin_file={CUSTOM_GIN}',
                            *_macros(dict(shapes, NUM_CLASSES=3)), *TINY,
                            f'--model_dir={tmp_path / "teacher"}'))
  assert line == (f"error: coco_json_source: NUM_CLASSES (num_classes) = 3, but annotation_file "
                  f"'{shapes['TRAIN_ANNOTATIONS']}' has 2 classes (3=ellipse, 7=rectangle)")
  missing = {k: v for k, v in shapes.items() if k != 'TRAIN_IMAGES'}
  line = _one_error(run_bin('train_teacher', f'--gin_file={CUSTOM_GIN}', *_macros(missing),
                            *TINY, f'--model_dir={tmp_path / "teacher"}'))
  assert line.startswith('error: coco_json_source: image_dir is not set: REQUIRED: set '
                         'TRAIN_IMAGES'), line
  assert not os.path.exists(tmp_path / 'teacher')


SEGMENTATION_GIN = os.path.join(test_training.REPO, 'gin_configs', 'custom', 'segmentation.gin')


def _segmentation_task(macros):
  import gin  # pylint: disable=g-import-not-at-top
  from rethink_st import cli  # pylint: disable=g-import-not-at-top
  from rethink_st import config_io  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin([SEGMENTATION_GIN], macros + ['IMAGE_SIZE = (128, 128)'])
  from rethink_st.training import tasks  # pylint: disable=g-import-not-at-top
  try:
    return tasks.SegmentationTask()   # as the template binds it
  finally:
    gin.clear_config()


def test_segmentation_template_reads_coco_json_or_png_masks(shapes, tmp_path):
  """gin_configs/custom/segmentation.gin with the same six macros: the task's input has the
  polygons painted as classes 1 (ellipse, id 3) and 2 (rectangle, id 7); with
  TRAIN_SOURCE / VAL_SOURCE set to mask_folder_source, PNG masks of the same classes."""
  from rethink_st.data import label_space  # pylint: disable=g-import-not-at-top
  macros = [f'{k} = {v!r}' for k, v in shapes.items()]
  task = _segmentation_task(macros)
  assert task.num_classes == 3 and label_space.label_space_of(task).names == (
      'ellipse', 'rectangle')
  _, labels = next(iter(task.build_dataset('eval', 8)))
  values = set(np.unique(labels['masks'].numpy()).tolist())
  assert {0.0, 1.0, 2.0} <= values <= {0.0, 1.0, 2.0, 255.0}

  masks = tmp_path / 'masks'
  masks.mkdir()
  for name in os.listdir(shapes['VAL_IMAGES']):
    mask = np.zeros([SIZE, SIZE], np.uint8)
    mask[10:30, 5:25] = 2
    Image.fromarray(mask).save(masks / name)
  task = _segmentation_task(macros + [
      f"VAL_MASKS = '{masks}'",
      'VAL_SOURCE = @custom_val_masks/rethink_st.data.sources.mask_folder_source()'])
  _, labels = next(iter(task.build_dataset('eval', 8)))
  assert set(np.unique(labels['masks'].numpy()).tolist()) <= {0.0, 2.0, 255.0}
  assert task.eval_source.label_space == label_space.LabelSpace.contiguous(2)
