"""The benchmark suite: runs the cells of the paper's tables, then writes JSON, Markdown, PNG.

  python benchmarks/suite.py --table=table2 --seeds=3            # digit scale, 3 seeds
  python benchmarks/suite.py --table=table2 --seeds=3 --dry_run  # print the commands only
  python benchmarks/suite.py --table=all --report_only           # tables from finished cells
  python benchmarks/suite.py --table=table6 --seeds=3 --dry_run  # segmentation (Table 6)
  python benchmarks/suite.py --table=table2 --scale=full --seeds=1 \
      --gin_file=gin_configs/base/tpu.gin --gin_param="TPU_ADDRESS='my-tpu'" \
      --out_dir=gs://my-bucket/rethink_st/suite                  # the paper's scale

Each cell is one subprocess of an existing binary (bin/train_teacher.py, which also
pre-trains, or bin/self_train.py), in its own folder  <out_dir>/<scale>/cells/<cell>/seed_<s>/
with its log (suite_log.txt). A finished cell gets suite_done.json (its metrics, wall time,
command, steps and the git commit it ran from) and is skipped on the next run, so the suite is
resumable: kill it and start it again. A cell that fails gets suite_failed.json (retried next
run); cells that depend on it are skipped. Cells run one at a time, seed by seed (all of seed
0 first, so a partial run already gives whole tables).

At digit scale every cell of augmentation policy sX trains the steps --convergence (default
benchmarks/results/convergence.json, made by benchmarks/convergence.py) chose for sX
(segmentation cells: for seg_sX, made with --task=segmentation): its teacher CELL_STEPS, its
student tables.student_steps of that (STUDENT_STEPS: half, at twice the batch). Without a budget a requested cell needs, the suite stops
before running anything.

The tables (benchmarks/tables.py) are then made from the finished cells:
<out_dir>/<scale>/<table>.json, .md and .png, and the paper's claims, each tested on
differences paired by seed: <out_dir>/<scale>/claims.json.
"""
import collections
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tables as tables_lib  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DONE, FAILED, LOG = 'suite_done.json', 'suite_failed.json', 'suite_log.txt'
CLAIMS_FILE = 'claims.json'
METRIC = 'AP'       # the detection cells' number; each cell's own: tables.Cell.metric
DEFAULT_CONVERGENCE = os.path.join(REPO, 'benchmarks', 'results', 'convergence.json')


class SuiteError(ValueError):
  """A bad argument to the suite (one line)."""


# ------------------------------------------------------------------------------ cell runs
def parse_seeds(text: str) -> List[int]:
  """'3' -> [0, 1, 2] (a count); '0,2' -> [0, 2] and '1,' -> [1] (a list)."""
  try:
    if ',' in text:
      seeds = [int(s) for s in text.split(',') if s.strip()]
    else:
      seeds = list(range(int(text)))
  except ValueError:
    raise SuiteError(f'--seeds={text!r}: expected a count (3) or a list (0,2)') from None
  if not seeds or any(s < 0 for s in seeds):
    raise SuiteError(f'--seeds={text!r}: expected a count >= 1 or a list of seeds >= 0 '
                     f'(only seed 0: --seeds=0,)')
  return seeds


def resolve_tables(names: Sequence[str]) -> List[str]:
  out = []
  for name in names:
    if name == 'all':
      out.extend(tables_lib.TABLES)
    elif name in tables_lib.TABLES:
      out.append(name)
    else:
      raise SuiteError(f'--table={name!r} is not one of all, {", ".join(tables_lib.TABLES)}')
  return list(dict.fromkeys(out))


def _shown_path(path: str) -> str:
  """A path inside the repository relative to it (as the user would type it)."""
  rel = os.path.relpath(os.path.abspath(path), REPO)
  return path if rel.startswith('..') else rel


def convergence_command(keys: Sequence[str]) -> str:
  """The benchmarks/convergence.py command(s) that make the budgets `keys` ('s4': detection,
  'seg_s4': segmentation), joined by ' and ' (one line)."""
  detection = [k for k in keys if not k.startswith('seg_')]
  segmentation = [k[len('seg_'):] for k in keys if k.startswith('seg_')]
  commands = []
  if detection:
    commands.append(f'python benchmarks/convergence.py --policies={",".join(detection)}')
  if segmentation:
    commands.append('python benchmarks/convergence.py --task=segmentation '
                    f'--policies={",".join(segmentation)}')
  return ' and '.join(commands)


