#!/usr/bin/env bash
# GPU == CPU bits for every scale rule (one pytest process per rule, in parallel: each compiles its own
# Triton kernels), the other GPU tests, and the H200 sections that need no model file (Hessian precision
# and per-layer GPTQ timings). Usage on the device machine, from the repo root: bash benchmarks/device_gpu_checks.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"
T=${BUDGET:-200}
for r in floor ceil even rceil mse; do
  timeout "$T" python3 -m pytest -q -p no:cacheprovider -o addopts="" -k "$r" \
    "tests/test_scale_rules.py::test_gpu_kernel_gives_the_cpu_bits_for_every_rule" > "/tmp/gpu_rule_$r.txt" 2>&1 &
done
timeout "$T" python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_qlinear.py \
  tests/test_checkpoint.py::test_round_trip_cuda tests/test_placement.py > /tmp/gpu_other.txt 2>&1 &
wait
for f in /tmp/gpu_rule_*.txt /tmp/gpu_other.txt; do echo "== $f"; tail -4 "$f"; done | tee "$OUT/gpu_tests.txt"
timeout "${BENCH:-200}" python3 benchmarks/bench_h200.py --budget "${BENCH:-190}" --skip kernel,pipeline,torchao \
  > "$OUT/bench_h200_sections.log" 2>&1; echo "rc=$?" >> "$OUT/bench_h200_sections.log"
tail -30 "$OUT/bench_h200_sections.log"
