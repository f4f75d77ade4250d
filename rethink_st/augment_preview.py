"""PNG grids of an augmentation policy: each example, then several augmented draws of it,
with boxes, instance masks and the semantic mask drawn (rethink_st.drawing)."""
import itertools
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import gin
import numpy as np
import tensorflow as tf

from rethink_st import augment as augment_lib
from rethink_st import cli
from rethink_st import config_io
from rethink_st import drawing
from rethink_st import features as F
from rethink_st.data import sources
from rethink_st.errors import UserError


CONTRACT_KEYS = frozenset(F.DETECTION_KEYS + (F.INSTANCE_MASKS, F.SEMANTIC_MASK, F.LABEL,
                                               F.SCORES))


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
    tensors = {k: tf.convert_to_tensor(v) for k, v in example.items() if k in CONTRACT_KEYS}
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


@gin.configurable(denylist=['output_dir', 'config_dir'])
def run_show_augment(output_dir: Optional[str], *, source=None,
                     policies: Sequence[str] = ('s1', 's2', 's3', 's4'), n: int = 5,
                     num_examples: int = 3, output_size: Optional[Sequence[int]] = None,
                     seed: int = 0, config_dir: Optional[str] = None) -> List[str]:
  """Writes `{output_dir}/augment_{policy}.png` for each policy (see show_policy_grid);
  `source` defaults to the digit scenes' train split. Augment's own gin bindings (e.g.
  translate_const) apply to every policy. operative_config.gin goes to `config_dir`
  (default output_dir). Returns the paths."""
  if source is None:
    source = sources.digit_scenes_source('train')
  output_dir = output_dir or os.path.join('runs', 'augment')
  examples = _examples(source, num_examples)
  paths = [show_policy_grid(examples, policy, os.path.join(output_dir, f'augment_{policy}.png'),
                            n, num_examples=num_examples, output_size=output_size, seed=seed)
           for policy in policies]
  config_io.save_operative_config(config_dir or output_dir)
  return paths


# Per policy, the digit-scale file: Model Garden's pixel constants (sized for 640 px images)
# scaled to the 128 px digit scenes. The base files' constants move S2/S3 content by up to
# 250 px, which pushes whole 128 px scenes out of frame.
DIGIT_SCALE_GIN = os.path.join('gin_configs', 'digits', 'augment_{policy}.gin')


def digit_scale_gin_file(policy: str) -> str:
  return os.path.join(config_io.REPO_ROOT, DIGIT_SCALE_GIN.format(policy=policy))


def run_show_augment_digit_scale(output_dir: Optional[str],
                                 gin_params: Sequence[str] = ()) -> List[str]:
  """bin/show_augment.py without --gin_file: each policy under its own digit-scale file.

  S1..S4 have different pixel constants, so one gin config cannot hold all four: for each
  policy (of run_show_augment.policies, if a --gin_param binds it) the gin config is
  gin_configs/digits/augment_<policy>.gin + `gin_params`, saved to
  `{output_dir}/<policy>/config.gin` (and operative_config.gin), and run_show_augment draws
  that policy to `{output_dir}/augment_<policy>.png`. Returns the PNG paths.
  """
  output_dir = output_dir or os.path.join('runs', 'augment')
  paths = []
  for policy in augment_lib.POLICIES:
    gin.clear_config()
    cli.register_configurables()
    config_io.parse_gin([digit_scale_gin_file(policy)], gin_params)
    try:
      wanted = [str(p).lower() for p in gin.query_parameter(
          'rethink_st.augment_preview.run_show_augment.policies')]
    except ValueError:  # not bound: all of them
      wanted = list(augment_lib.POLICIES)
    unknown = [p for p in wanted if p not in augment_lib.POLICIES]
    if unknown:
      raise UserError(f'run_show_augment.policies: unknown {", ".join(map(repr, unknown))}; '
                      f'choose from {", ".join(augment_lib.POLICIES)}')
    if policy not in wanted:
      continue
    config_dir = os.path.join(output_dir, policy)
    config_io.save_config(config_dir)
    paths += run_show_augment(output_dir, policies=[policy], config_dir=config_dir)
  return paths
