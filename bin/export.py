"""Exports a checkpoint as a SavedModel (serving_default takes uint8 images and returns
boxes/scores/classes, or masks). Give it the gin files that trained the run:

  python bin/export.py --gin_file=gin_configs/digits/teacher.gin --checkpoint=runs/teacher

--checkpoint (a run folder, whose latest checkpoint is exported, or a checkpoint prefix) sets
rethink_st.export.run_export.checkpoint, after the gin files and --gin_param; a --gin_param
that sets it differently is an error. The SavedModel goes to saved_model/ in the
checkpoint's run folder (or --export_dir), with config.gin and operative_config.gin beside
saved_model.pb; the run's own files are left as they are.
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st import export

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s), e.g. "run_export.batch_size=1".')
flags.DEFINE_string('checkpoint', None, 'A run folder (its latest checkpoint) or a checkpoint '
                    'prefix. Sets run_export.checkpoint.')
flags.DEFINE_string('export_dir', None, 'Where the SavedModel goes (default: saved_model/ in '
                    'the checkpoint\'s run folder).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  # config.gin is written by run_export, beside the SavedModel (the folder must start empty).
  cli.run_binary(export.run_export, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                 model_dir=cli.checkpoint_folder(FLAGS.checkpoint), save_config=False,
                 flag_bindings=cli.export_flags(FLAGS.checkpoint),
                 **({'export_dir': FLAGS.export_dir} if FLAGS.export_dir else {}))


if __name__ == '__main__':
  app.run(main)
