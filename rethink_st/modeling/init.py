"""Initializing a model's backbone / decoder / head / everything from a TF2 checkpoint.

    report = initialize_model(detector, '/runs/pretrain/ckpt-5000', modules=('backbone',))
    report.restored      # names of the detector's variables that got checkpoint values
    report.unrestored    # names of the requested modules' variables that did not

Checkpoints this reads (any object-based TF2 checkpoint):
  * ours: `tf.train.Checkpoint(model=model, optimizer=...)` from the trainer, for any of our
    models (RetinaNet, segmentation, classifier, JointModel);
  * Model Garden's: `tf.train.Checkpoint(model=model, backbone=model.backbone, ...)`, or a
    bare `tf.train.Checkpoint(backbone=backbone)`;
  * a classifier's checkpoint into a detector's backbone (pre-training), a teacher's into a
    student (modules=('all',)), a JointModel's into a detector.

How: for each requested module the checkpoint's object graph is searched for the node that
holds it (`backbone` / `_backbone` for the backbone, `model` / `detector` for 'all', ...);
of the candidates, the one whose variables match the most of the module's variables (same
path of object names below it, same shape) is used. The module is then restored with
`tf.train.Checkpoint(<that path>=module).read(path).expect_partial()`, so the values come
from TensorFlow's own restore. A variable whose checkpoint tensor has another shape is an
error (one line naming it), not a silent skip.
"""
import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import gin
import tensorflow as tf, tf_keras

from tensorflow.core.protobuf import trackable_object_graph_pb2

from rethink_st.errors import UserError

MODULES = ('backbone', 'decoder', 'head', 'all')
# Object-graph names under which each module is found in checkpoints: Model Garden's models
# keep it as `_backbone` (RetinaNet, classifier) or `backbone` (segmentation), and their
# checkpoints add a top-level `backbone=` (and `decoder=`, `head=`) next to `model=`.
_NODE_NAMES = {
    'backbone': ('backbone', '_backbone'),
    'decoder': ('decoder', '_decoder'),
    'head': ('head', '_head'),
    'all': ('model', 'detector'),
}
_OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
_VALUE_ATTRIBUTE = 'VARIABLE_VALUE'


class CheckpointNotFoundError(UserError):
  """The checkpoint path names no checkpoint."""


class CheckpointMismatchError(UserError):
  """The checkpoint holds nothing of the requested modules, or holds them with other shapes."""


@dataclasses.dataclass(frozen=True)
class InitReport:
  """What initialize_model did. Names are the model's variable names (`v.name`)."""
  checkpoint: str
  modules: Tuple[str, ...]
  restored: Tuple[str, ...]
  unrestored: Tuple[str, ...]
  sources: Dict[str, str]        # module -> object path in the checkpoint it was read from

  @property
  def num_restored(self) -> int:
    return len(self.restored)

  @property
  def num_total(self) -> int:
    return len(self.restored) + len(self.unrestored)

  def summary(self) -> str:
    src = ', '.join(f'{m} <- {p or "<root>"}' for m, p in self.sources.items())
    return (f'initialized {self.num_restored} of {self.num_total} variables of '
            f'{"+".join(self.modules)} from {self.checkpoint} ({src})')


def resolve_checkpoint(checkpoint: str) -> str:
  """A checkpoint prefix, or a directory -> its latest checkpoint; else a one-line error."""
  if not checkpoint:
    raise CheckpointNotFoundError('initialize_model.checkpoint is empty')
  path = os.fspath(checkpoint)
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise CheckpointNotFoundError(f'initialize_model.checkpoint: no checkpoint in directory '
                                    f'{path}')
    return latest
  if not tf.io.gfile.exists(path + '.index'):
    raise CheckpointNotFoundError(f'initialize_model.checkpoint: {path} does not exist (need a '
                                  f'checkpoint prefix with {path}.index, or a directory)')
  return path


