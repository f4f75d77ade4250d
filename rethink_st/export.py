"""SavedModel export of a detection (RetinaNet) or segmentation model.

The SavedModel's `serving_default` signature takes `images`: uint8 [B, H, W, 3], any H and W
(one size per call, as a dense batch is), and does what evaluation does: the eval
pipeline's `rethink_st.data.pipeline.preprocess_for_inference` (Model Garden's
`normalize_image`, then `resize_and_crop_image` to `input_size` with no jitter: aspect ratio
kept, padded bottom/right), the model, and the mapping back to the original image. It returns

  detection: detection_boxes [B, K, 4] float32, ymin, xmin, ymax, xmax in ORIGINAL-image
             pixels (divided by image_info's scale, as COCO evaluation does, then clipped
             to the image: the model itself only clips to the padded input canvas);
             detection_scores [B, K]; detection_classes [B, K] (1..num_classes, 0 is
             background); num_detections [B] (only the first num_detections rows are real);
             image_info [B, 4, 2] (original size, input size, scale, offset).
  segmentation: probabilities [B, H, W, C] float32 softmax at the original size (averaged
             over `scales` and flips when asked); masks [B, H, W] int32, their argmax;
             image_info [B, 4, 2].

A copy of the export settings is written to `<export_dir>/assets.extra/rethink_st_export.json`,
with the task's label space (`label_space`: the dataset's category id and name of each class
id, e.g. a custom COCO JSON's; rethink_st/data/label_space.py);
run_export (bin/export.py) also writes the gin config there beside saved_model.pb
(`config.gin`, `operative_config.gin`), by default in `<model_dir>/saved_model`.
"""
import json
import os
from typing import Optional, Sequence, Tuple

import gin
import tensorflow as tf, tf_keras
from absl import logging
from official.vision.ops import anchor
from tf_keras.src.saving.legacy.saved_model import utils as keras_saved_model_utils

from rethink_st import checkpoint as checkpoint_lib
from rethink_st import run_lock
from rethink_st.data import pipeline
from rethink_st.errors import UserError
from rethink_st.evaluation import segmentation
from rethink_st.modeling import anchors as anchors_lib

TASKS = ('detection', 'segmentation')
SETTINGS_FILE = os.path.join('assets.extra', 'rethink_st_export.json')


def preprocess_image(image: tf.Tensor, input_size: Sequence[int]) -> Tuple[tf.Tensor, tf.Tensor]:
  """uint8 [H, W, 3] -> (float32 [h, w, 3], image_info [4, 2]), the eval pipeline's own
  function: normalize, then resize keeping the aspect ratio and pad to `input_size`."""
  return pipeline.preprocess_for_inference(image, list(input_size))


def _preprocess_batch(images: tf.Tensor, input_size: Sequence[int]):
  return tf.map_fn(
      lambda image: preprocess_image(image, input_size), images,
      fn_output_signature=(tf.TensorSpec(list(input_size) + [3], tf.float32),
                           tf.TensorSpec([4, 2], tf.float32)))


class DetectionServingModule(tf.Module):
  """uint8 images -> RetinaNet detections in original-image pixels."""

  def __init__(self, model: tf_keras.Model, input_size: Sequence[int],
               anchor_config: anchors_lib.AnchorConfig, batch_size: Optional[int] = None):
    super().__init__(name='detection_serving')
    self.model = model
    self._input_size = [int(v) for v in input_size]
    self._anchor_config = anchor_config
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name='images')])

  def _anchor_boxes(self, batch_size: tf.Tensor):
    a = self._anchor_config
    boxes = anchor.Anchor(min_level=a.min_level, max_level=a.max_level, num_scales=a.num_scales,
                          aspect_ratios=list(a.aspect_ratios), anchor_size=a.anchor_size,
                          image_size=self._input_size).multilevel_boxes
    return {level: tf.tile(b[tf.newaxis], [batch_size, 1, 1, 1]) for level, b in boxes.items()}

  def _serve(self, images):
    inputs, image_info = _preprocess_batch(images, self._input_size)
    # Model Garden's serving calls `model.call` (not __call__) for the multi-input RetinaNet.
    outputs = self.model.call(inputs, image_shape=image_info[:, 1, :],
                              anchor_boxes=self._anchor_boxes(tf.shape(images)[0]),
                              training=False)
    scale = tf.tile(image_info[:, 2:3, :], [1, 1, 2])
    boxes = tf.cast(outputs['detection_boxes'], tf.float32) / scale
    # The model clips to the padded input canvas; clip to the original image as well.
    boxes = tf.clip_by_value(boxes, 0.0, tf.tile(image_info[:, 0:1, :], [1, 1, 2]))
    return {
        'detection_boxes': boxes,
        'detection_scores': tf.cast(outputs['detection_scores'], tf.float32),
        'detection_classes': tf.cast(outputs['detection_classes'], tf.int32),
        'num_detections': tf.cast(outputs['num_detections'], tf.int32),
        'image_info': image_info,
    }


