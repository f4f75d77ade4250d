"""benchmarks/suite.py + tables.py: commands, resumable runs with a fake cell runner, and the
JSON -> Markdown / PNG path. Every number here is fabricated TEST DATA, not a measurement."""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import suite  # noqa: E402  pylint: disable=g-import-not-at-top
import tables  # noqa: E402  pylint: disable=g-import-not-at-top


def _flag(cmd, name):
  return [a.split('=', 1)[1] for a in cmd if a.startswith(f'--{name}=')]


def test_every_cell_config_file_exists():
  for cell in tables.CELLS.values():
    for scale in tables.SCALES:
      if cell.exists(scale):
        for path in cell.gin_files(scale):
          if scale == 'full' and not os.path.exists(os.path.join(REPO, 'gin_configs/coco')):
            continue
          assert os.path.exists(os.path.join(REPO, path)), (cell.name, scale, path)
  for t in tables.TABLES.values():
    for scale in tables.SCALES:
      assert t.cell_names(scale), (t.name, scale)
      for name in t.cell_names(scale):
        assert tables.CELLS[name].exists(scale)


def test_digit_cells_parse_as_gin(tmp_path):
  """Each digit-scale cell's files + the suite's bindings make a valid gin config."""
  import gin  # pylint: disable=g-import-not-at-top
  from rethink_st import cli, config_io  # pylint: disable=g-import-not-at-top
  cli.register_configurables()
  macro = lambda name: gin.query_parameter(f'{name}/macro.value')
  for name in ('pretrain', 's4_f20_self_training', 's1_f20_pretrained',
               's4_f100_rand_init_continued', 's4_f20_standard_a3'):
    cmd = suite.cell_command(name, 'digits', 1, str(tmp_path))
    gin.clear_config()
    config_io.parse_gin(_flag(cmd, 'gin_file'), _flag(cmd, 'gin_param'))
    if name != 'pretrain':
      assert macro('CELL_SEED') == 1
  assert macro('LABELED_FRACTION') == 0.2
  assert macro('ALPHA') == 3.0
  assert macro('LOSS_MODE') == 'standard'
  gin.clear_config()


def test_commands_bind_seed_dependencies_and_extras(tmp_path):
  out = str(tmp_path)
  cmd = suite.cell_command('s1_f20_self_training', 'digits', 2, out,
                           gin_params=['X=1'], python='py')
  assert cmd[:2] == ['py', 'bin/self_train.py']
  params = _flag(cmd, 'gin_param')
  teacher = os.path.join(out, 'digits', 'cells', 's1_f20_rand_init', 'seed_2')
  assert f"rethink_st.self_training.run_self_training.teacher_dir='{teacher}'" in params
  assert 'CELL_SEED=2' in params and params[-1] == 'X=1'
  assert _flag(cmd, 'model_dir') == [os.path.join(out, 'digits', 'cells',
                                                  's1_f20_self_training', 'seed_2')]
  pre = suite.cell_command('s4_f100_pretrained', 'digits', 0, out)
  assert f"PRETRAINED_DIR='{os.path.join(out, 'digits', 'cells', 'pretrain', 'shared')}'" in (
      _flag(pre, 'gin_param'))
  assert 'LABELED_FRACTION=1.0' in _flag(pre, 'gin_param')
  full = suite.cell_command('s4_f100_rand_init', 'full', 0, out, gin_files=['tpu.gin'])
  assert _flag(full, 'gin_file') == ['gin_configs/coco/table2/s4_rand_init.gin', 'tpu.gin']
  assert 'rethink_st.training.run.run_train.seed=0' in _flag(full, 'gin_param')
  with pytest.raises(suite.SuiteError, match='no full-scale config'):
    suite.cell_command('s4_f20_rand_init_continued', 'full', 0, out)


