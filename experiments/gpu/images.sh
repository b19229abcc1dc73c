#!/usr/bin/env bash
# The image input path on one GPU, in under 150 s: ResNet-50's host-batch step (float32 and
# bfloat16, 224 px, ERM, no input pipeline), the input pipeline at 8 and 15 workers (host
# decode per image, uint8 batches per second, device augmentation), and a short whole job at
# 224 px (generated PACS-layout tree, 60 steps, evaluation included) beside the float32 step.
#
# Run from the repository root: OUT=/some/dir bash experiments/gpu/images.sh
# (or OUT_PART, as experiments/gpu/run_all.sh sets it). Writes to "$OUT/images/" (OUT_PART
# itself when set): one Markdown table per part (*.md), its log (*.log), and summary.md,
# the tables joined under the machine's name (copy it to results/bench_images_gpu.md).
# HJAX_GPU_TINY=1 shrinks every size (ResNet-18, 32 px, few steps) to check the script on a CPU.
set -u
DEST="${OUT_PART:-${OUT:?set OUT to the folder the results go to}/images}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}

if [ "${HJAX_GPU_TINY:-0}" = 1 ]; then
  ARCH=resnet18 SIZE=32 STEPS=6 FREQ=3 ROUNDS=1 NSTEP=2 WORKERS=0,1 JOBW=1 PER_CLASS=1
  T_F32=300 T_BF16=300 T_PIPE=300 T_E2E=600
else
  ARCH=resnet50 SIZE=224 STEPS=60 FREQ=30 ROUNDS=2 NSTEP=5 WORKERS=8,15 JOBW=8 PER_CLASS=2
  T_F32=35 T_BF16=30 T_PIPE=30 T_E2E=55
fi

part() {  # part NAME SECONDS ARGS...: one bench under its own timeout, log kept
  local name=$1 seconds=$2 start=$SECONDS; shift 2
  echo "== $name (limit ${seconds}s)"
  timeout -k 5 "$seconds" "$PY" "$@" > "$DEST/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start))s"
  tail -n 4 "$DEST/$name.log"
}

part step_float32 "$T_F32" experiments/bench_resnet_step.py --algorithms= --arch=$ARCH \
  --image_size=$SIZE --dtype=float32 --rounds=$ROUNDS --steps=$NSTEP --memory_classes=0 \
  --output="$DEST/step_float32.md"
part step_bfloat16 "$T_BF16" experiments/bench_resnet_step.py --algorithms= --arch=$ARCH \
  --image_size=$SIZE --dtype=bfloat16 --rounds=$ROUNDS --steps=$NSTEP --memory_classes=0 \
  --output="$DEST/step_bfloat16.md"
part pipeline "$T_PIPE" experiments/bench_pipeline.py --image_size=$SIZE --workers=$WORKERS \
  --repeats=2 --decode_images=200 --output="$DEST/pipeline.md"
REF=$(sed -n 's/^erm_step_ms=//p' "$DEST/step_float32.log" | tail -n 1)
part end_to_end "$T_E2E" experiments/bench_pipeline.py --mode=end_to_end --arch=$ARCH \
  --image_size=$SIZE --dtype=float32 --steps=$STEPS --checkpoint_freq=$FREQ \
  --per_class=$PER_CLASS --job_workers=$JOBW --noreference_again ${REF:+--reference_ms=$REF} \
  --output="$DEST/end_to_end.md"

{
  GPU=$(nvidia-smi -L 2>/dev/null | head -n 1)
  echo "# Image input path on ${GPU:-this machine (no GPU found)}"
  echo
  echo "$(nproc) host cores. Written by experiments/gpu/images.sh$([ "${HJAX_GPU_TINY:-0}" = 1 ] && echo ' (HJAX_GPU_TINY=1: reduced sizes)')."
  for name in step_float32 step_bfloat16 pipeline end_to_end; do
    echo
    echo "## $name"
    echo
    if [ -s "$DEST/$name.md" ]; then cat "$DEST/$name.md"; else
      echo "(no table: see $name.log)"; tail -n 5 "$DEST/$name.log" | sed 's/^/    /'; fi
  done
} > "$DEST/summary.md"
echo "== wrote $DEST/summary.md"
