"""What every binary does after parsing its flags: register configurables, parse gin, save
config.gin, call one run function; a user mistake prints one line and exits 1."""
import importlib
from typing import Callable, Optional, Sequence

from absl import logging

from rethink_st import config_io

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
               config_dir: Optional[str] = None, **kwargs):
  """Parses gin, writes config.gin to config_dir (default model_dir), then returns
  run_fn(model_dir, **kwargs). save_config=False leaves config.gin to run_fn (export writes
  it into the SavedModel folder, which must be empty when the export starts)."""
  def start():
    register_configurables()
    config_io.parse_gin(gin_files, gin_params)
    from rethink_st.training import strategy  # pylint: disable=g-import-not-at-top
    strategy.build_strategy()  # before any op: collectives and TPUs are set up at start-up
    if save_config and (config_dir or model_dir):
      config_io.save_config(config_dir or model_dir)
    return run_fn(model_dir, **kwargs)
  return config_io.call_with_user_errors(start)
