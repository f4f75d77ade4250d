"""Running and resuming the suite's cells, and reading the runs they finished.

Each cell is one subprocess of its binary in its own folder (suite_commands.cell_dir), with
its log (suite_log.txt). A finished cell gets suite_done.json (its metrics, wall time,
command, steps and the git commit it ran from) and is skipped on the next run; a cell that
fails gets suite_failed.json (retried next run); cells that depend on it are skipped.

Records (record_dir, e.g. benchmarks/results/suite): a copy of each finished cell's
suite_done.json, its pseudo-label precision/recall folded into its metrics, at
<record_dir>/<scale>/cells/<cell>/<seed_s|shared>/ -- small files to commit, so that results
outlive the run folders (checkpoints) of the machine that made them. A recorded cell is not
run again unless a cell still to run starts from its checkpoint and the run folder is gone;
then it is rerun (seeded runs repeat exactly) and its metric is compared with the record. A
rerun that differs (another kind of CPU: TensorFlow's kernels differ between AVX2 and AVX-512)
replaces the record, since the cells still to run start from it. Each record keeps the metric
of the runs its cell started from (start_key: teacher_<metric>, pretrain_<metric>), so a
record made from a teacher that differs from the teacher's now is not finished: it runs again
(and until then suite_claims.claim_result leaves the seed out: other_teacher).

Step budgets: a run folder or record whose steps are not its policy's budget now (e.g.
convergence.json chose a longer S4 schedule after it ran) answers another question. It
does not count as finished, its folder is moved aside to <folder>.steps_<n> rather than
resumed (its checkpoint follows another schedule), its record is replaced when the new run
finishes, and the tables leave it out.

Bindings: each run and record also holds `config`, suite_commands.config_digest of what the
cell trains (its gin files' bindings, its --gin_param bindings and the digests of the cells it
starts from). A run folder or record of another digest (a gin file changed since, e.g. the
pre-training's, which changes every pre-trained cell's digest too) is likewise not finished:
its folder is moved aside to <folder>.config_<digest>, and the cell runs again. Runs recorded
before digests were kept have none and count as they are. The tables do not check digests:
they show the records as they are, each with its commit.

Adoption (adopt_from): a Rand Init cell whose command benchmarks/convergence.py already ran
to the cell's budget, with the training code of the checkout, is copied from that run rather
than trained (suite_adopt); its record says adopted_from.
"""
import json
import os
import shlex
import sys
import time
from typing import Callable, Dict, Mapping, Optional, Sequence

import suite_adopt
import tables as tables_lib
from suite_commands import DEFAULT_CONVERGENCE
from suite_commands import REPO
from suite_commands import SuiteError
from suite_commands import budgets_for
from suite_commands import cell_command
from suite_commands import cell_dir
from suite_commands import config_digest
from suite_commands import planned_cells
from suite_commands import read_json
from timed_run import code_commit
from timed_run import commits_so_far
from timed_run import cpu_kind
from timed_run import cpus_so_far
from timed_run import run_timed
from timed_run import seconds_so_far

DONE, FAILED, LOG = 'suite_done.json', 'suite_failed.json', 'suite_log.txt'
STARTED = 'suite_started.json'   # the steps a run folder was started with
SECONDS = 'suite_seconds.json'   # wall seconds of every start of a run folder (timed_run)


def other_budget(run: Optional[dict], name: str, budgets: Mapping[str, int]) -> Optional[int]:
  """The steps `run` (a suite_done.json, record or suite_started.json) trained when they are
  not the budget cell `name`'s policy has in `budgets` now, else None (also when either is
  unknown: cells without a policy, the full scale)."""
  key = tables_lib.CELLS[name].budget_key
  steps = (run or {}).get('steps')
  if steps is None or key not in budgets or steps == budgets[key]:
    return None
  return steps


def other_config(run: Optional[dict], digest: Optional[str]) -> Optional[str]:
  """The config digest `run` (suite_done.json, record or suite_started.json) was made with
  when it is not `digest`, else None (also when the run has none: made before digests)."""
  old = (run or {}).get('config')
  return old if old and digest and old != digest else None


def known_budgets(convergence: str) -> Dict[str, int]:
  """Every budget convergence.json has chosen ({} without a readable file): what the tables
  check runs against (read_runs), where a missing policy is no error."""
  try:
    chosen = (read_json(convergence) or {}).get('chosen') or {}
  except (OSError, ValueError):
    return {}
  return {k: v['steps'] for k, v in chosen.items()
          if isinstance(v, dict) and isinstance(v.get('steps'), int)}


