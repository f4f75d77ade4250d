"""run_train and run_evaluate: the functions the training binaries call.

One function drives every stage: the task and the trainer class (supervised, student, joint)
come from gin. Checkpoints every N steps keeping K, automatic resume from `model_dir`,
TensorBoard summaries under model_dir/train and model_dir/eval, a progress line per loop, and
evaluation at an interval and at the end (results in model_dir/eval_metrics.json, 0-1 as the
evaluators return them; the printed `[eval]` line shows AP, AR, mIoU and accuracies x 100).
run_evaluate (bin/evaluate.py) writes its configs and results under model_dir/eval/.
A run with `run_train.seed` is bit-reproducible on the same hardware and software (`seeded`),
also when it is killed and resumed: its input continues where the checkpoint's step says
(`pipeline.Position`; a run without a seed starts its input afresh on resume).
A training run holds model_dir's lock (rethink_st/run_lock.py): a second run on the same
folder stops at once, naming the first; and, holding it, it removes what an interrupted
checkpoint save left (`remove_interrupted_saves`).
"""
import contextlib
import json
import os
import re
import shutil
from typing import Any, Callable, Dict, Optional, Sequence

import gin
import orbit
import tensorflow as tf, tf_keras
from absl import logging
from tensorflow.python.framework import config as tf_config  # pylint: disable=g-direct-tensorflow-import

from rethink_st import checkpoint as checkpoint_lib
from rethink_st import config_io
from rethink_st import run_lock
from rethink_st.data import pipeline
from rethink_st.errors import UserError
from rethink_st.training import optimization
from rethink_st.training import strategy as strategy_lib
from rethink_st.training import trainer as trainer_lib


def _checkpoint_dir(model_dir: str) -> str:
  """The chief writes to model_dir; other workers (which must take part in saving under
  MultiWorkerMirroredStrategy) write to a scratch folder that is removed afterwards."""
  if config_io.is_chief():
    return model_dir
  return os.path.join(model_dir, '.workers', f'worker_{config_io.worker_index()}')


@gin.configurable(denylist=['model_dir'])
def run_train(model_dir: str,
              task=gin.REQUIRED,
              *,
              train_steps: int = gin.REQUIRED,
              global_batch_size: int = gin.REQUIRED,
              trainer_cls: Callable[..., trainer_lib.Trainer] = trainer_lib.Trainer,
              steps_per_loop: int = 50,
              checkpoint_every: int = 500,
              keep_checkpoints: int = 3,
              eval_every: Optional[int] = None,
              eval_batch_size: Optional[int] = None,
              eval_steps: int = -1,
              init_checkpoint: Optional[str] = None,
              init_modules: Sequence[str] = ('backbone',),
              joint=None,
              seed: Optional[int] = None,
              deterministic: bool = True,
              jit_compile: bool = False,
              jit_compile_eval: bool = False) -> Dict[str, float]:
  """Trains `task` to `train_steps` in `model_dir` (resuming if it holds a checkpoint) and
  returns the final evaluation metrics (empty if the task has no eval source).

  init_checkpoint / init_modules: where a fresh run's weights come from (a TF2 checkpoint or
  a folder of them: a teacher, a classification model this project pre-trained, or Model
  Garden's); ignored when model_dir already holds a checkpoint (resume wins).
  joint: a JointClassification (training/joint.py) adds w * a classification loss on the
  shared backbone (the paper's joint training); works with any trainer_cls.
  seed: seeds Python, NumPy and TensorFlow (weights) and the training input: shuffles and
    augmentation are a function of (seed, element index), and a resumed run's input starts
    at the checkpoint's step (`pipeline.Position`), so that it reads what an uninterrupted
    run reads. None: a different run every time, and a resumed run's input starts afresh.
  deterministic: with a seed, also turn on TensorFlow's op determinism for this run, so that
    the same seed on the same hardware and software gives bit-identical losses and weights,
    resumed or not (see `seeded`). False keeps the seed and the input stream but lets ops
    use faster nondeterministic kernels (GPU), so runs may differ in the last bits.
  jit_compile: compile each replica's train step (forward, losses, gradients) with XLA
    (trainer.py); same losses within float tolerance, not bit for bit. With a seed it needs
    deterministic=False (XLA has no deterministic MaxPool gradient).
  jit_compile_eval: compile each replica's eval step (forward and NMS) with XLA; not with
    Model Garden's 'batched' NMS (no XLA kernel for CombinedNonMaxSuppression).
  """
  if not model_dir:
    raise UserError('--model_dir is required')
  if train_steps <= 0:
    raise UserError(f'run_train.train_steps={train_steps} must be positive')
  with _chief_lock(model_dir), seeded(seed, deterministic):
    return _run_train(model_dir, task, train_steps=train_steps,
                      global_batch_size=global_batch_size, trainer_cls=trainer_cls,
                      steps_per_loop=steps_per_loop, checkpoint_every=checkpoint_every,
                      keep_checkpoints=keep_checkpoints, eval_every=eval_every,
                      eval_batch_size=eval_batch_size, eval_steps=eval_steps,
                      init_checkpoint=init_checkpoint, init_modules=init_modules, joint=joint,
                      seed=seed, jit_compile=(jit_compile, jit_compile_eval))


