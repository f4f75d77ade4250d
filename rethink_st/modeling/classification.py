"""Image classifiers: backbone + global average pooling + dropout + dense logits.

Two uses in the paper:
  * pre-training a backbone (ImageNet; here the iconic digits), whose checkpoint then
    initializes a detector's or segmenter's backbone (`rethink_st.modeling.init`);
  * joint training (Table 7): a detector and a classification head share one backbone
    object, so each step's detection loss and classification loss train the same weights.

    classifier = build_classifier(input_size=(64, 64), num_classes=10, backbone='resnet-18')
    logits = classifier(images, training=True)           # [B, num_classes], float32

    detector = detection.build_retinanet(...)
    joint = JointModel(detector, build_classification_head(detector.backbone, 10))
    out = joint(images, classification_images=cls_images, training=True)
    # detector outputs + {'classification_logits': [B, 10]}

The classifier is Model Garden's `ClassificationModel`, which pools the backbone's highest
level. Class ids here are 0-based (the dense layer has exactly `num_classes` outputs,
no background).
"""
import random
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import gin
import tensorflow as tf, tf_keras

from official.vision.modeling import classification_model
from official.vision.modeling import retinanet_model

from rethink_st.errors import UserError
from rethink_st.modeling import backbones
from rethink_st.modeling import detection


