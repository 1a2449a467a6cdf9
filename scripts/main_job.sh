#!/usr/bin/env bash
# The main job on the embedded default: set up from nothing if needed, then run it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/quickstart.py
