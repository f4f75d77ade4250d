"""benchmarks/suite.py + tables.py: commands and step budgets, resumable runs with a fake cell
runner, claims paired by seed, and the JSON -> Markdown / PNG path. Every number here is
fabricated TEST DATA, not a measurement."""
import json
import math
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import suite  # noqa: E402  pylint: disable=g-import-not-at-top
import suite_commands  # noqa: E402  pylint: disable=g-import-not-at-top
import suite_runner  # noqa: E402  pylint: disable=g-import-not-at-top
import tables  # noqa: E402  pylint: disable=g-import-not-at-top

BUDGETS = {'s1': 1500, 's2': 1800, 's3': 2100, 's4': 2400,   # TEST DATA: steps per policy
           's1_f100': 1600, 's2_f100': 1900, 's3_f100': 2200, 's4_f100': 2700,  # 100% labels
           's1_f50': 1550, 's2_f50': 1850, 's3_f50': 2150, 's4_f50': 2500,      # 50%
           'seg_s1': 900, 'seg_s2': 1000, 'seg_s3': 1100, 'seg_s4': 1200}  # segmentation's


def _flag(cmd, name):
  return [a.split('=', 1)[1] for a in cmd if a.startswith(f'--{name}=')]


def _convergence(tmp_path, policies=('s1', 's4', 's4_f100')):
  """A convergence.json in benchmarks/convergence.py's schema (TEST DATA)."""
  path = tmp_path / 'convergence.json'
  path.write_text(json.dumps({
      'chosen': {p: ({'steps': BUDGETS[p], 'plateau_mIoU_x100': 61.2, 'mIoU_x100': 60.6}
                     if p.startswith('seg_') else
                     {'steps': BUDGETS[p], 'plateau_AP_x100': 41.2, 'AP_x100': 40.6})
                 for p in policies},
      'runs': [], 'rule': 'TEST DATA', 'commit': 'c0ffee'}))
  return str(path)


def _run_suite(*args):
  """benchmarks/suite.py as a user runs it: (exit code, stdout, stderr)."""
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'suite.py'), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
  return proc.returncode, proc.stdout, proc.stderr


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
      for name in t.cell_names(scale, optional=True):
        assert tables.CELLS[name].exists(scale)
  for claim in tables.CLAIMS:
    for name in (claim.treatment, claim.control):
      assert name is None or tables.CELLS[name].exists('digits'), claim.id


def test_digit_cells_parse_as_gin(tmp_path):
  """Each digit-scale cell's files + the suite's bindings make a valid gin config, and the
  step budget reaches the binary (the continued cell's literal train_steps is overridden)."""
  import gin  # pylint: disable=g-import-not-at-top
  from rethink_st import cli, config_io  # pylint: disable=g-import-not-at-top
  cli.register_configurables()
  macro = lambda name: gin.query_parameter(f'{name}/macro.value')
  for name in ('pretrain', 's4_f20_self_training', 's1_f20_pretrained',
               's4_f100_rand_init_continued', 's1_f20_matched_control', 's4_f20_standard_a0.5'):
    cmd = suite.cell_command(name, 'digits', 1, str(tmp_path), budgets=BUDGETS)
    gin.clear_config()
    config_io.parse_gin(_flag(cmd, 'gin_file'), _flag(cmd, 'gin_param'))
    if name == 'pretrain':
      continue
    assert macro('CELL_SEED') == 1
    policy = name[:2] + ('_f100' if '_f100_' in name else '')   # 100% labels: own curve
    assert tables.CELLS[name].budget_key == policy
    assert macro('CELL_STEPS') == BUDGETS[policy]
    if name == 's4_f100_rand_init_continued':
      assert policy == 's4_f100' and macro('LABELED_FRACTION') == 1.0
      assert gin.query_parameter('rethink_st.training.run.run_train.train_steps') == tables.student_steps(BUDGETS['s4_f100'])
    if tables.CELLS[name].binary == 'self_train':
      assert macro('STUDENT_STEPS') == tables.student_steps(BUDGETS[policy])
    if name == 's1_f20_matched_control':
      assert gin.query_parameter('rethink_st.losses.LossNormalizer.matched_control') is True
  assert macro('LABELED_FRACTION') == 0.2
  assert macro('ALPHA') == 0.5
  assert macro('LOSS_MODE') == 'standard'
  gin.clear_config()


def test_commands_bind_seed_dependencies_and_extras(tmp_path):
  out = str(tmp_path)
  cmd = suite.cell_command('s1_f20_self_training', 'digits', 2, out, budgets=BUDGETS,
                           gin_params=['X=1'], python='py')
  assert cmd[:2] == ['py', 'bin/self_train.py']
  params = _flag(cmd, 'gin_param')
  teacher = os.path.join(out, 'digits', 'cells', 's1_f20_rand_init', 'seed_2')
  assert f"rethink_st.self_training.run_self_training.teacher_dir='{teacher}'" in params
  assert 'CELL_SEED=2' in params and params[-1] == 'X=1'
  assert _flag(cmd, 'model_dir') == [os.path.join(out, 'digits', 'cells',
                                                  's1_f20_self_training', 'seed_2')]
  pre = suite.cell_command('s4_f100_pretrained', 'digits', 0, out, budgets=BUDGETS)
  assert f"PRETRAINED_DIR='{os.path.join(out, 'digits', 'cells', 'pretrain', 'shared')}'" in (
      _flag(pre, 'gin_param'))
  assert 'LABELED_FRACTION=1.0' in _flag(pre, 'gin_param')
  full = suite.cell_command('s4_f100_rand_init', 'full', 0, out, gin_files=['tpu.gin'])
  assert _flag(full, 'gin_file') == ['gin_configs/coco/table2/s4_rand_init.gin', 'tpu.gin']
  assert 'rethink_st.training.run.run_train.seed=0' in _flag(full, 'gin_param')
  assert not any('STEPS' in p for p in _flag(full, 'gin_param'))   # the paper's, in its file
  with pytest.raises(suite.SuiteError, match='no full-scale config'):
    suite.cell_command('s4_f20_rand_init_continued', 'full', 0, out)
  with pytest.raises(suite.SuiteError, match='no step budget for policy s4'):
    suite.cell_command('s4_f20_rand_init', 'digits', 0, out, budgets={'s1': 100})


def test_budget_keys_and_the_commands_that_make_them():
  """Each cell's budget key names its task, policy and labeled fraction (20%: none), and the
  suite's one-line hint gives the convergence.py command per (task, fraction), a fraction's
  curve starting at its 20% budget when the file has it."""
  assert [tables.CELLS[n].budget_key for n in (
      's4_f20_self_training', 's4_f20_standard_a3', 's1_f50_rand_init', 's4_f100_pretrained',
      'seg_s4_f20_matched_control', 'pretrain')] == ['s4', 's4', 's1_f50', 's4_f100',
                                                     'seg_s4', None]
  assert tables.budget_key('detection', 's4', 0.2000001) == 's4'     # 20% by its percent
  make = suite.convergence_command
  assert make(['s1', 's4']) == 'python benchmarks/convergence.py --policies=s1,s4'
  assert make(['s1_f50']) == 'python benchmarks/convergence.py --policies=s1 --labeled_fraction=0.5'
  assert make(['seg_s4_f100', 's4'], {'seg_s4': {'steps': 4800}}) == (
      'python benchmarks/convergence.py --policies=s4 and python benchmarks/convergence.py '
      '--task=segmentation --policies=s4 --labeled_fraction=1 --budgets=4800,9600')


def test_budgets_from_convergence_json_reach_every_command(tmp_path):
  lines = []
  suite.run_cells(['table2', 'table3', 'appendix_b'], 'digits', [0], str(tmp_path / 'runs'),
                  convergence=_convergence(tmp_path), dry_run=True, echo=lines.append)
  commands = [shlex.split(l) for l in lines]
  by_cell = {_flag(c, 'model_dir')[0].split(os.sep)[-2]: c for c in commands}
  assert len(by_cell) == len(lines) == 26       # 25 cells per seed + the shared pretrain
  for name, cmd in by_cell.items():
    params = _flag(cmd, 'gin_param')
    if name == 'pretrain':
      assert not any('STEPS' in p for p in params)
      continue
    steps = BUDGETS[name[:2] + ('_f100' if '_f100_' in name else '')]
    assert f'CELL_STEPS={steps}' in params, name
    student = cmd[1] == 'bin/self_train.py'
    assert (f'STUDENT_STEPS={tables.student_steps(steps)}' in params) == student, name
    continued = name.endswith('_continued')
    assert (f'rethink_st.training.run.run_train.train_steps={tables.student_steps(steps)}' in params) == continued
    if continued:   # after continue_supervised.gin, which binds train_steps = 300
      assert cmd.index(f'--gin_param=rethink_st.training.run.run_train.train_steps={tables.student_steps(steps)}') > (
          cmd.index('--gin_file=gin_configs/digits/experiments/continue_supervised.gin'))
  assert 'CELL_STEPS=1500' in _flag(by_cell['s1_f20_self_training'], 'gin_param')
  assert 'CELL_STEPS=2700' in _flag(by_cell['s4_f100_self_training'], 'gin_param')
  assert 'STUDENT_STEPS=600' in _flag(by_cell['s4_f20_standard_a3'], 'gin_param')


def test_estimate_counts_the_cells_only_asks_for_and_their_teacher(tmp_path):
  """--estimate --only: a Table 6 S4 plan needs only seg_s4's budget (not seg_s1's), and
  counts the teacher the students depend on, each at the steps and batch its binary runs."""
  conv = _convergence(tmp_path, policies=('seg_s4',))
  with pytest.raises(suite.SuiteError, match='policy seg_s1'):
    suite.estimate(['table6'], 'digits', 100.0, conv)
  rows = suite.estimate(['table6'], 'digits', 100.0, conv,
                        only=['seg_s4_f20_self_training', 'seg_s4_f20_matched_control'])
  student = tables.student_steps(BUDGETS['seg_s4'])
  assert [(r['cell'], r['steps'], r['batch']) for r in rows] == [
      ('seg_s4_f20_rand_init', BUDGETS['seg_s4'], 16),
      ('seg_s4_f20_self_training', student, 32), ('seg_s4_f20_matched_control', student, 32)]
  assert rows[0]['images'] == 16 * BUDGETS['seg_s4']
  assert rows[0]['hours'] == pytest.approx(16 * BUDGETS['seg_s4'] / 100.0 / 3600)


def test_a_missing_policy_stops_the_suite_with_one_line_before_anything_runs(tmp_path):
  runner, out = FakeRunner(), str(tmp_path / 'runs')
  conv = _convergence(tmp_path, policies=('s1',))
  with pytest.raises(suite.SuiteError) as e:
    suite.run_cells(['table2'], 'digits', [0], out, convergence=conv, runner=runner)
  message = str(e.value)
  assert '\n' not in message and conv in message
  assert 'policy s4' in message and 'python benchmarks/convergence.py --policies=s4' in message
  assert not runner.calls and not os.path.exists(out)
  # table3 needs s4 at 20% and s4 at 100% labels (its own curve): an s1-only file is not
  # enough, nor an s4 one; the error gives the command that measures the 100% curve
  with pytest.raises(suite.SuiteError, match='policy s4'):
    suite.run_cells(['table3'], 'digits', [0], out, convergence=conv, dry_run=True)
  with pytest.raises(suite.SuiteError) as e:
    suite.run_cells(['table3'], 'digits', [0], out, dry_run=True,
                    convergence=_convergence(tmp_path, policies=('s4',)))
  assert str(e.value).endswith('for policy s4_f100; make it with: '
                               'python benchmarks/convergence.py --policies=s4 '
                               '--labeled_fraction=1 --budgets=2400,4800')   # s4: 2400
  suite.run_cells(['table3'], 'digits', [0], out, dry_run=True, echo=lambda s: None,
                  convergence=_convergence(tmp_path, policies=('s4', 's4_f100')))
  # the full scale needs no convergence.json (its gin files hold the paper's steps)
  suite.run_cells(['table2'], 'full', [0], out, dry_run=True, echo=lambda s: None,
                  convergence=str(tmp_path / 'nothing.json'))
  with pytest.raises(suite.SuiteError, match='nothing.json: not found.*--policies=s1,s4$'):
    suite.run_cells(['table2'], 'digits', [0], out, convergence=str(tmp_path / 'nothing.json'))
  # as a user sees it: one line on stderr, exit code 1
  code, _, err = _run_suite('--table=table2', '--dry_run', f'--convergence={conv}')
  assert code == 1 and err.count('\n') == 1 and err.startswith(f'error: {conv} has no step')


