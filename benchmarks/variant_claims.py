"""Self-training variants against the matched control, paired by seed, from the suite's records.

    python benchmarks/variant_claims.py --cell=s4_f20 --seeds=0,1,2 \
        --record_dir=benchmarks/results/suite \
        --variant=threshold_0.3=benchmarks/results/suite_variants/s4_pseudo_threshold_0.3 \
        --results=benchmarks/results/suite_variants/s4_f20_vs_matched_control

A variant is the suite's <cell>_self_training run with other --gin_param bindings into its
own --out_dir and --record_dir (benchmarks/README.md, "Variants"). Its control is the
matched control in the variant's record_dir when it has one (a variant that changes the
control too, e.g. longer students), else the suite's (a variant that changes only the pseudo
labels shares the suite's teachers and controls). Each row is tested as claims.json tests a
claim (suite_claims.claim_result: differences paired by seed, holds when mean - 2 s.e. > 0),
the suite's own self-training cell first. Besides AP x 100 each row gives the means of
AR@100 (treatment and control) and of the pseudo labels' boxes per scene, precision and
recall. Seeds that finished one side only are listed, not paired.

Writes <results>.json and <results>.md. A flag that names no records is one line, before
anything is written.
"""
import json
import os
import sys
from typing import Dict, Mapping, Optional, Sequence

from absl import app
from absl import flags

import tables as tables_lib
from suite_claims import CLAIM_RULE
from suite_claims import claim_result
from suite_claims import mean_std
from suite_commands import DEFAULT_CONVERGENCE
from suite_commands import REPO
from suite_runner import known_budgets
from suite_runner import read_runs

SCALE = 'digits'
SUITE_LABEL = 'suite'
PSEUDO = ('pseudo_boxes_per_image', 'pseudo_precision', 'pseudo_recall')
FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('record_dir', 'benchmarks/results/suite', 'The suite\'s --record_dir '
                      '(or --out_dir): its <cell>_self_training and <cell>_matched_control.')
  flags.DEFINE_string('cell', 's4_f20', 'Cell prefix <policy>_f<pct>.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds to pair.')
  flags.DEFINE_multi_string('variant', [], 'label=record_dir of a variant\'s '
                            '<cell>_self_training (and <cell>_matched_control, if it has one).')
  flags.DEFINE_string('convergence', DEFAULT_CONVERGENCE, 'Runs of another step budget than '
                      'this file chose are left out, as in the suite\'s tables.')
  flags.DEFINE_string('results', None, 'Prefix of the .json / .md written.')


class VariantError(ValueError):
  """A bad flag (one line)."""


def _mean(runs: Mapping[str, dict], seeds: Sequence[int], key: str) -> Optional[float]:
  values = [runs[str(s)][key] for s in seeds if key in runs.get(str(s), {})]
  return mean_std(values)[0]


def compare(label: str, treatment: Mapping[str, dict], control: Mapping[str, dict],
            control_from: str, cell: str) -> dict:
  """One row: claim_result of treatment vs control plus AR@100 and pseudo-label means."""
  claim = tables_lib.Claim(f'{label}_vs_matched_control/{cell}', f'{cell}_self_training',
                           f'{cell}_matched_control', 'helps',
                           f'self-training ({label}) beats its matched control, {cell}',
                           'not in the paper: a variant of the suite\'s cell')
  row = claim_result(claim, SCALE, treatment, control)
  seeds = row['seeds']
  row.update(label=label, control_from=control_from,
             treatment_ar100=_mean(treatment, seeds, 'ARmax100'),
             control_ar100=_mean(control, seeds, 'ARmax100'),
             **{k: _mean(treatment, seeds, k) for k in PSEUDO})
  for k in ('treatment_ar100', 'control_ar100'):
    row[k] = None if row[k] is None else 100 * row[k]
  return row


def parse_variants(items: Sequence[str]) -> Dict[str, str]:
  pairs = {}
  for item in items:
    label, sep, where = item.partition('=')
    if not sep or not label or not where:
      raise VariantError(f'--variant={item}: expected label=record_dir')
    if label == SUITE_LABEL or label in pairs:
      raise VariantError(f'--variant={item}: the label {label} is taken')
    pairs[label] = where
  return pairs


