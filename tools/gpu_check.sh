#!/usr/bin/env bash
# GPU checks of the fused mixed-edge kernels, one stage per device call: each is sized to
# fit one call (10 min) and is cut off by `timeout` before that, so its log still comes back.
# Logs go to $OUT (the device tool's folder) or ./gpu_check.  The exit status is the first
# failing command's (124: it ran out of time), 0 when all passed.
#
#   bash tools/gpu_check.sh tests          # tests/test_kernels.py on CUDA, both depthwise kernel
#                                          # families, one Triton config per kernel (UBNAS_AUTOTUNE=0);
#                                          # shows the PASSED/FAILED/ERROR lines
#   bash tools/gpu_check.sh bench          # search step at batch 64 and 256, uboost_cifar and
#                                          # darts_cifar: eager vs fused with the gather
#                                          # (UBNAS_DW_TILED=0) and 2-D tile (=1) depthwise kernels
#   bash tools/gpu_check.sh compile [SPACE]  # eager, torch.compile and fused side by side at batch
#                                          # 256 in one process (default uboost_cifar; compiling is
#                                          # slow: one space per call)
#   bash tools/gpu_check.sh hours          # projected GPU-hours of a full uboost_cifar search
#                                          # (tools/search_hours.py: 50 epochs, batch 64), eager vs fused
set -uo pipefail
usage="usage: gpu_check.sh tests|bench|compile [SPACE]|hours"
stage=${1:?$usage}
case "$stage" in
  tests|bench|compile|hours) ;;
  *) echo "unknown stage $stage; $usage" >&2; exit 2 ;;
esac
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check.sh needs a CUDA GPU (torch sees none); on a CPU run python -m pytest tests/test_kernels.py" >&2
  exit 2
fi
out=${OUT:-gpu_check}
mkdir -p "$out"
export PYTHONPATH=.
status=0

# run LOG SECONDS CMD...: CMD under `timeout SECONDS`, its output shown and kept in LOG;
# a failure is reported and kept in $status (the first one wins)
run() {
  local log=$1 limit=$2
  shift 2
  timeout "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    local why=""
    [ "$rc" -eq 124 ] && why=", out of time after $limit s"
    echo "FAILED (exit $rc$why): $*" >&2
    [ "$status" -eq 0 ] && status=$rc
  fi
  return 0
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.txt" 2>&1 || status=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  >> "$out/device.txt" 2>&1 || status=1
cat "$out/device.txt"

case "$stage" in
  tests)
    # the whole log is in tests.txt; here the per-test PASSED/FAILED/ERROR lines (-rA) and the summary
    timeout 560 env UBNAS_AUTOTUNE=0 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py -rA \
      > "$out/tests.txt" 2>&1
    rc=$?
    grep -iE "passed|failed|error|relerr" "$out/tests.txt" | tail -80
    if [ "$rc" -ne 0 ]; then
      echo "FAILED: pytest exit $rc (124: out of time)" >&2
      [ "$status" -eq 0 ] && status=$rc
    fi
    ;;
  bench)
    # 2 spaces x 2 batches x 2 impls, 2 + 5 steps each (~0.3-1.0 s at b256 on an H100) plus autotuning:
    # a few minutes per depthwise family
    for tiled in 0 1; do
      run "$out/bench_tiled$tiled.txt" 280 env UBNAS_DW_TILED=$tiled python3 tools/bench_search_step.py \
        --spaces uboost_cifar,darts_cifar --batches 64,256 --repeats 5 --warmup 2 --impls eager,fused
    done
    ;;
  compile)
    space=${2:-uboost_cifar}
    run "$out/bench_compile_$space.txt" 570 python3 tools/bench_search_step.py --spaces "$space" --batches 256 \
      --repeats 5 --warmup 2 --impls eager,compile,fused
    ;;
  hours)
    # four short run_search calls (eager/fused x op/channel stage), epoch 2's s/step projected to
    # 50 epochs x 391 steps; the per-epoch rows are printed too
    run "$out/hours.txt" 570 python3 tools/search_hours.py --device cuda --space uboost_cifar --batch-size 64
    ;;
esac
exit "$status"
