"""The machine's limit: peak dense matmul FLOP/s through TensorFlow, and the model's FLOPs per image.

  peak    square matmuls (--sizes) in float32 and bfloat16, each call a chain of --chain
          dependent products x <- x @ w in one tf.function (w scaled by 1/sqrt(n), so values
          stay finite), on the threads TensorFlow uses by default (all cores it sees); a size's
          rate is the best of --repeats calls after a warm-up call, 2 n^3 FLOPs per product.
          Also per CPU-second of the process (the CPU time of that best call), which
          benchmarks/perf_table.py divides img/CPU-s figures by.
  FLOPs   the detection model the gin config builds (DetectionTask.build_model, default
          the digit teacher), counted from the TF graph of one image with the FLOP statistics
          tf.compat.v1.profiler uses (as Model Garden's official.core.train_utils.try_count_flops
          does), over the ops the outputs need: `predict` is model(x, training=False); `train`
          is model(x, training=True), a sum over every output as the loss, and the gradients
          of all trainable variables (the real loss, anchor matching and the SGD update add
          element-wise ops only, not counted). A multiply-add counts 2 FLOPs; ops with no FLOP
          statistic (batch norm, ReLU, resize) count 0.

benchmarks/perf_table.py turns these into MFU rows: img/s x FLOPs/img / float32 peak, for the
train step (benchmarks/results/train_step.json; only when its model has the parameter count
counted here) and for pseudo-labeling (pseudo_label.json, predict FLOPs).
Writes <out_dir>/machine_peak.json and machine_peak.md.

  python benchmarks/machine_peak.py                          # ~1-2 minutes on 2 cores
  python benchmarks/machine_peak.py --sizes=256,512 --repeats=3
  python benchmarks/machine_peak.py \\
    --gin_param='rethink_st.modeling.backbones.build_backbone.depth_multiplier = 1.0'
"""
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, Sequence

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags
import numpy as np

from rethink_st import config_io
from rethink_st.errors import UserError

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_GIN = os.path.join(REPO, 'gin_configs', 'digits', 'teacher.gin')
DTYPES = ('float32', 'bfloat16')

FLAGS = flags.FLAGS


def define_flags():
  """The binary's flags (defined when run as a script only: tests import this module beside
  other benchmarks whose flags share names)."""
  flags.DEFINE_list('sizes', ['512', '1024', '2048'], 'Matmul sizes n (n x n times n x n).')
  flags.DEFINE_list('dtypes', list(DTYPES), 'Matmul dtypes.')
  flags.DEFINE_integer('repeats', 5, 'Timed calls per size and dtype (the best counts).')
  flags.DEFINE_integer('chain', 8, 'Dependent matmuls per call.')
  flags.DEFINE_multi_string('gin_file', [TEACHER_GIN], 'Gin files of the model to count.')
  flags.DEFINE_multi_string('gin_param', [], 'Extra gin bindings of the model.')
  flags.DEFINE_string('out_dir', os.path.join(REPO, 'benchmarks', 'results'),
                      'Where results go.')


# ---- peak ---------------------------------------------------------------------------------
def matmul_rate(size: int, dtype: str, repeats: int, chain: int) -> Dict[str, float]:
  """Best GFLOP/s (wall) over `repeats` calls of `chain` dependent size x size matmuls, and
  GFLOP per CPU-second of that call."""
  a = tf.cast(tf.random.stateless_normal([size, size], seed=[0, 1]), dtype)
  w = tf.cast(tf.random.stateless_normal([size, size], seed=[2, 3]) / np.sqrt(size), dtype)

  @tf.function
  def run(x, w):
    for _ in range(chain):
      x = tf.linalg.matmul(x, w)
    return x[:1, :1]

  run(a, w).numpy()   # trace, warm the thread pools
  flops = 2.0 * size ** 3 * chain
  best = None
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    run(a, w).numpy()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if best is None or wall < best[0]:
      best = (wall, cpu)
  return {'size': size, 'dtype': dtype, 'seconds': best[0],
          'gflops_per_sec': flops / best[0] / 1e9,
          'gflops_per_cpu_sec': flops / max(best[1], 1e-9) / 1e9}


