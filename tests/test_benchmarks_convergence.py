"""benchmarks/convergence.py: a finished run's record per task (detection's fields as
before, segmentation's keyed seg_<policy> and naming its task), the chosen budgets, and the
rule and tables written for each task that has runs."""
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
import convergence  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _finished_run(out_dir, key, budget, metrics, seconds=None):
  directory = convergence.run_dir(out_dir, key, budget, 0)
  os.makedirs(directory)
  with open(os.path.join(directory, 'eval_metrics.json'), 'w') as f:
    json.dump({'step': budget, **metrics}, f)
  if seconds is not None:
    with open(os.path.join(directory, 'convergence_seconds.json'), 'w') as f:
      json.dump({'seconds': seconds}, f)
    with open(os.path.join(directory, 'convergence_log.txt'), 'w') as f:
      f.write('img/s=9.0 img/s=5.0 img/s=7.0 img/s=6.0\n')   # the first (tracing) left out


def test_records_keys_and_chosen_budgets_per_task(tmp_path):
  out = str(tmp_path)
  _finished_run(out, 's1', 100, {'AP': 0.30, 'AP50': 0.5}, seconds=60)
  _finished_run(out, 's1', 200, {'AP': 0.355, 'AP50': 0.6})
  _finished_run(out, 'seg_s1', 100, {'mIoU': 0.5, 'pixel_accuracy': 0.9})
  _finished_run(out, 'seg_s1', 200, {'mIoU': 0.7, 'pixel_accuracy': 0.95})
  os.makedirs(convergence.run_dir(out, 's4', 300, 0))   # not finished: no record
  assert [convergence.task_of(k) for k in ('s4', 'seg_s4')] == ['detection', 'segmentation']
  assert convergence.key('segmentation', 's4') == 'seg_s4'
  runs = convergence.collect(out, 0)
  assert [list(r) for r in runs[:1] + runs[2:3]] == [
      ['policy', 'steps', 'seed', 'AP_x100', 'AP50_x100', 'seconds', 'images_per_sec'],
      ['policy', 'task', 'steps', 'seed', 'mIoU_x100', 'pixel_accuracy_x100', 'seconds',
       'images_per_sec']]
  assert runs[0] == {'policy': 's1', 'steps': 100, 'seed': 0, 'AP_x100': 30.0,
                     'AP50_x100': 50.0, 'seconds': 60, 'images_per_sec': 6.0}
  assert runs[3]['task'] == 'segmentation' and runs[3]['mIoU_x100'] == 70.0
  chosen = convergence.choose(runs, tolerance=1.0)
  assert chosen['s1']['steps'] == 200 and chosen['s1']['plateau_AP_x100'] == 35.5
  assert chosen['seg_s1']['steps'] == 200 and chosen['seg_s1']['still_rising']


def test_a_curve_of_one_budget_is_still_rising(tmp_path):
  """One budget shows no plateau: the suite would otherwise train a key's cells for a budget
  no longer one was compared with (the first s4_f100 run: 52.74 AP at 9,600 steps, below
  s4's 54.12 on a fifth of the labels)."""
  out = str(tmp_path)
  _finished_run(out, 's4_f100', 9600, {'AP': 0.5274, 'AP50': 0.74})
  _finished_run(out, 's4', 9600, {'AP': 0.5412, 'AP50': 0.76})
  _finished_run(out, 's4', 12000, {'AP': 0.5441, 'AP50': 0.76})
  chosen = convergence.choose(convergence.collect(out, 0), tolerance=1.0)
  assert chosen['s4_f100']['steps'] == 9600 and chosen['s4_f100']['still_rising']
  assert chosen['s4']['steps'] == 9600 and not chosen['s4']['still_rising']


