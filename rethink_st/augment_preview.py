"""PNG grids of an augmentation policy: each example, then several augmented draws of it,
with boxes, instance masks and the semantic mask drawn (rethink_st.drawing)."""
import itertools
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from rethink_st import augment as augment_lib
from rethink_st import drawing
from rethink_st.data import features as F
from rethink_st.errors import UserError


def _examples(source_or_examples, num: int) -> List[Dict[str, Any]]:
  if hasattr(source_or_examples, 'dataset'):
    ds = source_or_examples.dataset(shuffle=False)
    return [dict(ex) for ex in itertools.islice(ds.as_numpy_iterator(), num)]
  return [dict(ex) for ex in itertools.islice(iter(source_or_examples), num)]


def _picture(example, with_semantic: bool, scale: int) -> np.ndarray:
  def get(key):
    value = example.get(key)
    return None if value is None else np.asarray(value)
  if with_semantic:
    return drawing.draw_example(get(F.IMAGE), semantic_mask=get(F.SEMANTIC_MASK), scale=scale)
  return drawing.draw_example(get(F.IMAGE), get(F.BOXES), get(F.CLASSES),
                              scores=get(F.SCORES), instance_masks=get(F.INSTANCE_MASKS),
                              scale=scale)


def show_policy_grid(source_or_examples: Union[Any, Iterable[Dict[str, Any]]], policy: str,
                     path: str, n: int = 5, *, num_examples: int = 3,
                     output_size: Optional[Sequence[int]] = None, seed: int = 0,
                     scale: int = 2, **augment_kwargs) -> str:
  """Writes a PNG at `path`: for each of `num_examples` examples a row with the original
  and `n` augmented draws of `policy` ('s1'..'s4'), boxes and instance masks drawn; when the
  examples have semantic masks, a second row shows them (white = IGNORE_LABEL).

  `source_or_examples` is a Source (its first examples, unshuffled) or an iterable of
  decoded example dicts (numpy or tensors). `output_size` defaults to the first image's
  size. Returns `path`.
  """
  examples = _examples(source_or_examples, num_examples)
  if not examples:
    raise UserError(f'show_policy_grid: {source_or_examples!r} has no examples')
  if output_size is None:
    output_size = tuple(int(d) for d in np.shape(examples[0][F.IMAGE])[:2])
  aug = augment_lib.Augment(policy, output_size=output_size, **augment_kwargs)
  tf.random.set_seed(seed)
  pictures, titles = [], []
  for i, example in enumerate(examples):
    keep = {k: v for k, v in example.items() if k in F.__dict__.values() or k in (
        F.IMAGE,)}
    tensors = {k: tf.convert_to_tensor(v) for k, v in keep.items()
               if not isinstance(v, (bytes, str))}
    draws = [aug(tensors, training=True) for _ in range(n)]
    draws = [{k: v.numpy() for k, v in d.items()} for d in draws]
    rows = [False] + ([True] if F.SEMANTIC_MASK in example else [])
    for semantic in rows:
      pictures.append(_picture(example, semantic, scale))
      titles.append(f'#{i} {"semantic" if semantic else "original"}')
      for j, d in enumerate(draws):
        pictures.append(_picture(d, semantic, scale))
        titles.append(f'{policy} draw {j + 1}: {len(d[F.BOXES])} boxes')
  return drawing.save_grid(pictures, path, ncols=n + 1, titles=titles)
