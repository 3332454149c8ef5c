#!/usr/bin/env bash
# Every GPU measurement of issue 12 in one run, under 8 minutes, from the repository root, after the
# coordinator installed the wheels (mobileclip2, open_clip_torch, timm, ftfy, wcwidth, webdataset,
# braceexpand) into the device's python3, which brings torch:
#
#   bash benchmarks/gpu.sh                   # on the GPU machine; results and logs go to $OUT
#   GPU_DRY_RUN=1 bash benchmarks/gpu.sh     # anywhere: the same steps on CPU, tiny sizes (a smoke test)
#
# Each step has its own time limit (`timeout`), so one slow step cannot eat the others' time, and
# each writes its section of docs/benchmarks.md as soon as it has numbers (partial results survive).
# Budget (s): eager inference 80, compiled inference 160, training 120, DR teachers 120 = 480.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/mobileclip2-gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DOC=docs/benchmarks.md
LOG="$OUT/gpu_log.txt"
: >"$LOG"

if [ "${GPU_DRY_RUN:-0}" = 1 ]; then
    DRY="--dry-run"
    INFER_EAGER=(--models MobileCLIP2-S0 --towers image text --gpu-rounds 1)
    INFER_COMPILE=(--models MobileCLIP2-S0 --towers text --gpu-rounds 1)
    T_EAGER=900 T_COMPILE=900 T_TRAIN=900 T_DR=300
    cp "$DOC" "$OUT/benchmarks.before.md"
    DOC_ARG=(--doc "$OUT/benchmarks.md")
    cp "$DOC" "$OUT/benchmarks.md"
else
    DRY=""
    INFER_EAGER=(--gpu-rounds 10)
    INFER_COMPILE=(--models MobileCLIP2-S0 MobileCLIP2-S4 --towers image --gpu-rounds 10)
    T_EAGER=80 T_COMPILE=160 T_TRAIN=120 T_DR=120
    DOC_ARG=(--doc "$DOC")
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log everything, never stop the script
    local name=$1 limit=$2
    shift 2
    local begin=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v "No pretrained weights loaded" | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - begin))s" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee -a "$LOG"

step inference-eager "$T_EAGER" "$PY" benchmarks/inference.py --device cuda $DRY "${INFER_EAGER[@]}" "${DOC_ARG[@]}"
step inference-compile "$T_COMPILE" "$PY" benchmarks/inference.py --device cuda --compile $DRY "${INFER_COMPILE[@]}" "${DOC_ARG[@]}"
if [ -n "$DRY" ]; then
    step train-step "$T_TRAIN" "$PY" benchmarks/train_step.py --device cuda --dry-run --output "$OUT/benchmarks.md"
else
    step train-step "$T_TRAIN" "$PY" benchmarks/train_step.py --device cuda --steps 2 --rounds 1 --output "$DOC"
fi
if [ -f benchmarks/reinforce.py ]; then
    if [ -n "$DRY" ]; then
        step reinforce "$T_DR" "$PY" benchmarks/reinforce.py --device cpu --doc "$OUT/benchmarks.md"
    else
        step reinforce "$T_DR" "$PY" benchmarks/reinforce.py --device cuda --doc "$DOC"
    fi
else
    echo "=== reinforce: benchmarks/reinforce.py not present, skipped" | tee -a "$LOG"
fi

[ -z "$DRY" ] && cp "$DOC" "$OUT"/
echo "done in ${SECONDS}s; results in $OUT" | tee -a "$LOG"
