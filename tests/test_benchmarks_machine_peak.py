"""benchmarks/machine_peak.py (peak matmul FLOP/s, FLOPs per image from the graph) and the MFU
rows benchmarks/perf_table.py makes from it."""
import importlib.util
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def peak():
  spec = importlib.util.spec_from_file_location(
      'machine_peak_benchmark', os.path.join(REPO, 'benchmarks', 'machine_peak.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_peak_on_tiny_matmuls(peak):
  result = peak.measure_peak([32, 64], ['float32', 'bfloat16'], repeats=2, chain=2)
  for dtype in ('float32', 'bfloat16'):
    p = result[dtype]
    assert [r['size'] for r in p['by_size']] == [32, 64]
    assert p['gflops_per_sec'] == max(r['gflops_per_sec'] for r in p['by_size']) > 0
    assert p['gflops_per_cpu_sec'] > 0


def test_flops_of_two_conv_layers_match_a_hand_count(peak):
  import tf_keras  # pylint: disable=g-import-not-at-top
  h = w = 16
  model = tf_keras.Sequential([tf_keras.layers.Conv2D(8, 3, padding='same'),
                               tf_keras.layers.Conv2D(4, 1, use_bias=False)])
  model.build([None, h, w, 3])
  conv1 = 2 * 3 * 3 * 3 * 8 * h * w    # multiply-add = 2 FLOPs, per output element
  conv2 = 2 * 8 * 4 * h * w
  flops = peak.model_flops(model, (h, w))
  pred = flops['predict']['by_op']
  assert pred['Conv2D'] == conv1 + conv2
  assert pred['BiasAdd'] == h * w * 8
  assert flops['predict']['total'] == conv1 + conv2 + h * w * 8
  train = flops['train']['by_op']
  assert train['Conv2D'] == conv1 + conv2
  assert train['Conv2DBackpropFilter'] == conv1 + conv2   # both kernels' gradients
  assert train['Conv2DBackpropInput'] == conv2            # not the image's gradient
  assert 2 * flops['predict']['total'] < flops['train']['total'] < 3.2 * flops['predict']['total']


def test_gin_model_flops_and_results(peak, tmp_path):
  small = ["rethink_st.modeling.detection.build_retinanet.backbone = 'resnet-10'",
           'rethink_st.modeling.detection.build_retinanet.decoder_num_filters = 16',
           'rethink_st.modeling.detection.build_retinanet.head_num_filters = 16',
           'rethink_st.modeling.detection.build_retinanet.head_num_convs = 1',
           'IMAGE_SIZE = (128, 128)']
  result = peak.run([32], ['float32'], 1, 1, [peak.TEACHER_GIN], small)
  m = result['model']
  assert m['image_size'] == [128, 128] and m['params'] > 0
  assert m['predict_flops_by_op']['Conv2D'] > 0
  assert 2 * m['predict_flops_per_image'] < m['train_flops_per_image']
  stem = peak.write_results(result, str(tmp_path))
  assert json.load(open(stem + '.json'))['model']['params'] == m['params']
  md = open(stem + '.md').read()
  assert '| float32 | 32 (peak) |' in md and '| train |' in md
  with pytest.raises(peak.UserError, match="--dtypes: 'int8'"):
    peak.run([32], ['int8'], 1, 1, [peak.TEACHER_GIN], small)


def test_perf_table_mfu_rows(tmp_path):
  """TEST DATA ONLY: fabricated machine_peak / train_step / pseudo_label results."""
  sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
  import perf_table  # pylint: disable=g-import-not-at-top
  (tmp_path / 'machine_peak.json').write_text(json.dumps({
      'machine': {'platform': 'vm-1'},
      'peak': {'float32': {'gflops_per_sec': 100.0, 'gflops_per_cpu_sec': 50.0}},
      'model': {'params': 7, 'train_flops_per_image': 3e9, 'predict_flops_per_image': 1e9}}))
  train = {'machine': {'platform': 'vm-1'},
           'setup': {'params': {'ours': 7, 'model_garden': 7}}, 'median': {
      'img_per_sec': {'ours': 10.0, 'model_garden': 5.0},
      'img_per_cpu_sec': {'ours': 4.0, 'model_garden': 4.0}}}
  (tmp_path / 'train_step.json').write_text(json.dumps(train))
  (tmp_path / 'pseudo_label.json').write_text(json.dumps({'platform': 'vm-1', 'timing': {
      'rounds': [{'bare_model': [20.0, 10.0], 'rates': [30.0, 5.0]}]}}))
  rows, _ = perf_table.collect(['train_step', 'pseudo_label'], str(tmp_path))
  mfu, notes = perf_table.mfu_rows(rows, str(tmp_path))
  assert not notes
  got = {(r['benchmark'], r['measure']): (r['ours'], r['model_garden']) for r in mfu}
  assert got[('train_step', 'mfu')] == pytest.approx((30.0, 15.0))   # 10 img/s x 3 GFLOP / 100
  assert got[('train_step', 'mfu_per_cpu_sec')] == pytest.approx((24.0, 24.0))
  assert got[('pseudo_label', 'mfu')] == pytest.approx((30.0, 20.0))
  assert got[('pseudo_label', 'mfu_per_cpu_sec')] == pytest.approx((10.0, 20.0))
  merged = perf_table._with_mfu(rows, mfu)  # pylint: disable=protected-access
  assert [r['measure'] for r in merged[:4]] == ['img_per_sec', 'img_per_cpu_sec', 'mfu',
                                                'mfu_per_cpu_sec']
  text = perf_table.format_table(merged, [], notes)
  assert '| train_step | train step 3.00 GFLOP/img; float32 matmul peak 100 GFLOP/s | ' \
         'MFU % (wall) | 30.0 | 15.0 | 2.00 |' in text

  train['setup']['params']['ours'] = 8   # another model than the one counted: no train row
  (tmp_path / 'train_step.json').write_text(json.dumps(train))
  mfu, notes = perf_table.mfu_rows(rows, str(tmp_path))
  assert {r['benchmark'] for r in mfu} == {'pseudo_label'}
  assert 'train_step.json measured a model of 8 parameters' in notes[0]
  train['machine']['platform'] = 'vm-2'   # another machine: another peak
  (tmp_path / 'train_step.json').write_text(json.dumps(train))
  mfu, notes = perf_table.mfu_rows(rows, str(tmp_path))
  assert {r['benchmark'] for r in mfu} == {'pseudo_label'}
  assert 'train_step.json was measured on vm-2, machine_peak.json on vm-1' in notes[0]
  os.remove(tmp_path / 'machine_peak.json')
  assert perf_table.mfu_rows(rows, str(tmp_path)) == (
      [], ['machine_peak: no results (python benchmarks/machine_peak.py)'])