def test_matched_control_is_the_self_training_command_plus_one_gin_file(tmp_path):
  out = str(tmp_path)
  for base, seed in (('s1_f20', 0), ('s4_f100', 2)):
    st = suite.cell_command(f'{base}_self_training', 'digits', seed, out, budgets=BUDGETS)
    mc = suite.cell_command(f'{base}_matched_control', 'digits', seed, out, budgets=BUDGETS)
    added = [a for a in mc if a not in st]
    removed = [a for a in st if a not in mc]
    model_dir = lambda kind: f'--model_dir={suite.cell_dir(out, "digits", base + kind, seed)}'
    assert added == ['--gin_file=gin_configs/digits/experiments/matched_control.gin',
                     model_dir('_matched_control')]
    assert removed == [model_dir('_self_training')]
    assert [a for a in mc if a not in added] == [a for a in st if a not in removed]  # same order
  with open(os.path.join(REPO, 'gin_configs/digits/experiments/matched_control.gin')) as f:
    bindings = [l for l in f if l.strip() and not l.startswith(('#', 'import'))]
  assert [b.split('#')[0].strip() for b in bindings] == [
      'rethink_st.losses.LossNormalizer.matched_control = True']


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
  (tmp_path / 'bad.json').write_text('{"chosen": {"s1": {"steps": 0}, "s4": {"steps": 10}}}')
  with pytest.raises(suite.SuiteError, match=r'chosen.s1.steps = 0 is not a positive'):
    suite.run_cells(['table2'], 'digits', [0], str(tmp_path),
                    convergence=str(tmp_path / 'bad.json'))


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
    metric = tables.CELLS[name].metric      # segmentation cells: mIoU, as their binaries
    if cmd[1] == 'bin/self_train.py':   # its teacher row: the teacher folder's metric
      teacher = next(a.split('teacher_dir=')[1].strip('\'') for a in cmd if 'teacher_dir=' in a)
      with open(os.path.join(teacher, 'eval_metrics.json')) as f:
        teacher_metric = json.load(f)[metric]
      rows = [{'model': 'teacher', metric: teacher_metric},
              {'model': 'student_round_1', metric: ap,
               'pseudo_boxes_per_image': None if metric == 'mIoU' else 2.5}]
      with open(os.path.join(model_dir, 'results.json'), 'w') as f:
        json.dump({'rows': rows, 'metric': metric}, f)
      progress = 'total_loss=0.5 img/s=9.0 human_loss=0.3 pseudo_loss=0.4 eta=0m00s'
    else:
      with open(os.path.join(model_dir, 'eval_metrics.json'), 'w') as f:
        json.dump({'step': 300, metric: ap}, f)
      progress = 'total_loss=0.9 lr=0 cls_loss=0.6 box_loss=0.01'
    with open(log_path, 'a') as f:   # the binary's progress lines: an earlier one, the last
      f.write(f'[train] step 1/2 total_loss=7.0\n[train] step 2/2 {progress}\n')
    return 0


def test_run_cells_order_resume_failures_and_limits(tmp_path):
  out, log, conv = str(tmp_path / 'runs'), [], _convergence(tmp_path)
  runner = FakeRunner(fail={'s4_f20_rand_init'})
  counts = suite.run_cells(['table2'], 'digits', [0, 1], out, runner=runner, echo=log.append,
                           convergence=conv)
  names = [n for n, _ in runner.calls]
  # dependencies first; the shared pretrain once; seed 0 before seed 1
  assert names.index('pretrain') < names.index('s1_f20_pretrained')
  assert names.index('s1_f20_rand_init') < names.index('s1_f20_self_training')
  assert names.count('pretrain') == 1
  seeds = [d.rsplit('_', 1)[1] for _, d in runner.calls if 'seed_' in d]
  assert seeds == sorted(seeds)
  # the failed teacher blocks its self-training, matched and same-compute controls, per seed
  assert 's4_f20_self_training' not in names and 's4_f20_matched_control' not in names
  assert counts['failed'] == 2 and counts['blocked'] == 6
  assert os.path.exists(os.path.join(out, 'digits/cells/s4_f20_rand_init/seed_0',
                                     suite.FAILED))
  done = json.load(open(os.path.join(out, 'digits/cells/s1_f20_self_training/seed_1',
                                     suite.DONE)))
  teacher = json.load(open(os.path.join(out, 'digits/cells/s1_f20_rand_init/seed_1',
                                        suite.DONE)))
  assert done['metrics']['teacher_AP'] == teacher['metrics']['AP']
  assert done['metrics']['pseudo_boxes_per_image']
  # the steps it trained, where they came from, and the code it ran
  assert done['steps'] == 1500 and done['steps_from'] == f'{conv} (commit c0ffee)'
  assert done['commit'] == suite.repo_commit() and len(done['commit'].split('+')[0]) == 40
  pre = json.load(open(os.path.join(out, 'digits/cells/pretrain/shared', suite.DONE)))
  assert pre['steps'] is None
  # rerun: finished cells are skipped, the failed one retried (now succeeds), max_cells stops
  runner2 = FakeRunner()
  counts = suite.run_cells(['table2'], 'digits', [0, 1], out, runner=runner2,
                           echo=log.append, max_cells=2, convergence=conv)
  assert [n for n, _ in runner2.calls] == ['s4_f20_rand_init', 's4_f20_self_training']
  assert counts['ran'] == 2 and counts['skipped'] == 6
  assert not os.path.exists(os.path.join(out, 'digits/cells/s4_f20_rand_init/seed_0',
                                         suite.FAILED))
  # --only runs just that cell (its dependencies are done)
  runner3 = FakeRunner()
  suite.run_cells(['table2'], 'digits', [0], out, runner=runner3, convergence=conv,
                  only=['s4_f20_rand_init_continued'], echo=log.append)
  assert [n for n, _ in runner3.calls] == ['s4_f20_rand_init_continued']


def test_the_cpu_kind_names_the_cpu_generation(tmp_path):
  """Records name the CPU's family and model: two "AMD EPYC" VMs with the same flags ran
  the seeded demo student to 0.28 and 0.21 AP x 100."""
  def kind(family):
    path = tmp_path / f'cpuinfo_{family}'
    path.write_text(f'processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\n'
                    f'model\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f '
                    'avx512_bf16\n\nprocessor\t: 1\ncpu family\t: 99\n')
    return suite.cpu_kind(str(path))
  assert kind(26) == f'AMD EPYC (family 26 model 2, AVX-512 + bf16), {os.cpu_count()} CPUs'
  assert kind(25) != kind(26)
  assert suite.cpu_kind(str(tmp_path / 'missing')).endswith(f'(no AVX2), {os.cpu_count()} CPUs')


def test_records_outlive_run_folders(tmp_path):
  """--record_dir: finished cells are copied there (pseudo-label quality folded in, paths
  as <out_dir>); on a machine without the run folders a recorded cell is skipped unless a
  cell still to run needs its checkpoint, then it reruns and is compared with its record;
  the tables and claims read the records."""
  conv, records, log = _convergence(tmp_path), str(tmp_path / 'records'), []
  only = ['s1_f20_self_training']
  first = FakeRunner()
  suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'a'), only=only, runner=first,
                  convergence=conv, record_dir=records, echo=log.append)
  assert [n for n, _ in first.calls] == ['s1_f20_rand_init', 's1_f20_self_training']
  rec = json.load(open(os.path.join(records, 'digits/cells/s1_f20_self_training/seed_0',
                                    suite.DONE)))
  teacher_rec = json.load(open(os.path.join(records, 'digits/cells/s1_f20_rand_init/seed_0',
                                            suite.DONE)))
  assert rec['metrics']['teacher_AP'] == teacher_rec['metrics']['AP'] and rec['steps'] == 1500
  assert rec['cpu'] == suite.cpu_kind() and 'CPUs' in rec['cpu']   # results differ by CPU kind
  # the last [train] line's losses, the student's human and pseudo terms apart
  assert {k: v for k, v in rec['metrics'].items() if k.startswith('train_')} == {
      'train_total_loss': 0.5, 'train_human_loss': 0.3, 'train_pseudo_loss': 0.4}
  assert any(a.startswith('--model_dir=<out_dir>/digits/') for a in rec['command'])
  assert not any(str(tmp_path / 'a') in a for a in rec['command'])
  assert rec['command'][:2] == ['python', 'bin/self_train.py']
  # the convergence.json of a tmp folder (outside the repository): no machine path
  assert rec['steps_from'] == f'<elsewhere>/{os.path.basename(conv)} (commit c0ffee)'
  # another machine (new out_dir): both recorded, nothing needs the teacher -> nothing runs
  second = FakeRunner()
  counts = suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'b'), only=only,
                           runner=second, convergence=conv, record_dir=records)
  assert second.calls == [] and counts['skipped'] == 2
  # the matched control still to run: its recorded teacher reruns first, checked
  third = FakeRunner()
  suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'b'),
                  only=only + ['s1_f20_matched_control'], runner=third, convergence=conv,
                  record_dir=records, echo=log.append)
  assert [n for n, _ in third.calls] == ['s1_f20_rand_init', 's1_f20_matched_control']
  assert any('s1_f20_rand_init seed 0: running again for s1_f20_matched_control' in line
             for line in log)
  assert any('against the record' in line and 'the same' in line for line in log)
  # a rerun that differs from a record made on another CPU says so, names both CPUs and
  # replaces the record (the cells still to run start from the rerun)
  teacher_rec = os.path.join(records, 'digits/cells/s1_f20_rand_init/seed_0', suite.DONE)
  with open(teacher_rec) as f:
    edited = json.load(f)
  edited['metrics']['AP'], edited['cpu'] = 0.999, 'another CPU'
  with open(teacher_rec, 'w') as f:
    json.dump(edited, f)
  suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'd'),
                  only=['s1_f20_rand_init_continued'], runner=FakeRunner(), convergence=conv,
                  record_dir=records, echo=log.append)
  assert any('DIFFERENT; the record is replaced, since the cells still to run start from '
             f'this run (the record ran on another CPU, this run on {suite.cpu_kind()})' in line
             for line in log)
  with open(teacher_rec) as f:
    replaced = json.load(f)
  assert replaced['metrics']['AP'] != 0.999 and replaced['cpu'] == suite.cpu_kind()
  # the tables and claims read records when the run folders are gone
  res = suite.collect_results('table2', 'digits', [0], str(tmp_path / 'c'), records)
  assert res['cells']['s1_f20_self_training']['seeds']['0']['AP'] == rec['metrics']['AP']
  md = suite.format_markdown(res)
  assert 'last [train] human loss 0.300, pseudo loss 0.400' in md
  assert 'last [train] loss 0.900' in md
  claims = suite.collect_claims('digits', [0], str(tmp_path / 'c'), records)
  by_id = {c['id']: c for c in claims['claims']}
  assert by_id['st_vs_matched_control/S1/20']['n'] == 1


def test_a_teacher_rerun_that_differs_replaces_its_record_and_its_students_rerun(tmp_path):
  """A recorded teacher reruns (its run folder gone) for a cell still to run and gives another
  AP (another CPU kind): its record is replaced, and the recorded student made from the old
  teacher is not finished any more, so it trains again from the new one; a continued cell's
  record keeps the AP of the checkpoint it went on from (TEST DATA)."""
  conv, records, log = _convergence(tmp_path), str(tmp_path / 'records'), []
  suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'a'),
                  only=['s1_f20_self_training'], runner=FakeRunner(), convergence=conv,
                  record_dir=records)

  def record(name):
    with open(os.path.join(records, 'digits/cells', name, 'seed_0', suite.DONE)) as f:
      return json.load(f)['metrics']
  old = record('s1_f20_rand_init')['AP']
  assert record('s1_f20_self_training')['teacher_AP'] == old
  other = FakeRunner()
  other.calls = [('earlier', '')] * 5       # its first run gives another AP than the first's
  suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'b'),
                  only=['s1_f20_self_training', 's1_f20_matched_control',
                        's1_f20_rand_init_continued'],
                  runner=other, convergence=conv, record_dir=records, echo=log.append)
  assert [n for n, _ in other.calls[5:]] == ['s1_f20_rand_init', 's1_f20_self_training',
                                             's1_f20_matched_control',
                                             's1_f20_rand_init_continued']
  new = record('s1_f20_rand_init')['AP']
  assert new != old and any('DIFFERENT; the record is replaced' in line for line in log)
  assert any(f'replaces its record of another start (teacher_AP {old:.4f}, now {new:.4f})'
             in line for line in log), log
  assert record('s1_f20_self_training')['teacher_AP'] == new
  assert record('s1_f20_matched_control')['teacher_AP'] == new
  assert record('s1_f20_rand_init_continued')['teacher_AP'] == new
  # all recorded from the same teacher: nothing runs again
  again = FakeRunner()
  suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'c'),
                  only=['s1_f20_self_training', 's1_f20_matched_control'], runner=again,
                  convergence=conv, record_dir=records)
  assert again.calls == []


