"""AP against the step budget: how long a digit-scale teacher must train to converge.

    python benchmarks/convergence.py --policies=s1,s4 --budgets=500,1000,2000,3000
    python benchmarks/convergence.py --task=segmentation --policies=s1,s4 --budgets=500,1000,2000
    python benchmarks/convergence.py --policies=s4 --labeled_fraction=1.0 --budgets=9600,19200
    python benchmarks/convergence.py --report_only        # JSON / Markdown / PNG from finished runs

Every (policy, budget) is its own run of the digit-scale cell teacher
(gin_configs/digits/experiments/cell.gin + gin_configs/digits/augment_<policy>.gin, 20% of the
labeled scenes) with its own warm-up + cosine schedule over `budget` steps, so AP at a budget is
the AP of a finished run of that length, not a point in the middle of a longer one. Runs are
subprocesses of bin/train_teacher.py in <out_dir>/<policy>/steps_<budget>/seed_<seed>/; one
whose eval_metrics.json is at its budget is skipped, so the benchmark resumes where it was
killed.

The chosen budget of a policy is the smallest budget whose AP is within `--tolerance` (1 AP)
of the plateau, the best AP over the budgets run. A plateau that is the largest budget and
more than the tolerance above the one before it, or a curve of one budget, is marked
`still_rising`: the curve has not been seen to flatten and longer budgets should be added.
benchmarks/suite.py trains every cell of a policy (and labeled fraction, below) for its
chosen budget.

Writes benchmarks/results/convergence.{json,md,png} (AP x 100, wall time, img/s, the code's
commit and the CPU kinds of its starts per run). Records already in that JSON that no run
under --out_dir redoes are kept, so a curve grows across machines whose run folders are gone.

--labeled_fraction=1.0 measures a policy's curve on all the labeled scenes: its runs go to
<out_dir>/<policy>_f100/..., its key is <policy>_f100 (chosen.s4_f100.steps), and the suite's
cells of that fraction (Table 3's 100% column) train it. More labels can need more steps, and
the paper trains every data size until it converges.

--task=segmentation does the same for the digit-scale segmentation teacher
(gin_configs/digits/experiments/seg_cell.gin, Table 6's cells) with mIoU x 100 (and pixel
accuracy) in place of AP (and AP50): its runs go to <out_dir>/seg_<policy>/..., its records
and chosen budgets are keyed seg_<policy> (chosen.seg_s4.steps, mIoU_x100,
plateau_mIoU_x100) in the same convergence.json, and the Markdown and PNG get a segmentation
section. The tolerance is then in mIoU points. Detection's records, keys and output are as
before; every write collects the finished runs of both tasks under --out_dir.
"""
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags

from cells import BUDGET_KEY_PREFIX
from cells import DEFAULT_FRACTION
from cells import POLICIES
from cells import budget_key
from timed_run import code_commit
from timed_run import cpus_of
from timed_run import read_timing
from timed_run import run_timed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELL = 'gin_configs/digits/experiments/cell.gin'
SEG_CELL = 'gin_configs/digits/experiments/seg_cell.gin'
AUGMENT = 'gin_configs/digits/augment_{}.gin'
SEG = BUDGET_KEY_PREFIX['segmentation']   # of a segmentation policy's key (folder, record, chosen)
# Per task: the cell file, the key prefix, the eval_metrics.json keys recorded (x 100: the
# metric the budget is chosen on, then a second one shown beside it), whether a record names
# its task (detection's records, older, do not), what convergence.json's `rule` adds when
# the task has runs, and the plot panel's labels.
TASKS = {
    'detection': dict(
        cell=CELL, prefix='', metrics=('AP', 'AP50'), record_names_task=False, rule_note='',
        ylabel='COCO AP x 100 (val)', title='Digit-scale teacher: AP against the step budget'),
    'segmentation': dict(
        cell=SEG_CELL, prefix=SEG, metrics=('mIoU', 'pixel_accuracy'), record_names_task=True,
        rule_note='; seg_<policy> keys: the same with mIoU in place of AP',
        ylabel='mIoU x 100 (val)', title='Segmentation teacher: mIoU against the step budget'),
}

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The binary's flags; defined on run only, so importing this module (tests, suite.py)
  never clashes with another module's flags of the same name."""
  flags.DEFINE_enum('task', 'detection', list(TASKS), 'Which digit-scale teacher: detection '
                    '(experiments/cell.gin, AP) or segmentation (experiments/seg_cell.gin, mIoU; '
                    'keys seg_<policy>).')
  flags.DEFINE_list('policies', ['s1', 's4'], 'Augmentation policies (s1..s4).')
  flags.DEFINE_list('budgets', ['500', '1000', '2000', '3000'], 'Step budgets, one run each.')
  flags.DEFINE_integer('seed', 0, 'CELL_SEED of every run.')
  flags.DEFINE_float('labeled_fraction', DEFAULT_FRACTION,
                     'Of the labeled scenes (the cell files: 0.2). Another fraction is its '
                     'own curve, key <policy>_f<pct> (s4_f100), which the suite\'s cells of '
                     'that fraction train.')
  flags.DEFINE_float('tolerance', 1.0, 'A budget is converged within this many AP (x100; '
                     'segmentation: mIoU x100) of the plateau.')
  flags.DEFINE_string('out_dir', 'runs/convergence', 'Where the runs go.')
  flags.DEFINE_string('results', 'benchmarks/results/convergence',
                      'Prefix of the .json / .md / .png written.')
  flags.DEFINE_multi_string('gin_param', [], 'Extra gin bindings for every run.')
  flags.DEFINE_bool('report_only', False, 'Only write the results from finished runs.')


