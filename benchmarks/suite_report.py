"""The tables from finished cells: the results JSON, its Markdown (the paper's layout, with
the claims each table tests) and PNG (Figure 1 style): <out_dir>/<scale>/<table>.json, .md
and .png."""
import collections
import json
import os
import statistics
from typing import Dict, Mapping, Optional, Sequence

import tables as tables_lib
from suite_claims import CLAIM_RULE
from suite_claims import CLAIMS_FILE
from suite_claims import METRIC
from suite_claims import claim_result
from suite_claims import mean_std
from suite_claims import other_teacher_seeds
from suite_runner import read_runs


# -------------------------------------------------------------------------------- results
def collect_results(table_name: str, scale: str, seeds: Sequence[int], out_dir: str,
                    record_dir: Optional[str] = None,
                    budgets: Optional[Mapping[str, int]] = None) -> dict:
  """The results JSON of one table from the finished cells (read_runs; their records under
  record_dir where the run folder is gone; runs of another step budget than `budgets` left
  out), optional rows and columns included."""
  table = tables_lib.TABLES[table_name]
  cells = {name: {'seeds': read_runs(name, scale, seeds, out_dir, record_dir, budgets)}
           for name in table.cell_names(scale, optional=True)}
  return build_results(table_name, scale, seeds, cells)


def build_results(table_name: str, scale: str, seeds: Sequence[int], cells: dict,
                  is_test_data: bool = False) -> dict:
  """The results dict from per-cell, per-seed metrics ({cell: {'seeds': {'0': {AP..}}}}).
  The table's metric (AP; mIoU for Table 6) in points (x100, the paper's unit); gains over
  the baseline row (at `scale`) are taken per seed (same seed: same labeled subset and init)
  and then averaged; std is the sample std. Optional rows and columns are shown when one of
  their cells has a run."""
  table = tables_lib.TABLES[table_name]
  metric, baseline = table.metric, table.baseline_for(scale)
  ran = lambda name: bool(name and cells.get(name, {}).get('seeds'))
  all_rows, all_cols = table.rows_for(scale, optional=True), table.columns_for(scale, True)
  cols = [c for c in all_cols if c in table.columns_for(scale)
          or any(ran(table.cell(scale, r, c)) for r in all_rows)]
  rows = [r for r in all_rows if r in table.rows_for(scale)
          or any(ran(table.cell(scale, r, c)) for c in cols)]
  grid, commits = [], collections.Counter()
  for row in rows:
    for col in cols:
      name = table.cell(scale, row, col)
      if not name:
        continue
      runs = cells.get(name, {}).get('seeds', {})
      commits.update(m.get('commit') or 'unknown' for m in runs.values())
      values = {s: 100 * m[metric] for s, m in runs.items() if metric in m}
      entry = {'row': row, 'col': col, 'cell': name, 'seeds': sorted(values, key=int),
               'values': [values[s] for s in sorted(values, key=int)]}
      entry['mean'], entry['std'] = mean_std(entry['values'])
      base_name = table.cell(scale, baseline, col) if baseline else None
      if base_name and base_name != name:
        base_runs = cells.get(base_name, {}).get('seeds', {})
        # a student's gain over its own teacher cell: only where that record is its teacher
        entry['gain_other_teacher'] = [
            str(o['seed']) for o in other_teacher_seeds(name, base_name, scale, runs,
                                                         base_runs, metric)
            if str(o['seed']) in entry['seeds']]
        gain_seeds = [s for s in entry['seeds'] if metric in base_runs.get(s, {})
                      and s not in entry['gain_other_teacher']]
        gains = [values[s] - 100 * base_runs[s][metric] for s in gain_seeds]
        entry['gain_values'], entry['gain_seeds'] = gains, gain_seeds
        entry['gain_mean'], entry['gain_std'] = mean_std(gains)
      teacher = [100 * m['teacher_' + metric] for m in runs.values() if 'teacher_' + metric in m]
      if teacher:
        entry['teacher_mean'] = mean_std(teacher)[0]
      for key in ('pseudo_boxes_per_image', 'pseudo_precision', 'pseudo_recall',
                  'pseudo_ignored_fraction', 'pseudo_mIoU', 'train_human_loss',
                  'train_pseudo_loss', 'train_total_loss'):
        got = [m[key] for m in runs.values() if m.get(key) is not None]
        if got:
          entry[key] = mean_std(got)[0]
      entry['steps'] = sorted({m['steps'] for m in runs.values() if m.get('steps')})
      minutes = [m['seconds'] / 60 for m in runs.values() if 'seconds' in m]
      # median: one run slowed by another job on the machine does not move it
      entry['minutes'] = statistics.median(minutes) if minutes else None
      entry['paper'] = table.paper.get((row, col))
      grid.append(entry)
  in_table = set(table.cell_names(scale, optional=True))
  claims = [claim_result(c, scale, cells.get(c.treatment, {}).get('seeds', {}),
                         cells.get(c.control, {}).get('seeds', {}))
            for c in tables_lib.CLAIMS if c.treatment in in_table and c.control in in_table]
  return {'table': table.name, 'title': table.title, 'scale': scale,
          'seeds': list(seeds),
          'metric': f'COCO {metric} x 100' if metric == 'AP' else f'{metric} x 100',
          'metric_key': metric,
          'baseline': baseline, 'rows': rows, 'columns': cols,
          'x_label': table.x_label, 'notes': table.notes, 'cells': cells, 'grid': grid,
          'commits': dict(commits), 'claims': claims, 'claim_rule': CLAIM_RULE,
          'is_test_data': bool(is_test_data)}


