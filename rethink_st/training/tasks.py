"""Tasks: what is trained (model, data, loss, metric) for detection, segmentation and
classification. A task holds no loop; the Orbit trainer in `trainer.py` drives any of them.

A Task class is the one place that says what its kind (`kind`) differs in: its input parser
(`input_parser`, rethink_st/data/pipeline.py), losses, metrics (`new_evaluator`,
`update_evaluator`), the labeler that turns its model's predictions into pseudo labels
(`labeler_class`, `build_labeler`; labelers.py), its serving signature (`serving_module`,
`serving_settings`; serving.py) and what its checkpoint restores (`restore`: the whole
model, rethink_st/checkpoint.py). Each Task class registers its kind (`KINDS`); code that only has
a kind's name (a pseudo-label folder's meta.json, export's `task` binding) looks it up there
(`task_class`, `labeler_class`). Other modules never compare kind names: adding a kind is a
new Task subclass and its gin file.

Gin names the task's model builder, its sources and its image size; the task passes
`num_classes` and `image_size` to both the model builder and the input pipeline, so the two
always agree.
"""
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type

import gin
import numpy as np
import tensorflow as tf, tf_keras

from rethink_st import checkpoint as checkpoint_lib
from rethink_st import losses as losses_lib
from rethink_st.data import pipeline
from rethink_st.errors import UserError
from rethink_st.evaluation import coco
from rethink_st.evaluation import segmentation
from rethink_st.training import labelers
from rethink_st.training import serving

TRAIN, EVAL = 'train', 'eval'
KINDS: Dict[str, Type['Task']] = {}   # kind name -> the Task class that defines it


def _as_float32(tree):
  return tf.nest.map_structure(lambda x: tf.cast(x, tf.float32) if x.dtype.is_floating else x,
                               tree)


class Task:
  """Base: subclasses set `kind`, `loss_names` and `input_parser` and implement
  forward/losses/eval; a kind that pseudo-labels sets `labeler_class` (and
  `build_labeler`), one that exports sets `serving_module`."""
  kind = ''
  loss_names: Tuple[str, ...] = ('total_loss',)
  input_parser: Optional[Type[pipeline.InputParser]] = None
  labeler_class: Optional[Type[labelers.Labeler]] = None
  serving_module: Optional[Type[serving.ServingModule]] = None

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if cls.__dict__.get('kind'):   # the class that defines the kind (not its subclasses)
      KINDS[cls.kind] = cls

  def __init__(self, model_fn: Callable[..., tf_keras.Model], num_classes: int,
               image_size: Sequence[int], train_source=None, eval_source=None):
    if model_fn is None:
      raise UserError(f'{type(self).__name__}.model_fn is not bound (e.g. '
                      f'{type(self).__name__}.model_fn = @build_retinanet)')
    self.model_fn = model_fn
    self.num_classes = int(num_classes)
    self.image_size = tuple(int(s) for s in image_size)
    self.train_source = train_source
    self.eval_source = eval_source

  # --- model -----------------------------------------------------------------------------
  def build_model(self) -> tf_keras.Model:
    return self.model_fn(input_size=self.image_size, num_classes=self.num_classes)

  def restore(self, model: tf_keras.Model, path: str,
              where: str) -> checkpoint_lib.RestoreReport:
    """What a checkpoint of this task restores into its built model to evaluate, label or
    export with it: the whole model (checkpoint.restore_model; `where` names the flag or
    binding that gave `path`)."""
    return checkpoint_lib.restore_model(model, path, where)

  # --- data ------------------------------------------------------------------------------
  def source(self, split: str):
    src = self.train_source if split == TRAIN else self.eval_source
    if src is None:
      raise UserError(f'{type(self).__name__}.{split}_source is not bound')
    return src

  def build_dataset(self, split: str, global_batch_size: int,
                    input_context: Optional[tf.distribute.InputContext] = None,
                    source=None, position=None) -> tf.data.Dataset:
    """Batched (images, labels) under gin scope `split` (so `train/Augment.policy` applies
    to training only); `position`: build_input's, for a seeded training stream."""
    with gin.config_scope(split):
      return pipeline.build_input(
          source if source is not None else self.source(split), task=self.input_parser,
          global_batch_size=global_batch_size, is_training=(split == TRAIN),
          output_size=self.image_size, input_context=input_context, position=position)

  # --- steps -----------------------------------------------------------------------------
  label_stat_names: Tuple[str, ...] = ()

  def label_stats(self, labels) -> Dict[str, tf.Tensor]:
    """Per-batch statistics of training labels, named `label_stat_names` (the student logs
    them for its pseudo half, e.g. pseudo boxes per image)."""
    return {}

  def forward(self, model, images, labels, training: bool):
    raise NotImplementedError

  def losses(self, outputs, labels) -> Dict[str, tf.Tensor]:
    raise NotImplementedError

  def eval_outputs(self, model, images, labels) -> Dict[str, Any]:
    raise NotImplementedError

  def new_evaluator(self):
    raise NotImplementedError

  def update_evaluator(self, evaluator, outputs: Dict[str, Any]) -> None:
    """Feeds one eval step's outputs (numpy, replicas concatenated) to the evaluator."""
    raise NotImplementedError

  # --- pseudo labels and export ------------------------------------------------------------
  def build_labeler(self, model, **settings) -> labelers.Labeler:
    """The labeler of this kind for `model` (run_pseudo_label's settings; each kind takes
    the ones it uses)."""
    raise UserError(f'run_pseudo_label.task: a {type(self).__name__} makes no pseudo labels '
                    f'(tasks that do: {", ".join(_names(labeler_kinds()))})')

  def serving_settings(self) -> Dict[str, Any]:
    """export_saved_model's kind-specific arguments for this task (e.g. multi-scale
    inference of segmentation)."""
    return {}