def _chief_lock(model_dir: str):
  """model_dir's writer lock, held by the chief; other workers write to their own scratch
  folders (_checkpoint_dir) and are part of the chief's run."""
  if not config_io.is_chief():
    return contextlib.nullcontext()
  return run_lock.hold(model_dir, f'--model_dir={model_dir}')


# What tf.train.Checkpoint leaves when a save is cut short: the shards it writes to
# <prefix>_temp/ before merging them into <prefix> (TF's functional_saver, local paths).
_INTERRUPTED_SAVE = re.compile(r'ckpt-\d+_temp')


def remove_interrupted_saves(ckpt_dir: str) -> None:
  """Deletes the `ckpt-N_temp` folders of saves that were interrupted (a killed run leaves
  one, as large as a checkpoint, that nothing ever reads or removes). Only safe while holding
  the folder's lock: a live run's save in progress looks the same."""
  for name in sorted(tf.io.gfile.listdir(ckpt_dir)):
    path = os.path.join(ckpt_dir, name.rstrip('/'))
    if not (_INTERRUPTED_SAVE.fullmatch(name.rstrip('/')) and tf.io.gfile.isdir(path)):
      continue
    size = sum(tf.io.gfile.stat(os.path.join(d, f)).length
               for d, _, files in tf.io.gfile.walk(path) for f in files)
    tf.io.gfile.rmtree(path)
    print(f'[train] removed {path}, left by an interrupted checkpoint save '
          f'({size / 2**20:.1f} MB)', flush=True)


@contextlib.contextmanager
def seeded(seed: Optional[int], deterministic: bool = True):
  """Seeds Python, NumPy and TensorFlow with `seed` and, if `deterministic`, turns on
  TensorFlow's op determinism until the block ends (as it was before, afterwards).

  What op determinism does here (tensorflow/python/framework/config.py,
  enable_op_determinism): every tf.data `map`/`interleave`/`batch` keeps its input order
  whatever its `deterministic=` says, a map function with stateful random ops runs serially,
  and ops with a faster nondeterministic kernel use a deterministic one. The rest is fixed
  by the seed: weight initialization, and the training input, which run_train keys by the
  seed (`pipeline.Position`): the augmentation's draws are stateless, keyed per element (so
  its map runs in parallel even under op determinism), the shuffle after `cache` is seeded
  from it; sources shuffle with build_input's `seed` (0 unless bound) and a labeled subset
  is a hash of (source_id, fraction_seed), the same on every run. Evaluation and
  pseudo-labeling draw no random numbers and read in order: they give the same output for
  the same weights.
  """
  if seed is None:
    yield
    return
  tf_keras.utils.set_random_seed(int(seed))
  was_deterministic = tf_config.is_op_determinism_enabled()
  if deterministic:
    tf.config.experimental.enable_op_determinism()
  try:
    yield
  finally:
    if deterministic and not was_deterministic:
      tf_config.disable_op_determinism()


