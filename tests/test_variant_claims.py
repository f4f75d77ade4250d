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


def _record(root, name, seed, ap, ar=0.6, steps=9600, teacher=0.4, commit='abc1234def',
            **pseudo):
  folder = os.path.join(root, 'digits', 'cells', name, f'seed_{seed}')
  os.makedirs(folder)
  with open(os.path.join(folder, 'suite_done.json'), 'w') as f:
    json.dump({'metrics': {'AP': ap, 'ARmax100': ar, 'teacher_AP': teacher, **pseudo},
               'seconds': 1.0, 'steps': steps, 'commit': commit}, f)


@pytest.fixture
def records(tmp_path):
  suite, thr, longer = (str(tmp_path / d) for d in ('suite', 'thr', 'longer'))
  for seed, (st, mc, t03) in enumerate(((0.50, 0.52, 0.515), (0.40, 0.43, 0.425),
                                        (0.45, 0.46, 0.46))):
    _record(suite, 's4_f20_self_training', seed, st, pseudo_precision=0.9, pseudo_recall=0.4)
    _record(suite, 's4_f20_matched_control', seed, mc, ar=0.7)
    _record(thr, 's4_f20_self_training', seed, t03, commit='fedcba9876',
            pseudo_recall=0.6 + seed / 10)
  # a variant with its own controls, seed 2 missing on the treatment side
  for seed in (0, 1):
    _record(longer, 's4_f20_self_training', seed, 0.6)
  for seed in (0, 1, 2):
    _record(longer, 's4_f20_matched_control', seed, 0.55 + seed / 100)
  return suite, thr, longer


def test_rows_pair_by_seed_with_the_control_each_variant_names(records, tmp_path):
  suite, thr, longer = records
  data = variant_claims.run(suite, 's4_f20', ['0', '1', '2'],
                            [f'thr={thr}', f'longer={longer}'], str(tmp_path / 'out' / 'vc'),
                            shared_control=['thr'], command=['python', 'x.py', '--a=b'])
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
  assert t['diff_mean'] == pytest.approx(-1 / 3)       # -0.5, -0.5, 0
  assert t['pseudo_recall'] == pytest.approx(0.7)
  assert t['pseudo_precision'] is None
  assert t['commits'] == ['abc1234def', 'fedcba9876']
  lg = rows['longer']
  assert lg['control_from'] == 'longer' and lg['n'] == 2
  assert lg['control_ap'] == pytest.approx([55, 56])
  assert lg['unpaired_seeds'] == {'treatment': [], 'control': [2]}
  md = open(str(tmp_path / 'out' / 'vc.md')).read()
  assert ('| thr | suite | 3 | 0: 51.50, 1: 42.50, 2: 46.00 | 0: 52.00, 1: 43.00, 2: 46.00 | '
          '-0.33 ± 0.29 | -0.67 | no |') in md
  assert '| abc1234, fedcba9 |' in md
  assert '- longer: seeds 2 finished the control only (not paired).' in md
  saved = json.load(open(str(tmp_path / 'out' / 'vc.json')))
  assert saved['rows'][1]['label'] == 'thr' and saved['command'] == ['python', 'x.py', '--a=b']
  assert saved['sources']['thr'] == '<elsewhere>/thr'   # no machine path


def test_a_variant_without_its_own_control_must_say_it_shares_the_suites(records, tmp_path):
  suite, thr, _ = records
  with pytest.raises(variant_claims.VariantError,
                     match=r'--variant=thr=.*: no finished s4_f20_matched_control .*'
                           r'--shared_control=thr'):
    variant_claims.run(suite, 's4_f20', [0, 1, 2], [f'thr={thr}'], str(tmp_path / 'vc'))
  assert not os.path.exists(str(tmp_path / 'vc.json'))


def test_a_pair_from_different_teachers_is_an_error(records, tmp_path):
  suite, _, _ = records
  other = str(tmp_path / 'other')
  _record(other, 's4_f20_self_training', 0, 0.5, teacher=0.41)
  with pytest.raises(variant_claims.VariantError,
                     match='other seed 0: .* 41.00 .* 40.00: not the same teacher'):
    variant_claims.run(suite, 's4_f20', [0], [f'other={other}'], str(tmp_path / 'vc'),
                       shared_control=['other'])


def test_runs_of_another_budget_are_left_out(records, tmp_path):
  suite, thr, _ = records
  conv = tmp_path / 'convergence.json'
  conv.write_text(json.dumps({'chosen': {'s4': {'steps': 4800}}}))
  with pytest.raises(variant_claims.VariantError, match='no finished s4_f20_self_training'):
    variant_claims.run(suite, 's4_f20', [0, 1, 2], [f'thr={thr}'], str(tmp_path / 'vc'),
                       str(conv), shared_control=['thr'])


@pytest.mark.parametrize('kwargs, message', [
    (dict(variants=['thr']), '--variant=thr: expected label=record_dir'),
    (dict(variants=['suite={thr}']), 'the label suite is taken'),
    (dict(variants=['x=/no/such'], shared_control=['x']),
     '--variant=x=/no/such: no finished s4_f20_self_training'),
    (dict(shared_control=['nope']), '--shared_control=nope: no --variant labeled nope'),
    (dict(seeds=['0', 'x']), '--seeds=0,x: expected integers'),
    (dict(seeds=[]), '--seeds=: expected distinct seeds >= 0'),
    (dict(seeds=[0, 0]), '--seeds=0,0: expected distinct seeds >= 0'),
    (dict(convergence='/no/conv.json'), '--convergence=/no/conv.json: no such file'),
    (dict(results='{tmp}/dir/'), 'a path prefix is required'),
])
def test_bad_flags_are_one_line_before_writing(records, tmp_path, kwargs, message):
  suite, thr, _ = records
  args = dict(record_dir=suite, cell='s4_f20', seeds=[0, 1, 2], variants=[],
              results=str(tmp_path / 'vc'))
  args.update(kwargs)
  args['variants'] = [v.format(thr=thr) for v in args['variants']]
  args['results'] = args['results'].format(tmp=tmp_path)
  with pytest.raises(variant_claims.VariantError, match=message.replace('.', r'\.')):
    variant_claims.run(**args)
  assert not os.path.exists(str(tmp_path / 'vc.json'))


def test_cli_prints_one_line_for_a_bad_cell(records, tmp_path):
  suite, _, _ = records
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'variant_claims.py'),
       f'--record_dir={suite}', '--cell=s9_f20', f'--results={tmp_path / "vc"}'],
      capture_output=True, text=True, cwd=REPO, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip() == 'error: --cell=s9_f20: no digit-scale cell s9_f20_self_training'
