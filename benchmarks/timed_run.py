"""A benchmark subprocess whose wall time adds up over starts.

A digit-scale run killed part-way (a session ends, a machine is shared) resumes from its last
checkpoint when started again. The wall time it reports must be that of every start, not the
last one, or a resumed cell looks cheaper than it is and the budgets planned from it are
wrong. run_timed keeps the running total in a small JSON file beside the run, rewritten every
minute while the subprocess trains, so a kill loses at most a minute of it. The same file
names the CPU kinds of its starts (`cpus`, each once, first start first): op determinism
repeats a seeded run only on the same kind of CPU, and a run resumed on another machine is a
mix of the two. With `commit` (code_commit), it also lists the commit of every start
(`commits`, one per start, `+dirty` when the training code had uncommitted changes), so a run
made by one code from start to end can be told from one resumed across commits
(benchmarks/suite_adopt.py adopts only the first kind).
benchmarks/convergence.py (convergence_seconds.json) and benchmarks/suite_runner.py
(suite_seconds.json) both use it.
"""

import json
import os
import platform
import shlex
import subprocess
import time
from typing import List, Mapping, Optional, Sequence

# What a training run's result depends on in the repository: the package, the binaries, the
# gin files and the pinned dependencies (benchmarks/ and tests/ do not train).
TRAINING_CODE = ('rethink_st', 'bin', 'gin_configs', 'setup.py')


def code_commit(repo: str, paths: Sequence[str] = TRAINING_CODE) -> Optional[str]:
  """The checkout's HEAD (40 hex digits), with `+dirty` when `paths` (every tracked file if
  empty) have uncommitted changes; None outside a git checkout."""
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    local = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--',
                            *paths], cwd=repo, capture_output=True, text=True,
                           check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ('+dirty' if local else '')


def cpu_kind(cpuinfo: str = '/proc/cpuinfo') -> str:
  """The CPU a cell ran on, as far as it changes results: op determinism repeats a seeded run
  on the same kind of CPU, but TensorFlow's kernels differ between AVX2 and AVX-512 machines,
  and between CPUs of one name and flags (two "AMD EPYC" VMs with AVX-512 and bf16, one of
  family 26, train the same seeded demo student to 0.28 and 0.21 AP x 100), so the family
  and model are named too."""
  model, flags, generation = platform.machine(), set(), {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        name, _, value = line.partition(':')
        name = name.strip()
        if name == 'model name' and model == platform.machine():
          model = value.strip()
        elif name in ('cpu family', 'model') and name not in generation:
          generation[name] = value.strip()
        elif name == 'flags':
          flags = set(value.split())
          break
  except OSError:
    pass
  simd = 'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'
  bf16 = ' + bf16' if flags & {'avx512_bf16', 'amx_bf16'} else ''
  family = (f'family {generation["cpu family"]} model {generation["model"]}, '
            if len(generation) == 2 else '')
  return f'{model} ({family}{simd}{bf16}), {os.cpu_count()} CPUs'


def read_timing(timing: str) -> dict:
  """What the earlier starts wrote to `timing`; {} when there is none or it cannot be read
  (a kill mid-write before writes were atomic)."""
  try:
    with open(timing) as f:
      earlier = json.load(f)
  except (OSError, ValueError):
    return {}
  return earlier if isinstance(earlier, dict) else {}


def seconds_so_far(timing: str) -> float:
  """Wall seconds the earlier starts recorded in `timing` (0 when there is none, or when
  it cannot be read: then the run's time is undercounted, never the run stopped)."""
  try:
    return float(read_timing(timing).get('seconds') or 0.0)
  except (ValueError, TypeError):
    return 0.0


def cpus_of(recorded: Mapping[str, object]) -> List[str]:
  """The CPU kinds (cpu_kind) a timing file's contents name, first start first; [] for a
  file from before starts named their CPU."""
  cpus = recorded.get('cpus')
  return [c for c in cpus if isinstance(c, str)] if isinstance(cpus, list) else []


def cpus_so_far(timing: str) -> List[str]:
  """cpus_of the file `timing` ([] when there is none or it cannot be read)."""
  return cpus_of(read_timing(timing))


def commits_so_far(timing: str) -> List[str]:
  """The commits the starts recorded in the file `timing` (`commits`), each once, first start
  first; [] when none did."""
  commits = read_timing(timing).get('commits')
  return list(dict.fromkeys(commits)) if isinstance(commits, list) else []


def run_timed(cmd: Sequence[str], log_path: str, timing: str, cwd: str,
              extra: Optional[Mapping[str, object]] = None, every: float = 60.0,
              commit: Optional[str] = None) -> int:
  """Runs cmd from cwd, output appended to log_path; returns its exit code. timing gets
  {'seconds': earlier starts + this one, 'cpus': the CPU kinds of the starts, **extra},
  and with `commit` 'commits': the earlier starts' and this one's; rewritten every `every`
  seconds and at the end."""
  before, start = seconds_so_far(timing), time.time()
  extra = dict(extra or {})
  # one per start; a start without one (older code) is not listed, so the list is short
  commits = list(read_timing(timing).get('commits') or []) + ([] if commit is None else [commit])
  if commits:
    extra['commits'] = commits
  # each CPU kind once, first start first; starts of older code, which did not name theirs,
  # as 'not recorded' (their seconds are in the total)
  cpus = cpus_so_far(timing) or (['not recorded'] if before > 0 else [])
  here = cpu_kind()
  cpus += [] if here in cpus else [here]

  def save():    # a kill mid-write leaves the last whole file (os.replace is atomic)
    with open(timing + '.tmp', 'w') as f:
      json.dump({'seconds': before + time.time() - start, 'cpus': cpus, **(extra or {})}, f)
    os.replace(timing + '.tmp', timing)

  with open(log_path, 'a') as log:
    log.write(f'$ {shlex.join(cmd)}\n')
    log.flush()
    proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'))
    while True:
      try:
        code = proc.wait(timeout=every)
        break
      except subprocess.TimeoutExpired:
        save()
  save()
  return code