def read_budgets(path: str, policies: Sequence[str]) -> Tuple[Dict[str, int], str]:
  """The digit-scale step budget of each key in `policies` (a policy, 's4', or a
  segmentation policy, 'seg_s4': tables.Cell.budget_key), from convergence.json's
  chosen[<key>].steps, and a line saying where they came from. One-line SuiteError naming
  the file, the missing keys and the command that makes them when the file does not give
  them all."""
  shown = _shown_path(path)
  make = convergence_command(policies)
  try:
    data = _read_json(path)
  except json.JSONDecodeError as e:
    raise SuiteError(f'{shown}: not valid JSON ({e}); remake it with: {make}') from None
  if data is None:
    raise SuiteError(f'{shown}: not found; the digit-scale step budgets come from it. '
                     f'Make it with: {make}')
  chosen = data.get('chosen') or {}
  missing = [p for p in policies if p not in chosen]
  if missing:
    raise SuiteError(
        f'{shown} has no step budget (chosen.<policy>.steps) for policy '
        f'{", ".join(missing)}; make it with: {convergence_command(missing)}')
  budgets = {}
  for p in policies:
    steps = chosen[p].get('steps') if isinstance(chosen[p], dict) else None
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
      raise SuiteError(f'{shown}: chosen.{p}.steps = {steps!r} is not a positive whole '
                       f'number of steps')
    budgets[p] = steps
  source = shown + (f' (commit {data["commit"]})' if data.get('commit') else '')
  rising = [p for p in policies if chosen[p].get('still_rising')]
  if rising:   # recorded with every run, so a table made from such budgets says so
    source += (f'; {"mIoU" if all(p.startswith("seg_") for p in rising) else "AP"} still '
               f'rising at the largest budget for {", ".join(rising)}')
  return budgets, source


def repo_commit() -> Optional[str]:
  """`git rev-parse HEAD` of the repository the suite runs from (+dirty if tracked files
  differ from it); None outside a git checkout."""
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ('+dirty' if dirty else '')


def cell_dir(out_dir: str, scale: str, name: str, seed: int) -> str:
  cell = tables_lib.CELLS[name]
  leaf = f'seed_{seed}' if cell.seeded else 'shared'
  return os.path.join(out_dir, scale, 'cells', name, leaf)


def cell_command(name: str, scale: str, seed: int, out_dir: str, *,
                 budgets: Optional[Mapping[str, int]] = None,
                 gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
                 python: str = sys.executable) -> List[str]:
  """The command line that runs cell `name` for `seed`: the cell's gin files, then extra
  gin files; the cell's bindings, its seed, folders and step budget (digit scale:
  budgets[cell.budget_key], see read_budgets), then extra bindings (last, so they win)."""
  cell = tables_lib.CELLS[name]
  if not cell.exists(scale):
    raise SuiteError(f'cell {name} has no {scale}-scale config (benchmarks/tables.py)')
  cmd = [python, tables_lib.BINARIES[cell.binary]]
  cmd += [f'--gin_file={f}' for f in cell.gin_files(scale)]
  cmd += [f'--gin_file={f}' for f in gin_files]
  params = list(cell.gin_params(scale))
  if cell.seeded:
    params.append(f'CELL_SEED={seed}' if scale == 'digits'
                  else f'rethink_st.training.run.run_train.seed={seed}')
  if cell.pretrained and scale == 'digits':
    params.append(f"PRETRAINED_DIR='{cell_dir(out_dir, scale, tables_lib.PRETRAIN_CELL, seed)}'")
  if cell.teacher_for(scale):
    teacher = cell_dir(out_dir, scale, cell.teacher_for(scale), seed)
    params.append(f"rethink_st.self_training.run_self_training.teacher_dir='{teacher}'"
                  if cell.binary == 'self_train' else f"TEACHER_DIR='{teacher}'")
  if scale == 'digits' and cell.policy:
    if not budgets or cell.budget_key not in budgets:
      raise SuiteError(f'cell {name}: no step budget for policy {cell.budget_key} '
                       f'(--convergence)')
    params += cell.budget_params(budgets[cell.budget_key])
  params += list(gin_params)
  cmd += [f'--gin_param={p}' for p in params]
  cmd.append(f'--model_dir={cell_dir(out_dir, scale, name, seed)}')
  return cmd


