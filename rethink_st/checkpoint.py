"""Checkpoints: find one, restore a model from it (whole or in part), report what was restored.

    path = resolve('runs/teacher', 'run_pseudo_label.teacher_checkpoint')  # its latest ckpt
    report = restore_model(model, path, 'run_pseudo_label.teacher_checkpoint')   # whole model
    report = restore_modules(model, path, ('backbone',), 'run_train.init_checkpoint')
    report = resume(tf.train.Checkpoint(model=..., optimizer=...), model_dir, '--model_dir')

`where` is the flag or gin binding the path came from: every mistake is one UserError line
naming it (`--teacher=runs/x: holds no checkpoint`). Every restore returns a RestoreReport
(the variables restored and those that keep their values) and logs it in one absl INFO line.

Whole restores (`restore_model`: the labeler's teacher, evaluation, export) read the model's
weights only (a training checkpoint's optimizer is left out) and require every variable of the
model to be in the checkpoint. `resume` restores a training run's whole checkpoint (model,
optimizer, trainer state) and requires the same.

Partial restores (`restore_modules`: a fresh run's init, a student from its teacher) read any
object-based TF2 checkpoint:
  * ours: `tf.train.Checkpoint(model=model, optimizer=...)` from the trainer, for any of our
    models (RetinaNet, segmentation, classifier, JointModel);
  * Model Garden's: `tf.train.Checkpoint(model=model, backbone=model.backbone, ...)`, or a
    bare `tf.train.Checkpoint(backbone=backbone)`;
  * a classifier's checkpoint into a detector's backbone (pre-training), a teacher's into a
    student (modules=('all',)), a JointModel's into a detector.
For each requested module the checkpoint's object graph is searched for the node that holds it
(`backbone` / `_backbone` for the backbone, `model` / `detector` for 'all', ...); of the
candidates, the one whose variables match the most of the module's variables (same path of
object names below it, same shape) is used. The module is then restored with
`tf.train.Checkpoint(<that path>=module).read(path).expect_partial()`, so the values come from
TensorFlow's own restore. A variable whose checkpoint tensor has another shape is an error (one
line naming it), not a silent skip.
"""
import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

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
_STEP_KEY = 'optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE'


class CheckpointNotFoundError(UserError):
  """The path names no checkpoint."""


class CheckpointMismatchError(UserError):
  """The checkpoint holds another model, or nothing of the requested modules, or holds them
  with other shapes."""


@dataclasses.dataclass(frozen=True)
class RestoreReport:
  """What a restore did. Names are the model's variable names (`v.name`)."""
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
    return (f'restored {self.num_restored} of {self.num_total} variables of '
            f'{"+".join(self.modules)} from {self.checkpoint}' + (f' ({src})' if src else ''))


# --- finding a checkpoint ----------------------------------------------------------------

def resolve(path: Optional[str], where: str) -> str:
  """A checkpoint prefix from a folder (its latest checkpoint) or a prefix (<path>.index
  exists); else one CheckpointNotFoundError line naming `where` (a flag or gin binding)."""
  if not path:
    raise CheckpointNotFoundError(f'{where} is not set')
  path = os.fspath(path)
  if path.startswith('REQUIRED'):   # a required macro left unset (gin_configs/README.md)
    raise CheckpointNotFoundError(f'{where} is not set: {path}')
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise CheckpointNotFoundError(f'{where}={path}: holds no checkpoint')
    return latest
  if not tf.io.gfile.exists(path + '.index'):
    raise CheckpointNotFoundError(f'{where}={path}: no such folder or checkpoint')
  return path


def latest_in(folder: Optional[str], where: str) -> str:
  """The latest checkpoint of a run folder (not a prefix); else one line naming `where`."""
  if not folder or not tf.io.gfile.isdir(folder):
    raise CheckpointNotFoundError(f'{where}={folder}: no such folder')
  return resolve(folder, where)