def collect(record_dir: str, cell: str, seeds: Sequence[int], variants: Mapping[str, str],
            budgets: Optional[Mapping[str, int]] = None) -> dict:
  st, mc = f'{cell}_self_training', f'{cell}_matched_control'
  for name in (st, mc):
    if name not in tables_lib.CELLS or not tables_lib.CELLS[name].exists(SCALE):
      raise VariantError(f'--cell={cell}: no digit-scale cell {name}')

  def runs(name, where):
    return read_runs(name, SCALE, seeds, where, where, budgets)

  suite_mc = runs(mc, record_dir)
  sources = {SUITE_LABEL: record_dir, **variants}
  rows = []
  for label, where in sources.items():
    treatment = runs(st, where)
    if not treatment:
      flag = '--record_dir' if label == SUITE_LABEL else f'--variant={label}={where}'
      raise VariantError(f'{flag}: no finished {st} for seeds '
                         f'{",".join(map(str, seeds))} under {where}/{SCALE}/cells/')
    own = runs(mc, where) if label != SUITE_LABEL else {}
    control, control_from = (own, label) if own else (suite_mc, SUITE_LABEL)
    rows.append(compare(label, treatment, control, control_from, cell))
  def shown(path):   # no machine paths: the repository's folders relative to it
    full = os.path.abspath(path)
    return os.path.relpath(full, REPO) if full.startswith(REPO + os.sep) else path
  return {'cell': cell, 'seeds': list(seeds), 'rule': CLAIM_RULE,
          'metric': 'COCO AP x 100; AR@100 x 100; pseudo precision / recall as fractions',
          'sources': {k: shown(v) for k, v in sources.items()}, 'rows': rows}


def _f(value, fmt='.2f') -> str:
  return '-' if value is None else format(value, fmt)


def markdown(results: dict) -> str:
  lines = [f'# {results["cell"]}: self-training variants against the matched control',
           '', results['rule'], '',
           '| variant | control | n | ST AP per seed | MC AP per seed | ST - MC | bound | '
           'holds | AR@100 ST / MC | pseudo boxes / scene | precision | recall |',
           '| --- | --- | ---: | --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: |']
  for r in results['rows']:
    diff = _f(r['diff_mean']) + ('' if r['diff_std'] is None else f' ± {r["diff_std"]:.2f}')
    holds = r['holds'] if r['holds'] is not None else f'- ({r["reason"]})'
    per = lambda xs: ', '.join(f'{x:.2f}' for x in xs)  # noqa: E731
    pct = lambda x: '-' if x is None else f'{100 * x:.1f}%'  # noqa: E731
    lines.append(
        f'| {r["label"]} | {r["control_from"]} | {r["n"]} | {per(r["treatment_ap"])} | '
        f'{per(r["control_ap"])} | {diff} | {_f(r["bound"])} | {holds} | '
        f'{_f(r["treatment_ar100"], ".1f")} / {_f(r["control_ar100"], ".1f")} | '
        f'{_f(r["pseudo_boxes_per_image"])} | {pct(r["pseudo_precision"])} | '
        f'{pct(r["pseudo_recall"])} |')
    unpaired = {k: v for k, v in r['unpaired_seeds'].items() if v}
    if unpaired:
      lines.append(f'|  | unpaired seeds: {unpaired} | | | | | | | | | | |')
  return '\n'.join(lines) + '\n'


def run(record_dir: str, cell: str, seeds: Sequence, variants: Sequence[str],
        results: Optional[str], convergence: Optional[str] = None) -> dict:
  if not results:
    raise VariantError('--results: a path prefix is required')
  try:
    seeds = [int(s) for s in seeds]
  except ValueError:
    raise VariantError(f'--seeds={",".join(map(str, seeds))}: expected integers') from None
  if not os.path.isdir(record_dir):
    raise VariantError(f'--record_dir={record_dir}: no such folder')
  budgets = known_budgets(convergence) if convergence else {}
  data = collect(record_dir, cell, seeds, parse_variants(variants), budgets)
  os.makedirs(os.path.dirname(results) or '.', exist_ok=True)
  with open(results + '.json', 'w') as f:
    json.dump(data, f, indent=1)
  text = markdown(data)
  with open(results + '.md', 'w') as f:
    f.write(text)
  print(text, end='')
  return data


def main(argv):
  del argv
  try:
    run(FLAGS.record_dir, FLAGS.cell, FLAGS.seeds, FLAGS.variant, FLAGS.results,
        FLAGS.convergence)
  except VariantError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