def _read_json(path: str) -> Optional[dict]:
  """Local paths with the standard library; gs:// (the full scale) with tf.io.gfile."""
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_metrics(name: str, directory: str) -> Optional[Dict[str, float]]:
  """A finished run's metrics: eval_metrics.json, or for self-training results.json's last
  student (with the teacher's metric, e.g. AP, as teacher_AP, and the pseudo boxes per
  image). The cell's metric (tables.Cell.metric): 'AP' (detection; COCO AP in 0-1) or
  'mIoU' (segmentation; 0-1, as eval_metrics.json and results.json hold it)."""
  cell = tables_lib.CELLS[name]
  if cell.binary == 'self_train':
    results = _read_json(os.path.join(directory, 'results.json'))
    if not results or len(results.get('rows', ())) < 2:
      return None
    teacher, student = results['rows'][0], results['rows'][-1]
    out = {k: v for k, v in student.items() if isinstance(v, (int, float))}
    if cell.metric in teacher:
      out['teacher_' + cell.metric] = teacher[cell.metric]
    return out
  metrics = _read_json(os.path.join(directory, 'eval_metrics.json'))
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float))} if metrics else None


def read_pseudo_quality(directory: str) -> Dict[str, float]:
  """Precision / recall of a self-training run's last-round pseudo labels at the labeler's
  score threshold, from round_<k>/pseudo_report/report.json when that report was made against
  held-back labels (run_self_training.report_reference, or bin/pseudo_label_report.py
  --reference afterwards); for pseudo masks, the fraction of pixels ignored (below the mask
  threshold) and, against held-back masks, their mIoU on the kept pixels; {} otherwise."""
  rounds = []
  for name in (os.listdir(directory) if os.path.isdir(directory) else ()):
    if name.startswith('round_') and name[len('round_'):].isdigit():
      rounds.append(int(name[len('round_'):]))
  if not rounds:
    return {}
  report = _read_json(os.path.join(directory, f'round_{max(rounds)}', 'pseudo_report',
                                   'report.json'))
  seg = (report or {}).get('segmentation')
  if seg:
    return {k: seg[f] for k, f in (('pseudo_ignored_fraction', 'ignored_fraction'),
                                   ('pseudo_mIoU', 'mIoU')) if seg.get(f) is not None}
  rows = ((report or {}).get('detection') or {}).get('thresholds') or []
  at = [r for r in rows if 'precision' in r and
        abs(r['score_threshold'] - report.get('labeler_score_threshold', -1)) < 1e-6]
  if not at:
    return {}
  return {'pseudo_precision': at[0]['precision'], 'pseudo_recall': at[0]['recall']}


def subprocess_runner(cmd: Sequence[str], log_path: str) -> int:
  """Runs `cmd` from the repository root, output to log_path; returns its exit code."""
  with open(log_path, 'a') as log:
    log.write(f'$ {shlex.join(cmd)}\n')
    log.flush()
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return subprocess.call(list(cmd), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)


def planned_cells(table_names: Sequence[str], scale: str, only: Sequence[str] = (),
                  optional: bool = False) -> Tuple[str, ...]:
  """The cells to run (the tables', or just `only`) and their dependencies, in order."""
  if scale not in tables_lib.SCALES:
    raise SuiteError(f'--scale={scale!r} is not one of {", ".join(tables_lib.SCALES)}')
  for name in only:
    if name not in tables_lib.CELLS:
      raise SuiteError(f'--only={name!r} is not a cell (benchmarks/tables.py)')
    if not tables_lib.CELLS[name].exists(scale):
      raise SuiteError(f'--only={name!r} has no {scale}-scale config')
  wanted = list(only)
  if not only:
    for t in table_names:
      wanted.extend(tables_lib.TABLES[t].cell_names(scale, optional))
  return tables_lib.ordered_cells(wanted, scale)


def budgets_for(cells: Sequence[str], scale: str,
                convergence: str) -> Tuple[Dict[str, int], Optional[str]]:
  """Step budgets for the policies of `cells` (digit scale; the full scale's gin files
  hold the paper's steps), keyed by tables.Cell.budget_key ('s4'; segmentation 'seg_s4')."""
  policies = sorted({tables_lib.CELLS[n].budget_key for n in cells
                     if tables_lib.CELLS[n].budget_key}) if scale == 'digits' else []
  return read_budgets(convergence, policies) if policies else ({}, None)