def test_a_new_step_budget_moves_old_runs_aside_and_replaces_their_records(tmp_path):
  """convergence.json chose a longer schedule after cells ran: their folders (finished, or
  started and unfinished) are moved aside, not resumed; the cells rerun; the records of the
  old budget are replaced; the tables leave runs of another budget out."""
  records, out, log = str(tmp_path / 'records'), str(tmp_path / 'runs'), []
  only = ['s1_f20_self_training']
  old_conv = _convergence(tmp_path)                       # s1: 1500 steps
  suite.run_cells(['table2'], 'digits', [0], out, only=only, runner=FakeRunner(),
                  convergence=old_conv, record_dir=records)
  # an unfinished run of the old budget beside them
  control = os.path.join(out, 'digits/cells/s1_f20_matched_control/seed_0')
  os.makedirs(control)
  with open(os.path.join(control, suite.STARTED), 'w') as f:
    json.dump({'steps': 1500}, f)
  with open(os.path.join(control, 'ckpt-50.index'), 'w') as f:
    f.write('a checkpoint of the 1500-step schedule')
  longer = tmp_path / 'longer'
  longer.mkdir()
  data = json.loads(open(old_conv).read())
  data['chosen']['s1']['steps'] = 3000
  new_conv = longer / 'convergence.json'
  new_conv.write_text(json.dumps(data))
  budgets = suite.known_budgets(str(new_conv))
  assert budgets == {'s1': 3000, 's4': BUDGETS['s4'], 's4_f100': BUDGETS['s4_f100']}
  # the tables under the new budget: the old runs are left out
  res = suite.collect_results('table2', 'digits', [0], out, records, budgets)
  assert res['cells']['s1_f20_self_training']['seeds'] == {}
  # --dry_run says what it would move and lists the stale cells' commands, moving nothing
  dry = []
  suite.run_cells(['table2'], 'digits', [0], out, only=only + ['s1_f20_matched_control'],
                  convergence=str(new_conv), record_dir=records, dry_run=True,
                  echo=dry.append)
  assert sum('would move it to' in line for line in dry) == 3
  assert sum('CELL_STEPS=3000' in line or 'STUDENT_STEPS=750' in line for line in dry) == 3
  assert os.path.exists(os.path.join(control, 'ckpt-50.index'))
  runner = FakeRunner()
  suite.run_cells(['table2'], 'digits', [0], out, only=only + ['s1_f20_matched_control'],
                  runner=runner, convergence=str(new_conv), record_dir=records,
                  echo=log.append)
  assert [n for n, _ in runner.calls] == ['s1_f20_rand_init', 's1_f20_self_training',
                                          's1_f20_matched_control']
  for name in ('s1_f20_rand_init', 's1_f20_self_training', 's1_f20_matched_control'):
    moved = os.path.join(out, f'digits/cells/{name}/seed_0.steps_1500')
    assert os.path.isdir(moved), name
    assert any(f'{name} seed 0: its run folder trained 1500 steps, the budget is 3000 now'
               in line for line in log)
  assert os.path.exists(os.path.join(out, 'digits/cells/s1_f20_matched_control/'
                                     'seed_0.steps_1500/ckpt-50.index'))
  assert not os.path.exists(os.path.join(control, 'ckpt-50.index'))   # not resumed
  rec = json.load(open(os.path.join(records, 'digits/cells/s1_f20_self_training/seed_0',
                                    suite.DONE)))
  assert rec['steps'] == 3000
  assert any('s1_f20_self_training seed 0: replaces its record of 1500 steps' in line
             for line in log)
  res = suite.collect_results('table2', 'digits', [0], str(tmp_path / 'gone'), records,
                              budgets)
  assert res['cells']['s1_f20_self_training']['seeds']['0']['steps'] == 3000
  # and under the old budget, nothing of the new runs counts
  assert suite.collect_results('table2', 'digits', [0], out, records, {'s1': 1500})[
      'cells']['s1_f20_self_training']['seeds'] == {}


def test_config_digest_follows_bindings_not_layout(tmp_path):
  """What gin ends up binding: comments, layout, moving a binding into an included file and
  a default a later file overrides leave the digest; a changed value, the order of two
  bindings of one key, or a binding after an awkward string change it. A changed
  pre-training changes every pre-trained cell's digest and no other's."""
  import suite_commands  # pylint: disable=g-import-not-at-top
  def bound(text):
    return dict(suite_commands.gin_bindings(text, 'test', root=str(tmp_path)))
  (tmp_path / 'c.gin').write_text('A = 1\n')
  base = bound("import x.y\nA = 1  # one\nf.g = {'k': ':(',\n  'j': @s/h()}\nB = %A\n")
  assert base == {'A': '1', 'f.g': "{'k': ':(', 'j': '@s/h()'}", 'B': "'%A'"}
  assert bound("include 'c.gin'\nf.g = {'k': ':(', 'j': @s/h()}\nB=%A") == base
  assert bound("A = 5\ninclude 'c.gin'\nf.g = {'k': ':(', 'j': @s/h()}\nB = %A") == base
  assert bound("A = 1\nA = 2\n") != bound("A = 2\nA = 1\n")
  # a string with a bracket or '#', then names that start like keywords: all kept
  odd = bound("h.i = 'a # b ('\ninclude_background = True\nfrom_logits = 1\nimportance = 2\n")
  assert odd == {'h.i': "'a # b ('", 'include_background': 'True', 'from_logits': '1',
                 'importance': '2'}
  assert bound("h.i = 'a b'") != bound("h.i = 'ab'")
  with pytest.raises(suite.SuiteError, match="test: include missing.gin: No such file"):
    bound("include 'missing.gin'")
  # the repository's own files: a copy with pretrain.gin changed
  import shutil  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'repo'
  shutil.copytree(os.path.join(REPO, 'gin_configs'), root / 'gin_configs')
  def digest(name, where, **kw):
    return suite_commands.config_digest(name, 'digits', 0, budgets=BUDGETS, root=str(where),
                                        **kw)
  names = ('pretrain', 's1_f20_pretrained', 's1_f20_pretrained_self_training',
           's1_f20_rand_init', 's1_f20_self_training')
  before = {n: digest(n, REPO) for n in names}
  assert before == {n: digest(n, root) for n in names}
  assert len(set(before.values())) == len(names)
  pretrain = root / 'gin_configs/digits/experiments/pretrain.gin'
  pretrain.write_text(pretrain.read_text() + '\nPRETRAIN_STEPS = 123\n')
  after = {n: digest(n, root) for n in names}
  assert [n for n in names if after[n] != before[n]] == list(names[:3])
  # an S1 default of the teacher's that augment_s4.gin overrides: S4 cells keep their digest
  s4 = digest('s4_f20_self_training', root)
  s1 = root / 'gin_configs/base/augment_s1.gin'
  text = s1.read_text()
  assert 'rethink_st.augment.Augment.scale_min = 0.8' in text
  s1.write_text(text.replace('Augment.scale_min = 0.8', 'Augment.scale_min = 0.7'))
  assert digest('s4_f20_self_training', root) == s4
  assert digest('s1_f20_self_training', root) != before['s1_f20_self_training']
  # the extra bindings of a run are part of it; a macro the cell never reads is not (a
  # student's variant leaves the teacher it shares with the suite alone)
  assert digest('s1_f20_self_training', REPO, gin_params=('ALPHA=2.0',)) != before[
      's1_f20_self_training']
  variant = ('PSEUDO_SCORE_THRESHOLD=0.3', 'STUDENT_STEPS=999')
  assert digest('s1_f20_rand_init', REPO, gin_params=variant) == before['s1_f20_rand_init']
  assert digest('s1_f20_self_training', REPO, gin_params=variant[:1]) != before[
      's1_f20_self_training'] != digest('s1_f20_self_training', REPO, gin_params=variant[1:])
  with pytest.raises(suite.SuiteError, match=r'--gin_file=nope.gin: No such file'):
    digest('s1_f20_rand_init', REPO, gin_files=('nope.gin',))


def test_runs_of_other_bindings_are_moved_aside_and_rerun(tmp_path):
  """A finished run and record made with other bindings (here an extra --gin_param; in use, a
  gin file edited since) do not count as this cell's: the folder is moved aside to
  <folder>.config_<digest>, the cell reruns and its record is replaced. Runs recorded before
  digests were kept (no `config`) count as they are."""
  conv, records, out, log = (_convergence(tmp_path), str(tmp_path / 'records'),
                             str(tmp_path / 'runs'), [])
  only = ['s1_f20_rand_init']
  suite.run_cells(['table2'], 'digits', [0], out, only=only, runner=FakeRunner(),
                  convergence=conv, record_dir=records)
  folder = os.path.join(out, 'digits/cells/s1_f20_rand_init/seed_0')
  first = json.load(open(os.path.join(folder, suite.DONE)))['config']
  record = os.path.join(records, 'digits/cells/s1_f20_rand_init/seed_0', suite.DONE)
  assert json.load(open(record))['config'] == first
  runner = FakeRunner()    # the same bindings: nothing runs
  suite.run_cells(['table2'], 'digits', [0], out, only=only, runner=runner, convergence=conv,
                  record_dir=records)
  assert runner.calls == []
  runner = FakeRunner()
  suite.run_cells(['table2'], 'digits', [0], out, only=only, runner=runner, convergence=conv,
                  record_dir=records, gin_params=('CELL_BATCH_SIZE=8',), echo=log.append)
  assert [n for n, _ in runner.calls] == ['s1_f20_rand_init']
  assert os.path.isdir(f'{folder}.config_{first}')
  now = json.load(open(record))['config']
  assert now != first and json.load(open(os.path.join(folder, suite.DONE)))['config'] == now
  assert any(f'has other bindings (config {first}, now {now}); moved it to {folder}.config_'
             in line for line in log)
  assert any(f'replaces its record of other bindings (config {first})' in line for line in log)
  # an interrupted run (suite_started.json only) of other bindings: moved aside, not resumed
  os.remove(os.path.join(folder, suite.DONE))
  dry = []
  suite.run_cells(['table2'], 'digits', [0], out, only=only, runner=FakeRunner(),
                  convergence=conv, record_dir=records, dry_run=True, echo=dry.append)
  assert any(f'has other bindings (config {now}, now {first}); would move it to '
             f'{folder}.config_{now}' in line for line in dry)
  assert os.path.exists(os.path.join(folder, suite.STARTED))
  runner = FakeRunner()
  suite.run_cells(['table2'], 'digits', [0], out, only=only, runner=runner, convergence=conv,
                  record_dir=records)
  assert [n for n, _ in runner.calls] == ['s1_f20_rand_init']
  assert os.path.exists(f'{folder}.config_{now}/{suite.STARTED}')
  assert json.load(open(record))['config'] == first
  # a run and record from before digests: finished, whatever the bindings now
  for path in (record, os.path.join(folder, suite.DONE)):
    data = json.load(open(path))
    del data['config']
    with open(path, 'w') as f:
      json.dump(data, f)
  runner = FakeRunner()
  suite.run_cells(['table2'], 'digits', [0], out, only=only, runner=runner, convergence=conv,
                  record_dir=records)
  assert runner.calls == []