def folder_of(path: Optional[str]) -> Optional[str]:
  """The run folder of a folder (itself) or of a checkpoint prefix (the folder holding it)."""
  if not path:
    return None
  return path if tf.io.gfile.isdir(path) else os.path.dirname(path)


def training_step(path: str) -> int:
  """The optimizer step a training checkpoint was saved at (0 if it has none)."""
  variables = dict(tf.train.list_variables(path))
  return int(tf.train.load_variable(path, _STEP_KEY)) if _STEP_KEY in variables else 0


# --- whole restores ----------------------------------------------------------------------

def _different_model(where: str, given: str, path: str,
                     error: Exception) -> CheckpointMismatchError:
  first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
  shown = '' if given == path else f' ({path})'
  return CheckpointMismatchError(
      f'{where}={given} holds a checkpoint of a different model{shown}: {first}')


_RESTORE_ERRORS = (AssertionError, ValueError, tf.errors.InvalidArgumentError,
                   tf.errors.NotFoundError)


def restore_model(model, path: str, where: str) -> RestoreReport:
  """Restores all of `model`'s weights from a folder (its latest checkpoint) or a prefix,
  written as `tf.train.Checkpoint(model=...)` (by the trainer: its optimizer is left out).
  One UserError line naming `where` if there is no checkpoint or it holds another model."""
  prefix = resolve(path, where)
  try:
    status = tf.train.Checkpoint(model=model).read(prefix)
    status.expect_partial().assert_existing_objects_matched()
  except _RESTORE_ERRORS as e:
    raise _different_model(where, path, prefix, e) from None
  return _whole_report(model, prefix, ('all',), {'all': 'model'}, where)


def resume(checkpoint: tf.train.Checkpoint, folder: str, where: str) -> Optional[RestoreReport]:
  """Restores the latest checkpoint in `folder` into `checkpoint` (a training run's model,
  optimizer, ...); None if the folder holds none. One UserError line naming `where` if the
  checkpoint is of another model."""
  latest = tf.train.latest_checkpoint(folder)
  if not latest:
    return None
  try:
    checkpoint.restore(latest).assert_existing_objects_matched()
  except _RESTORE_ERRORS as e:
    raise _different_model(where, folder, latest, e) from None
  names = tuple(name for name, _ in _named_children(checkpoint))
  return _whole_report(checkpoint, latest, names, {}, where)


def _whole_report(obj, path: str, modules, sources, where: str) -> RestoreReport:
  names = tuple(sorted(v.name for v in _all_variables(obj).values()))
  return _logged(RestoreReport(checkpoint=path, modules=tuple(modules), restored=names,
                               unrestored=(), sources=sources), where)


def _logged(report: RestoreReport, where: str) -> RestoreReport:
  kept = report.unrestored
  logging.info('%s: %s%s', where, report.summary(),
               f'; {len(kept)} keep their initial values (first: {", ".join(kept[:5])})'
               if kept else '')
  logging.debug('%s: not restored: %s', where, ', '.join(kept))
  return report


# --- partial restores --------------------------------------------------------------------