# ------------------------------------------------------------------------------- markdown
def _entry(results: dict, row: str, col: str) -> Optional[dict]:
  for e in results['grid']:
    if e['row'] == row and e['col'] == col:
      return e
  return None


def _digits(scale: str) -> int:
  """Decimals of AP (mIoU) points: the paper's 1 at full scale; 2 at digit scale."""
  return 1 if scale == 'full' else 2


def verdict(claim: dict) -> str:
  if claim['holds'] is None:
    return f'untested: {claim["reason"]}'
  return 'holds' if claim['holds'] else 'does not hold'


def _commits_text(commits: Mapping[str, int]) -> str:
  if not commits:
    return 'no runs yet'
  runs = lambda n: f'{n} run' + ('' if n == 1 else 's')
  known = sorted((c for c in commits if c != 'unknown'), key=lambda c: -commits[c])
  parts = [f'`{c}` ({runs(commits[c])})' for c in known]
  if 'unknown' in commits:
    parts.append(f'not recorded ({runs(commits["unknown"])}, run before the suite '
                 f'recorded commits)')
  return ('commit ' if len(parts) == 1 else 'commits ') + ', '.join(parts)


def format_markdown(results: dict) -> str:
  """The paper's layout: rows x columns, ours (mean ± std over seeds, gain over the
  baseline) and, in a second table of the same shape, what the paper's text states; then
  the claims the table tests, on differences paired by seed."""
  lines = []
  metric = results.get('metric_key', METRIC)
  if results.get('is_test_data'):
    lines.append('**TEST DATA ONLY: fabricated numbers, not measurements.**\n')
  seeds = ', '.join(str(s) for s in results['seeds'])
  nd = _digits(results['scale'])
  lines.append(f'### {results["title"]} ({results["scale"]} scale)\n')
  lines.append(f'{results["metric"]} on the validation set; mean ± std over seeds ({seeds}; '
               f'n = runs finished); in brackets the gain over {results["baseline"]}, taken '
               f'per seed. Code: {_commits_text(results.get("commits", {}))}.\n')
  cols = results['columns']
  lines.append('| | ' + ' | '.join(cols) + ' |')
  lines.append('| --- ' * (len(cols) + 1) + '|')
  for row in results['rows']:
    cells = []
    for col in cols:
      e = _entry(results, row, col)
      if not e or e['mean'] is None:
        cells.append('not run' if e else '')
        continue
      text = f'{e["mean"]:.{nd}f}' + ('' if e['std'] is None else f' ± {e["std"]:.{nd}f}')
      if e.get('gain_mean') is not None:
        text += f' ({e["gain_mean"]:+.{nd}f}' + (
            '' if e['gain_std'] is None else f' ± {e["gain_std"]:.{nd}f}') + ')'
      text += f' n={len(e["values"])}'
      if e.get('gain_values') is not None and len(e['gain_values']) != len(e['values']):
        text += f' (gain: n={len(e["gain_values"])}, the seeds both rows ran' + (
            '' if not e.get('gain_other_teacher') else
            f'; not seed {", ".join(e["gain_other_teacher"])}, from another teacher') + ')'
      cells.append(text)
    lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
  if any(e.get('paper') for e in results['grid']):
    lines.append(f'\nThe paper (gain over {results["baseline"]}, full scale, as its text '
                 f'states it):\n')
    lines.append('| | ' + ' | '.join(cols) + ' |')
    lines.append('| --- ' * (len(cols) + 1) + '|')
    for row in results['rows']:
      vals = [(_entry(results, row, c) or {}).get('paper') or '' for c in cols]
      if row == results['baseline'] or not any(vals):
        continue
      lines.append(f'| {row} | ' + ' | '.join(vals) + ' |')
  if results['claims']:
    lines.append(f'\nClaims ({results["claim_rule"]} All claims: {CLAIMS_FILE}.)\n')
    lines.append(f'| claim | treatment - control ({metric}) | n | expected | mean ∓ 2 s.e. '
                 f'| verdict | the paper |')
    lines.append('| --- | ---: | ---: | --- | ---: | --- | --- |')
    for c in results['claims']:
      diff = 'n/a' if c['diff_mean'] is None else f'{c["diff_mean"]:+.{nd}f}' + (
          '' if c['diff_std'] is None else f' ± {c["diff_std"]:.{nd}f}')
      bound = '' if c['bound'] is None else f'{c["bound"]:+.{nd}f}'
      lines.append(f'| `{c["id"]}`: {c["claim"]} | {diff} | {c["n"]} | {c["direction"]} '
                   f'| {bound} | **{verdict(c)}** | {c["paper"]} |')
    for c in results['claims']:
      for o in c.get('other_teacher', []):
        t, k = f'{o["treatment_teacher"]:.{nd}f}', f'{o["control_teacher"]:.{nd}f}'
        lines.append(f'\n`{c["id"]}` leaves out seed {o["seed"]}: ' + (
            f'the student started from a teacher of {metric} {t}, not the recorded one '
            f'({k}).' if o.get('control_is_teacher') else
            f'its two cells started from different teachers ({metric} {t} and {k}), so they '
            f'differ in more than what the claim compares.'))
  extra = []
  for e in results['grid']:
    bits = []
    if e.get('steps'):   # the policy's budget; a cell that starts from a teacher trains less
      if tables_lib.CELLS[e['cell']].teacher and results['scale'] == 'digits':
        bits.append('/'.join(f'{tables_lib.student_steps(s):,}' for s in e['steps'])
                    + ' steps from a teacher of ' + '/'.join(f'{s:,}' for s in e['steps']))
      else:
        bits.append('/'.join(f'{s:,}' for s in e['steps']) + ' steps')
    if e.get('teacher_mean') is not None:
      bits.append(f'teacher {metric} {e["teacher_mean"]:.{nd}f}')
    if e.get('pseudo_boxes_per_image') is not None:
      bits.append(f'{e["pseudo_boxes_per_image"]:.2f} pseudo boxes/image')
    if e.get('pseudo_recall') is not None:
      bits.append(f'pseudo-label precision {100 * e["pseudo_precision"]:.0f}% / recall '
                  f'{100 * e["pseudo_recall"]:.0f}%')
    if e.get('train_human_loss') is not None:
      bits.append(f'last [train] human loss {e["train_human_loss"]:.3f}, pseudo loss '
                  f'{e["train_pseudo_loss"]:.3f}')
    elif e.get('train_total_loss') is not None:
      bits.append(f'last [train] loss {e["train_total_loss"]:.3f}')
    if e.get('pseudo_ignored_fraction') is not None:
      bits.append(f'{100 * e["pseudo_ignored_fraction"]:.0f}% of pseudo-mask pixels ignored')
    if e.get('pseudo_mIoU') is not None:
      bits.append(f'pseudo-mask mIoU {100 * e["pseudo_mIoU"]:.{nd}f} on the kept pixels')
    if e.get('minutes') is not None:
      bits.append(f'{e["minutes"]:.1f} min/run (median)')
    if bits:
      extra.append(f'- {e["row"]} / {e["col"]} (`{e["cell"]}`): ' + ', '.join(bits))
  if extra:
    lines.append('\nPer cell:\n')
    lines.extend(extra)
  if results.get('notes'):
    lines.append(f'\n{results["notes"]}')
  return '\n'.join(lines) + '\n'


