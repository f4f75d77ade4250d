"""Writes a PNG grid of digit scenes with their boxes, instance masks and semantic masks.

  python bin/show_digit_scenes.py --split=train --num=16 --output=runs/train_scenes.png

Without --data_dir it uses the default dataset, generating it first if it is absent.
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import config_io
from rethink_st.data import digit_scenes

flags.DEFINE_string('data_dir', None, 'A digit-scenes directory (default: the default '
                    'dataset, made on first use).')
flags.DEFINE_enum('split', 'train', digit_scenes.SPLITS, 'Which split to show.')
flags.DEFINE_integer('num', 16, 'How many examples (from the start of the split).')
flags.DEFINE_integer('ncols', 4, 'Examples per row.')
flags.DEFINE_string('output', None, 'PNG to write (default: runs/digit_scenes_<split>.png).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  def show():
    data_dir = FLAGS.data_dir or digit_scenes.ensure_digit_scenes()
    output = FLAGS.output or f'runs/digit_scenes_{FLAGS.split}.png'
    return digit_scenes.write_preview(data_dir, FLAGS.split, output, n=FLAGS.num,
                                      ncols=FLAGS.ncols)
  print(f'wrote {config_io.call_with_user_errors(show)}')


if __name__ == '__main__':
  app.run(main)