class ConvergenceError(ValueError):
  """A bad flag (one line)."""


def key(task: str, policy: str, fraction: float = DEFAULT_FRACTION) -> str:
  """A (task, policy, labeled fraction)'s key: its folder under out_dir, its records' and
  chosen's `policy` ('s4'; segmentation 'seg_s4'; 100% labels 's4_f100'), as
  benchmarks/suite.py looks it up (cells.budget_key)."""
  return budget_key(task, policy, fraction)


# A key's folder name under out_dir (collect): [seg_]<policy>[_f<pct>].
KEY_PATTERN = re.compile(r'(seg_)?s[1-4](_f\d+)?')


def key_order(policy_key: str):
  """Runs and folders in TASKS' order (detection's keys, then segmentation's); by name
  within a task (s1, s4, s4_f100)."""
  return (list(TASKS).index(task_of(policy_key)), policy_key)


def task_of(policy_key: str) -> str:
  """The task whose key prefix `policy_key` starts with (the longest one: detection's is '')."""
  return max((t for t, spec in TASKS.items() if policy_key.startswith(spec['prefix'])),
             key=lambda t: len(TASKS[t]['prefix']))


def metric_of(policy_key: str) -> str:
  """The record field a key's budget is chosen on: AP_x100 or mIoU_x100."""
  return TASKS[task_of(policy_key)]['metrics'][0] + '_x100'


def run_dir(out_dir: str, policy: str, budget: int, seed: int) -> str:
  """policy: a key ('s4' or 'seg_s4')."""
  return os.path.join(out_dir, policy, f'steps_{budget}', f'seed_{seed}')


def command(policy: str, budget: int, seed: int, out_dir: str,
            gin_params: Sequence[str] = (), task: str = 'detection',
            fraction: float = DEFAULT_FRACTION) -> List[str]:
  """The teacher run of one budget; a fraction other than the cell files' 20% is bound with
  LABELED_FRACTION (as the suite's cells of that fraction bind it)."""
  params = [f'CELL_STEPS={budget}', f'CELL_SEED={seed}']
  if key(task, policy, fraction) != key(task, policy):
    params.append(f'LABELED_FRACTION={fraction}')
  params += list(gin_params)
  return ([sys.executable, 'bin/train_teacher.py', f'--gin_file={TASKS[task]["cell"]}',
           f'--gin_file={AUGMENT.format(policy)}']
          + [f'--gin_param={p}' for p in params]
          + [f'--model_dir={run_dir(out_dir, key(task, policy, fraction), budget, seed)}'])


