"""Teacher -> pseudo-label -> student -> evaluate (N rounds), one gin file for all stages.

  python bin/self_train.py --gin_file=gin_configs/digits/demo.gin --model_dir=runs/demo
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st import self_training

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s).')
flags.DEFINE_string('model_dir', None, 'Root folder: teacher/, round_k/pseudo, round_k/student.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cli.run_binary(self_training.run_self_training, gin_files=FLAGS.gin_file,
                 gin_params=FLAGS.gin_param, model_dir=FLAGS.model_dir)


if __name__ == '__main__':
  app.run(main)
