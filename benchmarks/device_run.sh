#!/usr/bin/env bash
# One H200 lease, everything that needs the GPU, each part time-bounded so the whole stays < 9.5 min:
#   1. GPU == CPU bits (scale rules in the Triton kernel, QuantLinear, checkpoint, block streaming)
#   2. benchmarks/bench_h200.py (issue 17: kernel vs copy, Hessians, GPTQ, the 8B-shaped pipeline)
#   3. benchmarks/bench_cli_8b.py (issue 19: the whole CLI job on an 8B-shaped model, 4 layers)
# Usage on the device machine, from the repo root:  bash benchmarks/device_run.sh   (writes under $OUT)
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"
echo "== 1. GPU tests"; timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_scale_rules.py::test_gpu_kernel_gives_the_cpu_bits_for_every_rule tests/test_qlinear.py \
  tests/test_checkpoint.py::test_round_trip_cuda tests/test_placement.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
echo "== 2. bench_h200"; timeout 290 python3 benchmarks/bench_h200.py --budget 260 > "$OUT/bench_h200.log" 2>&1
echo "rc=$?" >> "$OUT/bench_h200.log"; tail -40 "$OUT/bench_h200.log"
echo "== 3. bench_cli_8b"; timeout 140 python3 benchmarks/bench_cli_8b.py --layers 4 --out /tmp/b8 > "$OUT/bench_cli_8b.log" 2>&1
echo "rc=$?" >> "$OUT/bench_cli_8b.log"; tail -30 "$OUT/bench_cli_8b.log"
ls -la "$OUT"
