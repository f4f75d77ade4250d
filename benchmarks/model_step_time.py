"""Forward + backward + SGD step time of candidate digit-sized models on this machine.

    python benchmarks/model_step_time.py --out /tmp/step_time.json [--batch 16] [--steps 5]

Each candidate is built by the package's builders at 128x128 (digit scenes), trained for a
few steps on random images with a loss touching every output (so every weight gets a
gradient), and timed after a warm-up. Writes JSON (one record per candidate: parameters,
build seconds, mean step seconds, images/s) and prints a Markdown table made from it.
Uses all cores TensorFlow sees; on a shared machine numbers vary by some 10-30%.
"""
import json
import time

from absl import app
from absl import flags

import rethink_st  # pylint: disable=unused-import  (sets TF_USE_LEGACY_KERAS first)
import tensorflow as tf, tf_keras

from rethink_st.modeling import backbones
from rethink_st.modeling import classification
from rethink_st.modeling import detection
from rethink_st.modeling import segmentation

flags.DEFINE_string('out', None, 'JSON output path.')
flags.DEFINE_integer('batch', 16, 'Batch size.')
flags.DEFINE_integer('steps', 5, 'Timed steps (after 2 warm-up steps).')
flags.DEFINE_list('only', [], 'Run only these candidate names.')
FLAGS = flags.FLAGS

SIZE = (128, 128)
CANDIDATES = {
    'det_resnet18_fpn64_head2x64': lambda: detection.build_retinanet(
        input_size=SIZE, num_classes=11, backbone='resnet-18', decoder_num_filters=64,
        head_num_convs=2, head_num_filters=64),
    'det_resnet10_fpn64_head2x64': lambda: detection.build_retinanet(
        input_size=SIZE, num_classes=11, backbone='resnet-10', decoder_num_filters=64,
        head_num_convs=2, head_num_filters=64),
    'det_resnet18_fpn128_head4x128': lambda: detection.build_retinanet(
        input_size=SIZE, num_classes=11, backbone='resnet-18', decoder_num_filters=128,
        head_num_convs=4, head_num_filters=128),
    'det_efficientnetb0_fpn64_head2x64': lambda: detection.build_retinanet(
        input_size=SIZE, num_classes=11, backbone='efficientnet-b0', decoder_num_filters=64,
        head_num_convs=2, head_num_filters=64),
    'det_spinenet49s_head2x64': lambda: detection.build_retinanet(
        input_size=SIZE, num_classes=11, backbone='spinenet-49s', decoder='identity',
        head_num_convs=2, head_num_filters=64),
    'seg_resnet18_nasfpn64x1_head2x64': lambda: segmentation.build_segmentation_model(
        input_size=SIZE, num_classes=11, backbone='resnet-18', decoder_num_filters=64,
        nasfpn_num_repeats=1, head_num_convs=2, head_num_filters=64),
    'seg_resnet18_nasfpn64x3_head3x64': lambda: segmentation.build_segmentation_model(
        input_size=SIZE, num_classes=11, backbone='resnet-18', decoder_num_filters=64,
        nasfpn_num_repeats=3, head_num_convs=3, head_num_filters=64),
    'cls_resnet18_64px': lambda: classification.build_classifier(
        input_size=(64, 64), num_classes=10, backbone='resnet-18'),
}


def time_model(name, build_fn, batch, steps):
  t0 = time.time()
  model = build_fn()
  build_s = time.time() - t0
  size = (64, 64) if name.startswith('cls_') else SIZE
  images = tf.random.uniform([batch, size[0], size[1], 3], -1.0, 1.0)
  opt = tf_keras.optimizers.SGD(1e-3, momentum=0.9)
  variables = model.trainable_variables

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      out = model(x, training=True)
      loss = tf.add_n([tf.reduce_mean(tf.square(tf.cast(t, tf.float32)))
                       for t in tf.nest.flatten(out)])
    grads = tape.gradient(loss, variables)
    opt.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
    return loss

  for _ in range(2):
    step(images).numpy()
  t0 = time.time()
  for _ in range(steps):
    step(images).numpy()
  step_s = (time.time() - t0) / steps
  return dict(name=name, params=backbones.count_params(model, trainable_only=True),
              build_s=round(build_s, 2), step_s=round(step_s, 4),
              images_per_s=round(batch / step_s, 1), batch=batch,
              input_size=list(size))


def main(_):
  records = []
  for name, fn in CANDIDATES.items():
    if FLAGS.only and name not in FLAGS.only:
      continue
    rec = time_model(name, fn, FLAGS.batch, FLAGS.steps)
    print(json.dumps(rec), flush=True)
    records.append(rec)
    tf_keras.backend.clear_session()
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(dict(cpu_threads=len(tf.config.list_physical_devices('CPU')), records=records),
                f, indent=1)
  print('\n| model | params (M) | input | batch | step (s) | images/s |\n|---|---|---|---|---|---|')
  for r in records:
    print(f'| {r["name"]} | {r["params"] / 1e6:.2f} | {r["input_size"][0]} | {r["batch"]} | '
          f'{r["step_s"]:.3f} | {r["images_per_s"]} |')


if __name__ == '__main__':
  app.run(main)