def test_dry_run_lists_teachers_before_their_students(tmp_path):
  lines, out = [], str(tmp_path / 'runs')
  suite.run_cells(['table2', 'table3', 'appendix_b'], 'digits', [0, 1, 2], out, dry_run=True,
                  optional=True, convergence=_convergence(tmp_path, [
                      k for k in BUDGETS if not k.startswith('seg_')]),
                  echo=lines.append)
  commands = [shlex.split(l) for l in lines]
  position = {_flag(c, 'model_dir')[0]: i for i, c in enumerate(commands)}
  assert len(position) == len(lines) == 1 + 3 * 42   # pretrain + 42 cells per seed (optional)
  students = 0
  for i, cmd in enumerate(commands):
    for param in _flag(cmd, 'gin_param'):
      for key in ('teacher_dir=', 'TEACHER_DIR=', 'PRETRAINED_DIR='):
        if key in param:
          students += 1
          assert position[param.split('=', 1)[1].strip("'")] < i, cmd
  assert students > 3 * 25
  # seeds in order: every seed-0 cell before any seed-1 cell
  seeds = [int(_flag(c, 'model_dir')[0].rsplit('seed_', 1)[1]) for c in commands
           if 'seed_' in _flag(c, 'model_dir')[0]]
  assert seeds == sorted(seeds)


def test_dry_run_prints_commands_and_runs_nothing(tmp_path):
  lines, runner = [], FakeRunner()
  suite.run_cells(['appendix_b'], 'full', [0], str(tmp_path), dry_run=True,
                  echo=lines.append, runner=runner)
  assert not runner.calls and not os.path.exists(os.path.join(str(tmp_path), 'full'))
  assert any('gin_configs/coco/appendix_b/s4_standard_loss.gin' in l for l in lines)
  assert any('ALPHA=3.0' in l and 'standard_loss.gin' in l for l in lines)
  # a cluster's gin file this machine cannot read: the commands still print
  lines = []
  suite.run_cells(['appendix_b'], 'full', [0], str(tmp_path), dry_run=True,
                  gin_files=('gs://bucket/tpu.gin',), echo=lines.append, runner=runner)
  assert not runner.calls and any('--gin_file=gs://bucket/tpu.gin' in l for l in lines)


_MADE_UP = {'Rand Init': 0.20, 'ImageNet Init': 0.25, 'Rand Init + self-training': 0.24,
            tables._MC: 0.21, tables._CONT: 0.22, tables._PRE_ST: 0.27, tables._PRE_MC: 0.255,
            'Loss normalization': 0.24, 'Standard loss': 0.23}


def _fabricated(table, scale='digits', optional=False):
  """TEST DATA ONLY: made-up AP per cell and seed."""
  t = tables.TABLES[table]
  cells = {}
  for row in t.rows_for(scale, optional):
    for j, col in enumerate(t.columns_for(scale, optional)):
      name = t.cell(scale, row, col)
      shrink = 0.04 * j if row == 'ImageNet Init' else 0.0
      cells[name] = {'seeds': {str(s): {'AP': _MADE_UP[row] - shrink + 0.01 * s, 'seconds': 60}
                               for s in range(3)}}
  return suite.build_results(table, scale, [0, 1, 2], cells, is_test_data=True)


def test_results_markdown_claims_and_plot(tmp_path):
  res = _fabricated('table2')
  assert res['columns'] == ['S1', 'S4']          # S2, S3 and their row: optional, not run
  assert tables._MC in res['rows'] and tables._PRE_MC not in res['rows']
  e = suite._entry(res, 'ImageNet Init', 'S4')
  assert e["mean"] == pytest.approx(100 * 0.22, abs=1e-6)
  assert e['gain_mean'] == pytest.approx(1.0, abs=1e-6) and e['gain_std'] == pytest.approx(0)
  assert e['std'] == pytest.approx(1.0)
  # Table 2 at digit scale tests the claims whose two cells it holds
  assert [c['id'] for c in res['claims']] == [
      'st_vs_matched_control/S1/20', 'st_vs_matched_control/S4/20', 'st_vs_rand_init/S4/20',
      'pretrain_gain/S1/20', 'pretrain_gain/S4/20', 'pretrain_plus_st_vs_pretrain/S4/20',
      'pretrain_plus_st_vs_matched_control/S4/20']
  # a constant per-seed difference: std 0, the bound is the mean
  st_mc = res['claims'][1]
  assert st_mc['diff_mean'] == pytest.approx(3.0) and st_mc['holds'] is True
  md = suite.format_markdown(res)
  assert md.startswith('**TEST DATA ONLY')
  assert '| ImageNet Init | 26.00 ± 1.00 (+5.00 ± 0.00) n=3 | 22.00 ± 1.00 (+1.00 ± 0.00) n=3 |' in md
  assert (f'| {tables._MC} | 22.00 ± 1.00 (+1.00 ± 0.00) n=3 | 22.00 ± 1.00 (+1.00 ± 0.00) '
          f'n=3 |') in md
  assert '| `st_vs_matched_control/S4/20`: ' in md and '| +3.00 ± 0.00 | 3 | helps |' in md
  assert '-1.0 (Sec. 4.1' in md and '**holds**' in md
  assert 'Code: commit not recorded (36 runs' in md   # 6 rows x 2 columns x 3 seeds
  paths = suite.write_report(res, str(tmp_path))
  assert os.path.getsize(paths['png']) > 1000
  assert json.load(open(paths['json']))['is_test_data'] is True
  # an optional column with runs is shown, in the paper's order
  assert _fabricated('table2', optional=True)['columns'] == ['S1', 'S2', 'S3', 'S4']


def test_table3_rows_and_missing_cells():
  res = _fabricated('table3')
  assert res['columns'] == ['20%', '100%']
  assert res['rows'] == ['Rand Init', 'ImageNet Init', 'Rand Init + self-training', tables._MC,
                         tables._CONT, tables._PRE_ST]
  cells = res['cells']
  del cells['s4_f20_rand_init_continued']
  for s in cells['s4_f100_pretrained']['seeds'].values():
    s['AP'] -= 0.1    # ImageNet Init below Rand Init at 100%: the 'hurts' claim holds
  res = suite.build_results('table3', 'digits', [0, 1, 2], cells, is_test_data=True)
  hurts = [c for c in res['claims'] if c['id'] == 'pretrain_gain/S4/100'][0]
  assert hurts['direction'] == 'hurts' and hurts['diff_mean'] == pytest.approx(-9.0)
  assert hurts['holds'] is True
  assert 'not run' in suite.format_markdown(res)


def test_appendix_b_digits_is_s4_over_four_alphas_and_full_scale_alpha_1_and_3():
  t = tables.TABLES['appendix_b']
  assert t.columns_for('digits') == ('alpha=0.5', 'alpha=1', 'alpha=2', 'alpha=3')
  assert t.cell('digits', 'Loss normalization', 'alpha=1') == 's4_f20_self_training'
  assert t.cell('digits', 'Standard loss', 'alpha=0.5') == 's4_f20_standard_a0.5'
  assert t.cell('digits', 'Loss normalization', 'alpha=3') == 's4_f20_normalized_a3'
  assert t.columns_for('full') == ('alpha=1', 'alpha=3')
  assert t.cell('full', 'Standard loss', 'alpha=3') == 's4_f100_standard_a3'
  assert [c['id'] for c in _fabricated('appendix_b')['claims']] == [
      'loss_norm_vs_standard/alpha_3']
  assert suite.build_results('appendix_b', 'full', [0], {})['claims'] == []


def _write_done(out, name, seed, ap, commit='c0ffee'):
  """TEST DATA ONLY: a finished cell as the suite leaves it."""
  directory = suite.cell_dir(out, 'digits', name, seed)
  os.makedirs(directory)
  with open(os.path.join(directory, suite.DONE), 'w') as f:
    json.dump({'metrics': {'AP': ap}, 'seconds': 60.0, 'seed': seed, 'steps': 2400,
               'commit': commit}, f)


def test_claims_json_pairs_seeds_and_tests_two_standard_errors(tmp_path):
  """TEST DATA ONLY, hand-computed (AP x100, treatment - control per seed)."""
  out, report = str(tmp_path / 'runs'), str(tmp_path / 'report')
  ap = {'s4_f20_self_training': {0: 0.30, 1: 0.32, 2: 0.31, 3: 0.50},   # seed 3: no control
        's4_f20_matched_control': {0: 0.28, 1: 0.29, 2: 0.30, 4: 0.10},  # seed 4: no treatment
        's4_f20_rand_init': {0: 0.29, 1: 0.33, 2: 0.30},
        's4_f100_pretrained': {0: 0.40, 1: 0.41, 2: 0.39},
        's4_f100_rand_init': {0: 0.42, 1: 0.44, 2: 0.40},
        's1_f20_pretrained': {0: 0.30}, 's1_f20_rand_init': {0: 0.20, 1: 0.20}}
  for name, per_seed in ap.items():
    for seed, value in per_seed.items():
      _write_done(out, name, seed, value)
  claims = suite.collect_claims('digits', [0, 1, 2, 3, 4], out)
  path = suite.write_claims(claims, report)
  assert path == os.path.join(report, 'digits', 'claims.json')
  by_id = {c['id']: c for c in json.load(open(path))['claims']}
  assert list(by_id) == [c.id for c in tables.CLAIMS]
  # helps: diffs 2, 3, 1 -> mean 2, std 1, bound 2 - 2/sqrt(3) > 0
  helps = by_id['st_vs_matched_control/S4/20']
  assert helps['seeds'] == [0, 1, 2] and helps['n'] == 3
  assert helps['treatment_ap'] == pytest.approx([30, 32, 31])
  assert helps['control_ap'] == pytest.approx([28, 29, 30])
  assert helps['unpaired_seeds'] == {'treatment': [3], 'control': [4]}
  assert (helps['diff_mean'], helps['diff_std']) == (pytest.approx(2.0), pytest.approx(1.0))
  assert helps['bound'] == pytest.approx(2 - 2 / math.sqrt(3))
  assert helps['direction'] == 'helps' and helps['holds'] is True
  assert helps['commits'] == ['c0ffee']
  # helps, but within 2 s.e.: diffs 1, -1, 1 -> mean 1/3, std 2/sqrt(3), bound -1
  noisy = by_id['st_vs_rand_init/S4/20']
  assert noisy['diff_mean'] == pytest.approx(1 / 3)
  assert noisy['diff_std'] == pytest.approx(2 / math.sqrt(3))
  assert noisy['bound'] == pytest.approx(-1.0) and noisy['holds'] is False
  # hurts: diffs -2, -3, -1 -> mean -2, std 1, bound -2 + 2/sqrt(3) < 0
  hurts = by_id['pretrain_gain/S4/100']
  assert hurts['direction'] == 'hurts'
  assert (hurts['diff_mean'], hurts['diff_std']) == (pytest.approx(-2.0), pytest.approx(1.0))
  assert hurts['bound'] == pytest.approx(-2 + 2 / math.sqrt(3)) and hurts['holds'] is True
  # fewer than 2 paired seeds: holds null, with the reason
  one = by_id['pretrain_gain/S1/20']
  assert one['n'] == 1 and one['holds'] is None and one['diff_std'] is None
  assert 'one paired seed' in one['reason']
  assert by_id['st_vs_matched_control/S1/20']['reason'] == 'no seed finished both cells'
  seg = by_id['seg_st_vs_matched_control/S4']
  assert (seg['n'], seg['holds'], seg['reason']) == (0, None, 'no seed finished both cells')
  assert seg['metric'] == 'mIoU' and helps['metric'] == 'AP'
  # every claims.json field the brief names is there
  for c in by_id.values():
    assert {'id', 'treatment', 'control', 'treatment_ap', 'control_ap', 'seeds', 'diff_mean',
            'diff_std', 'n', 'direction', 'holds'} <= set(c)
  # the same numbers in the table's Markdown
  md = suite.format_markdown(suite.collect_results('table2', 'digits', [0, 1, 2, 3, 4], out))
  assert '| +2.00 ± 1.00 | 3 | helps | +0.85 | **holds** |' in md
  assert '| +0.33 ± 1.15 | 3 | helps | -1.00 | **does not hold** |' in md
  assert '**untested: one paired seed' in md and 'Code: commit `c0ffee` (' in md


