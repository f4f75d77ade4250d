"""What every binary does after parsing its flags: register configurables, parse gin, lock
its output folder, save config.gin, call one run function; a user mistake prints one line
and exits 1, and a run that fails leaves no folder it made behind."""
import contextlib
import importlib
import os
import shutil
from typing import Callable, Optional, Sequence

from absl import logging

from rethink_st import config_io
from rethink_st import run_lock

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


def run_binary(run_fn: Callable[..., object], *, gin_files: Sequence[str],
               gin_params: Sequence[str], model_dir: Optional[str], save_config: bool = True,
               config_dir: Optional[str] = None, lock_name: str = run_lock.LOCK_NAME,
               **kwargs):
  """Parses gin, locks the folder it writes (config_dir, default model_dir; `lock_name`
  there, see run_lock), writes config.gin to it, then returns run_fn(model_dir, **kwargs).
  The lock comes first so that a second writer stops before it touches the folder.
  save_config=False leaves config.gin, and the lock, to run_fn (export writes config.gin
  into the SavedModel folder, which must be empty when the export starts)."""
  folder = config_dir or model_dir

  def start():
    register_configurables()
    config_io.parse_gin(gin_files, gin_params)
    with _removed_if_start_fails(folder), _locked(folder if save_config else None, lock_name):
      from rethink_st.training import strategy  # pylint: disable=g-import-not-at-top
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