def _classifier_on(backbone: tf_keras.Model, num_classes: int, specs, dropout_rate: float,
                   use_sync_bn: bool, norm_momentum: float, norm_epsilon: float,
                   add_head_batch_norm: bool, binding: str
                  ) -> classification_model.ClassificationModel:
  if int(num_classes) < 1:
    raise UserError(f'{binding}.num_classes must be >= 1, got {num_classes}')
  if not 0.0 <= dropout_rate < 1.0:
    raise UserError(f'{binding}.dropout_rate must be in [0, 1), got {dropout_rate}')
  model = classification_model.ClassificationModel(
      backbone=backbone, num_classes=int(num_classes), input_specs=specs,
      dropout_rate=float(dropout_rate), add_head_batch_norm=add_head_batch_norm,
      use_sync_bn=use_sync_bn, norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
  detection.float32_outputs(
      [l for l in model.layers if isinstance(l, tf_keras.layers.Dense)][-1])   # logits
  for layer in model.layers:
    if isinstance(layer, tf_keras.layers.Dropout):
      checkpointed_dropout_masks(layer)
  return model


class _CheckpointedMasks(tf.Module):
  """Dropout masks from a tf.random.Generator, whose state is a variable
  (checkpointed_dropout_masks)."""

  def __init__(self, seed: int):
    super().__init__(name='dropout_masks')
    self.generator = tf.random.Generator.from_seed(seed)

  def dropout(self, inputs, rate, noise_shape=None):   # what tf_keras' Dropout.call calls
    return tf.nn.experimental.general_dropout(inputs, rate=rate, noise_shape=noise_shape,
                                              uniform_sampler=self.generator.uniform)


def checkpointed_dropout_masks(layer: tf_keras.layers.Dropout) -> None:
  """Makes `layer` draw its masks from a generator whose state a training run checkpoints.

  Model Garden's classifier builds a plain Dropout, which draws from a legacy stateful op:
  where it is in its random stream lives in the op, not in any checkpoint. A seeded run
  resumed at step k then draws the masks of steps 1, 2, ... again, not those of k+1, ..., and
  ends elsewhere (300 steps of the digit pre-training, resumed at step 100: loss 2.2876
  against 2.2929 at step 200, top-1 36.0 against 34.4). A tf.random.Generator's state is a
  variable; the trainer saves it beside the optimizer (`dropout_mask_state`), so the resumed
  run draws what the uninterrupted one draws. It is run state, not a weight: the model's own
  checkpoint does not hold it, so classifier checkpoints from before this (or Model Garden's)
  restore as they did. Its seed is drawn from Python's `random`, which a seeded run seeds
  (tf_keras.utils.set_random_seed, called by run_train's seed).
  """
  # object.__setattr__: not tracked by the layer, so not part of the model's checkpoint.
  object.__setattr__(layer, '_random_generator', _CheckpointedMasks(random.randint(1, 2**31 - 1)))


def dropout_mask_state(*models) -> Optional[tf.Module]:
  """The dropout-mask generators of `models`' layers (checkpointed_dropout_masks), as one
  module for a training checkpoint; None if they have none."""
  # pylint: disable=protected-access
  masks = {id(layer._random_generator): layer._random_generator
           for model in models for layer in model.submodules
           if isinstance(layer, tf_keras.layers.Dropout)
           and isinstance(layer._random_generator, _CheckpointedMasks)}
  # pylint: enable=protected-access
  if not masks:
    return None
  state = tf.Module(name='dropout_mask_state')
  state.generators = [m.generator for m in masks.values()]
  return state


@gin.configurable
def build_classifier(input_size: Union[int, Sequence[Optional[int]], None] = (224, 224),
                     num_classes: int = 1000,
                     backbone: Union[str, tf_keras.Model] = 'resnet-50',
                     dropout_rate: float = 0.0,
                     add_head_batch_norm: bool = False,
                     use_sync_bn: bool = False,
                     norm_momentum: float = 0.99,
                     norm_epsilon: float = 1e-3,
                     activation: str = 'relu') -> classification_model.ClassificationModel:
  """Builds backbone -> global average pool -> dropout -> dense(num_classes) logits.

  Args:
    input_size: (height, width) in pixels; None entries accept any size (not SpineNet).
    num_classes: number of classes (0-based labels, no background).
    backbone: a backbone name (backbones.KNOWN_BACKBONES) or an already built backbone.
      The backbone's levels are those the detector will use (SpineNet: anchor_config()'s
      levels), so its checkpoint restores into the detector's backbone.
    dropout_rate: dropout before the dense layer.
    add_head_batch_norm: batch norm on the pooled level before pooling (Model Garden's
      option).
    use_sync_bn, norm_momentum, norm_epsilon, activation: batch norm and activation.

  Returns:
    official.vision.modeling.classification_model.ClassificationModel: images -> float32
    logits [B, num_classes]; `.backbone` is the backbone.
  """
  specs = backbones.input_specs(input_size)
  if isinstance(backbone, str):
    backbone = backbones.build_backbone(
        backbone, specs.shape[1:3], use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
        norm_epsilon=norm_epsilon, activation=activation)
  return _classifier_on(backbone, num_classes, specs, dropout_rate, use_sync_bn,
                        norm_momentum, norm_epsilon, add_head_batch_norm, 'build_classifier')


@gin.configurable(denylist=['backbone'])
def build_classification_head(backbone: tf_keras.Model,
                              num_classes: int,
                              input_size: Union[int, Sequence[Optional[int]], None] = None,
                              dropout_rate: float = 0.0,
                              add_head_batch_norm: bool = False,
                              use_sync_bn: bool = False,
                              norm_momentum: float = 0.99,
                              norm_epsilon: float = 1e-3
                             ) -> classification_model.ClassificationModel:
  """A classifier on an existing backbone object: its weights are shared, not copied.

  Args:
    backbone: a built backbone, e.g. `detector.backbone`.
    num_classes: number of classes (0-based labels).
    input_size: size of the classification images; None -> the backbone's input size.
      Another size relaxes the backbone's input check to rank and channels (ResNet and
      EfficientNet compute on any size; the detector keeps its own size).
    dropout_rate, add_head_batch_norm, use_sync_bn, norm_momentum, norm_epsilon: the head.

  Returns:
    A ClassificationModel whose `.backbone` is `backbone` (the same object).
  """
  if input_size is None:
    specs = tf_keras.layers.InputSpec(shape=[None] + list(backbone.input_shape[1:]))
  else:
    specs = backbones.input_specs(input_size)
    if list(specs.shape[1:3]) != list(backbone.input_shape[1:3]):
      # Keras checks a functional model's input against its Input layer's shape; the
      # backbone's layers (convolutions) accept any size, so check only rank and channels.
      backbone.input_spec = tf_keras.layers.InputSpec(ndim=4, axes={-1: 3})
  return _classifier_on(backbone, num_classes, specs, dropout_rate, use_sync_bn,
                        norm_momentum, norm_epsilon, add_head_batch_norm,
                        'build_classification_head')


class JointModel(tf_keras.Model):
  """A detector (or segmenter) and a classifier that share the detector's backbone.

  `backbone`, `decoder` and `head` are the detector's, so `initialize_model` and trainers
  treat a JointModel like its detector; `classifier` is the classification model.
  Its variables are the union of both, shared backbone weights counted once.
  """

  def __init__(self, detector: tf_keras.Model, classifier: tf_keras.Model, **kwargs):
    super().__init__(**kwargs)
    if classifier.backbone is not detector.backbone:
      raise ValueError('JointModel: the classifier must be built on detector.backbone '
                       '(build_classification_head(detector.backbone, ...))')
    self.detector = detector
    self.classifier = classifier

  @property
  def backbone(self) -> tf_keras.Model:
    return self.detector.backbone

  @property
  def decoder(self) -> Optional[tf_keras.Model]:
    return self.detector.decoder

  @property
  def head(self) -> tf_keras.layers.Layer:
    return self.detector.head

  @property
  def checkpoint_items(self) -> Mapping[str, Any]:
    items = dict(self.detector.checkpoint_items)
    items['classifier'] = self.classifier
    return items

  def call(self, images, image_shape=None, anchor_boxes=None, classification_images=None,
           training=None):
    """Detector outputs on `images`, plus 'classification_logits' on
    `classification_images` when given (a separate batch, e.g. ImageNet / iconic digits)."""
    if isinstance(self.detector, retinanet_model.RetinaNetModel):
      outputs = dict(self.detector(images, image_shape=image_shape,
                                   anchor_boxes=anchor_boxes, training=training))
    else:
      outputs = dict(self.detector(images, training=training))
    if classification_images is not None:
      outputs['classification_logits'] = self.classifier(classification_images,
                                                         training=training)
    return outputs


@gin.configurable
def build_joint_model(input_size: Sequence[int] = (640, 640),
                      num_classes: int = 91,
                      classification_num_classes: int = 1000,
                      detector_fn: Optional[Callable[..., tf_keras.Model]] = None
                     ) -> JointModel:
  """A detector from `detector_fn(input_size=, num_classes=)` (default: build_retinanet, with
  its own gin bindings) plus a classification head with `classification_num_classes`
  outputs on the detector's backbone.

  Args:
    input_size: detection image (height, width) in pixels.
    num_classes: detection classes including background.
    classification_num_classes: classes of the classification task (0-based labels).
    detector_fn: builder of the detector (or segmenter); None -> detection.build_retinanet.

  The head's other settings (input_size, dropout_rate, ...) are bound on
  `build_classification_head`.
  """
  detector_fn = detector_fn or detection.build_retinanet
  detector = detector_fn(input_size=input_size, num_classes=num_classes)
  head = build_classification_head(detector.backbone, classification_num_classes)
  return JointModel(detector, head)
