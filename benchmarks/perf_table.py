"""One performance table: this project beside Model Garden, from every speed benchmark.

  python benchmarks/perf_table.py             # run the benchmarks (one at a time), then print
  python benchmarks/perf_table.py --no_run    # only read benchmarks/results/*.json and print
  python benchmarks/perf_table.py --only=train_step --only=pseudo_label

The benchmarks (each writes benchmarks/results/<name>.json and .md):
  input_pipeline  tf.data throughput of the S1-S4 detection / segmentation pipelines vs
                  Model Garden's parsers                     (benchmarks/input_pipeline.py)
  train_step      teacher training images/s vs Model Garden's RetinaNetTask
                                                             (benchmarks/train_step.py)
  pseudo_label    pseudo-labeling images/s vs Model Garden    (benchmarks/pseudo_label.py)

Rows come from each JSON's paired measurements: a `median` dict of {ours, model_garden}
numbers, or a `runs` list whose entries differ by `implementation` (or `side`) and agree on
the rest of their configuration. Writes benchmarks/results/perf_table.md (and .json).
"""
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results')
BENCHMARKS = ('input_pipeline', 'train_step', 'pseudo_label')
OURS, MG = 'ours', 'model_garden'
_IMPL_KEYS = ('implementation', 'side', 'impl')
_UNITS = {'images_per_sec': 'img/s (wall)', 'img_per_sec': 'img/s (wall)',
          'images_per_cpu_sec': 'img/CPU-s', 'img_per_cpu_sec': 'img/CPU-s'}


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label(config: Dict[str, Any]) -> str:
  return ' '.join(f'{v}' for v in config.values()) or '-'


def rows_from_result(name: str, result: Dict[str, Any]) -> List[Dict[str, Any]]:
  """Paired (ours, Model Garden) rows of one benchmark's JSON."""
  rows = []
  median = result.get('median')
  if isinstance(median, dict):
    for measure, pair in median.items():
      if isinstance(pair, dict) and _number(pair.get(OURS)) and _number(pair.get(MG)):
        rows.append({'benchmark': name, 'configuration': pair.get('configuration', '-'),
                     'measure': measure, OURS: pair[OURS], MG: pair[MG]})
  runs = result.get('runs')
  if not rows and isinstance(runs, list):
    groups: Dict[tuple, Dict[str, Dict[str, Any]]] = {}
    configs: Dict[tuple, Dict[str, Any]] = {}
    for run in runs:
      impl_key = next((k for k in _IMPL_KEYS if k in run), None)
      if impl_key is None:
        continue
      config = {k: v for k, v in run.items()
                if k != impl_key and isinstance(v, (str, bool)) or
                (k in ('image_size', 'batch_size') and _number(v))}
      key = tuple(sorted(config.items()))
      configs[key] = config
      groups.setdefault(key, {})[run[impl_key]] = run
    for key, impls in groups.items():
      if OURS not in impls or MG not in impls:
        continue
      for measure, value in impls[OURS].items():
        other = impls[MG].get(measure)
        if measure in _UNITS and _number(value) and _number(other):
          rows.append({'benchmark': name, 'configuration': _label(configs[key]),
                       'measure': measure, OURS: value, MG: other})
  for row in rows:
    row['ratio'] = row[OURS] / row[MG] if row[MG] else None
  return rows


def format_table(rows: Sequence[Dict[str, Any]], missing: Sequence[str] = ()) -> str:
  lines = ['# Performance: rethink-st vs Model Garden', '',
           'Same model / data / settings on both sides (see each benchmark\'s own .md in '
           'benchmarks/results/ for its setup). "img/CPU-s" divides by the process\'s CPU '
           'seconds (robust to other users of a shared machine); ours / MG > 1 means this '
           'project is faster. Written by `benchmarks/perf_table.py`.', '',
           '| benchmark | configuration | measure | ours | Model Garden | ours / MG |',
           '| --- | --- | --- | ---: | ---: | ---: |']
  for r in rows:
    ratio = '-' if r['ratio'] is None else f'{r["ratio"]:.2f}'
    lines.append(f'| {r["benchmark"]} | {r["configuration"]} | '
                 f'{_UNITS.get(r["measure"], r["measure"])} | {r[OURS]:.1f} | {r[MG]:.1f} | '
                 f'{ratio} |')
  for name in missing:
    lines.append(f'| {name} | no results | | | | |')
  return '\n'.join(lines) + '\n'


def run_benchmark(name: str, python: str = sys.executable) -> int:
  script = os.path.join(HERE, f'{name}.py')
  if not os.path.exists(script):
    print(f'[perf_table] {name}: {script} does not exist; skipped', flush=True)
    return 1
  print(f'[perf_table] running {os.path.relpath(script, REPO)}', flush=True)
  return subprocess.call([python, script], cwd=REPO)


def collect(names: Sequence[str], results_dir: str = RESULTS):
  rows, missing = [], []
  for name in names:
    path = os.path.join(results_dir, f'{name}.json')
    if not os.path.exists(path):
      missing.append(name)
      continue
    with open(path) as f:
      try:
        result = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from None
    found = rows_from_result(name, result)
    if not found:
      missing.append(name)
    rows.extend(found)
  return rows, missing


def main(argv: Optional[Sequence[str]] = None) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool('no_run', False, 'only read the results JSON files')
  flags.DEFINE_multi_enum('only', list(BENCHMARKS), list(BENCHMARKS), 'benchmarks to include')
  flags.DEFINE_string('results_dir', RESULTS, 'where <benchmark>.json are')
  fl = flags.FLAGS
  fl(list(argv) if argv else sys.argv)
  names = list(dict.fromkeys(fl.only))
  if not fl.no_run:
    for name in names:
      code = run_benchmark(name)
      if code:
        print(f'[perf_table] {name} exited with {code}', flush=True)
  try:
    rows, missing = collect(names, fl.results_dir)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  table = format_table(rows, missing)
  os.makedirs(fl.results_dir, exist_ok=True)
  with open(os.path.join(fl.results_dir, 'perf_table.md'), 'w') as f:
    f.write(table)
  with open(os.path.join(fl.results_dir, 'perf_table.json'), 'w') as f:
    json.dump({'rows': rows, 'missing': missing}, f, indent=1)
  print(table)
  return 0


if __name__ == '__main__':
  sys.exit(main())