def _read_object_graph(path: str):
  try:
    reader = tf.train.load_checkpoint(path)
  except (tf.errors.OpError, ValueError) as e:
    raise CheckpointMismatchError(f'initialize_model.checkpoint: cannot read {path}: '
                                  f'{str(e).splitlines()[0]}') from e
  if not reader.has_tensor(_OBJECT_GRAPH_KEY):
    raise CheckpointMismatchError(f'initialize_model.checkpoint: {path} is a name-based (TF1) '
                                  f'checkpoint; need a TF2 object-based one')
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
  return reader, graph


def _candidate_paths(graph, module: str) -> List[Tuple[str, ...]]:
  """Object paths (tuples of names from the root) to nodes that may hold `module`,
  shortest first; the root and its 'model' node are always candidates too."""
  names = _NODE_NAMES[module]
  found: Dict[int, Tuple[str, ...]] = {}
  seen = {0}
  frontier = [(0, ())]
  while frontier:
    next_frontier = []
    for node_id, path in frontier:
      for child in graph.nodes[node_id].children:
        child_path = path + (child.local_name,)
        if child.local_name in names and child.node_id not in found:
          found[child.node_id] = child_path
        if child.node_id not in seen:
          seen.add(child.node_id)
          next_frontier.append((child.node_id, child_path))
    frontier = next_frontier
  paths = list(found.values())
  for child in graph.nodes[0].children:
    if child.local_name == 'model' and ('model',) not in paths:
      paths.append(('model',))
  paths.append(())
  return paths


def _node_at(graph, path: Sequence[str]) -> int:
  node_id = 0
  for name in path:
    node_id = next(c.node_id for c in graph.nodes[node_id].children if c.local_name == name)
  return node_id


def _match(obj, graph, node_id: int, shapes, restored: Dict[int, str],
           mismatched: Dict[int, str], variables: Dict[int, tf.Variable], visited) -> None:
  """Walks `obj` and checkpoint node `node_id` together by child name (as TF's restore
  does); records matched variables by id with their checkpoint keys."""
  if (id(obj), node_id) in visited:
    return
  visited.add((id(obj), node_id))
  if isinstance(obj, tf.Variable):
    variables[id(obj)] = obj
    for attr in graph.nodes[node_id].attributes:
      if attr.name == _VALUE_ATTRIBUTE and attr.checkpoint_key in shapes:
        if list(shapes[attr.checkpoint_key]) == obj.shape.as_list():
          restored[id(obj)] = attr.checkpoint_key
        else:
          key = attr.checkpoint_key.replace('/.ATTRIBUTES/' + _VALUE_ATTRIBUTE, '')
          mismatched[id(obj)] = (f'{obj.name} {obj.shape.as_list()} vs checkpoint {key} '
                                 f'{list(shapes[attr.checkpoint_key])}')
    return
  ckpt_children = {c.local_name: c.node_id for c in graph.nodes[node_id].children}
  for name, child in _children(obj).items():
    if name in ckpt_children:
      _match(child, graph, ckpt_children[name], shapes, restored, mismatched, variables,
             visited)


def _children(obj) -> Dict[str, object]:
  return dict(tf.train.TrackableView(obj).children(obj))


def _all_variables(obj) -> Dict[int, tf.Variable]:
  out, seen, stack = {}, set(), [obj]
  while stack:
    o = stack.pop()
    if id(o) in seen:
      continue
    seen.add(id(o))
    if isinstance(o, tf.Variable):
      out[id(o)] = o
      continue
    stack.extend(_children(o).values())
  return out


class _PathNode(tf.__internal__.tracking.AutoTrackable):
  """An empty trackable used to rebuild the path from the checkpoint root to a module."""


def _checkpoint_for(path: Tuple[str, ...], module_obj) -> tf.train.Checkpoint:
  """A tf.train.Checkpoint whose object at `path` is `module_obj`."""
  if not path:
    return tf.train.Checkpoint(root=module_obj)
  obj = module_obj
  for name in reversed(path[1:]):
    parent = _PathNode()
    setattr(parent, name, obj)
    obj = parent
  return tf.train.Checkpoint(**{path[0]: obj})


def _module(model: tf_keras.Model, module: str):
  if module == 'all':
    return model
  obj = getattr(model, module, None)
  if obj is None:
    raise UserError(f'initialize_model.modules: {type(model).__name__} has no {module!r}')
  return obj


