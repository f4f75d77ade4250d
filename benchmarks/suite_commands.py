"""The suite's plan: which cells run, their command lines and digit-scale step budgets.

The command of a cell is its gin files and bindings (benchmarks/cells.py), its seed, folders
(<out_dir>/<scale>/cells/<cell>/seed_<s>/) and, at digit scale, the step budget
benchmarks/convergence.py chose for its augmentation policy (convergence.json). Also the
suite's argument checks (SuiteError: one line) and --estimate (steps and images per cell).
"""
import hashlib
import json
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import tables as tables_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONVERGENCE = os.path.join(REPO, 'benchmarks', 'results', 'convergence.json')


class SuiteError(ValueError):
  """A bad argument to the suite (one line)."""


# ------------------------------------------------------------------------------ arguments
def parse_seeds(text: str) -> List[int]:
  """'3' -> [0, 1, 2] (a count); '0,2' -> [0, 2] and '1,' -> [1] (a list)."""
  try:
    if ',' in text:
      seeds = [int(s) for s in text.split(',') if s.strip()]
    else:
      seeds = list(range(int(text)))
  except ValueError:
    raise SuiteError(f'--seeds={text!r}: expected a count (3) or a list (0,2)') from None
  if not seeds or any(s < 0 for s in seeds):
    raise SuiteError(f'--seeds={text!r}: expected a count >= 1 or a list of seeds >= 0 '
                     f'(only seed 0: --seeds=0,)')
  return seeds


def resolve_tables(names: Sequence[str]) -> List[str]:
  out = []
  for name in names:
    if name == 'all':
      out.extend(tables_lib.TABLES)
    elif name in tables_lib.TABLES:
      out.append(name)
    else:
      raise SuiteError(f'--table={name!r} is not one of all, {", ".join(tables_lib.TABLES)}')
  return list(dict.fromkeys(out))


# -------------------------------------------------------------------------------- budgets
def _shown_path(path: str) -> str:
  """A path inside the repository relative to it (as the user would type it)."""
  rel = os.path.relpath(os.path.abspath(path), REPO)
  return path if rel.startswith('..') else rel


def convergence_command(keys: Sequence[str], chosen: Optional[Mapping[str, dict]] = None) -> str:
  """The benchmarks/convergence.py command(s) that make the budgets `keys` ('s4': detection,
  'seg_s4': segmentation, 's4_f100': 100% of the labeled scenes), one per (task, fraction),
  joined by ' and ' (one line). A fraction's curve whose 20% budget is in `chosen` (the
  file's) starts at that budget and twice it: more labels do not converge sooner."""
  groups = {}     # (segmentation?, pct or None, budgets or None) -> policies
  for k in keys:
    seg = k.startswith('seg_')
    policy, _, pct = k[len('seg_') if seg else 0:].partition('_f')
    base = ((chosen or {}).get(('seg_' if seg else '') + policy) or {}).get('steps')
    budgets = f'{base},{2 * base}' if pct and isinstance(base, int) and base > 0 else None
    groups.setdefault((seg, pct or None, budgets), []).append(policy)
  commands = []
  for (seg, pct, budgets), policies in sorted(
      groups.items(), key=lambda g: (g[0][0], g[0][1] or '', g[0][2] or '')):
    commands.append('python benchmarks/convergence.py'
                    + (' --task=segmentation' if seg else '')
                    + f' --policies={",".join(policies)}'
                    + (f' --labeled_fraction={int(pct) / 100:g}' if pct else '')
                    + (f' --budgets={budgets}' if budgets else ''))
  return ' and '.join(commands)


