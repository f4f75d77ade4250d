"""Trains a student on human + pseudo labels (half/half batches, loss normalization),
starting from the teacher's weights.

  python bin/train_student.py --gin_file=gin_configs/digits/student.gin \\
      --teacher=runs/teacher --pseudo_labels=runs/pseudo --model_dir=runs/student

Each flag sets one gin binding, after the gin files and --gin_param (and so is in the run's
config.gin); a --gin_param that sets the same one differently is an error:
  --teacher        rethink_st.training.run.run_train.init_checkpoint (a run folder, whose
                   latest checkpoint is used, or a checkpoint prefix; which modules it
                   restores is run_train.init_modules, ('all',) in student.gin)
  --pseudo_labels  rethink_st.pseudo_label.source.pseudo_label_source.directory (a finished
                   bin/pseudo_label.py --output_dir)
  --pseudo_label_threshold
                   rethink_st.pseudo_label.source.pseudo_label_source.score_threshold (the
                   score a pseudo box needs; default: the labeler's score_threshold; down to
                   the score_floor the labels were written at, so one labeling pass serves
                   a threshold sweep)
Each may be left to the gin config instead. It resumes from the latest checkpoint in
--model_dir (the teacher's weights only start a new run).
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st.pseudo_label import source as pseudo_label_source
from rethink_st.training import run

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s).')
flags.DEFINE_string('teacher', None, 'The teacher whose weights start the student: a run '
                    'folder or a checkpoint prefix. Sets run_train.init_checkpoint.')
flags.DEFINE_string('pseudo_labels', None, 'A finished pseudo-label folder '
                    '(bin/pseudo_label.py --output_dir). Sets pseudo_label_source.directory.')
flags.DEFINE_float('pseudo_label_threshold', None, 'Detection: keep the pseudo boxes of '
                   'score >= this (down to the labels\' score floor). Sets '
                   'pseudo_label_source.score_threshold (default: the labeler\'s threshold).')
flags.DEFINE_string('model_dir', None, 'Where checkpoints, summaries and configs go.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cli.run_binary(run.run_train, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                 model_dir=FLAGS.model_dir,
                 flag_bindings=cli.train_student_flags(FLAGS.teacher, FLAGS.pseudo_labels) + (
                     cli.FlagBinding('pseudo_label_threshold', FLAGS.pseudo_label_threshold,
                                     pseudo_label_source.THRESHOLD_BINDING,
                                     pseudo_label_source.check_score_threshold),))


if __name__ == '__main__':
  app.run(main)
