#!/usr/bin/env bash
# Wheels for benchmarks/llmcompressor_gptq.py on the GPU machine (no network; Python 3.12 there), in .whlc/
# (about 3.5 MB). Run from the repo root on the development machine:
#   bash benchmarks/device_llmcompressor_payload.sh
# Then one device call, carry [".whlc"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whlc/*.whl && \
#     export PYTHONPATH=/tmp/site:$PWD && python3 benchmarks/llmcompressor_gptq.py --device cuda --out $OUT
#
# What and why (all --no-deps; the script imports llm-compressor's GPTQ modules only, so its own
# requirements -- datasets, auto-round, accelerate, ... -- are not needed and not carried):
#   llmcompressor 0.14.0.1      the newest release; allows torch <= 2.14 and transformers <= 5.17 (the device's)
#   compressed-tensors 0.19.0   the version llmcompressor 0.14.0.1 pins (==0.19.0)
#   pydantic 2.14.4, pydantic-core 2.50.5, annotated-types 0.8.0, typing-inspection 0.4.5
#                               compressed-tensors' QuantizationArgs are pydantic models; not on the device image
#   typing-extensions 4.16.0    pydantic 2.14 needs >= 4.16; the device's version is not known (backward compatible)
#   loguru 0.7.3                compressed-tensors logs through it; not on the device image
set -euo pipefail
EXCLUDE=$(git rev-parse --git-common-dir)/info/exclude   # the main repo's, also from a worktree
grep -qx "/.whlc/" "$EXCLUDE" 2>/dev/null || echo "/.whlc/" >> "$EXCLUDE"
rm -rf .whlc && mkdir -p .whlc
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whlc \
    llmcompressor==0.14.0.1 compressed-tensors==0.19.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
    typing-inspection==0.4.5 typing-extensions==4.16.0 loguru==0.7.3
ls -l .whlc
du -ch .whlc/*.whl | tail -1