def measure_peak(sizes: Sequence[int], dtypes: Sequence[str], repeats: int,
                 chain: int) -> Dict[str, Any]:
  """Per dtype: every size's rate and the best one (the peak)."""
  out = {}
  for dtype in dtypes:
    runs = []
    for size in sizes:
      r = matmul_rate(size, dtype, repeats, chain)
      print(f'[machine_peak] {dtype} {size}: {r["gflops_per_sec"]:.1f} GFLOP/s, '
            f'{r["gflops_per_cpu_sec"]:.1f} GFLOP/CPU-s', flush=True)
      runs.append(r)
    best = max(runs, key=lambda r: r['gflops_per_sec'])
    out[dtype] = {'gflops_per_sec': best['gflops_per_sec'],
                  'gflops_per_cpu_sec': best['gflops_per_cpu_sec'], 'size': best['size'],
                  'by_size': runs}
  return out


# ---- FLOPs --------------------------------------------------------------------------------
def count_flops(fn: Callable, *specs: tf.TensorSpec) -> Dict[str, Any]:
  """FLOPs of tf.function(fn) on `specs`: {'total': int, 'by_op': {op type: FLOPs}}.

  The ops its outputs depend on, each counted by the FLOP statistics TensorFlow registers
  for tf.compat.v1.profiler (tensorflow/python/profiler/internal/flops_registry.py). Only
  those ops: a function graph also holds ops nothing uses (e.g. the image's gradient that a
  conv's gradient function builds), which the profiler would count; and freezing variables
  to constants, as Model Garden's try_count_flops does, fails on batch norm's updates."""
  from tensorflow.python.framework import ops as tf_ops  # pylint: disable=g-import-not-at-top
  graph = tf.function(fn).get_concrete_function(*specs).graph
  needed, stack = set(), [t.op for t in graph.outputs]
  while stack:
    op = stack.pop()
    if op.name not in needed:
      needed.add(op.name)
      stack.extend(t.op for t in op.inputs)
      stack.extend(op.control_inputs)
  by_op: Dict[str, int] = {}
  for op in graph.get_operations():
    if op.name in needed:
      value = tf_ops.get_stats_for_node_def(graph, op.node_def, 'flops').value
      if value:
        by_op[op.type] = by_op.get(op.type, 0) + int(value)
  return {'total': sum(by_op.values()), 'by_op': by_op}


def model_flops(model, image_size: Sequence[int]) -> Dict[str, Any]:
  """FLOPs per image of the predict step and of the train step (forward + gradients)."""
  spec = tf.TensorSpec([1, int(image_size[0]), int(image_size[1]), 3], tf.float32)

  def predict(images):
    return model(images, training=False)

  def train(images):
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32))
                       for t in tf.nest.flatten(outputs)])
    grads = tape.gradient(loss, model.trainable_variables)
    return [loss] + [g for g in grads if g is not None]

  return {'predict': count_flops(predict, spec), 'train': count_flops(train, spec)}


def gin_model_flops(gin_files: Sequence[str], gin_params: Sequence[str]) -> Dict[str, Any]:
  """Builds the task's model from the gin config and counts its FLOPs and parameters."""
  import gin  # pylint: disable=g-import-not-at-top
  from rethink_st import cli  # pylint: disable=g-import-not-at-top
  from rethink_st.training import tasks  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  cli.register_configurables()
  config_io.parse_gin(list(gin_files), list(gin_params))
  try:
    task = tasks.DetectionTask()
  except TypeError as e:
    raise UserError(f'--gin_file: DetectionTask is not fully bound ({e})') from None
  tf_keras.backend.clear_session()
  model = task.build_model()
  flops = model_flops(model, task.image_size)
  out = {'gin_files': [os.path.relpath(f, REPO) for f in gin_files],
         'gin_params': list(gin_params), 'image_size': [int(x) for x in task.image_size],
         'params': int(sum(np.prod(v.shape) for v in model.trainable_variables)),
         'predict_flops_per_image': flops['predict']['total'],
         'train_flops_per_image': flops['train']['total'],
         'predict_flops_by_op': flops['predict']['by_op'],
         'train_flops_by_op': flops['train']['by_op']}
  gin.clear_config()
  return out