def test_the_plot_names_a_still_rising_curve_so(tmp_path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  out = str(tmp_path)
  _finished_run(out, 's4_f100', 9600, {'AP': 0.5274, 'AP50': 0.74})
  _finished_run(out, 's4_f100', 19200, {'AP': 0.6253, 'AP50': 0.84})
  _finished_run(out, 's4', 9600, {'AP': 0.5412, 'AP50': 0.76})
  _finished_run(out, 's4', 12000, {'AP': 0.5441, 'AP50': 0.76})
  runs = convergence.collect(out, 0)
  results = {'runs': runs, 'chosen': convergence.choose(runs, tolerance=1.0), 'tolerance': 1.0}
  fig, ax = plt.subplots()
  convergence._plot_task(ax, results, 'detection')  # pylint: disable=protected-access
  plt.close(fig)
  assert ax.get_legend_handles_labels()[1] == ['S4 (chosen 9600)',
                                               'S4_F100 (still rising at 19200)']


def test_the_rule_and_tables_name_each_task_with_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(convergence, 'git_commit', lambda: 'abc1234')
  out = str(tmp_path / 'runs')
  _finished_run(out, 's4', 100, {'AP': 0.2, 'AP50': 0.4})
  _finished_run(out, 'seg_s4', 100, {'mIoU': 0.6, 'pixel_accuracy': 0.9})
  runs = convergence.collect(out, 0)
  prefix = str(tmp_path / 'results' / 'convergence')
  detection_only = convergence.write(runs[:1], prefix, 0, 1.0)
  assert detection_only['rule'] == ('chosen = smallest budget with AP >= plateau - 1.0 '
                                    '(plateau = best AP over the budgets)')
  both = convergence.write(runs, prefix, 0, 1.0)
  assert both['rule'] == detection_only['rule'] + ('; seg_<policy> keys: the same with mIoU '
                                                   'in place of AP')
  with open(prefix + '.md') as f:
    md = f.read()
  assert md.startswith('# AP against the step budget')
  assert '## Segmentation: mIoU against the step budget' in md
  assert '| S4 | 100 | 20.00 | 40.00 |  |  |' in md and '| SEG_S4 | 100 | 60.00 | 90.00 |' in md
  assert os.path.getsize(prefix + '.png') > 0
  segmentation_only = convergence.write(runs[1:], prefix, 0, 1.0)
  assert segmentation_only['rule'] == both['rule']
  with open(prefix + '.md') as f:
    assert f.read().startswith('# mIoU against the step budget (digit-scale segmentation')


def test_earlier_records_stay_in_the_curve(tmp_path, monkeypatch):
  """Runs in the results file that no run under out_dir redoes (another machine's) are
  kept, with the file's commit; a redone budget takes the new run; each run names its
  commit and the header lists them all."""
  monkeypatch.setattr(convergence, 'git_commit', lambda: 'new5678')
  prefix = str(tmp_path / 'results' / 'convergence')
  old_out = str(tmp_path / 'old')
  _finished_run(old_out, 's1', 100, {'AP': 0.30, 'AP50': 0.5})
  _finished_run(old_out, 's1', 200, {'AP': 0.36, 'AP50': 0.6})
  monkeypatch.setattr(convergence, 'git_commit', lambda: 'old1234')
  convergence.write(convergence.collect(old_out, 0), prefix, 0, 1.0)
  monkeypatch.setattr(convergence, 'git_commit', lambda: 'new5678')
  new_out = str(tmp_path / 'new')
  _finished_run(new_out, 's4', 300, {'AP': 0.2, 'AP50': 0.4}, seconds=60)
  _finished_run(new_out, 's1', 200, {'AP': 0.33, 'AP50': 0.55})
  with open(os.path.join(convergence.run_dir(new_out, 's4', 300, 0),
                         'convergence_seconds.json'), 'w') as f:
    json.dump({'seconds': 60, 'commit': 'new5678'}, f)
  runs = convergence.keep_earlier(convergence.collect(new_out, 0), prefix, 0)
  assert [(r['policy'], r['steps'], r['AP_x100'], r.get('commit')) for r in runs] == [
      ('s1', 100, 30.0, 'old1234'), ('s1', 200, 33.0, None), ('s4', 300, 20.0, 'new5678')]
  results = convergence.write(runs, prefix, 0, 1.0)
  assert results['commit'] == 'new5678, old1234'
  assert results['chosen']['s1']['steps'] == 200 and results['chosen']['s4']['steps'] == 300
  assert convergence.keep_earlier(runs, prefix, seed=1) == runs    # another seed's file


def test_a_run_names_the_cpu_of_its_starts(tmp_path, monkeypatch):
  """Seeded runs repeat only on the same kind of CPU, and a curve can span machines: each
  record names its starts' CPUs (convergence_seconds.json), the table shows them, and a
  record from before runs named their CPU (a timing file of seconds only) says so."""
  monkeypatch.setattr(convergence, 'git_commit', lambda: 'abc1234')
  out = str(tmp_path / 'runs')
  _finished_run(out, 'seg_s1', 4800, {'mIoU': 0.5197, 'pixel_accuracy': 0.97}, seconds=120)
  _finished_run(out, 'seg_s1', 9600, {'mIoU': 0.6, 'pixel_accuracy': 0.98}, seconds=60)
  with open(os.path.join(convergence.run_dir(out, 'seg_s1', 9600, 0),
                         'convergence_seconds.json'), 'w') as f:
    json.dump({'seconds': 60, 'cpus': ['AMD EPYC (AVX-512 + bf16), 2 CPUs',
                                       'AMD EPYC (AVX2), 2 CPUs']}, f)
  runs = convergence.collect(out, 0)
  assert 'cpu' not in runs[0]
  assert runs[1]['cpu'] == 'AMD EPYC (AVX-512 + bf16), 2 CPUs + AMD EPYC (AVX2), 2 CPUs'
  prefix = str(tmp_path / 'results' / 'convergence')
  convergence.write(runs, prefix, 0, 1.0)
  with open(prefix + '.md') as f:
    md = f.read()
  assert runs[0]['seconds'] == 120
  assert '| SEG_S1 | 4800 | 51.97 | 97.00 | 2.0 | 6.0 | not recorded |' in md
  assert ('| SEG_S1 | 9600 | 60.00 | 98.00 | 1.0 | 6.0 | AMD EPYC (AVX-512 + bf16), 2 CPUs + '
          'AMD EPYC (AVX2), 2 CPUs |') in md
  kept = convergence.keep_earlier([], prefix, 0)     # the run folders gone: the JSON keeps it
  assert kept[1]['cpu'] == runs[1]['cpu']


def test_a_labeled_fraction_is_its_own_curve(tmp_path):
  """--labeled_fraction=1.0: the runs bind LABELED_FRACTION, go to <policy>_f100 and are
  chosen under that key (the suite's 100% cells train it); the 20% curve is untouched."""
  out = str(tmp_path)
  cmd = convergence.command('s4', 9600, 0, out, ['X=1'], fraction=1.0)
  params = [a.split('=', 1)[1] for a in cmd if a.startswith('--gin_param=')]
  assert params == ['CELL_STEPS=9600', 'CELL_SEED=0', 'LABELED_FRACTION=1.0', 'X=1']
  assert cmd[-1] == f'--model_dir={os.path.join(out, "s4_f100", "steps_9600", "seed_0")}'
  default = convergence.command('s4', 9600, 0, out)          # 20%: the cell files' own
  assert not any('LABELED_FRACTION' in a for a in default)
  fifth = convergence.command('s4', 9600, 0, out, fraction=0.7 - 0.5)   # 0.1999..: 20%
  assert not any('LABELED_FRACTION' in a for a in fifth)
  assert default[-1].endswith(os.path.join('s4', 'steps_9600', 'seed_0'))
  _finished_run(out, 's4', 9600, {'AP': 0.54, 'AP50': 0.8})
  _finished_run(out, 's4_f100', 9600, {'AP': 0.60, 'AP50': 0.85})
  _finished_run(out, 's4_f100', 19200, {'AP': 0.63, 'AP50': 0.87})
  os.makedirs(os.path.join(out, 'notes'))                     # not a key: left alone
  runs = convergence.collect(out, 0)
  assert [(r['policy'], r['steps']) for r in runs] == [
      ('s4', 9600), ('s4_f100', 9600), ('s4_f100', 19200)]
  chosen = convergence.choose(runs, tolerance=1.0)
  assert chosen['s4']['steps'] == 9600
  assert chosen['s4_f100']['steps'] == 19200 and chosen['s4_f100']['still_rising']
  assert convergence.task_of('s4_f100') == 'detection'
  assert 'S4_F100' in convergence.markdown({'seed': 0, 'commit': 'c', 'tolerance': 1.0,
                                            'runs': runs, 'chosen': chosen})


def test_bad_fraction_flags_are_one_line_errors():
  for args, says in (((['s4'], ['100'], 0.0), '--labeled_fraction=0: expected'),
                     ((['s4'], ['100'], 1.5), '--labeled_fraction=1.5: expected'),
                     ((['s4'], ['100'], 0.201), '--labeled_fraction=0.201: expected a whole'),
                     ((['s4'], ['100'], 1.0, ['LABELED_FRACTION=1.0']),
                      '--gin_param=LABELED_FRACTION=1.0: set the fraction with '
                      '--labeled_fraction')):
    try:
      convergence.parse(*args)
    except convergence.ConvergenceError as e:
      assert str(e).startswith(says) and '\n' not in str(e)
    else:
      raise AssertionError(f'{args}: no error')


def test_an_f100_curve_joins_the_committed_json_and_reports_again(tmp_path):
  """A results JSON of 20% and segmentation runs (made on another machine) plus a new
  s4_f100 run: the write keeps them all, in task then key order, and --report_only's
  re-read of that file works too."""
  out, prefix = str(tmp_path / 'runs'), str(tmp_path / 'results' / 'convergence')
  _finished_run(out, 's4', 9600, {'AP': 0.54, 'AP50': 0.8})
  _finished_run(out, 'seg_s4', 4800, {'mIoU': 0.6, 'pixel_accuracy': 0.9})
  convergence.write(convergence.collect(out, 0), prefix, 0, 1.0)
  other = str(tmp_path / 'runs2')                       # the first machine's folders are gone
  _finished_run(other, 's4_f100', 9600, {'AP': 0.60, 'AP50': 0.85})
  runs = convergence.keep_earlier(convergence.collect(other, 0), prefix, 0)
  assert [r['policy'] for r in runs] == ['s4', 's4_f100', 'seg_s4']
  convergence.write(runs, prefix, 0, 1.0)
  again = convergence.keep_earlier([], prefix, 0)
  assert [r['policy'] for r in again] == ['s4', 's4_f100', 'seg_s4']
  with open(prefix + '.md') as f:
    assert 'A policy named <policy>_F<pct> trains on <pct>% of the labeled scenes' in f.read()
