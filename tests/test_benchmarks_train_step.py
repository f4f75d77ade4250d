"""Smoke test of benchmarks/train_step.py: both sides train a few steps on the tiny digit
scenes, the rates come from their Orbit summaries, and the JSON/Markdown are written."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      'train_step_benchmark', os.path.join(REPO, 'benchmarks', 'train_step.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def bench():
  return _load_benchmark()


SMALL_MODEL = [
    "rethink_st.modeling.detection.build_retinanet.backbone = 'resnet-10'",
    'rethink_st.modeling.detection.build_retinanet.decoder_num_filters = 32',
    'rethink_st.modeling.detection.build_retinanet.head_num_filters = 32',
    'rethink_st.modeling.detection.build_retinanet.head_num_convs = 1',
]


def test_both_sides_train_and_results_are_written(bench, digit_scenes_dir, tmp_path):
  result = bench.benchmark(digit_scenes_dir, steps=4, batch_size=4, repeats=1,
                           steps_per_loop=1, warmup_steps=2, gin_params=SMALL_MODEL,
                           work_dir=str(tmp_path / 'work'))
  s = result['setup']
  # Model Garden's side follows the gin overrides: the same network on both sides.
  assert s['settings']['backbone'] == 'resnet-10'
  assert s['settings']['head_num_convs'] == 1 and s['settings']['anchor_size'] == 2.0
  assert s['params']['ours'] == s['params']['model_garden'] > 0
  assert [r['side'] for r in result['runs']] == ['ours', 'model_garden']
  for run in result['runs']:
    assert run['timed_steps'] == 2
    assert run['img_per_sec'] > 0 and run['img_per_cpu_sec'] > 0
    assert len(run['loop_steps_per_second']) == 4   # one summary per 1-step loop
  med = result['median']['img_per_sec']
  assert med['ratio'] == pytest.approx(med['ours'] / med['model_garden'])

  bench.write_results(result, str(tmp_path / 'out'))
  with open(tmp_path / 'out' / 'train_step.json') as f:
    assert json.load(f)['median']['img_per_sec']['ratio'] == pytest.approx(med['ratio'])
  md = (tmp_path / 'out' / 'train_step.md').read_text()
  assert '| wall clock |' in md and 'resnet-10' in md


def test_flags_that_leave_no_timed_window_are_one_line_errors(bench):
  with pytest.raises(bench.UserError, match=r'--warmup_steps=5 must be a positive multiple'):
    bench.check_schedule(20, 5, 10, 1, 16)
  with pytest.raises(bench.UserError, match=r'--steps=20 must be .* larger than'):
    bench.check_schedule(20, 20, 10, 1, 16)


def test_steady_rate_uses_the_window_between_summaries(bench):
  loops = {k: {'wall_time': 100.0 + 2.0 * k, 'steps_per_second': 0.5} for k in (10, 20, 30)}
  rate = bench.steady_rate(loops, None, 10, 30, 8, 'x')
  assert rate['img_per_sec'] == pytest.approx(20 * 8 / 40.0)
  with pytest.raises(RuntimeError, match='no .* summary at step 40'):
    bench.steady_rate(loops, None, 10, 40, 8, 'x')
