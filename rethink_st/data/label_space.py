"""A label space: which dataset category each model class id means, and its name.

Models, input pipelines and pseudo labels use contiguous class ids 1..K (0 is background);
a dataset may number its categories otherwise (COCO: 1..90 with gaps; a user's file: any
ids). `LabelSpace.category_ids[c - 1]` is the dataset's category id of class c and
`names[c - 1]` its name. A COCO-JSON source reads it from its annotation file
(`coco_json_source`: categories sorted by id); other sources know only their class count
(`contiguous`: ids 1..K, names '1'..'K').

It travels with the data: pseudo labels record their teacher's label space (meta.json,
`to_json`), the student refuses pseudo labels of another one, the COCO evaluator writes
detections with the dataset's category ids and names, and an export records it beside the
SavedModel.

    label_space_of(task)   the task's: its train source's, else its eval source's, else
                           contiguous(task.num_classes - 1)
    num_classes_with_background(num_classes)   gin: a task's class count from the number
                           of object categories (NUM_CLASSES in gin_configs/custom/)
"""
import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import gin

from rethink_st.errors import UserError


@dataclasses.dataclass(frozen=True)
class LabelSpace:
  """category_ids[c - 1], names[c - 1]: the dataset's id and name of model class c."""
  category_ids: Tuple[int, ...]
  names: Tuple[str, ...]

  def __post_init__(self):
    if len(self.category_ids) != len(self.names):
      raise ValueError(f'LabelSpace: {len(self.category_ids)} ids, {len(self.names)} names')

  @property
  def num_classes(self) -> int:
    """Object classes (background not counted)."""
    return len(self.category_ids)

  @classmethod
  def contiguous(cls, num_classes: int, names: Optional[Sequence[str]] = None) -> 'LabelSpace':
    ids = tuple(range(1, int(num_classes) + 1))
    return cls(ids, tuple(str(n) for n in names) if names else tuple(str(i) for i in ids))

  def is_contiguous(self) -> bool:
    return self.category_ids == tuple(range(1, self.num_classes + 1))

  def category_map(self) -> Dict[int, int]:
    """{class id: dataset category id}."""
    return {c + 1: int(i) for c, i in enumerate(self.category_ids)}

  def class_names(self) -> Dict[int, str]:
    """{class id: name}."""
    return {c + 1: n for c, n in enumerate(self.names)}

  def to_json(self) -> Dict[str, Any]:
    return {'category_ids': [int(i) for i in self.category_ids],
            'category_names': list(self.names)}

  @classmethod
  def from_json(cls, value: Dict[str, Any]) -> 'LabelSpace':
    return cls(tuple(int(i) for i in value['category_ids']),
               tuple(str(n) for n in value['category_names']))

  def describe(self, limit: int = 6) -> str:
    """'3 classes (ids 1, 5, 9: circle, square, triangle)', for one-line errors."""
    pairs = [f'{i}={n}' if str(i) != n else str(i)
             for i, n in zip(self.category_ids, self.names)]
    more = f', ... ({self.num_classes - limit} more)' if len(pairs) > limit else ''
    return f'{self.num_classes} classes ({", ".join(pairs[:limit])}{more})'


def of_source(source) -> Optional[LabelSpace]:
  """A source's label space: its own (`label_space`), else contiguous over its
  `num_classes`; None when it knows neither."""
  space = getattr(source, 'label_space', None)
  if space is not None:
    return space
  num_classes = getattr(source, 'num_classes', None)
  return LabelSpace.contiguous(num_classes) if num_classes else None


def label_space_of(task) -> LabelSpace:
  """What a task's class ids 1..num_classes - 1 mean: the label space of its train source,
  else of its eval source, else contiguous ids. One UserError line if that source's label
  space has another number of classes than the task."""
  expected = int(task.num_classes) - 1   # tasks count background, label spaces do not
  for which in ('train_source', 'eval_source'):
    source = getattr(task, which, None)
    space = getattr(source, 'label_space', None)
    if space is None:
      continue
    if space.num_classes != expected:
      raise UserError(f'{type(task).__name__}.num_classes={task.num_classes} ({expected} '
                      f'classes + background), but its {which} {source.name} has '
                      f'{space.describe()}')
    return space
  return LabelSpace.contiguous(expected)


def difference(expected: LabelSpace, got: LabelSpace) -> Optional[str]:
  """None if the two are the same label space, else what differs, in a few words."""
  if expected.num_classes != got.num_classes:
    return f'{got.num_classes} classes, not {expected.num_classes}'
  for c, (a, b) in enumerate(zip(expected.category_ids, got.category_ids), 1):
    if a != b:
      return f'class {c} is category id {b}, not {a}'
  for c, (a, b) in enumerate(zip(expected.names, got.names), 1):
    if a != b:
      return f'class {c} is named {b!r}, not {a!r}'
  return None


@gin.configurable(module='rethink_st.data.sources')
def num_classes_with_background(num_classes=gin.REQUIRED) -> int:
  """A task's num_classes (object categories + background) from the number of object
  categories, e.g. `DetectionTask.num_classes = @num_classes_with_background()` with
  `num_classes_with_background.num_classes = %NUM_CLASSES` (gin_configs/custom/)."""
  if isinstance(num_classes, str) and num_classes.startswith('REQUIRED'):
    raise UserError(f'NUM_CLASSES is not set: {num_classes}')
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise UserError(f'NUM_CLASSES={num_classes!r} must be a positive integer (the number of '
                    'object categories, background not counted)')
  return num_classes + 1