class SegmentationServingModule(tf.Module):
  """uint8 images -> per-pixel probabilities and masks at the original size."""

  def __init__(self, model: tf_keras.Model, input_size: Sequence[int],
               scales: Sequence[float] = (1.0,), flip: bool = False, size_divisor: int = 1,
               batch_size: Optional[int] = None):
    super().__init__(name='segmentation_serving')
    self.model = model
    self._input_size = [int(v) for v in input_size]
    self._scales = tuple(float(s) for s in scales)
    self._flip = bool(flip)
    self._size_divisor = int(size_divisor)
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name='images')])

  def _serve(self, images):
    inputs, image_info = _preprocess_batch(images, self._input_size)
    probs = segmentation.predict_probabilities(
        self.model, inputs, scales=self._scales, flip=self._flip,
        output_size=self._input_size, size_divisor=self._size_divisor)
    probs = segmentation.restore_original_size(probs, image_info, tf.shape(images)[1:3])
    return {
        'probabilities': probs,
        'masks': tf.argmax(probs, axis=-1, output_type=tf.int32),
        'image_info': image_info,
    }


def _check_export_dir(export_dir: str, overwrite: bool) -> None:
  if tf.io.gfile.exists(export_dir):
    if not tf.io.gfile.isdir(export_dir):
      raise UserError(f'export_saved_model: export_dir {export_dir} exists and is not a '
                      'directory')
    if tf.io.gfile.listdir(export_dir):
      if not overwrite:
        raise UserError(f'export_saved_model: export_dir {export_dir} exists and is not empty '
                        '(pass overwrite=True to replace it)')
      tf.io.gfile.rmtree(export_dir)


def _nms_version(model: tf_keras.Model) -> Optional[str]:
  generator = getattr(model, 'detection_generator', None)
  if generator is None or not hasattr(generator, 'get_config'):
    return None
  return generator.get_config().get('nms_version')


@gin.configurable(denylist=['model', 'export_dir'])
def export_saved_model(model: tf_keras.Model,
                       export_dir: str,
                       *,
                       task: str = 'detection',
                       input_size: Tuple[int, int] = (640, 640),
                       anchor_config: Optional[anchors_lib.AnchorConfig] = None,
                       batch_size: Optional[int] = None,
                       scales: Sequence[float] = (1.0,),
                       flip: bool = False,
                       size_divisor: int = 1,
                       overwrite: bool = False,
                       label_space=None) -> str:
  """Writes `model` as a SavedModel with a uint8-image `serving_default` signature.

  Args:
    model: a built RetinaNet (detection: Model Garden's RetinaNetModel with its detection
      generator) or segmentation model (returns {'logits': [B, h, w, C]}).
    export_dir: where to write; must not exist or be empty unless `overwrite`.
    task: 'detection' or 'segmentation'.
    input_size: (height, width) the model runs at: the eval pipeline's output size.
    anchor_config: detection anchors; default `rethink_st.modeling.anchors.anchor_config()`
      (the gin-bound one the model was trained with).
    batch_size: fixed batch size of the signature; None = any. Detection models with
      nms_version 'v1' (the one with Soft-NMS) need a fixed batch size.
    scales, flip, size_divisor: segmentation only; multi-scale/flip inference as in
      `rethink_st.evaluation.segmentation.predict_probabilities`.
    overwrite: replace a non-empty export_dir.
    label_space: a LabelSpace, recorded in the settings file: class id c (detection_classes,
      mask values) is category_ids[c - 1], named category_names[c - 1].

  Returns:
    export_dir.
  """
  if task not in TASKS:
    raise UserError(f'export_saved_model.task={task!r} is not one of {", ".join(TASKS)}')
  if (len(tuple(input_size)) != 2 or
      not all(isinstance(v, int) and v > 0 for v in input_size)):
    raise UserError(f'export_saved_model.input_size={input_size!r} is not (height, width) '
                    'with positive integers')
  _check_export_dir(export_dir, overwrite)
  settings = {'task': task, 'input_size': list(input_size), 'batch_size': batch_size,
              'input': 'images: uint8 [B, H, W, 3]'}
  if label_space is not None:
    settings['label_space'] = dict(label_space.to_json(),
                                   class_ids=list(range(1, label_space.num_classes + 1)))
  if task == 'detection':
    if not hasattr(model, 'detection_generator'):
      raise UserError('export_saved_model: task=detection needs a RetinaNet model with a '
                      f'detection generator; got {type(model).__name__}')
    if _nms_version(model) == 'v1' and batch_size is None:
      raise UserError("export_saved_model: the model's nms_version 'v1' needs a fixed "
                      'export_saved_model.batch_size')
    anchor_config = anchor_config or anchors_lib.anchor_config()
    module = DetectionServingModule(model, input_size, anchor_config, batch_size)
    settings.update(anchors=dict(min_level=anchor_config.min_level,
                                 max_level=anchor_config.max_level,
                                 num_scales=anchor_config.num_scales,
                                 aspect_ratios=list(anchor_config.aspect_ratios),
                                 anchor_size=anchor_config.anchor_size),
                    detection_boxes='ymin, xmin, ymax, xmax in original-image pixels, '
                                    'clipped to the image')
  else:
    if not scales or any(s <= 0 for s in scales):
      raise UserError(f'export_saved_model.scales={tuple(scales)!r} must be non-empty and '
                      'positive')
    module = SegmentationServingModule(model, input_size, scales, flip, size_divisor,
                                       batch_size)
    settings.update(scales=list(scales), flip=flip, size_divisor=size_divisor,
                    masks='argmax class per original-image pixel')
  signature = module.serve.get_concrete_function()
  # Served through the signature: tf_keras' traces of every layer's call functions (for
  # tf_keras.models.load_model, which cannot load this tf.Module anyway) are not saved. They
  # were 3/4 of a small RetinaNet's export time and 2/3 of its load time on 2 CPU cores.
  with keras_saved_model_utils.keras_option_scope(save_traces=False,
                                                  in_tf_saved_model_scope=False):
    tf.saved_model.save(module, export_dir, signatures={'serving_default': signature})
  settings_path = os.path.join(export_dir, SETTINGS_FILE)
  tf.io.gfile.makedirs(os.path.dirname(settings_path))
  with tf.io.gfile.GFile(settings_path, 'w') as f:
    json.dump(settings, f, indent=2)
  logging.info('Exported %s SavedModel to %s', task, export_dir)
  return export_dir