def test_report_only_rewrites_claims_json_from_finished_cells(tmp_path):
  out, report = str(tmp_path / 'runs'), str(tmp_path / 'report')
  for seed, (t, c) in enumerate(((0.30, 0.28), (0.32, 0.29), (0.31, 0.30))):
    _write_done(out, 's4_f100_self_training', seed, t)
    _write_done(out, 's4_f100_matched_control', seed, c)
  code, stdout, err = _run_suite('--table=table3', '--seeds=3', '--report_only',
                                 f'--out_dir={out}', f'--report_dir={report}',
                                 f'--convergence={tmp_path / "absent.json"}')
  assert code == 0, err
  claims = json.load(open(os.path.join(report, 'digits', 'claims.json')))
  got = {c['id']: c for c in claims['claims']}['st_vs_matched_control/S4/100']
  assert got['n'] == 3 and got['holds'] is True
  assert os.path.exists(os.path.join(report, 'digits', 'table3.md'))
  assert 'claims: ' in stdout


def test_collect_results_reads_finished_cells(tmp_path):
  out = str(tmp_path / 'runs')
  suite.run_cells(['appendix_b'], 'digits', [0], out, runner=FakeRunner(),
                  convergence=_convergence(tmp_path), echo=lambda s: None)
  # a pseudo-label report made against held-back labels (as bin/pseudo_label_report.py
  # --reference writes it): its precision / recall at the labeler's threshold are shown
  report_dir = os.path.join(out, 'digits/cells/s4_f20_standard_a3/seed_0/round_1/pseudo_report')
  os.makedirs(report_dir)
  with open(os.path.join(report_dir, 'report.json'), 'w') as f:
    json.dump({'labeler_score_threshold': 0.3, 'detection': {'thresholds': [
        {'score_threshold': 0.2, 'precision': 0.2, 'recall': 0.4},
        {'score_threshold': 0.3, 'precision': 0.46, 'recall': 0.104}]}}, f)
  res = suite.collect_results('appendix_b', 'digits', [0], out)
  e = suite._entry(res, 'Standard loss', 'alpha=3')
  assert (e['pseudo_precision'], e['pseudo_recall']) == (0.46, 0.104)
  assert e['steps'] == [2400]
  assert suite._entry(res, 'Standard loss', 'alpha=1').get('pseudo_recall') is None
  md = suite.format_markdown(res)
  assert 'pseudo-label precision 46% / recall 10%' in md and '600 steps from a teacher of 2,400' in md
  assert f'Code: commit `{suite.repo_commit()}` (8 runs)' in md
  # a row with more seeds than its baseline: the gain's own n is shown
  cells = json.loads(json.dumps(res['cells']))
  cells['s4_f20_self_training']['seeds']['1'] = {'AP': 0.2}
  more = suite.build_results('appendix_b', 'digits', [0, 1], cells, is_test_data=True)
  assert 'n=2 (gain: n=1, the seeds both rows ran)' in suite.format_markdown(more)
  assert all(e['values'] for e in res['grid'])
  assert res['claims'][0]['n'] == 1 and res['claims'][0]['holds'] is None
  assert not res['is_test_data']


# ------------------------------------------------------- Table 6: segmentation self-training
_SEG_ALL = ('s1', 's4', 'seg_s1', 'seg_s4')


def test_segmentation_cells_parse_as_gin(tmp_path):
  """Table 6's digit cells: SegmentationTask on the half-width NAS-FPN model, their own step
  budget (seg_<policy>), pseudo masks thresholded at 0.5, mIoU headline; the
  matched control is the self-training cell with the pseudo-loss weight 0."""
  import gin  # pylint: disable=g-import-not-at-top
  from rethink_st import cli, config_io  # pylint: disable=g-import-not-at-top
  cli.register_configurables()
  macro = lambda name: gin.query_parameter(f'{name}/macro.value')
  ref = lambda name: gin.query_parameter(name).selector
  pseudo = 'rethink_st.pseudo_label.run.run_pseudo_label'
  try:
    for name in ('seg_s1_f20_rand_init', 'seg_s4_f20_self_training',
                 'seg_s4_f20_matched_control'):
      cmd = suite.cell_command(name, 'digits', 1, str(tmp_path), budgets=BUDGETS)
      gin.clear_config()
      config_io.parse_gin(_flag(cmd, 'gin_file'), _flag(cmd, 'gin_param'))
      policy = tables.CELLS[name].policy
      assert macro('CELL_SEED') == 1 and macro('LABELED_FRACTION') == 0.2
      assert macro('CELL_STEPS') == BUDGETS['seg_' + policy] != BUDGETS[policy]
      assert ref('TASK/macro.value') == 'rethink_st.training.tasks.SegmentationTask'
      assert ref('rethink_st.training.tasks.SegmentationTask.model_fn') == (
          'rethink_st.modeling.segmentation.build_segmentation_model')
      assert gin.query_parameter('rethink_st.training.tasks.SegmentationTask.num_classes') == 11
      assert gin.query_parameter('rethink_st.modeling.segmentation.build_segmentation_model.'
                                 'decoder') == 'nasfpn'
      assert gin.query_parameter(
          'rethink_st.modeling.backbones.build_backbone.depth_multiplier') == 0.5
      if tables.CELLS[name].binary != 'self_train':
        continue
      assert macro('STUDENT_STEPS') == tables.student_steps(BUDGETS['seg_' + policy])
      assert gin.query_parameter('rethink_st.self_training.run_self_training.metric') == 'mIoU'
      assert macro('PSEUDO_MASK_THRESHOLD') == 0.5
      assert gin.query_parameter(f'{pseudo}.scales') == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # paper
      assert gin.query_parameter(
          'student/rethink_st.training.run.run_train.global_batch_size') == 32
      assert gin.query_parameter('rethink_st.training.student.StudentTrainer.'
                                 'pseudo_fraction') == 0.5
      assert macro('LOSS_MODE') == 'normalized'
      mc = name.endswith('_matched_control')
      try:
        got = gin.query_parameter('rethink_st.losses.LossNormalizer.matched_control')
      except ValueError:
        got = False
      assert got is mc, name
  finally:
    gin.clear_config()


def test_table6_dry_run_commands_budgets_and_matched_control(tmp_path):
  lines, out = [], str(tmp_path / 'runs')
  suite.run_cells(['table6'], 'digits', [0], out, dry_run=True, echo=lines.append,
                  convergence=_convergence(tmp_path, _SEG_ALL))
  commands = {_flag(c, 'model_dir')[0].split(os.sep)[-2]: c
              for c in (shlex.split(l) for l in lines)}
  assert list(commands) == [f'seg_{p}_f20_{k}'   # row by row, teachers first
                            for k in ('rand_init', 'self_training', 'matched_control')
                            for p in ('s1', 's4')]
  for name, cmd in commands.items():
    policy = name.split('_')[1]
    files = _flag(cmd, 'gin_file')
    assert files[:2] == ['gin_configs/digits/experiments/seg_cell.gin',
                         f'gin_configs/digits/augment_{policy}.gin'], name
    params = _flag(cmd, 'gin_param')
    steps = BUDGETS['seg_' + policy]
    assert f'CELL_STEPS={steps}' in params and 'LABELED_FRACTION=0.2' in params
    if name.endswith('_rand_init'):
      assert cmd[1] == 'bin/train_teacher.py' and len(files) == 2
      continue
    assert cmd[1] == 'bin/self_train.py' and f'STUDENT_STEPS={tables.student_steps(steps)}' in params
    assert 'gin_configs/digits/experiments/seg_self_training.gin' in files
    teacher = suite.cell_dir(out, 'digits', f'seg_{policy}_f20_rand_init', 0)
    assert f"rethink_st.self_training.run_self_training.teacher_dir='{teacher}'" in params
  # the matched control is the self-training command plus matched_control.gin, nothing else
  for policy in ('s1', 's4'):
    st = commands[f'seg_{policy}_f20_self_training']
    mc = commands[f'seg_{policy}_f20_matched_control']
    added, removed = [a for a in mc if a not in st], [a for a in st if a not in mc]
    assert added == ['--gin_file=gin_configs/digits/experiments/matched_control.gin',
                     '--model_dir=' + suite.cell_dir(out, 'digits', f'seg_{policy}_f20_'
                                                     'matched_control', 0)]
    assert removed == ['--model_dir=' + suite.cell_dir(out, 'digits', f'seg_{policy}_f20_'
                                                       'self_training', 0)]
  # --optional adds S2, S3 (their seg budgets)
  lines = []
  suite.run_cells(['table6'], 'digits', [0], out, dry_run=True, optional=True,
                  echo=lines.append, convergence=_convergence(tmp_path, tuple(BUDGETS)))
  assert len(lines) == 12
  # full scale: the paper's PASCAL runs, the self-training cell after its supervised teacher
  lines = []
  suite.run_cells(['table6'], 'full', [0], out, dry_run=True, echo=lines.append,
                  convergence=str(tmp_path / 'absent.json'))
  full = [shlex.split(l) for l in lines]
  assert [_flag(c, 'gin_file') for c in full] == [
      [f'gin_configs/pascal/table6/{n}.gin'] for n in
      ('b7_supervised', 'l2_supervised', 'b7_self_training', 'l2_self_training')]
  teacher = suite.cell_dir(out, 'full', 'seg_b7_supervised', 0)
  assert (f"rethink_st.self_training.run_self_training.teacher_dir='{teacher}'"
          in _flag(full[2], 'gin_param'))
  assert not any('STEPS' in p for c in full for p in _flag(c, 'gin_param'))


def test_missing_segmentation_budget_is_one_line_naming_its_command(tmp_path):
  runner, out = FakeRunner(), str(tmp_path / 'runs')
  detection_only = _convergence(tmp_path, ('s1', 's4'))     # what convergence.py made so far
  with pytest.raises(suite.SuiteError) as e:
    suite.run_cells(['table6'], 'digits', [0], out, convergence=detection_only, runner=runner)
  message = str(e.value)
  assert '\n' not in message and detection_only in message
  assert 'for policy seg_s1, seg_s4;' in message
  assert message.endswith('make it with: python benchmarks/convergence.py '
                          '--task=segmentation --policies=s1,s4')
  assert not runner.calls and not os.path.exists(out)
  # both tasks missing: one command per task on the same line
  with pytest.raises(suite.SuiteError, match=r'not found.*--policies=s1,s4 and python '
                     r'benchmarks/convergence.py --task=segmentation --policies=s1,s4$'):
    suite.run_cells(['table2', 'table6'], 'digits', [0], out,
                    convergence=str(tmp_path / 'nothing.json'))
  # detection tables do not need the segmentation budgets
  suite.run_cells(['table2'], 'digits', [0], out, dry_run=True, echo=lambda s: None,
                  convergence=detection_only)
  code, _, err = _run_suite('--table=table6', '--dry_run', f'--convergence={detection_only}')
  assert code == 1 and err.count('\n') == 1 and 'policy seg_s1, seg_s4' in err


def _convergence_run(root, key, steps, seed, commit='c0ffee1', gin_params=(), reached=None,
                     starts=1, commits=None):
  """A finished benchmarks/convergence.py run as run_one leaves it (TEST DATA): its log with
  the command of each start, eval_metrics.json, convergence_seconds.json, a checkpoint."""
  import convergence  # pylint: disable=g-import-not-at-top
  task = 'segmentation' if key.startswith('seg_') else 'detection'
  policy = key[len('seg_'):] if task == 'segmentation' else key
  directory = convergence.run_dir(root, key, steps, seed)
  os.makedirs(directory)
  cmd = convergence.command(policy, steps, seed, root, gin_params, task)
  with open(os.path.join(directory, 'convergence_log.txt'), 'w') as f:
    for i in range(starts):
      f.write(f'$ {shlex.join(cmd)}\n[train] step {i + 1}/{steps} total_loss=0.8\n')
  with open(os.path.join(directory, 'eval_metrics.json'), 'w') as f:
    json.dump({'step': reached or steps, {'segmentation': 'mIoU', 'detection': 'AP'}[task]: 0.55}, f)
  with open(os.path.join(directory, 'convergence_seconds.json'), 'w') as f:
    json.dump({'seconds': 600.0, 'cpus': ['TEST CPU'], 'commit': commit,
               'commits': [commit] * (starts if commits is None else commits)}, f)
  with open(os.path.join(directory, 'ckpt-1.index'), 'w') as f:
    f.write('TEST DATA')
  return directory


