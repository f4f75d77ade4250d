"""Self-training variants against the matched control, paired by seed, from the suite's records.

    python benchmarks/variant_claims.py --cell=s4_f20 --seeds=0,1,2 \
        --record_dir=benchmarks/results/suite \
        --variant=threshold_0.3=benchmarks/results/suite_variants/s4_pseudo_threshold_0.3 \
        --variant=students_4800=benchmarks/results/suite_variants/s4_student_steps_4800 \
        --shared_control=threshold_0.3 --results=runs/variants/s4_f20_vs_matched_control

A variant is the suite's <cell>_self_training run with other --gin_param bindings into its
own --out_dir and --record_dir (benchmarks/README.md, "Variants"). Its control is the
matched control in the variant's own record_dir (a variant that changes the control too,
e.g. longer students, runs both cells), or, for a variant named in --shared_control, the
suite's (its bindings leave the control as it is: the pseudo labels' threshold or ignore
band do not matter at pseudo-loss weight 0). Each row is tested as claims.json tests a claim
(suite_claims.claim_result: differences paired by seed, holds when mean - 2 s.e. > 0), the
suite's own self-training cell first. A paired seed whose two runs record different teacher
AP started from different teachers (claim_result's other_teacher): an error here, where the
suite's claims leave it out. Besides AP x 100 each row gives, over its paired seeds, the
means of AR@100 (treatment and control) and of the pseudo labels' boxes per scene, precision
and recall, and the commits the runs came from. Seeds that finished one side only are listed
under the table, not paired.

Writes <results>.json (with the command that made it) and <results>.md. A bad flag, or one
that names no records, is one line before anything is written.
"""
import json
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence

from absl import app
from absl import flags

import tables as tables_lib
from suite_claims import CLAIM_RULE
from suite_claims import claim_result
from suite_claims import mean_std
from suite_commands import DEFAULT_CONVERGENCE
from suite_commands import REPO
from suite_runner import known_budgets
from suite_runner import portable_source
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
                            '<cell>_self_training and <cell>_matched_control.')
  flags.DEFINE_list('shared_control', [], 'Labels of variants compared with the suite\'s '
                    'matched control (their bindings leave the control unchanged).')
  flags.DEFINE_string('convergence', DEFAULT_CONVERGENCE, 'Runs of another step budget than '
                      'this file chose are left out, as in the suite\'s tables.')
  flags.DEFINE_string('results', None, 'Prefix of the .json / .md written.')


class VariantError(ValueError):
  """A bad flag (one line)."""


def _mean(runs: Mapping[str, dict], seeds: Sequence[int], key: str) -> Optional[float]:
  """Mean of `key` over `seeds`; None unless every seed's run has it."""
  values = [runs[str(s)][key] for s in seeds if key in runs.get(str(s), {})]
  return mean_std(values)[0] if len(values) == len(seeds) else None


def check_same_teacher(label: str, row: dict) -> None:
  """A variant's seeds must pair: claim_result's other_teacher (seeds whose two runs record
  different teacher AP) is an error here, where the suite's claims only leave them out."""
  if row['other_teacher']:
    x = row['other_teacher'][0]
    raise VariantError(f'{label} seed {x["seed"]}: the self-training run\'s teacher has '
                       f'{row["metric"]} {x["treatment_teacher"]:.2f} and the matched control\'s '
                       f'{x["control_teacher"]:.2f}: not the same teacher')


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


def parse_variants(items: Sequence[str], shared: Sequence[str] = ()) -> Dict[str, str]:
  pairs = {}
  for item in items:
    label, sep, where = item.partition('=')
    if not sep or not label or not where:
      raise VariantError(f'--variant={item}: expected label=record_dir')
    if label == SUITE_LABEL or label in pairs:
      raise VariantError(f'--variant={item}: the label {label} is taken')
    pairs[label] = where
  unknown = [x for x in shared if x not in pairs]
  if unknown:
    raise VariantError(f'--shared_control={",".join(shared)}: no --variant labeled '
                       f'{", ".join(unknown)}')
  return pairs


def parse_seed_list(seeds: Sequence) -> List[int]:
  text = ','.join(map(str, seeds))
  try:
    out = [int(s) for s in seeds]
  except ValueError:
    raise VariantError(f'--seeds={text}: expected integers') from None
  if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
    raise VariantError(f'--seeds={text}: expected distinct seeds >= 0')
  return out


def shown(path: str) -> str:
  """A folder as the outputs name it: relative to the repository, else <elsewhere>/<name>."""
  full = os.path.abspath(path)
  if full.startswith(REPO + os.sep):
    return os.path.relpath(full, REPO)
  return portable_source(full)