def read_budgets(path: str, policies: Sequence[str]) -> Tuple[Dict[str, int], str]:
  """The digit-scale step budget of each key in `policies` (a policy, 's4'; a
  segmentation policy, 'seg_s4'; a policy at 100% labels, 's4_f100': tables.Cell.budget_key),
  from convergence.json's
  chosen[<key>].steps, and a line saying where they came from. One-line SuiteError naming
  the file, the missing keys and the command that makes them when the file does not give
  them all."""
  shown = _shown_path(path)
  make = convergence_command(policies)
  try:
    data = read_json(path)
  except json.JSONDecodeError as e:
    raise SuiteError(f'{shown}: not valid JSON ({e}); remake it with: {make}') from None
  if data is None:
    raise SuiteError(f'{shown}: not found; the digit-scale step budgets come from it. '
                     f'Make it with: {make}')
  chosen = data.get('chosen') or {}
  missing = [p for p in policies if p not in chosen]
  if missing:
    raise SuiteError(
        f'{shown} has no step budget (chosen.<policy>.steps) for policy '
        f'{", ".join(missing)}; make it with: {convergence_command(missing, chosen)}')
  budgets = {}
  for p in policies:
    steps = chosen[p].get('steps') if isinstance(chosen[p], dict) else None
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
      raise SuiteError(f'{shown}: chosen.{p}.steps = {steps!r} is not a positive whole '
                       f'number of steps')
    budgets[p] = steps
  source = shown + (f' (commit {data["commit"]})' if data.get('commit') else '')
  rising = [p for p in policies if chosen[p].get('still_rising')]
  if rising:   # recorded with every run, so a table made from such budgets says so
    source += (f'; {"mIoU" if all(p.startswith("seg_") for p in rising) else "AP"} still '
               f'rising at the largest budget for {", ".join(rising)}')
  return budgets, source


def read_json(path: str) -> Optional[dict]:
  """Local paths with the standard library; gs:// (the full scale) with tf.io.gfile."""
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def budgets_for(cells: Sequence[str], scale: str,
                convergence: str) -> Tuple[Dict[str, int], Optional[str]]:
  """Step budgets for the policies of `cells` (digit scale; the full scale's gin files
  hold the paper's steps), keyed by tables.Cell.budget_key ('s4'; segmentation 'seg_s4';
  100% labels 's4_f100')."""
  policies = sorted({tables_lib.CELLS[n].budget_key for n in cells
                     if tables_lib.CELLS[n].budget_key}) if scale == 'digits' else []
  return read_budgets(convergence, policies) if policies else ({}, None)


# ------------------------------------------------------------------------------- commands
def planned_cells(table_names: Sequence[str], scale: str, only: Sequence[str] = (),
                  optional: bool = False) -> Tuple[str, ...]:
  """The cells to run (the tables', or just `only`) and their dependencies, in order."""
  if scale not in tables_lib.SCALES:
    raise SuiteError(f'--scale={scale!r} is not one of {", ".join(tables_lib.SCALES)}')
  for name in only:
    if name not in tables_lib.CELLS:
      raise SuiteError(f'--only={name!r} is not a cell (benchmarks/tables.py)')
    if not tables_lib.CELLS[name].exists(scale):
      raise SuiteError(f'--only={name!r} has no {scale}-scale config')
  wanted = list(only)
  if not only:
    for t in table_names:
      wanted.extend(tables_lib.TABLES[t].cell_names(scale, optional))
  return tables_lib.ordered_cells(wanted, scale)


def cell_dir(out_dir: str, scale: str, name: str, seed: int) -> str:
  cell = tables_lib.CELLS[name]
  leaf = f'seed_{seed}' if cell.seeded else 'shared'
  return os.path.join(out_dir, scale, 'cells', name, leaf)


