"""What every binary does after parsing its flags: register configurables, parse gin, apply
and check its stage flags, lock its output folder, save config.gin, call one run function; a
user mistake prints one line and exits 1, and a run that fails leaves no folder it made behind.

Stage flags (`--teacher`, `--pseudo_labels`, `--checkpoint`, `--unlabeled`) each set exactly one
gin binding (`FlagBinding`; the table is in README.md, "The pipeline and its binaries"). The
flag is applied after the gin files and --gin_param, so it is in the run's config.gin; it
replaces a value the gin files bind (with a line saying so), and a --gin_param that binds the
same parameter to another value is an error naming both. A flag's path is checked before any
folder is made.
"""
import contextlib
import dataclasses
import importlib
import os
import shutil
from typing import Any, Callable, Dict, Optional, Sequence

from absl import logging
import gin
import tensorflow as tf

from rethink_st import checkpoint as checkpoint_lib
from rethink_st import config_io
from rethink_st import run_lock
from rethink_st.data import sources
from rethink_st.errors import UserError
from rethink_st.pseudo_label import source as pseudo_label_source
from rethink_st.training import strategy

# Modules that define configurables gin files may name.
_CONFIGURABLE_MODULES = (
    'rethink_st.augment',
    'rethink_st.data.digit_scenes',
    'rethink_st.data.pipeline',
    'rethink_st.data.sources',
    'rethink_st.evaluation.coco',
    'rethink_st.evaluation.segmentation',
    'rethink_st.losses',
    'rethink_st.modeling.anchors',
    'rethink_st.modeling.backbones',
    'rethink_st.modeling.classification',
    'rethink_st.modeling.detection',
    'rethink_st.modeling.init',
    'rethink_st.modeling.segmentation',
    'rethink_st.training.optimization',
    'rethink_st.training.run',
    'rethink_st.training.strategy',
    'rethink_st.training.student',
    'rethink_st.training.joint',
    'rethink_st.training.tasks',
    'rethink_st.pseudo_label.run',
    'rethink_st.pseudo_label.source',
    'rethink_st.self_training',
    'rethink_st.export',
    'rethink_st.augment_preview',
)


def register_configurables() -> None:
  for name in _CONFIGURABLE_MODULES:
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:
        raise
      logging.debug('configurable module %s is not present', name)


# ------------------------------------------------------------------------------ stage flags
# The gin binding each stage flag sets (module-qualified, as gin files name them).
LABELER_TEACHER = 'rethink_st.pseudo_label.run.run_pseudo_label.teacher_checkpoint'
UNLABELED = 'rethink_st.pseudo_label.run.run_pseudo_label.unlabeled_source'
STUDENT_TEACHER = 'rethink_st.training.run.run_train.init_checkpoint'
PSEUDO_LABELS = 'rethink_st.pseudo_label.source.pseudo_label_source.directory'
PSEUDO_LABELS_REQUIRE_COMPLETE = (
    'rethink_st.pseudo_label.source.pseudo_label_source.require_complete')  # read, not set
SELF_TRAINING_TEACHER = 'rethink_st.self_training.run_self_training.teacher_dir'
EVALUATE_CHECKPOINT = 'rethink_st.training.run.run_evaluate.checkpoint'
EXPORT_CHECKPOINT = 'rethink_st.export.run_export.checkpoint'


@dataclasses.dataclass(frozen=True)
class FlagBinding:
  """A binary's flag that sets one gin binding.

  flag: the flag's name (`teacher` for --teacher); value: what it was given (None: not given,
  the gin config decides); binding: the gin parameter it sets; check: called with
  (`--flag`, value) before any folder is made, raises a UserError naming both;
  required: the binary cannot run without it.
  """
  flag: str
  value: Optional[str]
  binding: str
  check: Optional[Callable[[str, str], None]] = None
  required: bool = False

  @property
  def where(self) -> str:
    return f'--{self.flag}'


