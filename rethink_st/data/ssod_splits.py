"""Labeled / unlabeled splits of the semi-supervised object detection (SSOD) protocols.

COCO-standard: p% of COCO train2017 labeled (p = 1, 2, 5, 10), the rest unlabeled, 5 folds
per p; AP on val2017, averaged over the folds. `make_coco_standard_splits` writes one
image-id file (rethink_st/data/image_ids.py) per (percent, fold); a training source keeps
its ids (the labeled set) or drops them (the unlabeled set) through one binding,
`image_ids_file = @ssod_split_file()`. bin/make_ssod_splits.py runs it.

Our rule, deterministic and checkable with numpy alone:

    ids      = the distinct image ids of the source list (instances_train2017.json's
               "images", or TFDS coco/2017 train: 118,287 images, with and without boxes),
               sorted increasingly
    order    = numpy.random.default_rng(fold).permutation(len(ids))       # fold = 1..5
    labeled  = sorted(ids[order[:k]]),  k = max(1, floor(percent * len(ids) / 100))
    unlabeled = the other ids

so k = 1182 / 2365 / 5914 / 11828 of 118,287 images at 1 / 2 / 5 / 10%, the counts STAC,
Soft Teacher and Consistent-Teacher draw (they also floor p% of the file's 118,287 images).
Within a fold the 1% set lies inside the 2% set, which lies inside the 5% set, and so on
(one permutation per fold); the folds are independent draws. The files record the sha256 of
the sorted id list they were drawn from (`all_ids_sha256`) and of their labeled ids.

How the published split files differ (read from each project's code):
  * STAC (google-research/ssl_detection, prepare_datasets/prepare_coco_data.py): seeds 1..5,
    percents 1/2/5/10/20; np.random.seed(seed); np.random.choice(N, floor(p% N)) over the
    file's image order, WITH replacement, so a split has fewer distinct images than
    floor(p% N); writes instances_train2017.{seed}@{percent}.json (+ '-unlabeled').
  * Soft Teacher (microsoft/SoftTeacher) and Consistent-Teacher (Adamdad/ConsistentTeacher),
    tools/dataset/semi_coco.py: STAC's script without replacement, seed fold + $RANDOM
    (prepare_coco_data.sh draws a new offset per run): their folds cannot be regenerated,
    only exchanged as files; same file names as STAC.
  * Unbiased Teacher (facebookresearch/unbiased-teacher, dataseed/COCO_supervision.txt):
    JSON {percent: {seed: [indices]}} for percents 0.01..10 and seeds 0..9 (its configs use
    seed 1), floor(p% N) indices into detectron2's train2017 list: images sorted by id, those without a
    non-crowd box dropped (N = 117,266). Its unlabeled set is the rest of those 117,266;
    the 1,021 images without boxes are in neither.
`import_split` turns any of these into our file, so the same labeled images train here.
"""
import fractions
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf

from rethink_st.data import image_ids as image_ids_lib
from rethink_st.errors import UserError

# The protocol's percents are 1, 2, 5, 10; 0.5 (Unbiased Teacher) and 20 (STAC) are accepted.
# Anything else is most likely a typo (0.1 for 10%).
PERCENTS = (1, 2, 5, 10)
ALLOWED_PERCENTS = (0.5, 1, 2, 5, 10, 20)
NUM_FOLDS = 5
MAX_FOLDS = 10
PROTOCOL = 'coco-standard'
RULE = ('ids sorted increasingly; labeled = sorted(ids[numpy.random.default_rng(fold)'
        '.permutation(len(ids))[:max(1, floor(percent * len(ids) / 100))]])')
UT_RULE = ('Unbiased Teacher COCO_supervision.txt [percent][seed] indices into the image ids '
           'sorted increasingly, keeping images with at least one non-crowd annotation')


# ----------------------------------------------------------------------------- the rule
def percent_name(percent: float) -> str:
  """'1' for 1, '0.5' for 0.5: how file names and messages write a percent."""
  return f'{float(percent):g}'


def check_percent(percent: Any, where: str) -> float:
  """`percent` as a float, or one UserError line naming `where` unless it is allowed."""
  try:
    value = float(percent)
  except (TypeError, ValueError):
    value = None
  if isinstance(percent, bool) or value not in ALLOWED_PERCENTS:
    raise UserError(f'{where}={percent!r}: not a percent of the SSOD protocols; use one of '
                    f'{", ".join(percent_name(p) for p in ALLOWED_PERCENTS)} '
                    '(percent of the images labeled, e.g. 1 for 1%)')
  return value


