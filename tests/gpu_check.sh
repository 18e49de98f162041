#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one prepared run of under ten minutes on one H100/H200 (issue 32, item 5):
#   1. the CUDA tests (tests/test_cuda.py, and the CUDA cases of tests/test_precision.py);
#   2. bench.py on CUDA at KITTI size (94x311, x4) for every stereo network: float32, bf16 autocast (ours_amp),
#      torch.compile (ours_compile) where it compiles in time; a roofline calibration first;
#   3. one mixed-precision training step per stereo network through train.py itself (--amp, bfloat16; float16 with
#      its gradient scaler for SSRDE-FNet and NAFSSR-S) on the built-in sample's patches.
# Each command has its own time limit; a failure or a timeout is recorded and the run goes on. Results go to
# $OUT (default results/gpu_check/): one log per command and summary.txt (command, exit status, seconds).
#
#   bash tests/gpu_check.sh                     # everything, on cuda
#   DEVICE=cpu NETWORKS=nafssr-t bash tests/gpu_check.sh    # a dry run of the plumbing on the CPU (slow networks: no)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
NETWORKS=${NETWORKS:-$($PY -c 'from models import STEREO_MODELS; print(" ".join(STEREO_MODELS))')}
FP16_NETWORKS=${FP16_NETWORKS:-ssrdefnet nafssr-s}
COMPILE_NETWORKS=${COMPILE_NETWORKS:-nafssr-s cvhssr-t}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: > "$summary"

step() {   # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, one summary line
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    local verdict=ok
    [ $status -eq 124 ] && verdict="TIMEOUT after ${limit}s" || { [ $status -ne 0 ] && verdict="FAILED (exit $status)"; }
    printf '%-34s %-22s %4ss  %s\n' "$name" "$verdict" $((SECONDS - start)) "$*" | tee -a "$summary"
}

command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")' | tee -a "$summary"

if [ "$DEVICE" = cuda ]; then
    step pytest_cuda 180 $PY -m pytest -q -rs tests/test_cuda.py tests/test_precision.py
fi

for net in $NETWORKS; do
    variants=ours
    [ "$DEVICE" = cuda ] && variants=ours,ours_amp
    case " $COMPILE_NETWORKS " in *" $net "*) [ "$DEVICE" = cuda ] && variants=$variants,ours_compile ;; esac
    roofline=
    [ "$net" = "${NETWORKS%% *}" ] && roofline=--roofline    # calibrate once, with the first network
    step "bench_$net" 150 $PY bench.py --model "$net" --device "$DEVICE" --cases infer --scales 4 --sizes 94x311 \
        --variants "$variants" --repeats 3 $roofline --json "$OUT/bench_$net.json"
done

for net in $NETWORKS; do
    dtypes=bfloat16
    case " $FP16_NETWORKS " in *" $net "*) dtypes="bfloat16 float16" ;; esac
    for dtype in $dtypes; do
        step "train_${net}_$dtype" 90 $PY train.py --model "$net" --scale_factor 4 --trainset sample --batch_size 2 \
            --total_iters 1 --amp --amp_dtype "$dtype" --num_workers 0 --device "$DEVICE" \
            --checkpoint_dir "$OUT/train_${net}_$dtype"
    done
done

echo "summary: $summary"
! grep -q -E 'FAILED|TIMEOUT' "$summary"
