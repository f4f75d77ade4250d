"""Serving modules: what a task kind's SavedModel signature does (export.py writes it). A
Task names its module (`Task.serving_module`); `build` checks the model and the settings
(one UserError line naming the export_saved_model binding) and returns the module with the
settings export.py records beside the SavedModel.

Each module's `serve` takes `images`: uint8 [B, H, W, 3], any H and W (one size per call),
and does what evaluation does: the eval pipeline's
`rethink_st.data.pipeline.preprocess_for_inference`, the model, and the mapping back to the
original image (what each returns: rethink_st/export.py's docstring).
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import tensorflow as tf, tf_keras
from official.vision.ops import anchor

from rethink_st.data import pipeline
from rethink_st.errors import UserError
from rethink_st.evaluation import segmentation
from rethink_st.modeling import anchors as anchors_lib


def preprocess_image(image: tf.Tensor, input_size: Sequence[int]) -> Tuple[tf.Tensor, tf.Tensor]:
  """uint8 [H, W, 3] -> (float32 [h, w, 3], image_info [4, 2]), the eval pipeline's own
  function: normalize, then resize keeping the aspect ratio and pad to `input_size`."""
  return pipeline.preprocess_for_inference(image, list(input_size))


def _preprocess_batch(images: tf.Tensor, input_size: Sequence[int]):
  return tf.map_fn(
      lambda image: preprocess_image(image, input_size), images,
      fn_output_signature=(tf.TensorSpec(list(input_size) + [3], tf.float32),
                           tf.TensorSpec([4, 2], tf.float32)))


def _nms_version(model: tf_keras.Model) -> Optional[str]:
  generator = getattr(model, 'detection_generator', None)
  if generator is None or not hasattr(generator, 'get_config'):
    return None
  return generator.get_config().get('nms_version')


class ServingModule(tf.Module):
  """Base: `serve` is the tf.function of the `serving_default` signature."""

  @classmethod
  def build(cls, model: tf_keras.Model, input_size: Sequence[int],
            batch_size: Optional[int], **settings) -> Tuple['ServingModule', Dict[str, Any]]:
    """(the module, the settings to record), or one UserError line; `settings`:
    export_saved_model's kind-specific arguments (a kind takes the ones it uses)."""
    raise NotImplementedError


class DetectionServingModule(ServingModule):
  """uint8 images -> RetinaNet detections in original-image pixels."""

  def __init__(self, model: tf_keras.Model, input_size: Sequence[int],
               anchor_config: anchors_lib.AnchorConfig, batch_size: Optional[int] = None):
    super().__init__(name='detection_serving')
    self.model = model
    self._input_size = [int(v) for v in input_size]
    self._anchor_config = anchor_config
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name='images')])

  @classmethod
  def build(cls, model, input_size, batch_size, *, anchor_config=None, **unused):
    if not hasattr(model, 'detection_generator'):
      raise UserError('export_saved_model: task=detection needs a RetinaNet model with a '
                      f'detection generator; got {type(model).__name__}')
    if _nms_version(model) == 'v1' and batch_size is None:
      raise UserError("export_saved_model: the model's nms_version 'v1' needs a fixed "
                      'export_saved_model.batch_size')
    anchor_config = anchor_config or anchors_lib.anchor_config()
    module = cls(model, input_size, anchor_config, batch_size)
    return module, dict(anchors=dict(min_level=anchor_config.min_level,
                                     max_level=anchor_config.max_level,
                                     num_scales=anchor_config.num_scales,
                                     aspect_ratios=list(anchor_config.aspect_ratios),
                                     anchor_size=anchor_config.anchor_size),
                        detection_boxes='ymin, xmin, ymax, xmax in original-image pixels, '
                                        'clipped to the image')

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


class SegmentationServingModule(ServingModule):
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

  @classmethod
  def build(cls, model, input_size, batch_size, *, scales=(1.0,), flip=False, size_divisor=1,
            **unused):
    if not scales or any(s <= 0 for s in scales):
      raise UserError(f'export_saved_model.scales={tuple(scales)!r} must be non-empty and '
                      'positive')
    module = cls(model, input_size, scales, flip, size_divisor, batch_size)
    return module, dict(scales=list(scales), flip=flip, size_divisor=size_divisor,
                        masks='argmax class per original-image pixel')

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
