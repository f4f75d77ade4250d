"""Training throughput: this project's teacher training vs Model Garden's own RetinaNetTask.

Same model, batch, data, augmentation and optimizer, trained side by side in one process:

  ours  rethink_st.training.run.run_train (Orbit Controller + rethink_st Trainer, DetectionTask,
        rethink_st.data.pipeline.build_input) configured by gin_configs/digits/teacher.gin
        with the digit scenes' full train split, no evaluation.
  MG    official.core.train_lib.run_experiment(mode='train') on an ExperimentConfig of
        official.vision.configs.retinanet (RetinaNetTask) reading the same TFRecords
        ({data_dir}/train.tfrecord-*) with Model Garden's decoder and retinanet_input.Parser.

Model Garden's config is made from the values gin bound for ours (backbone, FPN filters, head
convs/filters, norm, anchors, image size, classes, flip + scale jitter, learning rate, warmup,
momentum, weight decay), so a --gin_param changes both sides alike; the parameter counts of
the two models are compared before timing.

Timing: both loops are Orbit Controllers writing a summary after every loop of
--steps_per_loop steps; a run's rate is images between the summaries at step
--warmup_steps and at step --steps divided by the wall time between them (tracing, the first
checkpoint and tf.data start-up fall in the warm-up). "CPU" rates divide by the process's
CPU seconds over the same window instead (robust to other users of a shared machine). The
sides alternate (ours first, then MG first, ...) for --repeats rounds; the medians count.
Writes <output_dir>/train_step.json and train_step.md.

  python benchmarks/train_step.py                       # ~5 minutes on 2 CPU cores
  python benchmarks/train_step.py --steps=200 --repeats=3
"""
import inspect
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags
import gin
import numpy as np

from rethink_st import cli
from rethink_st import config_io
from rethink_st.data import digit_scenes
from rethink_st.errors import UserError

import tensorflow as tf, tf_keras  # pylint: disable=g-import-not-at-top,wrong-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_GIN = os.path.join(REPO, 'gin_configs', 'digits', 'teacher.gin')
RESULTS_DIR = os.path.join(REPO, 'benchmarks', 'results')
TAG = 'steps_per_second'   # written by orbit.Controller after every train loop

flags.DEFINE_integer('steps', 60, 'Training steps per run (each side, each repeat).')
flags.DEFINE_integer('batch_size', 16, 'Global batch size (images per step), both sides.')
flags.DEFINE_integer('repeats', 2, 'Rounds; each round runs both sides, order alternating.')
flags.DEFINE_integer('steps_per_loop', 10, 'Steps per Orbit loop (one summary each).')
flags.DEFINE_integer('warmup_steps', 20, 'Steps not timed at the start of each run '
                     '(a multiple of --steps_per_loop).')
flags.DEFINE_string('data_dir', None, 'Digit-scenes directory (default: made/found by '
                    'rethink_st.data.digit_scenes.ensure_digit_scenes()).')
flags.DEFINE_string('output_dir', RESULTS_DIR, 'Where train_step.json/.md go.')
flags.DEFINE_multi_string('gin_file', [TEACHER_GIN], 'Gin files of our side.')
flags.DEFINE_multi_string('gin_param', [], 'Extra gin bindings of our side (Model Garden '
                          'follows the model/optimizer/augmentation values).')
FLAGS = flags.FLAGS


# ---- configuration ------------------------------------------------------------------------
def check_schedule(steps: int, warmup_steps: int, steps_per_loop: int, repeats: int,
                   batch_size: int) -> None:
  """One UserError line for flag values that cannot give a timed window."""
  for name, value in (('--steps', steps), ('--steps_per_loop', steps_per_loop),
                      ('--repeats', repeats), ('--batch_size', batch_size)):
    if value < 1:
      raise UserError(f'{name}={value} must be positive')
  if warmup_steps < 1 or warmup_steps % steps_per_loop:
    raise UserError(f'--warmup_steps={warmup_steps} must be a positive multiple of '
                    f'--steps_per_loop={steps_per_loop}')
  if steps <= warmup_steps or steps % steps_per_loop:
    raise UserError(f'--steps={steps} must be a multiple of --steps_per_loop={steps_per_loop} '
                    f'larger than --warmup_steps={warmup_steps}')


