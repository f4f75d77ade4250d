"""benchmarks/student_curves.py: L_h / L_p curves of students and matched controls from the
suite's logs. Every number here is fabricated TEST DATA, not a measurement."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import student_curves  # noqa: E402  pylint: disable=g-import-not-at-top


def _cell(out_dir, name, seed, lines, done=True):
  folder = os.path.join(out_dir, 'digits', 'cells', name, f'seed_{seed}')
  os.makedirs(folder)
  with open(os.path.join(folder, 'suite_log.txt'), 'w') as f:
    f.write('[pseudo_label] 1000 images\n' + ''.join(lines))
  if done:
    with open(os.path.join(folder, 'suite_done.json'), 'w') as f:
      json.dump({'metrics': {'AP': 0.5}}, f)


def _line(step, human, pseudo):
  return (f'[train] step {step}/300 total_loss={human + pseudo:.4f} img/s=80.0 eta=1m '
          f'human_loss={human} pseudo_loss={pseudo} human_weight=0.5\n')


def test_curves_last_line_of_a_step_wins_and_tail_means(tmp_path):
  out, var = str(tmp_path / 'suite'), str(tmp_path / 'variant')
  for seed in (0, 1):
    # a student killed after step 200 and resumed from its step-100 checkpoint
    _cell(out, 's4_f20_self_training', seed,
          [_line(100, 0.7, 0.6), _line(200, 9.0, 9.0), _line(200, 0.6, 0.5),
           _line(300, 0.5 + seed / 10, 0.4)])
    _cell(out, 's4_f20_matched_control', seed,
          [_line(s, 0.6 - s / 1000, 0.7) for s in (100, 200, 300)])
    _cell(var, 's4_f20_self_training', seed, [_line(s, 0.55, 0.45) for s in (100, 200, 300)])
  prefix = str(tmp_path / 'results' / 'curves')
  data = student_curves.run(out, 's4_f20', [0, 1], ['threshold_0.3=' + var], prefix)
  assert list(data['runs']) == ['self-training', 'matched control', 'threshold_0.3']
  st = data['runs']['self-training']['0']
  assert st == {'step': [100, 200, 300], 'human_loss': [0.7, 0.6, 0.5],
                'pseudo_loss': [0.6, 0.5, 0.4]}
  # the last tenth of 3 points is the last point
  assert data['last_tenth_mean']['self-training']['1'] == {'human_loss': 0.6, 'pseudo_loss': 0.4}
  assert data['last_tenth_mean']['matched control']['0']['human_loss'] == pytest.approx(0.3)
  assert data['folders']['threshold_0.3']['1'] == (
      '<threshold_0.3>/digits/cells/s4_f20_self_training/seed_1')
  assert data['folders']['matched control']['0'] == (
      '<out_dir>/digits/cells/s4_f20_matched_control/seed_0')
  assert os.path.getsize(prefix + '.png') > 1000
  assert json.load(open(prefix + '.json')) == data
  # --report_only redraws from the JSON alone
  os.remove(prefix + '.png')
  assert student_curves.run(None, 's4_f20', [0, 1], [], prefix, report_only=True) == data
  assert os.path.exists(prefix + '.png')


def test_an_unfinished_run_or_bad_flag_is_one_line_before_writing(tmp_path):
  out = str(tmp_path / 'suite')
  _cell(out, 's4_f20_self_training', 0, [_line(100, 0.7, 0.6)])
  _cell(out, 's4_f20_matched_control', 0, [_line(100, 0.7, 0.6)], done=False)
  prefix = str(tmp_path / 'curves')
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'student_curves.py'),
       f'--out_dir={out}', '--cell=s4_f20', '--seeds=0', f'--results={prefix}'],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'error: matched control seed 0: no finished suite run in '
      f'{out}/digits/cells/s4_f20_matched_control/seed_0 (suite_done.json and suite_log.txt)']
  assert not os.path.exists(prefix + '.json')
  teacher = str(tmp_path / 'teacher_only')
  for name in ('s4_f20_self_training', 's4_f20_matched_control'):
    _cell(teacher, name, 0, ['[train] step 100/300 total_loss=0.9 cls_loss=0.6\n'])
  with pytest.raises(student_curves.CurvesError, match='has no .train. line with both'):
    student_curves.run(teacher, 's4_f20', [0], [], prefix)
  assert not os.path.exists(prefix + '.json')
  with pytest.raises(student_curves.CurvesError, match='--variant=x: expected label=out_dir'):
    student_curves.run(out, 's4_f20', [0], ['x'], prefix)
  with pytest.raises(student_curves.CurvesError, match='curves.json does not exist'):
    student_curves.run(None, 's4_f20', [0], [], prefix, report_only=True)