def restore_modules(model, path: str, modules: Sequence[str] = ('backbone',),
                    where: str = 'checkpoint',
                    modules_where: Optional[str] = None) -> RestoreReport:
  """Restores the requested parts of a built `model` from a TF2 checkpoint.

  Args:
    model: a built model with `backbone` (and `decoder`, `head` for those modules), e.g.
      from build_retinanet / build_segmentation_model / build_classifier / JointModel.
    path: a checkpoint prefix ('.../ckpt-1000') or a folder (its latest checkpoint).
    modules: any of 'backbone', 'decoder', 'head', 'all' ('all': the whole model, e.g. a
      student from its teacher).
    where: the flag or binding `path` came from, named in errors and in the log line.
    modules_where: the binding `modules` came from (default `where`'s function + .modules).

  Returns:
    RestoreReport with the restored and unrestored variable names of the requested modules.

  Raises:
    UserError (CheckpointNotFoundError / CheckpointMismatchError) in one line: the path does
    not exist, the checkpoint matches none of the requested modules' variables, or some of
    its tensors have other shapes than the model's variables.
  """
  modules_where = modules_where or f'{where.rsplit(".", 1)[0]}.modules'
  if isinstance(modules, str):
    modules = (modules,)
  modules = tuple(modules)
  unknown = [m for m in modules if m not in MODULES]
  if unknown or not modules:
    raise UserError(f'{modules_where}: unknown {unknown or modules!r}; known: '
                    f'{", ".join(MODULES)}')
  if 'all' in modules:
    modules = ('all',)
  path = resolve(path, where)
  reader, graph = _read_object_graph(path, where)
  shapes = reader.get_variable_to_shape_map()

  restored_all: Dict[int, str] = {}
  variables_all: Dict[int, tf.Variable] = {}
  sources: Dict[str, str] = {}
  plans = []
  for module in modules:
    obj = _module(model, module, modules_where)
    variables_all.update(_all_variables(obj))
    best = None
    for cpath in _candidate_paths(graph, module):
      restored, mismatched = {}, {}
      _match(obj, graph, _node_at(graph, cpath), shapes, restored, mismatched, set())
      score = (len(restored) + len(mismatched), -len(cpath))
      if best is None or score > best[0]:
        best = (score, cpath, restored, mismatched)
    _, cpath, restored, mismatched = best
    if mismatched:
      first = next(iter(mismatched.values()))
      raise CheckpointMismatchError(
          f'{where}: {len(mismatched)} variables of {module!r} have other shapes in {path} '
          f'(e.g. {first}); restore fewer modules or fix the model settings')
    if restored:
      plans.append((module, obj, cpath))
      sources[module] = '/'.join(cpath)
    restored_all.update(restored)

  if not restored_all:
    raise CheckpointMismatchError(
        f'{where}: {path} holds none of the {len(variables_all)} variables of '
        f'{"+".join(modules)} of {type(model).__name__}')

  for module, obj, cpath in plans:
    try:
      _checkpoint_for(cpath, obj).read(path).expect_partial()
    except (ValueError, tf.errors.OpError) as e:
      raise CheckpointMismatchError(f'{where}: restoring {module!r} from {path} failed: '
                                    f'{str(e).splitlines()[0]}') from e

  restored_names = tuple(sorted(v.name for i, v in variables_all.items() if i in restored_all))
  unrestored_names = tuple(sorted(v.name for i, v in variables_all.items()
                                  if i not in restored_all))
  logging.debug('%s: restored: %s', where, ', '.join(restored_names))
  return _logged(RestoreReport(checkpoint=path, modules=modules, restored=restored_names,
                               unrestored=unrestored_names, sources=sources), where)


def _read_object_graph(path: str, where: str):
  try:
    reader = tf.train.load_checkpoint(path)
  except (tf.errors.OpError, ValueError) as e:
    raise CheckpointMismatchError(f'{where}: cannot read {path}: '
                                  f'{str(e).splitlines()[0]}') from e
  if not reader.has_tensor(_OBJECT_GRAPH_KEY):
    raise CheckpointMismatchError(f'{where}: {path} is a name-based (TF1) checkpoint; need a '
                                  f'TF2 object-based one')
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
           mismatched: Dict[int, str], visited) -> None:
  """Walks `obj` and checkpoint node `node_id` together by child name (as TF's restore
  does); records matched variables by id with their checkpoint keys."""
  if (id(obj), node_id) in visited:
    return
  visited.add((id(obj), node_id))
  if isinstance(obj, tf.Variable):
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
  for name, child in _named_children(obj):
    if name in ckpt_children:
      _match(child, graph, ckpt_children[name], shapes, restored, mismatched, visited)


def _named_children(obj):
  return list(tf.train.TrackableView(obj).children(obj).items())


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
    stack.extend(child for _, child in _named_children(o))
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


def _module(model, module: str, modules_where: str):
  if module == 'all':
    return model
  obj = getattr(model, module, None)
  if obj is None:
    raise UserError(f'{modules_where}: {type(model).__name__} has no {module!r}')
  return obj