@gin.configurable
def initialize_model(model: tf_keras.Model,
                     checkpoint: Optional[str] = None,
                     modules: Sequence[str] = ('backbone',)) -> Optional[InitReport]:
  """Restores the requested parts of a built `model` from a TF2 checkpoint.

  Args:
    model: a built model with `backbone` (and `decoder`, `head` for those modules), e.g.
      from build_retinanet / build_segmentation_model / build_classifier / JointModel.
    checkpoint: a checkpoint prefix ('.../ckpt-1000') or a directory (its latest
      checkpoint). None: do nothing and return None (random initialization).
    modules: any of 'backbone', 'decoder', 'head', 'all' ('all': the whole model, e.g. a
      student from its teacher).

  Returns:
    InitReport with the restored and unrestored variable names of the requested modules.

  Raises:
    UserError (CheckpointNotFoundError / CheckpointMismatchError) in one line: the path does
    not exist, the checkpoint matches none of the requested modules' variables, or some of
    its tensors have other shapes than the model's variables.
  """
  if checkpoint is None:
    return None
  if isinstance(modules, str):
    modules = (modules,)
  modules = tuple(modules)
  unknown = [m for m in modules if m not in MODULES]
  if unknown or not modules:
    raise UserError(f'initialize_model.modules: unknown {unknown or modules!r}; known: '
                    f'{", ".join(MODULES)}')
  if 'all' in modules:
    modules = ('all',)
  path = resolve_checkpoint(checkpoint)
  reader, graph = _read_object_graph(path)
  shapes = reader.get_variable_to_shape_map()

  restored_all: Dict[int, str] = {}
  variables_all: Dict[int, tf.Variable] = {}
  sources: Dict[str, str] = {}
  plans = []
  for module in modules:
    obj = _module(model, module)
    module_vars = _all_variables(obj)
    variables_all.update(module_vars)
    best = None
    for cpath in _candidate_paths(graph, module):
      restored, mismatched, seen_vars = {}, {}, {}
      _match(obj, graph, _node_at(graph, cpath), shapes, restored, mismatched, seen_vars,
             set())
      score = (len(restored) + len(mismatched), -len(cpath))
      if best is None or score > best[0]:
        best = (score, cpath, restored, mismatched)
    _, cpath, restored, mismatched = best
    if mismatched:
      first = next(iter(mismatched.values()))
      raise CheckpointMismatchError(
          f'initialize_model: {len(mismatched)} variables of {module!r} have other shapes in '
          f'{path} (e.g. {first}); restore fewer modules or fix the model settings')
    if restored:
      plans.append((module, obj, cpath))
      sources[module] = '/'.join(cpath)
    restored_all.update(restored)

  if not restored_all:
    raise CheckpointMismatchError(
        f'initialize_model: {path} holds none of the {len(variables_all)} variables of '
        f'{"+".join(modules)} of {type(model).__name__}')

  for module, obj, cpath in plans:
    try:
      _checkpoint_for(cpath, obj).read(path).expect_partial()
    except (ValueError, tf.errors.OpError) as e:
      raise CheckpointMismatchError(f'initialize_model: restoring {module!r} from {path} failed: '
                                    f'{str(e).splitlines()[0]}') from e

  restored_names = tuple(sorted(v.name for i, v in variables_all.items() if i in restored_all))
  unrestored_names = tuple(sorted(v.name for i, v in variables_all.items()
                                  if i not in restored_all))
  report = InitReport(checkpoint=path, modules=modules, restored=restored_names,
                      unrestored=unrestored_names, sources=sources)
  logging.info('initialize_model: %s', report.summary())
  if unrestored_names:
    logging.info('initialize_model: %d variables keep their initial values (first: %s)',
                 len(unrestored_names), ', '.join(unrestored_names[:5]))
  logging.debug('initialize_model: restored: %s', ', '.join(restored_names))
  logging.debug('initialize_model: not restored: %s', ', '.join(unrestored_names))
  return report
