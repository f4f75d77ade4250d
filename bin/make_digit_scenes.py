"""Generates the embedded digit-scenes dataset (TFRecords, COCO JSON, images, meta.json).

  python bin/make_digit_scenes.py                                  # default set, ~30 s
  python bin/make_digit_scenes.py --data_dir=/tmp/ds \
      --gin_param="make_digit_scenes.num_train=500" --gin_param="make_digit_scenes.seed=1"

--data_dir defaults to $RETHINK_ST_DATA_DIR, else <repo>/data/digit_scenes. An existing
non-empty directory is only replaced with --gin_param="make_digit_scenes.overwrite=True".
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st.data import digit_scenes

flags.DEFINE_string('data_dir', None, 'Where to write the dataset (default: '
                    '$RETHINK_ST_DATA_DIR or <repo>/data/digit_scenes).')
flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s), e.g. "make_digit_scenes.seed=1".')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  data_dir = FLAGS.data_dir or digit_scenes.default_data_dir()
  path = cli.run_binary(lambda _: digit_scenes.make_digit_scenes(data_dir),
                        gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param, model_dir=None)
  print(f'digit scenes written to {path}')


if __name__ == '__main__':
  app.run(main)