def our_bindings(data_dir: str, steps: int, batch_size: int, steps_per_loop: int) -> List[str]:
  """The teacher config on the full train split, no evaluation, a checkpoint only after the
  first loop and at the end (as Model Garden's side does with checkpoint_interval=steps)."""
  return [
      f"train/rethink_st.data.sources.digit_scenes_source.data_dir = '{data_dir}'",
      'train/rethink_st.data.sources.digit_scenes_source.fraction = 1.0',
      'rethink_st.training.tasks.DetectionTask.eval_source = None',
      f'rethink_st.training.run.run_train.train_steps = {steps}',
      f'rethink_st.training.run.run_train.global_batch_size = {batch_size}',
      f'rethink_st.training.run.run_train.steps_per_loop = {steps_per_loop}',
      f'rethink_st.training.run.run_train.checkpoint_every = {steps}',
      'rethink_st.training.run.run_train.keep_checkpoints = 1',
      'rethink_st.training.run.run_train.eval_every = None',
  ]


def parse_our_config(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin(list(gin_files), list(bindings))


def _gin_value(fn, param: str):
  """The value gin binds to fn's `param` (macros resolved), else the signature default."""
  name = f'{fn.__module__}.{fn.__name__}'
  try:
    value = gin.query_parameter(f'{name}.{param}')
  except ValueError:
    target = getattr(fn, '__wrapped__', fn)
    if inspect.isclass(target):
      target = target.__init__
    default = inspect.signature(target).parameters[param].default
    if default is inspect.Parameter.empty or default is gin.REQUIRED:
      raise UserError(f'{name}.{param} is not bound in the gin config') from None
    return default
  for _ in range(10):   # a macro comes back as a reference named '%NAME'
    if isinstance(value, gin.config.ConfigurableReference) and repr(value).startswith('%'):
      value = gin.query_parameter(repr(value))
    else:
      break
  return value


def shared_settings() -> Dict[str, Any]:
  """What the parsed gin config trains with: the numbers Model Garden's side copies."""
  from rethink_st import augment  # pylint: disable=g-import-not-at-top
  from rethink_st.modeling import anchors, detection  # pylint: disable=g-import-not-at-top
  from rethink_st.training import optimization, tasks  # pylint: disable=g-import-not-at-top
  s = {
      'image_size': [int(x) for x in _gin_value(tasks.DetectionTask, 'image_size')],
      'num_classes': int(_gin_value(tasks.DetectionTask, 'num_classes')),
      'anchor_size': float(_gin_value(anchors.anchor_config, 'anchor_size')),
      'min_level': int(_gin_value(anchors.anchor_config, 'min_level')),
      'max_level': int(_gin_value(anchors.anchor_config, 'max_level')),
      'num_scales': int(_gin_value(anchors.anchor_config, 'num_scales')),
      'aspect_ratios': [float(x) for x in _gin_value(anchors.anchor_config, 'aspect_ratios')],
      'policy': str(_gin_value(augment.Augment, 'policy')),
      'flip': bool(_gin_value(augment.Augment, 'flip')),
      'scale_min': float(_gin_value(augment.Augment, 'scale_min')),
      'scale_max': float(_gin_value(augment.Augment, 'scale_max')),
      'learning_rate': float(_gin_value(optimization.build_optimizer, 'learning_rate')),
      'reference_batch_size': int(_gin_value(optimization.build_optimizer,
                                             'reference_batch_size')),
      'warmup_steps': int(_gin_value(optimization.build_optimizer, 'warmup_steps')),
      'warmup_learning_rate': float(_gin_value(optimization.build_optimizer,
                                               'warmup_learning_rate')),
      'momentum': float(_gin_value(optimization.build_optimizer, 'momentum')),
      'schedule': str(_gin_value(optimization.build_optimizer, 'schedule')),
      'weight_decay': float(_gin_value(optimization.weight_decay_loss, 'weight_decay')),
  }
  for param in ('backbone', 'decoder', 'decoder_num_filters', 'head_num_convs',
                'head_num_filters', 'activation', 'use_sync_bn', 'norm_momentum',
                'norm_epsilon'):
    s[param] = _gin_value(detection.build_retinanet, param)
  if s['policy'] != 's1':
    raise UserError(f"Augment.policy={s['policy']!r}: this benchmark compares flip + scale "
                    "jitter (S1) only")
  if not str(s['backbone']).startswith('resnet-') or s['decoder'] != 'fpn':
    raise UserError(f"build_retinanet.backbone={s['backbone']!r}, decoder={s['decoder']!r}: "
                    "this benchmark builds Model Garden's side for ResNet + FPN only")
  return s


def model_garden_config(s: Dict[str, Any], data_dir: str, steps: int, batch_size: int,
                        steps_per_loop: int):
  """Model Garden's ExperimentConfig (RetinaNetTask) matching `shared_settings()`."""
  # pylint: disable=g-import-not-at-top
  from official.core import config_definitions as cfg
  from official.modeling import optimization as mg_opt
  from official.vision.configs import backbones as bb_cfg
  from official.vision.configs import common as common_cfg
  from official.vision.configs import decoders as dec_cfg
  from official.vision.configs import retinanet as rn_cfg
  # pylint: enable=g-import-not-at-top
  scale = batch_size / s['reference_batch_size']
  warmup = min(s['warmup_steps'], steps // 2)   # as build_optimizer caps it
  lr = ({'type': 'cosine', 'cosine': {'initial_learning_rate': s['learning_rate'] * scale,
                                      'decay_steps': steps}}
        if s['schedule'] == 'cosine' else
        {'type': 'constant', 'constant': {'learning_rate': s['learning_rate'] * scale}})
  optimizer = {'optimizer': {'type': 'sgd', 'sgd': {'momentum': s['momentum']}},
               'learning_rate': lr}
  if warmup > 0:
    optimizer['warmup'] = {'type': 'linear', 'linear': {
        'warmup_steps': warmup, 'warmup_learning_rate': s['warmup_learning_rate'] * scale}}
  model = rn_cfg.RetinaNet(
      num_classes=s['num_classes'],
      input_size=s['image_size'] + [3],
      min_level=s['min_level'], max_level=s['max_level'],
      anchor=rn_cfg.Anchor(num_scales=s['num_scales'], aspect_ratios=s['aspect_ratios'],
                           anchor_size=s['anchor_size']),
      backbone=bb_cfg.Backbone(type='resnet', resnet=bb_cfg.ResNet(
          model_id=int(str(s['backbone']).split('-')[1]))),
      decoder=dec_cfg.Decoder(type='fpn', fpn=dec_cfg.FPN(
          num_filters=s['decoder_num_filters'])),
      head=rn_cfg.RetinaNetHead(num_convs=s['head_num_convs'],
                                num_filters=s['head_num_filters']),
      norm_activation=common_cfg.NormActivation(
          activation=s['activation'], use_sync_bn=bool(s['use_sync_bn']),
          norm_momentum=s['norm_momentum'], norm_epsilon=s['norm_epsilon']))
  task = rn_cfg.RetinaNetTask(
      model=model,
      losses=rn_cfg.Losses(l2_weight_decay=s['weight_decay']),
      train_data=rn_cfg.DataConfig(
          input_path=os.path.join(data_dir, 'train.tfrecord-*'),
          is_training=True, global_batch_size=batch_size, dtype='float32',
          parser=rn_cfg.Parser(aug_rand_hflip=s['flip'], aug_scale_min=s['scale_min'],
                               aug_scale_max=s['scale_max'])),
      validation_data=rn_cfg.DataConfig(
          input_path=os.path.join(data_dir, 'val.tfrecord-*'), is_training=False,
          global_batch_size=batch_size, dtype='float32'))
  return cfg.ExperimentConfig(
      runtime=cfg.RuntimeConfig(mixed_precision_dtype='float32'),
      task=task,
      trainer=cfg.TrainerConfig(
          train_steps=steps, steps_per_loop=steps_per_loop, summary_interval=steps_per_loop,
          checkpoint_interval=steps, max_to_keep=1, validation_interval=steps,
          optimizer_config=mg_opt.OptimizationConfig(optimizer)))


# ---- timing -------------------------------------------------------------------------------
class CpuClock:
  """Samples (wall time, process CPU time) in a thread, to read CPU seconds between two
  wall-clock instants (the summaries' timestamps)."""

  def __init__(self, interval: float = 0.1):
    self.interval = interval
    self.samples = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _sample(self):
    self.samples.append((time.time(), time.process_time()))

  def _run(self):
    while not self._stop.wait(self.interval):
      self._sample()

  def __enter__(self):
    self._sample()
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self._sample()

  def cpu_at(self, wall: float) -> float:
    walls, cpus = zip(*self.samples)
    return float(np.interp(wall, walls, cpus))


def read_loop_summaries(summary_dir: str) -> Dict[int, Dict[str, float]]:
  """{global step: {'wall_time', 'steps_per_second'}} from Orbit's per-loop train summaries."""
  out = {}
  for name in sorted(tf.io.gfile.listdir(summary_dir)):
    if 'tfevents' not in name:
      continue
    for event in tf.compat.v1.train.summary_iterator(os.path.join(summary_dir, name)):
      for value in event.summary.value:
        if value.tag == TAG:
          number = (float(tf.make_ndarray(value.tensor)) if value.HasField('tensor')
                    else float(value.simple_value))
          out[int(event.step)] = {'wall_time': float(event.wall_time),
                                  'steps_per_second': number}
  return out


def steady_rate(loops: Dict[int, Dict[str, float]], clock: Optional[CpuClock], start: int,
                end: int, batch_size: int, where: str) -> Dict[str, Any]:
  """Images/s (wall and CPU) between the loop summaries at steps `start` and `end`."""
  for step in (start, end):
    if step not in loops:
      raise RuntimeError(f'{where}: no {TAG!r} summary at step {step} '
                         f'(have steps {sorted(loops)})')
  t0, t1 = loops[start]['wall_time'], loops[end]['wall_time']
  images = (end - start) * batch_size
  result = {'timed_steps': end - start, 'wall_seconds': t1 - t0,
            'img_per_sec': images / max(t1 - t0, 1e-9),
            'loop_steps_per_second': [loops[k]['steps_per_second'] for k in sorted(loops)]}
  if clock is not None:
    cpu = clock.cpu_at(t1) - clock.cpu_at(t0)
    result['cpu_seconds'] = cpu
    result['img_per_cpu_sec'] = images / max(cpu, 1e-9)
  return result


# ---- the two sides ------------------------------------------------------------------------
def run_ours(model_dir: str, gin_files: Sequence[str], bindings: Sequence[str]) -> float:
  """run_train under the given gin config; returns wall seconds of the whole call."""
  from rethink_st.training import run  # pylint: disable=g-import-not-at-top
  parse_our_config(gin_files, bindings)
  config_io.save_config(model_dir)
  t0 = time.time()
  run.run_train(model_dir)
  return time.time() - t0


def run_model_garden(model_dir: str, params) -> float:
  """train_lib.run_experiment(mode='train'); returns wall seconds of the whole call."""
  # pylint: disable=g-import-not-at-top
  from official.core import task_factory
  from official.core import train_lib
  import official.vision.tasks.retinanet  # noqa: F401  (registers RetinaNetTask)
  # pylint: enable=g-import-not-at-top
  tf_keras.mixed_precision.set_global_policy('float32')
  strategy = tf.distribute.get_strategy()
  t0 = time.time()
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
  train_lib.run_experiment(distribution_strategy=strategy, task=task, mode='train',
                           params=params, model_dir=model_dir)
  return time.time() - t0


def count_params(gin_files, bindings, mg_params) -> Dict[str, int]:
  """Trainable parameters of both models, built once, to check they are the same network."""
  # pylint: disable=g-import-not-at-top
  from official.vision.tasks import retinanet as mg_retinanet
  from rethink_st.training import tasks
  # pylint: enable=g-import-not-at-top
  parse_our_config(gin_files, bindings)
  tf_keras.backend.clear_session()
  ours = tasks.DetectionTask().build_model()
  mg = mg_retinanet.RetinaNetTask(mg_params.task).build_model()
  counts = {'ours': int(sum(np.prod(v.shape) for v in ours.trainable_variables)),
            'model_garden': int(sum(np.prod(v.shape) for v in mg.trainable_variables))}
  del ours, mg
  tf_keras.backend.clear_session()
  return counts


def benchmark(data_dir: str, *, steps: int, batch_size: int, repeats: int,
              steps_per_loop: int, warmup_steps: int, gin_files: Sequence[str] = (TEACHER_GIN,),
              gin_params: Sequence[str] = (), work_dir: Optional[str] = None
             ) -> Dict[str, Any]:
  """Runs both sides `repeats` times (alternating order) and returns the result record."""
  check_schedule(steps, warmup_steps, steps_per_loop, repeats, batch_size)
  bindings = our_bindings(data_dir, steps, batch_size, steps_per_loop) + list(gin_params)
  parse_our_config(gin_files, bindings)
  settings = shared_settings()
  mg_params = model_garden_config(settings, data_dir, steps, batch_size, steps_per_loop)
  params = count_params(gin_files, bindings, mg_params)
  if params['ours'] != params['model_garden']:
    raise RuntimeError(f'the two models differ: {params}')

  runs = []
  own_tmp = work_dir is None
  work_dir = work_dir or tempfile.mkdtemp(prefix='train_step_bench_')
  try:
    for r in range(repeats):
      order = ('ours', 'model_garden') if r % 2 == 0 else ('model_garden', 'ours')
      for side in order:
        model_dir = os.path.join(work_dir, f'{side}_{r}')
        tf_keras.backend.clear_session()
        print(f'[train_step] repeat {r + 1}/{repeats}: {side}', flush=True)
        with CpuClock() as clock:
          if side == 'ours':
            total = run_ours(model_dir, gin_files, bindings)
          else:
            total = run_model_garden(model_dir, mg_params)
        loops = read_loop_summaries(os.path.join(model_dir, 'train'))
        rate = steady_rate(loops, clock, warmup_steps, steps, batch_size,
                           f'{side} repeat {r}')
        rate.update(side=side, repeat=r, total_seconds=total)
        print(f'[train_step] {side}: {rate["img_per_sec"]:.2f} img/s '
              f'({rate["img_per_cpu_sec"]:.2f} img/CPU-s), run {total:.0f} s', flush=True)
        runs.append(rate)
        shutil.rmtree(model_dir, ignore_errors=True)
  finally:
    gin.clear_config()
    if own_tmp:
      shutil.rmtree(work_dir, ignore_errors=True)
  return summarize(runs, settings=settings, params=params, data_dir=data_dir, steps=steps,
                   batch_size=batch_size, repeats=repeats, steps_per_loop=steps_per_loop,
                   warmup_steps=warmup_steps, gin_files=list(gin_files),
                   gin_params=list(gin_params))


def summarize(runs: List[Dict[str, Any]], **setup) -> Dict[str, Any]:
  """Medians per side and the ratio ours / Model Garden (of medians and of paired runs)."""
  def side(name, key):
    return [r[key] for r in runs if r['side'] == name and key in r]
  medians = {}
  for key in ('img_per_sec', 'img_per_cpu_sec'):
    ours, mg = side('ours', key), side('model_garden', key)
    if ours and mg:
      medians[key] = {'ours': statistics.median(ours), 'model_garden': statistics.median(mg),
                      'ratio': statistics.median(ours) / statistics.median(mg),
                      'paired_ratios': [o / m for o, m in zip(ours, mg)]}
  return {
      'benchmark': 'train_step',
      'setup': setup,
      'machine': {'python': sys.version.split()[0], 'tensorflow': tf.__version__,
                  'platform': platform.platform(), 'cpus': os.cpu_count(),
                  'load_average': list(os.getloadavg())},
      'runs': runs,
      'median': medians,
  }


# ---- output -------------------------------------------------------------------------------
def markdown(result: Dict[str, Any]) -> str:
  st, s = result['setup'], result['setup']['settings']
  med = result['median']
  lines = [
      '# Training throughput: rethink-st vs Model Garden',
      '',
      f"RetinaNet {s['backbone']} + FPN {s['decoder_num_filters']} + head "
      f"{s['head_num_convs']}x{s['head_num_filters']} ({result['setup']['params']['ours']:,} "
      f"trainable parameters on both sides), {s['image_size'][0]}x{s['image_size'][1]} input, "
      f"{s['num_classes']} classes, anchor size {s['anchor_size']}, batch {st['batch_size']}, "
      f"flip + scale jitter {s['scale_min']}-{s['scale_max']}, SGD momentum {s['momentum']} "
      f"{s['schedule']} + linear warmup, weight decay {s['weight_decay']}; digit-scenes train "
      f"TFRecords. Ours: `rethink_st.training.run.run_train` (gin: "
      f"{', '.join(os.path.relpath(f, REPO) for f in st['gin_files'])}). Model Garden: "
      "`official.core.train_lib.run_experiment(mode='train')` with `RetinaNetTask`. "
      f"Each run trains {st['steps']} steps in loops of {st['steps_per_loop']}; timed from step "
      f"{st['warmup_steps']} to {st['steps']} (tracing, first checkpoint and input start-up "
      f"excluded); {st['repeats']} rounds, sides alternating; medians. \"CPU\" is images per "
      "CPU-second of the process (robust to other users of the shared machine). "
      f"Machine: {result['machine']['cpus']} CPUs, load average at the end "
      f"{result['machine']['load_average'][0]:.1f}. Written by `benchmarks/train_step.py`.",
      '',
      '| measure | ours (img/s) | Model Garden (img/s) | ours / MG | per-round ratios |',
      '| --- | ---: | ---: | ---: | --- |',
  ]
  names = {'img_per_sec': 'wall clock', 'img_per_cpu_sec': 'per CPU-second'}
  for key, label in names.items():
    if key in med:
      m = med[key]
      lines.append(f"| {label} | {m['ours']:.2f} | {m['model_garden']:.2f} | "
                   f"{m['ratio']:.3f} | {', '.join(f'{x:.3f}' for x in m['paired_ratios'])} |")
  lines += ['', '| round | side | img/s | img/CPU-s | timed s | whole run s |',
            '| ---: | --- | ---: | ---: | ---: | ---: |']
  for r in result['runs']:
    lines.append(f"| {r['repeat'] + 1} | {r['side']} | {r['img_per_sec']:.2f} | "
                 f"{r.get('img_per_cpu_sec', float('nan')):.2f} | {r['wall_seconds']:.1f} | "
                 f"{r['total_seconds']:.1f} |")
  return '\n'.join(lines) + '\n'


def write_results(result: Dict[str, Any], output_dir: str, name: str = 'train_step') -> None:
  tf.io.gfile.makedirs(output_dir)
  with open(os.path.join(output_dir, f'{name}.json'), 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)
  with open(os.path.join(output_dir, f'{name}.md'), 'w') as f:
    f.write(markdown(result))


def main(argv):
  del argv
  def run():
    data_dir = FLAGS.data_dir or digit_scenes.ensure_digit_scenes()
    if not tf.io.gfile.glob(os.path.join(data_dir, 'train.tfrecord-*')):
      raise UserError(f'--data_dir={data_dir}: no train.tfrecord-* files')
    result = benchmark(data_dir, steps=FLAGS.steps, batch_size=FLAGS.batch_size,
                       repeats=FLAGS.repeats, steps_per_loop=FLAGS.steps_per_loop,
                       warmup_steps=FLAGS.warmup_steps, gin_files=FLAGS.gin_file,
                       gin_params=FLAGS.gin_param)
    write_results(result, FLAGS.output_dir)
    print(markdown(result), flush=True)
  config_io.call_with_user_errors(run)


if __name__ == '__main__':
  app.run(main)