def test_a_finished_convergence_run_of_the_same_command_is_adopted(tmp_path, monkeypatch):
  """The suite copies convergence.py's run of seg_s4's budget as seed 0's Rand Init cell, and
  says why it trains the others: other bindings, unfinished, starts of other commands, code
  changed (TEST DATA)."""
  import suite_adopt  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(suite_adopt, 'same_code',
                      lambda commit: None if commit == 'c0ffee1' else f'{commit}: TEST other code')
  conv_out, out, records = str(tmp_path / 'conv'), str(tmp_path / 'runs'), str(tmp_path / 'rec')
  steps = BUDGETS['seg_s4']
  _convergence_run(conv_out, 'seg_s4', steps, 0)                         # the same command
  _convergence_run(conv_out, 'seg_s4', steps, 1, gin_params=['CELL_BATCH_SIZE=8'])
  _convergence_run(conv_out, 'seg_s4', steps, 2, reached=steps // 2)     # killed half-way
  _convergence_run(conv_out, 'seg_s4', steps, 3, commit='0ld')           # other code
  _convergence_run(conv_out, 'seg_s4', steps // 2, 4)                    # another budget
  _convergence_run(conv_out, 'seg_s4', steps, 5, starts=2, commits=1)    # a start of old code
  _convergence_run(conv_out, 'seg_s4', steps, 6, commit='c0ffee1+dirty')
  with open(os.path.join(_convergence_run(conv_out, 'seg_s4', steps, 7), 'writer.lock'), 'w'):
    pass                                                                 # still being written
  _convergence_run(conv_out, 'seg_s4', steps, 8)
  os.makedirs(suite.cell_dir(out, 'digits', 'seg_s4_f20_rand_init', 8))
  with open(os.path.join(suite.cell_dir(out, 'digits', 'seg_s4_f20_rand_init', 8), 'x'), 'w'):
    pass                                                                 # a run made by hand
  _convergence_run(conv_out, 'seg_s4', steps, 9, starts=3)               # resumed, one code
  with open(os.path.join(conv_out, 'seg_s4', f'steps_{steps}', 'seed_1',
                         'convergence_log.txt'), 'a') as f:
    f.write('$ python bin/train_teacher.py --gin_file=x.gin\n')         # resumed otherwise
  runner, log = FakeRunner(), []
  counts = suite.run_cells(['table6'], 'digits', list(range(10)), out,
                           only=['seg_s4_f20_rand_init'], runner=runner, echo=log.append,
                           convergence=_convergence(tmp_path, _SEG_ALL), record_dir=records,
                           adopt_from=conv_out)
  assert counts['adopted'] == 2 and counts['ran'] == 8
  assert [d.rsplit('_', 1)[1] for _, d in runner.calls] == list('12345678')
  cell = suite.cell_dir(out, 'digits', 'seg_s4_f20_rand_init', 0)
  done = json.load(open(os.path.join(cell, suite.DONE)))
  assert done['adopted_from'] == f'benchmarks/convergence.py run seg_s4/steps_{steps}/seed_0'
  assert done['commit'] == 'c0ffee1' and done['seconds'] == 600.0 and done['cpu'] == 'TEST CPU'
  assert done['metrics']['mIoU'] == 0.55 and done['metrics']['train_total_loss'] == 0.8
  assert done['steps'] == steps and done['config'] == suite_commands.config_digest(
      'seg_s4_f20_rand_init', 'digits', 0, budgets={'seg_s4': steps})
  assert os.path.exists(os.path.join(cell, 'ckpt-1.index'))
  assert os.path.exists(os.path.join(cell, suite.LOG))
  assert not os.path.exists(os.path.join(cell, suite.STARTED))
  record = json.load(open(suite_runner.record_path(records, 'digits',
                                                   'seg_s4_f20_rand_init', 0)))
  assert record['adopted_from'] == done['adopted_from'] and record['metrics']['mIoU'] == 0.55
  why = {l.split(' seed ')[1][0]: l for l in log if 'not adopting' in l}
  assert sorted(why) == list('1235678')                  # seed 4: no run of this budget
  assert why['1'].endswith('its 2 starts ran different commands; training it')
  assert f'it has not reached {steps} steps' in why['2']
  assert why['3'].endswith('0ld: TEST other code; training it')
  assert 'records the commit of 1 of its 2 starts' in why['5']
  assert 'a start at c0ffee1+dirty had uncommitted changes' in why['6']
  assert 'writer.lock' in why['7'] and 'is not empty; training it' in why['8']
  assert any('seed 0: adopting' in l and 'commit c0ffee1' in l for l in log)
  assert json.load(open(os.path.join(suite.cell_dir(out, 'digits', 'seg_s4_f20_rand_init', 9),
                                     suite.DONE)))['commit'] == 'c0ffee1'   # 3 starts, once
  # a self-training cell starts from the adopted teacher; nothing adopts a student
  runner = FakeRunner()
  suite.run_cells(['table6'], 'digits', [0], out, only=['seg_s4_f20_self_training'],
                  runner=runner, echo=log.append, adopt_from=conv_out,
                  convergence=_convergence(tmp_path, _SEG_ALL))
  assert [n for n, _ in runner.calls] == ['seg_s4_f20_self_training']
  # other bindings alone (one start): the digest says so
  other = str(tmp_path / 'conv2')
  _convergence_run(other, 'seg_s4', steps, 0, gin_params=['CELL_BATCH_SIZE=8'])
  log, runner = [], FakeRunner()
  suite.run_cells(['table6'], 'digits', [0], str(tmp_path / 'runs2'),
                  only=['seg_s4_f20_rand_init'], runner=runner, echo=log.append,
                  adopt_from=other, convergence=_convergence(tmp_path, _SEG_ALL))
  assert len(runner.calls) == 1
  assert any("its bindings differ from the cell's" in l for l in log), log
  # --dry_run says which cells it would adopt, as shell comments; adopting is not a start
  lines = []
  suite.run_cells(['table6'], 'digits', [0], str(tmp_path / 'runs4'), only=['seg_s4_f20_rand_init'],
                  dry_run=True, echo=lines.append, adopt_from=conv_out,
                  convergence=_convergence(tmp_path, _SEG_ALL))
  assert lines == ['# [suite] seg_s4_f20_rand_init seed 0: would adopt '
                   f'{os.path.join(conv_out, "seg_s4", f"steps_{steps}", "seed_0")} (suite_adopt.py)']
  counts = suite.run_cells(['table6'], 'digits', [0], str(tmp_path / 'runs4'),
                           only=['seg_s4_f20_rand_init'], max_cells=0, runner=FakeRunner(),
                           echo=lambda s: None, adopt_from=conv_out,
                           convergence=_convergence(tmp_path, _SEG_ALL))
  assert counts['adopted'] == 1
  # without adopt_from (the library default) nothing is adopted
  runner = FakeRunner()
  suite.run_cells(['table6'], 'digits', [0], str(tmp_path / 'runs3'),
                  only=['seg_s4_f20_rand_init'], runner=runner, echo=lambda s: None,
                  convergence=_convergence(tmp_path, _SEG_ALL))
  assert len(runner.calls) == 1


def test_a_real_convergence_run_is_adopted_and_not_trained_again(digit_scenes_dir, tmp_path):
  """End to end: benchmarks/convergence.py trains a tiny segmentation S4 teacher (2 steps,
  the binaries' own subprocess, which records its commit), and the suite adopts it as
  seg_s4_f20_rand_init seed 0 with the same extra bindings: nothing trains, the record
  holds the run's mIoU and commit. Needs a git checkout without uncommitted training code
  (what adoption itself needs)."""
  import convergence  # pylint: disable=g-import-not-at-top
  import timed_run  # pylint: disable=g-import-not-at-top
  here = timed_run.code_commit(REPO)
  if here is None or here.endswith('+dirty'):
    pytest.skip(f'adoption needs a clean git checkout of the training code ({here})')
  seg = 'rethink_st.modeling.segmentation.build_segmentation_model'
  params = ['IMAGE_SIZE = (64, 64)', 'CELL_BATCH_SIZE = 4',
            f"train/rethink_st.data.sources.digit_scenes_source.data_dir = '{digit_scenes_dir}'",
            f"eval/rethink_st.data.sources.digit_scenes_source.data_dir = '{digit_scenes_dir}'",
            f"{seg}.backbone = 'resnet-10'", f"{seg}.decoder = 'fpn'",
            f'{seg}.decoder_num_filters = 8', f'{seg}.max_level = 5',
            f'{seg}.head_num_convs = 1', f'{seg}.head_num_filters = 8',
            'rethink_st.training.tasks.SegmentationTask.size_divisor = 32',
            'rethink_st.augment.Augment.scale_min = 1.0',
            'rethink_st.augment.Augment.scale_max = 1.0',
            'rethink_st.training.run.run_train.steps_per_loop = 1',
            'rethink_st.training.run.run_train.eval_batch_size = 8',
            'rethink_st.training.run.run_train.eval_steps = 1',
            'rethink_st.training.optimization.build_optimizer.warmup_steps = 1']
  conv_out = str(tmp_path / 'conv')
  convergence.run_one('s4', 2, 0, conv_out, params, task='segmentation')
  source = convergence.run_dir(conv_out, 'seg_s4', 2, 0)
  timing = json.load(open(os.path.join(source, 'convergence_seconds.json')))
  assert timing['commits'] == [here]
  conv = tmp_path / 'convergence.json'
  conv.write_text(json.dumps({'chosen': {'seg_s4': {'steps': 2}}, 'runs': [],
                              'rule': 'TEST DATA'}))

  def runner(cmd, log_path):
    raise AssertionError(f'trained {shlex.join(cmd)}')

  log, out = [], str(tmp_path / 'runs')
  counts = suite.run_cells(['table6'], 'digits', [0], out, only=['seg_s4_f20_rand_init'],
                           gin_params=params, runner=runner, echo=log.append,
                           adopt_from=conv_out, convergence=str(conv))
  assert counts['adopted'] == 1, log
  done = json.load(open(os.path.join(suite.cell_dir(out, 'digits', 'seg_s4_f20_rand_init', 0),
                                     suite.DONE)))
  metrics = json.load(open(os.path.join(source, 'eval_metrics.json')))
  assert done['metrics']['mIoU'] == metrics['mIoU'] and done['commit'] == here
  assert done['adopted_from'] == 'benchmarks/convergence.py run seg_s4/steps_2/seed_0'


def test_a_detection_teacher_cell_is_convergence_pys_command(tmp_path, monkeypatch):
  """The digest equality adoption rests on, for detection at 20% (the cell binds
  LABELED_FRACTION=0.2, the curve leaves the file's) and 100% labels (both bind 1.0); a
  pre-trained cell starts from another cell, so no convergence run is considered for it."""
  import convergence  # pylint: disable=g-import-not-at-top
  for policy, cell, fraction in (('s4', 's4_f20_rand_init', 0.2),
                                 ('s4', 's4_f100_rand_init', 1.0),
                                 ('s1', 's1_f20_rand_init', 0.2)):
    key = tables.CELLS[cell].budget_key
    cmd = convergence.command(policy, BUDGETS[key], 2, str(tmp_path), fraction=fraction)
    assert suite_commands.command_digest(cmd) == suite_commands.config_digest(
        cell, 'digits', 2, budgets=BUDGETS), cell
    other = convergence.command(policy, BUDGETS[key], 1, str(tmp_path), fraction=fraction)
    assert suite_commands.command_digest(other) != suite_commands.config_digest(
        cell, 'digits', 2, budgets=BUDGETS), cell
  import suite_adopt  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(suite_adopt, 'same_code', lambda commit: None)
  conv_out, log = str(tmp_path / 'conv'), []
  _convergence_run(conv_out, 's4', BUDGETS['s4'], 0)
  runner = FakeRunner()
  suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'runs'),
                  only=['s4_f20_pretrained', 's4_f20_rand_init'], runner=runner,
                  echo=log.append, adopt_from=conv_out, convergence=_convergence(tmp_path))
  assert not any('not adopting' in l for l in log), log
  assert sorted(n for n, _ in runner.calls) == ['pretrain', 's4_f20_pretrained']