def _names(classes):
  return [c.__name__ for c in classes]


def labeler_kinds():
  return [c for c in KINDS.values() if c.labeler_class is not None]


def task_class(kind, where: str) -> Type[Task]:
  """The Task class of a kind's name, or one UserError line `<where>=<kind>: ...`."""
  cls = KINDS.get(kind) if isinstance(kind, str) else None
  if cls is None:
    raise UserError(f'{where}={kind!r} is not a task kind ({", ".join(KINDS)})')
  return cls


def find_labeler_class(kind) -> Optional[Type[labelers.Labeler]]:
  """The labeler class of a kind's name, or None (no such kind, or one without a labeler)."""
  cls = KINDS.get(kind) if isinstance(kind, str) else None
  return None if cls is None else cls.labeler_class


def labeler_class(kind, where: str) -> Type[labelers.Labeler]:
  """The labeler class of a kind's name (a pseudo-label folder's meta.json kind), or one
  UserError line naming `where`."""
  found = find_labeler_class(kind)
  if found is None:
    raise UserError(f'{where}={kind!r} is not a kind with a labeler '
                    f'({", ".join(c.kind for c in labeler_kinds())})')
  return found


@gin.configurable
class DetectionTask(Task):
  """RetinaNet detection: focal + Huber loss, COCO AP."""
  kind = 'detection'
  loss_names = ('total_loss', 'cls_loss', 'box_loss')
  input_parser = pipeline.DetectionParser
  labeler_class = labelers.DetectionLabeler
  serving_module = serving.DetectionServingModule

  def __init__(self, model_fn=None, num_classes: int = 91, image_size=(640, 640),
               train_source=None, eval_source=None):
    super().__init__(model_fn, num_classes, image_size, train_source, eval_source)

  label_stat_names = ('boxes_per_image',)

  def label_stats(self, labels):
    return {'boxes_per_image': tf.reduce_mean(tf.cast(labels['num_boxes'], tf.float32))}

  def forward(self, model, images, labels, training):
    if training:
      return _as_float32(model(images, training=True))
    return _as_float32(model(images, image_shape=labels['image_info'][:, 1, :],
                             anchor_boxes=labels['anchor_boxes'], training=False))

  def losses(self, outputs, labels):
    return losses_lib.detection_losses(outputs, labels, num_classes=self.num_classes)

  def eval_outputs(self, model, images, labels):
    outputs = self.forward(model, images, labels, training=False)
    return {
        'groundtruths': labels['groundtruths'],
        'predictions': {
            'source_id': labels['groundtruths']['source_id'],
            'image_info': labels['image_info'],
            'detection_boxes': outputs['detection_boxes'],
            'detection_scores': outputs['detection_scores'],
            'detection_classes': outputs['detection_classes'],
            'num_detections': outputs['num_detections'],
        }}

  def new_evaluator(self):
    from rethink_st.data import label_space  # pylint: disable=g-import-not-at-top
    # Results in the dataset's category ids and names (a COCO JSON source's label space).
    return coco.CocoDetectionEvaluator(label_space=label_space.label_space_of(self))

  def update_evaluator(self, evaluator, outputs):
    evaluator.update_state(outputs['groundtruths'], outputs['predictions'])

  def build_labeler(self, model, *, score_threshold: float = 0.5,
                    class_agnostic_nms_iou: Optional[float] = 0.5,
                    score_floor: Optional[float] = None, **unused):
    """score_floor: boxes written (with their scores) down to min(score_floor,
    score_threshold); None: down to score_threshold only."""
    return labelers.DetectionLabeler(model, score_threshold, class_agnostic_nms_iou,
                                     score_floor)


