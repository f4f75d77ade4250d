"""Writes the COCO-standard semi-supervised splits: p% of train2017 labeled, the rest unlabeled.

  python bin/make_ssod_splits.py --annotations=/data/coco/annotations/instances_train2017.json \
      --output_dir=/data/coco/ssod_splits                    # 1/2/5/10% x folds 1..5

writes coco_standard_{percent}pct_fold{fold}.json (the labeled image ids, sorted, with
counts and sha256s) for the gin configs of gin_configs/ssod/ (SSOD_SPLITS_DIR). Without
--annotations the ids are read from TFDS (--tfds_name=coco/2017 --tfds_split=train, slower).
The rule (rethink_st/data/ssod_splits.py): image ids sorted, numpy.random.default_rng(fold)
permutation, the first floor(percent x N / 100) labeled.

Another project's split instead, so that the same images are labeled here:

  python bin/make_ssod_splits.py --annotations=.../instances_train2017.json \
      --output_dir=... --import_split=.../instances_train2017.1@10.json \
      --import_percent=10 --import_fold=1

(STAC / Soft Teacher / Consistent-Teacher COCO JSON, Unbiased Teacher's
dataseed/COCO_supervision.txt with --import_fold as its seed, or a list of image ids.)
"""
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from rethink_st import config_io
from rethink_st.data import ssod_splits

flags.DEFINE_string('output_dir', None, 'Folder for the split files.')
flags.DEFINE_string('annotations', None, 'COCO JSON whose "images" are split, e.g. '
                    'instances_train2017.json. Default: read the ids from TFDS.')
flags.DEFINE_string('tfds_name', 'coco/2017', 'TFDS dataset, without --annotations.')
flags.DEFINE_string('tfds_split', 'train', 'TFDS split, without --annotations.')
flags.DEFINE_string('tfds_data_dir', None, 'TFDS data_dir (default ~/tensorflow_datasets).')
flags.DEFINE_list('percents', [str(p) for p in ssod_splits.PERCENTS],
                  'Percents of the images labeled, of '
                  f'{", ".join(ssod_splits.percent_name(p) for p in ssod_splits.ALLOWED_PERCENTS)}.')
flags.DEFINE_string('folds', str(ssod_splits.NUM_FOLDS),
                    f'Folds per percent (1..{ssod_splits.MAX_FOLDS}); fold f is seed f.')
flags.DEFINE_string('import_split', None, 'Another project\'s split file to convert instead.')
flags.DEFINE_string('import_percent', None, 'The percent of --import_split.')
flags.DEFINE_string('import_fold', '1', 'The fold of --import_split (Unbiased Teacher: seed).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config_io.call_with_user_errors(
      ssod_splits.run_make_ssod_splits, FLAGS.output_dir, annotations=FLAGS.annotations,
      tfds_name=FLAGS.tfds_name, tfds_split=FLAGS.tfds_split,
      tfds_data_dir=FLAGS.tfds_data_dir, percents=FLAGS.percents, folds=FLAGS.folds,
      import_split_file=FLAGS.import_split, import_percent=FLAGS.import_percent,
      import_fold=FLAGS.import_fold)


if __name__ == '__main__':
  app.run(main)
