"""benchmarks/input_pipeline.py: the sides of a (task, policy) take turns round by round
(benchmarks/turn_taking.take_turns), and a tiny run writes medians and per-round ratios."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
import turn_taking  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_sides_take_turns_each_round_and_the_starter_alternates():
  made, order = [], []
  sides = [(name, lambda n=name: made.append(n) or n) for name in ('ours', 'masks', 'mg')]
  rates = {'ours': 4.0, 'masks': 3.0, 'mg': 2.0}

  def time_fn(thing):
    order.append(thing)
    return rates[thing], rates[thing] / 2

  out = turn_taking.take_turns(sides, 3, time_fn, log=lambda m: None)
  assert made == ['ours', 'masks', 'mg']          # each made once, before the rounds
  assert order == ['ours', 'masks', 'mg', 'mg', 'masks', 'ours', 'ours', 'masks', 'mg']
  assert out == {name: [(r, r / 2)] * 3 for name, r in rates.items()}


def test_a_tiny_run_writes_medians_and_per_round_ratios(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'input_pipeline.py'),
       '--image_size=64', '--output_size=128', '--num_examples=4', '--batch_size=2',
       '--num_batches=2', '--warmup_batches=1', '--rounds=2', '--policies=s1',
       '--tasks=detection', '--nomasks_rows', f'--out_dir={tmp_path}', '--tag=tiny'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / 'input_pipeline_tiny.json').read_text())
  runs = {r['implementation']: r for r in result['runs']}
  assert set(runs) == {'ours', 'model_garden'}
  for r in runs.values():
    assert len(r['rounds_images_per_sec']) == 2 and r['images_per_sec'] > 0
  (pair,) = result['pairs']
  ours, mg = runs['ours']['rounds_images_per_sec'], runs['model_garden']['rounds_images_per_sec']
  assert pair['rounds_ratio_wall'] == [round(o / m, 3) for o, m in zip(ours, mg)]
  md = (tmp_path / 'input_pipeline_tiny.md').read_text()
  row = next(line for line in md.splitlines() if line.startswith('| detection | S1 |'))
  assert ', '.join(f'{x:.2f}' for x in pair['rounds_ratio_wall']) in row
