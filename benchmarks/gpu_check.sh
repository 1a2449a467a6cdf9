#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): decisions on CUDA vs CPU, autocast agreement, throughput
# full depth vs early exit (torch eager, torch.compile, ORT CUDA/TensorRT), the Ray GPU actor job.
# About 5 minutes on one GPU; without one it runs a CPU smoke test. Arguments go to the Python module.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m benchmarks.gpu_check "$@"
