"""Where the digit teacher's train step spends its time: TensorFlow's profiler, by op class.

    python benchmarks/step_profile.py               # about 2 minutes on 2 CPU cores
    python benchmarks/step_profile.py --steps=10

The step is speed_levers.py's `base` variant (gin_configs/digits/teacher.gin: forward + loss +
backward + SGD on one real batch of --batch digit scenes, graph mode), the same flags. After
--warmup steps, --steps steps run under `tf.profiler.experimental`; TensorFlow's own
`framework_op_stats` tool turns the trace into self-time per op, summed here by op class
(forward convolutions, the two convolution gradients, batch norm, pooling, the optimizer, idle
threads, the rest). With the FLOPs per op that benchmarks/machine_peak.py counted for the same
model (results/machine_peak.json, `train_flops_by_op`), each class's share of the FLOPs is
set beside its share of the time: a class whose time share is larger than its FLOP share runs
below the step's average FLOP rate. Self time is summed over TensorFlow's threads, so shares
are what compare, not absolute milliseconds. Writes <output_dir>/step_profile.json and .md.
"""
import collections
import glob
import json
import os
import platform
import sys
import tempfile
import time

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order
# pylint: disable=g-import-not-at-top,wrong-import-position
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_plugin

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speed_levers  # noqa: E402  (the step and its flags: --batch, --steps, --warmup, --output_dir)
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = speed_levers.FLAGS
# op type -> class; anything else is 'other'
CLASSES = {
    'Conv2D': 'conv forward', '_FusedConv2D': 'conv forward',
    'DepthwiseConv2dNative': 'conv forward',
    'Conv2DBackpropFilter': 'conv gradient (filter)',
    'Conv2DBackpropInput': 'conv gradient (input)',
    'FusedBatchNormV3': 'batch norm', 'FusedBatchNormGradV3': 'batch norm',
    'MaxPool': 'pooling', 'MaxPoolGrad': 'pooling',
    'ResourceApplyKerasMomentum': 'optimizer', 'ResourceApplyMomentum': 'optimizer',
    'IDLE': 'idle',
}
ORDER = ('conv forward', 'conv gradient (filter)', 'conv gradient (input)', 'batch norm',
         'pooling', 'optimizer', 'other', 'idle')


def op_self_times(xplane_path: str):
  """{op type: self time in microseconds} from the profiler's framework_op_stats table."""
  data, ok = profiler_plugin.xspace_to_tools_data([xplane_path], 'framework_op_stats')
  if not ok:
    raise RuntimeError(f'the profiler could not read {xplane_path}')
  table = json.loads(data)[0]
  col = {c['id']: i for i, c in enumerate(table['cols'])}
  times = collections.Counter()
  for row in table['rows']:
    values = [c['v'] for c in row['c']]
    times[values[col['type']]] += values[col['total_self_time']]
  return times


def by_class(op_values) -> dict:
  out = collections.Counter()
  for op, v in op_values.items():
    out[CLASSES.get(op, 'other')] += v
  return out


def model_flops_by_op(params: int) -> dict:
  """machine_peak.json's train FLOPs by op for this model (same parameter count), else {}."""
  path = os.path.join(speed_levers.REPO, 'benchmarks', 'results', 'machine_peak.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    model = json.load(f).get('model', {})
  return model.get('train_flops_by_op', {}) if model.get('params') == params else {}


def main(argv):
  del argv
  steps, batch_data, _, params = speed_levers.build_variant(
      speed_levers.VARIANTS['base'][1], FLAGS.batch)
  step = steps['graph']
  for _ in range(FLAGS.warmup):
    step(*batch_data).numpy()
  with tempfile.TemporaryDirectory() as logdir:
    start = time.perf_counter()
    tf.profiler.experimental.start(logdir)
    for _ in range(FLAGS.steps):
      loss = step(*batch_data)
    loss.numpy()
    tf.profiler.experimental.stop()
    wall = time.perf_counter() - start
    paths = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)
    if not paths:
      raise RuntimeError(f'the profiler wrote no trace under {logdir}')
    ops = op_self_times(paths[0])
  time_by_class = by_class(ops)
  total_time = sum(time_by_class.values())
  busy = total_time - time_by_class.get('idle', 0.0)
  flops_by_class = by_class(model_flops_by_op(params))
  total_flops = sum(flops_by_class.values())
  rows = []
  for name in ORDER:
    t = time_by_class.get(name, 0.0)
    row = {'class': name, 'self_ms_per_step': round(t / 1e3 / FLAGS.steps, 1),
           'time_share': round(t / total_time, 4),
           'busy_share': round(t / busy, 4) if name != 'idle' else None}
    if total_flops:
      f = flops_by_class.get(name, 0.0)
      row['flop_share'] = round(f / total_flops, 4)
      row['flops_per_busy_time'] = (round(row['flop_share'] / row['busy_share'], 2)
                                    if f and row['busy_share'] else None)
    rows.append(row)
  record = {'batch': FLAGS.batch, 'steps': FLAGS.steps, 'warmup': FLAGS.warmup,
            'wall_seconds': round(wall, 2), 'images_per_sec': round(FLAGS.steps * FLAGS.batch /
                                                                    wall, 1),
            'cpus': os.cpu_count(), 'platform': platform.platform(),
            'flops_from': 'results/machine_peak.json' if total_flops else None,
            'rows': rows,
            'top_ops': [{'op': op, 'self_ms_per_step': round(v / 1e3 / FLAGS.steps, 1)}
                        for op, v in ops.most_common(12)]}
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, 'step_profile.json'), 'w') as f:
    json.dump(record, f, indent=1)
  lines = ['# Where the digit teacher\'s train step spends its time', '',
           f'TensorFlow profiler (`framework_op_stats`), {FLAGS.steps} steps of batch '
           f'{FLAGS.batch} after {FLAGS.warmup} warm-up steps, graph mode, '
           f'{record["images_per_sec"]} img/s while profiled; {record["cpus"]} CPUs. Self '
           'time summed over threads; "busy" leaves out idle threads. FLOP share: '
           + ('train FLOPs by op from `results/machine_peak.json` (same model). '
              '"FLOP / busy share" > 1: the class does more than its share of the FLOPs per '
              'unit of time (a faster FLOP rate than the step\'s average).'
              if total_flops else 'not available (run benchmarks/machine_peak.py first).'),
           'Written by `benchmarks/step_profile.py`.', '',
           '| op class | self ms / step | share of time | share of busy time | share of FLOPs '
           '| FLOP / busy share |',
           '| --- | ---: | ---: | ---: | ---: | ---: |']
  for r in rows:
    busy_share = '' if r['busy_share'] is None else f'{100 * r["busy_share"]:.1f}%'
    flop = f'{100 * r["flop_share"]:.1f}%' if 'flop_share' in r else ''
    ratio = f'{r["flops_per_busy_time"]:.2f}' if r.get('flops_per_busy_time') else ''
    lines.append(f'| {r["class"]} | {r["self_ms_per_step"]:.1f} | '
                 f'{100 * r["time_share"]:.1f}% | {busy_share} | {flop} | {ratio} |')
  with open(os.path.join(FLAGS.output_dir, 'step_profile.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