def cell_command(name: str, scale: str, seed: int, out_dir: str, *,
                 budgets: Optional[Mapping[str, int]] = None,
                 gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
                 python: str = sys.executable) -> List[str]:
  """The command line that runs cell `name` for `seed`: the cell's gin files, then extra
  gin files; the cell's bindings, its seed, folders and step budget (digit scale:
  budgets[cell.budget_key], see read_budgets), then extra bindings (last, so they win)."""
  cell = tables_lib.CELLS[name]
  if not cell.exists(scale):
    raise SuiteError(f'cell {name} has no {scale}-scale config (benchmarks/tables.py)')
  cmd = [python, tables_lib.BINARIES[cell.binary]]
  cmd += [f'--gin_file={f}' for f in cell.gin_files(scale)]
  cmd += [f'--gin_file={f}' for f in gin_files]
  params = list(cell.gin_params(scale))
  if cell.seeded:
    params.append(f'CELL_SEED={seed}' if scale == 'digits'
                  else f'rethink_st.training.run.run_train.seed={seed}')
  if cell.pretrained and scale == 'digits':
    params.append(f"PRETRAINED_DIR='{cell_dir(out_dir, scale, tables_lib.PRETRAIN_CELL, seed)}'")
  if cell.teacher_for(scale):
    teacher = cell_dir(out_dir, scale, cell.teacher_for(scale), seed)
    params.append(f"rethink_st.self_training.run_self_training.teacher_dir='{teacher}'"
                  if cell.binary == 'self_train' else f"TEACHER_DIR='{teacher}'")
  if scale == 'digits' and cell.policy:
    if not budgets or cell.budget_key not in budgets:
      raise SuiteError(f'cell {name}: no step budget for policy {cell.budget_key} '
                       f'(--convergence)')
    params += cell.budget_params(budgets[cell.budget_key])
  params += list(gin_params)
  cmd += [f'--gin_param={p}' for p in params]
  cmd.append(f'--model_dir={cell_dir(out_dir, scale, name, seed)}')
  return cmd


class _Refs(object):
  """gin's parser delegate for the digest: a configurable reference or macro as its text."""

  def configurable_reference(self, name, evaluate):
    return '@' + name + ('()' if evaluate else '')

  def macro(self, name):
    return '%' + name


def _read_text(path: str) -> str:
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path) as f:
      return f.read()
  with open(path) as f:
    return f.read()


def gin_bindings(text: str, where: str, root: str = REPO,
                 _seen: Optional[set] = None) -> List[Tuple[str, str]]:
  """(key, value) of each binding of gin text `text` in the order gin applies them, the
  bindings of an included file (path relative to root) at its include: `scope/name.arg`
  (a macro: its name) and repr of the value (references and macros as written). `where`
  names the text in errors (a gin file, or the flag that gave it)."""
  from gin import config_parser  # pylint: disable=g-import-not-at-top
  seen = set() if _seen is None else _seen
  out = []
  try:
    statements = list(config_parser.ConfigParser(text, _Refs()))
  except SyntaxError as e:
    raise SuiteError(f'{where}: gin syntax error at line {e.lineno}: {e.msg}') from None
  for st in statements:
    if isinstance(st, config_parser.IncludeStatement):
      path = st.filename if '://' in st.filename or os.path.isabs(st.filename) else (
          os.path.join(root, st.filename))
      if path in seen:
        continue
      seen.add(path)
      try:
        included = _read_text(path)
      except OSError as e:
        raise SuiteError(f'{where}: include {st.filename}: {e.strerror or e}') from None
      out += gin_bindings(included, f'{where}: include {st.filename}', root, seen)
    elif isinstance(st, config_parser.BindingStatement):
      key = (f'{st.scope}/' if st.scope else '') + st.selector + (
          f'.{st.arg_name}' if st.arg_name else '')
      out.append((key, repr(st.value)))
  return out


def config_digest(name: str, scale: str, seed: int, *,
                  budgets: Optional[Mapping[str, int]] = None,
                  gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
                  root: str = REPO) -> str:
  """12 hex digits that change when what cell `name` (seed `seed`) trains changes: its
  binary and the value of every binding after gin applies its gin files (with their
  includes) and its --gin_param bindings in order, the last binding of a key winning (so
  comments, layout, which file holds a binding, a default that a later file overrides and a
  macro nothing refers to do not count), and the digests of the cells it starts from (a new
  pre-training changes every pre-trained cell's). Folders are written <out_dir>, so the digest does not depend on
  where the runs are. Code is not in it: each run records its commit. The suite records the
  digest with each run, so a finished run of other bindings is not resumed or counted as
  this cell's (suite_runner)."""
  cmd = cell_command(name, scale, seed, '<out_dir>', budgets=budgets, gin_files=gin_files,
                     gin_params=gin_params, python='python')
  deps = [config_digest(d, scale, seed, budgets=budgets, gin_files=gin_files,
                        gin_params=gin_params, root=root)
          for d in tables_lib.CELLS[name].depends(scale)]
  return command_digest(cmd, deps, root)