@gin.configurable
class SegmentationTask(Task):
  """Semantic segmentation: pixel cross-entropy (ignore 255), mIoU with optional
  multi-scale + flip inference at evaluation."""
  kind = 'segmentation'
  loss_names = ('total_loss',)
  input_parser = pipeline.SegmentationParser
  labeler_class = labelers.SegmentationLabeler
  serving_module = serving.SegmentationServingModule

  def __init__(self, model_fn=None, num_classes: int = 21, image_size=(512, 512),
               train_source=None, eval_source=None, eval_scales=(1.0,), eval_flip=False,
               size_divisor: int = 128):
    """eval_scales/eval_flip: multi-scale (+ flip) inference at evaluation (and for
    pseudo-labeling); size_divisor: for a model built for any input size, each scaled input
    is padded to a multiple of it (2**max_level of the model); a model built for one size
    (every model here) runs scaled inputs as tiles of that size instead
    (`segmentation.predict_probabilities`)."""
    super().__init__(model_fn, num_classes, image_size, train_source, eval_source)
    self.eval_scales = tuple(eval_scales)
    self.eval_flip = eval_flip
    self.size_divisor = int(size_divisor)

  def forward(self, model, images, labels, training):
    return _as_float32(model(images, training=training))

  def losses(self, outputs, labels):
    return losses_lib.segmentation_losses_fn(outputs, labels)

  def eval_outputs(self, model, images, labels):
    masks = labels['masks']
    probs = segmentation.predict_probabilities(
        model, images, scales=self.eval_scales, flip=self.eval_flip,
        output_size=tf.shape(masks)[1:3], size_divisor=self.size_divisor)
    return {'masks': masks, 'predictions': tf.argmax(probs, axis=-1, output_type=tf.int32)}

  def new_evaluator(self):
    return segmentation.MeanIoUEvaluator(num_classes=self.num_classes)

  def update_evaluator(self, evaluator, outputs):
    evaluator.update_state(outputs['masks'], outputs['predictions'])

  def build_labeler(self, model, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                    mask_threshold: float = 0.5, **unused):
    return labelers.SegmentationLabeler(model, scales, flip, mask_threshold,
                                        self.size_divisor)

  def serving_settings(self):
    return dict(scales=self.eval_scales, flip=self.eval_flip, size_divisor=self.size_divisor)


class _AccuracyEvaluator:
  """Top-1 accuracy over an evaluation pass."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.correct, self.count = 0, 0

  def update_state(self, labels, logits):
    pred = np.argmax(np.asarray(logits), axis=-1)
    self.correct += int(np.sum(pred == np.asarray(labels)))
    self.count += int(np.asarray(labels).shape[0])

  def result(self):
    return {'top1_accuracy': self.correct / max(self.count, 1)}


@gin.configurable
class ClassificationTask(Task):
  """Image classification: the pre-training stage (ImageNet / iconic digits)."""
  kind = 'classification'
  loss_names = ('total_loss',)
  input_parser = pipeline.ClassificationParser

  def __init__(self, model_fn=None, num_classes: int = 1000, image_size=(224, 224),
               train_source=None, eval_source=None):
    super().__init__(model_fn, num_classes, image_size, train_source, eval_source)

  def forward(self, model, images, labels, training):
    return tf.cast(model(images, training=training), tf.float32)

  def losses(self, outputs, labels):
    return losses_lib.classification_losses(outputs, labels)

  def eval_outputs(self, model, images, labels):
    return {'labels': labels, 'logits': self.forward(model, images, labels, training=False)}

  def new_evaluator(self):
    return _AccuracyEvaluator()

  def update_evaluator(self, evaluator, outputs):
    evaluator.update_state(outputs['labels'], outputs['logits'])


def update_evaluator(task: Task, evaluator, outputs: Dict[str, Any]) -> None:
  """Feeds one eval step's outputs (numpy, replicas concatenated) to the task's evaluator."""
  task.update_evaluator(evaluator, outputs)