def test_bad_arguments_give_one_line_errors(tmp_path):
  assert suite.parse_seeds('3') == [0, 1, 2] and suite.parse_seeds('0,4') == [0, 4]
  with pytest.raises(suite.SuiteError, match='--seeds'):
    suite.parse_seeds('three')
  with pytest.raises(suite.SuiteError, match="--table='table9'"):
    suite.resolve_tables(['table9'])
  with pytest.raises(suite.SuiteError, match='--only'):
    suite.run_cells(['table2'], 'digits', [0], str(tmp_path), only=['nope'])
  with pytest.raises(suite.SuiteError, match='--scale'):
    suite.run_cells(['table2'], 'tiny', [0], str(tmp_path))


class FakeRunner:
  """Writes what the binary would (eval_metrics.json / results.json) with made-up AP."""

  def __init__(self, fail=()):
    self.calls, self.fail = [], set(fail)

  def __call__(self, cmd, log_path):
    model_dir = _flag(cmd, 'model_dir')[0]
    name = model_dir.split(os.sep)[-2]
    self.calls.append((name, model_dir))
    if name in self.fail:
      return 3
    ap = 0.1 + 0.01 * len(self.calls)
    if cmd[1] == 'bin/self_train.py':
      rows = [{'model': 'teacher', 'AP': 0.1}, {'model': 'student_round_1', 'AP': ap,
                                               'pseudo_boxes_per_image': 2.5}]
      with open(os.path.join(model_dir, 'results.json'), 'w') as f:
        json.dump({'rows': rows, 'metric': 'AP'}, f)
    else:
      with open(os.path.join(model_dir, 'eval_metrics.json'), 'w') as f:
        json.dump({'step': 300, 'AP': ap}, f)
    return 0


def test_run_cells_order_resume_failures_and_limits(tmp_path):
  out, log = str(tmp_path), []
  runner = FakeRunner(fail={'s4_f20_rand_init'})
  counts = suite.run_cells(['table2'], 'digits', [0, 1], out, runner=runner, echo=log.append)
  names = [n for n, _ in runner.calls]
  # dependencies first; the shared pretrain once; seed 0 before seed 1
  assert names.index('pretrain') < names.index('s1_f20_pretrained')
  assert names.index('s1_f20_rand_init') < names.index('s1_f20_self_training')
  assert names.count('pretrain') == 1
  seeds = [d.rsplit('_', 1)[1] for _, d in runner.calls if 'seed_' in d]
  assert seeds == sorted(seeds)
  # the failed teacher blocks its self-training and control cells, for each seed
  assert 's4_f20_self_training' not in names
  assert counts['failed'] == 2 and counts['blocked'] == 4
  assert os.path.exists(os.path.join(out, 'digits/cells/s4_f20_rand_init/seed_0',
                                     suite.FAILED))
  done = json.load(open(os.path.join(out, 'digits/cells/s1_f20_self_training/seed_1',
                                     suite.DONE)))
  assert done['metrics']['teacher_AP'] == 0.1 and done['metrics']['pseudo_boxes_per_image']
  # rerun: finished cells are skipped, the failed one retried (now succeeds), max_cells stops
  runner2 = FakeRunner()
  counts = suite.run_cells(['table2'], 'digits', [0, 1], out, runner=runner2,
                           echo=log.append, max_cells=2)
  assert [n for n, _ in runner2.calls] == ['s4_f20_rand_init', 's4_f20_self_training']
  assert counts['ran'] == 2 and counts['skipped'] == 6
  assert not os.path.exists(os.path.join(out, 'digits/cells/s4_f20_rand_init/seed_0',
                                         suite.FAILED))
  # --only runs just that cell (its dependencies are done)
  runner3 = FakeRunner()
  suite.run_cells(['table2'], 'digits', [0], out, runner=runner3,
                  only=['s4_f20_rand_init_continued'], echo=log.append)
  assert [n for n, _ in runner3.calls] == ['s4_f20_rand_init_continued']


def test_dry_run_prints_commands_and_runs_nothing(tmp_path):
  lines, runner = [], FakeRunner()
  suite.run_cells(['appendix_b'], 'full', [0], str(tmp_path), dry_run=True,
                  echo=lines.append, runner=runner)
  assert not runner.calls and not os.path.exists(os.path.join(str(tmp_path), 'full'))
  assert any('gin_configs/coco/appendix_b/s4_standard_loss.gin' in l for l in lines)
  assert any('ALPHA=3.0' in l and 'standard_loss.gin' in l for l in lines)


