"""Seeded training streams: what makes the training input a function of (seed, index).

    Position(seed, step, stream)   where a seeded stream starts
    keyed_parser(parser, key)      the parser with every random draw keyed per element

`rethink_st.data.pipeline.build_input` builds the stream from these.

A seeded training stream (build_input's `position`, which run_train passes for a run with a
seed) is a pure function of (seed, element index), so that a resumed run reads exactly what the
uninterrupted run read. Saving the tf.data iterator with each checkpoint would do it too, but
the iterator holds the cache and the shuffle buffer: ~100 MB per checkpoint for the digit
teacher (2,000 decoded scenes), far more for COCO's buffers of images on every host. Instead:

  * Order: the source's seeded shuffle (build_input's `seed`, 0 unless bound), or after
    `cache` build_input's (its seed derived from the run's seed, the stream and the input
    pipeline), reshuffled each epoch from that seed: the same epochs on every run.
  * Augmentation: every random draw is stateless, keyed by (seed, stream, input pipeline,
    element index, draw number, and the iteration for a draw inside a loop). Model Garden's
    ops draw with tf.random.uniform / normal / shuffle, stateful ops whose hidden state
    starts afresh with every iterator and cannot be re-seeded per element inside tf.data;
    while the parser is traced for a seeded stream, those three names are bound to
    tf.random.stateless_* (`keyed_parser`, `_KeyedDraws`), and the traced function is
    checked to hold no stateful random op, so a draw added upstream (or a tf.image.random_*
    op) stops the run at start instead of making resume silently inexact.
  * Resume: the stream skips step x (global batch / input pipelines) elements BEFORE the
    parser, so skipped elements are not augmented. With `cache` they only pass through the
    shuffle: measured on 2 cores, skipping 51,200 cached digit scenes (step 3,200 at batch
    16) adds 0.2-0.6 s to the first batch. Without a cache (COCO) they are read and decoded
    (the Source decodes before this module sees an element): 12,800 digit scenes took
    2.8 s here; each host reads step x global batch / hosts records of its own shard.

Exact: the same seed, global batch, number of input pipelines (hosts) and replicas give every
pipeline the same elements with the same augmentation, resumed or not, at digit scale and at
full scale (multi-host: each host's stream is keyed by its input_pipeline_id and skips its own
share of its input_context shard); with op determinism the steps are then bit-identical too.
Not exact: a resume on another topology (more hosts or replicas: other shards, other
per-pipeline counts; the run goes on, with another input), and runs without a seed (stateful
draws and no skip, as before: a resumed run starts its input afresh). Stateless draws also
let the augmentation run in parallel under op determinism (a map function with stateful
random ops runs serially there): S2 and S4 1.6-1.8x faster on 2 cores.
"""
import dataclasses
from typing import Sequence
from unittest import mock

import tensorflow as tf

from rethink_st.errors import UserError


@dataclasses.dataclass(frozen=True)
class Position:
  """Where a seeded training stream starts (see the module docstring): run_train's `seed`
  and the global step the run resumes at (0 for a fresh run). `stream` keeps the streams of
  one run apart (the student's human and pseudo halves, joint training's classification
  batches), so that each draws its own shuffle and augmentation."""
  seed: int
  step: int = 0
  stream: str = 'main'

  def of(self, stream: str) -> 'Position':
    return dataclasses.replace(self, stream=stream)


# Random ops with a hidden state (tf.random.uniform and kin, tf.random.Generator's): a seeded
# stream's parser must hold none.
_STATEFUL_RANDOM_OPS = frozenset({
    'RandomUniform', 'RandomUniformInt', 'RandomStandardNormal', 'TruncatedNormal',
    'ParameterizedTruncatedNormal', 'RandomShuffle', 'RandomGamma', 'RandomPoisson',
    'RandomPoissonV2', 'Multinomial', 'StatefulUniform', 'StatefulUniformInt',
    'StatefulUniformFullInt', 'StatefulStandardNormalV2', 'StatefulTruncatedNormal',
    'StatefulRandomBinomial'})


class _KeyedDraws:
  """Stand-ins for tf.random.uniform / normal / shuffle that draw from stateless ops: the
  n-th draw traced gets the seed fold_in(key, n), and inside a loop body (Model Garden's
  TranslateY_Only_BBoxes loops over the boxes) also the iteration (while_v2's loop counter,
  the body's first input), so an element's draws are a function of its key alone."""

  def __init__(self, key: tf.Tensor):
    self.key, self.count = key, 0

  def _seed(self) -> tf.Tensor:
    self.count += 1
    seed = tf.random.experimental.stateless_fold_in(self.key, self.count)
    graph = tf.compat.v1.get_default_graph()
    while graph is not None:
      name = getattr(graph, 'name', '') or ''
      if type(graph).__name__ == 'WhileBodyFuncGraph':
        counter = graph.inputs[0] if graph.inputs else None
        if counter is None or not counter.name.endswith('loop_counter:0'):
          raise UserError(f'build_input: a random draw inside the loop {name} cannot be keyed '
                          f'per iteration (no loop counter); draw before the loop')
        seed = tf.random.experimental.stateless_fold_in(seed, counter)
      elif 'while_cond' in name:
        raise UserError(f'build_input: a random draw in the condition of the loop {name} '
                        f'cannot be keyed per iteration; draw before the loop')
      graph = getattr(graph, 'outer_graph', None)
    return seed

  def uniform(self, shape, minval=0, maxval=None, dtype=tf.float32, seed=None, name=None):
    del seed
    return tf.random.stateless_uniform(shape, self._seed(), minval, maxval, dtype, name=name)

  def normal(self, shape, mean=0.0, stddev=1.0, dtype=tf.float32, seed=None, name=None):
    del seed
    return tf.random.stateless_normal(shape, self._seed(), mean, stddev, dtype, name=name)

  def shuffle(self, value, seed=None, name=None):
    del seed
    return tf.random.experimental.stateless_shuffle(value, self._seed(), name=name)


def _stateful_random_ops(graph) -> set:
  """Stateful random op types in `graph` and in every function it holds (cond branches,
  loop bodies)."""
  graph_def = graph.as_graph_def()
  ops = {node.op for node in graph_def.node}
  for function in graph_def.library.function:
    ops.update(node.op for node in function.node_def)
  return ops & _STATEFUL_RANDOM_OPS


def keyed_parser(parser, key: Sequence[int]):
  """`parser` as a map function of (index, example) whose random draws are keyed by
  fold_in(key, index) (`_KeyedDraws`); tracing it fails if a stateful random op is left."""
  key = [int(k) for k in key]

  @tf.autograph.experimental.do_not_convert
  def parse(index, example):
    draws = _KeyedDraws(tf.random.experimental.stateless_fold_in(
        tf.constant(key, tf.int64), index))
    # Bound while this function is traced (in the thread building the dataset); the traced
    # graph keeps the stateless ops, nothing else sees the names afterwards.
    with mock.patch.multiple(tf.random, uniform=draws.uniform, normal=draws.normal,
                             shuffle=draws.shuffle):
      out = parser(example)
    left = _stateful_random_ops(tf.compat.v1.get_default_graph())
    if left:
      raise UserError(
          f'build_input: a seeded stream keys every random draw of the augmentation per '
          f'image, but the traced parser holds stateful random ops ({", ".join(sorted(left))}) '
          f'that do not come from tf.random.uniform/normal/shuffle; draw them with '
          f'tf.random.stateless_*, or train without run_train.seed')
    return out
  return parse