def run_cells(table_names: Sequence[str], scale: str, seeds: Sequence[int], out_dir: str, *,
              only: Sequence[str] = (), optional: bool = False,
              convergence: str = DEFAULT_CONVERGENCE, max_cells: Optional[int] = None,
              dry_run: bool = False, gin_files: Sequence[str] = (),
              gin_params: Sequence[str] = (),
              runner: Callable[[Sequence[str], str], int] = subprocess_runner,
              echo: Callable[[str], None] = print) -> Dict[str, int]:
  """Runs the unfinished cells of the tables (and what they depend on), seed by seed.

  only: run just these cells (and their unfinished dependencies). optional: also the tables'
  optional rows and columns. convergence: the step budgets (digit scale), read before
  anything runs. max_cells: stop after starting this many runs. Returns counts: ran,
  skipped (already done), failed, blocked.
  """
  order = planned_cells(table_names, scale, only, optional)
  budgets, budget_source = budgets_for(order, scale, convergence)
  commit = None if dry_run else repo_commit()
  if budgets and not dry_run:
    echo(f'[suite] steps: {", ".join(f"{p} {n}" for p, n in budgets.items())} from '
         f'{budget_source}; code: {commit}')
  counts = dict(ran=0, skipped=0, failed=0, blocked=0)
  started = 0
  for seed in seeds:
    for name in order:
      cell = tables_lib.CELLS[name]
      if not cell.seeded and seed != seeds[0]:
        continue
      directory = cell_dir(out_dir, scale, name, seed)
      if os.path.exists(os.path.join(directory, DONE)):
        counts['skipped'] += 1
        continue
      deps = [d for d in cell.depends(scale)
              if not os.path.exists(os.path.join(cell_dir(out_dir, scale, d, seed), DONE))]
      cmd = cell_command(name, scale, seed, out_dir, budgets=budgets, gin_files=gin_files,
                         gin_params=gin_params)
      if dry_run:
        echo(shlex.join(cmd))
        continue
      if deps:
        echo(f'[suite] {name} seed {seed}: blocked (unfinished: {", ".join(deps)})')
        counts['blocked'] += 1
        continue
      if max_cells is not None and started >= max_cells:
        echo(f'[suite] --max_cells={max_cells} reached')
        return counts
      started += 1
      os.makedirs(directory, exist_ok=True)
      if os.path.exists(os.path.join(directory, FAILED)):
        os.remove(os.path.join(directory, FAILED))
      echo(f'[suite] {name} seed {seed}: running ({os.path.join(directory, LOG)})')
      start = time.time()
      code = runner(cmd, os.path.join(directory, LOG))
      seconds = time.time() - start
      metrics = read_metrics(name, directory) if code == 0 else None
      # steps: this cell's training steps (a student's, for self-training cells); None: the
      # cell's own gin files set them (pretrain; every cell at full scale).
      record = {'seconds': seconds, 'seed': seed, 'command': cmd, 'commit': commit,
                'steps': budgets.get(cell.budget_key) if scale == 'digits' else None,
                'steps_from': budget_source if cell.policy else None}
      if metrics is None:
        counts['failed'] += 1
        with open(os.path.join(directory, FAILED), 'w') as f:
          json.dump({'exit_code': code, **record}, f, indent=1)
        echo(f'[suite] {name} seed {seed}: FAILED (exit {code}); see {LOG}')
        continue
      counts['ran'] += 1
      with open(os.path.join(directory, DONE), 'w') as f:
        json.dump({'metrics': metrics, **record}, f, indent=1)
      shown = metrics.get(cell.metric)
      echo(f'[suite] {name} seed {seed}: done in {seconds / 60:.1f} min, {cell.metric}='
           + ('n/a' if shown is None else f'{shown:.4f}'))
  return counts


