#!/usr/bin/env bash
# The README's main command: set up (scripts/setup.sh), then run a small CNN on ROCKET and show where each kernel ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/cnn_demo.py "$@"
