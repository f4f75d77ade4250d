"""One performance table: this project beside Model Garden, from every speed benchmark.

  python benchmarks/perf_table.py             # run the benchmarks (one at a time), then print
  python benchmarks/perf_table.py --no_run    # only read benchmarks/results/*.json and print
  python benchmarks/perf_table.py --only=train_step --only=pseudo_label

The benchmarks (each writes benchmarks/results/<name>.json and .md):
  input_pipeline  tf.data throughput of the S1-S4 detection / segmentation pipelines vs
                  Model Garden's parsers                     (benchmarks/input_pipeline.py)
  train_step      teacher training images/s vs Model Garden's RetinaNetTask
                                                             (benchmarks/train_step.py)
  pseudo_label    run_pseudo_label end to end vs Model Garden's RetinaNet predicting on
                  batches already in memory                  (benchmarks/pseudo_label.py)

Rows come from each JSON's paired measurements: a `median` dict of {ours, model_garden}
numbers, a `runs` list whose entries differ by `implementation` (or `side`) and agree on
the rest of their configuration, or pseudo_label.py's `timing.rounds` (median over rounds).
Tagged results (<name>_<tag>.json, e.g. input_pipeline_640.json) are rows of their own.

MFU rows (model FLOPs utilization, in % of the machine's float32 matmul peak): after the
benchmarks, benchmarks/machine_peak.py measures that peak and the model's FLOPs per image
(machine_peak.json); each train_step / pseudo_label figure becomes img/s x FLOPs/img / peak
FLOP/s (wall), and img/CPU-s x FLOPs/img / peak FLOP per CPU-second (per CPU-second). The
train step's row needs train_step.json's model to have machine_peak.json's parameter count,
and each row its benchmark measured on the machine (platform string) machine_peak.json was.
Writes benchmarks/results/perf_table.md (and .json).
"""
import glob
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results')
BENCHMARKS = ('input_pipeline', 'train_step', 'pseudo_label')
LIMIT = 'machine_peak'   # runs after BENCHMARKS: MFU rows of train_step and pseudo_label
OURS, MG = 'ours', 'model_garden'
_IMPL_KEYS = ('implementation', 'side', 'impl')
_UNITS = {'images_per_sec': 'img/s (wall)', 'img_per_sec': 'img/s (wall)',
          'images_per_cpu_sec': 'img/CPU-s', 'img_per_cpu_sec': 'img/CPU-s',
          'mfu': 'MFU % (wall)', 'mfu_per_cpu_sec': 'MFU % (per CPU-s)'}
_MFU_OF = {'images_per_sec': ('mfu', 'gflops_per_sec'),
           'img_per_sec': ('mfu', 'gflops_per_sec'),
           'images_per_cpu_sec': ('mfu_per_cpu_sec', 'gflops_per_cpu_sec'),
           'img_per_cpu_sec': ('mfu_per_cpu_sec', 'gflops_per_cpu_sec')}


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label(config: Dict[str, Any]) -> str:
  return ' '.join(f'{v}' for v in config.values()) or '-'


def _median(values: Sequence[float]) -> float:
  values = sorted(values)
  n = len(values)
  return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def _pseudo_label_rows(name: str, timing: Dict[str, Any]) -> List[Dict[str, Any]]:
  """benchmarks/pseudo_label.py: run_pseudo_label end to end ('rates') vs the bare predict
  function (the same Model Garden RetinaNet and its NMS) on batches already in memory
  ('bare_model'); each is
  [wall img/s, CPU img/s] per round."""
  rounds = [r for r in timing.get('rounds', ()) if 'rates' in r and 'bare_model' in r]
  rows = []
  for i, measure in enumerate(('images_per_sec', 'images_per_cpu_sec')):
    if rounds:
      rows.append({'benchmark': name,
                   'configuration': ('run_pseudo_label vs bare predict (the same MG RetinaNet + NMS) on '
                                     'in-memory batches'),
                   'measure': measure, OURS: _median([r['rates'][i] for r in rounds]),
                   MG: _median([r['bare_model'][i] for r in rounds])})
  return rows


