"""Writes one PNG grid per augmentation policy (S1..S4): examples and augmented draws of
them, with boxes, instance masks and semantic masks drawn, to check that masks and boxes
move with the image.

  python bin/show_augment.py --output_dir=runs/augment
  python bin/show_augment.py --gin_param="run_show_augment.policies=['s4']" \\
      --gin_param="Augment.translate_const=10" --output_dir=runs/augment
  python bin/show_augment.py --gin_file=gin_configs/base/augment_s3.gin \\
      --gin_param="run_show_augment.policies=['s3']" --output_dir=runs/augment_full_scale

Without --gin_file each policy runs under its digit-scale file,
gin_configs/digits/augment_s<k>.gin (pixel constants scaled to the 128 px digit scenes),
plus the --gin_param bindings; each policy's config.gin and operative_config.gin go to
<output_dir>/s<k>/. With --gin_file, those files and bindings apply to every policy shown
(config.gin in <output_dir>). Without a bound `run_show_augment.source` it shows the digit
scenes' train split (generated on first use).
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import augment_preview, cli, config_io

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order; default: '
                          'each policy under gin_configs/digits/augment_<policy>.gin.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s), e.g. "run_show_augment.n=8".')
flags.DEFINE_string('output_dir', 'runs/augment', 'Folder for augment_<policy>.png.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.gin_file:
    paths = cli.run_binary(augment_preview.run_show_augment, gin_files=FLAGS.gin_file,
                           gin_params=FLAGS.gin_param, model_dir=FLAGS.output_dir)
  else:
    paths = config_io.call_with_user_errors(augment_preview.run_show_augment_digit_scale,
                                            FLAGS.output_dir, FLAGS.gin_param)
  for path in paths:
    print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
