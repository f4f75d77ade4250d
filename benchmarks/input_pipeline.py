"""Input-pipeline throughput: rethink-st's S1..S4 pipelines vs Model Garden's own parsers.

Same decoded digit scenes (generated once, cached in memory), same batch, same tf.data
settings (parallel map with AUTOTUNE, batch, prefetch); only the parse function differs:

  ours  rethink_st.data.pipeline.build_input(task=detection|segmentation) with Augment-S<k>
  MG    official.vision.dataloaders.retinanet_input.Parser with the matching settings
        (flip, scale jitter, aug_type autoaug detection_v0 for S2/S3, randaug for S4, same
        cutout/translate constants); for segmentation Model Garden's segmentation Parser
        (flip + jitter only: it has no policies) reading the same decoded tensors.

Timing: the sides of one (task, policy) take turns, as benchmarks/train_step.py's do: a round
runs each side once, back to back (the side that starts alternates from round to round), so
the two sides of a round see the same load of a shared machine. A side's turn makes a fresh
iterator (its prefetch threads start), pulls --warmup_batches untimed (start-up, autotuning),
times --num_batches and stops the iterator before the other side's turn. A round's ratio is
ours / Model Garden of that round; the medians over --rounds count, and the per-round ratios
are shown. Wall rates divide by wall-clock seconds, CPU rates by this process's CPU seconds.
Writes benchmarks/results/input_pipeline.json and a Markdown table (input_pipeline.md).

  python benchmarks/input_pipeline.py                       # 128 px digit scenes
  python benchmarks/input_pipeline.py --image_size=640 --output_size=640 --num_examples=8 \
      --num_batches=10 --warmup_batches=2 --rounds=5 --nomasks_rows --tag=640
"""
import json
import os
import platform
import sys
import time

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags
import numpy as np

from rethink_st import augment as augment_lib
from rethink_st.data import digit_scenes
from rethink_st.data import features as F
from rethink_st.data import pipeline

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order
from official.vision.configs import common as mg_common  # pylint: disable=wrong-import-order
from official.vision.dataloaders import retinanet_input, segmentation_input  # pylint: disable=wrong-import-order
from official.vision.ops import preprocess_ops  # pylint: disable=wrong-import-order

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from turn_taking import take_turns  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_integer('image_size', 128, 'Size of the generated digit scenes (pixels).')
flags.DEFINE_integer('output_size', 128, 'Network input size (a multiple of 128).')
flags.DEFINE_integer('batch_size', 8, 'Batch size.')
flags.DEFINE_integer('num_examples', 32, 'Distinct decoded scenes (cached, repeated).')
flags.DEFINE_integer('num_batches', 150, 'Timed batches per round.')
flags.DEFINE_integer('warmup_batches', 3, 'Untimed batches first (tracing, autotuning).')
flags.DEFINE_integer('rounds', 3, 'Rounds per (task, policy); each side once per round.')
flags.DEFINE_list('policies', ['s1', 's2', 's3', 's4'], 'Policies to run.')
flags.DEFINE_list('tasks', ['detection', 'segmentation'], 'Tasks to run (keys of SIDES).')
flags.DEFINE_bool('masks_rows', True, 'Also time detection with boxes_from_masks=True.')
flags.DEFINE_string('out_dir', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            'results'), 'Where results go.')
flags.DEFINE_string('tag', '', 'Suffix of the result files (input_pipeline_<tag>.json).')
FLAGS = flags.FLAGS

MIN_LEVEL, MAX_LEVEL = 3, 7


