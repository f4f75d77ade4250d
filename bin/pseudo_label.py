"""Pseudo-labels an unlabeled source with a teacher checkpoint (detection or segmentation).

  python bin/pseudo_label.py --gin_file=gin_configs/digits/demo.gin \
      --gin_param="run_pseudo_label.teacher_checkpoint='runs/teacher'" \
      --output_dir=runs/pseudo --num_shards=4 --shard_index=0

Each host runs with its own --shard_index; a rerun skips the chunks already written. A host
holds its shard's lock in --output_dir (writer-shard-<i>-of-<n>.lock): a second process on
the same shard stops at once, naming the first.
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st import run_lock
from rethink_st.pseudo_label import run

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s).')
flags.DEFINE_string('output_dir', None, 'Folder for the pseudo-label shards and stats.')
flags.DEFINE_integer('num_shards', 1, 'Number of independent hosts sharing the work.')
flags.DEFINE_integer('shard_index', 0, 'This host\'s index in [0, num_shards).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cli.run_binary(run.run_pseudo_label, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                 model_dir=FLAGS.output_dir, num_shards=FLAGS.num_shards,
                 shard_index=FLAGS.shard_index,
                 lock_name=run_lock.shard_lock_name(FLAGS.shard_index, FLAGS.num_shards))


if __name__ == '__main__':
  app.run(main)
