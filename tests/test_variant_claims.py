"""benchmarks/variant_claims.py: self-training variants against the matched control, paired by
seed, from suite records. Every number here is fabricated TEST DATA, not a measurement."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import variant_claims  # noqa: E402  pylint: disable=g-import-not-at-top


def _record(root, name, seed, ap, ar=0.6, steps=9600, **pseudo):
  folder = os.path.join(root, 'digits', 'cells', name, f'seed_{seed}')
  os.makedirs(folder)
  with open(os.path.join(folder, 'suite_done.json'), 'w') as f:
    json.dump({'metrics': {'AP': ap, 'ARmax100': ar, **pseudo}, 'seconds': 1.0,
               'steps': steps, 'commit': 'abc'}, f)


@pytest.fixture
def records(tmp_path):
  suite, thr, longer = (str(tmp_path / d) for d in ('suite', 'thr', 'longer'))
  for seed, (st, mc, t03) in enumerate(((0.50, 0.52, 0.515), (0.40, 0.43, 0.425),
                                        (0.45, 0.46, 0.46))):
    _record(suite, 's4_f20_self_training', seed, st, pseudo_precision=0.9, pseudo_recall=0.4)
    _record(suite, 's4_f20_matched_control', seed, mc, ar=0.7)
    _record(thr, 's4_f20_self_training', seed, t03, pseudo_recall=0.6 + seed / 10)
  # a variant with its own controls, seed 2 missing on the treatment side
  for seed in (0, 1):
    _record(longer, 's4_f20_self_training', seed, 0.6)
  for seed in (0, 1, 2):
    _record(longer, 's4_f20_matched_control', seed, 0.55 + seed / 100)
  return suite, thr, longer


def test_rows_pair_by_seed_and_take_the_variants_own_control(records, tmp_path):
  suite, thr, longer = records
  data = variant_claims.run(suite, 's4_f20', [0, 1, 2],
                            [f'thr={thr}', f'longer={longer}'], str(tmp_path / 'out' / 'vc'))
  rows = {r['label']: r for r in data['rows']}
  assert list(rows) == ['suite', 'thr', 'longer']
  s = rows['suite']
  assert s['control_from'] == 'suite' and s['n'] == 3
  assert s['diff_mean'] == pytest.approx(-2.0)          # -2, -3, -1 (AP x 100)
  assert s['diff_std'] == pytest.approx(1.0)
  assert s['holds'] is False and s['bound'] == pytest.approx(-2 - 2 / 3 ** 0.5)
  assert s['treatment_ar100'] == pytest.approx(60) and s['control_ar100'] == pytest.approx(70)
  assert s['pseudo_precision'] == pytest.approx(0.9)
  t = rows['thr']
  assert t['control_from'] == 'suite' and t['control_ap'] == pytest.approx([52, 43, 46])
  assert t['diff_mean'] == pytest.approx(-1 / 3)   # -0.5, -0.5, 0 and t['pseudo_recall'] == pytest.approx(0.7)
  assert t['pseudo_precision'] is None
  lg = rows['longer']
  assert lg['control_from'] == 'longer' and lg['n'] == 2
  assert lg['control_ap'] == pytest.approx([55, 56])
  assert lg['unpaired_seeds'] == {'treatment': [], 'control': [2]}
  md = open(str(tmp_path / 'out' / 'vc.md')).read()
  assert '| thr | suite | 3 | 51.50, 42.50, 46.00 | 52.00, 43.00, 46.00 | -0.33 ± 0.29 |' in md
  assert "unpaired seeds: {'control': [2]}" in md
  assert json.load(open(str(tmp_path / 'out' / 'vc.json')))['rows'][1]['label'] == 'thr'


def test_runs_of_another_budget_are_left_out(records, tmp_path):
  suite, thr, _ = records
  conv = tmp_path / 'convergence.json'
  conv.write_text(json.dumps({'chosen': {'s4': {'steps': 4800}}}))
  with pytest.raises(variant_claims.VariantError, match='no finished s4_f20_self_training'):
    variant_claims.run(suite, 's4_f20', [0, 1, 2], [f'thr={thr}'], str(tmp_path / 'vc'),
                       str(conv))


@pytest.mark.parametrize('variant, message', [
    ('thr', '--variant=thr: expected label=record_dir'),
    ('suite={thr}', 'the label suite is taken'),
    ('x=/no/such', '--variant=x=/no/such: no finished s4_f20_self_training'),
])
def test_bad_variants_are_one_line_before_writing(records, tmp_path, variant, message):
  suite, thr, _ = records
  with pytest.raises(variant_claims.VariantError, match=message.replace('.', r'\.')):
    variant_claims.run(suite, 's4_f20', [0, 1, 2], [variant.format(thr=thr)],
                       str(tmp_path / 'vc'))
  assert not os.path.exists(str(tmp_path / 'vc.json'))


def test_cli_prints_one_line_for_a_bad_cell(records, tmp_path):
  suite, _, _ = records
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'variant_claims.py'),
       f'--record_dir={suite}', '--cell=s9_f20', f'--results={tmp_path / "vc"}'],
      capture_output=True, text=True, cwd=REPO, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip() == 'error: --cell=s9_f20: no digit-scale cell s9_f20_self_training'


def test_seeds_that_are_not_integers_are_one_line(records, tmp_path):
  with pytest.raises(variant_claims.VariantError, match='--seeds=0,x: expected integers'):
    variant_claims.run(records[0], 's4_f20', ['0', 'x'], [], str(tmp_path / 'vc'))
