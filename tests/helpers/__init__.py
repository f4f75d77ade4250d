"""Helpers shared by the tests."""
import io
import shlex
import sys

import pytest


def one_error_line(call) -> str:
  """Runs `call()` (a binary's path to its run function), which must stop with exit code 1
  and print exactly one line, `error: ...`, on stderr; returns that line."""
  stderr = io.StringIO()
  old, sys.stderr = sys.stderr, stderr
  try:
    with pytest.raises(SystemExit) as e:
      call()
  finally:
    sys.stderr = old
  assert e.value.code == 1
  lines = stderr.getvalue().strip().split('\n')
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  return lines[0]


def gin_header(path: str) -> str:
  """The leading comment block of a .gin file, without the '#'s."""
  lines = []
  with open(path) as f:
    for line in f:
      if not line.startswith('#'):
        break
      lines.append(line[1:].rstrip('\n'))
  return '\n'.join(lines)


def documented_command(header: str) -> list:
  """The command a gin header documents (backslash-continued lines from '#   python bin/...'),
  as argv."""
  lines = header.split('\n')
  start = next(i for i, l in enumerate(lines) if l.strip().startswith('python bin/'))
  parts = []
  for line in lines[start:]:
    parts.append(line.strip().rstrip('\\').strip())
    if not line.rstrip().endswith('\\'):
      break
  return shlex.split(' '.join(parts))
