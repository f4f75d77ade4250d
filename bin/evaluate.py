"""Evaluates a checkpoint (COCO AP for detection, mIoU for segmentation, top-1 for
classification) with the same gin files that trained it. Everything it writes goes to
<model_dir>/eval/ (config.gin, operative_config.gin, eval_metrics.json and, for detection,
detections_coco.json), beside the run's TensorBoard eval summaries; the training run's own
config.gin, operative_config.gin and eval_metrics.json are left as they are.

  python bin/evaluate.py --gin_file=gin_configs/digits/teacher.gin --model_dir=runs/teacher
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st.training import run

flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s), e.g. "run_evaluate.checkpoint=...".')
flags.DEFINE_string('model_dir', None, 'Folder of the checkpoint to evaluate; results and '
                    'configs go to its eval/ subfolder.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cli.run_binary(run.run_evaluate, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                 model_dir=FLAGS.model_dir, config_dir=run.eval_dir(FLAGS.model_dir))


if __name__ == '__main__':
  app.run(main)
