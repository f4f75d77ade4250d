"""Loss curves of self-training students beside their matched controls, from the suite's logs.

    python benchmarks/student_curves.py --out_dir=runs/suite --cell=s4_f20 --seeds=0,1,2 \
        --variant=threshold_0.3=runs/suite_threshold_0.3 \
        --results=benchmarks/results/suite/digits/student_curves_s4_f20
    python benchmarks/student_curves.py --report_only \
        --results=benchmarks/results/suite/digits/student_curves_s4_f20     # PNG from the JSON

For each seed it reads the `[train]` progress lines of the suite's cells <cell>_self_training
and <cell>_matched_control (<out_dir>/digits/cells/<name>/seed_<s>/suite_log.txt), and of
<cell>_self_training under each --variant's out_dir (the suite run with other --gin_param
bindings): the human loss L_h and the pseudo loss L_p, each the mean over a log interval. The
matched control computes L_p too, at weight 0, so its L_p is how well a model that never
fits the pseudo labels happens to match them. A student resumed from a checkpoint logs some
steps twice: the last line of a step counts.

Writes <results>.json (the curves per run and seed, the mean L_h / L_p over the last tenth of
the steps, the run folders under <out_dir> and <label>) and <results>.png (L_h and L_p
against the step: the mean over the seeds per run, the seeds' range shaded). A folder without
a finished run is one line naming it, before anything is written.
"""
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags

from suite_runner import LOG
from suite_runner import read_progress

LOSSES = ('human_loss', 'pseudo_loss')
FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out_dir', None, 'The suite\'s --out_dir (its digits/cells/ folders).')
  flags.DEFINE_string('cell', 's4_f20', 'Cell prefix <policy>_f<pct>: compares '
                      '<cell>_self_training with <cell>_matched_control.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds, each a pair of runs.')
  flags.DEFINE_multi_string('variant', [], 'label=out_dir: <cell>_self_training of another '
                            'suite out_dir (e.g. run with another pseudo-label threshold).')
  flags.DEFINE_string('results', None, 'Prefix of the .json / .png written.')
  flags.DEFINE_bool('report_only', False, 'Redraw the PNG from <results>.json.')


class CurvesError(ValueError):
  """A bad flag or a missing log (one line)."""


def curve(log_path: str) -> Dict[str, List[float]]:
  """step, human_loss, pseudo_loss as lists in step order (steps that log both)."""
  progress = read_progress(log_path)
  steps = [s for s in sorted(progress) if all(k in progress[s] for k in LOSSES)]
  out = {'step': steps}
  out.update({k: [progress[s][k] for s in steps] for k in LOSSES})
  return out


def tail_mean(values: Sequence[float], fraction: float = 0.1) -> Optional[float]:
  """Mean of the last `fraction` of the values (at least one)."""
  if not values:
    return None
  n = max(1, int(round(len(values) * fraction)))
  return sum(values[-n:]) / n


def run_folders(out_dir: str, cell: str, seeds: Sequence[int],
                variants: Dict[str, str]) -> Dict[str, Dict[int, str]]:
  """{run label: {seed: folder}}: self-training, matched control, then the variants."""
  runs = {'self-training': (out_dir, f'{cell}_self_training'),
          'matched control': (out_dir, f'{cell}_matched_control')}
  runs.update({label: (where, f'{cell}_self_training') for label, where in variants.items()})
  return {label: {s: os.path.join(where, 'digits', 'cells', name, f'seed_{s}')
                  for s in seeds}
          for label, (where, name) in runs.items()}