def check_checkpoint(where: str, path: str) -> None:
  """`path` is a folder holding a checkpoint, or a checkpoint prefix (checkpoint.resolve)."""
  checkpoint_lib.resolve(path, where)


def check_checkpoint_folder(where: str, path: str) -> None:
  """`path` is a run folder holding a checkpoint, not a prefix (checkpoint.latest_in)."""
  checkpoint_lib.latest_in(path, where)


def check_pseudo_labels(where: str, path: str) -> None:
  """`path` is a finished pseudo-label folder with at least one complete chunk (the student
  checks its label space against the task's when it starts)."""
  require_complete = config_io.bound_value(PSEUDO_LABELS_REQUIRE_COMPLETE) is not False
  pseudo_label_source.check_folder(path, where, require_complete)


def check_unlabeled(where: str, spec: str) -> None:
  """`spec` names images: 'digit_scenes:<split>', an existing folder, or a glob that matches
  a file (the run function opens the source, and reads its first image, before labeling)."""
  if not spec.strip():
    raise UserError(f'{where}: empty; give digit_scenes:<split>, an image folder or a '
                    'TFRecord glob')
  if spec.startswith(sources.DIGIT_SCENES_PREFIX) or tf.io.gfile.isdir(spec):
    return
  if not tf.io.gfile.glob(spec):
    raise UserError(f'{where}={spec}: no such folder, and no file matches it as a TFRecord glob')


def pseudo_label_flags(teacher: Optional[str], unlabeled: Optional[str]):
  """bin/pseudo_label.py: --teacher (a run folder or checkpoint prefix), --unlabeled."""
  return (FlagBinding('teacher', teacher, LABELER_TEACHER, check_checkpoint),
          FlagBinding('unlabeled', unlabeled, UNLABELED, check_unlabeled))


def train_student_flags(teacher: Optional[str], pseudo_labels: Optional[str]):
  """bin/train_student.py: --teacher (its weights start the student), --pseudo_labels."""
  return (FlagBinding('teacher', teacher, STUDENT_TEACHER, check_checkpoint),
          FlagBinding('pseudo_labels', pseudo_labels, PSEUDO_LABELS, check_pseudo_labels))


def self_train_flags(teacher: Optional[str]):
  """bin/self_train.py: --teacher, a trained teacher's run folder (no teacher is trained)."""
  return (FlagBinding('teacher', teacher, SELF_TRAINING_TEACHER, check_checkpoint_folder),)


def evaluate_flags(checkpoint: Optional[str]):
  """bin/evaluate.py: --checkpoint, a run folder (its latest checkpoint) or a prefix."""
  return (FlagBinding('checkpoint', checkpoint, EVALUATE_CHECKPOINT, check_checkpoint,
                      required=True),)


def export_flags(checkpoint: Optional[str]):
  """bin/export.py: --checkpoint, a run folder (its latest checkpoint) or a prefix."""
  return (FlagBinding('checkpoint', checkpoint, EXPORT_CHECKPOINT, check_checkpoint,
                      required=True),)


# The run folder of --checkpoint: the folder itself, or the one holding a prefix.
checkpoint_folder = checkpoint_lib.folder_of


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, str) and isinstance(b, str):
    a, b = (v.rstrip('/') if '://' in v else os.path.normpath(v) for v in (a, b))
  return a == b


