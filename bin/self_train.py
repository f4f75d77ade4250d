"""Teacher -> pseudo-label -> student -> evaluate (N rounds), one gin file for all stages.

  python bin/self_train.py --gin_file=gin_configs/digits/demo.gin --model_dir=runs/demo
  python bin/self_train.py --gin_file=gin_configs/digits/demo.gin --teacher=runs/teacher \\
      --model_dir=runs/demo_from_teacher

--teacher (a trained teacher's run folder: no teacher is trained) sets
rethink_st.self_training.run_self_training.teacher_dir, after the gin files and --gin_param;
a --gin_param that sets it differently is an error. Stage settings are scoped gin bindings
(teacher/..., pseudo/..., student/...; see rethink_st/self_training.py).
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st import self_training

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s).')
flags.DEFINE_string('teacher', None, 'A trained teacher\'s run folder to start from (no '
                    'teacher is trained). Sets run_self_training.teacher_dir.')
flags.DEFINE_string('model_dir', None, 'Root folder: teacher/, round_k/pseudo, round_k/student.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cli.run_binary(self_training.run_self_training, gin_files=FLAGS.gin_file,
                 gin_params=FLAGS.gin_param, model_dir=FLAGS.model_dir,
                 flag_bindings=cli.self_train_flags(FLAGS.teacher))


if __name__ == '__main__':
  app.run(main)