def rows_from_result(name: str, result: Dict[str, Any]) -> List[Dict[str, Any]]:
  """Paired (ours, Model Garden) rows of one benchmark's JSON."""
  rows = []
  if isinstance(result.get('timing'), dict):
    rows = _pseudo_label_rows(name, result['timing'])
  median = result.get('median')
  if not rows and isinstance(median, dict):
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


def _load(path: str) -> Optional[Dict[str, Any]]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from None


def mfu_rows(rows: Sequence[Dict[str, Any]], results_dir: str = RESULTS):
  """MFU rows of the train_step and pseudo_label throughput rows, from machine_peak.json.

  Returns (rows, notes): a note says why a benchmark got no MFU row."""
  peak_result = _load(os.path.join(results_dir, f'{LIMIT}.json'))
  if peak_result is None:
    return [], [f'{LIMIT}: no results (python benchmarks/{LIMIT}.py)']
  peak, model = peak_result['peak'].get('float32'), peak_result['model']
  if not peak:
    return [], [f'{LIMIT}.json: no float32 peak']
  flops = {'train_step': model['train_flops_per_image'],
           'pseudo_label': model['predict_flops_per_image']}
  platform = (peak_result.get('machine') or {}).get('platform')
  notes = []
  for name in list(flops):
    result = _load(os.path.join(results_dir, f'{name}.json')) or {}
    machine = result.get('machine')
    theirs = machine.get('platform') if isinstance(machine, dict) else result.get('platform')
    if platform and theirs != platform:   # another VM or host: another peak
      notes.append(f'{name}: no MFU row: {name}.json was measured on '
                   f'{theirs or "a machine it does not record"}, {LIMIT}.json on {platform} '
                   f'(rerun python benchmarks/{name}.py on this machine)')
      flops.pop(name)
  train = _load(os.path.join(results_dir, 'train_step.json')) or {}
  train_params = (train.get('setup') or {}).get('params', {}).get(OURS)
  out = []
  if 'train_step' in flops and train_params is not None and train_params != model['params']:
    notes.append(f'train_step: no MFU row: train_step.json measured a model of '
                 f'{train_params:,} parameters, {LIMIT}.json counted the FLOPs of one of '
                 f'{model["params"]:,} (rerun one of them with the other\'s gin config)')
    flops.pop('train_step')
  for row in rows:
    if row['benchmark'] not in flops or row['measure'] not in _MFU_OF:
      continue
    measure, peak_key = _MFU_OF[row['measure']]
    per_image = flops[row['benchmark']]
    step = 'train step' if row['benchmark'] == 'train_step' else 'predict'
    mfu = {side: 100.0 * row[side] * per_image / (peak[peak_key] * 1e9) for side in (OURS, MG)}
    out.append({'benchmark': row['benchmark'],
                'configuration': f'{step} {per_image / 1e9:.2f} GFLOP/img; float32 matmul peak '
                                 f'{peak[peak_key]:.0f} GFLOP/{"s" if measure == "mfu" else "CPU-s"}',
                'measure': measure, OURS: mfu[OURS], MG: mfu[MG],
                'ratio': mfu[OURS] / mfu[MG] if mfu[MG] else None})
  return out, notes