def decoded_scenes(num, image_size):
  """`num` digit scenes as a cached dataset of decoded examples (features.py contract)."""
  pool = digit_scenes.digit_pools()['train']
  examples = []
  for i in range(num):
    ex = digit_scenes.generate_scene(np.random.default_rng(i), pool, image_size)
    ex = {k: v for k, v in ex.items() if k != digit_scenes.DIGIT_INDICES}
    ex[F.INSTANCE_MASKS] = ex[F.INSTANCE_MASKS].astype(np.float32)
    ex[F.SOURCE_ID] = str(i).encode()
    ex[F.HEIGHT] = np.int64(image_size)
    ex[F.WIDTH] = np.int64(image_size)
    examples.append(ex)
  shapes = {F.IMAGE: [None, None, 3], F.BOXES: [None, 4], F.INSTANCE_MASKS: [None, None, None],
            F.SEMANTIC_MASK: [None, None, 1]}
  spec = {k: tf.TensorSpec(shapes.get(k, [None] * np.ndim(v)),
                           tf.string if k == F.SOURCE_ID else tf.as_dtype(np.asarray(v).dtype))
          for k, v in examples[0].items()}
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec).cache()
  for _ in ds:   # fill the in-memory cache once
    pass
  return ds, examples


def policy_settings(policy):
  """Scale range and Model Garden aug_type matching Augment(policy)."""
  aug = augment_lib.Augment(policy, output_size=FLAGS.output_size)
  if policy in ('s2', 's3'):
    mg = aug.augmenter._mg  # pylint: disable=protected-access
    aug_type = mg_common.Augmentation(type='autoaug', autoaug=mg_common.AutoAugment(
        augmentation_name='detection_v0', cutout_const=mg.cutout_const,
        translate_const=mg.translate_const))
  elif policy == 's4':
    mg = aug.augmenter._mg  # pylint: disable=protected-access
    aug_type = mg_common.Augmentation(type='randaug', randaug=mg_common.RandAugment(
        num_layers=mg.num_layers, magnitude=mg.magnitude, cutout_const=mg.cutout_const,
        translate_const=mg.translate_const))
  else:
    aug_type = None
  return aug, aug_type


class DecodedSegmentationParser(segmentation_input.Parser):
  """Model Garden's segmentation Parser reading decoded tensors: only the decode step
  (PNG decoding of tf.Example bytes) is replaced, by the same normalization."""

  def _prepare_image_and_label(self, data):
    image = preprocess_ops.normalize_image(
        data[F.IMAGE], [m / 255.0 for m in self._image_feature.mean],
        [s / 255.0 for s in self._image_feature.stddev])
    label = tf.cast(tf.transpose(data[F.SEMANTIC_MASK], [2, 0, 1]), tf.float32)
    return image, label


def mg_detection_parser(size, aug, aug_type):
  return retinanet_input.Parser(
      output_size=size, min_level=MIN_LEVEL, max_level=MAX_LEVEL, num_scales=3,
      aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4.0, aug_type=aug_type,
      aug_rand_hflip=True, aug_scale_min=aug.scale_min, aug_scale_max=aug.scale_max,
      dtype='float32')


def mg_segmentation_parser(size, aug, aug_type):
  del aug_type   # Model Garden's segmentation Parser has no policies
  return DecodedSegmentationParser(output_size=size, aug_rand_hflip=True,
                                   aug_scale_min=aug.scale_min, aug_scale_max=aug.scale_max)


# What a task's row times besides ours: Model Garden's parser that matches ours
# (`model_garden`), the policies it matches (None: every one; its segmentation Parser has no
# AutoAugment / RandAugment: S1 only), and whether --masks_rows adds ours with
# boxes_from_masks=True.
SIDES = {
    'detection': dict(model_garden=mg_detection_parser, mg_policies=None, masks_row=True),
    'segmentation': dict(model_garden=mg_segmentation_parser, mg_policies=('s1',),
                         masks_row=False),
}