def _fabricated(table, scale='digits'):
  """TEST DATA ONLY: made-up AP per cell and seed."""
  t = tables.TABLES[table]
  made_up = {'Rand Init': 0.20, 'ImageNet Init': 0.25, 'Rand Init + self-training': 0.24,
             'Rand Init + same steps supervised (control)': 0.22,
             'Loss normalization': 0.24, 'Standard loss': 0.23}
  cells = {}
  for row in t.rows_for(scale):
    for j, col in enumerate(t.columns_for(scale)):
      name = t.cell(scale, row, col)
      shrink = 0.04 * j if row == 'ImageNet Init' else 0.0
      cells[name] = {'seeds': {str(s): {'AP': made_up[row] - shrink + 0.01 * s, 'seconds': 60}
                               for s in range(3)}}
  return suite.build_results(table, scale, [0, 1, 2], cells, is_test_data=True)


def test_results_markdown_claims_and_plot(tmp_path):
  res = _fabricated('table2')
  e = suite._entry(res, 'ImageNet Init', 'S4')
  assert e['mean'] == pytest.approx(100 * 0.22, abs=1e-6)
  assert e['gain_mean'] == pytest.approx(1.0, abs=1e-6) and e['gain_std'] == pytest.approx(0)
  assert e['std'] == pytest.approx(1.0)
  claims = {c['claim'].split(':')[0]: c['holds'] for c in res['claims']}
  assert claims == {'ImageNet Init': True, 'Rand Init + self-training': True}
  md = suite.format_markdown(res)
  assert md.startswith('**TEST DATA ONLY')
  assert '| ImageNet Init | 26.00 ± 1.00 (+5.00 ± 0.00) n=3 | 22.00 ± 1.00 (+1.00 ± 0.00) n=3 |' in md
  assert '-1.0 (Sec. 4.1' in md and '**holds**' in md
  assert '| Rand Init + same steps supervised (control) |  |' not in md  # no paper number
  paths = suite.write_report(res, str(tmp_path))
  assert os.path.getsize(paths['png']) > 1000
  assert json.load(open(paths['json']))['is_test_data'] is True


def test_claims_fail_and_missing_cells_are_reported():
  res = _fabricated('table3')
  # make self-training lose at 100%: the claim fails
  cells = res['cells']
  for s in cells['s4_f100_self_training']['seeds'].values():
    s['AP'] = 0.1
  del cells['s4_f20_rand_init_continued']
  res = suite.build_results('table3', 'digits', [0, 1, 2], cells, is_test_data=True)
  holds = {c['claim'].split(':')[0]: c['holds'] for c in res['claims']}
  assert holds['Rand Init + self-training'] is False
  md = suite.format_markdown(res)
  assert '**FAILS**' in md and 'not run' in md


def _appendix_b_cells(ap):
  """TEST DATA ONLY: appendix_b cells with AP ap[(row, col)][seed]."""
  t = tables.TABLES['appendix_b']
  return {t.cell('digits', row, col): {'seeds': {str(s): {'AP': v} for s, v in enumerate(vals)}}
          for (row, col), vals in ap.items()}


def test_appendix_b_digits_tests_s1_and_s4_and_full_scale_s4_only():
  t = tables.TABLES['appendix_b']
  assert t.columns_for('digits') == ('S1 alpha=1', 'S1 alpha=3', 'S4 alpha=1', 'S4 alpha=3')
  assert t.cell('digits', 'Loss normalization', 'S1 alpha=1') == 's1_f20_self_training'
  assert t.cell('digits', 'Standard loss', 'S4 alpha=3') == 's4_f20_standard_a3'
  assert t.columns_for('full') == ('alpha=1', 'alpha=3')
  assert t.cell('full', 'Standard loss', 'alpha=3') == 's4_f100_standard_a3'
  res = suite.build_results('appendix_b', 'full', [0], {}, is_test_data=True)
  assert [c['claim'] for c in res['claims']] == ['Loss normalization >= Standard loss at alpha=3']


