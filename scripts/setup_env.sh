#!/usr/bin/env bash
# Makes .venv and installs rethink_st with its pinned dependencies, once. Sourced by the
# other scripts; re-installs only when setup.py changes. Safe to source from a shell: the
# install runs in a subshell with `set -euo pipefail`, so the caller's options are untouched.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RETHINK_ST_VENV:-$ROOT/.venv}"
(
  set -euo pipefail
  STAMP="$VENV/.rethink_st_installed"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ] || [ "$ROOT/setup.py" -nt "$STAMP" ]; then
    echo "[setup] installing rethink_st and its dependencies into $VENV (about 2 minutes)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" >&2
    touch "$STAMP"
  fi
) || { echo "[setup] failed: see the lines above ($VENV)" >&2; return 1 2>/dev/null || exit 1; }
export PATH="$VENV/bin:$PATH"
export TF_USE_LEGACY_KERAS=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
