"""The labelers live in rethink_st/training/labelers.py, where the Task classes name them
(`Task.labeler_class`); this module keeps their names here. `build_labeler(task, model, ...)`
asks the task for its labeler."""
from rethink_st.training.labelers import (  # noqa: F401
    DetectionLabeler, Labeler, SegmentationLabeler, class_agnostic_suppressed)


def build_labeler(task, model, **settings):
  """The task's labeler (`Task.build_labeler`): score_threshold, class_agnostic_nms_iou,
  score_floor (detection), scales, flip, mask_threshold (segmentation); a kind takes the
  settings it uses."""
  return task.build_labeler(model, **settings)