# ---- output -------------------------------------------------------------------------------
def markdown(result: Dict[str, Any]) -> str:
  m, peak = result['model'], result['peak']
  lines = [
      '# The machine\'s limit: peak matmul FLOP/s and the model\'s FLOPs per image', '',
      f"Square matmuls through TensorFlow {result['machine']['tensorflow']}, chains of "
      f"{result['setup']['chain']} dependent products per call, best of "
      f"{result['setup']['repeats']} calls; {result['machine']['cpus']} CPUs, TensorFlow's "
      f"default threads (intra-op {result['machine']['intra_op_threads']}, inter-op "
      f"{result['machine']['inter_op_threads']}; 0 = one per core). Written by "
      '`benchmarks/machine_peak.py`.', '',
      '| dtype | n | GFLOP/s (wall) | GFLOP per CPU-second |', '| --- | ---: | ---: | ---: |']
  for dtype, p in peak.items():
    for r in p['by_size']:
      star = ' (peak)' if r['size'] == p['size'] else ''
      lines.append(f"| {dtype} | {r['size']}{star} | {r['gflops_per_sec']:.1f} | "
                   f"{r['gflops_per_cpu_sec']:.1f} |")
  gf = lambda x: f'{x / 1e9:.3f}'
  lines += ['', f"Model: {', '.join(m['gin_files'])}"
            + (f" with {'; '.join(m['gin_params'])}" if m['gin_params'] else '')
            + f" ({m['params']:,} trainable parameters, {m['image_size'][0]}x"
            f"{m['image_size'][1]} input). GFLOPs per image, from the graph "
            '(tf.compat.v1.profiler\'s FLOP statistics, multiply-add = 2):', '',
            '| step | GFLOP/img | largest op types (GFLOP/img) | img/s at the float32 peak |',
            '| --- | ---: | --- | ---: |']
  fp32 = peak.get('float32', {}).get('gflops_per_sec')
  for step in ('predict', 'train'):
    total, by_op = m[f'{step}_flops_per_image'], m[f'{step}_flops_by_op']
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:4]
    bound = f'{fp32 * 1e9 / total:.1f}' if fp32 and total else '-'
    lines.append(f"| {step} | {gf(total)} | {', '.join(f'{k} {gf(v)}' for k, v in top)} | "
                 f'{bound} |')
  return '\n'.join(lines) + '\n'


def run(sizes, dtypes, repeats, chain, gin_files, gin_params) -> Dict[str, Any]:
  for d in dtypes:
    if d not in DTYPES:
      raise UserError(f'--dtypes: {d!r} is not one of {", ".join(DTYPES)}')
  if not sizes or min(sizes) < 1 or repeats < 1 or chain < 1:
    raise UserError('--sizes, --repeats and --chain must be positive')
  model = gin_model_flops(gin_files, gin_params)   # first: a config error stops before timing
  peak = measure_peak(sizes, dtypes, repeats, chain)
  return {
      'benchmark': 'machine_peak',
      'setup': {'sizes': list(sizes), 'dtypes': list(dtypes), 'repeats': repeats,
                'chain': chain},
      'machine': {'cpus': os.cpu_count(), 'tensorflow': tf.__version__,
                  'python': platform.python_version(), 'platform': platform.platform(),
                  'intra_op_threads': tf.config.threading.get_intra_op_parallelism_threads(),
                  'inter_op_threads': tf.config.threading.get_inter_op_parallelism_threads(),
                  'load_average': list(os.getloadavg()),
                  'time': time.strftime('%Y-%m-%dT%H:%M:%S')},
      'peak': peak,
      'model': model,
  }


def write_results(result: Dict[str, Any], out_dir: str) -> str:
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, 'machine_peak')
  with open(stem + '.json', 'w') as f:
    json.dump(result, f, indent=1)
  with open(stem + '.md', 'w') as f:
    f.write(markdown(result))
  return stem


def main(argv):
  del argv

  def go():
    try:
      sizes = [int(s) for s in FLAGS.sizes]
    except ValueError:
      raise UserError(f'--sizes={",".join(FLAGS.sizes)}: not integers') from None
    result = run(sizes, FLAGS.dtypes, FLAGS.repeats, FLAGS.chain, FLAGS.gin_file,
                 FLAGS.gin_param)
    stem = write_results(result, FLAGS.out_dir)
    print(markdown(result), flush=True)
    print(f'wrote {stem}.json, {stem}.md', flush=True)
  config_io.call_with_user_errors(go)


if __name__ == '__main__':
  define_flags()
  sys.exit(app.run(main))