def parse_gin_and_flags(gin_files: Sequence[str], gin_params: Sequence[str],
                        flag_bindings: Sequence[FlagBinding] = ()) -> None:
  """Parses the gin files, then each --gin_param, then binds each given stage flag.

  A flag replaces a value the gin files bind (a line says so); a --gin_param that binds the
  flag's parameter (or the macro it names) to another value is a UserError naming both.
  Then each flag's check runs; a missing required flag is a UserError."""
  given = [f for f in flag_bindings if f.value is not None]
  config_io.parse_gin(gin_files, [])
  value = {f.binding: config_io.bound_value(f.binding) for f in given}
  set_by: Dict[str, str] = {}   # binding -> the last --gin_param that changed its value
  for param in gin_params:
    config_io.parse_gin([], [param])
    for f in given:
      now = config_io.bound_value(f.binding)
      if now is not value[f.binding] and not _same(now, value[f.binding]):
        value[f.binding], set_by[f.binding] = now, param
  for f in flag_bindings:
    if f.value is None:
      if f.required:
        raise UserError(f'{f.where} is required ({f.binding})')
      continue
    bound = value[f.binding]
    if bound is not config_io.UNSET and bound is not None and not _same(bound, f.value):
      if f.binding in set_by:
        raise UserError(f'{f.where}={f.value} and --gin_param="{set_by[f.binding]}" both set '
                        f'{f.binding}, differently; give one of them')
      print(f'[flags] {f.where}={f.value} replaces {f.binding} = {bound!r} of the gin files',
            flush=True)
    if f.check:
      f.check(f.where, f.value)
    gin.bind_parameter(f.binding, f.value)


def run_binary(run_fn: Callable[..., object], *, gin_files: Sequence[str],
               gin_params: Sequence[str], model_dir: Optional[str], save_config: bool = True,
               config_dir: Optional[str] = None, lock_name: str = run_lock.LOCK_NAME,
               flag_bindings: Sequence[FlagBinding] = (), **kwargs):
  """Parses gin and the stage flags (parse_gin_and_flags: each flag's path is checked here,
  before any folder is made), locks the folder it writes (config_dir, default model_dir;
  `lock_name` there, see run_lock), writes config.gin to it, then returns
  run_fn(model_dir, **kwargs). The lock comes first so that a second writer stops before it
  touches the folder. save_config=False leaves config.gin, and the lock, to run_fn (export
  writes config.gin into the SavedModel folder, which must be empty when the export starts)."""
  folder = config_dir or model_dir

  def start():
    register_configurables()
    parse_gin_and_flags(gin_files, gin_params, flag_bindings)
    with _removed_if_start_fails(folder), _locked(folder if save_config else None, lock_name):
      strategy.build_strategy()  # before any op: collectives and TPUs are set up at start-up
      if save_config and folder:
        config_io.save_config(folder)
      return run_fn(model_dir, **kwargs)
  return config_io.call_with_user_errors(start)


def _locked(folder: Optional[str], lock_name: str):
  """The folder's lock, held by the chief (a cluster's workers are one writer)."""
  if not (folder and config_io.is_chief()):
    return contextlib.nullcontext()
  return run_lock.hold(folder, folder, lock_name)


# What a run writes before its real work: a folder holding only these failed at the start.
_START_FILES = ('config.gin', 'operative_config.gin')


@contextlib.contextmanager
def _removed_if_start_fails(folder: Optional[str]):
  """A run that fails having written nothing but its configs removes the folder it made
  (and the parents it made), so a mistyped binding leaves no --model_dir with a config.gin
  behind. A folder that existed before, or holds anything else (checkpoints, events,
  pseudo-label chunks), stays; so does one whose lock another run holds. Local paths only."""
  made = _first_missing(folder)
  try:
    yield
  except run_lock.FolderInUse:
    raise
  except BaseException:
    if made and _holds_only_start_files(made):
      shutil.rmtree(made, ignore_errors=True)
    raise


def _first_missing(folder: Optional[str]) -> Optional[str]:
  """The outermost folder on the way to `folder` that does not exist yet (None: it exists,
  or is not a local path)."""
  if not folder or '://' in folder:
    return None
  path, missing = os.path.abspath(folder), None
  while not os.path.exists(path):
    path, missing = os.path.dirname(path), path
  return missing


def _holds_only_start_files(folder: str) -> bool:
  return all(name in _START_FILES for _, _, files in os.walk(folder) for name in files)