# -------------------------------------------------------------------------------- results
def _mean_std(values: Sequence[float]):
  if not values:
    return None, None
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, None
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def read_runs(name: str, scale: str, seeds: Sequence[int], out_dir: str) -> Dict[str, dict]:
  """{seed: metrics} of cell `name`'s finished runs, from suite_done.json (with seconds,
  steps and commit) or, for runs outside the suite (e.g. a cluster job from
  --dry_run's command), from eval_metrics.json / results.json."""
  runs = {}
  for seed in seeds:
    directory = cell_dir(out_dir, scale, name, seed)
    done = _read_json(os.path.join(directory, DONE))
    if done:
      run = {**done['metrics'], 'seconds': done['seconds']}
      run.update({k: done[k] for k in ('steps', 'commit') if done.get(k)})
    else:
      run = read_metrics(name, directory)
    if not run:
      continue
    if tables_lib.CELLS[name].binary == 'self_train':
      run.update(read_pseudo_quality(directory))
    runs[str(seed)] = run
  return runs


def collect_results(table_name: str, scale: str, seeds: Sequence[int], out_dir: str) -> dict:
  """The results JSON of one table from the finished cells (read_runs), optional rows and
  columns included."""
  table = tables_lib.TABLES[table_name]
  cells = {name: {'seeds': read_runs(name, scale, seeds, out_dir)}
           for name in table.cell_names(scale, optional=True)}
  return build_results(table_name, scale, seeds, cells)


# --------------------------------------------------------------------------------- claims
CLAIM_RULE = ('diff = treatment - control (AP, or mIoU for segmentation, x100) per seed, '
              'over the seeds both cells finished; s.e. = sample std of diff / sqrt(n). A '
              'claim that the treatment helps holds when mean(diff) - 2 s.e. > 0; one that it '
              'hurts, when mean(diff) + 2 s.e. < 0. n < 2: holds is null.')


def claim_result(claim: tables_lib.Claim, scale: str, treatment_runs: Mapping[str, dict],
                 control_runs: Mapping[str, dict]) -> dict:
  """One entry of claims.json: the claim tested on differences of its cells' metric (AP or
  mIoU, x100; in treatment_ap / control_ap whatever the metric) paired by seed."""
  metric = claim.metric
  out = {'id': claim.id, 'claim': claim.text, 'paper': claim.paper,
         'treatment': claim.treatment, 'control': claim.control, 'direction': claim.direction,
         'metric': metric}
  t = {s: 100 * m[metric] for s, m in treatment_runs.items() if metric in m}
  c = {s: 100 * m[metric] for s, m in control_runs.items() if metric in m}
  seeds = sorted(set(t) & set(c), key=int)
  diffs = [t[s] - c[s] for s in seeds]
  mean, std = _mean_std(diffs)
  out.update(seeds=[int(s) for s in seeds], treatment_ap=[t[s] for s in seeds],
             control_ap=[c[s] for s in seeds], diff_mean=mean, diff_std=std, n=len(seeds),
             unpaired_seeds={'treatment': sorted((int(s) for s in set(t) - set(c))),
                             'control': sorted((int(s) for s in set(c) - set(t)))})
  commits = {r.get('commit') for runs in (treatment_runs, control_runs)
             for s, r in runs.items() if s in seeds}
  out['commits'] = sorted(x or 'unknown' for x in commits)
  if claim.treatment is None or claim.control is None:
    reason = 'no cells'
  elif not all(tables_lib.CELLS[n].exists(scale) for n in (claim.treatment, claim.control)):
    reason = f'no cells at {scale} scale'
  elif not seeds:
    reason = 'no seed finished both cells'
  elif len(seeds) < 2:
    reason = 'one paired seed: no spread to test the difference against; run more seeds'
  else:
    reason = None
  if reason:
    out.update(bound=None, holds=None, reason=reason)
    return out
  margin = 2 * std / math.sqrt(len(seeds))
  if claim.direction == 'helps':
    out['bound'] = mean - margin
    out['holds'] = out['bound'] > 0
  else:
    out['bound'] = mean + margin
    out['holds'] = out['bound'] < 0
  return out


def collect_claims(scale: str, seeds: Sequence[int], out_dir: str) -> dict:
  """claims.json: every claim of tables_lib.CLAIMS from the finished cells' per-seed AP
  (mIoU for the segmentation claims; each claim's `metric`)."""
  claims = []
  for claim in tables_lib.CLAIMS:
    runs = [read_runs(n, scale, seeds, out_dir)
            if n and tables_lib.CELLS[n].exists(scale) else {}
            for n in (claim.treatment, claim.control)]
    claims.append(claim_result(claim, scale, *runs))
  return {'scale': scale, 'seeds': list(seeds),
          'metric': f'COCO {METRIC} x 100 (segmentation claims: mIoU x 100; each claim\'s '
                    f'metric)',
          'rule': CLAIM_RULE, 'claims': claims}


