"""Image-id files: a named set of a dataset's images (e.g. the labeled images of one
semi-supervised fold), as one small JSON file that any source can keep or drop by binding
`image_ids_file` (rethink_st/data/source_base.py).

A file holds, besides provenance written by its maker (bin/make_ssod_splits.py):

    {"format": "rethink_st.image_ids/1",
     "num_images": 118287,            # size of the id list the set was drawn from
     "num_labeled": 1182,
     "labeled_ids": [9, 25, ...],     # sorted; integers (COCO image ids) or strings
     "labeled_ids_sha256": "..."}     # of the ids, one per line, in this order

A source's example belongs to the set when its `source_id` equals str(id): COCO's image id
for TFDS `coco/2017` and for `coco_json_source`.
"""
import hashlib
import json
import re
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

import tensorflow as tf

from rethink_st.errors import UserError

FORMAT = 'rethink_st.image_ids/1'
ImageId = Union[int, str]


def _canonical_int(value: Any):
  """`value` as an int if it is one, or a string that writes one canonically ('42', not
  '042'); else None."""
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, str) and re.fullmatch(r'-?[0-9]+', value) and str(int(value)) == value:
    return int(value)
  return None


def sort_ids(ids: Iterable[Any], where: str) -> List[ImageId]:
  """The distinct ids in increasing order: integers numerically (COCO ids, also when given as
  strings, as TFDS gives them), other strings as strings. Anything else, or integers mixed
  with other strings, is a UserError naming `where`."""
  ids = list(ids)
  as_int = [_canonical_int(i) for i in ids]
  if all(i is not None for i in as_int):
    return sorted(set(as_int))
  if all(isinstance(i, str) for i in ids):
    return sorted(set(ids))
  bad = next(i for i in ids if not isinstance(i, str))
  raise UserError(f'{where}: image ids must be all integers or all strings; found '
                  f'{bad!r} ({type(bad).__name__}) among strings')


def ids_sha256(ids: Sequence[ImageId]) -> str:
  """sha256 of the ids as text, one per line, in the given order (sorted in the files)."""
  return hashlib.sha256(''.join(f'{i}\n' for i in ids).encode()).hexdigest()


def write_image_ids_file(path: str, labeled_ids: Sequence[ImageId], num_images: int,
                         **meta: Any) -> Dict[str, Any]:
  """Writes the file (atomically: a temporary file, then a rename) and returns its content."""
  labeled = sort_ids(labeled_ids, path)
  content = dict(format=FORMAT, **meta, num_images=int(num_images),
                 num_labeled=len(labeled), num_unlabeled=int(num_images) - len(labeled),
                 labeled_ids_sha256=ids_sha256(labeled), labeled_ids=labeled)
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    # Metadata one key per line, the ids on one line: small, and readable with `head`.
    head = {k: v for k, v in content.items() if k != 'labeled_ids'}
    lines = [f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in head.items()]
    lines.append(f'  "labeled_ids": {json.dumps(labeled)}')
    f.write('{\n' + ',\n'.join(lines) + '\n}\n')
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return content


def read_image_ids_file(path: str, where: str) -> Tuple[List[str], Dict[str, Any]]:
  """(the labeled ids as source_id strings, the file's other fields). A missing, unreadable
  or malformed file is one UserError line starting with `<where>=<path>`."""
  prefix = f'{where}={path}'
  if not isinstance(path, str) or not path:
    raise UserError(f'{prefix}: must be the path of an image-id file '
                    '(bin/make_ssod_splits.py writes them)')
  if not tf.io.gfile.exists(path):
    raise UserError(f'{prefix}: no such file (bin/make_ssod_splits.py writes them)')
  try:
    with tf.io.gfile.GFile(path, 'r') as f:
      content = json.loads(f.read())
  except (OSError, UnicodeDecodeError, tf.errors.OpError) as e:
    raise UserError(f'{prefix}: cannot read it ({type(e).__name__})') from None
  except json.JSONDecodeError as e:
    raise UserError(f'{prefix}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})') from None
  if not isinstance(content, dict) or content.get('format') != FORMAT:
    raise UserError(f'{prefix}: not an image-id file (no "format": "{FORMAT}"; '
                    'bin/make_ssod_splits.py writes them, and --import_split converts '
                    'other projects\' split files)')
  ids = content.get('labeled_ids')
  if not isinstance(ids, list) or not ids:
    raise UserError(f'{prefix}: "labeled_ids" must be a non-empty list')
  if any(isinstance(i, bool) or not isinstance(i, (int, str)) for i in ids):
    raise UserError(f'{prefix}: "labeled_ids" must hold integers or strings')
  meta = {k: v for k, v in content.items() if k != 'labeled_ids'}
  return list(dict.fromkeys(str(i) for i in ids)), meta