def plot(results: dict, path: str) -> None:
  """Figure 1 style: gain over the baseline vs the table's x axis, one line per row."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = results['columns']
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  ax.axhline(0.0, color='0.5', lw=1, ls='--')
  for row in results['rows']:
    if row == results['baseline']:
      continue
    xs, ys, es = [], [], []
    for i, col in enumerate(cols):
      e = _entry(results, row, col)
      if e and e.get('gain_mean') is not None:
        xs.append(i)
        ys.append(e['gain_mean'])
        es.append(e.get('gain_std') or 0.0)
    if xs:
      ax.errorbar(xs, ys, yerr=es, marker='o', capsize=3, label=row)
  ax.set_xticks(range(len(cols)))
  ax.set_xticklabels(cols)
  ax.set_xlabel(results['x_label'])
  ax.set_ylabel(f'gain over {results["baseline"]} ({results.get("metric_key", METRIC)})')
  title = f'{results["table"]} ({results["scale"]})'
  if results.get('is_test_data'):
    title += ' TEST DATA'
  ax.set_title(title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(results: dict, out_dir: str) -> Dict[str, str]:
  base = os.path.join(out_dir, results['scale'], results['table'])
  os.makedirs(os.path.dirname(base), exist_ok=True)
  paths = {'json': base + '.json', 'md': base + '.md', 'png': base + '.png'}
  with open(paths['json'], 'w') as f:
    json.dump(results, f, indent=1)
  with open(paths['md'], 'w') as f:
    f.write(format_markdown(results))
  plot(results, paths['png'])
  return paths
