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


def run_bin(name: str, *args: str):
  """What `python bin/<name>.py args...` does, in this process: the script's module is loaded
  afresh, its absl flags are parsed from `args` and its main() is called, with sys.argv,
  stdout and stderr as the process would have them. This saves a second interpreter
  importing TensorFlow and Model Garden (~8 s on 2 cores) and tracing again what this one
  has traced. The script's flags exist during the call only, and other scripts' flags (a
  benchmark module another test loaded, say: they share names such as --data_dir) are set
  aside meanwhile; it starts, as a process does, from an empty gin config. Returns a
  subprocess.CompletedProcess: returncode (main's SystemExit code, else 0), and the stdout
  and stderr written from Python. That each script also imports in a fresh interpreter:
  test_binaries.py::test_importing_the_package_first_selects_tf_keras."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  path = os.path.join(repo, 'bin', f'{name}.py')
  argv = [path, *args]
  values = flags.FLAGS
  was_parsed = values.is_parsed()
  aside = {}   # module -> its flags: those of scripts (not of an installed package)
  for module, module_flags in values.flags_by_module_dict().items():
    file = getattr(sys.modules.get(module), '__file__', None) or repo
    if file.startswith(repo) and not file.startswith(sys.prefix):   # .venv is in the repo
      aside[module] = [f for f in module_flags if f.name in values]
      for flag in aside[module]:
        delattr(values, flag.name)
  defined = set(values)
  out, err, old_argv = io.StringIO(), io.StringIO(), sys.argv
  code = 0
  try:
    spec = importlib.util.spec_from_file_location(f'bin_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # defines the script's flags
    values(argv)
    sys.argv = argv
    gin.clear_config()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        module.main(argv)
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
  finally:
    sys.argv = old_argv
    gin.clear_config()
    for flag in set(values) - defined:
      delattr(values, flag)
    for module, module_flags in aside.items():
      for flag in module_flags:
        values[flag.name] = flag
        values.register_flag_by_module(module, flag)
    if not was_parsed:
      values.unparse_flags()
  return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
