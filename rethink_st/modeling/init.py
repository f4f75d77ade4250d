"""initialize_model: the gin-configurable entry point for restoring a model's backbone /
decoder / head / everything from a TF2 checkpoint.

    report = initialize_model(detector, '/runs/pretrain/ckpt-5000', modules=('backbone',))
    report.restored      # names of the detector's variables that got checkpoint values
    report.unrestored    # names of the requested modules' variables that did not

The work is rethink_st/checkpoint.py's (`restore_modules`: which checkpoints it reads and how
it finds a module in them); this module keeps the configurable's gin name and the names that
tests and gin files use.
"""
from typing import Optional, Sequence

import gin

from rethink_st import checkpoint as checkpoint_lib
from rethink_st.checkpoint import (  # noqa: F401  (the names this module has always had)
    MODULES, CheckpointMismatchError, CheckpointNotFoundError, RestoreReport)

InitReport = RestoreReport


def resolve_checkpoint(checkpoint: Optional[str]) -> str:
  """A checkpoint prefix, or a directory -> its latest checkpoint; else a one-line error."""
  return checkpoint_lib.resolve(checkpoint, 'initialize_model.checkpoint')


@gin.configurable
def initialize_model(model,
                     checkpoint: Optional[str] = None,
                     modules: Sequence[str] = ('backbone',)) -> Optional[RestoreReport]:
  """Restores the requested parts of a built `model` from a TF2 checkpoint.

  Args:
    model: a built model with `backbone` (and `decoder`, `head` for those modules), e.g.
      from build_retinanet / build_segmentation_model / build_classifier / JointModel.
    checkpoint: a checkpoint prefix ('.../ckpt-1000') or a directory (its latest
      checkpoint). None: do nothing and return None (random initialization).
    modules: any of 'backbone', 'decoder', 'head', 'all' ('all': the whole model, e.g. a
      student from its teacher).

  Returns:
    RestoreReport with the restored and unrestored variable names of the requested modules.

  Raises:
    UserError (CheckpointNotFoundError / CheckpointMismatchError) in one line, naming
    initialize_model.checkpoint or initialize_model.modules (checkpoint.restore_modules).
  """
  if checkpoint is None:
    return None
  return checkpoint_lib.restore_modules(model, checkpoint, modules,
                                        where='initialize_model.checkpoint',
                                        modules_where='initialize_model.modules')
