"""tf.distribute strategy and mixed precision, chosen by gin."""
from typing import Optional

import gin
import tensorflow as tf, tf_keras
from absl import logging
from official.common import distribute_utils

from rethink_st.errors import UserError

_KINDS = ('default', 'one_device', 'mirrored', 'multi_worker_mirrored', 'tpu')
_CACHE = {}


@gin.configurable
def build_strategy(kind: str = 'default',
                   num_gpus: int = 0,
                   tpu_address: Optional[str] = None,
                   all_reduce_alg: Optional[str] = None) -> tf.distribute.Strategy:
  """Returns the strategy named by `kind` (Model Garden's distribute_utils does the work).

  default: tf.distribute's default (one device, no replicas); one_device: the first GPU if
  any, else CPU; mirrored: all local GPUs (or the CPU); multi_worker_mirrored: all workers in
  TF_CONFIG; tpu: the TPU at `tpu_address` ('' or 'local' for a TPU VM).

  MultiWorkerMirrored and TPU strategies must exist before TensorFlow runs any op, so the
  binaries call this right after parsing gin; later calls return the same strategy.
  """
  key = (kind, num_gpus, tpu_address, all_reduce_alg)
  if key in _CACHE:  # a process makes its strategy once (collectives, TPU init)
    return _CACHE[key]
  if kind not in _KINDS:
    raise UserError(f'build_strategy.kind={kind!r} is not one of {", ".join(_KINDS)}')
  if kind == 'tpu' and tpu_address is None:
    raise UserError("build_strategy.kind='tpu' needs build_strategy.tpu_address "
                    "(a TPU name, grpc address, or 'local' on a TPU VM)")
  if kind == 'one_device' and num_gpus == 0:
    num_gpus = min(1, len(tf.config.list_physical_devices('GPU')))
  if kind == 'mirrored' and num_gpus == 0:
    num_gpus = len(tf.config.list_physical_devices('GPU'))
  strategy = distribute_utils.get_distribution_strategy(
      distribution_strategy={'default': 'off'}.get(kind, kind),
      num_gpus=num_gpus, tpu_address=tpu_address, all_reduce_alg=all_reduce_alg)
  logging.info('strategy: %s with %d replica(s)', type(strategy).__name__,
               strategy.num_replicas_in_sync)
  _CACHE[key] = strategy
  return strategy


@gin.configurable
def set_mixed_precision(policy: Optional[str] = None) -> str:
  """Sets tf_keras' global policy: None/'float32', 'mixed_bfloat16' (TPU), 'mixed_float16' (GPU,
  with dynamic loss scaling in the optimizer). Must run before the model is built."""
  policy = policy or 'float32'
  if policy not in ('float32', 'mixed_bfloat16', 'mixed_float16'):
    raise UserError(f"set_mixed_precision.policy={policy!r} is not one of "
                    "'float32', 'mixed_bfloat16', 'mixed_float16'")
  tf_keras.mixed_precision.set_global_policy(policy)
  return policy


def check_global_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy,
                            binding: str) -> int:
  """The per-replica batch size, or a UserError naming `binding` when it does not divide."""
  replicas = strategy.num_replicas_in_sync
  if global_batch_size <= 0 or global_batch_size % replicas:
    raise UserError(f'{binding}={global_batch_size} is not a positive multiple of the '
                    f'{replicas} replicas in sync')
  return global_batch_size // replicas