def mg_dataset(base, task, policy):
  size = [FLAGS.output_size, FLAGS.output_size]
  aug, aug_type = policy_settings(policy)
  parser = SIDES[task]['model_garden'](size, aug, aug_type)
  ds = base.repeat().map(parser.parse_fn(is_training=True),
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  return ds.batch(FLAGS.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def our_dataset(base, task, policy, boxes_from_masks=False):
  aug, _ = policy_settings(policy)
  return pipeline.build_input(base, task=task, global_batch_size=FLAGS.batch_size,
                              is_training=True, output_size=(FLAGS.output_size,) * 2,
                              augment=aug, shuffle_buffer=0, boxes_from_masks=boxes_from_masks)


def time_dataset(ds):
  """(images per wall-clock second, images per CPU-second of this process) of one turn: a
  fresh iterator, warm-up batches untimed, then --num_batches timed.

  The machine is shared, so wall-clock rates swing with other users' load; CPU time
  counts the work the pipeline did (all its threads), which is what "same work" compares.
  """
  it = iter(ds)
  for _ in range(FLAGS.warmup_batches):
    tf.nest.map_structure(lambda t: t.numpy(), next(it))
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(FLAGS.num_batches):
    tf.nest.map_structure(lambda t: t.numpy(), next(it))
  images = FLAGS.num_batches * FLAGS.batch_size
  rates = images / (time.perf_counter() - wall), images / (time.process_time() - cpu)
  del it   # stop its prefetching threads before the next configuration runs
  return rates


def configurations(base):
  """{(task, policy): [(implementation, dataset factory), ...]}: the sides that take turns."""
  out = {}
  for task in FLAGS.tasks:
    for policy in FLAGS.policies:
      sides = out.setdefault((task, policy), [])
      sides.append(('ours', lambda t=task, p=policy: our_dataset(base, t, p)))
      if SIDES[task]['masks_row'] and FLAGS.masks_rows:
        sides.append(('ours+boxes_from_masks',
                      lambda t=task, p=policy: our_dataset(base, t, p, True)))
      if SIDES[task]['mg_policies'] is None or policy in SIDES[task]['mg_policies']:
        sides.append(('model_garden', lambda t=task, p=policy: mg_dataset(base, t, p)))
  return out


def summarize(task, policy, measured):
  """Runs (one per implementation: medians and per-round rates) and the pair's per-round
  ratios ours / Model Garden."""
  med = lambda xs: round(float(np.median(xs)), 2)
  runs = [{'task': task, 'policy': policy, 'implementation': impl,
           'images_per_sec': med([r[0] for r in rs]),
           'images_per_cpu_sec': med([r[1] for r in rs]),
           'rounds_images_per_sec': [round(r[0], 2) for r in rs],
           'rounds_images_per_cpu_sec': [round(r[1], 2) for r in rs]}
          for impl, rs in measured.items()]
  pair = None
  if 'ours' in measured and 'model_garden' in measured:
    ours, mg = measured['ours'], measured['model_garden']
    pair = {'task': task, 'policy': policy,
            'rounds_ratio_wall': [round(o[0] / m[0], 3) for o, m in zip(ours, mg)],
            'rounds_ratio_cpu': [round(o[1] / m[1], 3) for o, m in zip(ours, mg)]}
    pair['median_ratio_wall'] = med(pair['rounds_ratio_wall'])
    pair['median_ratio_cpu'] = med(pair['rounds_ratio_cpu'])
  return runs, pair


def markdown(results):
  setup = results['setup']
  lines = [
      '# Input pipeline throughput',
      '',
      f'{setup["num_examples"]} decoded digit scenes of {setup["image_size"]} px -> '
      f'{setup["output_size"]} px, batch {setup["batch_size"]}, tf.data parallel map '
      f'(AUTOTUNE) + batch + prefetch. The sides of a row take turns: {setup["rounds"]} '
      f'rounds, each side once per round, back to back (the side that starts alternates), '
      f'each turn a fresh iterator, {setup["warmup_batches"]} untimed batches, then '
      f'{setup["num_batches"]} timed; medians over rounds, and ours / MG per round; '
      f'{setup["cpus"]} CPUs. Model Garden: `retinanet_input.Parser` (detection) and '
      '`segmentation_input.Parser` (segmentation; it has no AutoAugment/RandAugment, so only '
      'S1 compares). "CPU" is images per CPU-second of the process (the work done); "wall" is '
      'images per second of wall-clock time. Written by `benchmarks/input_pipeline.py`.',
      '',
      '| task | policy | ours (CPU) | MG (CPU) | ours / MG (CPU) | ours (wall) | '
      'MG (wall) | ours / MG (wall) | per-round ours / MG (wall) | '
      'ours + boxes_from_masks (CPU) |',
      '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |',
  ]
  rows = {}
  for r in results['runs']:
    rows.setdefault((r['task'], r['policy']), {})[r['implementation']] = (
        r['images_per_cpu_sec'], r['images_per_sec'])
  pairs = {(p['task'], p['policy']): p for p in results.get('pairs', ())}
  fmt = lambda x: '-' if x is None else f'{x:.0f}'
  ratio = lambda a, b: '-' if not (a and b) else f'{a / b:.2f}'
  for (task, policy), v in rows.items():
    ours_cpu, ours_wall = v.get('ours', (None, None))
    mg_cpu, mg_wall = v.get('model_garden', (None, None))
    masks_cpu = v.get('ours+boxes_from_masks', (None, None))[0]
    pair = pairs.get((task, policy))
    per_round = ', '.join(f'{x:.2f}' for x in pair['rounds_ratio_wall']) if pair else '-'
    lines.append(f'| {task} | {policy.upper()} | {fmt(ours_cpu)} | {fmt(mg_cpu)} | '
                 f'{ratio(ours_cpu, mg_cpu)} | {fmt(ours_wall)} | {fmt(mg_wall)} | '
                 f'{ratio(ours_wall, mg_wall)} | {per_round} | {fmt(masks_cpu)} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  if FLAGS.output_size % 2 ** MAX_LEVEL:
    sys.exit(f'error: --output_size={FLAGS.output_size} must be a multiple of {2 ** MAX_LEVEL}')
  if min(FLAGS.rounds, FLAGS.num_batches) < 1 or FLAGS.warmup_batches < 0:
    sys.exit('error: --rounds and --num_batches must be positive, --warmup_batches >= 0')
  unknown = [t for t in FLAGS.tasks if t not in SIDES]
  if unknown:
    sys.exit(f'error: --tasks={",".join(FLAGS.tasks)}: {",".join(unknown)} not among '
             f'{",".join(SIDES)}')
  base, _ = decoded_scenes(FLAGS.num_examples, FLAGS.image_size)
  runs, pairs = [], []
  for (task, policy), sides in configurations(base).items():
    measured = take_turns(sides, FLAGS.rounds, time_dataset,
                          log=lambda m, t=task, p=policy: print(f'{t:12s} {p} {m}', flush=True))
    task_runs, pair = summarize(task, policy, measured)
    runs += task_runs
    if pair:
      pairs.append(pair)
  results = {
      'setup': {
          'image_size': FLAGS.image_size, 'output_size': FLAGS.output_size,
          'batch_size': FLAGS.batch_size, 'num_examples': FLAGS.num_examples,
          'num_batches': FLAGS.num_batches, 'warmup_batches': FLAGS.warmup_batches,
          'rounds': FLAGS.rounds, 'cpus': os.cpu_count(), 'turns': 'interleaved per round',
          'tensorflow': tf.__version__, 'python': platform.python_version(),
          'load_average': list(os.getloadavg()), 'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
      },
      'runs': runs,
      'pairs': pairs,
  }
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  stem = os.path.join(FLAGS.out_dir, 'input_pipeline' + (f'_{FLAGS.tag}' if FLAGS.tag else ''))
  with open(stem + '.json', 'w') as f:
    json.dump(results, f, indent=2)
  table = markdown(results)
  with open(stem + '.md', 'w') as f:
    f.write(table)
  print(table)
  print(f'wrote {stem}.json, {stem}.md')


if __name__ == '__main__':
  app.run(main)
