"""Smoke test of benchmarks/train_step.py: both sides train a few steps on the tiny digit
scenes taking turns loop by loop, rates come from the recorded windows, and the JSON and
Markdown are written."""
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
                           work_dir=str(tmp_path / 'work'), input_batches=2)
  s = result['setup']
  # Model Garden's side follows the gin overrides: the same network on both sides.
  assert s['settings']['backbone'] == 'resnet-10'
  assert s['settings']['head_num_convs'] == 1 and s['settings']['anchor_size'] == 2.0
  assert s['params']['ours'] == s['params']['model_garden'] > 0
  # Results name no path of the machine: the tmp data folder is outside the repository.
  assert s['data_dir'] == '<outside the repository>'
  assert s['gin_files'] == [os.path.join('gin_configs', 'digits', 'teacher.gin')]
  assert [r['side'] for r in result['runs']] == ['ours', 'model_garden']
  for run in result['runs']:
    assert run['timed_steps'] == 2
    assert run['img_per_sec'] > 0 and run['img_per_cpu_sec'] > 0
    assert len(run['loop_img_per_sec']) == 4   # one window per 1-step loop
    # The first window builds and traces the model: far slower than a 1-step loop after it.
    assert run['loop_img_per_sec'][0] < min(run['loop_img_per_sec'][2:])
  inp = result['input_only']
  assert inp['ours']['img_per_sec'] > 0 and inp['model_garden']['img_per_cpu_sec'] > 0
  med = result['median']['img_per_sec']
  assert med['ratio'] == pytest.approx(med['ours'] / med['model_garden'])

  bench.write_results(result, str(tmp_path / 'out'))
  with open(tmp_path / 'out' / 'train_step.json') as f:
    assert json.load(f)['median']['img_per_sec']['ratio'] == pytest.approx(med['ratio'])
  md = (tmp_path / 'out' / 'train_step.md').read_text()
  assert '| wall clock |' in md and '| input pipeline alone, wall clock |' in md
  assert 'resnet-10' in md


def test_flags_that_leave_no_timed_window_are_one_line_errors(bench):
  with pytest.raises(bench.UserError, match=r'--warmup_steps=5 must be a positive multiple'):
    bench.check_schedule(20, 5, 10, 1, 16)
  with pytest.raises(bench.UserError, match=r'--steps=20 must be .* larger than'):
    bench.check_schedule(20, 20, 10, 1, 16)


def test_window_rate_skips_the_warmup_windows(bench):
  windows = [{'wall': 30.0, 'cpu': 40.0}, {'wall': 4.0, 'cpu': 6.0},
             {'wall': 2.0, 'cpu': 3.0}, {'wall': 6.0, 'cpu': 9.0}]
  rate = bench.window_rate(windows, 2, 8, 10, 'x')
  assert rate['timed_steps'] == 20
  assert rate['img_per_sec'] == pytest.approx(2 * 10 * 8 / 8.0)
  assert rate['img_per_cpu_sec'] == pytest.approx(2 * 10 * 8 / 12.0)
  assert rate['warmup_seconds'] == pytest.approx(34.0)
  with pytest.raises(RuntimeError, match='none after the warm-up'):
    bench.window_rate(windows, 4, 8, 10, 'x')


def test_turns_alternate_loop_by_loop_and_a_finished_side_stops_taking_turns(bench):
  import threading  # pylint: disable=g-import-not-at-top
  turns = bench.TurnTaking('a', 'b')
  trace = []

  def side(name, loops):
    turns.acquire(name)
    for _ in range(loops):
      trace.append(name)
      turns.handover(name)
    turns.finish(name)

  threads = [threading.Thread(target=side, args=('b', 4)),
             threading.Thread(target=side, args=('a', 2))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=10)
  assert trace == ['a', 'b', 'a', 'b', 'b', 'b']
  assert len(turns.windows['a']) == 2 and len(turns.windows['b']) == 4