def format_table(rows: Sequence[Dict[str, Any]], missing: Sequence[str] = (),
                 notes: Sequence[str] = ()) -> str:
  lines = ['# Performance: rethink-st vs Model Garden', '',
           'Same model / data / settings on both sides (see each benchmark\'s own .md in '
           'benchmarks/results/ for its setup). "img/CPU-s" divides by the process\'s CPU '
           'seconds (robust to other users of a shared machine); ours / MG > 1 means this '
           'project is faster. "MFU %" is the model FLOPs utilization: img/s x the model\'s '
           'FLOPs per image / the machine\'s float32 matmul peak (benchmarks/machine_peak.py, '
           'benchmarks/results/machine_peak.md); for pseudo_label, "Model Garden" is the bare '
           '`model.predict` it is compared with. Written by `benchmarks/perf_table.py`.', '',
           '| benchmark | configuration | measure | ours | Model Garden | ours / MG |',
           '| --- | --- | --- | ---: | ---: | ---: |']
  for r in rows:
    ratio = '-' if r['ratio'] is None else f'{r["ratio"]:.2f}'
    lines.append(f'| {r["benchmark"]} | {r["configuration"]} | '
                 f'{_UNITS.get(r["measure"], r["measure"])} | {r[OURS]:.1f} | {r[MG]:.1f} | '
                 f'{ratio} |')
  for name in missing:
    lines.append(f'| {name} | no results | | | | |')
  if notes:
    lines += [''] + [f'- {n}' for n in notes]
  return '\n'.join(lines) + '\n'


def run_benchmark(name: str, python: str = sys.executable, args: Sequence[str] = ()) -> int:
  script = os.path.join(HERE, f'{name}.py')
  if not os.path.exists(script):
    print(f'[perf_table] {name}: {script} does not exist; skipped', flush=True)
    return 1
  print(f'[perf_table] running {os.path.relpath(script, REPO)}', flush=True)
  return subprocess.call([python, script, *args], cwd=REPO)


def collect(names: Sequence[str], results_dir: str = RESULTS):
  """Rows of <name>.json and its tagged variants <name>_<tag>.json (e.g. input_pipeline_640)."""
  rows, missing = [], []
  for name in names:
    paths = [os.path.join(results_dir, f'{name}.json')] + sorted(
        glob.glob(os.path.join(results_dir, f'{name}_*.json')))
    found = []
    for path in paths:
      if not os.path.exists(path):
        continue
      with open(path) as f:
        try:
          result = json.load(f)
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}: not valid JSON ({e})') from None
      found.extend(rows_from_result(os.path.basename(path)[:-len('.json')], result))
    if not found:
      missing.append(name)
    rows.extend(found)
  return rows, missing


def _with_mfu(rows, limit_rows):
  """Each benchmark's MFU rows right after its last throughput row."""
  out = list(rows)
  for name in dict.fromkeys(r['benchmark'] for r in limit_rows):
    last = max(i for i, r in enumerate(out) if r['benchmark'] == name)
    out[last + 1:last + 1] = [r for r in limit_rows if r['benchmark'] == name]
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool('no_run', False, 'only read the results JSON files')
  flags.DEFINE_multi_enum('only', list(BENCHMARKS), list(BENCHMARKS), 'benchmarks to include')
  flags.DEFINE_string('results_dir', RESULTS, 'where <benchmark>.json are')
  flags.DEFINE_multi_string('peak_gin_param', [], 'gin bindings of the model whose FLOPs '
                            f'{LIMIT}.py counts (e.g. to match an older train_step.json)')
  fl = flags.FLAGS
  fl(list(argv) if argv else sys.argv)
  names = list(dict.fromkeys(fl.only))
  if not fl.no_run:
    runs = [(name, ()) for name in names] + [
        (LIMIT, [f'--out_dir={fl.results_dir}'] + [f'--gin_param={p}' for p in fl.peak_gin_param])]
    for name, args in runs:
      code = run_benchmark(name, args=args)
      if code:
        print(f'[perf_table] {name} exited with {code}', flush=True)
  try:
    rows, missing = collect(names, fl.results_dir)
    limit_rows, notes = mfu_rows(rows, fl.results_dir)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  rows = _with_mfu(rows, limit_rows)
  table = format_table(rows, missing, notes)
  os.makedirs(fl.results_dir, exist_ok=True)
  with open(os.path.join(fl.results_dir, 'perf_table.md'), 'w') as f:
    f.write(table)
  with open(os.path.join(fl.results_dir, 'perf_table.json'), 'w') as f:
    json.dump({'rows': rows, 'missing': missing, 'notes': notes}, f, indent=1)
  print(table)
  return 0


if __name__ == '__main__':
  sys.exit(main())
