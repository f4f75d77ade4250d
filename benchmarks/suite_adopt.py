"""A convergence run as a suite cell: benchmarks/convergence.py's run of a policy's chosen
budget for seed s trains exactly what the suite's Rand Init cell of that policy and seed
trains (the same binary, gin files and bindings; only --model_dir differs), so the suite
copies it into the cell's folder instead of training it again (suite.py --adopt_from). On
this repository's 2-core machines that saves a teacher per curve: 5.7 h for the 38,400-step
segmentation S4 teacher at 30 img/s.

A run is adopted only when all of these hold, checked before anything is copied:
- it reached the budget (eval_metrics.json at that step; convergence.finished);
- every start in its log (the `$ ...` lines run_timed writes) ran one command, and that
  command's bindings are the cell's (suite_commands.command_digest against the cell's
  config digest, which also covers the cells it starts from: a pre-trained or continued
  cell never matches);
- every start's commit is recorded (convergence_seconds.json `commits`, timed_run: runs of
  convergence.py before 2026-12-06 have none), none had uncommitted changes to the training
  code (timed_run.TRAINING_CODE: rethink_st/, bin/, gin_configs/, setup.py), and that code is
  the same at each of them and in the checkout the suite runs from, which has no uncommitted
  change there either. The check is strict: any commit touching the training code since the
  run, a docstring included, means the cell trains again;
- no process holds the run (no writer.lock in it), and the cell's folder is new or empty.
Otherwise the suite says why in one line and trains the cell. The cell's record names the run
(adopted_from) and keeps the run's own commit, wall seconds and CPU.
"""
import os
import shlex
import shutil
import subprocess
from typing import List, Optional, Tuple

from convergence import finished
from convergence import run_dir
from suite_commands import REPO
from suite_commands import SuiteError
from suite_commands import command_digest
from timed_run import TRAINING_CODE
from timed_run import code_commit
from timed_run import read_timing

LOG, TIMING = 'convergence_log.txt', 'convergence_seconds.json'   # convergence.run_one's


def logged_commands(log_path: str) -> List[List[str]]:
  """The command of every start in a run_timed log, without --model_dir."""
  commands = []
  with open(log_path) as f:
    for line in f:
      if line.startswith('$ '):
        commands.append([a for a in shlex.split(line[2:])
                         if not a.startswith('--model_dir=')])
  return commands


def _git(*args: str, repo: str = REPO) -> subprocess.CompletedProcess:
  return subprocess.run(['git', *args], cwd=repo, capture_output=True, text=True)


def same_code(commit: Optional[str], repo: str = REPO) -> Optional[str]:
  """None when TRAINING_CODE at `commit` is what the checkout `repo` has (committed, no local
  change), else why not, in words."""
  if not commit:
    return 'its commit is not recorded'
  here = code_commit(repo)
  if here is None:
    return f'{repo} is not a git checkout'
  if here.endswith('+dirty'):
    return 'this checkout has uncommitted changes to the training code'
  try:
    if _git('cat-file', '-e', f'{commit}^{{commit}}', repo=repo).returncode != 0:
      return f'its commit {commit} is not in this repository'
    changed = _git('diff', '--name-only', commit, 'HEAD', '--', *TRAINING_CODE, repo=repo)
  except OSError as e:
    return f'git: {e.strerror or e}'
  if changed.returncode != 0:
    return f'git diff {commit} HEAD failed: {changed.stderr.strip()}'
  files = changed.stdout.split()
  if files:
    return (f'the training code changed since its commit {commit} '
            f'({len(files)} file(s), e.g. {files[0]})')
  return None


def check(source: str, steps: int, digest: Optional[str]) -> str:
  """'' when the convergence run in `source` may stand for a cell of config digest `digest`
  and `steps` steps, else why not, in words."""
  if os.path.exists(os.path.join(source, 'writer.lock')):
    return 'a process may still be writing it (its writer.lock is there)'
  try:
    if finished(source, steps) is None:
      return f'it has not reached {steps} steps'
  except ValueError:
    return 'its eval_metrics.json does not parse'
  log = os.path.join(source, LOG)
  commands = logged_commands(log) if os.path.exists(log) else []
  if not commands:
    return f'{LOG} names no command'
  if any(c[1:] != commands[0][1:] for c in commands):
    return f'its {len(commands)} starts ran different commands'
  try:
    theirs = command_digest(commands[0])
  except SuiteError as e:
    return f'its command does not parse here ({e})'
  if not digest or theirs != digest:
    return f'its bindings differ from the cell\'s (config {theirs}, the cell {digest})'
  commits = read_timing(os.path.join(source, TIMING)).get('commits') or []
  if len(commits) != len(commands):
    return (f'{TIMING} records the commit of {len(commits)} of its {len(commands)} '
            'starts (convergence.py before 2026-12-06 kept none)')
  for commit in dict.fromkeys(commits):
    if commit.endswith('+dirty'):
      return f'a start at {commit} had uncommitted changes to the training code'
    why = same_code(commit)
    if why:
      return why
  return ''


def copy_run(source: str, directory: str, log: str, seconds: str) -> None:
  """The run's files into the cell's (new or empty) folder; its log and timing also under
  the suite's names (suite_runner's LOG, SECONDS: `log`, `seconds`), which the records read."""
  shutil.copytree(source, directory, dirs_exist_ok=True,
                  ignore=shutil.ignore_patterns('writer*.lock'))
  shutil.copyfile(os.path.join(source, LOG), os.path.join(directory, log))
  shutil.copyfile(os.path.join(source, TIMING), os.path.join(directory, seconds))


def find(adopt_from: str, budget_key: str, steps: int, seed: int, digest: Optional[str],
         directory: str) -> Tuple[Optional[str], str]:
  """(the run's folder, '') when convergence.py --out_dir=adopt_from has a run that may
  stand for the cell whose folder is `directory` (check); (folder, why not) when it has one
  that may not; (None, '') when it has none."""
  source = run_dir(adopt_from, budget_key, steps, seed)
  if not os.path.isdir(source):
    return None, ''
  if os.path.isdir(directory) and os.listdir(directory):
    return source, f'the cell\'s folder {directory} is not empty'
  return source, check(source, steps, digest)


def describe(budget_key: str, steps: int, seed: int) -> str:
  """The run as the record names it (no machine path)."""
  return f'benchmarks/convergence.py run {budget_key}/steps_{steps}/seed_{seed}'
