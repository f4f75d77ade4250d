"""The Orbit trainer/evaluator every stage uses (teacher, pre-training, student, joint).

`Trainer` is an `orbit.StandardTrainer` + `orbit.StandardEvaluator`. A train step runs the
task's forward pass and loss on each replica (`compute_losses`, which the student and joint
trainers override), adds weight decay, divides by the replicas (global-batch semantics),
applies loss scaling under float16, and updates one running mean per reported loss.

What a training run prints: one `[train]` line per loop (ProgressAction: step, every loss,
learning rate, img/s, ETA) and one `[eval]` line per evaluation; each value once.
TensorBoard gets every value (Orbit's summaries). Orbit's controller both logs and prints its
own messages, the loop's outputs among them (`orbit_messages_to_log` sends them to the absl
log only).

Compiled steps (`compile_steps(train=..., eval=...)`, from the gin settings
`run_train.jit_compile`, `run_train.jit_compile_eval` and `run_evaluate.jit_compile`): each
replica's forward pass, losses and gradients (train), or its forward pass with
post-processing (eval), run as one XLA-compiled function; the gradient
all-reduce, the optimizer update, the loss averages and Orbit's loop stay in the graph around
it, where every strategy supports them. A step XLA cannot compile stops at its first call
with one error line naming the op(s) and the binding. Known on CPU (TF 2.20): a seeded run
with op determinism cannot compile the train step (no deterministic XLA MaxPool gradient:
set run_train.deterministic = False); the eval step cannot compile with Model Garden's
'batched' NMS (CombinedNonMaxSuppression, the digit model's), so eval has its own setting.
"""
import contextlib
import math
import re
import time
from typing import Any, Dict, Optional, Sequence
from unittest import mock

import numpy as np
import orbit
import tensorflow as tf, tf_keras
from absl import logging

from rethink_st.errors import TrainingDiverged, UserError
from rethink_st.modeling import classification
from rethink_st.training import optimization
from rethink_st.training import tasks as tasks_lib


def _local_numpy(strategy, tree):
  """Per-replica values -> numpy, replicas concatenated along the batch."""
  def to_np(x):
    parts = strategy.experimental_local_results(x)
    parts = [np.asarray(p) for p in parts]
    return parts[0] if parts[0].ndim == 0 else np.concatenate(parts, axis=0)
  return tf.nest.map_structure(to_np, tree)


def _flatten_metrics(metrics: Dict[str, Any]) -> Dict[str, float]:
  """Scalars as they are; sequences (per-class IoU) as name/i, for TensorBoard and JSON."""
  flat = {}
  for k, v in metrics.items():
    arr = np.asarray(v)
    if arr.ndim == 0:
      flat[k] = float(arr)
    else:
      for i, x in enumerate(arr.reshape(-1)):
        flat[f'{k}/{i}'] = float(x)
  return flat


