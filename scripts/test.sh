#!/usr/bin/env bash
# Runs the test suite (sets up .venv first if needed). Arguments replace the default `tests`
# (e.g. `bash scripts/test.sh tests/test_losses.py -x`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
if [ $# -eq 0 ]; then set -- tests; fi
exec python -m pytest -q -n 2 "$@"
