"""Exports a trained checkpoint as a SavedModel (serving_default takes uint8 images and returns
boxes/scores/classes, or masks), with the gin files that trained it.

  python bin/export.py --gin_file=gin_configs/digits/teacher.gin \
      --gin_param="run_export.checkpoint='runs/teacher'" --export_dir=runs/teacher/saved_model
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st import export

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s), e.g. "run_export.checkpoint=...".')
flags.DEFINE_string('export_dir', None, 'Where the SavedModel is written.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cli.run_binary(export.run_export, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                 model_dir=FLAGS.export_dir, save_config=False)


if __name__ == '__main__':
  app.run(main)
