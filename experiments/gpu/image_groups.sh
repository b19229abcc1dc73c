#!/usr/bin/env bash
# Issue 34's GPU figures in one prepared run: trials per hour of a PACS-shaped group (R
# ResNet-50 trials x 3 domains x 32 images at 224 px, HGP, evaluation included) at R = 1, 2,
# 4, 8 against R single jobs; the decoded cache resident on the GPU against the host
# pipeline; bfloat16 against float32 (experiments/bench_image_groups.py, a generated
# PACS-layout tree). Each part under its own timeout, so one that runs out of time leaves
# the others' tables.
#
# About 10 minutes of device time: run it alone, not inside run_all.sh (15 minutes in all).
# Run from the repository root: OUT=/some/dir bash experiments/gpu/image_groups.sh (or
# OUT_PART, as experiments/gpu/run_all.sh sets it). Writes one table per part (*.md), its
# log (*.log) and summary.md (copy it to results/bench_image_groups_gpu.md).
# HJAX_GPU_TINY=1 shrinks every size (ResNet-18, 32 px) to check the script on a CPU.
set -u
DEST="${OUT_PART:-${OUT:?set OUT to the folder the results go to}/image_groups}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
if [ "${HJAX_GPU_TINY:-0}" = 1 ]; then
  SIZES="--arch=resnet18 --image_size=32 --batch_size=4 --per_class=1 --steps=2"
  T_MAIN=600 T_F32=600 T_HOST=600
else
  SIZES="--arch=resnet50 --image_size=224 --batch_size=32 --per_class=8 --steps=10"
  T_MAIN=300 T_F32=150 T_HOST=120
fi

part() {  # part NAME SECONDS ARGS...: one bench under its own timeout, log kept
  local name=$1 seconds=$2 start=$SECONDS; shift 2
  echo "== $name (limit ${seconds}s)"
  timeout -k 5 "$seconds" "$PY" experiments/bench_image_groups.py $SIZES "$@" \
    --output="$DEST/$name.md" > "$DEST/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start))s"
  tail -n 6 "$DEST/$name.log"
}

# The target: bfloat16 groups on the resident cache, and the host pipeline beside them.
part bf16_resident "$T_MAIN" --dtypes=bfloat16 --data=resident --trials=1,2,4,8
part f32_resident "$T_F32" --dtypes=float32 --data=resident --trials=1,8
part bf16_host "$T_HOST" --dtypes=bfloat16 --data=host --trials=1,8

{
  GPU=$(nvidia-smi -L 2>/dev/null | head -n 1)
  echo "# Image trials in one program on ${GPU:-this machine (no GPU found)}"
  echo
  echo "$(nproc) host cores. Written by experiments/gpu/image_groups.sh$([ "${HJAX_GPU_TINY:-0}" = 1 ] && echo ' (HJAX_GPU_TINY=1: reduced sizes)')."
  for name in bf16_resident f32_resident bf16_host; do
    echo; echo "## $name"; echo
    if [ -s "$DEST/$name.md" ]; then cat "$DEST/$name.md"; else
      echo "(no table: see $name.log)"; tail -n 5 "$DEST/$name.log" | sed 's/^/    /'; fi
  done
} > "$DEST/summary.md"
echo "== wrote $DEST/summary.md"
