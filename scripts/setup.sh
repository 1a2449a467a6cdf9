#!/usr/bin/env bash
# Create .venv with everything epee-annotate, its tests and examples need. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -f .venv/.epee-setup ] && [ "$(cat .venv/.epee-setup)" = "$stamp" ]; then
  exit 0
fi
echo "Setting up .venv (first run takes a few minutes)..."
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels. GPU users install their own.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[all,test,offline-minilm,chest-xray-data,onnx]"
echo "$stamp" > .venv/.epee-setup