def _move_aside(directory: str, value, what: str = 'steps') -> str:
  """Renames a run folder to <directory>.<what>_<value> (steps_4800, config_<digest>)."""
  target, n = f'{directory}.{what}_{value}', 1
  while os.path.exists(target):
    n += 1
    target = f'{directory}.{what}_{value}.{n}'
  os.rename(directory, target)
  return target


def repo_commit() -> Optional[str]:
  """`git rev-parse HEAD` of the repository the suite runs from (+dirty if any tracked file
  differs from it, not only the training code); None outside a git checkout."""
  return code_commit(REPO, paths=())


def record_path(record_dir: Optional[str], scale: str, name: str, seed: int) -> Optional[str]:
  """Where cell `name`'s record for `seed` lives under record_dir; None without one."""
  return os.path.join(cell_dir(record_dir, scale, name, seed), DONE) if record_dir else None


def read_record(record_dir: Optional[str], scale: str, name: str, seed: int) -> Optional[dict]:
  path = record_path(record_dir, scale, name, seed)
  return read_json(path) if path else None


def portable(record: dict, out_dir: str) -> dict:
  """A record without this machine's paths: the command's and steps_from's out_dir as
  <out_dir>, the repository's files relative to it, the interpreter as `python`; a
  convergence.json elsewhere (--convergence outside both) as <elsewhere>/<its name>."""
  def text(value):
    if not isinstance(value, str) or value == sys.executable:
      return 'python' if value == sys.executable else value
    return value.replace(out_dir, '<out_dir>').replace(REPO + os.sep, '')
  return {**record, 'command': [text(a) for a in record.get('command', ())],
          'steps_from': portable_source(text(record.get('steps_from')))}


def portable_source(steps_from: Optional[str]) -> Optional[str]:
  """steps_from ('<path> (commit ...)'), or any path, with an absolute path as
  <elsewhere>/<its last name>; anything else as it is."""
  if not isinstance(steps_from, str) or not os.path.isabs(steps_from):
    return steps_from
  path, sep, rest = steps_from.partition(' (commit ')
  return f'<elsewhere>/{os.path.basename(path)}{sep}{rest}'


def _write_json(path: str, value: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(value, f, indent=1)


def read_metrics(name: str, directory: str) -> Optional[Dict[str, float]]:
  """A finished run's metrics: eval_metrics.json, or for self-training results.json's last
  student (with the teacher's metric, e.g. AP, as teacher_AP, and the pseudo boxes per
  image). The cell's metric (tables.Cell.metric): 'AP' (detection; COCO AP in 0-1) or
  'mIoU' (segmentation; 0-1, as eval_metrics.json and results.json hold it)."""
  cell = tables_lib.CELLS[name]
  if cell.binary == 'self_train':
    results = read_json(os.path.join(directory, 'results.json'))
    if not results or len(results.get('rows', ())) < 2:
      return None
    teacher, student = results['rows'][0], results['rows'][-1]
    out = {k: v for k, v in student.items() if isinstance(v, (int, float))}
    if cell.metric in teacher:
      out['teacher_' + cell.metric] = teacher[cell.metric]
    return out
  metrics = read_json(os.path.join(directory, 'eval_metrics.json'))
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float))} if metrics else None


TRAIN_LOSSES = ('total_loss', 'human_loss', 'pseudo_loss', 'cls_loss', 'box_loss')


def read_progress(log_path: str) -> Dict[int, Dict[str, float]]:
  """{step: {name: value}} of the `[train] step N/T name=value ...` progress lines of a log,
  the last line of each step (a resumed run logs the steps after its checkpoint again)."""
  steps = {}
  with open(log_path) as f:
    for line in f:
      fields = line.split()
      if fields[:2] != ['[train]', 'step'] or len(fields) < 3:
        continue
      try:
        step = int(fields[2].split('/')[0])
      except ValueError:
        continue
      values = {}
      for item in fields[3:]:
        name, _, value = item.partition('=')
        try:
          values[name] = float(value)
        except ValueError:
          pass
      steps[step] = values
  return steps


