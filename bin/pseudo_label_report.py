"""Pictures and precision/recall of a pseudo-label folder (the paper's Appendix G).

  python bin/pseudo_label_report.py --pseudo_dir=runs/pseudo --output_dir=runs/pseudo_report \
      --reference=digit_scenes:unlabeled

writes pseudo_labels.png, report.json, report.md and precision_recall.png (detection) or
per_class_iou.png (segmentation). --reference is where the unlabeled images' held-back labels
are: 'digit_scenes:<split>' or a TFRecord glob; without it, pictures and statistics only.
Detection precision/recall are given for the pseudo labels as written and without the
labeler's class-agnostic suppression (run_pseudo_label.class_agnostic_nms_iou), with the
number of boxes it suppressed.
Settings: --gin_param="write_report.num_images=32", write_report.thresholds, ...
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import cli
from rethink_st import pseudo_label_report

flags.DEFINE_string('pseudo_dir', None, 'The pseudo-labeler\'s output folder.')
flags.DEFINE_string('output_dir', None, 'Folder for the report.')
flags.DEFINE_string('reference', None, 'Held-back labels of the unlabeled images: '
                    '\'digit_scenes:unlabeled\' or a TFRecord glob (optional).')
flags.DEFINE_multi_string('gin_file', [], 'Gin config file(s), applied in order.')
flags.DEFINE_multi_string('gin_param', [], 'Gin binding(s).')
FLAGS = flags.FLAGS


def main(argv):
  del argv

  def run(output_dir):
    kwargs = {}
    if FLAGS.reference:
      kwargs['reference_source'] = pseudo_label_report.parse_reference(FLAGS.reference)
    return pseudo_label_report.write_report(FLAGS.pseudo_dir, output_dir, **kwargs)

  report = cli.run_binary(run, gin_files=FLAGS.gin_file, gin_params=FLAGS.gin_param,
                          model_dir=FLAGS.output_dir)
  print(f'wrote {", ".join(report["files"].values())} to {FLAGS.output_dir}')


if __name__ == '__main__':
  app.run(main)
