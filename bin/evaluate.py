"""Evaluates a checkpoint (COCO AP for detection, mIoU for segmentation, top-1 for
classification) with the same gin files that trained it.

  python bin/evaluate.py --gin_file=gin_configs/digits/teacher.gin --checkpoint=runs/teacher

--checkpoint (a run folder, whose latest checkpoint is evaluated, or a checkpoint prefix such
as runs/teacher/ckpt-800) sets rethink_st.training.run.run_evaluate.checkpoint, after the gin
files and --gin_param; a --gin_param that sets it differently is an error. Everything it
writes goes to eval/ in the checkpoint's run folder (config.gin, operative_config.gin,
eval_metrics.json and, for detection, detections_coco.json), beside the run's TensorBoard
eval summaries; the training run's own config.gin, operative_config.gin and
eval_metrics.json are left as they are.
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st.training import run

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s), e.g. '
                          '"run_evaluate.eval_batch_size=8".')
flags.DEFINE_string('checkpoint', None, 'A run folder (its latest checkpoint) or a checkpoint '
                    'prefix; results and configs go to eval/ in its folder. Sets '
                    'run_evaluate.checkpoint.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  folder = cli.checkpoint_folder(FLAGS.checkpoint)
  cli.run_binary(run.run_evaluate, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                 model_dir=folder, config_dir=run.eval_dir(folder),
                 flag_bindings=cli.evaluate_flags(FLAGS.checkpoint))


if __name__ == '__main__':
  app.run(main)
