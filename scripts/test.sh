#!/usr/bin/env bash
# Runs the test suite (sets up .venv first if needed). Arguments replace the default `tests`
# (e.g. `bash scripts/test.sh tests/test_losses.py -x`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
if [ $# -eq 0 ]; then set -- tests; fi
# --dist loadfile: each test file runs on one worker, so a module's fixtures (a trained
# teacher, an export, test_paper_configs' cache of full-size models) are made once, not once
# per worker. Files go out in the order tests/conftest.py sorts them (slowest first).
exec python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@"
