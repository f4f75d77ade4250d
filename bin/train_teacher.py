"""Trains a model from labeled data: a teacher (detection or segmentation), a supervised
baseline, or a pre-trained backbone (classification, the ImageNet-init stand-in); the task,
data and schedule come from gin. It resumes from the latest checkpoint in --model_dir.

  python bin/train_teacher.py --gin_file=gin_configs/digits/teacher.gin --model_dir=runs/teacher
  python bin/train_teacher.py --gin_file=gin_configs/digits/experiments/pretrain.gin \\
      --model_dir=runs/pretrain

Anything else is a gin binding, e.g.
--gin_param="rethink_st.training.run.run_train.train_steps=100".
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st.training import run

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s), e.g. "run_train.train_steps=100".')
flags.DEFINE_string('model_dir', None, 'Where checkpoints, summaries and configs go.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cli.run_binary(run.run_train, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                 model_dir=FLAGS.model_dir)


if __name__ == '__main__':
  app.run(main)
