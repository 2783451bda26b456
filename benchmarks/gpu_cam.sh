#!/usr/bin/env bash
# CAM extraction on a GPU: sgc_fast.CAM against pytorch-grad-cam, captum and torchcam (bench_cam.py), fp32 and
# bf16, ResNet-18/50 and ConvNeXt-Tiny at 224 px, B = 1/16/64. Results in $OUT (default ./gpu_results):
# cam.csv, cam.log.
# The anchors are benchmark-only: on a machine without internet, put their wheels (grad-cam, ttach, captum,
# torchcam and what they need that the machine lacks) in a folder and pass it as WHEELS=dir; missing anchors are
# reported as failed rows, sgc_fast's rows still run.
# Usage: BUDGET=400 [WHEELS=dir] bash benchmarks/gpu_cam.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_results}
mkdir -p "$OUT"
BUDGET=${BUDGET:-400}
PY=${PY:-python3}
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --find-links "$WHEELS" grad-cam captum torchcam >> "$OUT/cam.log" 2>&1 \
    || echo "anchor install failed (see cam.log)" | tee -a "$OUT/cam.log"
fi
# the CAM itself needs no compiled kernel: the reference backend runs if the extension is not built
for amp in fp32 bfloat16; do
  [ "$(left)" -gt 60 ] || break
  timeout $(($(left) - 30)) $PY benchmarks/bench_cam.py --device cuda --amp $amp --reps 20 --warmup 3 \
    --csv "$OUT/cam.csv" 2>&1 | tee -a "$OUT/cam.log"
done