def collect(record_dir: str, cell: str, seeds: Sequence[int], variants: Mapping[str, str],
            budgets: Optional[Mapping[str, int]] = None, shared: Sequence[str] = ()) -> dict:
  st, mc = f'{cell}_self_training', f'{cell}_matched_control'
  for name in (st, mc):
    if name not in tables_lib.CELLS or not tables_lib.CELLS[name].exists(SCALE):
      raise VariantError(f'--cell={cell}: no digit-scale cell {name}')

  def runs(name, where):
    return read_runs(name, SCALE, seeds, where, where, budgets)

  sources = {SUITE_LABEL: record_dir, **variants}
  rows = []
  for label, where in sources.items():
    flag = '--record_dir' if label == SUITE_LABEL else f'--variant={label}={where}'
    treatment = runs(st, where)
    if not treatment:
      raise VariantError(f'{flag}: no finished {st} for seeds '
                         f'{",".join(map(str, seeds))} under {where}/{SCALE}/cells/')
    control_from = SUITE_LABEL if label in shared else label
    if control_from == SUITE_LABEL:
      flag, where = '--record_dir', record_dir
    control = runs(mc, where)
    if not control:
      hint = (f'; if {label}\'s bindings leave the control unchanged, pass '
              f'--shared_control={label}' if label != SUITE_LABEL else '')
      raise VariantError(f'{flag}: no finished {mc} for seeds {",".join(map(str, seeds))} '
                         f'under {where}/{SCALE}/cells/{hint}')
    row = compare(label, treatment, control, control_from, cell)
    check_same_teacher(label, row)
    rows.append(row)
  return {'cell': cell, 'seeds': list(seeds), 'rule': CLAIM_RULE,
          'metric': 'COCO AP x 100; AR@100 x 100; pseudo precision / recall as fractions',
          'sources': {k: shown(v) for k, v in sources.items()}, 'rows': rows}


def _f(value, fmt='.2f') -> str:
  return '-' if value is None else format(value, fmt)


def markdown(results: dict) -> str:
  lines = [f'# {results["cell"]}: self-training variants against the matched control',
           '', results['rule'], '',
           'Per row, over its paired seeds: AP x 100 per seed, the mean difference ± its sample '
           'std, the bound (mean - 2 s.e.), the means of AR@100 x 100 and of the pseudo labels\' '
           'boxes per scene, precision and recall, and the commits of the runs.', '',
           '| variant | control | n | ST AP (seed: AP) | MC AP (seed: AP) | ST - MC | bound | '
           'holds | AR@100 ST / MC | pseudo boxes / scene | precision | recall | commits |',
           '| --- | --- | ---: | --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | --- |']
  notes = []
  for r in results['rows']:
    diff = _f(r['diff_mean']) + ('' if r['diff_std'] is None else f' ± {r["diff_std"]:.2f}')
    holds = {True: 'yes', False: 'no'}.get(r['holds'], f'- ({r.get("reason")})')
    per = lambda xs: ', '.join(f'{s}: {x:.2f}' for s, x in zip(r['seeds'], xs))  # noqa: E731
    pct = lambda x: '-' if x is None else f'{100 * x:.1f}%'  # noqa: E731
    lines.append(
        f'| {r["label"]} | {r["control_from"]} | {r["n"]} | {per(r["treatment_ap"])} | '
        f'{per(r["control_ap"])} | {diff} | {_f(r["bound"])} | {holds} | '
        f'{_f(r["treatment_ar100"], ".1f")} / {_f(r["control_ar100"], ".1f")} | '
        f'{_f(r["pseudo_boxes_per_image"])} | {pct(r["pseudo_precision"])} | '
        f'{pct(r["pseudo_recall"])} | {", ".join(c[:7] for c in r["commits"])} |')
    for side, unpaired in r['unpaired_seeds'].items():
      if unpaired:
        notes.append(f'- {r["label"]}: seeds {", ".join(map(str, unpaired))} finished the '
                     f'{side} only (not paired).')
  return '\n'.join(lines + ([''] + notes if notes else [])) + '\n'


def run(record_dir: str, cell: str, seeds: Sequence, variants: Sequence[str],
        results: Optional[str], convergence: Optional[str] = None,
        shared_control: Sequence[str] = (), command: Sequence[str] = ()) -> dict:
  if not results or not os.path.basename(results):
    raise VariantError(f'--results={results or ""}: a path prefix is required (e.g. '
                       f'runs/variants/s4_f20, which writes s4_f20.json and s4_f20.md)')
  seeds = parse_seed_list(seeds)
  if not os.path.isdir(record_dir):
    raise VariantError(f'--record_dir={record_dir}: no such folder')
  if convergence and not os.path.isfile(convergence):
    raise VariantError(f'--convergence={convergence}: no such file (it says which step '
                       f'budgets count)')
  budgets = known_budgets(convergence) if convergence else {}
  data = collect(record_dir, cell, seeds, parse_variants(variants, shared_control), budgets,
                 shared_control)
  data['command'] = [a.replace(REPO + os.sep, '') for a in command]
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
        FLAGS.convergence, FLAGS.shared_control,
        ['python', 'benchmarks/variant_claims.py'] + sys.argv[1:])
  except VariantError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
