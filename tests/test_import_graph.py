"""The package's rooms import downward only, and nothing reads gin's private state.

A room is a first-level part of the package: a subpackage (`rethink_st.data`,
`rethink_st.training`, ...) or a top-level module (`rethink_st.augment`, `rethink_st.cli`, ...).
Every `import` in every module under rethink_st/ counts, at the top or inside a function
(an import moved into a function still makes the rooms depend on each other, only later):
`import rethink_st.x.y`, `from rethink_st.x import y`, `from rethink_st import x` and relative
imports. Imports by string (importlib) are not seen. No TensorFlow: the modules are parsed
with `ast`, not imported.
"""
import ast
import collections
import os
import pathlib
import re
from typing import Dict, List, Optional, Set, Tuple

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = 'rethink_st'

# room -> {room it imports: [(file, line, imported name), ...]}
Graph = Dict[str, Dict[str, List[Tuple[str, int, str]]]]


def _module_name(path: pathlib.Path, root: pathlib.Path) -> Tuple[str, str]:
  """(module, the package a relative import in it starts from)."""
  parts = list(path.relative_to(root).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
    return '.'.join(parts), '.'.join(parts)
  return '.'.join(parts), '.'.join(parts[:-1])


def _imported_names(node: ast.AST, package: str) -> List[str]:
  """The dotted names an import statement brings in (for `from a import b`: a and a.b, since
  b may be a module or a name in a)."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  if isinstance(node, ast.ImportFrom):
    if node.level:
      base = package.split('.')
      base = base[:len(base) - (node.level - 1)]
      module = '.'.join(base + ([node.module] if node.module else []))
    else:
      module = node.module or ''
    return [module] + [f'{module}.{alias.name}' for alias in node.names if alias.name != '*']
  return []


def _room(name: str, package: str, rooms: Set[str]) -> Optional[str]:
  parts = name.split('.')
  if parts[0] != package or len(parts) < 2:
    return None
  room = f'{package}.{parts[1]}'
  return room if room in rooms else None


def room_graph(root: pathlib.Path, package: str = PACKAGE) -> Graph:
  """The import graph between the rooms of the package folder root/package."""
  package_dir = root / package
  rooms = {f'{package}.{p.stem}' for p in package_dir.iterdir()
           if (p.suffix == '.py' and p.stem != '__init__') or (p / '__init__.py').exists()}
  graph: Graph = collections.defaultdict(lambda: collections.defaultdict(list))
  for path in sorted(package_dir.rglob('*.py')):
    module, from_package = _module_name(path, root)
    source = _room(module, package, rooms)
    if source is None:
      continue
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):   # every statement: top level, functions, classes, branches
      seen = set()
      for name in reversed(_imported_names(node, from_package)):   # most specific first
        target = _room(name, package, rooms)
        if target is not None and target != source and target not in seen:
          seen.add(target)
          graph[source][target].append(
              (str(path.relative_to(root)), node.lineno, name))
  return graph


def find_cycle(graph: Graph) -> Optional[List[str]]:
  """One cycle of rooms [a, b, ..., a], or None if the graph is acyclic."""
  state: Dict[str, int] = {}   # 1: on the current path, 2: done
  path: List[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, {})):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def describe_cycle(graph: Graph, cycle: List[str]) -> str:
  lines = [' -> '.join(cycle)]
  for a, b in zip(cycle, cycle[1:]):
    file, line, name = graph[a][b][0]
    more = len(graph[a][b]) - 1
    lines.append(f'  {a} -> {b}: {file}:{line} imports {name}'
                 + (f' (and {more} more)' if more else ''))
  return '\n'.join(lines)


def test_rooms_import_each_other_without_cycles():
  graph = room_graph(REPO)
  assert graph, 'no imports found: is the package where this test looks?'
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle between rooms:\n' + describe_cycle(graph, cycle)


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
  package = tmp_path / 'pkg'
  (package / 'low').mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'low' / '__init__.py').write_text('')
  (package / 'low' / 'leaf.py').write_text('X = 1\n')
  (package / 'high.py').write_text('from pkg.low import leaf\n')
  graph = room_graph(tmp_path, 'pkg')
  assert find_cycle(graph) is None
  assert set(graph['pkg.high']) == {'pkg.low'}
  (package / 'low' / 'leaf.py').write_text(
      'def f():\n  from pkg import high  # inside a function\n  return high\n')
  graph = room_graph(tmp_path, 'pkg')
  cycle = find_cycle(graph)
  assert cycle in (['pkg.high', 'pkg.low', 'pkg.high'], ['pkg.low', 'pkg.high', 'pkg.low'])
  text = describe_cycle(graph, cycle)
  assert 'pkg/low/leaf.py:2 imports pkg.high' in text, text


def test_relative_and_submodule_imports_count(tmp_path):
  package = tmp_path / 'pkg'
  for room in ('a', 'b'):
    (package / room).mkdir(parents=True)
    (package / room / '__init__.py').write_text('')
  (package / '__init__.py').write_text('')
  (package / 'a' / 'x.py').write_text('from ..b import y\n')
  (package / 'b' / 'y.py').write_text('import pkg.a.x\n')
  graph = room_graph(tmp_path, 'pkg')
  assert set(graph) == {'pkg.a', 'pkg.b'}
  assert find_cycle(graph) is not None


# gin.config._X, and getattr(gin.config, '_X')
_PRIVATE_GIN = re.compile(r'gin\.config(\.|\s*,\s*[\'"])_')


def test_no_private_gin_state():
  assert _PRIVATE_GIN.search('x = gin.config._CONFIG')
  assert _PRIVATE_GIN.search("getattr(gin.config, '_LOCATION_PREFIXES', ())")
  assert not _PRIVATE_GIN.search('gin.config_str(); gin.config.ConfigurableReference')
  hits = []
  for folder in ('rethink_st', 'bin', 'benchmarks'):
    for dirpath, _, files in os.walk(REPO / folder):
      for name in files:
        if name.endswith('.py'):
          path = pathlib.Path(dirpath) / name
          for i, line in enumerate(path.read_text().splitlines(), 1):
            if _PRIVATE_GIN.search(line):
              hits.append(f'{path.relative_to(REPO)}:{i}: {line.strip()}')
  assert not hits, 'gin\'s private state is read:\n' + '\n'.join(hits)
