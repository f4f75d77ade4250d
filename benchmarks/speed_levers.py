"""What each speed lever buys the digit teacher's train step, measured side by side.

    python benchmarks/speed_levers.py                  # about 10 minutes on 2 CPU cores
    python benchmarks/speed_levers.py --only=base --only=resnet10 --rounds=2

Every variant is gin_configs/digits/teacher.gin plus a few bindings (VARIANTS below): the
project's DetectionTask, its input pipeline and its loss, on real digit-scene batches. For
each variant the script builds the model, draws one batch of `--batch` images from the
variant's own pipeline (so an input-size change changes the images and anchors too) and
times forward + loss + backward + SGD step as one `tf.function`, with and without XLA
(`jit_compile=True`), on that fixed batch: the step alone, no input pipeline. Variants take
turns: each round times every variant once (`--steps` steps after warm-up), the order
rotating by round, and the medians over `--rounds` count, so all variants see the same load of
a shared machine; the table gives img/s and the ratio to `base` (the digit model of
gin_configs/digits/model_retinanet.gin). The input pipeline alone (decode from cache +
augmentation + anchor labeling) is timed once per variant.

A faster step is not a faster run to a given AP: a variant can learn less per step
(benchmarks/README.md, "Digit scale: what has been measured"). Writes
<output_dir>/speed_levers.json and .md.
"""
import json
import os
import platform
import statistics
import time

import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags
import gin

from rethink_st import config_io
from rethink_st.data import digit_scenes  # noqa: F401  (registers its configurables)
from rethink_st.training import optimization, strategy

import tensorflow as tf, tf_keras  # pylint: disable=g-import-not-at-top,wrong-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_GIN = os.path.join(REPO, 'gin_configs', 'digits', 'teacher.gin')
_M = 'rethink_st.modeling'
# name -> (what it changes, gin bindings on top of teacher.gin)
VARIANTS = {
    'base': ('the digit model: ResNet-18 x0.5, FPN-64 P3-P7, head 2x64, 128 px', ()),
    'p3_p5': ('pyramid levels P3-P5 only', (f'{_M}.anchors.anchor_config.max_level = 5',)),
    'head_1x64': ('one conv per head tower', (f'{_M}.detection.build_retinanet.head_num_convs = 1',)),
    'resnet10': ('ResNet-10 x0.5', (f"{_M}.detection.build_retinanet.backbone = 'resnet-10'",)),
    'width_0.25': ('ResNet-18 x0.25', (f'{_M}.backbones.build_backbone.depth_multiplier = 0.25',)),
    'full_width': ('ResNet-18 x1.0', (f'{_M}.backbones.build_backbone.depth_multiplier = 1.0',)),
    '96px': ('96 px input, P3-P5 (digits 9-42 px)',
             ('IMAGE_SIZE = (96, 96)', f'{_M}.anchors.anchor_config.max_level = 5')),
    '64px': ('64 px input, P3-P5 (digits 6-28 px)',
             ('IMAGE_SIZE = (64, 64)', f'{_M}.anchors.anchor_config.max_level = 5')),
    'mixed_bfloat16': ('mixed precision: bfloat16 compute, float32 variables and losses',
                       ("rethink_st.training.strategy.set_mixed_precision.policy = "
                        "'mixed_bfloat16'",)),
}

flags.DEFINE_integer('batch', 16, 'Images per step (the digit teacher: 16).')
flags.DEFINE_integer('steps', 8, 'Timed steps per variant, per mode, per round.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps after tracing, per variant and mode.')
flags.DEFINE_integer('rounds', 3, 'Rounds; medians over rounds count.')
flags.DEFINE_multi_string('only', [], 'Only these variants (base is always included).')
flags.DEFINE_string('output_dir', os.path.join(REPO, 'benchmarks', 'results'),
                    'Where speed_levers.json / .md go.')
FLAGS = flags.FLAGS


