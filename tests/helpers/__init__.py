"""Helpers shared by the tests."""
import io
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