def _run_train(model_dir, task, *, train_steps, global_batch_size, trainer_cls,
               steps_per_loop, checkpoint_every, keep_checkpoints, eval_every,
               eval_batch_size, eval_steps, init_checkpoint, init_modules, joint, seed,
               jit_compile=(False, False)):
  strategy_lib.set_mixed_precision()
  strategy = strategy_lib.build_strategy()
  strategy_lib.check_global_batch_size(global_batch_size, strategy, 'run_train.global_batch_size')
  eval_batch_size = eval_batch_size or global_batch_size
  strategy_lib.check_global_batch_size(eval_batch_size, strategy, 'run_train.eval_batch_size')
  init_path = (checkpoint_lib.resolve(init_checkpoint, 'run_train.init_checkpoint')
               if init_checkpoint else None)
  has_eval = task.eval_source is not None
  ckpt_dir = _checkpoint_dir(model_dir)
  tf.io.gfile.makedirs(ckpt_dir)
  remove_interrupted_saves(ckpt_dir)

  with strategy.scope():
    model = task.build_model()
    optimizer = optimization.build_optimizer(global_batch_size, train_steps)
    trainer = trainer_cls(task=task, model=model, optimizer=optimizer, strategy=strategy,
                          global_batch_size=global_batch_size, joint=joint)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **trainer.checkpoint_items)

  resumed = checkpoint_lib.resume(checkpoint, ckpt_dir, '--model_dir')
  if resumed:
    print(f'[train] resuming from {resumed.checkpoint}', flush=True)
  # Built after the restore: a seeded run's input starts at the restored step.
  position = (None if seed is None
              else pipeline.Position(int(seed), int(optimizer.iterations.numpy())))
  trainer.compile_steps(*jit_compile,
                        bindings=('run_train.jit_compile', 'run_train.jit_compile_eval'))
  with strategy.scope():
    trainer.attach_datasets(train=True, eval_batch_size=eval_batch_size if has_eval else None,
                            position=position)

  def init_fn():
    if init_path:
      checkpoint_lib.restore_modules(model, init_path, tuple(init_modules),
                                     where='run_train.init_checkpoint',
                                     modules_where='run_train.init_modules')

  manager = tf.train.CheckpointManager(
      checkpoint, ckpt_dir, max_to_keep=keep_checkpoints, step_counter=optimizer.iterations,
      checkpoint_interval=checkpoint_every, init_fn=init_fn)
  config_io.save_operative_config(model_dir)
  progress = trainer_lib.ProgressAction(optimizer.iterations, train_steps, global_batch_size,
                                        checkpoint_manager=manager)

  def eval_line(output):   # each evaluation's [eval] line (the chief's)
    if config_io.is_chief():
      print_eval_line(int(optimizer.iterations.numpy()), output)

  with trainer_lib.orbit_messages_to_log():
    controller = orbit.Controller(
        strategy=strategy, trainer=trainer, evaluator=trainer if has_eval else None,
        global_step=optimizer.iterations, steps_per_loop=min(steps_per_loop, train_steps),
        checkpoint_manager=manager, train_actions=[progress], eval_actions=[eval_line],
        summary_dir=os.path.join(model_dir, 'train'),
        eval_summary_dir=os.path.join(model_dir, 'eval'))
    metrics = None
    if has_eval and eval_every:
      # Evaluates every eval_every steps and once at train_steps (None if nothing was left to
      # train: a finished run resumed).
      metrics = controller.train_and_evaluate(train_steps=train_steps, eval_steps=eval_steps,
                                              eval_interval=eval_every)
    else:
      controller.train(train_steps)
    if has_eval and metrics is None:
      metrics = controller.evaluate(steps=eval_steps) or {}
  if has_eval:
    metrics = {k: float(v) for k, v in metrics.items()}
    write_eval_results(model_dir, metrics, trainer.evaluator, int(optimizer.iterations.numpy()))
  if not config_io.is_chief():
    shutil.rmtree(os.path.join(model_dir, '.workers'), ignore_errors=True)
  return metrics or {}


def write_eval_results(model_dir: str, metrics: Dict[str, float], evaluator, step: int,
                       name: str = 'eval_metrics.json') -> None:
  """metrics JSON (and, for detection, the COCO results JSON) in `model_dir`."""
  if not config_io.is_chief():
    return
  tf.io.gfile.makedirs(model_dir)
  with tf.io.gfile.GFile(os.path.join(model_dir, name), 'w') as f:
    json.dump({'step': step, **metrics}, f, indent=1, sort_keys=True)
  if hasattr(evaluator, 'write_results_json'):
    evaluator.write_results_json(os.path.join(model_dir, 'detections_coco.json'))


def print_eval_line(step: int, metrics: Dict[str, Any]) -> None:
  """The `[eval]` line of one evaluation (format_metrics)."""
  print(f'[eval] step {step}{format_metrics({k: float(v) for k, v in metrics.items()})}',
        flush=True)