def build_variant(bindings, batch):
  """(step functions by mode, its batch, input img/s, the model's parameter count) of one
  variant: model, optimizer, one batch. Parameters: trainable ones, as machine_peak.py counts."""
  gin.clear_config()
  config_io.parse_gin([TEACHER_GIN], list(bindings))
  strategy.set_mixed_precision()    # the variant's policy (float32 unless it binds one)
  task = gin.query_parameter('%TASK').scoped_configurable_fn()
  dataset = task.build_dataset('train', batch, None)
  iterator = iter(dataset)
  images, labels = next(iterator)
  start, n = time.perf_counter(), 20
  for _ in range(n):
    next(iterator)
  input_ips = n * batch / (time.perf_counter() - start)
  model = task.build_model()
  optimizer = optimization.build_optimizer(global_batch_size=batch, total_steps=10_000)

  def step(images, labels):
    with tf.GradientTape() as tape:
      outputs = task.forward(model, images, labels, training=True)
      loss = task.losses(outputs, labels)['total_loss'] + optimization.weight_decay_loss(model)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  steps = {mode: tf.function(step, jit_compile=(mode == 'xla')) for mode in ('graph', 'xla')}
  for fn in steps.values():           # trace and warm up
    for _ in range(FLAGS.warmup):
      fn(images, labels).numpy()
  tf_keras.mixed_precision.set_global_policy('float32')   # the next variant starts clean
  gin.clear_config()
  return steps, (images, labels), input_ips, int(sum(v.shape.num_elements()
                                                     for v in model.trainable_variables))


def time_steps(fn, batch_data, steps, batch):
  start = time.perf_counter()
  for _ in range(steps):
    loss = fn(*batch_data)
  loss.numpy()
  return steps * batch / (time.perf_counter() - start)


def main(argv):
  del argv
  names = [n for n in VARIANTS if n == 'base' or not FLAGS.only or n in FLAGS.only]
  unknown = sorted(set(FLAGS.only) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f'--only: unknown variant(s) {", ".join(unknown)}; known: '
                         f'{", ".join(VARIANTS)}')
  built = {}
  for name in names:
    print(f'[speed_levers] building {name}', flush=True)
    built[name] = build_variant(VARIANTS[name][1], FLAGS.batch)
  rates = {(n, m): [] for n in names for m in ('graph', 'xla')}
  for r in range(FLAGS.rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      steps, data, _, _ = built[name]
      for mode, fn in steps.items():
        rates[(name, mode)].append(time_steps(fn, data, FLAGS.steps, FLAGS.batch))
    print(f'[speed_levers] round {r + 1}/{FLAGS.rounds}: ' + ', '.join(
        f'{n} {rates[(n, "graph")][-1]:.1f}' for n in names) + ' img/s', flush=True)
  med = {k: statistics.median(v) for k, v in rates.items()}
  rows = [dict(variant=n, change=VARIANTS[n][0], bindings=list(VARIANTS[n][1]),
               img_s=round(med[(n, 'graph')], 2), img_s_xla=round(med[(n, 'xla')], 2),
               ratio=round(med[(n, 'graph')] / med[('base', 'graph')], 3),
               ratio_xla=round(med[(n, 'xla')] / med[('base', 'graph')], 3),
               rounds=[round(x, 2) for x in rates[(n, 'graph')]],
               rounds_xla=[round(x, 2) for x in rates[(n, 'xla')]],
               input_img_s=round(built[n][2], 1)) for n in names]
  record = dict(batch=FLAGS.batch, steps=FLAGS.steps, rounds=FLAGS.rounds,
                cpus=os.cpu_count(), machine=platform.processor() or platform.machine(),
                load_average_end=round(os.getloadavg()[0], 2), rows=rows)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, 'speed_levers.json'), 'w') as f:
    json.dump(record, f, indent=1)
  lines = [
      '# Speed levers for the digit teacher (train step alone)', '',
      f'Forward + loss + backward + SGD on one fixed batch of {FLAGS.batch} digit scenes, '
      f'each variant = gin_configs/digits/teacher.gin + its bindings; variants take turns, '
      f'{FLAGS.rounds} rounds of {FLAGS.steps} steps, medians. Ratio: img/s over base '
      f'(graph mode). {record["cpus"]} CPUs, load average at the end '
      f'{record["load_average_end"]}. Written by `benchmarks/speed_levers.py`. A faster step '
      'is not a faster run to a given AP (see benchmarks/README.md).', '',
      '| variant | change | img/s | ratio | img/s XLA | ratio XLA | input alone img/s |',
      '| --- | --- | ---: | ---: | ---: | ---: | ---: |']
  lines += [f'| {r["variant"]} | {r["change"]} | {r["img_s"]:.1f} | {r["ratio"]:.2f} | '
            f'{r["img_s_xla"]:.1f} | {r["ratio_xla"]:.2f} | {r["input_img_s"]:.0f} |'
            for r in rows]
  with open(os.path.join(FLAGS.output_dir, 'speed_levers.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