def check_fold(fold: Any, where: str, num_folds: int = MAX_FOLDS) -> int:
  """`fold` as an int in 1..num_folds, or one UserError line naming `where`."""
  if isinstance(fold, bool) or not isinstance(fold, (int, np.integer, str)) or not (
      str(fold).strip().isdigit() and 1 <= int(fold) <= num_folds):
    raise UserError(f'{where}={fold!r}: a fold is an integer from 1 to {num_folds}')
  return int(fold)


def num_labeled(percent: float, num_images: int) -> int:
  """max(1, floor(percent * num_images / 100)), in exact arithmetic."""
  share = fractions.Fraction(percent_name(percent)) * int(num_images) / 100
  return max(1, math.floor(share))


def fold_labeled_ids(ids: Sequence[Any], percent: float, fold: int) -> List[Any]:
  """The labeled ids of (percent, fold) by our rule (module docstring), sorted. The order of
  `ids` does not matter; duplicates count once."""
  ordered = image_ids_lib.sort_ids(ids, 'image ids')
  order = np.random.default_rng(int(fold)).permutation(len(ordered))
  chosen = order[:num_labeled(percent, len(ordered))]
  return sorted(ordered[i] for i in chosen)


def split_file_name(percent: float, fold: int) -> str:
  return f'coco_standard_{percent_name(percent)}pct_fold{int(fold)}.json'


@gin.configurable(module='rethink_st.data.ssod_splits')
def ssod_split_file(splits_dir: str, percent: float, fold: int = 1) -> str:
  """The image-id file of COCO-standard (percent, fold) in `splits_dir` (as
  bin/make_ssod_splits.py writes it), for a source's `image_ids_file`:

      coco_train/rethink_st.data.sources.tfds_source.image_ids_file = \\
          @coco_standard/rethink_st.data.ssod_splits.ssod_split_file()

  A percent not in ALLOWED_PERCENTS, a fold outside 1..MAX_FOLDS, a missing folder or file,
  or a file for another (percent, fold) is one UserError line naming the binding."""
  where = 'ssod_split_file'
  percent = check_percent(percent, f'{where}.percent')
  fold = check_fold(fold, f'{where}.fold')
  if not isinstance(splits_dir, str) or not tf.io.gfile.isdir(splits_dir):
    raise UserError(f'{where}.splits_dir={splits_dir!r}: no such folder (write it with '
                    'python bin/make_ssod_splits.py --output_dir=...)')
  path = os.path.join(splits_dir, split_file_name(percent, fold))
  _, meta = image_ids_lib.read_image_ids_file(path, f'{where}(percent={percent_name(percent)},'
                                              f' fold={fold})')
  if (float(meta.get('percent', -1)), meta.get('fold')) != (percent, fold):
    raise UserError(f'{where}: {path} holds percent={meta.get("percent")!r}, '
                    f'fold={meta.get("fold")!r}, not percent={percent_name(percent)}, '
                    f'fold={fold}')
  return path


# ------------------------------------------------------------------------ reading ids
def read_coco_image_ids(annotations: str, where: str = '--annotations'
                        ) -> Tuple[List[Any], List[Any]]:
  """(every image id of a COCO JSON, sorted; the ids of images with at least one non-crowd
  annotation, sorted: detectron2's training list, which Unbiased Teacher indexes)."""
  if not annotations or not tf.io.gfile.exists(annotations):
    raise UserError(f'{where}={annotations}: no such file (a COCO JSON such as '
                    'annotations/instances_train2017.json)')
  try:
    with tf.io.gfile.GFile(annotations, 'r') as f:
      data = json.loads(f.read())
  except json.JSONDecodeError as e:
    raise UserError(f'{where}={annotations}: not JSON (line {e.lineno}, column {e.colno}: '
                    f'{e.msg})') from None
  except (OSError, UnicodeDecodeError, tf.errors.OpError) as e:
    raise UserError(f'{where}={annotations}: cannot read it ({type(e).__name__})') from None
  if not isinstance(data, dict) or not isinstance(data.get('images'), list):
    raise UserError(f'{where}={annotations}: not a COCO JSON (no "images" list)')
  try:
    ids = [image['id'] for image in data['images']]
  except (TypeError, KeyError):
    raise UserError(f'{where}={annotations}: an entry of "images" has no "id"') from None
  if not ids:
    raise UserError(f'{where}={annotations}: "images" is empty')
  with_boxes = {a.get('image_id') for a in data.get('annotations') or []
                if isinstance(a, dict) and not a.get('iscrowd', 0)}
  all_ids = image_ids_lib.sort_ids(ids, f'{where}={annotations}')
  return all_ids, [i for i in all_ids if i in with_boxes]


