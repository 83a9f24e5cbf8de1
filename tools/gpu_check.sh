#!/usr/bin/env bash
# GPU checks of the fused mixed-edge kernels, one stage per device call: each is sized to
# fit one call (10 min) and is interrupted by `timeout -s INT` before that, so pytest's summary
# and the benchmark's table of what was measured still print and the log comes back.
# Logs go to $OUT (the device tool's folder) or ./gpu_check.  The exit status is the first
# failing command's (124: it ran out of time), 0 when all passed.
#
# A session has 30 device minutes, less than the four stages at their limits (~36 min): run
# bench, then hours, compile, tests (compile darts_cifar last, if time is left). compile and
# hours run the depthwise kernels the caller's UBNAS_DW_TILED picks (default: the 2-D tiles), so
# after a bench where the gathers win: UBNAS_DW_TILED=0 bash tools/gpu_check.sh hours.
#
#   bash tools/gpu_check.sh tests          # tests/test_kernels.py on CUDA, both depthwise kernel
#                                          # families, one Triton config per kernel (UBNAS_AUTOTUNE=0);
#                                          # shows the PASSED/FAILED/ERROR lines
#   bash tools/gpu_check.sh bench          # search step at batch 64 and 256, uboost_cifar and
#                                          # darts_cifar: eager vs fused with the 2-D tile
#                                          # (UBNAS_DW_TILED=1) and gather (=0) depthwise kernels;
#                                          # each fused row's first step checked against eager's
#   bash tools/gpu_check.sh compile [SPACE]  # eager, fused and torch.compile side by side in one
#                                          # process, batch 64 and 256 (darts_cifar: 256 only, its
#                                          # compile takes minutes); default uboost_cifar
#   bash tools/gpu_check.sh hours          # projected GPU-hours of a full uboost_cifar search
#                                          # (tools/search_hours.py: 50 epochs, batch 64), eager vs fused
set -uo pipefail
usage="usage: gpu_check.sh tests|bench|compile [SPACE]|hours"
stage=${1:?$usage}
case "$stage" in
  tests|bench|compile|hours) ;;
  *) echo "unknown stage $stage; $usage" >&2; exit 2 ;;
esac
# a stray setting would run the reference path or the interpreter and pass it off as the kernels
unset TRITON_INTERPRET UBNAS_KERNELS
# what the stage imports: torch and triton do not bring pyyaml and numpy along, and a stage that
# finds one missing only after its first minutes wastes a device call
modules="torch triton yaml numpy"
[ "$stage" = tests ] && modules="$modules pytest"
# imported, not only looked up: an installed triton that fails to import must stop here too
missing=$(python3 -c "
import importlib, sys
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f'{name} ({type(exc).__name__}: {exc})')
print('; '.join(failed))" $modules 2>&1)
if [ -n "$missing" ]; then
  echo "gpu_check.sh: these Python modules do not import: $missing (pip install -e '.[test]' first)" >&2
  exit 2
fi
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
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
  [ "$limit" -lt 30 ] && limit=30   # timeout 0 would mean no limit at all
  timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    local why=""
    [ "$rc" -eq 124 ] && why=", out of time after $limit s"
    [ "$rc" -eq 137 ] && why=", killed 15 s after its $limit s ran out"
    echo "FAILED (exit $rc$why): $*" >&2
    [ "$status" -eq 0 ] && status=$rc
  fi
  return 0
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.txt" 2>&1 || status=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  >> "$out/device.txt" 2>&1 || status=1
echo "UBNAS_DW_TILED=${UBNAS_DW_TILED:-} UBNAS_AUTOTUNE=${UBNAS_AUTOTUNE:-}" >> "$out/device.txt"
cat "$out/device.txt"

case "$stage" in
  tests)
    # the whole log is in tests.txt; here the per-test PASSED/FAILED/ERROR lines (-rA) and the summary
    timeout -s INT -k 15 $(( 540 - SECONDS )) env UBNAS_AUTOTUNE=0 python3 -m pytest -q -p no:cacheprovider \
      tests/test_kernels.py -rA > "$out/tests.txt" 2>&1
    rc=$?
    grep -iE "passed|failed|error|relerr" "$out/tests.txt" | tail -80
    if [ "$rc" -ne 0 ]; then
      echo "FAILED: pytest exit $rc (124: out of time; the summary above counts what ran)" | tee -a "$out/tests.txt" >&2
      [ "$status" -eq 0 ] && status=$rc
    fi
    ;;
  bench)
    # 2 spaces x 2 batches x 2 impls, 2 + 5 steps each (~0.3-1.0 s at b256 on an H100) plus autotuning:
    # a few minutes per depthwise family
    # the default family (the 2-D tiles) first, with the larger share of the call: one step of
    # darts_cifar compiles ~100 kernel specialisations and autotunes ~320 configs, counted at
    # ~220-260 s on a CPU-side estimate, too close to half the call; the gathers get what is left,
    # and a cut-off run still prints the rows it measured
    for tiled in 1 0; do
      limit=$(( tiled == 1 ? 330 : 560 - SECONDS ))
      run "$out/bench_tiled$tiled.txt" "$limit" env UBNAS_DW_TILED=$tiled python3 tools/bench_search_step.py \
        --spaces uboost_cifar,darts_cifar --batches 64,256 --repeats 5 --warmup 2 --impls eager,fused
    done
    ;;
  compile)
    space=${2:-uboost_cifar}
    name=$(basename "$space" .yaml)   # a space given as a path: its log is bench_compile_NAME.txt
    batches=64,256
    [ "$name" = darts_cifar ] && batches=256
    # compile last: its minutes of compiling must not cost the fused row
    run "$out/bench_compile_$name.txt" $(( 570 - SECONDS )) python3 tools/bench_search_step.py --spaces "$space" \
      --batches "$batches" --repeats 5 --warmup 2 --impls eager,fused,compile
    ;;
  hours)
    # four short run_search calls (eager/fused x op/channel stage), epoch 2's s/step projected to
    # 50 epochs x 391 steps; the per-epoch rows are printed too
    run "$out/hours.txt" $(( 570 - SECONDS )) python3 tools/search_hours.py --device cuda --space uboost_cifar --batch-size 64
    ;;
esac
exit "$status"
