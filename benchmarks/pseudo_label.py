"""Pseudo-labeling throughput against bare model inference, and peak memory at 1k and 10k images.

Same teacher, same images, same batch (from the gin config, e.g. the demo's 32):

  bare model      the labeler's own predict function (`run.make_predict_fn`: the model, NMS
                  or multi-scale masks, results fetched to numpy) over preprocessed batches
                  held in memory; nothing else
  bare + input    the same, fed by the same input pipeline (`run.inference_dataset`:
                  read, decode, preprocess), no writing
  pseudo-label    `run_pseudo_label` end to end: input pipeline, predict, tf.Examples, chunk
                  files, COCO JSON, counters

Rates are taken over the steady loop (after the first batch, which traces the function);
the pseudo-label run's set-up (model build, restore, trace) and finishing (merging stats and
COCO JSON) are reported separately. Rounds are interleaved and the median counts: the
machine is shared. Both wall-clock images/s and images per CPU-second of the process (the
work done, robust to other users' load) are reported.

Memory: `run_pseudo_label` over 1,000 and 10,000 images (copies of the unlabeled scenes with
new source ids), each in a fresh subprocess; resident memory is sampled every 0.2 s.

  python benchmarks/pseudo_label.py                 # the demo's teacher, runs/demo/teacher
  python benchmarks/pseudo_label.py --teacher_checkpoint=runs/teacher

A trained teacher is needed: an untrained one detects almost nothing, which makes NMS and
the COCO JSON unrealistically cheap. `bash scripts/demo.sh` leaves one in runs/demo/teacher;
or python bin/train_teacher.py --gin_file=gin_configs/digits/teacher.gin --model_dir=runs/teacher

Writes benchmarks/results/pseudo_label.json and pseudo_label.md.
"""
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags
import gin
import numpy as np
import psutil

from rethink_st import cli
from rethink_st import config_io
from rethink_st.data import digit_scenes
from rethink_st.data import sources
from rethink_st.errors import UserError
from rethink_st.pseudo_label import run as pl_run
from rethink_st.training import strategy as strategy_lib

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from repo_paths import shown  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUN = 'rethink_st.pseudo_label.run.run_pseudo_label'

flags.DEFINE_string('teacher_checkpoint', os.path.join(REPO, 'runs', 'demo', 'teacher'),
                    'Trained teacher checkpoint (or its folder); default: the demo\'s '
                    '(bash scripts/demo.sh).')
flags.DEFINE_multi_string('gin_file', [os.path.join(REPO, 'gin_configs', 'digits', 'demo.gin')],
                          'Gin config(s) binding run_pseudo_label.task and batch_size.')
flags.DEFINE_multi_string('gin_param', [], 'Extra gin bindings.')
flags.DEFINE_string('data_dir', None, 'Digit scenes folder (default: the default one).')
flags.DEFINE_integer('timing_images', 640, 'Images per timed run.')
flags.DEFINE_integer('rounds', 3, 'Interleaved timing rounds (the median counts).')
flags.DEFINE_list('memory_images', ['1000', '10000'], 'Image counts of the memory runs.')
flags.DEFINE_bool('timing', True, 'Run the timing part.')
flags.DEFINE_string('out_dir', os.path.join(REPO, 'benchmarks', 'results'), 'Where results go.')
flags.DEFINE_string('tag', '', 'Suffix of the result files (pseudo_label_<tag>.json).')
# Internal: one memory run in a subprocess.
flags.DEFINE_integer('memory_child', 0, 'Internal: run one memory measurement over N images.')
flags.DEFINE_string('work_dir', None, 'Internal: scratch folder of the memory child.')
FLAGS = flags.FLAGS


# --- data: N distinct images from copies of the unlabeled scenes -----------------------------

