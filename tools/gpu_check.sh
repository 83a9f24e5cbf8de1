#!/usr/bin/env bash
# GPU checks of the fused mixed-edge kernels, sized so that each stage fits one
# device call (10 min).  Logs go to $OUT (the device tool's folder) or ./gpu_check.
#
#   bash tools/gpu_check.sh tests     # tests/test_kernels.py on CUDA, both depthwise kernel
#                                     # families, one Triton config per kernel (UBNAS_AUTOTUNE=0)
#   bash tools/gpu_check.sh bench     # search step at batch 256: eager vs fused with the
#                                     # gather (UBNAS_DW_TILED=0) and 2-D tile (=1) depthwise kernels
#   bash tools/gpu_check.sh compile   # the same step under torch.compile (slow to compile)
#   bash tools/gpu_check.sh hours     # GPU-hours of a uboost_cifar search, eager vs fused
set -uo pipefail
stage=${1:?usage: gpu_check.sh tests|bench|compile|hours}
out=${OUT:-gpu_check}
mkdir -p "$out"
export PYTHONPATH=.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$out/device.txt"
cat "$out/device.txt"
case "$stage" in
  tests)
    UBNAS_AUTOTUNE=0 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py -rA 2>&1 | tee "$out/tests.txt" \
      | grep -E "passed|failed|error|relerr" | tail -60
    ;;
  bench)
    for tiled in 0 1; do
      UBNAS_DW_TILED=$tiled python3 tools/bench_search_step.py --spaces uboost_cifar,darts_cifar --batches 256 \
        --repeats 5 --warmup 2 --impls eager,fused 2>&1 | tee "$out/bench_tiled$tiled.txt"
    done
    ;;
  compile)
    python3 tools/bench_search_step.py --spaces uboost_cifar,darts_cifar --batches 256 --repeats 5 --warmup 2 \
      --impls eager,compile 2>&1 | tee "$out/bench_compile.txt"
    ;;
  hours)
    # seconds and steps per epoch are in search_log.csv; scale them to the full data set
    for kernels in eager auto; do
      python3 -m ubnas search --space uboost_cifar --data synthetic --device cuda --kernels "$kernels" \
        --epochs 4 --max-steps-per-epoch 40 --batch-size 64 --quiet --out "$out/search_$kernels" 2>&1 | tail -3
      cat "$out/search_$kernels/search_log.csv"
    done
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
