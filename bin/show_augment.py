"""Writes one PNG grid per augmentation policy (S1..S4): examples and augmented draws of
them, with boxes, instance masks and semantic masks drawn, to check that masks and boxes
move with the image.

  python bin/show_augment.py --output_dir=runs/augment
  python bin/show_augment.py --gin_param="run_show_augment.policies=['s4']" \\
      --gin_param="Augment.translate_const=50" --output_dir=runs/augment

Without a bound `run_show_augment.source` it shows the digit scenes' train split
(generated on first use).
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import augment_preview, cli

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s), e.g. "run_show_augment.n=8".')
flags.DEFINE_string('output_dir', 'runs/augment', 'Folder for augment_<policy>.png.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  paths = cli.run_binary(augment_preview.run_show_augment, gin_files=FLAGS.gin_file,
                         gin_params=FLAGS.gin_param, model_dir=FLAGS.output_dir)
  for path in paths:
    print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
