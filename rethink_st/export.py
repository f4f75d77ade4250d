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
from tf_keras.src.saving.legacy.saved_model import utils as keras_saved_model_utils

from rethink_st import checkpoint as checkpoint_lib
from rethink_st import run_lock
from rethink_st.errors import UserError
from rethink_st.modeling import anchors as anchors_lib
from rethink_st.training import tasks
# The serving modules, where the Task classes name them (and their names here, as before).
from rethink_st.training.serving import (  # noqa: F401
    DetectionServingModule, SegmentationServingModule, preprocess_image)

SETTINGS_FILE = os.path.join('assets.extra', 'rethink_st_export.json')


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
    task: a task kind with a serving signature ('detection', 'segmentation': the Task
      classes' `kind` whose `serving_module` is set; rethink_st/training/tasks.py).
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
  module_class = tasks.task_class(task, 'export_saved_model.task').serving_module
  if module_class is None:
    raise UserError(f'export_saved_model.task={task!r}: a {tasks.KINDS[task].__name__} has no '
                    f'serving signature (tasks that export: '
                    f'{", ".join(k for k, c in tasks.KINDS.items() if c.serving_module)})')
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
  module, module_settings = module_class.build(
      model, input_size, batch_size, anchor_config=anchor_config, scales=scales, flip=flip,
      size_divisor=size_divisor)
  settings.update(module_settings)
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
  if checkpoint:
    where = 'run_export.checkpoint'
    path = checkpoint_lib.resolve(checkpoint, where)
  else:
    where = '--model_dir'
    path = checkpoint_lib.latest_in(model_dir, where)
  export_dir = export_dir or os.path.join(model_dir, SAVED_MODEL_SUBDIR)
  model = task.build_model()
  task.restore(model, path, where)
  from rethink_st.data import label_space  # pylint: disable=g-import-not-at-top
  out = export_saved_model(model, export_dir, task=task.kind, input_size=task.image_size,
                           batch_size=batch_size, overwrite=overwrite,
                           label_space=label_space.label_space_of(task),
                           **task.serving_settings())
  # Written after the export: export_saved_model wants an empty (or new) export_dir.
  config_io.save_config(out)
  config_io.save_operative_config(out)
  print(f'[export] {path} -> {out}', flush=True)
  return out
