#!/usr/bin/env bash
# The demo: teacher -> pseudo-label -> student -> evaluate on the embedded digit scenes, on CPU.
# Sets up .venv first if needed. Usage: bash scripts/demo.sh [model_dir] [extra bin/self_train.py flags]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
MODEL_DIR="${1:-runs/demo}"
shift || true
exec python bin/self_train.py --gin_file=gin_configs/digits/demo.gin --model_dir="$MODEL_DIR" "$@"