class Trainer(orbit.StandardTrainer, orbit.StandardEvaluator):
  """Supervised training of one task; subclasses change `compute_losses` and `loss_names`."""

  def __init__(self, *, task: tasks_lib.Task, model: tf_keras.Model, optimizer,
               strategy: tf.distribute.Strategy, global_batch_size: int, joint=None):
    """Build under `strategy.scope()`, then call `attach_datasets`.

    joint: a `joint.JointClassification` to add a classification loss on a shared backbone.
    """
    self.task, self.model, self.optimizer, self.strategy = task, model, optimizer, strategy
    self.global_batch_size = global_batch_size
    self.global_step = optimizer.iterations
    self.joint = joint
    if joint is not None:
      joint.build(model, task.image_size, global_batch_size, strategy.num_replicas_in_sync)
    self.train_metrics = {n: tf_keras.metrics.Mean(n, dtype=tf.float32)
                          for n in self.metric_names}
    self.evaluator = None
    self.input_position = None
    self._loop_start = None
    self.jit_compile = {'train': False, 'eval': False}
    self.jit_binding = {'train': 'jit_compile', 'eval': 'jit_compile_eval'}
    self._compiled = {}

  @property
  def checkpoint_items(self) -> Dict[str, Any]:
    """Extra trackables to checkpoint beside model and optimizer (e.g. loss averages, the
    state of a classifier's dropout masks: classification.dropout_mask_state)."""
    items = {'classification_head': self.joint.head} if self.joint is not None else {}
    masks = classification.dropout_mask_state(self.model, *items.values())
    return {**items, 'dropout_masks': masks} if masks is not None else items

  def main_dataset_fn(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    return self.task.build_dataset('train', self.global_batch_size, input_context,
                                   position=self.input_position)

  def train_dataset_fn(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    main = self.main_dataset_fn(input_context)
    if self.joint is None:
      return main
    position = self.input_position and self.input_position.of('classification')
    return tf.data.Dataset.zip((main, self.joint.dataset_fn(input_context, position)))

  def compile_steps(self, train: bool = False, eval: bool = False,  # pylint: disable=redefined-builtin
                    bindings: Sequence[str] = ('jit_compile', 'jit_compile_eval')) -> None:
    """Compile each replica's train / eval step with XLA (module docstring); `bindings`: the
    gin bindings that asked for it, named by the error line. Call before the first step."""
    self.jit_compile = {'train': bool(train), 'eval': bool(eval)}
    self.jit_binding = dict(zip(('train', 'eval'), bindings))

  def attach_datasets(self, train: bool = True, eval_batch_size: Optional[int] = None,
                      position=None) -> None:
    """Distributed train/eval datasets; eval only when eval_batch_size is given.

    position: a `pipeline.Position` for a seeded run (its seed and the step it resumes at):
    the training streams start there (build_input); None: they start afresh.
    """
    self.input_position = position
    if train:
      dataset = self.strategy.distribute_datasets_from_function(self.train_dataset_fn)
      orbit.StandardTrainer.__init__(self, dataset, options=orbit.StandardTrainerOptions())
    if eval_batch_size:
      dataset = self.strategy.distribute_datasets_from_function(
          lambda ctx: self.task.build_dataset('eval', eval_batch_size, ctx))
      self.evaluator = self.task.new_evaluator()
      orbit.StandardEvaluator.__init__(self, dataset, options=orbit.StandardEvaluatorOptions())

  @property
  def loss_names(self) -> Sequence[str]:
    return self.task.loss_names

  @property
  def metric_names(self) -> Sequence[str]:
    extra = ('classification_loss',) if self.joint is not None else ()
    return tuple(self.loss_names) + extra + ('weight_decay',)

  # ---- training ---------------------------------------------------------------------------
  def compute_losses(self, inputs) -> Dict[str, tf.Tensor]:
    """This replica's losses for one batch; must contain 'total_loss' and `loss_names`."""
    images, labels = inputs
    outputs = self.task.forward(self.model, images, labels, training=True)
    return self.task.losses(outputs, labels)

  def trainable_variables_for_step(self):
    tvars = list(self.model.trainable_variables)
    if self.joint is not None:  # the head's own layers; the backbone is already in tvars
      seen = {id(v) for v in tvars}
      tvars += [v for v in self.joint.head.trainable_variables if id(v) not in seen]
    return tvars

  def train_loop_begin(self):
    for m in self.train_metrics.values():
      m.reset_state()
    self._loop_start = (time.time(), int(self.global_step.numpy()))

  def _step_function(self, name: str, fn):
    """fn itself, or (jit_compile) fn as one XLA-compiled tf.function, made once."""
    if not self.jit_compile[name]:
      return fn
    if name not in self._compiled:
      self._compiled[name] = tf.function(fn, jit_compile=True)
    return self._compiled[name]

  def train_step(self, iterator):
    num_replicas = self.strategy.num_replicas_in_sync
    optimizer = self.optimizer
    scaled_optimizer = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

    def losses_and_gradients(inputs):
      with tf.GradientTape() as tape:
        if self.joint is None:
          losses = self.compute_losses(inputs)
        else:
          main_inputs, cls_inputs = inputs
          losses = self.joint.combine(self.compute_losses(main_inputs), cls_inputs)
        decay = optimization.weight_decay_loss(self.model)
        loss = (losses['total_loss'] + decay) / num_replicas
        if scaled_optimizer:
          loss = optimizer.get_scaled_loss(loss)
      tvars = self.trainable_variables_for_step()
      grads = tape.gradient(loss, tvars)
      if scaled_optimizer:
        grads = optimizer.get_unscaled_gradients(grads)
      losses = {name: losses[name] for name in self.train_metrics if name != 'weight_decay'}
      return dict(losses, weight_decay=decay), grads

    compute = self._step_function('train', losses_and_gradients)

    def step_fn(inputs):
      losses, grads = compute(inputs)
      tvars = self.trainable_variables_for_step()
      # Weights outside the loss (e.g. EfficientNet's final 1x1 conv, which the decoders do
      # not read) have no gradient.
      optimizer.apply_gradients([(g, v) for g, v in zip(grads, tvars) if g is not None])
      for name, metric in self.train_metrics.items():
        metric.update_state(losses[name])

    self.strategy.run(step_fn, args=(next(iterator),))

  def train(self, num_steps):
    with self._xla_errors('train'):
      return super().train(num_steps)

  def evaluate(self, num_steps):
    with self._xla_errors('eval'):
      return super().evaluate(num_steps)

  @contextlib.contextmanager
  def _xla_errors(self, step: str):
    """An XLA compilation failure as one UserError line: the op(s) and the binding."""
    try:
      yield
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
      if not self.jit_compile[step] or not _is_xla_failure(str(e)):
        raise
      binding = self.jit_binding[step]
      raise UserError(f'{binding}=True: XLA cannot compile the {step} step: '
                      f'{_xla_failure_summary(str(e), binding)}') from None

  def train_loop_end(self) -> Dict[str, Any]:
    logs = {name: m.result() for name, m in self.train_metrics.items()}
    logs['learning_rate'] = optimization.current_learning_rate(self.optimizer)
    if self._loop_start is not None:
      start_time, start_step = self._loop_start
      steps = int(self.global_step.numpy()) - start_step
      elapsed = max(time.time() - start_time, 1e-9)
      logs['images_per_sec'] = steps * self.global_batch_size / elapsed
    return logs

  # ---- evaluation -------------------------------------------------------------------------
  def eval_begin(self):
    self.evaluator.reset()
    return {'batches': 0}

  def eval_step(self, iterator):
    def outputs_fn(inputs):
      images, labels = inputs
      return self.task.eval_outputs(self.model, images, labels)
    return self.strategy.run(self._step_function('eval', outputs_fn), args=(next(iterator),))

  def eval_reduce(self, state, step_outputs):
    tasks_lib.update_evaluator(self.task, self.evaluator,
                               _local_numpy(self.strategy, step_outputs))
    state['batches'] += 1
    return state

  def eval_end(self, state=None):
    return _flatten_metrics(self.evaluator.result())


def _is_xla_failure(message: str) -> bool:
  return bool(re.search(r'XLA|jit|Detected unsupported operations', message))


def _xla_failure_summary(message: str, binding: str) -> str:
  """What XLA refused, in one line, and the binding that avoids it.

  Two refusals are known on CPU: an op with no XLA kernel ('Detected unsupported operations
  when trying to compile graph ... on XLA_CPU_JIT: PyFunc (No registered ...)'), and op
  determinism (a seeded run_train with deterministic=True): XLA has no deterministic
  MaxPool gradient ('MaxPool gradient ops do not yet have a deterministic XLA
  implementation'), so seeded compiled runs need deterministic=False.
  """
  if 'deterministic XLA implementation' in message:
    node = re.search(r'\{\{node [^}]*?(\w+Grad\w*)\}\}', message)
    op = node.group(1) if node else 'a gradient op'
    deterministic = binding.rsplit('.', 1)[0] + '.deterministic'
    return (f'XLA has no deterministic kernel for {op} and op determinism is on (a seed); '
            f'set {deterministic} = False or {binding} = False')
  if 'CombinedNonMaxSuppression' in message:
    return (f"no XLA kernel for CombinedNonMaxSuppression (Model Garden's 'batched' NMS); "
            f'set {binding} = False')
  for line in message.splitlines():
    if 'unsupported operations' in line:
      ops = re.findall(r"No registered '(\w+)'", line) or re.findall(r'(\w+) \(No', line)
      device = re.search(r'on (XLA_\w+)', line)
      where = f' on {device.group(1)}' if device else ''
      if ops:
        return f'no XLA kernel{where} for {", ".join(sorted(set(ops)))}; set {binding} = False'
  lines = [l.strip() for l in message.splitlines()
           if l.strip() and not l.startswith(('Graph execution error', 'Detected at node'))]
  return f'{(lines or ["unknown error"])[0][:200]}; set {binding} = False'


class ProgressAction:
  """An Orbit train action: prints step, loss, img/s and ETA after every loop, and stops
  training on a NaN/inf loss before the controller saves a checkpoint."""

  def __init__(self, global_step: tf.Variable, total_steps: int, global_batch_size: int,
               loss_key: str = 'total_loss', prefix: str = 'train',
               checkpoint_manager: Optional[tf.train.CheckpointManager] = None):
    self.global_step, self.total_steps = global_step, total_steps
    self.global_batch_size = global_batch_size
    self.loss_key, self.prefix = loss_key, prefix
    self.checkpoint_manager = checkpoint_manager

  def __call__(self, output: Dict[str, Any]) -> None:
    step = int(self.global_step.numpy())
    loss = float(np.asarray(output.get(self.loss_key, np.nan)))
    if not math.isfinite(loss):
      last = self.checkpoint_manager and self.checkpoint_manager.latest_checkpoint
      where = (f'the last good checkpoint {last} is untouched' if last
               else 'no checkpoint was written')
      raise TrainingDiverged(f'{self.prefix}: {self.loss_key} became {loss} at step {step}; '
                             f'stopped, {where}')
    ips = float(np.asarray(output.get('images_per_sec', 0.0)))
    # ETA from this loop's own rate (the first loop's includes tracing, so it errs long).
    steps_per_sec = ips / self.global_batch_size if self.global_batch_size else 0.0
    eta = (self.total_steps - step) / steps_per_sec if steps_per_sec > 0 else float('inf')
    extra = ' '.join(f'{k}={float(np.asarray(v)):.4g}' for k, v in sorted(output.items())
                     if k not in (self.loss_key, 'images_per_sec', 'learning_rate')
                     and np.asarray(v).ndim == 0)
    line = (f'[{self.prefix}] step {step}/{self.total_steps} {self.loss_key}={loss:.4f} '
            f'lr={float(np.asarray(output.get("learning_rate", 0.0))):.4g} '
            f'img/s={ips:.1f} eta={_fmt_seconds(eta)} {extra}')
    print(line, flush=True)


# Orbit's controller message that carries a loop's outputs (all losses, all eval metrics).
_ORBIT_OUTPUT = '| output:'


def _orbit_message(message: str) -> None:
  if _ORBIT_OUTPUT in message:
    logging.debug(message)   # repeats the [train] / [eval] line: seen with --v=1
  else:
    logging.info(message)    # restoring, training until step N, checkpoint saved


@contextlib.contextmanager
def orbit_messages_to_log():
  """While the block runs, orbit.Controller's messages go to the absl log only: Orbit 1.x
  (orbit/controller.py `_log`) logs each one at INFO and prints it to stdout too, so that
  every loss and every eval metric would be shown three times (our line, Orbit's INFO line,
  Orbit's print). Its messages with a loop's outputs go to DEBUG (they repeat the [train] and
  [eval] lines), the others (restoring, training until, checkpoint saved) stay at INFO."""
  with mock.patch.object(orbit.controller, '_log', _orbit_message):
    yield


def _fmt_seconds(s: float) -> str:
  if not math.isfinite(s):
    return '?'
  s = int(s)
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'