def test_claims_within_seed_noise_and_nothing_to_compare():
  """TEST DATA ONLY. S1: normalization ahead by 0.004 AP on every seed (holds, not noise);
  S4 alpha=3: both near 0 AP (not measurable); alpha=1 columns: a gain of +0.1 +- 2 (noise)."""
  norm, std = 'Loss normalization', 'Standard loss'
  ap = {(norm, 'S1 alpha=3'): [0.104, 0.124, 0.094], (std, 'S1 alpha=3'): [0.10, 0.12, 0.09],
        (norm, 'S4 alpha=3'): [0.001, 0.0, 0.002], (std, 'S4 alpha=3'): [0.0, 0.0, 0.003],
        (norm, 'S1 alpha=1'): [0.13, 0.09, 0.11], (std, 'S1 alpha=1'): [0.11, 0.11, 0.11],
        (norm, 'S4 alpha=1'): [0.03, 0.03, 0.03], (std, 'S4 alpha=1'): [0.02, 0.02, 0.02]}
  res = suite.build_results('appendix_b', 'digits', [0, 1, 2], _appendix_b_cells(ap),
                            is_test_data=True)
  by_col = {c['claim'].rsplit(' at ', 1)[1]: c for c in res['claims']}
  assert set(by_col) == {'S1 alpha=3', 'S4 alpha=3'}
  assert by_col['S1 alpha=3']['holds'] is True and not by_col['S1 alpha=3']['noise']
  assert by_col['S4 alpha=3']['holds'] is None
  assert 'nothing to compare' in by_col['S4 alpha=3']['note']
  md = suite.format_markdown(res)
  assert '**holds** (S1 alpha=3: +0.40 ± 0.00 (n=3))' in md
  assert '**not measurable** (both below 0.5 AP (0.10 vs 0.10): nothing to compare' in md
  e = suite._entry(res, norm, 'S1 alpha=1')
  assert suite._within_noise(e['gain_values'])                 # +0.67 +- 2.08 over 3 seeds
  assert not suite._within_noise(suite._entry(res, norm, 'S4 alpha=1')['gain_values'])
  assert not suite._within_noise([5.0])                         # one seed: no spread known
  # a table claim on a noisy gain says so
  t2 = _fabricated('table2')
  cells = t2['cells']
  for s, v in zip(('0', '1', '2'), (0.32, 0.11, 0.23)):   # self-training at S4: +12, -10, +1
    cells['s4_f20_self_training']['seeds'][s]['AP'] = v
  t2 = suite.build_results('table2', 'digits', [0, 1, 2], cells, is_test_data=True)
  st = [c for c in t2['claims'] if c['claim'].startswith('Rand Init + self-training')][0]
  assert st['holds'] is True and st['noise']
  assert '**holds, within seed noise**' in suite.format_markdown(t2)


def test_collect_results_reads_finished_cells(tmp_path):
  out = str(tmp_path)
  suite.run_cells(['appendix_b'], 'digits', [0], out, runner=FakeRunner(), echo=lambda s: None)
  # a pseudo-label report made against held-back labels (as bin/pseudo_label_report.py
  # --reference writes it): its precision / recall at the labeler's threshold are shown
  report_dir = os.path.join(out, 'digits/cells/s4_f20_standard_a3/seed_0/round_1/pseudo_report')
  os.makedirs(report_dir)
  with open(os.path.join(report_dir, 'report.json'), 'w') as f:
    json.dump({'labeler_score_threshold': 0.3, 'detection': {'thresholds': [
        {'score_threshold': 0.2, 'precision': 0.2, 'recall': 0.4},
        {'score_threshold': 0.3, 'precision': 0.46, 'recall': 0.104}]}}, f)
  res = suite.collect_results('appendix_b', 'digits', [0], out)
  e = suite._entry(res, 'Standard loss', 'S4 alpha=3')
  assert (e['pseudo_precision'], e['pseudo_recall']) == (0.46, 0.104)
  assert suite._entry(res, 'Standard loss', 'S4 alpha=1').get('pseudo_recall') is None
  assert 'pseudo-label precision 46% / recall 10%' in suite.format_markdown(res)
  # a row with more seeds than its baseline: the gain's own n is shown
  cells = json.loads(json.dumps(res['cells']))
  cells['s1_f20_self_training']['seeds']['1'] = {'AP': 0.2}
  more = suite.build_results('appendix_b', 'digits', [0, 1], cells, is_test_data=True)
  assert 'n=2 (gain: n=1, the seeds both rows ran)' in suite.format_markdown(more)
  assert all(e['values'] for e in res['grid'])
  assert res['claims'][0]['holds'] is not None
  assert not res['is_test_data']