def test_same_code_compares_the_training_code_at_two_commits(tmp_path):
  """suite_adopt.same_code on a scratch git repository: unchanged, changed since, changed
  locally, unknown commit, none."""
  import suite_adopt  # pylint: disable=g-import-not-at-top
  repo = str(tmp_path)
  git = lambda *a: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *a],
                                  cwd=repo, capture_output=True, text=True, check=True).stdout
  git('init', '-q')
  os.makedirs(os.path.join(repo, 'rethink_st'))
  (tmp_path / 'rethink_st' / 'a.py').write_text('x = 1\n')
  (tmp_path / 'notes.md').write_text('a\n')
  git('add', '.')
  git('commit', '-qm', 'one')
  first = git('rev-parse', 'HEAD').strip()
  (tmp_path / 'notes.md').write_text('b\n')                 # not training code
  git('commit', '-qam', 'two')
  assert suite_adopt.same_code(first[:7], repo=repo) is None
  (tmp_path / 'rethink_st' / 'a.py').write_text('x = 2\n')   # uncommitted
  assert suite_adopt.same_code(first, repo=repo) == ('this checkout has uncommitted changes '
                                                     'to the training code')
  git('commit', '-qam', 'three')
  assert suite_adopt.same_code(first, repo=repo).startswith(
      f'the training code changed since its commit {first}')
  assert 'not in this repository' in suite_adopt.same_code('0' * 40, repo=repo)
  for path in ('gin_configs/x.gin', 'bin/x.py', 'setup.py'):
    git('tag', '-f', 'before')
    os.makedirs(os.path.dirname(os.path.join(repo, path)) or repo, exist_ok=True)
    (tmp_path / path).write_text('y\n')
    git('add', path)
    git('commit', '-qm', path)
    assert path in suite_adopt.same_code('before', repo=repo)
  assert suite_adopt.same_code(None, repo=repo) == 'its commit is not recorded'


def test_adopt_from_that_is_not_a_folder_is_one_line(tmp_path):
  code, _, err = _run_suite('--table=table6', f'--adopt_from={tmp_path / "nope"}',
                            f'--convergence={_convergence(tmp_path, _SEG_ALL)}',
                            f'--out_dir={tmp_path / "runs"}')
  assert code == 1 and err.count('\n') == 1 and '--adopt_from=' in err and 'no such folder' in err
  assert not os.path.exists(tmp_path / 'runs')


def test_table6_runs_reads_miou_and_reports_it(tmp_path):
  """FakeRunner writes mIoU (0-1) where the segmentation binaries do: eval_metrics.json and
  results.json; the suite records, tabulates and claims on it (TEST DATA)."""
  out, log = str(tmp_path / 'runs'), []
  counts = suite.run_cells(['table6'], 'digits', [0], out, runner=FakeRunner(), echo=log.append,
                           convergence=_convergence(tmp_path, _SEG_ALL))
  assert counts['ran'] == 6
  assert any(l.endswith('mIoU=0.1100') for l in log), log
  done = json.load(open(os.path.join(
      suite.cell_dir(out, 'digits', 'seg_s4_f20_self_training', 0), suite.DONE)))
  teacher = json.load(open(os.path.join(
      suite.cell_dir(out, 'digits', 'seg_s4_f20_rand_init', 0), suite.DONE)))
  assert done['metrics']['teacher_mIoU'] == teacher['metrics']['mIoU']
  assert 'mIoU' in done['metrics']
  assert done['steps'] == BUDGETS['seg_s4'] and 'AP' not in done['metrics']
  # a pseudo-mask report against held-back masks (as run_self_training writes it)
  report_dir = os.path.join(suite.cell_dir(out, 'digits', 'seg_s4_f20_self_training', 0),
                            'round_1', 'pseudo_report')
  os.makedirs(report_dir)
  with open(os.path.join(report_dir, 'report.json'), 'w') as f:
    json.dump({'kind': 'segmentation', 'labeler_score_threshold': None,
               'segmentation': {'ignored_fraction': 0.25, 'mIoU': 0.7}}, f)
  res = suite.collect_results('table6', 'digits', [0], out)
  assert res['metric'] == 'mIoU x 100' and res['baseline'] == 'Rand Init'
  assert res['columns'] == ['S1', 'S4']
  assert res['rows'] == ['Rand Init', 'Rand Init + self-training', tables._MC]
  e = suite._entry(res, 'Rand Init + self-training', 'S4')
  assert e['cell'] == 'seg_s4_f20_self_training'
  assert e['teacher_mean'] == pytest.approx(100 * teacher['metrics']['mIoU'])
  assert (e['pseudo_ignored_fraction'], e['pseudo_mIoU']) == (0.25, 0.7)
  md = suite.format_markdown(res)
  assert '### Table 6: self-training for semantic segmentation (digits scale)' in md
  assert 'mIoU x 100 on the validation set' in md
  assert f'teacher mIoU {100 * teacher["metrics"]["mIoU"]:.2f}' in md
  assert '25% of pseudo-mask pixels ignored, pseudo-mask mIoU 70.00 on the kept pixels' in md
  assert '| claim | treatment - control (mIoU) |' in md
  assert [c['id'] for c in res['claims']] == ['seg_st_vs_matched_control/S1',
                                             'seg_st_vs_matched_control/S4',
                                             'seg_st_vs_rand_init/S4']
  # full scale: the paper's rows, gains over ImageNet++ Init
  full = suite.build_results('table6', 'full', [0], {})
  assert full['baseline'] == 'ImageNet++ Init' and full['claims'] == []
  assert full['rows'] == ['ImageNet++ Init', 'ImageNet++ Init + self-training']
  assert full['columns'] == ['EfficientNet-B7', 'EfficientNet-L2']


def test_segmentation_claims_from_fabricated_miou(tmp_path):
  """TEST DATA ONLY, hand-computed: mIoU x100, treatment - control per seed."""
  out, report = str(tmp_path / 'runs'), str(tmp_path / 'report')
  miou = {'seg_s4_f20_self_training': (0.62, 0.60, 0.64),
          'seg_s4_f20_matched_control': (0.60, 0.59, 0.61),    # diffs 2, 1, 3
          'seg_s4_f20_rand_init': (0.63, 0.58, 0.65),          # diffs -1, 2, -1
          'seg_s1_f20_self_training': (0.70,), 'seg_s1_f20_matched_control': (0.69,)}
  for name, values in miou.items():
    for seed, value in enumerate(values):
      directory = suite.cell_dir(out, 'digits', name, seed)
      os.makedirs(directory)
      with open(os.path.join(directory, suite.DONE), 'w') as f:
        json.dump({'metrics': {'mIoU': value, 'pixel_accuracy': 0.9}, 'seconds': 60.0,
                   'seed': seed, 'steps': 1200, 'commit': 'c0ffee'}, f)
  by_id = {c['id']: c for c in suite.collect_claims('digits', [0, 1, 2], out)['claims']}
  mc = by_id['seg_st_vs_matched_control/S4']
  assert (mc['treatment'], mc['control']) == ('seg_s4_f20_self_training',
                                              'seg_s4_f20_matched_control')
  assert mc['metric'] == 'mIoU' and mc['n'] == 3
  assert mc['treatment_ap'] == pytest.approx([62, 60, 64])
  assert (mc['diff_mean'], mc['diff_std']) == (pytest.approx(2.0), pytest.approx(1.0))
  assert mc['bound'] == pytest.approx(2 - 2 / math.sqrt(3)) and mc['holds'] is True
  st = by_id['seg_st_vs_rand_init/S4']
  assert st['diff_mean'] == pytest.approx(0.0) and st['holds'] is False
  one = by_id['seg_st_vs_matched_control/S1']
  assert one['n'] == 1 and one['holds'] is None and 'one paired seed' in one['reason']
  # detection claims are untouched by mIoU-only cells
  assert by_id['st_vs_matched_control/S4/20']['metric'] == 'AP'
  assert by_id['st_vs_matched_control/S4/20']['n'] == 0
  path = suite.write_claims(suite.collect_claims('digits', [0, 1, 2], out), report)
  assert json.load(open(path))['claims'][-2]['id'] == 'seg_st_vs_matched_control/S4'
  md = suite.format_markdown(suite.collect_results('table6', 'digits', [0, 1, 2], out))
  assert '| +2.00 ± 1.00 | 3 | helps | +0.85 | **holds** |' in md


def test_claims_leave_out_a_seed_whose_student_and_control_had_other_teachers(tmp_path):
  """TEST DATA ONLY: seed 0's control started from a teacher retrained on another CPU (72.60
  against the student's 73.01), so the pair is not one experiment and is left out, named; so is
  the student against a Rand Init record that is not its teacher (seed 1: 70.50, not 70.00)."""
  out = str(tmp_path / 'runs')
  teacher = {'seg_s4_f20_self_training': (0.7301, 0.70, 0.71),
             'seg_s4_f20_matched_control': (0.7260, 0.70, 0.71)}
  miou = {'seg_s4_f20_self_training': (0.7445, 0.62, 0.63),
          'seg_s4_f20_matched_control': (0.7000, 0.61, 0.61),    # paired diffs: 1, 2
          'seg_s4_f20_rand_init': (0.7301, 0.705, 0.71)}
  for name, values in miou.items():
    for seed, value in enumerate(values):
      directory = suite.cell_dir(out, 'digits', name, seed)
      os.makedirs(directory)
      metrics = {'mIoU': value, **({'teacher_mIoU': teacher[name][seed]} if name in teacher
                                   else {})}
      with open(os.path.join(directory, suite.DONE), 'w') as f:
        json.dump({'metrics': metrics, 'seconds': 60.0, 'seed': seed, 'steps': 1200,
                   'commit': 'c0ffee'}, f)
  by_id = {c['id']: c for c in suite.collect_claims('digits', [0, 1, 2], out)['claims']}
  mc = by_id['seg_st_vs_matched_control/S4']
  assert mc['seeds'] == [1, 2] and mc['n'] == 2
  assert mc['diff_mean'] == pytest.approx(1.5)
  assert mc['other_teacher'] == [{'seed': 0, 'treatment_teacher': pytest.approx(73.01),
                                  'control_teacher': pytest.approx(72.60),
                                  'control_is_teacher': False}]
  assert mc['unpaired_seeds'] == {'treatment': [], 'control': []}
  ri = by_id['seg_st_vs_rand_init/S4']
  assert ri['seeds'] == [0, 2] and ri['diff_mean'] == pytest.approx((1.44 - 8) / 2)
  assert ri['other_teacher'] == [{'seed': 1, 'treatment_teacher': pytest.approx(70.0),
                                  'control_teacher': pytest.approx(70.5),
                                  'control_is_teacher': True}]
  md = suite.format_markdown(suite.collect_results('table6', 'digits', [0, 1, 2], out))
  assert ('`seg_st_vs_matched_control/S4` leaves out seed 0: its two cells started from '
          'different teachers (mIoU 73.01 and 72.60), so they differ in more than what the '
          'claim compares.') in md
  assert ('`seg_st_vs_rand_init/S4` leaves out seed 1: the student started from a teacher of '
          'mIoU 70.00, not the recorded one (70.50).') in md
  # the table's gain over Rand Init leaves seed 1 out too
  assert ('| Rand Init + self-training | not run | 66.48 ± 6.92 (-3.28 ± 6.68) n=3 (gain: n=2, '
          'the seeds both rows ran; not seed 1, from another teacher) |') in md
  # with no other seed the claim is untested, and says why
  for name in ('seg_s4_f20_self_training', 'seg_s4_f20_matched_control'):
    for seed in (1, 2):
      os.remove(os.path.join(suite.cell_dir(out, 'digits', name, seed), suite.DONE))
  mc = {c['id']: c for c in suite.collect_claims('digits', [0, 1, 2], out)['claims']}[
      'seg_st_vs_matched_control/S4']
  assert (mc['n'], mc['holds']) == (0, None) and 'same teacher' in mc['reason']