SAVED_MODEL_SUBDIR = 'saved_model'


@gin.configurable(denylist=['model_dir'])
def run_export(model_dir: Optional[str], task=gin.REQUIRED, checkpoint: Optional[str] = None,
               export_dir: Optional[str] = None, batch_size: Optional[int] = None,
               overwrite: bool = False) -> str:
  """Exports a trained run: restores `checkpoint` (a prefix or a folder; default the latest
  checkpoint in `model_dir`) into the task's model and writes the SavedModel to `export_dir`
  (default <model_dir>/saved_model), with the gin config beside saved_model.pb:
  config.gin (as parsed) and operative_config.gin (as used). The run's own files in
  model_dir are left as they are. Returns export_dir.

  Holds model_dir's writer lock (rethink_st/run_lock.py; without model_dir, that of the
  folder holding export_dir): a run still training there, or a second export, stops it at
  once with one line naming the holder.
  """
  if not model_dir and not (checkpoint and export_dir):
    raise UserError('--model_dir is required (the trained run to export; or bind both '
                    'run_export.checkpoint and run_export.export_dir)')
  if not checkpoint and not tf.io.gfile.isdir(model_dir):  # before the lock makes it
    raise UserError(f'--model_dir={model_dir}: no such folder')
  folder = model_dir or os.path.dirname(os.path.abspath(export_dir))
  with run_lock.hold(folder, f'--model_dir={folder}' if model_dir else folder):
    return _export_run(model_dir, task, checkpoint, export_dir, batch_size, overwrite)


def _export_run(model_dir, task, checkpoint, export_dir, batch_size, overwrite) -> str:
  from rethink_st import config_io  # pylint: disable=g-import-not-at-top
  from rethink_st.training import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  if checkpoint:
    where = 'run_export.checkpoint'
    path = checkpoint_lib.resolve(checkpoint, where)
  else:
    where = '--model_dir'
    path = checkpoint_lib.latest_in(model_dir, where)
  export_dir = export_dir or os.path.join(model_dir, SAVED_MODEL_SUBDIR)
  model = task.build_model()
  checkpoint_lib.restore_model(model, path, where)
  kind = 'segmentation' if isinstance(task, tasks_lib.SegmentationTask) else 'detection'
  kwargs = {}
  if kind == 'segmentation':
    kwargs = dict(scales=task.eval_scales, flip=task.eval_flip, size_divisor=task.size_divisor)
  from rethink_st.data import label_space  # pylint: disable=g-import-not-at-top
  out = export_saved_model(model, export_dir, task=kind, input_size=task.image_size,
                           batch_size=batch_size, overwrite=overwrite,
                           label_space=label_space.label_space_of(task), **kwargs)
  # Written after the export: export_saved_model wants an empty (or new) export_dir.
  config_io.save_config(out)
  config_io.save_operative_config(out)
  print(f'[export] {path} -> {out}', flush=True)
  return out