def write_images(data_dir: str, num: int, out_dir: str, files: int = 4) -> str:
  """`num` unlabeled scenes (cycling over the split, each copy with a new numeric source_id)
  as TFRecords in out_dir; returns their glob."""
  records = [tf.train.Example.FromString(r.numpy()) for r in
             tf.data.TFRecordDataset(digit_scenes.tfrecord_files(data_dir, 'unlabeled'))]
  os.makedirs(out_dir, exist_ok=True)
  writers = [tf.io.TFRecordWriter(os.path.join(out_dir, f'images-{k:05d}-of-{files:05d}'))
             for k in range(files)]
  for i in range(num):
    example = tf.train.Example()
    example.CopyFrom(records[i % len(records)])
    sid = example.features.feature['image/source_id'].bytes_list
    sid.value[0] = str(int(sid.value[0]) + 1_000_000 * (i // len(records))).encode()
    writers[i % files].write(example.SerializeToString())
  for w in writers:
    w.close()
  return os.path.join(out_dir, 'images-*')


# --- configuration ---------------------------------------------------------------------------

def parse_config():
  cli.register_configurables()
  params = list(FLAGS.gin_param)
  if FLAGS.data_dir:
    params.append(f"rethink_st.data.sources.digit_scenes_source.data_dir = '{FLAGS.data_dir}'")
  config_io.parse_gin(FLAGS.gin_file, params)


def bound(name):
  """run_pseudo_label's argument `name` as gin binds it (references called), else its
  default (None when it has none)."""
  try:
    value = gin.query_parameter(f'{_RUN}.{name}')
  except ValueError:
    default = inspect.signature(pl_run.run_pseudo_label).parameters[name].default
    return None if default in (inspect.Parameter.empty, gin.REQUIRED) else default
  return value.scoped_configurable_fn() if hasattr(value, 'scoped_configurable_fn') else value


class _Timeline(pl_run._Progress):  # pylint: disable=protected-access
  """run_pseudo_label's progress, recording (time, CPU time, images done) per batch."""
  records = []

  def __init__(self, total, already):
    super().__init__(total, already)
    _Timeline.records = [(time.time(), time.process_time(), already)]

  def update(self, n):
    super().update(n)
    _Timeline.records.append((time.time(), time.process_time(), self.done))


def _rates(records):
  """(wall img/s, img per CPU-second) between the first and the last batch."""
  (t0, c0, n0), (t1, c1, n1) = records[1], records[-1]
  return (n1 - n0) / max(t1 - t0, 1e-9), (n1 - n0) / max(c1 - c0, 1e-9)


# --- timing ----------------------------------------------------------------------------------

def time_bare(task, source, batch_size, teacher):
  """Bare inference: (model-only wall, CPU rates, with-input wall, CPU rates)."""
  strategy = strategy_lib.build_strategy()
  with strategy.scope():
    model = task.build_model()
  pl_run._restore_teacher(model, teacher)  # pylint: disable=protected-access
  labeler = pl_run.build_labeler(task, model, score_threshold=bound('score_threshold'),
                                 class_agnostic_nms_iou=bound('class_agnostic_nms_iou'),
                                 scales=bound('scales'), flip=bound('flip'),
                                 mask_threshold=bound('mask_threshold'))
  predict = pl_run.make_predict_fn(strategy, labeler)
  ds = pl_run.inference_dataset(source, task.image_size, batch_size)
  batches = list(strategy.experimental_distribute_dataset(ds))
  valid = [int(pl_run.host_values(strategy, b)[pl_run.VALID].sum()) for b in batches]
  predict(batches[0])  # trace
  t, c = time.time(), time.process_time()
  for b in batches:
    predict(b)
  model_rates = (sum(valid) / (time.time() - t), sum(valid) / (time.process_time() - c))
  records = []
  for b in strategy.experimental_distribute_dataset(ds):
    predict(b)
    n = int(pl_run.host_values(strategy, b)[pl_run.VALID].sum())
    records.append((time.time(), time.process_time(), (records[-1][2] if records else 0) + n))
  return model_rates, _rates([None] + records)


def time_pseudo_label(source, teacher, work_dir):
  """run_pseudo_label end to end: steady rates and the wall-clock parts."""
  out = tempfile.mkdtemp(dir=work_dir)
  start = time.time()
  stats = pl_run.run_pseudo_label(out, unlabeled_source=source, teacher_checkpoint=teacher,
                                  expected_images=FLAGS.timing_images)
  end = time.time()
  rec = _Timeline.records
  shutil.rmtree(out)
  return {'rates': _rates(rec), 'wall_s': end - start, 'setup_s': rec[1][0] - start,
          'loop_s': rec[-1][0] - rec[1][0], 'finish_s': end - rec[-1][0],
          'images': stats['images'], 'boxes_per_image': stats.get('boxes_per_image')}


def run_timing(teacher, work_dir):
  task, batch_size = bound('task'), bound('batch_size')
  if task is None:
    raise UserError(f'--gin_file: {_RUN}.task is not bound')
  pattern = write_images(FLAGS.data_dir or digit_scenes.ensure_digit_scenes(),
                         FLAGS.timing_images, os.path.join(work_dir, 'timing'))
  source = sources.tfrecord_source(pattern)
  pl_run._Progress = _Timeline  # pylint: disable=protected-access
  rounds = []
  for r in range(FLAGS.rounds):
    model_rates, input_rates = time_bare(task, source, batch_size, teacher)
    e2e = time_pseudo_label(source, teacher, work_dir)
    rounds.append({'bare_model': model_rates, 'bare_with_input': input_rates, **e2e})
    print(f'[bench] round {r}: bare model {model_rates[0]:.1f} img/s, bare + input '
          f'{input_rates[0]:.1f}, pseudo-label {e2e["rates"][0]:.1f} (wall); CPU: '
          f'{model_rates[1]:.1f} / {input_rates[1]:.1f} / {e2e["rates"][1]:.1f} img/CPU-s',
          flush=True)
  med = lambda f: statistics.median(f(x) for x in rounds)
  result = {
      'images': FLAGS.timing_images, 'batch_size': batch_size, 'rounds': rounds,
      'image_size': list(task.image_size), 'kind': task.kind,
      'bare_model_img_s': med(lambda x: x['bare_model'][0]),
      'bare_with_input_img_s': med(lambda x: x['bare_with_input'][0]),
      'pseudo_label_img_s': med(lambda x: x['rates'][0]),
      'bare_model_img_per_cpu_s': med(lambda x: x['bare_model'][1]),
      'bare_with_input_img_per_cpu_s': med(lambda x: x['bare_with_input'][1]),
      'pseudo_label_img_per_cpu_s': med(lambda x: x['rates'][1]),
      'pseudo_label_wall_s': med(lambda x: x['wall_s']),
      'pseudo_label_setup_s': med(lambda x: x['setup_s']),
      'pseudo_label_finish_s': med(lambda x: x['finish_s']),
      'boxes_per_image': rounds[0]['boxes_per_image'],
      # per round, then the median: both runs of a round saw the same machine load
      'ratio_wall': med(lambda x: x['rates'][0] / x['bare_model'][0]),
      'ratio_cpu': med(lambda x: x['rates'][1] / x['bare_model'][1]),
      'ratio_wall_vs_bare_with_input': med(lambda x: x['rates'][0] / x['bare_with_input'][0]),
  }
  pl_run._Progress = _Timeline.__bases__[0]  # pylint: disable=protected-access
  return result


# --- memory ----------------------------------------------------------------------------------

def memory_child(num, work_dir):
  """One run over `num` images in this process; prints a JSON line with the memory numbers."""
  pattern = write_images(FLAGS.data_dir or digit_scenes.ensure_digit_scenes(), num,
                         os.path.join(work_dir, 'images'))
  proc = psutil.Process()
  samples, stop = [], threading.Event()

  def sample():
    while not stop.is_set():
      samples.append((time.time(), proc.memory_info().rss))
      stop.wait(0.2)

  pl_run._Progress = _Timeline  # pylint: disable=protected-access
  rss_before = proc.memory_info().rss
  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  start = time.time()
  stats = pl_run.run_pseudo_label(os.path.join(work_dir, 'out'),
                                  unlabeled_source=sources.tfrecord_source(pattern),
                                  teacher_checkpoint=FLAGS.teacher_checkpoint,
                                  expected_images=num)
  end = time.time()
  stop.set()
  thread.join()
  rec = _Timeline.records
  rss_at = lambda t: max([r for s, r in samples if s <= t] or [rss_before])
  loop_start, loop_end = rec[1][0], rec[-1][0]
  # RSS reached by the time 10%, 20%, ... 100% of the images were done
  by_progress = {}
  for frac in np.linspace(0.1, 1.0, 10):
    t = next(r[0] for r in rec if r[2] >= frac * stats['images'])
    by_progress[f'{frac:.1f}'] = rss_at(t) / 2**20
  result = {
      'images': stats['images'], 'boxes_per_image': stats.get('boxes_per_image'),
      'wall_s': end - start, 'loop_img_s': _rates(rec)[0],
      'rss_before_run_mb': rss_before / 2**20,
      'peak_rss_mb': max(r for _, r in samples) / 2**20,
      'peak_rss_loop_mb': max([r for s, r in samples if loop_start <= s <= loop_end] or [0])
                          / 2**20,
      'peak_rss_finish_mb': max([r for s, r in samples if s >= loop_end] or [0]) / 2**20,
      'rss_by_progress_mb': by_progress,
      'ru_maxrss_mb': __import__('resource').getrusage(
          __import__('resource').RUSAGE_SELF).ru_maxrss / 1024,
      'output_mb': sum(os.path.getsize(os.path.join(work_dir, 'out', f))
                       for f in os.listdir(os.path.join(work_dir, 'out'))) / 2**20,
  }
  print('MEMORY_RESULT ' + json.dumps(result), flush=True)


def run_memory(num, work_dir):
  child_dir = tempfile.mkdtemp(dir=work_dir)
  cmd = [sys.executable, os.path.abspath(__file__), f'--memory_child={num}',
         f'--work_dir={child_dir}', f'--teacher_checkpoint={FLAGS.teacher_checkpoint}']
  cmd += [f'--gin_file={f}' for f in FLAGS.gin_file]
  cmd += [f'--gin_param={p}' for p in FLAGS.gin_param]
  if FLAGS.data_dir:
    cmd.append(f'--data_dir={FLAGS.data_dir}')
  print(f'[bench] memory run over {num} images ...', flush=True)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  shutil.rmtree(child_dir, ignore_errors=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('MEMORY_RESULT ')]
  if proc.returncode or not lines:
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise RuntimeError(f'memory run over {num} images failed ({proc.returncode})')
  result = json.loads(lines[-1][len('MEMORY_RESULT '):])
  print(f'[bench] {num} images: peak RSS {result["peak_rss_mb"]:.0f} MB '
        f'(loop {result["peak_rss_loop_mb"]:.0f} MB), {result["loop_img_s"]:.1f} img/s',
        flush=True)
  return result


# --- report ----------------------------------------------------------------------------------

def markdown(results) -> str:
  t, m = results.get('timing'), results.get('memory', {})
  lines = ['# Pseudo-labeling throughput and memory', '']
  if t:
    lines += [
        f'Teacher `{results["teacher_checkpoint"]}` ({t["kind"]}, input '
        f'{t["image_size"][0]}x{t["image_size"][1]}), {t["images"]} digit scenes, batch '
        f'{t["batch_size"]}, {t["boxes_per_image"]:.2f} kept boxes per image; median of '
        f'{len(t["rounds"])} interleaved rounds; {results["machine"]}. Rates are over the '
        'steady loop (after the first, tracing batch). "CPU" is images per CPU-second of the '
        'process (robust to other users\' load); "wall" is images per second of wall-clock '
        'time. Written by `benchmarks/pseudo_label.py`.', '',
        '| | wall img/s | CPU img/s | pseudo-label / this (wall) | pseudo-label / this (CPU) |',
        '| --- | ---: | ---: | ---: | ---: |',
        f'| bare model (predict on batches in memory) | {t["bare_model_img_s"]:.1f} | '
        f'{t["bare_model_img_per_cpu_s"]:.1f} | {t["ratio_wall"]:.2f} | '
        f'{t["ratio_cpu"]:.2f} |',
        f'| bare model + input pipeline | {t["bare_with_input_img_s"]:.1f} | '
        f'{t["bare_with_input_img_per_cpu_s"]:.1f} | '
        f'{t["ratio_wall_vs_bare_with_input"]:.2f} | '
        f'{t["pseudo_label_img_per_cpu_s"] / t["bare_with_input_img_per_cpu_s"]:.2f} |',
        f'| run_pseudo_label end to end | {t["pseudo_label_img_s"]:.1f} | '
        f'{t["pseudo_label_img_per_cpu_s"]:.1f} | 1.00 | 1.00 |', '',
        f'Goal: pseudo-label / bare model >= 0.9. run_pseudo_label also spends '
        f'{t["pseudo_label_setup_s"]:.1f} s before its first batch is done (model build, '
        f'restore, trace) and {t["pseudo_label_finish_s"]:.1f} s after the last (stats and '
        f'COCO JSON merge); {t["pseudo_label_wall_s"]:.1f} s in all.', '']
  if m:
    lines += ['## Peak memory', '',
              'Each run in a fresh process; resident set size (RSS) sampled every 0.2 s. '
              '"loop" is the peak while labeling; "finish" while merging at the end.', '',
              '| images | peak RSS (MB) | peak in loop (MB) | peak in finish (MB) | RSS at 20% '
              '/ 60% / 100% of the images (MB) | img/s | output (MB) |',
              '| ---: | ---: | ---: | ---: | --- | ---: | ---: |']
    for n in sorted(m, key=int):
      r = m[n]
      p = r['rss_by_progress_mb']
      lines.append(f'| {r["images"]} | {r["peak_rss_mb"]:.0f} | {r["peak_rss_loop_mb"]:.0f} | '
                   f'{r["peak_rss_finish_mb"]:.0f} | {p["0.2"]:.0f} / {p["0.6"]:.0f} / '
                   f'{p["1.0"]:.0f} | {r["loop_img_s"]:.1f} | {r["output_mb"]:.1f} |')
    if len(m) >= 2:
      lo, hi = m[min(m, key=int)], m[max(m, key=int)]
      lines += ['', f'Peak RSS at {hi["images"]} images / at {lo["images"]} images: '
                    f'{hi["peak_rss_mb"] / lo["peak_rss_mb"]:.2f} (goal: flat, 1.0).']
    lines.append('')
  return '\n'.join(lines)


def main(argv):
  del argv
  if not tf.io.gfile.exists(FLAGS.teacher_checkpoint) and not tf.io.gfile.exists(
      FLAGS.teacher_checkpoint + '.index'):
    raise UserError(f'--teacher_checkpoint={FLAGS.teacher_checkpoint}: no such checkpoint; '
                    'train a teacher first (bash scripts/demo.sh, or bin/train_teacher.py '
                    '--gin_file=gin_configs/digits/teacher.gin --model_dir=runs/teacher)')
  parse_config()
  if FLAGS.memory_child:
    memory_child(FLAGS.memory_child, FLAGS.work_dir)
    return
  work_dir = tempfile.mkdtemp(prefix='bench_pseudo_label_')
  results = {'teacher_checkpoint': shown(FLAGS.teacher_checkpoint),
             'gin_file': [shown(g) for g in FLAGS.gin_file],
             'gin_param': FLAGS.gin_param,
             'machine': f'{os.cpu_count()} CPUs ({platform.machine()}), shared with other '
                        'users; load average at start '
                        f'{", ".join(f"{x:.1f}" for x in os.getloadavg())}',
             'platform': platform.platform()}   # perf_table.py: MFU only on the same machine
  try:
    if FLAGS.timing:
      results['timing'] = run_timing(FLAGS.teacher_checkpoint, work_dir)
    results['memory'] = {str(n): run_memory(int(n), work_dir) for n in FLAGS.memory_images}
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  name = 'pseudo_label' + (f'_{FLAGS.tag}' if FLAGS.tag else '')
  with open(os.path.join(FLAGS.out_dir, name + '.json'), 'w') as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(FLAGS.out_dir, name + '.md'), 'w') as f:
    f.write(markdown(results))
  print(markdown(results))


if __name__ == '__main__':
  app.run(lambda argv: config_io.call_with_user_errors(main, argv))