def is_fraction_metric(name: str) -> bool:
  """A metric our evaluators report in 0-1 and people read x 100: COCO's AP and AR family,
  mIoU, pixel and top-1 accuracy."""
  return bool(re.fullmatch(r'A[PR]\w*|mIoU|\w*accuracy', name))


def x100(value: Optional[float]) -> Optional[float]:
  """A 0-1 metric x 100 (rounded to 6 decimals, so 0.2734 gives 27.34); None stays None."""
  return None if value is None else round(100.0 * float(value), 6)


def format_x100(value: Optional[float]) -> str:
  """A 0-1 metric as people read it: x 100 with 2 decimals; 'n/a' for None and for COCO's
  -1 (no ground truth of that kind, e.g. APl on small images)."""
  if value is None or value < 0:
    return 'n/a'
  return f'{100.0 * value:.2f}'


def format_metrics(metrics: Dict[str, float]) -> str:
  """The `[eval]` line's metrics: 0-1 metrics (is_fraction_metric) x 100, labeled so;
  others as they are; per-class entries ('AP/<class>', 'per_class_IoU/<i>') left out."""
  shown = {k: v for k, v in metrics.items() if '/' not in k}
  scaled = ' '.join(f'{k}={format_x100(v)}' for k, v in shown.items() if is_fraction_metric(k))
  raw = ' '.join(f'{k}={v:.4g}' for k, v in shown.items() if not is_fraction_metric(k))
  return ((f' (x 100): {scaled}' if scaled else ':') + (f' {raw}' if raw else ''))


EVAL_SUBDIR = 'eval'


def eval_dir(model_dir: Optional[str]) -> Optional[str]:
  """Where a run's evaluation goes: its TensorBoard eval summaries (training), and
  bin/evaluate.py's config.gin, operative_config.gin and results, which leave the training
  run's own files in model_dir untouched."""
  return os.path.join(model_dir, EVAL_SUBDIR) if model_dir else None


@gin.configurable(denylist=['model_dir'])
def run_evaluate(model_dir: str, task=gin.REQUIRED, *, checkpoint: Optional[str] = None,
                 eval_batch_size: int = 8, eval_steps: int = -1,
                 results_name: str = 'eval_metrics.json',
                 jit_compile: bool = False) -> Dict[str, float]:
  """Evaluates the latest checkpoint in `model_dir` (or `checkpoint`) on the task's eval
  source. Writes into eval_dir(model_dir) (model_dir/eval; with only `checkpoint`, eval/
  beside it): operative_config.gin, <results_name> and, for detection, detections_coco.json.
  The training run's config.gin, operative_config.gin and eval_metrics.json stay as they were.
  jit_compile: compile each replica's eval step with XLA (trainer.py).
  """
  if checkpoint:
    path = checkpoint_lib.resolve(checkpoint, 'run_evaluate.checkpoint')
  else:
    path = checkpoint_lib.latest_in(model_dir, '--model_dir')
  if task.eval_source is None:
    raise UserError(f'{type(task).__name__}.eval_source is not bound')
  out_dir = eval_dir(model_dir or os.path.dirname(path))
  strategy_lib.set_mixed_precision()
  strategy = strategy_lib.build_strategy()
  strategy_lib.check_global_batch_size(eval_batch_size, strategy, 'run_evaluate.eval_batch_size')
  with strategy.scope():
    model = task.build_model()
    evaluator = trainer_lib.Trainer(task=task, model=model, optimizer=_StepHolder(),
                                    strategy=strategy, global_batch_size=eval_batch_size)
    evaluator.compile_steps(eval=jit_compile, bindings=('', 'run_evaluate.jit_compile'))
    evaluator.attach_datasets(train=False, eval_batch_size=eval_batch_size)
  task.restore(model, path, 'run_evaluate.checkpoint' if checkpoint else '--model_dir')
  config_io.save_operative_config(out_dir)
  step = checkpoint_lib.training_step(path)
  metrics = {k: float(v) for k, v in evaluator.evaluate(tf.constant(eval_steps)).items()}
  write_eval_results(out_dir, metrics, evaluator.evaluator, step, name=results_name)
  if config_io.is_chief():
    print_eval_line(step, metrics)
  print(f'[eval] {path} -> {os.path.join(out_dir, results_name)}', flush=True)
  return metrics


class _StepHolder:
  """Stands in for an optimizer when only evaluating: the trainer reads `.iterations`."""

  def __init__(self):
    self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)