def test_perf_table_pairs_ours_with_model_garden(tmp_path):
  """TEST DATA ONLY: fabricated benchmark JSON in the formats the benchmarks write."""
  import perf_table  # pylint: disable=g-import-not-at-top
  (tmp_path / 'input_pipeline.json').write_text(json.dumps({'runs': [
      {'task': 'detection', 'policy': 's1', 'implementation': 'ours', 'images_per_sec': 40.0,
       'images_per_cpu_sec': 80.0, 'rounds_images_per_sec': [1.0]},
      {'task': 'detection', 'policy': 's1', 'implementation': 'model_garden',
       'images_per_sec': 20.0, 'images_per_cpu_sec': 100.0},
      {'task': 'detection', 'policy': 's1', 'implementation': 'ours+boxes_from_masks',
       'images_per_sec': 5.0},
      {'task': 'segmentation', 'policy': 's2', 'implementation': 'ours',
       'images_per_sec': 9.0}]}))
  (tmp_path / 'train_step.json').write_text(json.dumps({'median': {
      'img_per_sec': {'ours': 30.0, 'model_garden': 25.0, 'ratio': 1.2,
                      'paired_ratios': [1.2]}}}))
  rows, missing = perf_table.collect(perf_table.BENCHMARKS, str(tmp_path))
  assert missing == ['pseudo_label']
  got = {(r['benchmark'], r['configuration'], r['measure']): r['ratio'] for r in rows}
  assert got == {('input_pipeline', 'detection s1', 'images_per_sec'): 2.0,
                 ('input_pipeline', 'detection s1', 'images_per_cpu_sec'): 0.8,
                 ('train_step', '-', 'img_per_sec'): 1.2}
  text = perf_table.format_table(rows, missing)
  assert '| train_step | - | img/s (wall) | 30.0 | 25.0 | 1.20 |' in text
  assert '| pseudo_label | no results |' in text
  (tmp_path / 'pseudo_label.json').write_text('{oops')
  with pytest.raises(ValueError, match='pseudo_label.json: not valid JSON'):
    perf_table.collect(['pseudo_label'], str(tmp_path))


def test_perf_table_reads_pseudo_label_timing_and_tagged_results(tmp_path):
  """TEST DATA ONLY: fabricated pseudo_label.py-style timing and a tagged input_pipeline."""
  import perf_table  # pylint: disable=g-import-not-at-top
  rounds = [{'bare_model': [10.0, 20.0], 'rates': [9.0, 18.0]},
            {'bare_model': [12.0, 20.0], 'rates': [6.0, 19.0]},
            {'bare_model': [11.0, 40.0], 'rates': [10.0, 17.0]}]
  (tmp_path / 'pseudo_label.json').write_text(json.dumps({'timing': {'rounds': rounds}}))
  (tmp_path / 'input_pipeline_640.json').write_text(json.dumps({'runs': [
      {'task': 'detection', 'implementation': 'ours', 'images_per_sec': 3.0},
      {'task': 'detection', 'implementation': 'model_garden', 'images_per_sec': 4.0}]}))
  rows, missing = perf_table.collect(['pseudo_label', 'input_pipeline'], str(tmp_path))
  assert not missing
  got = {(r['benchmark'], r['measure']): (r['ours'], r['model_garden']) for r in rows}
  assert got[('pseudo_label', 'images_per_sec')] == (9.0, 11.0)        # medians
  assert got[('pseudo_label', 'images_per_cpu_sec')] == (18.0, 20.0)
  assert got[('input_pipeline_640', 'images_per_sec')] == (3.0, 4.0)
