"""Exports a trained run's checkpoint as a SavedModel (serving_default takes uint8 images and
returns boxes/scores/classes, or masks). Give it the gin files that trained the run and the
run's folder: it exports the latest checkpoint in --model_dir (or the one bound to
run_export.checkpoint) to <model_dir>/saved_model (or --export_dir), and writes config.gin and
operative_config.gin there, beside saved_model.pb; the run's own files are left as they are.

  python bin/export.py --gin_file=gin_configs/digits/teacher.gin --model_dir=runs/teacher
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st import export

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s), e.g. "run_export.checkpoint=...".')
flags.DEFINE_string('model_dir', None, 'The trained run: its latest checkpoint is exported.')
flags.DEFINE_string('export_dir', None, 'Where the SavedModel goes (default '
                    '<model_dir>/saved_model).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  # config.gin is written by run_export, beside the SavedModel (the folder must start empty).
  cli.run_binary(export.run_export, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                 model_dir=FLAGS.model_dir, save_config=False,
                 **({'export_dir': FLAGS.export_dir} if FLAGS.export_dir else {}))


if __name__ == '__main__':
  app.run(main)
