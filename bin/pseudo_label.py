"""Pseudo-labels unlabeled images with a teacher checkpoint (detection or segmentation).

  python bin/pseudo_label.py --gin_file=gin_configs/digits/demo.gin --teacher=runs/teacher \\
      --output_dir=runs/pseudo [--unlabeled=digit_scenes:unlabeled] [--num_shards=4 --shard_index=0]

Each flag sets one gin binding, after the gin files and --gin_param (and so is in the
output's config.gin); a --gin_param that sets the same one differently is an error:
  --teacher     rethink_st.pseudo_label.run.run_pseudo_label.teacher_checkpoint
                (a run folder, whose latest checkpoint is used, or a checkpoint prefix)
  --unlabeled   rethink_st.pseudo_label.run.run_pseudo_label.unlabeled_source
                ('digit_scenes:<split>', a folder of images, or a TFRecord glob; default: the
                source the gin files bind)
Everything else (score threshold, score floor, batch size, chunk size, ...) is gin:
--gin_param="rethink_st.pseudo_label.run.run_pseudo_label.score_threshold=0.5". Detection
boxes are written down to run_pseudo_label.score_floor (0.05) with their scores, so a student
can read them at any threshold down to it (bin/train_student.py --pseudo_label_threshold);
meta.json records the label space, the teacher checkpoint's path and sha256 and the NMS
settings.

Each host runs with its own --shard_index; a rerun skips the chunks already written. A host
holds its shard's lock in --output_dir (writer-shard-<i>-of-<n>.lock): a second process on
the same shard stops at once, naming the first. The last host to finish merges stats.json.

  python bin/pseudo_label.py --gin_file=... --output_dir=runs/pseudo --verify [--unlabeled=...]

checks that every host is done (else one error line naming the --shard_index to rerun),
merges if no host did, and that labeled + unreadable images add up to the unlabeled source
(rethink_st/pseudo_label/verify.py).
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st import run_lock
from rethink_st.pseudo_label import run
from rethink_st.pseudo_label import verify

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s).')
flags.DEFINE_string('teacher', None, 'The teacher: a run folder (its latest checkpoint) or a '
                    'checkpoint prefix. Sets run_pseudo_label.teacher_checkpoint.')
flags.DEFINE_string('unlabeled', None, 'The images to label: digit_scenes:<split>, an image '
                    'folder or a TFRecord glob. Sets run_pseudo_label.unlabeled_source '
                    '(default: the gin files\').')
flags.DEFINE_string('output_dir', None, 'Folder for the pseudo-label shards and stats.')
flags.DEFINE_integer('num_shards', 1, 'Number of independent hosts sharing the work.')
flags.DEFINE_integer('shard_index', 0, 'This host\'s index in [0, num_shards).')
flags.DEFINE_bool('verify', False, 'Label nothing: check that every host of --output_dir is '
                  'done and every image of the unlabeled source is labeled or skipped once; '
                  'merge if no host did.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.verify:
    cli.run_binary(verify.run_verify, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                   model_dir=FLAGS.output_dir, save_config=False,
                   flag_bindings=cli.pseudo_label_flags(FLAGS.teacher, FLAGS.unlabeled))
    return
  cli.run_binary(run.run_pseudo_label, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                 model_dir=FLAGS.output_dir, num_shards=FLAGS.num_shards,
                 shard_index=FLAGS.shard_index,
                 lock_name=run_lock.shard_lock_name(FLAGS.shard_index, FLAGS.num_shards),
                 flag_bindings=cli.pseudo_label_flags(FLAGS.teacher, FLAGS.unlabeled))


if __name__ == '__main__':
  app.run(main)