def read_tfds_image_ids(name: str, split: str, data_dir: Optional[str]) -> List[Any]:
  """Every source_id of a TFDS split (COCO's image ids for coco/2017), sorted. Reads the
  split's records once (images are not decoded); for coco/2017 train that is ~19 GB, so a
  COCO JSON (--annotations) is much faster when you have it."""
  from rethink_st.data import tfds_source  # pylint: disable=import-outside-toplevel
  source = tfds_source.tfds_source(name, split, data_dir)
  ids = []
  for source_id in source.source_ids().batch(4096).as_numpy_iterator():
    ids.extend(s.decode() for s in source_id)
    print(f'  read {len(ids)} image ids of {source.name}', flush=True)
  if not ids:
    raise UserError(f'{source.name}: the split is empty')
  return image_ids_lib.sort_ids(ids, source.name)


# ----------------------------------------------------------------------- writing files
def _id_list(annotations: Optional[str], tfds_name: str, tfds_split: str,
             tfds_data_dir: Optional[str]) -> Tuple[List[Any], List[Any], str]:
  """(all ids, ids with a non-crowd box or None, what they were read from)."""
  if annotations:
    all_ids, with_boxes = read_coco_image_ids(annotations)
    return all_ids, with_boxes, os.path.basename(annotations)
  ids = read_tfds_image_ids(tfds_name, tfds_split, tfds_data_dir)
  return ids, None, f'tfds:{tfds_name}:{tfds_split}'


def _write_split(output_dir: str, labeled: Sequence[Any], all_ids: Sequence[Any],
                 percent: float, fold: int, drawn_from: str, rule: str,
                 **origin: Any) -> Dict[str, Any]:
  path = os.path.join(output_dir, split_file_name(percent, fold))
  content = image_ids_lib.write_image_ids_file(
      path, labeled, len(all_ids), protocol=PROTOCOL, percent=float(percent), fold=int(fold),
      drawn_from=drawn_from, all_ids_sha256=image_ids_lib.ids_sha256(all_ids), rule=rule,
      **origin)
  content['path'] = path
  return content


def make_coco_standard_splits(output_dir: str, all_ids: Sequence[Any],
                              percents: Sequence[float] = PERCENTS,
                              folds: int = NUM_FOLDS, drawn_from: str = '') -> List[Dict]:
  """Writes coco_standard_{percent}pct_fold{fold}.json for every percent and fold 1..folds
  (our rule) into output_dir; returns the files' contents (with 'path')."""
  ordered = image_ids_lib.sort_ids(all_ids, drawn_from or 'image ids')
  tf.io.gfile.makedirs(output_dir)
  return [_write_split(output_dir, fold_labeled_ids(ordered, p, f), ordered, p, f,
                       drawn_from, RULE)
          for p in percents for f in range(1, int(folds) + 1)]


def _external_ids(path: str, percent: float, fold: int,
                  with_boxes: Optional[List[Any]]) -> Tuple[List[Any], Dict[str, Any]]:
  """The labeled ids of an external split file, and how they were read (see import_split)."""
  where = f'--import_split={path}'
  if not tf.io.gfile.exists(path):
    raise UserError(f'{where}: no such file')
  try:
    with tf.io.gfile.GFile(path, 'r') as f:
      text = f.read()
  except (OSError, UnicodeDecodeError, tf.errors.OpError) as e:
    raise UserError(f'{where}: cannot read it ({type(e).__name__})') from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError:
    data = None
  if isinstance(data, dict) and isinstance(data.get('images'), list):
    ids = [image.get('id') for image in data['images'] if isinstance(image, dict)]
    return ids, {'imported_kind': 'coco-json (STAC / Soft Teacher / Consistent-Teacher)'}
  if isinstance(data, dict):
    # Unbiased Teacher's keys are the percent as a float string ("1.0", "10.0"; "0.01" is
    # 0.01%); dataseed files of other projects use the same layout.
    key = str(float(percent))
    if key not in data or not isinstance(data[key], dict):
      raise UserError(f'{where}: neither a COCO JSON (no "images") nor an Unbiased Teacher '
                      f'dataseed file with percent key {key!r} (it has '
                      f'{", ".join(sorted(map(str, data)))})')
    if str(fold) not in data[key]:
      raise UserError(f'{where}: no seed {str(fold)!r} under percent {key!r} (it has '
                      f'{", ".join(sorted(data[key]))}); --import_fold is the seed')
    if with_boxes is None:
      raise UserError(f'{where}: an Unbiased Teacher dataseed file indexes the images with '
                      'boxes of instances_train2017.json; give that file as --annotations')
    indices = data[key][str(fold)]
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int)
           or not 0 <= i < len(with_boxes)]
    if bad:
      raise UserError(f'{where}: index {bad[0]!r} under [{key!r}][{str(fold)!r}] is not in '
                      f'0..{len(with_boxes) - 1} (the {len(with_boxes)} images with a '
                      'non-crowd annotation of --annotations)')
    return [with_boxes[i] for i in indices], {
        'imported_kind': 'unbiased-teacher dataseed', 'imported_key': [key, str(fold)],
        'imported_rule': UT_RULE, 'imported_index_base': len(with_boxes)}
  if isinstance(data, list):
    return data, {'imported_kind': 'json list of image ids'}
  ids = [line.strip() for line in text.splitlines() if line.strip()]
  if not ids:
    raise UserError(f'{where}: empty')
  return ids, {'imported_kind': 'text, one image id per line'}


