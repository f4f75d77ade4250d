"""The paper's optimizer: SGD momentum 0.9, cosine decay with linear warmup, weight decay.

Built with Model Garden's OptimizerFactory from gin-bound numbers. Learning rates are given
for `reference_batch_size` (the paper: 0.32 at batch 256, warmup from 0.0032 over 1,000 steps)
and scale linearly with the global batch size, so a config means the same on 8 or 512 chips.
"""
from typing import Optional

import gin
from absl import logging
import tensorflow as tf, tf_keras
from official.modeling import optimization
from official.modeling import performance

from rethink_st.errors import UserError


@gin.configurable
def build_optimizer(global_batch_size: int,
                    total_steps: int,
                    learning_rate: float = 0.32,
                    reference_batch_size: int = 256,
                    warmup_steps: int = 1000,
                    warmup_learning_rate: float = 0.0032,
                    schedule: str = 'cosine',
                    momentum: float = 0.9,
                    global_clipnorm: Optional[float] = None,
                    loss_scale_for_float16: bool = True) -> tf_keras.optimizers.Optimizer:
  """SGD with momentum and a warmup + cosine (or constant) schedule over `total_steps`."""
  if total_steps <= 0:
    raise UserError(f'build_optimizer.total_steps={total_steps} must be positive')
  if schedule not in ('cosine', 'constant'):
    raise UserError(f"build_optimizer.schedule={schedule!r} is not 'cosine' or 'constant'")
  scale = global_batch_size / reference_batch_size
  lr = learning_rate * scale
  if warmup_steps > total_steps // 2:
    logging.warning('build_optimizer: warmup_steps=%d is more than half of total_steps=%d; '
                    'using %d', warmup_steps, total_steps, total_steps // 2)
    warmup_steps = total_steps // 2
  if schedule == 'cosine':
    lr_config = {'type': 'cosine',
                 'cosine': {'initial_learning_rate': lr, 'decay_steps': total_steps}}
  else:
    lr_config = {'type': 'constant', 'constant': {'learning_rate': lr}}
  params = {
      'optimizer': {'type': 'sgd', 'sgd': {'momentum': momentum,
                                           'global_clipnorm': global_clipnorm}},
      'learning_rate': lr_config,
  }
  if warmup_steps > 0:
    params['warmup'] = {'type': 'linear',
                        'linear': {'warmup_steps': warmup_steps,
                                   'warmup_learning_rate': warmup_learning_rate * scale}}
  factory = optimization.OptimizerFactory(optimization.OptimizationConfig(params))
  optimizer = factory.build_optimizer(factory.build_learning_rate())
  use_float16 = tf_keras.mixed_precision.global_policy().compute_dtype == 'float16'
  return performance.configure_optimizer(
      optimizer, use_float16=use_float16 and loss_scale_for_float16)


def current_learning_rate(optimizer) -> tf.Tensor:
  inner = getattr(optimizer, 'inner_optimizer', optimizer)
  lr = inner.learning_rate
  if isinstance(lr, tf_keras.optimizers.schedules.LearningRateSchedule):
    return lr(inner.iterations)
  return tf.convert_to_tensor(lr)


@gin.configurable
def weight_decay_loss(model: tf_keras.Model, weight_decay: float = 1e-4) -> tf.Tensor:
  """L2 weight decay on conv/dense kernels: weight_decay / 2 * sum(w^2), as Model Garden's
  kernel_regularizer=l2(weight_decay / 2) does; batch-norm scales and biases are not decayed."""
  if not weight_decay:
    return tf.constant(0.0)
  kernels = [v for v in model.trainable_variables if 'kernel' in v.name]
  return 0.5 * weight_decay * tf.add_n(
      [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in kernels])
