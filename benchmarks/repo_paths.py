"""How benchmark results name a path: relative to the repository, or a placeholder for one
outside it, so a committed result names no path of the machine it ran on."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shown(path: str) -> str:
  """`path` relative to the repository, or '<outside the repository>'."""
  rel = os.path.relpath(os.path.abspath(path), REPO)
  return '<outside the repository>' if rel.startswith('..') else rel
