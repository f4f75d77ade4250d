"""run_verify: is a pseudo-label folder that N independent hosts wrote complete? (bin/pseudo_label.py
--verify). Merges it if every host is done but nothing merged it yet.

Each host i of N (`--num_shards=N --shard_index=i`) writes its chunks and, when it finishes,
`host-<i>-of-<N>.done`; the host that finds all N done files merges the counters into
stats.json (and the detections into pseudo_coco.json). A host killed on the way leaves its
complete chunks, maybe an incomplete `.tmp` one, and no done file: rerunning the same command
resumes it. This reports, per host: done or not, complete chunks, images labeled, unreadable
images skipped, and a chunk cut short; and, with the unlabeled source (the gin files' or
`--unlabeled`), whether labeled + unreadable images add up to the source's size, so that no
image is missing and none was labeled twice.
"""
import os
from typing import Any, Dict, Optional

import gin
import tensorflow as tf

from rethink_st.data import sources
from rethink_st.errors import UserError
from rethink_st.pseudo_label import shards


def status(out_dir: str) -> Dict[str, Any]:
  """Per-host completeness of a pseudo-label folder, from its files alone."""
  meta = shards.read_meta(out_dir)
  n = int(meta['num_shards'])
  hosts = []
  for i in range(n):
    stats = shards.host_stats(out_dir, i, n)
    cut = tf.io.gfile.glob(os.path.join(out_dir, f'pseudo-{i:05d}-of-{n:05d}-*.tfrecord.tmp'))
    hosts.append({'shard_index': i, 'done': tf.io.gfile.exists(
        os.path.join(out_dir, f'host-{i:05d}-of-{n:05d}.done')),
                  'chunks': len(shards.complete_chunks(out_dir, i, n)),
                  'images': int(stats.get('images', 0)),
                  'unreadable_skipped': int(stats.get('unreadable_skipped', 0)),
                  'chunk_cut_short': bool(cut)})
  return {'num_shards': n, 'hosts': hosts,
          'not_done': [h['shard_index'] for h in hosts if not h['done']],
          'images': sum(h['images'] for h in hosts),
          'unreadable_skipped': sum(h['unreadable_skipped'] for h in hosts),
          'merged': tf.io.gfile.exists(os.path.join(out_dir, 'stats.json'))}


def count_source(source) -> Optional[int]:
  """The images a labeling run of `source` covers (all hosts), counted without decoding;
  None when the source keeps a subset (fraction, image-id file) that only decoding tells."""
  if source.fraction < 1.0 or source.image_ids_file is not None:
    return None
  return int(source.source_ids().reduce(0, lambda n, _: n + 1).numpy())


def _unlabeled_source():
  """The unlabeled source the gin files (or --unlabeled) bind for run_pseudo_label, or None."""
  from rethink_st.pseudo_label import run as run_lib  # pylint: disable=g-import-not-at-top
  bindings = gin.get_bindings(run_lib.run_pseudo_label)
  source = bindings.get('unlabeled_source')
  if isinstance(source, str):
    source = sources.source_from_spec(source, 'run_pseudo_label.unlabeled_source')
  return source


def run_verify(output_dir: str) -> Dict[str, Any]:
  """Prints the folder's per-host status; merges it when all hosts are done and no host has
  merged it; counts the unlabeled source when gin binds one. Returns the status; one
  UserError line if a host is not done or the counts do not add up."""
  if not output_dir or not tf.io.gfile.exists(os.path.join(output_dir, 'meta.json')):
    raise UserError(f'--output_dir={output_dir}: not a pseudo-label folder (no meta.json)')
  report = status(output_dir)
  for h in report['hosts']:
    print(f'[verify] host {h["shard_index"]}/{report["num_shards"]}: '
          f'{"done" if h["done"] else "NOT DONE"}, {h["chunks"]} chunks, {h["images"]} images, '
          f'{h["unreadable_skipped"]} unreadable skipped'
          + (', a chunk cut short (resumes on rerun)' if h['chunk_cut_short'] else ''),
          flush=True)
  if report['not_done']:
    hosts = ', '.join(f'--shard_index={i}' for i in report['not_done'])
    raise UserError(f'--output_dir={output_dir}: {len(report["not_done"])} of '
                    f'{report["num_shards"]} hosts are not done; rerun their commands ({hosts} '
                    f'with --num_shards={report["num_shards"]}): they resume where they stopped')
  if not report['merged']:
    shards.merge_outputs(output_dir)
    report['merged'] = True
    print(f'[verify] all hosts done; merged stats.json and pseudo_coco.json', flush=True)
  source = _unlabeled_source()
  expected = count_source(source) if source is not None else None
  report['source_images'] = expected
  covered = report['images'] + report['unreadable_skipped']
  if expected is not None and covered != expected:
    raise UserError(f'--output_dir={output_dir}: {report["images"]} images labeled + '
                    f'{report["unreadable_skipped"]} unreadable = {covered}, but '
                    f'{source.name} has {expected}; was it labeled with another source or '
                    '--num_shards?')
  of = f' of {source.name}\'s {expected}' if expected is not None else ''
  print(f'[verify] complete: {report["images"]} images labeled, '
        f'{report["unreadable_skipped"]} unreadable skipped ({covered}{of})', flush=True)
  return report