def write_claims(claims: dict, report_dir: str) -> str:
  path = os.path.join(report_dir, claims['scale'], CLAIMS_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(claims, f, indent=1)
  return path


# ------------------------------------------------------------------------------- tables
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
      entry['mean'], entry['std'] = _mean_std(entry['values'])
      base_name = table.cell(scale, baseline, col) if baseline else None
      if base_name and base_name != name:
        base_runs = cells.get(base_name, {}).get('seeds', {})
        gain_seeds = [s for s in entry['seeds'] if metric in base_runs.get(s, {})]
        gains = [values[s] - 100 * base_runs[s][metric] for s in gain_seeds]
        entry['gain_values'], entry['gain_seeds'] = gains, gain_seeds
        entry['gain_mean'], entry['gain_std'] = _mean_std(gains)
      teacher = [100 * m['teacher_' + metric] for m in runs.values() if 'teacher_' + metric in m]
      if teacher:
        entry['teacher_mean'] = _mean_std(teacher)[0]
      for key in ('pseudo_boxes_per_image', 'pseudo_precision', 'pseudo_recall',
                  'pseudo_ignored_fraction', 'pseudo_mIoU'):
        got = [m[key] for m in runs.values() if m.get(key) is not None]
        if got:
          entry[key] = _mean_std(got)[0]
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
        text += f' (gain: n={len(e["gain_values"])}, the seeds both rows ran)'
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
  extra = []
  for e in results['grid']:
    bits = []
    if e.get('steps'):
      bits.append('/'.join(f'{s:,}' for s in e['steps']) + ' steps')
    if e.get('teacher_mean') is not None:
      bits.append(f'teacher {metric} {e["teacher_mean"]:.{nd}f}')
    if e.get('pseudo_boxes_per_image') is not None:
      bits.append(f'{e["pseudo_boxes_per_image"]:.2f} pseudo boxes/image')
    if e.get('pseudo_recall') is not None:
      bits.append(f'pseudo-label precision {100 * e["pseudo_precision"]:.0f}% / recall '
                  f'{100 * e["pseudo_recall"]:.0f}%')
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


# ------------------------------------------------------------------------------- estimate
def _query(name: str):
  import gin  # pylint: disable=g-import-not-at-top
  value = gin.query_parameter(name)
  while str(value).startswith('%'):
    value = gin.query_parameter(f'{str(value)[1:]}/macro.value')
  return value


def estimate(table_names: Sequence[str], scale: str, images_per_sec: Optional[float] = None,
             convergence: str = DEFAULT_CONVERGENCE, optional: bool = False) -> List[dict]:
  """Training steps and images of every cell, read from its gin files and the suite's
  bindings (what the binary would run), and hours at `images_per_sec` (a training
  throughput you measured, e.g. with benchmarks/train_step.py on the target).
  Self-training cells count the student only (the suite gives them the finished teacher)
  and exclude pseudo-labeling."""
  import gin  # pylint: disable=g-import-not-at-top
  from rethink_st import cli, config_io  # pylint: disable=g-import-not-at-top
  cli.register_configurables()
  order = planned_cells(table_names, scale, optional=optional)
  budgets, _ = budgets_for(order, scale, convergence)
  out = []
  for name in order:
    cmd = cell_command(name, scale, 0, '/tmp/estimate', budgets=budgets)
    gin.clear_config()
    config_io.parse_gin([a.split('=', 1)[1] for a in cmd if a.startswith('--gin_file=')],
                        [a.split('=', 1)[1] for a in cmd if a.startswith('--gin_param=')])
    prefix = 'student/' if tables_lib.CELLS[name].binary == 'self_train' else ''
    with gin.config_scope(prefix.rstrip('/') or None):
      steps = int(_query(f'{prefix}rethink_st.training.run.run_train.train_steps'))
      batch = int(_query(f'{prefix}rethink_st.training.run.run_train.global_batch_size'))
    row = {'cell': name, 'steps': steps, 'batch': batch, 'images': steps * batch}
    if images_per_sec:
      row['hours'] = steps * batch / images_per_sec / 3600
    out.append(row)
  gin.clear_config()
  return out


# ------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_multi_string('table', ['table2'], f'all, {", ".join(tables_lib.TABLES)}')
  flags.DEFINE_enum('scale', 'digits', tables_lib.SCALES, 'digits or full')
  flags.DEFINE_string('seeds', '1', 'a count (3 -> seeds 0,1,2) or a list (0,2 or 1,)')
  flags.DEFINE_string('out_dir', os.path.join(REPO, 'runs', 'benchmarks'), 'results root')
  flags.DEFINE_string('convergence', DEFAULT_CONVERGENCE, 'digit scale: the step budget of '
                      'each augmentation policy (chosen.<policy>.steps; segmentation '
                      'cells: chosen.seg_<policy>.steps), made by benchmarks/convergence.py')
  flags.DEFINE_bool('dry_run', False, 'print the commands, run nothing')
  flags.DEFINE_multi_string('only', [], 'run only this cell (repeatable)')
  flags.DEFINE_bool('optional', False, "also run the tables' optional rows and columns "
                    "(digit scale: Table 2's and Table 6's S2 and S3, ImageNet Init + "
                    "self-training's matched control)")
  flags.DEFINE_integer('max_cells', None, 'start at most this many runs')
  flags.DEFINE_bool('report_only', False, 'make the tables and claims.json from finished '
                    'cells, run nothing')
  flags.DEFINE_string('report_dir', None, 'where the tables go (default: --out_dir; needed '
                      'when --out_dir is on GCS)')
  flags.DEFINE_multi_string('gin_file', [], 'extra gin file for every cell (e.g. tpu.gin)')
  flags.DEFINE_multi_string('gin_param', [], 'extra gin binding for every cell')
  flags.DEFINE_bool('estimate', False, 'print steps / images (and hours at '
                    '--images_per_sec) of every cell, run nothing')
  flags.DEFINE_float('images_per_sec', None, 'training throughput for --estimate')
  fl = flags.FLAGS
  fl(argv or sys.argv)
  try:
    seeds = parse_seeds(fl.seeds)
    names = resolve_tables(fl.table)
    remote = '://' in fl.out_dir
    if remote and not (fl.dry_run or fl.report_only or fl.estimate):
      raise SuiteError(f'--out_dir={fl.out_dir}: the runner needs a local --out_dir; for GCS '
                       'use --dry_run (commands for your cluster) and --report_only '
                       '(benchmarks/README.md)')
    report_dir = fl.report_dir or fl.out_dir
    if '://' in report_dir and fl.report_only:
      raise SuiteError('--report_dir: tables are written locally; pass a local --report_dir')
    if fl.estimate:
      rows = estimate(names, fl.scale, fl.images_per_sec, fl.convergence, fl.optional)
      print('| cell | steps | batch | images | hours |\n| --- | ---: | ---: | ---: | ---: |')
      for r in rows:
        hours = f'{r["hours"]:.1f}' if 'hours' in r else '-'
        print(f'| {r["cell"]} | {r["steps"]:,} | {r["batch"]} | {r["images"]:,} | {hours} |')
      total = sum(r['images'] for r in rows)
      print(f'| total | | | {total:,} | '
            f'{total / fl.images_per_sec / 3600 if fl.images_per_sec else 0:.1f} |')
      return 0
    if not fl.report_only:
      # A `kill` of the suite takes the running cell with it (subprocess.call kills its
      # child on the SystemExit); the cell resumes from its checkpoints on the next run.
      signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
      counts = run_cells(names, fl.scale, seeds, fl.out_dir, only=fl.only,
                         optional=fl.optional, convergence=fl.convergence,
                         max_cells=fl.max_cells, dry_run=fl.dry_run, gin_files=fl.gin_file,
                         gin_params=fl.gin_param)
      print(f'[suite] {counts}')
    if fl.dry_run:
      return 0
    for name in names:
      paths = write_report(collect_results(name, fl.scale, seeds, fl.out_dir), report_dir)
      print(f'[suite] {name}: {paths["md"]}')
      with open(paths['md']) as f:
        print(f.read())
    path = write_claims(collect_claims(fl.scale, seeds, fl.out_dir), report_dir)
    print(f'[suite] claims: {path}')
  except SuiteError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
