#!/usr/bin/env bash
# SmolLM2-135M on one H200: the README's SmolLM2 tables, as parallel shards on the one GPU, in one bounded lease.
#   - the study grid (scale_rules_table.py --grid study): W-MXINT4/32, /128, per-channel INT4 at A-MXINT8 x
#     RTN, GPTQ, AWQ, AWQ+GPTQ, calibration seeds 0,1,2 (issue 19);
#   - the scale-rule table (scale_rules_table.py): MXFP4 W4A4/W4A8, MXINT4 W4A8 x 5 rules x 5 methods (issue 14);
#   - the mixed-format frontier (mix_frontier.py): {MXINT4, MXINT8} and {MXFP4, MXFP6, MXFP8} (issue 16).
# Every shard writes its JSON after each cell and resumes from it, so a lease cut short keeps what it measured
# and a second call continues. Usage on the device machine, from the repo root:
#   SMOL=/path/SmolLM2-135M-Instruct.Q4_1.gguf BUDGET=480 bash benchmarks/device_smollm2.sh [study rules mix]
set -u
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
G=${SMOL:?set SMOL to the GGUF file}
R=${RES:-/tmp/smol_res}; mkdir -p "$R"
T=${BUDGET:-480}
PARTS=${*:-study rules mix}
COMMON=(--model "$G" --dataset wikitext2 --device cuda --resume --seq-len 512)
for part in $PARTS; do case $part in
study)
  for c in "W-MXINT4/32" "W-MXINT4/128" "W-INT4 (per-channel)"; do
    n=$(echo "$c" | tr -c 'A-Za-z0-9\n' '_')
    for s in 0 1 2; do    # one shard per config and seed (RTN runs in the seed-0 shard)
      m=$([ $s = 0 ] && echo RTN,GPTQ,AWQ,AWQ+GPTQ || echo GPTQ,AWQ,AWQ+GPTQ)
      timeout "$T" python3 benchmarks/scale_rules_table.py --grid study "${COMMON[@]}" --configs "$c" --methods "$m" \
        --rules floor --seeds $s --calib-samples 64 --eval-tokens 131072 --out "$R/study_${n}_s$s.json" \
        > "$R/study_${n}_s$s.log" 2>&1 &
    done
  done ;;
rules)
  for c in "MXFP4 W4A4" "MXFP4 W4A8" "MXINT4 W4A8"; do
    n=$(echo "$c" | tr -c 'A-Za-z0-9\n' '_')
    for r in floor ceil even rceil mse; do
      timeout "$T" python3 benchmarks/scale_rules_table.py "${COMMON[@]}" --configs "$c" --rules $r --seeds 0,1,2 \
        --calib-samples 32 --eval-tokens 65536 --out "$R/rules_${n}_$r.json" > "$R/rules_${n}_$r.log" 2>&1 &
    done
  done ;;
mix)
  for set in "mxint4,mxint8" "mxfp4,mxfp6_e2m3,mxfp8_e4m3"; do
    for s in 0 1 2; do
      n=$(echo "$set" | tr -c 'A-Za-z0-9\n' '_')
      timeout "$T" python3 benchmarks/mix_frontier.py --model "$G" --device cuda --sets "$set" --seeds $s \
        --budgets 5,6,7 --calib wikitext2 --eval wikitext2 --calib-samples 32 --calib-seq-len 256 \
        --probe-windows 8 --probe-seq-len 256 --eval-windows 64 --eval-seq-len 512 \
        --out "$R/mix_${n}_s$s.json" > "$R/mix_${n}_s$s.log" 2>&1 &
    done
  done ;;
esac; done
wait
nvidia-smi --query-gpu=name,memory.used --format=csv > "$R/gpu.txt" 2>&1
grep -h "ppl\|spearman\|Error\|error" "$R"/*.log | tail -40
