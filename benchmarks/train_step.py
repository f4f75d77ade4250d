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

Timing: both sides run in one process, in two threads that take turns one Orbit loop
(--steps_per_loop steps) at a time, so both see the same load of a shared machine; each side
records the wall and process-CPU seconds of the windows it holds (the waiting side's tf.data
may refill its few prefetched batches meanwhile: well under 1% of a loop's work). A round's rate per side is
the images of its loops after --warmup_steps (tracing, the first checkpoint and tf.data
start-up fall in the warm-up) over their wall seconds; "CPU" rates divide by CPU seconds
instead. --repeats rounds, the side that starts alternating; the medians count. Before
training, the two input pipelines are also timed alone (--input_batches), to tell input cost
from step cost.
Writes <output_dir>/train_step.json and train_step.md. What both sides train:
benchmarks/train_step_config.py; the turn taking: benchmarks/turn_taking.py.

  python benchmarks/train_step.py                       # 5-8 minutes on 2 busy CPU cores
  python benchmarks/train_step.py --steps=200 --repeats=3
"""
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

from rethink_st import config_io
from rethink_st.data import digit_scenes
from rethink_st.errors import UserError  # noqa: F401  (callers and tests catch it from here)

import tensorflow as tf, tf_keras  # pylint: disable=g-import-not-at-top,wrong-import-order

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
from train_step_config import (check_schedule, count_params, model_garden_config,  # noqa: E402
                               our_bindings, parse_our_config, shared_settings)
from repo_paths import shown  # noqa: E402
from turn_taking import TurnTaking, window_rate  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_GIN = os.path.join(REPO, 'gin_configs', 'digits', 'teacher.gin')
RESULTS_DIR = os.path.join(REPO, 'benchmarks', 'results')

flags.DEFINE_integer('steps', 60, 'Training steps per run (each side, each repeat).')
flags.DEFINE_integer('batch_size', 16, 'Global batch size (images per step), both sides.')
flags.DEFINE_integer('repeats', 2, 'Rounds; each runs both sides, taking turns.')
flags.DEFINE_integer('steps_per_loop', 10, 'Steps per Orbit loop (one turn each).')
flags.DEFINE_integer('warmup_steps', 20, 'Steps not timed at the start of each run '
                     '(a multiple of --steps_per_loop).')
flags.DEFINE_string('data_dir', None, 'Digit-scenes directory (default: made/found by '
                    'rethink_st.data.digit_scenes.ensure_digit_scenes()).')
flags.DEFINE_integer('input_batches', 60, 'Batches per round when timing the two input '
                     'pipelines alone (no model) before training; 0 skips it.')
flags.DEFINE_string('output_dir', RESULTS_DIR, 'Where train_step.json/.md go.')
flags.DEFINE_multi_string('gin_file', [TEACHER_GIN], 'Gin files of our side.')
flags.DEFINE_multi_string('gin_param', [], 'Extra gin bindings of our side (Model Garden '
                          'follows the model/optimizer/augmentation values).')
FLAGS = flags.FLAGS


# ---- the two sides ------------------------------------------------------------------------
def run_ours(model_dir: str, gin_files: Sequence[str], bindings: Sequence[str],
             turns: TurnTaking) -> None:
  """run_train under the given gin config; the trainer hands the turn over after each loop."""
  # pylint: disable=g-import-not-at-top
  from rethink_st.training import run
  from rethink_st.training import trainer as trainer_lib
  # pylint: enable=g-import-not-at-top

  class TurnTakingTrainer(trainer_lib.Trainer):

    def train_loop_end(self):
      logs = super().train_loop_end()
      turns.handover('ours')
      return logs

  parse_our_config(gin_files, bindings)
  config_io.save_config(model_dir)
  run.run_train(model_dir, trainer_cls=TurnTakingTrainer)


def run_model_garden(model_dir: str, params, turns: TurnTaking) -> None:
  """train_lib.run_experiment(mode='train'); a train action hands the turn over."""
  # pylint: disable=g-import-not-at-top
  from official.core import task_factory
  from official.core import train_lib
  import official.vision.tasks.retinanet  # noqa: F401  (registers RetinaNetTask)
  # pylint: enable=g-import-not-at-top
  tf_keras.mixed_precision.set_global_policy('float32')
  strategy = tf.distribute.get_strategy()
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
  train_lib.run_experiment(distribution_strategy=strategy, task=task, mode='train',
                           params=params, model_dir=model_dir,
                           train_actions=[lambda output: turns.handover('model_garden')])



def input_rates(gin_files, bindings, mg_params, batch_size: int, batches: int,
                rounds: int) -> Dict[str, Any]:
  """The two training input pipelines alone (no model): images/s and images per CPU-second
  over `batches` batches after 5 warm-up batches, `rounds` times interleaved; medians."""
  # pylint: disable=g-import-not-at-top
  from official.vision.tasks import retinanet as mg_retinanet
  from rethink_st.training import tasks
  # pylint: enable=g-import-not-at-top
  parse_our_config(gin_files, bindings)
  builders = {
      'ours': lambda: tasks.DetectionTask().build_dataset('train', batch_size),
      'model_garden': lambda: mg_retinanet.RetinaNetTask(mg_params.task).build_inputs(
          mg_params.task.train_data),
  }
  rates = {side: [] for side in builders}
  for _ in range(rounds):
    for side, build in builders.items():
      iterator = iter(build())
      for _ in range(5):
        next(iterator)
      wall0, cpu0 = time.time(), time.process_time()
      for _ in range(batches):
        next(iterator)
      wall, cpu = time.time() - wall0, time.process_time() - cpu0
      rates[side].append((batches * batch_size / wall, batches * batch_size / cpu))
      del iterator
  out = {}
  for side, values in rates.items():
    out[side] = {'img_per_sec': statistics.median(v[0] for v in values),
                 'img_per_cpu_sec': statistics.median(v[1] for v in values)}
  for key in ('img_per_sec', 'img_per_cpu_sec'):
    out.setdefault('ratio', {})[key] = out['ours'][key] / out['model_garden'][key]
  out['batches'] = batches
  out['rounds'] = rounds
  return out


def run_round(first: str, work_dir: str, gin_files, bindings, mg_params) -> TurnTaking:
  """Both sides in two threads taking turns loop by loop, `first` starting."""
  turns = TurnTaking(first, 'model_garden' if first == 'ours' else 'ours')
  errors = {}

  def target(side):
    try:
      turns.acquire(side)
      model_dir = os.path.join(work_dir, side)
      if side == 'ours':
        run_ours(model_dir, gin_files, bindings, turns)
      else:
        run_model_garden(model_dir, mg_params, turns)
    except BaseException as e:  # pylint: disable=broad-except
      errors[side] = e
    finally:
      turns.finish(side)

  threads = [threading.Thread(target=target, args=(side,), name=f'train_step_{side}')
             for side in turns.sides]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  for side, e in errors.items():
    raise RuntimeError(f'{side} side failed: {type(e).__name__}: {e}') from e
  return turns


def benchmark(data_dir: str, *, steps: int, batch_size: int, repeats: int,
              steps_per_loop: int, warmup_steps: int, gin_files: Sequence[str] = (TEACHER_GIN,),
              gin_params: Sequence[str] = (), work_dir: Optional[str] = None,
              input_batches: int = 60) -> Dict[str, Any]:
  """Runs `repeats` rounds (the side that starts alternates) and returns the result record;
  with input_batches > 0 also times the two input pipelines alone first."""
  check_schedule(steps, warmup_steps, steps_per_loop, repeats, batch_size)
  bindings = our_bindings(data_dir, steps, batch_size, steps_per_loop) + list(gin_params)
  parse_our_config(gin_files, bindings)
  settings = shared_settings()
  mg_params = model_garden_config(settings, data_dir, steps, batch_size, steps_per_loop)
  params = count_params(gin_files, bindings, mg_params)
  if params['ours'] != params['model_garden']:
    raise RuntimeError(f'the two models differ: {params}')

  inputs = None
  if input_batches > 0:
    print('[train_step] input pipelines alone', flush=True)
    inputs = input_rates(gin_files, bindings, mg_params, batch_size, input_batches, repeats)

  runs = []
  own_tmp = work_dir is None
  work_dir = work_dir or tempfile.mkdtemp(prefix='train_step_bench_')
  try:
    for r in range(repeats):
      first = 'ours' if r % 2 == 0 else 'model_garden'
      print(f'[train_step] round {r + 1}/{repeats} ({first} starts)', flush=True)
      tf_keras.backend.clear_session()
      round_dir = os.path.join(work_dir, f'round_{r}')
      turns = run_round(first, round_dir, gin_files, bindings, mg_params)
      for side in ('ours', 'model_garden'):
        loops = len(turns.windows[side])
        if loops != steps // steps_per_loop:
          raise RuntimeError(f'{side}: {loops} loops recorded, expected '
                             f'{steps // steps_per_loop}')
        rate = window_rate(turns.windows[side], warmup_steps // steps_per_loop, batch_size,
                           steps_per_loop, side)
        rate.update(side=side, repeat=r, first=first)
        print(f'[train_step] {side}: {rate["img_per_sec"]:.2f} img/s, '
              f'{rate["img_per_cpu_sec"]:.2f} img/CPU-s', flush=True)
        runs.append(rate)
      shutil.rmtree(round_dir, ignore_errors=True)
  finally:
    gin.clear_config()
    if own_tmp:
      shutil.rmtree(work_dir, ignore_errors=True)
  return summarize(runs, settings=settings, params=params, data_dir=shown(data_dir),
                   steps=steps, batch_size=batch_size, repeats=repeats,
                   steps_per_loop=steps_per_loop, warmup_steps=warmup_steps,
                   gin_files=[shown(f) for f in gin_files],
                   gin_params=list(gin_params), input_only=inputs)


def summarize(runs: List[Dict[str, Any]], input_only=None, **setup) -> Dict[str, Any]:
  """Medians per side and the ratio ours / Model Garden (of medians and per round)."""
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
      'input_only': input_only,
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
      f"{', '.join(st['gin_files'])}). Model Garden: "
      "`official.core.train_lib.run_experiment(mode='train')` with `RetinaNetTask`. "
      f"Both sides train {st['steps']} steps in one process, taking turns every "
      f"{st['steps_per_loop']}-step loop (same machine load for both); timed from step "
      f"{st['warmup_steps']} to {st['steps']} (tracing, first checkpoint and input start-up "
      f"excluded); {st['repeats']} rounds, the side that starts alternating; medians. "
      "\"CPU\" is images per CPU-second of the process while the side holds its turn. "
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
  inp = result.get('input_only')
  if inp:
    for key, label in names.items():
      lines.append(f"| input pipeline alone, {label} | {inp['ours'][key]:.0f} | "
                   f"{inp['model_garden'][key]:.0f} | {inp['ratio'][key]:.3f} | |")
  lines += ['', '| round | side | img/s | img/CPU-s | timed s | warm-up s (build, trace) |',
            '| ---: | --- | ---: | ---: | ---: | ---: |']
  for r in result['runs']:
    lines.append(f"| {r['repeat'] + 1} | {r['side']} | {r['img_per_sec']:.2f} | "
                 f"{r['img_per_cpu_sec']:.2f} | {r['wall_seconds']:.1f} | "
                 f"{r['warmup_seconds']:.1f} |")
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
                       gin_params=FLAGS.gin_param, input_batches=FLAGS.input_batches)
    write_results(result, FLAGS.output_dir)
    print(markdown(result), flush=True)
  config_io.call_with_user_errors(run)


if __name__ == '__main__':
  app.run(main)