def finished(directory: str, budget: int) -> Optional[dict]:
  """eval_metrics.json of a run that reached its budget, else None."""
  path = os.path.join(directory, 'eval_metrics.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    metrics = json.load(f)
  return metrics if metrics.get('step') == budget else None


def images_per_second(log_path: str) -> Optional[float]:
  """Median img/s of the progress lines after the first (which includes tracing)."""
  if not os.path.exists(log_path):
    return None
  with open(log_path) as f:
    rates = [float(m) for m in re.findall(r'img/s=([0-9.]+)', f.read())]
  rates = sorted(rates[1:] or rates)
  return rates[len(rates) // 2] if rates else None


def run_one(policy: str, budget: int, seed: int, out_dir: str,
            gin_params: Sequence[str], task: str = 'detection',
            fraction: float = DEFAULT_FRACTION) -> None:
  """Trains one budget (resuming a killed run). Its wall seconds add up over starts:
  convergence_seconds.json is rewritten every minute while it trains."""
  name = key(task, policy, fraction)
  directory = run_dir(out_dir, name, budget, seed)
  log = os.path.join(directory, 'convergence_log.txt')
  timing = os.path.join(directory, 'convergence_seconds.json')
  if finished(directory, budget) is None:
    os.makedirs(directory, exist_ok=True)
    cmd = command(policy, budget, seed, out_dir, gin_params, task, fraction)
    print(f'[convergence] {name} {budget} steps: running ({log})', flush=True)
    code = run_timed(cmd, log, timing, REPO, extra={'commit': git_commit()},
                     commit=code_commit(REPO) or 'unknown')
    if code != 0 or finished(directory, budget) is None:
      raise RuntimeError(f'{name} {budget} steps failed (exit {code}); see {log}')


def record(policy: str, budget: int, seed: int, out_dir: str) -> Optional[dict]:
  """policy: a key ('s4' or 'seg_s4'). Detection: AP_x100, AP50_x100; segmentation (with
  task 'segmentation'): mIoU_x100, pixel_accuracy_x100."""
  directory = run_dir(out_dir, policy, budget, seed)
  metrics = finished(directory, budget)
  if metrics is None:
    return None
  timing = read_timing(os.path.join(directory, 'convergence_seconds.json'))  # {}: none
  seconds, commit, cpus = timing.get('seconds'), timing.get('commit'), cpus_of(timing)
  ips = images_per_second(os.path.join(directory, 'convergence_log.txt'))
  task = task_of(policy)
  spec = TASKS[task]
  return {'policy': policy, **({'task': task} if spec['record_names_task'] else {}),
          'steps': budget, 'seed': seed,
          **{f'{m}_x100': round(100 * metrics[m], 2) for m in spec['metrics']},
          'seconds': seconds, 'images_per_sec': ips, **({'commit': commit} if commit else {}),
          **({'cpu': ' + '.join(cpus)} if cpus else {})}


def keep_earlier(runs: List[dict], prefix: str, seed: int) -> List[dict]:
  """`runs` (finished under out_dir) plus the records of <prefix>.json that they do not
  redo (same policy and steps; same seed): runs made on another machine, whose folders are
  gone, stay in the curve. A kept record without its own commit gets the file's."""
  path = prefix + '.json'
  if not os.path.exists(path):
    return runs
  with open(path) as f:
    earlier = json.load(f)
  if earlier.get('seed') != seed:
    return runs
  redone = {(r['policy'], r['steps']) for r in runs}
  kept = [dict(r, commit=r.get('commit') or earlier.get('commit')) for r in earlier['runs']
          if (r['policy'], r['steps']) not in redone]
  return sorted(kept + runs, key=lambda r: (key_order(r['policy']), r['steps']))


def collect(out_dir: str, seed: int) -> List[dict]:
  """Every finished run under out_dir for `seed`, whatever invocation ran it: detection's,
  then segmentation's (seg_<policy>); each in key order (s4 before s4_f100)."""
  runs = []
  names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
  keys = sorted((n for n in names if KEY_PATTERN.fullmatch(n)), key=key_order)
  for policy in keys:
    folder = os.path.join(out_dir, policy)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    for budget in sorted(int(n[len('steps_'):]) for n in names
                         if re.fullmatch(r'steps_\d+', n)):
      rec = record(policy, budget, seed, out_dir)
      if rec:
        runs.append(rec)
  return runs


def choose(runs: Sequence[dict], tolerance: float) -> Dict[str, dict]:
  """Per policy (key): the plateau (best AP over budgets; segmentation keys: mIoU) and the
  smallest budget within `tolerance` of it; `still_rising` when the best is the largest
  budget and more than `tolerance` above the next largest, or the only budget (one point
  shows no plateau)."""
  chosen = {}
  for policy in sorted({r['policy'] for r in runs}):
    m = metric_of(policy)
    curve = sorted((r for r in runs if r['policy'] == policy), key=lambda r: r['steps'])
    plateau = max(r[m] for r in curve)
    pick = next(r for r in curve if r[m] >= plateau - tolerance)
    rising = curve[-1][m] == plateau and (len(curve) == 1
                                          or plateau - curve[-2][m] > tolerance)
    chosen[policy] = {'steps': pick['steps'], m: pick[m],
                      f'plateau_{m}': plateau, 'still_rising': rising,
                      'seconds': pick['seconds'], 'budgets': [r['steps'] for r in curve]}
  return chosen


def git_commit() -> str:
  try:
    return subprocess.check_output(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO,
                                   text=True).strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def _split(results: dict, task: str):
  """The runs and chosen budgets of one task."""
  runs = [r for r in results['runs'] if task_of(r['policy']) == task]
  chosen = {p: c for p, c in results['chosen'].items() if task_of(p) == task}
  return runs, chosen


def _segmentation_markdown(results: dict, title: str) -> List[str]:
  runs, chosen = _split(results, 'segmentation')
  lines = [title, '',
           f'Each row is its own run of the segmentation cell teacher '
           f'(experiments/seg_cell.gin; warm-up + cosine over its budget), seed '
           f'{results["seed"]}, code at {results["commit"]}. mIoU x 100 on the 500 validation '
           f'scenes. Chosen: the smallest budget within {results["tolerance"]} mIoU of the '
           f'best (the plateau); benchmarks/suite.py trains Table 6\'s cells of policy sX '
           f'for chosen.seg_sX.' + _fraction_note(runs), '',
           '| policy | steps | mIoU | pixel accuracy | wall (min, all starts) | img/s | CPU |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  return lines + _rows(runs, chosen, 'mIoU', 'pixel_accuracy')


def _fraction_note(runs) -> str:
  """The sentence that says which labeled fraction the rows trained on."""
  if not any('_f' in r['policy'] for r in runs):
    return ' Every run trains on 20% of the labeled scenes.'
  return (' A policy named <policy>_F<pct> trains on <pct>% of the labeled scenes '
          '(--labeled_fraction), the others on 20%.')


def _rows(runs, chosen, metric: str, second: str) -> List[str]:
  """Table rows of every run (metric, second metric, wall time, img/s, the CPU of its
  starts: seeded runs repeat only on the same kind of CPU), then the chosen budgets table;
  the runs table's header comes before."""
  lines = []
  for r in runs:
    wall = f'{r["seconds"] / 60:.1f}' if r['seconds'] else ''
    ips = f'{r["images_per_sec"]:.1f}' if r['images_per_sec'] else ''
    lines.append(f'| {r["policy"].upper()} | {r["steps"]} | {r[metric + "_x100"]:.2f} | '
                 f'{r[second + "_x100"]:.2f} | {wall} | {ips} | '
                 f'{r.get("cpu", "not recorded")} |')
  lines += ['', f'| policy | chosen steps | {metric} there | plateau {metric} | still rising |',
            '| --- | --- | --- | --- | --- |']
  for policy, c in chosen.items():
    lines.append(f'| {policy.upper()} | {c["steps"]} | {c[metric + "_x100"]:.2f} | '
                 f'{c["plateau_" + metric + "_x100"]:.2f} | '
                 f'{"yes" if c["still_rising"] else "no"} |')
  return lines


def markdown(results: dict) -> str:
  """Detection's tables (as before), then, when there are segmentation runs, theirs."""
  det_runs, det_chosen = _split(results, 'detection')
  seg_runs, _ = _split(results, 'segmentation')
  if seg_runs and not det_runs:
    return '\n'.join(_segmentation_markdown(
        results, '# mIoU against the step budget (digit-scale segmentation teacher)')) + '\n'
  lines = ['# AP against the step budget (digit-scale teacher)', '',
           f'Each row is its own run (warm-up + cosine over its budget), seed '
           f'{results["seed"]}, code at {results["commit"]}. COCO AP x 100 on the 500 '
           f'validation scenes. Chosen: the smallest budget within {results["tolerance"]} AP '
           f'of the best (the plateau).' + _fraction_note(det_runs), '',
           '| policy | steps | AP | AP50 | wall (min, all starts) | img/s | CPU |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  lines += _rows(det_runs, det_chosen, 'AP', 'AP50')
  if seg_runs:
    lines += [''] + _segmentation_markdown(
        results, '## Segmentation: mIoU against the step budget (digit-scale segmentation '
                 'teacher)')
  return '\n'.join(lines) + '\n'


def _plot_task(ax, results: dict, task: str) -> None:
  runs, chosen = _split(results, task)
  m = TASKS[task]['metrics'][0] + '_x100'
  for policy, c in chosen.items():
    curve = sorted((r for r in runs if r['policy'] == policy), key=lambda r: r['steps'])
    state = 'still rising at' if c.get('still_rising') else 'chosen'
    line, = ax.plot([r['steps'] for r in curve], [r[m] for r in curve], 'o-',
                    label=f'{policy.upper()} ({state} {c["steps"]})')
    ax.plot([c['steps']], [c[m]], '*', ms=14, color=line.get_color())
    ax.axhline(c[f'plateau_{m}'] - results['tolerance'], color=line.get_color(), lw=0.6,
               ls=':')
  ax.set_xlabel('step budget (batch 16; each point its own cosine run)')
  ax.set_ylabel(TASKS[task]['ylabel'])
  ax.set_title(TASKS[task]['title'])
  ax.grid(alpha=0.3)
  ax.legend()


def plot(results: dict, path: str) -> None:
  """Detection's curves (as before); with segmentation runs, theirs in a second panel."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks = [t for t in TASKS if _split(results, t)[0]] or ['detection']
  fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), dpi=120, squeeze=False)
  for ax, task in zip(axes[0], tasks):
    _plot_task(ax, results, task)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write(runs: List[dict], prefix: str, seed: int, tolerance: float) -> dict:
  commits = sorted({r['commit'] for r in runs if r.get('commit')})
  results = {'seed': seed, 'tolerance': tolerance,
             'commit': ', '.join(commits) if commits else git_commit(),
             'rule': f'chosen = smallest budget with AP >= plateau - {tolerance} '
                     f'(plateau = best AP over the budgets)',
             'runs': runs, 'chosen': choose(runs, tolerance)}
  for task in sorted({task_of(r['policy']) for r in runs}, key=list(TASKS).index):
    results['rule'] += TASKS[task]['rule_note']

  os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
  with open(prefix + '.json', 'w') as f:
    json.dump(results, f, indent=1)
  with open(prefix + '.md', 'w') as f:
    f.write(markdown(results))
  plot(results, prefix + '.png')
  print(markdown(results), flush=True)
  return results


def parse(policies: Sequence[str], budgets: Sequence[str],
          fraction: float = DEFAULT_FRACTION, gin_params: Sequence[str] = ()):
  bad = [p for p in policies if p not in POLICIES]
  if bad:
    raise ConvergenceError(f'--policies: {",".join(bad)} not among {",".join(POLICIES)}')
  if not 0 < fraction <= 1:
    raise ConvergenceError(f'--labeled_fraction={fraction:g}: expected a fraction in (0, 1]')
  if abs(fraction * 100 - round(fraction * 100)) > 1e-9:   # keys name whole percents
    raise ConvergenceError(f'--labeled_fraction={fraction:g}: expected a whole percent '
                           f'(0.2, 0.5, 1.0), which names its budget\'s key')
  bound = [p for p in gin_params if p.replace(' ', '').startswith('LABELED_FRACTION=')]
  if bound:   # it would train another fraction under the 20% key
    raise ConvergenceError(f'--gin_param={bound[0]}: set the fraction with '
                           f'--labeled_fraction, which also names its budget\'s key')
  try:
    steps = sorted({int(b) for b in budgets})
  except ValueError:
    raise ConvergenceError(f'--budgets={",".join(budgets)}: expected integers') from None
  if not steps or steps[0] <= 0:
    raise ConvergenceError(f'--budgets={",".join(budgets)}: expected positive integers')
  return list(policies), steps


def main(_):
  try:
    policies, budgets = parse(FLAGS.policies, FLAGS.budgets, FLAGS.labeled_fraction,
                              FLAGS.gin_param)
  except ConvergenceError as e:
    sys.exit(f'error: {e}')
  out_dir = os.path.join(REPO, FLAGS.out_dir) if not os.path.isabs(FLAGS.out_dir) else FLAGS.out_dir
  prefix = os.path.join(REPO, FLAGS.results) if not os.path.isabs(FLAGS.results) else FLAGS.results
  if not FLAGS.report_only:
    for policy in policies:        # one policy's whole curve first
      for budget in budgets:
        run_one(policy, budget, FLAGS.seed, out_dir, FLAGS.gin_param, FLAGS.task,
                FLAGS.labeled_fraction)
        write(keep_earlier(collect(out_dir, FLAGS.seed), prefix, FLAGS.seed), prefix,
              FLAGS.seed, FLAGS.tolerance)
  runs = keep_earlier(collect(out_dir, FLAGS.seed), prefix, FLAGS.seed)
  if not runs:
    sys.exit(f'error: no finished run under {out_dir}')
  write(runs, prefix, FLAGS.seed, FLAGS.tolerance)


if __name__ == '__main__':
  define_flags()
  app.run(main)