def collect(out_dir: str, cell: str, seeds: Sequence[int], variants: Dict[str, str]) -> dict:
  folders = run_folders(out_dir, cell, seeds, variants)
  for label, by_seed in folders.items():
    for seed, folder in by_seed.items():
      log = os.path.join(folder, LOG)
      if not os.path.exists(os.path.join(folder, 'suite_done.json')) or not os.path.exists(log):
        raise CurvesError(f'{label} seed {seed}: no finished suite run in {folder} '
                          f'(suite_done.json and {LOG})')
  runs = {label: {str(s): curve(os.path.join(f, LOG)) for s, f in by_seed.items()}
          for label, by_seed in folders.items()}
  for label, by_seed in runs.items():
    for seed, c in by_seed.items():
      if not c['step']:
        raise CurvesError(f'{label} seed {seed}: {folders[label][int(seed)]}/{LOG} has no '
                          f'[train] line with both {" and ".join(LOSSES)} (not a student?)')
  last = {label: {str(s): {k: tail_mean(c[k]) for k in LOSSES} for s, c in by_seed.items()}
          for label, by_seed in runs.items()}
  roots = {'<out_dir>': out_dir, **{f'<{label}>': where for label, where in variants.items()}}

  def shown(path):   # no machine paths: each out_dir by its flag's name
    for name, root in roots.items():
      if path.startswith(root.rstrip(os.sep) + os.sep):
        return name + path[len(root.rstrip(os.sep)):]
    return path
  return {'cell': cell, 'seeds': list(seeds), 'runs': runs, 'last_tenth_mean': last,
          'folders': {label: {str(s): shown(f) for s, f in by_seed.items()}
                      for label, by_seed in folders.items()},
          'note': 'L_h, L_p: the [train] progress lines\' interval means; the matched '
                  'control computes L_p at weight 0.'}


def plot(results: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12, 4), dpi=100)
  for ax, loss, title in zip(axes, LOSSES, ('human loss L_h', 'pseudo loss L_p')):
    for label, by_seed in results['runs'].items():
      curves = [c for c in by_seed.values() if c['step']]
      if not curves:
        continue
      steps = sorted(set.intersection(*(set(c['step']) for c in curves)))
      rows = [[dict(zip(c['step'], c[loss]))[s] for s in steps] for c in curves]
      mean = [sum(col) / len(col) for col in zip(*rows)]
      line, = ax.plot(steps, mean, label=f'{label} (n = {len(rows)})')
      ax.fill_between(steps, [min(col) for col in zip(*rows)],
                      [max(col) for col in zip(*rows)], color=line.get_color(), alpha=0.2)
    ax.set_xlabel('student step')
    ax.set_ylabel(title)
    ax.set_title(f'{results["cell"]}: {title} (mean over seeds, range shaded)')
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def summary(results: dict) -> str:
  lines = [f'{results["cell"]}: mean over the last tenth of the student\'s steps',
           '| run | seed | L_h | L_p |', '| --- | ---: | ---: | ---: |']
  for label, by_seed in results['last_tenth_mean'].items():
    for seed, values in by_seed.items():
      lines.append(f'| {label} | {seed} | {values["human_loss"]:.3f} | '
                   f'{values["pseudo_loss"]:.3f} |')
  return '\n'.join(lines) + '\n'


def run(out_dir: Optional[str], cell: str, seeds: Sequence[int], variants: Sequence[str],
        results: str, report_only: bool = False) -> dict:
  if not results:
    raise CurvesError('--results: a path prefix is required')
  if report_only:
    try:
      with open(results + '.json') as f:
        data = json.load(f)
    except OSError:
      raise CurvesError(f'--results: {results}.json does not exist') from None
  else:
    if not out_dir:
      raise CurvesError('--out_dir: the suite\'s out_dir is required')
    pairs = {}
    for item in variants:
      label, sep, where = item.partition('=')
      if not sep or not label or not where:
        raise CurvesError(f'--variant={item}: expected label=out_dir')
      pairs[label] = where
    data = collect(out_dir, cell, seeds, pairs)
    os.makedirs(os.path.dirname(results) or '.', exist_ok=True)
    with open(results + '.json', 'w') as f:
      json.dump(data, f, indent=1)
  plot(data, results + '.png')
  print(summary(data), end='')
  return data


def main(argv):
  del argv
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    print(f'error: --seeds={",".join(FLAGS.seeds)}: expected integers', file=sys.stderr)
    return 2
  try:
    run(FLAGS.out_dir, FLAGS.cell, seeds, FLAGS.variant, FLAGS.results, FLAGS.report_only)
  except CurvesError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