def test_convergence_segmentation_keys_beside_detection(tmp_path):
  """benchmarks/convergence.py --task=segmentation: seg_<policy> runs, records and chosen
  budgets in the same file; detection's records are as before (TEST DATA)."""
  import convergence  # pylint: disable=g-import-not-at-top
  out = str(tmp_path)
  cmd = convergence.command('s4', 700, 0, out, task='segmentation')
  assert _flag(cmd, 'gin_file') == ['gin_configs/digits/experiments/seg_cell.gin',
                                    'gin_configs/digits/augment_s4.gin']
  assert _flag(cmd, 'model_dir') == [os.path.join(out, 'seg_s4', 'steps_700', 'seed_0')]
  assert _flag(convergence.command('s4', 700, 0, out), 'gin_file')[0] == convergence.CELL

  def finished_run(key, steps, metrics):
    directory = convergence.run_dir(out, key, steps, 0)
    os.makedirs(directory)
    with open(os.path.join(directory, 'eval_metrics.json'), 'w') as f:
      json.dump({'step': steps, **metrics}, f)

  finished_run('s4', 800, {'AP': 0.30, 'AP50': 0.5})
  for steps, miou in ((500, 0.50), (1000, 0.605), (2000, 0.61)):
    finished_run('seg_s4', steps, {'mIoU': miou, 'pixel_accuracy': 0.9})
  runs = convergence.collect(out, 0)
  assert runs[0] == {'policy': 's4', 'steps': 800, 'seed': 0, 'AP_x100': 30.0,
                     'AP50_x100': 50.0, 'seconds': None, 'images_per_sec': None}
  assert runs[1]['policy'] == 'seg_s4' and runs[1]['mIoU_x100'] == 50.0
  chosen = convergence.choose(runs, 1.0)
  assert chosen['s4']['steps'] == 800 and 'AP_x100' in chosen['s4']
  assert chosen['seg_s4']['steps'] == 1000 and chosen['seg_s4']['plateau_mIoU_x100'] == 61.0
  results = convergence.write(runs, str(tmp_path / 'results' / 'convergence'), 0, 1.0)
  # the suite reads both budgets from that file
  budgets, _ = suite.read_budgets(str(tmp_path / 'results' / 'convergence.json'),
                                  ['s4', 'seg_s4'])
  assert budgets == {'s4': 800, 'seg_s4': 1000}
  md = convergence.markdown(results)
  assert md.startswith('# AP against the step budget') and '| S4 | 800 | 30.00 | 50.00 |' in md
  assert '| SEG_S4 | 1000 | 60.50 | 90.00 |' in md
  assert '| SEG_S4 | 1000 | 60.50 | 61.00 | no |' in md


def test_convergence_wall_seconds_add_up_over_starts(tmp_path, monkeypatch):
  """A run killed and started again records the wall time of both starts, not the last."""
  import convergence  # pylint: disable=g-import-not-at-top
  out = str(tmp_path)
  directory = convergence.run_dir(out, 's1', 10, 0)
  os.makedirs(directory)
  timing = os.path.join(directory, 'convergence_seconds.json')
  with open(timing, 'w') as f:       # what the first start wrote before it was killed
    json.dump({'seconds': 600.0}, f)

  def fake_training(*_, **__):       # the second start: 0.2 s, then eval_metrics.json
    code = (f'import json, time; time.sleep(0.2); json.dump({{"step": 10, "AP": 0.1, '
            f'"AP50": 0.2}}, open({os.path.join(directory, "eval_metrics.json")!r}, "w"))')
    return [sys.executable, '-c', code]

  monkeypatch.setattr(convergence, 'command', fake_training)
  convergence.run_one('s1', 10, 0, out, [])
  seconds = json.load(open(timing))['seconds']
  assert 600.2 <= seconds < 660
  assert convergence.record('s1', 10, 0, out)['seconds'] == seconds
  convergence.run_one('s1', 10, 0, out, [])      # finished: nothing runs, nothing changes
  assert json.load(open(timing))['seconds'] == seconds


def test_a_resumed_suite_cell_records_the_wall_time_of_every_start(tmp_path):
  """A cell killed after 10 minutes and started again records both starts, as convergence."""
  import suite_runner  # pylint: disable=g-import-not-at-top
  out, fake = str(tmp_path / 'runs'), FakeRunner()
  directory = suite.cell_dir(out, 'digits', 's1_f20_rand_init', 0)
  os.makedirs(directory)
  with open(os.path.join(directory, suite_runner.SECONDS), 'w') as f:
    json.dump({'seconds': 600.0}, f)  # what the first start wrote before it was killed

  def runner(cmd, log_path):          # the second start: the real runner on a 0.2 s command
    sleep = [sys.executable, '-c', 'import time; time.sleep(0.2)']
    assert suite_runner.subprocess_runner(sleep, log_path) == 0
    return fake(cmd, log_path)

  suite.run_cells(['table2'], 'digits', [0], out, only=['s1_f20_rand_init'], runner=runner,
                  convergence=_convergence(tmp_path))
  with open(os.path.join(directory, 'suite_done.json')) as f:
    assert 600.2 <= json.load(f)['seconds'] < 660


def test_a_timing_file_cut_short_by_a_kill_does_not_stop_the_rerun(tmp_path):
  """An empty or broken suite_seconds.json (a kill while it was written, before writes were
  atomic) counts as 0 s: the run goes on, and the file it leaves is whole."""
  import timed_run  # pylint: disable=g-import-not-at-top
  timing, log = str(tmp_path / 'suite_seconds.json'), str(tmp_path / 'log.txt')
  for broken in ('', '{"seconds": ', '[]'):
    with open(timing, 'w') as f:
      f.write(broken)
    assert timed_run.seconds_so_far(timing) == 0.0
    assert timed_run.run_timed([sys.executable, '-c', 'pass'], log, timing, str(tmp_path)) == 0
    assert 0 < json.load(open(timing))['seconds'] < 60
  assert not os.path.exists(timing + '.tmp')


def test_a_timing_file_names_the_cpu_of_every_start(tmp_path, monkeypatch):
  """A run resumed on another kind of CPU (a session ends, the next one is on another VM)
  names both, first start first; a rerun on a CPU already named adds none; the starts of a
  file from before starts named their CPU are 'not recorded', and a first start names only
  its own."""
  import timed_run  # pylint: disable=g-import-not-at-top
  timing, log = str(tmp_path / 'suite_seconds.json'), str(tmp_path / 'log.txt')

  def start(cpu, path=timing):
    monkeypatch.setattr(timed_run, 'cpu_kind', lambda: cpu)
    assert timed_run.run_timed([sys.executable, '-c', 'pass'], log, path, str(tmp_path),
                               extra={'commit': 'def'}) == 0
    return json.load(open(path))

  assert start('CPU A', str(tmp_path / 'first.json'))['cpus'] == ['CPU A']
  with open(timing, 'w') as f:
    json.dump({'seconds': 5.0, 'commit': 'abc'}, f)       # older code's file
  assert timed_run.cpus_so_far(timing) == []
  for cpu in ('AMD EPYC (AVX-512 + bf16), 2 CPUs', 'AMD EPYC (AVX2), 2 CPUs',
              'AMD EPYC (AVX-512 + bf16), 2 CPUs'):
    saved = start(cpu)
  assert saved['cpus'] == ['not recorded', 'AMD EPYC (AVX-512 + bf16), 2 CPUs',
                           'AMD EPYC (AVX2), 2 CPUs']
  assert timed_run.cpus_so_far(timing) == saved['cpus']
  assert saved['commit'] == 'def' and saved['seconds'] >= 5.0


def test_a_timing_file_lists_the_commit_of_every_start(tmp_path, monkeypatch):
  """run_timed(commit=...) appends one commit per start; a start without one (older code)
  leaves the list short, which suite_adopt reads as unknown; code_commit marks uncommitted
  training code as +dirty, or with paths=() any tracked change (a scratch repository)."""
  import timed_run  # pylint: disable=g-import-not-at-top
  timing, log = str(tmp_path / 'convergence_seconds.json'), str(tmp_path / 'log.txt')
  for commit in ('aaa', None, 'bbb'):
    assert timed_run.run_timed([sys.executable, '-c', 'pass'], log, timing, str(tmp_path),
                               commit=commit) == 0
  assert json.load(open(timing))['commits'] == ['aaa', 'bbb']
  repo = str(tmp_path / 'repo')
  os.makedirs(os.path.join(repo, 'rethink_st'))
  git = lambda *a: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *a],
                                  cwd=repo, capture_output=True, text=True, check=True).stdout
  git('init', '-q')
  with open(os.path.join(repo, 'rethink_st', 'a.py'), 'w') as f:
    f.write('x = 1\n')
  with open(os.path.join(repo, 'README.md'), 'w') as f:
    f.write('a\n')
  git('add', '.')
  git('commit', '-qm', 'one')
  head = git('rev-parse', 'HEAD').strip()
  assert timed_run.code_commit(repo) == head
  with open(os.path.join(repo, 'README.md'), 'w') as f:
    f.write('b\n')                                   # not training code
  assert timed_run.code_commit(repo) == head
  assert timed_run.code_commit(repo, paths=()) == head + '+dirty'   # suite.repo_commit's
  with open(os.path.join(repo, 'rethink_st', 'a.py'), 'w') as f:
    f.write('x = 2\n')
  assert timed_run.code_commit(repo) == head + '+dirty'
  assert timed_run.code_commit(str(tmp_path / 'nowhere')) is None


def test_a_cell_resumed_on_another_cpu_names_both_in_its_record(tmp_path):
  """The record's `cpu` is every start's (suite_seconds.json), not only the last one's."""
  conv, records = _convergence(tmp_path), str(tmp_path / 'records')

  class TwoMachines(FakeRunner):
    def __call__(self, cmd, log_path):
      with open(os.path.join(os.path.dirname(log_path), 'suite_seconds.json'), 'w') as f:
        json.dump({'seconds': 60.0, 'cpus': ['CPU one', 'CPU two']}, f)
      return super().__call__(cmd, log_path)

  suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'a'), only=['s1_f20_rand_init'],
                  runner=TwoMachines(), convergence=conv, record_dir=records, echo=print)
  rec = json.load(open(os.path.join(records, 'digits/cells/s1_f20_rand_init/seed_0',
                                    suite.DONE)))
  assert rec['cpu'] == 'CPU one + CPU two' and rec['seconds'] == 60.0


def test_a_cell_resumed_across_commits_names_them_in_its_record(tmp_path, monkeypatch):
  """subprocess_runner records each start's commit (suite_seconds.json `commits`); the record
  lists them once each, first start first (start_commits); a FakeRunner run without a timing
  file has none."""
  conv, records = _convergence(tmp_path), str(tmp_path / 'records')
  fake = FakeRunner()

  def runner(code):
    def run(cmd, log_path):
      assert suite_runner.subprocess_runner([sys.executable, '-c', 'pass'], log_path) == 0
      return code or fake(cmd, log_path)
    return run

  for commit, code in (('aaa', 9), ('bbb', 9), ('aaa', 0)):    # killed twice, then finished
    monkeypatch.setattr(suite_runner, 'code_commit', lambda repo, paths=None, c=commit: c)
    suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'a'), only=['s1_f20_rand_init'],
                    runner=runner(code), convergence=conv, record_dir=records,
                    echo=lambda s: None)
  rec = json.load(open(os.path.join(records, 'digits/cells/s1_f20_rand_init/seed_0',
                                    suite.DONE)))
  assert rec['start_commits'] == ['aaa', 'bbb']
  suite.run_cells(['table2'], 'digits', [0], str(tmp_path / 'b'), only=['s1_f20_rand_init'],
                  runner=FakeRunner(), convergence=conv, echo=lambda s: None)
  done = json.load(open(os.path.join(suite.cell_dir(str(tmp_path / 'b'), 'digits',
                                                    's1_f20_rand_init', 0), suite.DONE)))
  assert 'start_commits' not in done


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


@pytest.mark.parametrize('steps_from, expected', [
    ('/home/me/My Runs/convergence.json (commit 743cf84, e196deb)',
     '<elsewhere>/convergence.json (commit 743cf84, e196deb)'),
    ('/data/conv.json', '<elsewhere>/conv.json'),
    ('benchmarks/results/convergence.json (commit abc)',
     'benchmarks/results/convergence.json (commit abc)'),
    ('<out_dir>/conv/convergence.json (commit abc)', '<out_dir>/conv/convergence.json (commit abc)'),
    (None, None),
])
def test_portable_source_hides_only_absolute_paths(steps_from, expected):
  from suite_runner import portable_source  # pylint: disable=g-import-not-at-top
  assert portable_source(steps_from) == expected
