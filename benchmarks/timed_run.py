"""A benchmark subprocess whose wall time adds up over starts.

A digit-scale run killed part-way (a session ends, a machine is shared) resumes from its last
checkpoint when started again. The wall time it reports must be that of every start, not the
last one, or a resumed cell looks cheaper than it is and the budgets planned from it are
wrong. run_timed keeps the running total in a small JSON file beside the run, rewritten every
minute while the subprocess trains, so a kill loses at most a minute of it.
benchmarks/convergence.py (convergence_seconds.json) and benchmarks/suite_runner.py
(suite_seconds.json) both use it.
"""

import json
import os
import shlex
import subprocess
import time
from typing import Mapping, Optional, Sequence


def seconds_so_far(timing: str) -> float:
  """Wall seconds the earlier starts recorded in `timing` (0 when there is none, or when
  it cannot be read: then the run's time is undercounted, never the run stopped)."""
  try:
    with open(timing) as f:
      return float(json.load(f).get('seconds') or 0.0)
  except (OSError, ValueError, AttributeError, TypeError):
    return 0.0


def run_timed(cmd: Sequence[str], log_path: str, timing: str, cwd: str,
              extra: Optional[Mapping[str, object]] = None, every: float = 60.0) -> int:
  """Runs cmd from cwd, output appended to log_path; returns its exit code. timing gets
  {'seconds': earlier starts + this one, **extra}, rewritten every `every` seconds and at the
  end."""
  before, start = seconds_so_far(timing), time.time()

  def save():    # a kill mid-write leaves the last whole file (os.replace is atomic)
    with open(timing + '.tmp', 'w') as f:
      json.dump({'seconds': before + time.time() - start, **(extra or {})}, f)
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