def read_last_losses(directory: str) -> Dict[str, float]:
  """The losses of the last `[train]` progress line in the cell's log (the loop mean over its
  last log interval; a student's human and pseudo terms apart), as train_<loss>; {} when the
  log has none. With a matched control beside it, they show what the pseudo labels changed."""
  path = os.path.join(directory, LOG)
  progress = read_progress(path) if os.path.exists(path) else {}
  values = progress[max(progress)] if progress else {}
  return {'train_' + name: values[name] for name in TRAIN_LOSSES if name in values}


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
  report = read_json(os.path.join(directory, f'round_{max(rounds)}', 'pseudo_report',
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
  """Runs `cmd` from the repository root, output to log_path; returns its exit code. Its wall
  seconds, added up over the starts of a resumed cell, and the commit of each start go to
  SECONDS beside the log."""
  return run_timed(cmd, log_path, os.path.join(os.path.dirname(log_path), SECONDS), REPO,
                   commit=code_commit(REPO) or 'unknown')


def _digest(name, scale, seed, budgets, gin_files, gin_params, dry_run) -> Optional[str]:
  """config_digest, or with --dry_run None when a gin file cannot be read here (a
  cluster's gs:// file without credentials): the commands still print."""
  if dry_run and any('://' in f for f in gin_files):
    return None
  try:
    return config_digest(name, scale, seed, budgets=budgets, gin_files=gin_files,
                         gin_params=gin_params)
  except (SuiteError, ImportError):
    if dry_run:
      return None
    raise


def run_cells(table_names: Sequence[str], scale: str, seeds: Sequence[int], out_dir: str, *,
              only: Sequence[str] = (), optional: bool = False,
              convergence: str = DEFAULT_CONVERGENCE, max_cells: Optional[int] = None,
              dry_run: bool = False, gin_files: Sequence[str] = (),
              record_dir: Optional[str] = None,
              gin_params: Sequence[str] = (), adopt_from: Optional[str] = None,
              runner: Callable[[Sequence[str], str], int] = subprocess_runner,
              echo: Callable[[str], None] = print) -> Dict[str, int]:
  """Runs the unfinished cells of the tables (and what they depend on), seed by seed.

  only: run just these cells (and their unfinished dependencies). optional: also the tables'
  optional rows and columns. convergence: the step budgets (digit scale), read before
  anything runs. max_cells: stop after starting this many runs. record_dir: where finished
  cells are recorded (module docstring). adopt_from: benchmarks/convergence.py's --out_dir,
  whose finished runs stand for the Rand Init cells of the same command (suite_adopt).
  Returns counts: ran, adopted, skipped (already done), failed, blocked.
  """
  order = planned_cells(table_names, scale, only, optional)
  budgets, budget_source = budgets_for(order, scale, convergence)
  commit = None if dry_run else repo_commit()
  if budgets and not dry_run:
    echo(f'[suite] steps: {", ".join(f"{p} {n}" for p, n in budgets.items())} from '
         f'{budget_source}; code: {commit}')
  counts = dict(ran=0, adopted=0, skipped=0, failed=0, blocked=0)
  started = 0
  for seed in seeds:
    digests = {n: _digest(n, scale, seed, budgets, gin_files, gin_params, dry_run)
               for n in order}
    for name in order:   # run folders of another step budget or bindings: moved aside
      directory = cell_dir(out_dir, scale, name, seed)
      for marker in (DONE, STARTED):
        run = read_json(os.path.join(directory, marker))
        old, conf = other_budget(run, name, budgets), other_config(run, digests[name])
        if old is None and conf is None:
          continue
        what, value = ('steps', old) if old is not None else ('config', conf)
        where = (f'{directory}.{what}_{value}' if dry_run
                 else _move_aside(directory, value, what))
        echo(f'[suite] {name} seed {seed}: its run folder '
             + (f'trained {old} steps, the budget is '
                f'{budgets[tables_lib.CELLS[name].budget_key]} now; ' if old is not None else
                f'has other bindings (config {conf}, now {digests[name]}); ')
             + ('would move it to ' if dry_run else 'moved it to ') + where)
        break

    def of_budget(run, n):   # a run (suite_done.json, record) of n's budget and bindings now
      ok = run and other_budget(run, n, budgets) is None and not other_config(run, digests[n])
      return run if ok else None

    def run_here(n, s=seed):
      return bool(of_budget(read_json(os.path.join(cell_dir(out_dir, scale, n, s), DONE)), n))

    def started_from(n, s=seed):   # {key: value} of the runs cell n starts from now
      out = {}
      for d in tables_lib.CELLS[n].depends(scale):
        run = (read_json(os.path.join(cell_dir(out_dir, scale, d, s), DONE))
               or read_record(record_dir, scale, d, s) or {})
        m = tables_lib.CELLS[d].metric
        if m in run.get('metrics', {}):
          out[start_key(n, d, scale)] = run['metrics'][m]
      return out

    def other_start(rec, n, s=seed):   # a record made from another teacher (or pre-training)
      now = started_from(n, s)
      return {k: (rec['metrics'][k], v) for k, v in now.items()
              if k in rec.get('metrics', {}) and not same_start(rec['metrics'][k], v)}

    def current(n, s=seed):   # the record, if of the budget, bindings and start it has now
      rec = of_budget(read_record(record_dir, scale, n, s), n)
      return None if rec and other_start(rec, n, s) else rec

    def finished(n):
      return run_here(n) or bool(current(n))

    for name in order:
      cell = tables_lib.CELLS[name]
      if not cell.seeded and seed != seeds[0]:
        continue
      directory = cell_dir(out_dir, scale, name, seed)
      # A recorded cell runs again only to give an unfinished cell its checkpoint.
      needed = [n for n in order if name in tables_lib.CELLS[n].depends(scale)
                and not finished(n)]
      if run_here(name) or (finished(name) and not needed):
        counts['skipped'] += 1
        continue
      deps = [d for d in cell.depends(scale) if not run_here(d)]
      cmd = cell_command(name, scale, seed, out_dir, budgets=budgets, gin_files=gin_files,
                         gin_params=gin_params)
      # a finished convergence run of this very command, copied instead of trained again
      source = None
      if (adopt_from and scale == 'digits' and cell.binary == 'train' and cell.policy
          and not cell.depends(scale) and digests[name]):
        source, why_not = suite_adopt.find(
            adopt_from, cell.budget_key, budgets[cell.budget_key], seed, digests[name],
            directory)
        if source and why_not:
          echo(('# ' if dry_run else '') + f'[suite] {name} seed {seed}: not adopting '
               f'{source}: {why_not}; ' + ('it would train' if dry_run else 'training it'))
          source = None
      if dry_run:   # commands to paste; an adopted cell as a shell comment
        echo(f'# [suite] {name} seed {seed}: would adopt {source} (suite_adopt.py)'
             if source else shlex.join(cmd))
        continue
      if deps:
        echo(f'[suite] {name} seed {seed}: blocked (unfinished: {", ".join(deps)})')
        counts['blocked'] += 1
        continue
      if source is None:
        if max_cells is not None and started >= max_cells:
          echo(f'[suite] --max_cells={max_cells} reached')
          return counts
        started += 1
      os.makedirs(directory, exist_ok=True)
      if os.path.exists(os.path.join(directory, FAILED)):
        os.remove(os.path.join(directory, FAILED))
      record = current(name)
      stale = None if record else read_record(record_dir, scale, name, seed)
      why = f' again for {", ".join(needed)} (recorded, run folder gone)' if record else ''
      start = time.time()
      if source:
        echo(f'[suite] {name} seed {seed}: adopting {source}{why}: the same command, and '
             'the training code of its commit '
             + ', '.join(commits_so_far(os.path.join(source, suite_adopt.TIMING))))
        suite_adopt.copy_run(source, directory, LOG, SECONDS)
        code = 0
      else:
        echo(f'[suite] {name} seed {seed}: running{why} ({os.path.join(directory, LOG)})')
        _write_json(os.path.join(directory, STARTED), {
            'steps': budgets.get(cell.budget_key) if scale == 'digits' else None,
            'commit': commit, 'config': digests[name]})
        code = runner(cmd, os.path.join(directory, LOG))
      # every start of a resumed cell (subprocess_runner's SECONDS), else this start's
      seconds = seconds_so_far(os.path.join(directory, SECONDS)) or time.time() - start
      # the CPU of every start: a cell resumed on another machine names both
      cpu = ' + '.join(cpus_so_far(os.path.join(directory, SECONDS))) or cpu_kind()
      # the commits its starts ran (each once): a cell resumed across commits names them all
      starts = commits_so_far(os.path.join(directory, SECONDS))
      metrics = read_metrics(name, directory) if code == 0 else None
      if metrics is not None:
        metrics.update(read_last_losses(directory))
        # what it started from (a student's binary records teacher_<metric> itself)
        for k, v in started_from(name).items():
          metrics.setdefault(k, v)
      # steps: the step budget of the cell's policy (a teacher trains it, a student
      # cells.student_steps of it); None: the cell's own gin files set them (pretrain; every
      # cell at full scale).
      info = {'seconds': seconds, 'seed': seed, 'command': cmd, 'commit': commit,
              'config': digests[name], 'cpu': cpu,
              'steps': budgets.get(cell.budget_key) if scale == 'digits' else None,
              'steps_from': budget_source if cell.policy else None,
              **({'start_commits': starts} if starts else {})}
      if source:   # the run's own commits; where it came from
        info.update(commit=', '.join(starts),
                    adopted_from=suite_adopt.describe(cell.budget_key, info['steps'], seed))
      if metrics is None:
        counts['failed'] += 1
        _write_json(os.path.join(directory, FAILED), {'exit_code': code, **info})
        echo(f'[suite] {name} seed {seed}: FAILED (exit {code}); see {LOG}')
        continue
      counts['adopted' if source else 'ran'] += 1
      _write_json(os.path.join(directory, DONE), {'metrics': metrics, **info})
      shown = metrics.get(cell.metric)
      echo(f'[suite] {name} seed {seed}: done in {seconds / 60:.1f} min'
           + (' (the convergence run\'s)' if source else '') + f', {cell.metric}='
           + ('n/a' if shown is None else f'{shown:.4f}'))
      if record:
        was = record['metrics'].get(cell.metric)
        other_cpu = ('' if record.get('cpu') in (None, info['cpu']) else
                     f' (the record ran on {record["cpu"]}, this run on {info["cpu"]})')
        echo(f'[suite] {name} seed {seed}: {cell.metric} {shown} against the record\'s '
             f'{was}: ' + ('the same' if was == shown else 'DIFFERENT; the record is replaced, '
                           'since the cells still to run start from this run')
             + other_cpu)
      if record_dir and (not record or (shown is not None
                                        and record['metrics'].get(cell.metric) != shown)):
        moved = other_start(stale, name) if stale else {}
        if stale:
          echo(f'[suite] {name} seed {seed}: replaces its record of '
               + (f'{stale.get("steps")} steps' if stale.get('steps') != info['steps'] else
                  'another start (' + ', '.join(f'{k} {a:.4f}, now {b:.4f}'
                                                for k, (a, b) in moved.items()) + ')'
                  if moved else f'other bindings (config {stale.get("config")})'))
        if cell.binary == 'self_train':
          metrics = {**metrics, **read_pseudo_quality(directory)}
        _write_json(record_path(record_dir, scale, name, seed),
                    portable({'metrics': metrics, **info}, out_dir))
  return counts


def start_key(name: str, dep: str, scale: str) -> str:
  """The metrics key under which cell `name`'s record keeps the metric of cell `dep` it
  started from: teacher_<metric> (its teacher: a student's, a continued cell's checkpoint),
  <dep>_<metric> (the shared pre-training)."""
  cell = tables_lib.CELLS[name]
  label = 'teacher' if dep == cell.teacher_for(scale) else dep
  return f'{label}_{tables_lib.CELLS[dep].metric}'


def same_start(a: float, b: float) -> bool:
  """Whether two recorded metrics of a start (a teacher's AP or mIoU, a pre-training's
  accuracy) name one model. They come from different files (a student's results.json teacher
  row, the teacher's eval_metrics.json), so they may differ in float rounding only."""
  return abs(a - b) <= 1e-9


# ------------------------------------------------------------------------- finished runs
def read_runs(name: str, scale: str, seeds: Sequence[int], out_dir: str,
              record_dir: Optional[str] = None,
              budgets: Optional[Mapping[str, int]] = None) -> Dict[str, dict]:
  """{seed: metrics} of cell `name`'s finished runs, from suite_done.json (with seconds,
  steps and commit), else its record under record_dir, else, for runs outside the suite
  (e.g. a cluster job from --dry_run's command), from eval_metrics.json / results.json.
  budgets (known_budgets): runs of another step budget are left out."""
  runs = {}
  for seed in seeds:
    directory = cell_dir(out_dir, scale, name, seed)
    found = [r for r in (read_json(os.path.join(directory, DONE)),
                         read_record(record_dir, scale, name, seed)) if r]
    done = next((r for r in found if other_budget(r, name, budgets or {}) is None), None)
    if found and not done:
      continue
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
