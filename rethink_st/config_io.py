"""Gin parsing with one-line errors, reading what the parsed config binds, and saving
config.gin / operative_config.gin (chief only)."""
import copy
import inspect
import json
import os
import tokenize
from typing import Any, Sequence

import gin
import tensorflow as tf

from rethink_st.errors import UserError


def is_chief() -> bool:
  """True on a single machine and on the chief of a TF_CONFIG cluster (worker 0 if no chief)."""
  tf_config = json.loads(os.environ.get('TF_CONFIG', '{}') or '{}')
  task = tf_config.get('task') or {}
  task_type, index = task.get('type'), int(task.get('index', 0))
  if task_type in (None, 'chief'):
    return True
  has_chief = 'chief' in (tf_config.get('cluster') or {})
  return task_type == 'worker' and index == 0 and not has_chief


def worker_index() -> int:
  task = (json.loads(os.environ.get('TF_CONFIG', '{}') or '{}').get('task') or {})
  return int(task.get('index', 0))


def _first_line(e: Exception) -> str:
  if isinstance(e, tokenize.TokenError):  # an unclosed bracket or quote: no location from gin
    return f'{e.args[0] if e.args else "cannot tokenize"} (an unclosed bracket or quote?)'
  text = str(e).strip()
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  # gin appends '  In file "x", line n' context: keep the message and where it is.
  where = next((l for l in lines if l.startswith('In file') or l.startswith('In binding')), '')
  msg = lines[0] if lines else type(e).__name__
  return f'{msg} ({where})' if where and where not in msg else msg


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What gin raises for a mistake in a file or binding (an import in a gin file can raise more,
# e.g. ModuleNotFoundError, an ImportError); tokenize.TokenError is an unclosed bracket.
_GIN_ERRORS = (ValueError, KeyError, IOError, SyntaxError, TypeError, ImportError,
               tokenize.TokenError)


# The include search paths this process gave gin: gin appends on every call and keeps its list
# private (clear_config leaves it), so a path is added once.
_SEARCH_PATHS = set()


def _add_search_path(path: str) -> None:
  if path not in _SEARCH_PATHS:
    gin.add_config_file_search_path(path)
    _SEARCH_PATHS.add(path)


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str]) -> None:
  """Parses --gin_file and --gin_param, files first, in order (as
  gin.parse_config_files_and_bindings does); a missing file, an unknown or malformed binding
  is one UserError line that names the --gin_file or --gin_param it came from.

  `include 'gin_configs/...'` lines resolve against the repository root from any directory.
  """
  _add_search_path(REPO_ROOT)
  gin_files, gin_params = list(gin_files or ()), list(gin_params or ())
  for path in gin_files:  # a relative path may also be relative to the repository root
    if not (tf.io.gfile.exists(path) or
            (not os.path.isabs(path) and tf.io.gfile.exists(os.path.join(REPO_ROOT, path)))):
      raise UserError(f'--gin_file={path}: no such file')
  for path in gin_files:
    try:
      gin.parse_config_file(path)
    except _GIN_ERRORS as e:
      raise UserError(f'--gin_file={path}: {_first_line(e)}') from None
  for param in gin_params:
    try:
      gin.parse_config(param)
    except _GIN_ERRORS as e:
      raise UserError(f'--gin_param="{param}": {_first_line(e)}') from None


def _write(model_dir: str, name: str, text: str) -> str:
  if not is_chief():
    return ''
  tf.io.gfile.makedirs(model_dir)
  path = os.path.join(model_dir, name)
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(text)
  return path


def save_config(model_dir: str, name: str = 'config.gin') -> str:
  """The config as parsed (every file and binding), written at start."""
  return _write(model_dir, name, gin.config_str())


def save_operative_config(model_dir: str, name: str = 'operative_config.gin') -> str:
  """The values actually used, written once the model and data are built."""
  return _write(model_dir, name, gin.operative_config_str())


UNSET = object()   # bound_value's answer for a binding the config does not make


def bound_value(binding: str) -> Any:
  """The value the parsed config binds to `binding` ('module.fn.param', 'scope/fn.param'),
  a macro evaluated, or UNSET when it binds none.

  A macro (`%NAME`, as gin writes it in a config string) is evaluated as gin evaluates the
  references of gin.get_bindings(resolve_references=True): by copy.deepcopy. Other
  references (`@fn()`) stay as they are: evaluating them would build what they name."""
  try:
    value = gin.query_parameter(binding)
  except ValueError:
    return UNSET
  if repr(value).startswith('%'):
    try:
      value = copy.deepcopy(value)
    except TypeError:  # a macro without a value: the reference stands for itself
      pass
  return value


def bound_or_default(fn, param: str) -> Any:
  """What `fn` (a gin configurable function or class) gets for `param`: the parsed config's
  binding (bound_value), else the signature's default; a UserError naming the binding when
  there is neither."""
  target = getattr(fn, '__wrapped__', fn)
  name = f'{target.__module__}.{target.__name__}'
  value = bound_value(f'{name}.{param}')
  if value is not UNSET:
    return value
  if inspect.isclass(target):
    target = target.__init__
  default = inspect.signature(target).parameters[param].default
  if default is inspect.Parameter.empty or default is gin.REQUIRED:
    raise UserError(f'{name}.{param} is not bound in the gin config')
  return default


def call_with_user_errors(fn, *args, **kwargs):
  """Runs a binary's run function; a UserError prints as one line and exits 1.

  Gin re-raises errors from inside configurables as a subclass with context lines appended;
  the first line is the message.
  """
  import sys  # pylint: disable=g-import-not-at-top
  try:
    return fn(*args, **kwargs)
  except UserError as e:
    lines = str(e).strip().splitlines() or [type(e).__name__]
    sys.stderr.write(f'error: {lines[0]}\n')
    sys.exit(1)
  except RuntimeError as e:
    if 'Required bindings' not in str(e):
      raise
    # gin: "Required bindings for `f` not provided in config: ['x']"
    sys.stderr.write(f'error: gin config: {str(e).strip().splitlines()[0]}\n')
    sys.exit(1)