def command_bindings(cmd: Sequence[str], root: str = REPO) -> Dict[str, str]:
  """{key: value} (gin_bindings) of what a binary's command line `cmd` binds: its --gin_file
  files (with their includes) and --gin_param bindings in order, the last binding of a key
  winning; a macro nothing refers to binds nothing. Other flags (--model_dir) do not count."""
  bound = {}
  for arg in cmd:
    flag, _, value = arg.partition('=')
    if flag == '--gin_file':
      path = value if '://' in value or os.path.isabs(value) else os.path.join(root, value)
      try:
        text = _read_text(path)
      except OSError as e:
        raise SuiteError(f'--gin_file={value}: {e.strerror or e}') from None
      bound.update(gin_bindings(text, f'--gin_file={value}', root, {path}))
    elif flag == '--gin_param':
      bound.update(gin_bindings(value, f'--gin_param={value}', root))
  # A macro nothing refers to binds nothing: e.g. a variant's --gin_param=STUDENT_STEPS=...,
  # given to every cell, leaves the teacher's digest (and its shared folder) alone.
  refs = ' '.join(bound.values())
  return {k: v for k, v in bound.items()
          if '.' in k.rsplit('/', 1)[-1] or repr('%' + k) in refs}


def command_digest(cmd: Sequence[str], deps: Sequence[str] = (), root: str = REPO) -> str:
  """config_digest of a command line (python, binary, flags): its binary (cmd[1], relative
  to the repository), command_bindings and the digests `deps` of the cells it starts from.
  Any command of that binary and bindings has it, e.g. benchmarks/convergence.py's run of a
  policy's budget and the suite's Rand Init cell of that budget (suite_adopt)."""
  blob = json.dumps([cmd[1], sorted(command_bindings(cmd, root).items()), list(deps)])
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------- estimate
def estimate(table_names: Sequence[str], scale: str, images_per_sec: Optional[float] = None,
             convergence: str = DEFAULT_CONVERGENCE, optional: bool = False,
             only: Sequence[str] = ()) -> List[dict]:
  """Training steps and images of every cell (or of `only` and the cells they depend on, as
  --only runs them from scratch), read from its gin files and the suite's bindings (what
  the binary would run), and hours at `images_per_sec` (a training throughput you
  measured, e.g. with benchmarks/train_step.py on the target). Self-training cells count
  the student only (the suite gives them the finished teacher) and exclude pseudo-labeling."""
  import gin  # pylint: disable=g-import-not-at-top
  from rethink_st import cli, config_io  # pylint: disable=g-import-not-at-top
  cli.register_configurables()
  order = planned_cells(table_names, scale, only, optional)
  budgets, _ = budgets_for(order, scale, convergence)
  out = []
  for name in order:
    cmd = cell_command(name, scale, 0, '/tmp/estimate', budgets=budgets)
    gin.clear_config()
    config_io.parse_gin([a.split('=', 1)[1] for a in cmd if a.startswith('--gin_file=')],
                        [a.split('=', 1)[1] for a in cmd if a.startswith('--gin_param=')])
    prefix = 'student/' if tables_lib.CELLS[name].binary == 'self_train' else ''
    with gin.config_scope(prefix.rstrip('/') or None):
      steps = int(config_io.bound_value(
          f'{prefix}rethink_st.training.run.run_train.train_steps'))
      batch = int(config_io.bound_value(
          f'{prefix}rethink_st.training.run.run_train.global_batch_size'))
    row = {'cell': name, 'steps': steps, 'batch': batch, 'images': steps * batch}
    if images_per_sec:
      row['hours'] = steps * batch / images_per_sec / 3600
    out.append(row)
  gin.clear_config()
  return out