def import_split(output_dir: str, path: str, percent: float, fold: int,
                 all_ids: Sequence[Any], with_boxes: Optional[Sequence[Any]] = None,
                 drawn_from: str = '') -> Dict[str, Any]:
  """Writes another project's labeled set of (percent, fold) as our
  coco_standard_{percent}pct_fold{fold}.json, so the same images train here. `path` is
    * a COCO JSON whose "images" are the labeled ones: STAC's, Soft Teacher's and
      Consistent-Teacher's instances_train2017.{fold}@{percent}.json;
    * Unbiased Teacher's dataseed/COCO_supervision.txt: the indices under
      [str(float(percent))][str(fold)] (fold = their RANDOM_DATA_SEED, 1..9: our folds start
      at 1, so their seed 0 cannot be imported) into `with_boxes`;
    * a JSON list, or a text file, of image ids.
  Every imported id must be one of `all_ids` (the train2017 list)."""
  ids, origin = _external_ids(path, percent, fold,
                              None if with_boxes is None else list(with_boxes))
  ids = image_ids_lib.sort_ids(ids, f'--import_split={path}')
  ordered = image_ids_lib.sort_ids(all_ids, drawn_from or 'image ids')
  known = {str(i) for i in ordered}
  unknown = [i for i in ids if str(i) not in known]
  if unknown:
    raise UserError(f'--import_split={path}: {len(unknown)} of its {len(ids)} image ids are '
                    f'not in {drawn_from or "the image list"} (e.g. {unknown[0]!r})')
  tf.io.gfile.makedirs(output_dir)
  return _write_split(output_dir, ids, ordered, percent, fold, drawn_from,
                      rule=f'imported from {os.path.basename(path)}',
                      imported_from=path, **origin)


def run_make_ssod_splits(output_dir: str, *, annotations: Optional[str] = None,
                         tfds_name: str = 'coco/2017', tfds_split: str = 'train',
                         tfds_data_dir: Optional[str] = None,
                         percents: Sequence[Any] = PERCENTS, folds: Any = NUM_FOLDS,
                         import_split_file: Optional[str] = None,
                         import_percent: Any = None, import_fold: Any = 1) -> List[Dict]:
  """bin/make_ssod_splits.py: checks the flags (one UserError line naming the flag), reads
  the image ids (--annotations, else TFDS), writes the split files and prints a summary."""
  if not output_dir:
    raise UserError('--output_dir: required (the folder for the split files)')
  if import_split_file:
    percent = check_percent(import_percent, '--import_percent')
    fold = check_fold(import_fold, '--import_fold')
  else:
    percents = [check_percent(p, '--percents') for p in percents]
    if not percents:
      raise UserError('--percents: empty')
    folds = check_fold(folds, '--folds')
  all_ids, with_boxes, drawn_from = _id_list(annotations, tfds_name, tfds_split,
                                             tfds_data_dir)
  if import_split_file:
    written = [import_split(output_dir, import_split_file, percent, fold, all_ids,
                            with_boxes, drawn_from)]
  else:
    written = make_coco_standard_splits(output_dir, all_ids, percents, folds, drawn_from)
  print(f'{len(all_ids)} image ids from {drawn_from} (sha256 '
        f'{image_ids_lib.ids_sha256(all_ids)[:12]})')
  print('percent  fold  labeled  unlabeled  labeled_ids_sha256  file')
  for c in written:
    print(f'{percent_name(c["percent"]):>7}  {c["fold"]:>4}  {c["num_labeled"]:>7}  '
          f'{c["num_unlabeled"]:>9}  {c["labeled_ids_sha256"][:18]}  {c["path"]}')
  return written
